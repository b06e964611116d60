//! The LXC implementation of [`Runtime`]: one LXC path per agent, liblxc calls on blocking
//! threads, and a few files of our own in each container directory.
//!
//! Files in `<lxcpath>/<name>/` besides LXC's `config`, `rootfs/` and `lxc.log`:
//! - `texu.command`, `texu.env`: the command and environment (NUL-separated), for `start` and
//!   `exec`, so an agent that restarts can start a container again without its spec;
//! - `texu.init`: pids and start times of the container's init and LXC monitor, written at
//!   start. liblxc's `state()` says STOPPED when it cannot reach the monitor (its command
//!   socket is an abstract unix socket, bound in the network namespace it was started from),
//!   so a live init recorded here means the container still runs;
//! - `texu.stopped`: present when the runtime stopped the container;
//! - `texu.oom`: the memory cgroup's OOM record, saved by the stop hook (`texu-hook`) before
//!   LXC deletes the cgroup;
//! - `hostname`, `hosts`, `home/`: mounted into host-image containers.
//!
//! `<lxcpath>/.texu-templates/` holds one base per LXC template used (see `templates`).

mod create;
pub(crate) mod files;
mod lifecycle;
mod templates;

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use self::files::{io_err, nul_split, InitRecord, INIT_FILE, STOPPED_FILE};
use self::lifecycle::HOME_CGROUPS;
use super::cgroup::{keyed_value, CgroupLayout, ProcessCgroups};
use super::config::{HostLayout, OOM_RECORD_FILE};
use super::idmap::IdMap;
use super::{
    ContainerSpec, ContainerState, ExecOutput, ExitReason, Phase, Result, Runtime, RuntimeError,
    Usage,
};
use crate::lxc::{self, LxcContainer, LxcError, LxcState};

/// Containers in one LXC path, run through liblxc.
#[derive(Debug, Clone)]
pub struct LxcRuntime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    lxcpath: PathBuf,
    host: HostLayout,
    cgroup_prefix: String,
    creating: Mutex<HashSet<String>>,
    /// Held while a template base is checked or built (see `templates`).
    bases: Mutex<()>,
}

/// What `observe` saw.
#[derive(Debug, Clone, Copy)]
struct Observed {
    phase: Phase,
    init_pid: Option<u32>,
    monitor_reachable: bool,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether a path can appear in LXC config lines and in hook commands (which liblxc runs
/// through `sh -c`).
fn is_plain_path(path: &Path) -> bool {
    path.is_absolute()
        && path.as_os_str().as_bytes().iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'+' | b'@' | b',')
        })
}

/// Removes `name` from the set of containers being created when dropped.
struct Claim<'a> {
    set: &'a Mutex<HashSet<String>>,
    name: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.name);
    }
}

impl LxcRuntime {
    /// A runtime over `lxcpath` (created, mode 0700, if missing), on this board.
    pub fn new(lxcpath: impl Into<PathBuf>) -> Result<Self> {
        Self::with_host(lxcpath, HostLayout::detect())
    }

    /// A runtime over `lxcpath` with a given view of the board (tests). The board must have
    /// a range of subordinate ids for root (see [`IdMap`]).
    pub fn with_host(lxcpath: impl Into<PathBuf>, mut host: HostLayout) -> Result<Self> {
        if host.idmap.is_none() {
            host.idmap = Some(IdMap::detect().map_err(RuntimeError::IdMap)?);
        }
        let lxcpath = lxcpath.into();
        // Searchable by others, not listable: an unprivileged container's root (an ordinary
        // uid on the board) walks through it to its rootfs, volumes and files.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&lxcpath)
            .map_err(io_err("", "create the LXC path", &lxcpath))?;
        fs::set_permissions(&lxcpath, fs::Permissions::from_mode(0o711)).map_err(io_err(
            "",
            "set the mode of the LXC path",
            &lxcpath,
        ))?;
        let lxcpath =
            fs::canonicalize(&lxcpath).map_err(io_err("", "resolve the LXC path", &lxcpath))?;
        if !is_plain_path(&lxcpath) {
            return Err(RuntimeError::LxcPath {
                path: lxcpath,
                problem: "may hold only letters, digits and / . _ - + @ , (it goes into LXC \
                          config lines and hook commands)",
            });
        }
        if let Some(closed) = lxcpath
            .ancestors()
            .find(|a| fs::metadata(a).is_ok_and(|m| m.mode() & 0o001 == 0))
        {
            return Err(RuntimeError::LxcPath {
                path: closed.to_owned(),
                problem: "(a directory above the LXC path) must be searchable by others \
                          (chmod o+x): unprivileged containers' root, an ordinary uid on the \
                          board, walks through it to its root filesystem",
            });
        }
        let cgroup_prefix = format!("texu-{:016x}", fnv1a(lxcpath.as_os_str().as_bytes()));
        HOME_CGROUPS.get_or_init(ProcessCgroups::current);
        Ok(Self {
            inner: Arc::new(Inner {
                lxcpath,
                host,
                cgroup_prefix,
                creating: Mutex::new(HashSet::new()),
                bases: Mutex::new(()),
            }),
        })
    }

    /// The LXC path.
    pub fn lxcpath(&self) -> &Path {
        &self.inner.lxcpath
    }

    /// The board as this runtime sees it.
    pub fn host(&self) -> &HostLayout {
        &self.inner.host
    }

    /// The cgroup directory (under each hierarchy's root) this runtime's containers go in.
    pub fn cgroup_prefix(&self) -> &str {
        &self.inner.cgroup_prefix
    }

    /// Whether the container's memory cgroup recorded an OOM kill since it last started
    /// (also after it stopped).
    pub async fn oom_killed(&self, name: &str) -> Result<bool> {
        Ok(self.state(name).await?.is_some_and(|s| s.oom_killed()))
    }

    /// Removes this runtime's empty cgroup directories, for when its LXC path is retired.
    /// Best effort: directories still in use stay.
    pub fn remove_cgroup_dirs(&self) {
        for mount in CgroupLayout::all_mount_points() {
            let base = mount.join(&self.inner.cgroup_prefix);
            if let Ok(entries) = fs::read_dir(&base) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        let _ = fs::remove_dir(e.path());
                    }
                }
            }
            let _ = fs::remove_dir(&base);
        }
    }

    async fn blocking<T, F>(&self, name: &str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|source| RuntimeError::Blocking {
                name: name.to_owned(),
                source,
            })?
    }
}

impl Inner {
    fn dir(&self, name: &str) -> PathBuf {
        self.lxcpath.join(name)
    }

    /// The id map a container gets: none when privileged.
    fn idmap_for(&self, privileged: bool) -> Option<&IdMap> {
        self.host.idmap.as_ref().filter(|_| !privileged)
    }

    fn open(&self, name: &str) -> Result<LxcContainer> {
        LxcContainer::new(name, &self.lxcpath).map_err(|e| match e {
            LxcError::InvalidName(n) => RuntimeError::InvalidName(n),
            other => other.into(),
        })
    }

    /// Opens a container that must be defined.
    fn open_defined(&self, name: &str) -> Result<LxcContainer> {
        let c = self.open(name)?;
        if !c.is_defined()? {
            return Err(RuntimeError::NotFound {
                name: name.to_owned(),
            });
        }
        Ok(c)
    }

    fn claim(&self, name: &str) -> Result<Claim<'_>> {
        let mut set = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        if !set.insert(name.to_owned()) {
            return Err(RuntimeError::AlreadyExists {
                name: name.to_owned(),
            });
        }
        Ok(Claim {
            set: &self.creating,
            name: name.to_owned(),
        })
    }

    fn read_init(&self, name: &str) -> Option<InitRecord> {
        let text = fs::read_to_string(self.dir(name).join(INIT_FILE)).ok()?;
        Some(InitRecord::parse(&text))
    }

    fn read_nul_file(&self, name: &str, file: &str) -> Result<Vec<String>> {
        let path = self.dir(name).join(file);
        match fs::read(&path) {
            Ok(data) => Ok(nul_split(&data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_err(name, "read", &path)(e)),
        }
    }

    /// Where the container is in its lifecycle, cross-checking liblxc with the recorded init.
    fn observe(&self, c: &LxcContainer) -> Result<Observed> {
        let record = self.read_init(c.name());
        let live_init = record
            .and_then(|r| r.init)
            .filter(|p| p.alive())
            .map(|p| p.pid);
        let monitor_alive = record.and_then(|r| r.monitor).is_some_and(|p| p.alive());
        let reachable = |phase| -> Result<Observed> {
            Ok(Observed {
                phase,
                init_pid: c.init_pid()?.or(live_init),
                monitor_reachable: true,
            })
        };
        let unreachable = |phase, init_pid| Observed {
            phase,
            init_pid,
            monitor_reachable: false,
        };
        match c.state()? {
            LxcState::Running | LxcState::Thawed => reachable(Phase::Running),
            LxcState::Starting => reachable(Phase::Starting),
            LxcState::Stopping | LxcState::Aborting => reachable(Phase::Stopping),
            LxcState::Freezing | LxcState::Frozen => reachable(Phase::Frozen),
            // liblxc says STOPPED also when it cannot reach the monitor: trust the processes.
            LxcState::Stopped | LxcState::Unknown => Ok(match (record, live_init) {
                (_, Some(pid)) => unreachable(Phase::Running, Some(pid)),
                (None, None) => Observed {
                    phase: Phase::Created,
                    init_pid: None,
                    monitor_reachable: true,
                },
                (Some(_), None) if monitor_alive => unreachable(Phase::Stopping, None),
                (Some(_), None) => Observed {
                    phase: Phase::Stopped,
                    init_pid: None,
                    monitor_reachable: true,
                },
            }),
        }
    }

    fn state(&self, name: &str) -> Result<Option<ContainerState>> {
        let c = self.open(name)?;
        if !c.is_defined()? {
            return Ok(None);
        }
        let obs = self.observe(&c)?;
        let dir = self.dir(name);
        let oom_kills = match (obs.phase.is_alive(), obs.init_pid, &self.host.cgroup) {
            (true, Some(pid), Some(cg)) => cg.oom_kills_of(pid).unwrap_or(0),
            (true, _, _) => 0,
            (false, _, _) => fs::read_to_string(dir.join(OOM_RECORD_FILE))
                .ok()
                .and_then(|t| keyed_value(&t, "oom_kill"))
                .unwrap_or(0),
        };
        let exit_reason = (obs.phase == Phase::Stopped).then(|| {
            if dir.join(STOPPED_FILE).exists() {
                ExitReason::StoppedByRuntime
            } else if oom_kills > 0 {
                ExitReason::OomKilled
            } else {
                ExitReason::Exited
            }
        });
        Ok(Some(ContainerState {
            phase: obs.phase,
            init_pid: obs.init_pid.filter(|_| obs.phase.is_alive()),
            exit_reason,
            oom_kills,
            monitor_reachable: obs.monitor_reachable,
        }))
    }
}

#[async_trait]
impl Runtime for LxcRuntime {
    async fn create(&self, spec: &ContainerSpec) -> Result<()> {
        let spec = spec.clone();
        let name = spec.name.clone();
        self.blocking(&name, move |rt| rt.create(&spec)).await
    }

    async fn start(&self, name: &str) -> Result<()> {
        let n = name.to_owned();
        self.blocking(name, move |rt| rt.start(&n)).await
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<()> {
        let n = name.to_owned();
        self.blocking(name, move |rt| rt.stop(&n, grace)).await
    }

    async fn destroy(&self, name: &str) -> Result<()> {
        let n = name.to_owned();
        self.blocking(name, move |rt| rt.destroy(&n)).await
    }

    async fn state(&self, name: &str) -> Result<Option<ContainerState>> {
        let n = name.to_owned();
        self.blocking(name, move |rt| rt.state(&n)).await
    }

    async fn list(&self) -> Result<Vec<String>> {
        self.blocking("", |rt| Ok(lxc::list_defined(&rt.lxcpath)?))
            .await
    }

    async fn exec(&self, name: &str, argv: &[String], timeout: Duration) -> Result<ExecOutput> {
        let n = name.to_owned();
        let argv = argv.to_vec();
        self.blocking(name, move |rt| rt.exec(&n, &argv, timeout))
            .await
    }

    async fn usage(&self, name: &str) -> Result<Usage> {
        let n = name.to_owned();
        self.blocking(name, move |rt| rt.usage(&n)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths() {
        assert!(is_plain_path(Path::new("/var/lib/texu/lxc")));
        assert!(is_plain_path(Path::new("/tmp/.tmpAb12_x/lxc-1")));
        for bad in [
            "relative/lxc",
            "/a b",
            "/a;rm",
            "/a$(x)",
            "/a'b",
            "/a\nb",
            "/a\"b",
        ] {
            assert!(!is_plain_path(Path::new(bad)), "{bad:?}");
        }
    }

    #[test]
    fn cgroup_prefix_is_stable_per_path() {
        assert_eq!(fnv1a(b"/var/lib/texu/lxc"), fnv1a(b"/var/lib/texu/lxc"));
        assert_ne!(fnv1a(b"/var/lib/texu/lxc"), fnv1a(b"/var/lib/texu/lxc2"));
    }

    #[test]
    fn rejects_an_lxc_path_a_shell_would_split() {
        let t = tempfile::tempdir().unwrap();
        let err = LxcRuntime::new(t.path().join("my lxc")).unwrap_err();
        assert!(matches!(err, RuntimeError::LxcPath { .. }), "{err}");
    }
}
