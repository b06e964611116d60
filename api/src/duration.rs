//! Durations as operators write them: `500ms`, `2s`, `5m`, `1h`, or combined like `1m30s`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

const EXPECTED: &str =
    "expected a number and a unit (ms, s, m or h), like 500ms, 2s, 5m, 1h or 1m30s";

/// A length of time such as `2s` or `5m`, kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Duration(pub String);

/// Why a duration does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("must not be empty: {EXPECTED}")]
    Empty,
    #[error("{value:?} is not a duration: {EXPECTED}")]
    Invalid { value: String },
    #[error("{value:?} has no unit: {EXPECTED}")]
    MissingUnit { value: String },
    #[error("{value:?} is too long")]
    TooLarge { value: String },
}

impl Duration {
    /// A duration from its written form.
    pub fn new(s: impl Into<String>) -> Duration {
        Duration(s.into())
    }

    /// The written form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The duration as a `std::time::Duration`.
    pub fn as_std(&self) -> Result<std::time::Duration, DurationError> {
        let s = self.0.as_str();
        let invalid = || DurationError::Invalid {
            value: s.to_string(),
        };
        let too_large = || DurationError::TooLarge {
            value: s.to_string(),
        };
        if s.is_empty() {
            return Err(DurationError::Empty);
        }
        if s == "0" {
            return Ok(std::time::Duration::ZERO);
        }
        let mut rest = s;
        let mut total_nanos: u128 = 0;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let (number, after) = rest.split_at(number_len);
            let unit_len = after
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(after.len());
            let (unit, after) = after.split_at(unit_len);
            let unit_nanos: u128 = match unit {
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                "" => {
                    return Err(DurationError::MissingUnit {
                        value: s.to_string(),
                    })
                }
                _ => return Err(invalid()),
            };
            let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
            if (whole.is_empty() && fraction.is_empty())
                || fraction.contains('.')
                || whole.len() > 20
            {
                return Err(invalid());
            }
            let whole: u128 = if whole.is_empty() {
                0
            } else {
                whole.parse().map_err(|_| invalid())?
            };
            let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(too_large)?;
            // Digits past nanoseconds cannot matter; ignore them.
            let fraction = &fraction[..fraction.len().min(18)];
            if !fraction.is_empty() {
                let digits: u128 = fraction.parse().map_err(|_| invalid())?;
                let scale = 10u128.pow(fraction.len() as u32);
                nanos += digits * unit_nanos / scale;
            }
            total_nanos = total_nanos.checked_add(nanos).ok_or_else(too_large)?;
            rest = after;
        }
        let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| too_large())?;
        // The remainder is below 10^9, so it fits.
        let nanos = (total_nanos % 1_000_000_000) as u32;
        Ok(std::time::Duration::new(secs, nanos))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Duration {
    fn from(s: &str) -> Self {
        Duration(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

    #[test]
    fn parses() {
        let cases: &[(&str, Std)] = &[
            ("500ms", Std::from_millis(500)),
            ("2s", Std::from_secs(2)),
            ("5m", Std::from_secs(300)),
            ("1h", Std::from_secs(3600)),
            ("1m30s", Std::from_secs(90)),
            ("1h2m3s4ms", Std::from_millis(3_723_004)),
            ("1.5s", Std::from_millis(1500)),
            ("0.25h", Std::from_secs(900)),
            (".5s", Std::from_millis(500)),
            ("0", Std::ZERO),
            ("0s", Std::ZERO),
        ];
        for (text, want) in cases {
            assert_eq!(Duration::from(*text).as_std(), Ok(*want), "{text}");
        }
    }

    #[test]
    fn errors() {
        let cases: &[(&str, &str)] = &[
            ("", "must not be empty"),
            ("5", "has no unit"),
            ("1m30", "has no unit"),
            ("5 s", "not a duration"),
            ("5sec", "not a duration"),
            ("-1s", "not a duration"),
            ("s", "not a duration"),
            ("1.2.3s", "not a duration"),
            ("5d", "not a duration: expected a number and a unit"),
            ("99999999999999999999h", "too long"),
        ];
        for (text, want) in cases {
            let err = Duration::from(*text).as_std().expect_err(text);
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
    }
}
