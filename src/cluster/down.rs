//! Removing everything of a cluster by its name alone: what `Cluster::teardown` runs last, what
//! `texu demo down` runs after a crash, and what a new cluster runs before it reuses a name.
//!
//! Nothing here needs the process that made the cluster: processes are found by their command
//! line (every one of them names a path in the cluster's state directory), containers by the
//! boards' LXC paths, namespaces and interfaces by their names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::plan;
use super::{containers, net, procs};
use super::{ClusterError, Result};

/// What [`remove_leftovers`] found and removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DownReport {
    /// Processes killed (agents, controller, LXC monitors, strays in board namespaces).
    pub processes: usize,
    /// Containers stopped and destroyed.
    pub containers: Vec<String>,
    /// Network namespaces deleted.
    pub namespaces: Vec<String>,
    /// Host interfaces deleted.
    pub links: Vec<String>,
    /// The state directory, when it was removed.
    pub dir: Option<PathBuf>,
}

impl DownReport {
    /// Whether there was nothing to remove.
    pub fn is_empty(&self) -> bool {
        self.processes == 0
            && self.containers.is_empty()
            && self.namespaces.is_empty()
            && self.links.is_empty()
            && self.dir.is_none()
    }
}

impl std::fmt::Display for DownReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return write!(f, "nothing to remove");
        }
        let mut parts = Vec::new();
        if self.processes > 0 {
            parts.push(format!("{} processes", self.processes));
        }
        if !self.containers.is_empty() {
            parts.push(format!("{} containers", self.containers.len()));
        }
        if !self.namespaces.is_empty() {
            parts.push(format!("namespaces {}", self.namespaces.join(" ")));
        }
        if !self.links.is_empty() {
            parts.push(format!("interfaces {}", self.links.join(" ")));
        }
        if let Some(dir) = &self.dir {
            parts.push(format!("{}", dir.display()));
        }
        write!(f, "removed {}", parts.join(", "))
    }
}

/// Removes every process, container, namespace, interface, route and file of cluster `name`.
/// Safe to run when nothing is left; never touches another cluster's things.
pub fn remove_leftovers(name: &str) -> Result<DownReport> {
    plan::validate_name(name)?;
    let mut report = DownReport::default();
    let dir = plan::state_dir(name);
    let needle = format!("{}/", dir.display());

    // The agents and the controller first, so nothing restarts what is being removed. LXC
    // monitors stay for now: they are how `lxc-stop` reaches a container.
    let first: Vec<u32> = procs::with_cmdline_containing(&needle)
        .into_iter()
        .filter(|(_, line)| !line.starts_with("[lxc monitor]"))
        .map(|(pid, _)| pid)
        .filter(|pid| procs::signal(*pid, Signal::SIGKILL))
        .collect();
    procs::wait_gone(&first, Duration::from_secs(5));
    report.processes += first.len();

    let netns_prefix = plan::netns_prefix(name);
    for (board, lxc_path) in board_lxc_paths(&dir) {
        let ns = format!("{netns_prefix}{board}");
        let ns = net::netns_exists(&ns).then_some(ns);
        report
            .containers
            .extend(containers::destroy_all(ns.as_deref(), &lxc_path));
    }

    let rest: Vec<u32> = procs::with_cmdline_containing(&needle)
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| procs::signal(*pid, Signal::SIGKILL))
        .collect();
    procs::wait_gone(&rest, Duration::from_secs(5));
    report.processes += rest.len();

    let mut namespaces: Vec<String> = net::namespaces()
        .into_iter()
        .filter(|ns| {
            ns.strip_prefix(&netns_prefix)
                .is_some_and(|n| n.parse::<usize>().is_ok())
        })
        .collect();
    namespaces.sort();
    for ns in namespaces {
        report.processes += net::delete_netns(&ns)?;
        report.namespaces.push(ns);
    }
    // The host ends of the veth pairs went with the namespaces; the bridge last (with it go the
    // host's routes through it).
    let mut links: Vec<String> = net::links()
        .into_iter()
        .filter(|l| plan::is_cluster_link(name, l))
        .collect();
    links.sort_by_key(|l| l.ends_with("ov"));
    for link in links {
        net::delete_link(&link)?;
        report.links.push(link);
    }

    let mut lxc_paths = Vec::new();
    for (_, lxc_path) in board_lxc_paths(&dir) {
        if let Ok(runtime) = texu_agent::runtime::LxcRuntime::new(&lxc_path) {
            runtime.remove_cgroup_dirs();
            lxc_paths.push(runtime.lxcpath().to_owned());
        }
    }
    if dir.exists() {
        refuse_if_mounted(&dir)?;
        std::fs::remove_dir_all(&dir).map_err(|source| ClusterError::Io {
            what: "remove the cluster's state directory".into(),
            path: dir.clone(),
            source,
        })?;
        report.dir = Some(dir);
    }
    // Last, as the containers' monitors take their locks until they are gone.
    for lxc_path in lxc_paths {
        texu_agent::lxc::remove_lock_dir(&lxc_path);
    }
    Ok(report)
}

/// Whether anything of cluster `name` is on this machine: its state directory (every process
/// and container of a cluster lives in it), a board namespace or a host interface.
pub fn has_leftovers(name: &str) -> bool {
    let prefix = plan::netns_prefix(name);
    plan::state_dir(name).exists()
        || net::namespaces().iter().any(|ns| ns.starts_with(&prefix))
        || net::links().iter().any(|l| plan::is_cluster_link(name, l))
}

/// `(board number, LXC path)` of every board directory in a state directory.
fn board_lxc_paths(dir: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut boards: Vec<(usize, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let board = e
                .file_name()
                .to_str()?
                .strip_prefix("board")?
                .parse()
                .ok()?;
            Some((board, e.path().join("lxc")))
        })
        .filter(|(_, lxc)| lxc.is_dir())
        .collect();
    boards.sort();
    boards
}

/// Fails when anything is mounted under `dir`: removing it would reach into the mount.
fn refuse_if_mounted(dir: &Path) -> Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = format!("{}/", dir.display());
    let mounted: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&prefix) || *m == dir.to_string_lossy())
        .collect();
    if mounted.is_empty() {
        Ok(())
    } else {
        Err(ClusterError::Config(format!(
            "not removing {}: still mounted there: {}",
            dir.display(),
            mounted.join(" ")
        )))
    }
}
