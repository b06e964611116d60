//! The LXC containers of one board, seen from outside its agent: listing them, killing their
//! processes as a power cut would, and stopping and destroying them for good.
//!
//! LXC's command socket is an abstract unix socket bound in the board's network namespace, so
//! `lxc-stop` and `lxc-destroy` run inside that namespace. The agent also records each
//! container's init and LXC monitor (pid and start time) in `texu.init`; those pids are killed
//! directly when the monitor cannot be reached.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::procs;

/// The agent's record of a container's init and monitor processes.
const INIT_FILE: &str = "texu.init";

/// Names of the containers defined in `lxc_path`.
pub fn defined(lxc_path: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(lxc_path) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().join("config").is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

/// The live processes recorded in a container's `texu.init` (init first, then monitor).
pub fn recorded_processes(lxc_path: &Path, name: &str) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string(lxc_path.join(name).join(INIT_FILE)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace().skip(1);
            let pid: u32 = words.next()?.parse().ok()?;
            let start: u64 = words.next()?.parse().ok()?;
            // The same pid with another start time is a later, unrelated process.
            (procs::stat(pid).map(|(_, t)| t) == Some(start)).then_some(pid)
        })
        .collect()
}

/// The container's init pid, if it runs.
pub fn init_pid(lxc_path: &Path, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(lxc_path.join(name).join(INIT_FILE)).ok()?;
    let line = text.lines().find(|l| l.starts_with("init "))?;
    let mut words = line.split_whitespace().skip(1);
    let pid: u32 = words.next()?.parse().ok()?;
    let start: u64 = words.next()?.parse().ok()?;
    (procs::stat(pid).map(|(_, t)| t) == Some(start)).then_some(pid)
}

/// SIGKILLs every container's init (and with it everything in the container's pid namespace)
/// and LXC monitor, as a power cut would; the pids killed.
pub fn kill_all(lxc_path: &Path) -> Vec<u32> {
    let mut killed = Vec::new();
    for name in defined(lxc_path) {
        for pid in recorded_processes(lxc_path, &name) {
            if procs::signal(pid, Signal::SIGKILL) {
                killed.push(pid);
            }
        }
    }
    // Monitors of containers whose record is missing: `[lxc monitor] LXCPATH NAME`.
    let needle = format!("{} ", lxc_path.display());
    for (pid, line) in procs::with_cmdline_containing(&needle) {
        if line.starts_with("[lxc monitor]") && procs::signal(pid, Signal::SIGKILL) {
            killed.push(pid);
        }
    }
    procs::wait_gone(&killed, Duration::from_secs(5));
    killed
}

/// Stops and destroys every container in `lxc_path`, from inside namespace `netns` when it
/// still exists; the names destroyed.
pub fn destroy_all(netns: Option<&str>, lxc_path: &Path) -> Vec<String> {
    let names = defined(lxc_path);
    for name in &names {
        let _ = lxc(netns, "lxc-stop", lxc_path, name, &["-k"]);
    }
    // Whatever the monitors could not stop (or had no monitor left to stop it).
    kill_all(lxc_path);
    for name in &names {
        let _ = lxc(netns, "lxc-destroy", lxc_path, name, &["-f"]);
    }
    names
}

fn lxc(netns: Option<&str>, tool: &str, lxc_path: &Path, name: &str, extra: &[&str]) -> bool {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, tool]);
            c
        }
        None => Command::new(tool),
    };
    cmd.arg("-P").arg(lxc_path).args(["-n", name]).args(extra);
    procs::output_with_timeout(&mut cmd, tool, Duration::from_secs(20))
        .is_ok_and(|o| o.status.success())
}
