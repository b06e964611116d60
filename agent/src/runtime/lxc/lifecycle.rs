//! Running containers: start (and moving the agent back out of LXC's monitor cgroup), stop
//! with a grace period, destroy, exec and usage.

use std::fs;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, warn};

use super::files::{
    io_err, log_len, log_since, remove_file_if_exists, write_atomic, InitRecord, COMMAND_FILE,
    ENV_FILE, INIT_FILE, STOPPED_FILE,
};
use super::Inner;
use crate::lxc::{AttachRequest, LxcContainer, LxcError};
use crate::runtime::cgroup::{CgroupLayout, ProcessCgroups};
use crate::runtime::config::{LOG_FILE, OOM_RECORD_FILE};
use crate::runtime::{ExecOutput, Phase, Result, RuntimeError, Usage, EXEC_OUTPUT_LIMIT};

/// How often stop polls for the container to be gone.
const POLL: Duration = Duration::from_millis(20);
/// How long to wait for a container to disappear after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// How long a start waits for the previous run's cgroups (its monitor exiting) to empty.
const CGROUP_DRAIN_WAIT: Duration = Duration::from_secs(3);

/// The cgroups this process was in when its first runtime was made (see [`ProcessCgroups`]).
pub(super) static HOME_CGROUPS: OnceLock<Option<ProcessCgroups>> = OnceLock::new();

/// Serializes starts: each one moves this process into the new container's monitor cgroup
/// until we move it back, and two at once would leave it in one of them.
static START_LOCK: Mutex<()> = Mutex::new(());

impl Inner {
    /// Deletes leftover cgroups of a container (after a crash, or while the previous run's
    /// monitor is still exiting, LXC would refuse to create them again). A cgroup that still
    /// holds a process is waited for, at most [`CGROUP_DRAIN_WAIT`], then left for LXC to report.
    fn remove_stale_cgroups(&self, name: &str) {
        let deadline = Instant::now() + CGROUP_DRAIN_WAIT;
        for mount in CgroupLayout::all_mount_points() {
            let base = mount.join(&self.cgroup_prefix);
            for sub in [format!("{name}.monitor"), name.to_owned()] {
                remove_cgroup_when_empty(name, &base.join(sub), deadline);
            }
        }
    }

    pub(super) fn start(&self, name: &str) -> Result<()> {
        let c = self.open_defined(name)?;
        let phase = self.observe(&c)?.phase;
        // Stopping: LXC is still tearing the last run down, and its cgroups are in the way.
        if phase == Phase::Stopping && !self.wait_stopped(&c, Instant::now() + KILL_WAIT)? {
            return Err(RuntimeError::StopTimeout {
                name: name.to_owned(),
                waited: KILL_WAIT,
            });
        }
        if phase != Phase::Stopping && phase.is_alive() {
            return Ok(());
        }
        let dir = self.dir(name);
        let command = self.read_nul_file(name, COMMAND_FILE)?;
        for file in [STOPPED_FILE, OOM_RECORD_FILE, INIT_FILE] {
            let path = dir.join(file);
            remove_file_if_exists(&path).map_err(io_err(name, "remove", &path))?;
        }
        self.remove_stale_cgroups(name);
        let log = dir.join(LOG_FILE);
        let log_from = log_len(&log);
        c.want_daemonize(true)?;
        let argv: Vec<&str> = command.iter().map(String::as_str).collect();
        let started = Instant::now();
        let result = {
            let _serial = START_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let result = c.start(!argv.is_empty(), &argv);
            if let Some(home) = HOME_CGROUPS.get().and_then(Option::as_ref) {
                if let Err(e) = home.rejoin() {
                    warn!(container = name, error = %e, "could not move the agent back to its own cgroups after a start");
                }
            }
            result
        };
        result.map_err(|source| RuntimeError::Start {
            name: name.to_owned(),
            log: log_since(&log, log_from),
            source: Box::new(source),
        })?;
        let pid = c.init_pid()?;
        let record = InitRecord::capture(pid);
        let path = dir.join(INIT_FILE);
        write_atomic(&path, record.to_text().as_bytes(), 0o644)
            .map_err(io_err(name, "write", &path))?;
        debug!(container = name, ?pid, elapsed = ?started.elapsed(), "started");
        Ok(())
    }

    /// Polls until the container is no longer alive or `deadline` passes.
    fn wait_stopped(&self, c: &LxcContainer, deadline: Instant) -> Result<bool> {
        loop {
            if !self.observe(c)?.phase.is_alive() {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            thread::sleep(POLL.min(deadline - now));
        }
    }

    pub(super) fn stop(&self, name: &str, grace: Duration) -> Result<()> {
        let c = self.open_defined(name)?;
        let obs = self.observe(&c)?;
        if !obs.phase.is_alive() {
            return Ok(());
        }
        let dir = self.dir(name);
        let marker = dir.join(STOPPED_FILE);
        write_atomic(&marker, b"", 0o644).map_err(io_err(name, "write", &marker))?;
        let deadline = Instant::now() + grace;

        if !grace.is_zero() {
            if let Some(pid) = obs.init_pid {
                let app = !self.read_nul_file(name, COMMAND_FILE)?.is_empty();
                if app {
                    // LXC's init answers SIGTERM by killing everything one second later;
                    // signalling its children directly gives them the whole grace period.
                    let children = init_children(pid);
                    if children.is_empty() {
                        let _ = kill(Pid::from_raw(pid_t(pid)), Signal::SIGTERM);
                    }
                    for child in children {
                        let _ = kill(Pid::from_raw(pid_t(child)), Signal::SIGTERM);
                    }
                } else if obs.monitor_reachable {
                    // A booted init: its configured halt signal (lxc.signal.halt).
                    let _ = c.shutdown(grace)?;
                } else {
                    let _ = kill(Pid::from_raw(pid_t(pid)), Signal::SIGPWR);
                }
            }
            if self.wait_stopped(&c, deadline)? {
                return Ok(());
            }
        }

        let obs = self.observe(&c)?;
        if obs.monitor_reachable {
            if let Err(e) = c.stop() {
                // It may have stopped between the two looks.
                if self.observe(&c)?.phase.is_alive() {
                    return Err(e.into());
                }
            }
        } else if let Some(pid) = obs.init_pid {
            let _ = kill(Pid::from_raw(pid_t(pid)), Signal::SIGKILL);
        }
        if self.wait_stopped(&c, Instant::now() + KILL_WAIT)? {
            Ok(())
        } else {
            Err(RuntimeError::StopTimeout {
                name: name.to_owned(),
                waited: KILL_WAIT,
            })
        }
    }

    pub(super) fn destroy(&self, name: &str) -> Result<()> {
        let c = self.open(name)?;
        let dir = self.dir(name);
        if !c.is_defined()? {
            if dir.exists() {
                fs::remove_dir_all(&dir).map_err(io_err(name, "remove", &dir))?;
            }
            return Ok(());
        }
        if self.observe(&c)?.phase.is_alive() {
            self.stop(name, Duration::ZERO)?;
        }
        let log = dir.join(LOG_FILE);
        let log_from = log_len(&log);
        if let Err(e) = c.destroy() {
            let tail = log_since(&log, log_from);
            warn!(container = name, log = %tail, "liblxc destroy failed");
            return Err(e.into());
        }
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err(name, "remove", &dir))?;
        }
        self.remove_stale_cgroups(name);
        Ok(())
    }

    pub(super) fn exec(
        &self,
        name: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let c = self.open_defined(name)?;
        let obs = self.observe(&c)?;
        if !obs.phase.is_alive() {
            return Err(RuntimeError::NotRunning {
                name: name.to_owned(),
            });
        }
        if !obs.monitor_reachable {
            return Err(RuntimeError::MonitorUnreachable {
                name: name.to_owned(),
            });
        }
        let env = self.read_nul_file(name, ENV_FILE)?;
        let req = AttachRequest {
            argv,
            env: &env,
            timeout,
            output_limit: EXEC_OUTPUT_LIMIT,
        };
        match c.attach_run(&req) {
            Ok(out) => Ok(ExecOutput {
                status: out.status,
                stdout: out.stdout,
                stderr: out.stderr,
                truncated: out.truncated,
            }),
            Err(LxcError::AttachTimeout {
                name,
                command,
                timeout,
            }) => Err(RuntimeError::ExecTimeout {
                name,
                command,
                timeout,
            }),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn usage(&self, name: &str) -> Result<Usage> {
        let c = self.open_defined(name)?;
        let obs = self.observe(&c)?;
        let (true, Some(pid)) = (obs.phase.is_alive(), obs.init_pid) else {
            return Err(RuntimeError::NotRunning {
                name: name.to_owned(),
            });
        };
        let Some(cg) = &self.host.cgroup else {
            return Err(RuntimeError::NoCgroups {
                name: name.to_owned(),
            });
        };
        let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
        cg.usage_of(pid)
            .map_err(io_err(name, "read the cgroup usage named in", &path))
    }
}

/// Pids of the direct children of `pid` (LXC's init: the command and orphans it reaps).
fn init_children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn pid_t(pid: u32) -> libc::pid_t {
    libc::pid_t::try_from(pid).unwrap_or(libc::pid_t::MAX)
}

/// Removes the empty directories below `dir`, deepest first (cgroup directories that still
/// hold processes refuse and stay).
/// Removes one cgroup directory once it holds no process, polling until `deadline` while the
/// kernel reports it busy (a monitor or init that is still exiting).
fn remove_cgroup_when_empty(name: &str, path: &std::path::Path, deadline: Instant) {
    loop {
        if !path.is_dir() {
            return;
        }
        // Attach leaves sub-cgroups (`.lxc`): empty ones go first, deepest first.
        remove_empty_subdirs(path);
        match fs::remove_dir(path) {
            Ok(()) => {
                debug!(container = name, path = %path.display(), "removed a stale cgroup");
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                thread::sleep(POLL);
            }
            Err(e) => {
                debug!(container = name, path = %path.display(), error = %e, "stale cgroup stays");
                return;
            }
        }
    }
}

fn remove_empty_subdirs(dir: &std::path::Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty_subdirs(&e.path());
            let _ = fs::remove_dir(e.path());
        }
    }
}
