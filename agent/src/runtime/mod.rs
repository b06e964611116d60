//! The container runtime: what the reconciler asks of a board's containers (create, start, stop,
//! destroy, state, list, exec, usage), behind one trait with an LXC implementation
//! ([`LxcRuntime`]) and a fake for unit tests ([`FakeRuntime`]).
//!
//! The types here are the runtime's own plain values ([`ContainerSpec`] and friends), not
//! texu-api's: the reconciler maps a `Role` into a spec.
//!
//! Every operation is idempotent where that makes sense for a level-triggered reconciler:
//! starting a running container, stopping a stopped one and destroying a missing one succeed.

pub mod cgroup;
pub mod config;
pub mod fake;
pub mod idmap;
pub mod lxc;
pub mod resolve;
mod spec;
pub mod targets;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use async_trait::async_trait;

use crate::lxc::{LxcError, NameError};

pub use fake::{FakeCall, FakeOp, FakeRuntime};
pub use lxc::LxcRuntime;
pub use resolve::FileTargetError;
pub use spec::{ContainerSpec, FileMount, Image, NetConfig, SpecError, Volume, DEFAULT_PATH};

/// The lifecycle phase of a container as the runtime sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Defined but never started.
    Created,
    /// Being started.
    Starting,
    /// Its init process runs.
    Running,
    /// Being stopped.
    Stopping,
    /// It ran and stopped (see [`ContainerState::exit_reason`]).
    Stopped,
    /// Frozen (the runtime never freezes containers itself).
    Frozen,
}

impl Phase {
    /// Whether the container's processes exist (running, starting, stopping or frozen).
    pub const fn is_alive(self) -> bool {
        matches!(
            self,
            Self::Starting | Self::Running | Self::Stopping | Self::Frozen
        )
    }
}

/// Why a stopped container stopped, as far as the runtime knows. LXC does not record the exit
/// code of the container's command, so a command that ended by itself is [`ExitReason::Exited`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitReason {
    /// The kernel killed a process in the container for exceeding its memory limit.
    OomKilled,
    /// The runtime's `stop` (or `destroy`) stopped it.
    StoppedByRuntime,
    /// Its command ended on its own, or its init was killed from outside.
    Exited,
}

/// What the runtime observes of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// Lifecycle phase.
    pub phase: Phase,
    /// Host pid of the container's init (LXC's init for application containers), while alive.
    pub init_pid: Option<u32>,
    /// Why it stopped, when `phase` is `Stopped`.
    pub exit_reason: Option<ExitReason>,
    /// OOM kills the container's memory cgroup recorded since it last started (a running
    /// container may have lost a child process to the OOM killer and lived on).
    pub oom_kills: u64,
    /// Whether liblxc's monitor answered. When it does not (a container started from another
    /// network namespace, whose abstract command socket is out of reach), the phase comes from
    /// the recorded init process alone, and `stop` falls back to signals.
    pub monitor_reachable: bool,
}

impl ContainerState {
    /// Whether the memory cgroup recorded an OOM kill since the container last started.
    pub const fn oom_killed(&self) -> bool {
        self.oom_kills > 0
    }
}

/// CPU and memory use of a running container, read from its cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// CPU time used since the container started, in nanoseconds.
    pub cpu_nanos: u64,
    /// Memory charged to the container now, in bytes (page cache included).
    pub memory_bytes: u64,
}

/// How a command run inside a container ended, and what it printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status; 127 when the program does not exist in the container.
    pub status: ExitStatus,
    /// Standard output, at most [`EXEC_OUTPUT_LIMIT`] bytes.
    pub stdout: Vec<u8>,
    /// Standard error, at most [`EXEC_OUTPUT_LIMIT`] bytes.
    pub stderr: Vec<u8>,
    /// Whether output beyond the limit was dropped.
    pub truncated: bool,
}

/// Bytes of each output stream an `exec` keeps.
pub const EXEC_OUTPUT_LIMIT: usize = 64 * 1024;

/// Errors of the runtime. Each says which container and what failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The spec is not acceptable.
    #[error("container spec {name:?} is invalid")]
    InvalidSpec {
        /// Container name as given.
        name: String,
        /// What is wrong.
        #[source]
        source: SpecError,
    },
    /// A name given to an operation is not a valid container name.
    #[error("{0}")]
    InvalidName(#[source] NameError),
    /// `create` of a name that is already defined (or being created).
    #[error("container {name} already exists")]
    AlreadyExists {
        /// Container name.
        name: String,
    },
    /// The container is not defined.
    #[error("container {name} does not exist")]
    NotFound {
        /// Container name.
        name: String,
    },
    /// The container runs but liblxc cannot reach its monitor (its command socket lives in
    /// another network namespace), so the operation is not possible from here.
    #[error(
        "container {name} runs but its LXC monitor cannot be reached from this network namespace"
    )]
    MonitorUnreachable {
        /// Container name.
        name: String,
    },
    /// The operation needs a running container.
    #[error("container {name} is not running")]
    NotRunning {
        /// Container name.
        name: String,
    },
    /// The command's program does not exist (or is not executable) in the container.
    #[error("command {command} not found in the container's filesystem (container {name})")]
    CommandNotFound {
        /// Container name.
        name: String,
        /// The program as given.
        command: String,
    },
    /// The LXC template failed.
    #[error("LXC template {template:?} failed to create container {name}{}", log_suffix(.log))]
    Template {
        /// Container name.
        name: String,
        /// Template name.
        template: String,
        /// The last lines of the container's LXC log, if any.
        log: String,
        /// liblxc's error.
        #[source]
        source: Box<LxcError>,
    },
    /// A volume's host directory does not exist.
    #[error("volume source {path:?} of container {name} is not a directory")]
    VolumeSource {
        /// Container name.
        name: String,
        /// The host path.
        path: PathBuf,
    },
    /// A file to mount does not exist on the board.
    #[error("file {path:?} to mount in container {name} is not a regular file")]
    FileSource {
        /// Container name.
        name: String,
        /// The host path.
        path: PathBuf,
    },
    /// A file cannot be mounted at its path in the container.
    #[error("file {path:?} cannot be mounted in container {name}")]
    FileTarget {
        /// Container name.
        name: String,
        /// The path inside the container.
        path: PathBuf,
        /// Why.
        #[source]
        source: FileTargetError,
    },
    /// A rootfs image's directory does not exist.
    #[error("root filesystem {path:?} of container {name} is not a directory")]
    RootfsMissing {
        /// Container name.
        name: String,
        /// The path.
        path: PathBuf,
    },
    /// The spec asks for cgroup limits but no usable cgroup hierarchy was found.
    #[error(
        "container {name} asks for resource limits but this host has no memory cgroup controller"
    )]
    NoCgroups {
        /// Container name.
        name: String,
    },
    /// liblxc failed to start the container.
    #[error("container {name} failed to start{}", log_suffix(.log))]
    Start {
        /// Container name.
        name: String,
        /// The last lines of the container's LXC log, if any.
        log: String,
        /// liblxc's error.
        #[source]
        source: Box<LxcError>,
    },
    /// The container did not stop even after SIGKILL.
    #[error("container {name} did not stop within {waited:?} of being killed")]
    StopTimeout {
        /// Container name.
        name: String,
        /// How long we waited after the kill.
        waited: Duration,
    },
    /// An exec'd command did not finish in time (it was killed).
    #[error("command {command:?} in container {name} timed out after {timeout:?}")]
    ExecTimeout {
        /// Container name.
        name: String,
        /// The program.
        command: String,
        /// The limit.
        timeout: Duration,
    },
    /// Another liblxc failure.
    #[error(transparent)]
    Lxc(Box<LxcError>),
    /// A file of the runtime's own could not be read or written.
    #[error("could not {what} {path:?}{}", container_suffix(.name))]
    Io {
        /// Container name (empty for runtime-wide files).
        name: String,
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The LXC path is not usable.
    #[error("LXC path {path:?} {problem}")]
    LxcPath {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A volume's or file's mount point cannot be made safely in the container.
    #[error("container {name}: cannot make the mount point {path:?}")]
    MountTarget {
        /// Container name.
        name: String,
        /// The container path.
        path: PathBuf,
        /// Why.
        #[source]
        source: targets::TargetError,
    },
    /// No range of subordinate ids for unprivileged containers.
    #[error("cannot run unprivileged containers")]
    IdMap(#[source] idmap::IdMapError),
    /// The blocking task running liblxc panicked or was cancelled.
    #[error("the blocking task for container {name} failed")]
    Blocking {
        /// Container name.
        name: String,
        /// The cause.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A failure injected by [`FakeRuntime`].
    #[error("injected failure for container {name}: {message}")]
    Injected {
        /// Container name.
        name: String,
        /// The test's message.
        message: String,
    },
}

impl From<LxcError> for RuntimeError {
    fn from(e: LxcError) -> Self {
        Self::Lxc(Box::new(e))
    }
}

fn container_suffix(name: &str) -> String {
    if name.is_empty() {
        String::new()
    } else {
        format!(" (container {name})")
    }
}

fn log_suffix(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!("; LXC log:\n{log}")
    }
}

/// Result of the runtime.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// A board's container runtime.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// Defines a container and prepares its root filesystem, without starting it. Fails with
    /// `AlreadyExists` if the name is taken; on any other failure nothing is left behind.
    async fn create(&self, spec: &ContainerSpec) -> Result<()>;

    /// Starts a created container with its command. Succeeds at once if it already runs.
    async fn start(&self, name: &str) -> Result<()>;

    /// Asks the container's command to end (SIGTERM), waits up to `grace`, then kills it.
    /// Succeeds at once if it is not running.
    async fn stop(&self, name: &str, grace: Duration) -> Result<()>;

    /// Kills the container if it runs and deletes it with its root filesystem (volumes stay).
    /// Succeeds if it does not exist.
    async fn destroy(&self, name: &str) -> Result<()>;

    /// The container's state, or `None` if it is not defined.
    async fn state(&self, name: &str) -> Result<Option<ContainerState>>;

    /// Names of the containers defined in this runtime, sorted.
    async fn list(&self) -> Result<Vec<String>>;

    /// Runs `argv` inside the running container with its environment, kills it after
    /// `timeout`, and returns its exit status and output.
    async fn exec(&self, name: &str, argv: &[String], timeout: Duration) -> Result<ExecOutput>;

    /// CPU and memory use of the running container.
    async fn usage(&self, name: &str) -> Result<Usage>;
}
