//! Claiming a cluster's name and network so that clusters started at once, by threads of one
//! test process or by separate processes, never share either.
//!
//! A cluster is claimed by creating its state directory with an `owner` file (pid and start
//! time) while holding an exclusive lock on [`LOCK_FILE`]. A directory whose owner is gone is
//! what a crashed run left behind: its leftovers are removed and the name is taken again.

use std::fs::File;
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};

use super::plan::{self, MAX_NET};
use super::{down, net, procs};
use super::{ClusterError, Result, Slot};

/// Held while claiming.
const LOCK_FILE: &str = "/tmp/texu-clusters.lock";
/// The owner record in a cluster's state directory.
const OWNER_FILE: &str = "owner";

/// The live process that owns cluster `name`, if any.
pub fn owner(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(plan::state_dir(name).join(OWNER_FILE)).ok()?;
    let mut words = text.split_whitespace();
    let pid: u32 = words.next()?.parse().ok()?;
    let start: u64 = words.next()?.parse().ok()?;
    (procs::stat(pid).map(|(_, t)| t) == Some(start)).then_some(pid)
}

/// Claims a name and network for a new cluster; the name and network.
pub fn claim(slot: &Slot) -> Result<(String, u8)> {
    let _lock = lock()?;
    match slot {
        Slot::Named { name, net } => {
            plan::validate_name(name)?;
            if let Some(pid) = owner(name) {
                return Err(ClusterError::AlreadyRunning {
                    name: name.clone(),
                    pid,
                });
            }
            take(name, *net)?;
            Ok((name.clone(), *net))
        }
        Slot::Auto => {
            // Sweep every crashed test cluster now, not only the one reused: a killed test run
            // leaves agents and containers running until something removes them.
            for k in 1..=MAX_NET {
                let name = format!("t{k}");
                if owner(&name).is_none() && down::has_leftovers(&name) {
                    down::remove_leftovers(&name)?;
                }
            }
            for k in 1..=MAX_NET {
                let name = format!("t{k}");
                if owner(&name).is_some() {
                    continue;
                }
                match take(&name, k) {
                    Ok(()) => return Ok((name, k)),
                    Err(ClusterError::NetworkInUse { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(ClusterError::NoFreeSlot)
        }
    }
}

/// Takes an unowned name: removes what an earlier run left, checks that nothing else uses the
/// network, and writes this process as the owner.
fn take(name: &str, k: u8) -> Result<()> {
    if down::has_leftovers(name) {
        down::remove_leftovers(name)?;
    }
    let network = format!("198.18.{k}.0/24");
    if let Some(device) = net::holder_of(&network)? {
        return Err(ClusterError::NetworkInUse { network, device });
    }
    let dir = plan::state_dir(name);
    std::fs::create_dir_all(dir.join("logs")).map_err(|source| ClusterError::Io {
        what: "create the cluster's state directory".into(),
        path: dir.clone(),
        source,
    })?;
    let me = std::process::id();
    let start = procs::stat(me).map(|(_, t)| t).unwrap_or_default();
    let path = dir.join(OWNER_FILE);
    std::fs::write(&path, format!("{me} {start}\n")).map_err(|source| ClusterError::Io {
        what: "write the cluster's owner".into(),
        path,
        source,
    })
}

fn lock() -> Result<Flock<File>> {
    let path = PathBuf::from(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| ClusterError::Io {
            what: "open the cluster lock".into(),
            path: path.clone(),
            source,
        })?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| ClusterError::Io {
        what: "lock the cluster lock".into(),
        path,
        source: errno.into(),
    })
}
