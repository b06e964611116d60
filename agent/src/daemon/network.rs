//! The board's container network: one bridge with the subnet's first address as gateway, and a
//! stable address per container kept in the agent's data dir.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What can go wrong setting up the network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Subnet(#[from] texu_api::CidrError),
    #[error("subnet {0} has no free address left")]
    Full(String),
    #[error("`ip {args}` failed: {message}")]
    Ip { args: String, message: String },
    #[error("cannot read or write {path}: {message}")]
    State { path: PathBuf, message: String },
}

/// A board's container subnet.
pub use texu_api::Cidr as Subnet;

/// Container addresses, persisted as `NAME ADDRESS` lines so they survive agent restarts.
pub struct Addresses {
    path: PathBuf,
    subnet: Subnet,
    assigned: BTreeMap<String, Ipv4Addr>,
}

impl Addresses {
    /// Loads the assignments in `path` (missing file: none yet).
    pub fn load(path: &Path, subnet: Subnet) -> Result<Addresses, NetworkError> {
        let mut assigned = BTreeMap::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for line in text.lines() {
                    if let Some((name, ip)) = line.split_once(' ') {
                        if let Ok(ip) = ip.trim().parse() {
                            assigned.insert(name.to_string(), ip);
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(NetworkError::State {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })
            }
        }
        Ok(Addresses {
            path: path.to_path_buf(),
            subnet,
            assigned,
        })
    }

    /// The container's address, assigning the lowest free one the first time.
    pub fn get_or_assign(&mut self, name: &str) -> Result<Ipv4Addr, NetworkError> {
        if let Some(ip) = self.assigned.get(name) {
            return Ok(*ip);
        }
        let used: std::collections::HashSet<Ipv4Addr> = self.assigned.values().copied().collect();
        let ip = self
            .subnet
            .hosts()
            .find(|ip| !used.contains(ip))
            .ok_or_else(|| NetworkError::Full(self.subnet.to_string()))?;
        self.assigned.insert(name.to_string(), ip);
        self.save()?;
        Ok(ip)
    }

    /// Frees a container's address.
    pub fn release(&mut self, name: &str) -> Result<(), NetworkError> {
        if self.assigned.remove(name).is_some() {
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> Result<(), NetworkError> {
        let text: String = self
            .assigned
            .iter()
            .map(|(n, ip)| format!("{n} {ip}\n"))
            .collect();
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .map_err(|e| NetworkError::State {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }
}

/// Makes sure `bridge` exists, is up and carries the subnet's gateway address.
pub fn ensure_bridge(bridge: &str, subnet: Subnet) -> Result<(), NetworkError> {
    // Ask ip(8) rather than /sys/class/net: /sys shows the namespace that mounted it, which is
    // not this process's when an agent runs in a board's network namespace.
    let exists = ip_output(&["link", "show", "dev", bridge]).is_ok();
    if !exists {
        ip(&["link", "add", bridge, "type", "bridge"])?;
    }
    let cidr = format!("{}/{}", subnet.gateway(), subnet.prefix_len);
    let shown = ip_output(&["-4", "addr", "show", "dev", bridge])?;
    if !shown.contains(&format!("inet {cidr}")) {
        ip(&["addr", "add", &cidr, "dev", bridge])?;
    }
    ip(&["link", "set", bridge, "up"])
}

/// Removes a bridge (used by tests and `texu demo down`).
pub fn remove_bridge(bridge: &str) -> Result<(), NetworkError> {
    if ip_output(&["link", "show", "dev", bridge]).is_ok() {
        ip(&["link", "del", bridge])?;
    }
    Ok(())
}

/// Runs `ip ARGS...`; an error carries the arguments and ip's own message.
pub(crate) fn ip(args: &[&str]) -> Result<(), NetworkError> {
    ip_output(args).map(|_| ())
}

/// Runs `ip ARGS...` and returns what it printed.
pub(crate) fn ip_output(args: &[&str]) -> Result<String, NetworkError> {
    let err = |message: String| NetworkError::Ip {
        args: args.join(" "),
        message,
    };
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_stable_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("addresses");
        let subnet = Subnet::parse("198.19.2.0/29").unwrap();
        let mut a = Addresses::load(&path, subnet).unwrap();
        let x = a.get_or_assign("app-0").unwrap();
        let y = a.get_or_assign("app-1").unwrap();
        assert_eq!(a.get_or_assign("app-0").unwrap(), x);
        assert_ne!(x, y);
        let mut b = Addresses::load(&path, subnet).unwrap();
        assert_eq!(b.get_or_assign("app-1").unwrap(), y, "kept across restarts");
        b.release("app-0").unwrap();
        assert_eq!(
            b.get_or_assign("db-0").unwrap(),
            x,
            "freed addresses are reused"
        );
        for i in 0..10 {
            if b.get_or_assign(&format!("c-{i}")).is_err() {
                return;
            }
        }
        panic!("a /29 cannot hold 12 containers");
    }
}
