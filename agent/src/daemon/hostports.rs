//! `hostPort`: publishes container ports on the board's own addresses with nftables DNAT.
//!
//! The agent owns one table (`ip texu_<node>`) and replaces it whole, atomically, with
//! `nft -f -` whenever the set of published ports changes.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// One published port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Published {
    pub protocol: &'static str,
    pub host_port: u16,
    pub address: Ipv4Addr,
    pub port: u16,
}

/// The nftables table this agent owns.
pub fn table_name(node: &str) -> String {
    format!("texu_{}", node.replace('-', "_"))
}

/// The nft script that makes the table hold exactly `published`.
pub fn script(node: &str, published: &[Published]) -> String {
    let table = table_name(node);
    let rules: String = published
        .iter()
        .map(|p| {
            format!(
                "    {} dport {} dnat to {}:{}\n",
                p.protocol, p.host_port, p.address, p.port
            )
        })
        .collect();
    // Declaring the table first makes the delete succeed on the first run too.
    format!(
        "table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n  \
         chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{rules}  }}\n  \
         chain output {{\n    type nat hook output priority -100; policy accept;\n    \
         fib daddr type != local return\n{rules}  }}\n\
         }}\n"
    )
}

/// Applies the table; an empty list removes it.
pub fn apply(node: &str, published: &[Published]) -> Result<(), String> {
    let text = if published.is_empty() {
        let table = table_name(node);
        format!("table ip {table}\ndelete table ip {table}\n")
    } else {
        script(node, published)
    };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("cannot write to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("nft failed: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_replaces_the_whole_table() {
        let text = script(
            "board-a",
            &[Published {
                protocol: "tcp",
                host_port: 8080,
                address: Ipv4Addr::new(198, 19, 1, 2),
                port: 80,
            }],
        );
        assert!(text.starts_with("table ip texu_board_a\ndelete table ip texu_board_a\n"));
        assert_eq!(
            text.matches("tcp dport 8080 dnat to 198.19.1.2:80").count(),
            2
        );
        assert!(text.contains("fib daddr type != local return"));
    }
}
