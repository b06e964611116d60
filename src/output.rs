//! Terminal output: aligned tables, ages, byte sizes, and escaping of control characters.
//!
//! Much of what the CLI prints was said by a board (labels, addresses, messages), so every
//! control character (C0, DEL, C1) is shown escaped, `\x1b` for ESC: a board must not be able
//! to move the cursor, retitle or clear an admin's terminal.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

/// `text` with every control character escaped (`\x1b`, `\x7f`, `\u{9b}`), newlines included:
/// for one table cell or one line.
pub fn escape(text: &str) -> Cow<'_, str> {
    escape_except(text, false)
}

/// Like [`escape`] but keeps newlines: for a whole block of output.
pub fn escape_text(text: &str) -> Cow<'_, str> {
    escape_except(text, true)
}

fn escape_except(text: &str, keep_newlines: bool) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && !(keep_newlines && c == '\n');
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !unsafe_char(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

/// Prints rows as left-aligned columns separated by three spaces, like kubectl; cells are
/// [`escape`]d.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| escape(c).into_owned()).collect())
        .collect();
    let rows = &rows;
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 3;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// A short age like `5s`, `3m`, `2h`, `4d` from an RFC 3339 timestamp; `-` when unknown.
pub fn age(timestamp: Option<&str>) -> String {
    let Some(then) = timestamp.and_then(parse_rfc3339) else {
        return "-".into();
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(then);
    let secs = (now - then).max(0);
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

pub use texu_controller::clock::parse_rfc3339;

/// Bytes as a Kubernetes-style binary quantity: `512Mi`, `2Gi`.
pub fn bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if n >= size {
            let value = n as f64 / size as f64;
            return if value.fract() < 0.05 {
                format!("{value:.0}{unit}")
            } else {
                format!("{value:.1}{unit}")
            };
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["NAME", "READY"],
            &[
                vec!["app".into(), "3/3".into()],
                vec!["cassandra".into(), "0/3".into()],
            ],
        );
        assert_eq!(t, "NAME        READY\napp         3/3\ncassandra   0/3\n");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert!(matches!(escape("site=home"), Cow::Borrowed(_)));
        assert_eq!(escape("a\u{1b}]0;owned\u{7}b"), "a\\x1b]0;owned\\x07b");
        assert_eq!(
            escape("\u{1b}[2J\u{7f}\u{9b}x\n"),
            "\\x1b[2J\\x7f\\u{9b}x\\x0a"
        );
        assert_eq!(escape_text("one\u{1b}\ntwo\n"), "one\\x1b\ntwo\n");
        let t = table(&["NAME"], &[vec!["x\u{1b}[2J".into()]]);
        assert_eq!(t, "NAME\nx\\x1b[2J\n");
    }

    #[test]
    fn formats_bytes() {
        assert_eq!(bytes(512), "512");
        assert_eq!(bytes(128 << 20), "128Mi");
        assert_eq!(bytes(3 << 29), "1.5Gi");
    }
}
