//! Terminal output: aligned tables, ages, byte sizes.

use std::time::{SystemTime, UNIX_EPOCH};

/// Prints rows as left-aligned columns separated by three spaces, like kubectl.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
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
    fn formats_bytes() {
        assert_eq!(bytes(512), "512");
        assert_eq!(bytes(128 << 20), "128Mi");
        assert_eq!(bytes(3 << 29), "1.5Gi");
    }
}
