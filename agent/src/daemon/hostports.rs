//! `hostPort`: publishes container ports on the board's own addresses with nftables DNAT.
//!
//! The agent owns one table (`ip texu_<node>`) and replaces it whole, atomically, with
//! `nft -f -` whenever the set of published ports changes. Rules match only traffic addressed
//! to the board itself (`fib daddr type local`): packets routed through the board to another
//! address keep their way. The board's own service ports (ssh, DNS, the controller, the
//! agent's metrics) are reserved and never published.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use texu_api::RoleSpec;

/// Ports reserved unless `--reserved-ports` says otherwise: ssh and DNS.
pub const DEFAULT_RESERVED: &[u16] = &[22, 53];

static RESERVED: OnceLock<BTreeSet<u16>> = OnceLock::new();

/// The reserved set for the agent's flag `ports` and its controller `server` (whose port, on
/// the board's overlay, must stay the controller's).
pub fn reserved_for(ports: &[u16], server: &str) -> BTreeSet<u16> {
    let mut set: BTreeSet<u16> = ports.iter().copied().collect();
    // `server` may list several controllers, comma separated.
    set.extend(server.split(',').filter_map(|s| server_port(s.trim())));
    set
}

/// The port of `http://HOST:PORT/...` (80 or 443 when the URL names none).
fn server_port(server: &str) -> Option<u16> {
    let (scheme, rest) = server.split_once("://")?;
    let authority = rest.split('/').next()?;
    match authority.rsplit_once(':') {
        Some((_, port)) if !authority.ends_with(']') => port.parse().ok(),
        _ => match scheme {
            "https" => Some(443),
            _ => Some(80),
        },
    }
}

/// Sets the reserved ports (once, at start).
pub fn set_reserved(ports: BTreeSet<u16>) {
    tracing::info!(?ports, "ports reserved for the board's own services");
    if RESERVED.set(ports).is_err() {
        tracing::warn!("reserved ports were already set; keeping the first ones");
    }
}

/// The reserved ports in force.
pub fn reserved() -> BTreeSet<u16> {
    RESERVED
        .get()
        .cloned()
        .unwrap_or_else(|| DEFAULT_RESERVED.iter().copied().collect())
}

/// Refuses a role whose `hostPort`s include one of `reserved`, saying which and why.
pub fn check_reserved(spec: &RoleSpec, reserved: &BTreeSet<u16>) -> Result<(), String> {
    let taken: Vec<String> = spec
        .ports
        .iter()
        .filter_map(|p| {
            let host = u16::try_from(p.host_port?).ok()?;
            reserved
                .contains(&host)
                .then(|| format!("{host}/{}", p.protocol.as_str()))
        })
        .collect();
    if taken.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = reserved.iter().map(u16::to_string).collect();
    Err(format!(
        "hostPort {} is reserved for the board's own services (ssh, DNS, the controller, the \
         agent's metrics); reserved on this board: {} (agent flag --reserved-ports)",
        taken.join(", "),
        list.join(",")
    ))
}

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
         chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
         fib daddr type != local return\n{rules}  }}\n  \
         chain output {{\n    type nat hook output priority -100; policy accept;\n    \
         fib daddr type != local return\n{rules}  }}\n\
         }}\n"
    )
}

/// Applies the table; an empty list removes it. Reserved ports are left out whatever asks.
pub fn apply(node: &str, published: &[Published]) -> Result<(), String> {
    let reserved = reserved();
    let (refused, published): (Vec<&Published>, Vec<Published>) = (
        published
            .iter()
            .filter(|p| reserved.contains(&p.host_port))
            .collect(),
        published
            .iter()
            .filter(|p| !reserved.contains(&p.host_port))
            .cloned()
            .collect(),
    );
    for p in refused {
        tracing::error!(host_port = p.host_port, address = %p.address, "not publishing a reserved port");
    }
    let text = if published.is_empty() {
        let table = table_name(node);
        format!("table ip {table}\ndelete table ip {table}\n")
    } else {
        script(node, &published)
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
        // Both chains pass on what is not addressed to the board before any DNAT.
        assert_eq!(text.matches("fib daddr type != local return").count(), 2);
        let prerouting =
            &text[text.find("chain prerouting").unwrap()..text.find("chain output").unwrap()];
        assert!(
            prerouting.find("fib daddr type != local return") < prerouting.find("dnat"),
            "{prerouting}"
        );
    }

    #[test]
    fn reserved_ports_include_the_controllers() {
        let set = reserved_for(&[22, 53], "http://198.18.1.1:7080");
        assert_eq!(set.into_iter().collect::<Vec<_>>(), vec![22, 53, 7080]);
        assert!(reserved_for(&[], "http://controller/").contains(&80));
        assert!(reserved_for(&[], "https://controller").contains(&443));
    }

    #[test]
    fn a_role_asking_for_a_reserved_port_is_refused() {
        let spec: RoleSpec = serde_json::from_value(serde_json::json!({
            "image": "host",
            "command": ["/bin/true"],
            "ports": [
                {"name": "web", "port": 80, "hostPort": 8080},
                {"name": "ssh", "port": 2222, "hostPort": 22},
            ],
        }))
        .unwrap();
        let reserved = reserved_for(&[22, 53], "http://198.18.1.1:7080");
        let err = check_reserved(&spec, &reserved).unwrap_err();
        assert!(err.starts_with("hostPort 22/tcp is reserved"), "{err}");
        assert!(
            err.contains("22,53,7080") && err.contains("--reserved-ports"),
            "{err}"
        );
        let reserved = reserved_for(&[53], "http://198.18.1.1:7080");
        assert_eq!(check_reserved(&spec, &reserved), Ok(()));
    }
}
