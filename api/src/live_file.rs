//! The state of a running container's live files (a role's `files`), as its agent reports it
//! in the container's status: which text is in use, when it was installed and reloaded, and
//! what last failed. Also the RFC 3339 timestamps both sides write.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One live file of a running container.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileStatus {
    /// Its path inside the container.
    pub path: String,
    /// The first 16 hex digits of the SHA-256 of the text in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// When the text in use was rendered and installed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendered_at: Option<String>,
    /// When the program last reloaded after a change of this file (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reloaded_at: Option<String>,
    /// Reloads after changes of this file since the agent started.
    #[serde(default)]
    pub reloads: u64,
    /// What failed last (render, check or reload), with the file and line when known; cleared
    /// once a later text is installed and reloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A system time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn system_time_rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    format_rfc3339(secs)
}

// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}
