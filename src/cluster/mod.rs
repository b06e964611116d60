//! A multi-board Texu cluster on one Linux machine, for `texu demo` and the end-to-end tests.
//!
//! Each board is a network namespace joined to an overlay bridge in the host namespace, with
//! its own `texu agent` (started inside the namespace, with its own data dir and LXC path); the
//! controller runs in the host namespace on the overlay bridge's first address. Names and
//! addresses come from [`plan`]: clusters started at once (test threads, test processes, the
//! demo) each claim their own name and network ([`slots`]), so they never see each other.
//!
//! [`Cluster`] removes everything it made when it is dropped, also after a failed start or a
//! panic; [`down`] removes what a killed run left behind, by name alone.
//!
//! Boards are numbered from 1. Everything runs as root: namespaces, bridges and LXC need it.

pub mod api;
mod boards;
mod containers;
mod controllers;
mod down;
pub mod fixtures;
mod net;
pub mod plan;
mod procs;
mod run;
mod slots;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub use api::{Api, Progress};
pub use down::DownReport;
pub use plan::Plan;
pub use procs::with_cmdline_containing;

/// What can go wrong building, using or removing a local cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot run a local cluster on this machine; missing:\n{}", .0.iter().map(|m| format!("  - {m}")).collect::<Vec<_>>().join("\n"))]
    Missing(Vec<String>),
    #[error("{0}")]
    Config(String),
    #[error("cluster {name:?} is already running (process {pid}); stop it first")]
    AlreadyRunning { name: String, pid: u32 },
    #[error("every test cluster slot (networks 1 to {}) is in use", plan::MAX_NET)]
    NoFreeSlot,
    #[error("network {network} is already used by interface {device}")]
    NetworkInUse { network: String, device: String },
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("cannot start {what}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {what} ({})", path.display())]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {ns}")]
    Netns {
        ns: String,
        #[source]
        source: nix::Error,
    },
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{what} exited ({status}); the end of its log:\n{log}")]
    Exited {
        what: String,
        status: String,
        log: String,
    },
    #[error("timed out after {after:?} waiting for {what}{details}")]
    Timeout {
        what: String,
        after: Duration,
        details: String,
    },
}

/// The result of cluster operations.
pub type Result<T, E = ClusterError> = std::result::Result<T, E>;

/// Which name and network a cluster takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// The first free test slot: name `tK` on network K, K from 1 to 15.
    Auto,
    /// A fixed name and network (`texu demo`: `demo` on network 0).
    Named { name: String, net: u8 },
}

/// How to build a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// How many boards (1 to 15).
    pub boards: usize,
    /// Its name and network.
    pub slot: Slot,
    /// A manifest file or directory to apply once every board is ready.
    pub manifests: Option<PathBuf>,
    /// The `texu` binary that runs the controller, the agents and the CLI.
    pub texu_bin: PathBuf,
    /// Route every board's container subnet from the host, so the host reaches containers.
    pub host_routes: bool,
    /// The controller's `--node-grace` (default: the controller's own, 2 s).
    pub node_grace: Option<Duration>,
    /// `RUST_LOG` of the controller and agents (their logs go to the state directory).
    pub log_filter: String,
    /// How long the controller and the boards may take to come up.
    pub start_timeout: Duration,
    /// More `texu controller` flags (e.g. `--settle 3s`).
    pub controller_args: Vec<String>,
    /// More `texu agent` flags for one board, by board number (e.g. chaos knobs).
    pub agent_args: BTreeMap<usize, Vec<String>>,
    /// How many controllers (more than one needs `--store etcd://...` in `controller_args`);
    /// agents get every controller's URL.
    pub controllers: usize,
}

impl ClusterConfig {
    /// A test cluster of `boards` boards in the first free slot, run by `texu_bin`.
    pub fn new(boards: usize, texu_bin: impl Into<PathBuf>) -> ClusterConfig {
        ClusterConfig {
            boards,
            slot: Slot::Auto,
            manifests: None,
            texu_bin: texu_bin.into(),
            host_routes: false,
            node_grace: None,
            log_filter: "info".to_string(),
            start_timeout: Duration::from_secs(30),
            controller_args: Vec::new(),
            agent_args: BTreeMap::new(),
            controllers: 1,
        }
    }

    /// The demo cluster: name `demo`, overlay 198.18.0.0/24, host routes to every board.
    pub fn demo(boards: usize, texu_bin: impl Into<PathBuf>) -> ClusterConfig {
        ClusterConfig {
            slot: Slot::Named {
                name: DEMO_NAME.to_string(),
                net: 0,
            },
            host_routes: true,
            ..ClusterConfig::new(boards, texu_bin)
        }
    }
}

/// The name of `texu demo`'s cluster.
pub const DEMO_NAME: &str = "demo";

/// The controller's CA certificate inside its data dir.
const CA_FILE: &str = texu_controller::tls::CA_CERT_FILE;

/// A running local cluster. Dropping it removes everything it made.
pub struct Cluster {
    plan: Plan,
    config: ClusterConfig,
    controller: Option<Child>,
    /// Index `board - 1`; `None` while the board is powered off.
    agents: Vec<Option<Child>>,
    /// Controllers 2 and up (index `n - 2`) with their URLs; `None` once killed.
    more_controllers: Vec<(Option<Child>, String)>,
    server: String,
    token: String,
    torn_down: bool,
}

/// Checks that this process can build a local cluster: root, iproute2 and LXC's tools and
/// busybox template. Every missing piece is named, with how to get it.
pub fn preflight() -> Result<()> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push(
            "root: network namespaces, bridges and LXC containers need it (run with sudo)".into(),
        );
    }
    let on_path = |tool: &str| {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
    };
    for (tool, package) in [
        ("ip", "iproute2"),
        ("lxc-create", "lxc"),
        ("lxc-attach", "lxc"),
        ("lxc-stop", "lxc"),
        ("lxc-destroy", "lxc"),
    ] {
        if !on_path(tool) {
            missing.push(format!("`{tool}` (Debian package {package})"));
        }
    }
    for (path, package) in [
        ("/usr/share/lxc/templates/lxc-busybox", "lxc-templates"),
        ("/bin/busybox", "busybox-static"),
        ("/sbin/init.lxc.static", "lxc"),
    ] {
        if !std::path::Path::new(path).exists() {
            missing.push(format!("{path} (Debian package {package})"));
        }
    }
    if missing.iter().any(|m| m.contains("Debian package")) {
        missing.push("scripts/setup.sh (as root) installs every package Texu needs".into());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ClusterError::Missing(missing))
    }
}

/// Removes whatever cluster `name` left behind (processes, containers, namespaces, interfaces,
/// routes, files). Does not stop a cluster whose owner still runs: see [`owner`].
pub fn down(name: &str) -> Result<DownReport> {
    down::remove_leftovers(name)
}

/// The live process that owns cluster `name`, if any.
pub fn owner(name: &str) -> Option<u32> {
    slots::owner(name)
}

/// Asks the live owner of cluster `name` to stop (SIGTERM) and waits up to `timeout` for the
/// process to exit; its pid, or `None` when nothing owned the cluster.
pub fn stop_owner(name: &str, timeout: Duration) -> Result<Option<u32>> {
    let Some(pid) = slots::owner(name) else {
        return Ok(None);
    };
    let start = procs::stat(pid).map(|(_, t)| t);
    procs::signal(pid, nix::sys::signal::Signal::SIGTERM);
    // The owner file goes while the owner still removes the rest: wait for the process itself.
    wait_until(
        timeout,
        &format!("process {pid}, which runs cluster {name}, to stop"),
        || (procs::stat(pid).map(|(_, t)| t) != start).then_some(()),
    )?;
    Ok(Some(pid))
}

/// Polls `condition` every 50 ms until it returns `Some`, for at most `timeout`.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = condition() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(ClusterError::Timeout {
                what: what.to_string(),
                after: timeout,
                details: String::new(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Cluster {
    /// Builds the cluster: network, controller, one agent per board; waits until every board is
    /// ready and applies `config.manifests`. On failure everything made so far is removed.
    pub fn start(config: ClusterConfig) -> Result<Cluster> {
        preflight()?;
        // Refuse a bad size or name before claiming anything.
        match &config.slot {
            Slot::Auto => Plan::new("t1", 1, config.boards)?,
            Slot::Named { name, net } => Plan::new(name, *net, config.boards)?,
        };
        let (name, net) = slots::claim(&config.slot)?;
        let plan = match Plan::new(&name, net, config.boards) {
            Ok(plan) => plan,
            Err(e) => {
                let _ = down::remove_leftovers(&name);
                return Err(e);
            }
        };
        let mut cluster = Cluster {
            agents: (0..plan.boards()).map(|_| None).collect(),
            plan,
            config,
            controller: None,
            more_controllers: Vec::new(),
            server: String::new(),
            token: String::new(),
            torn_down: false,
        };
        // Any error from here on drops `cluster`, which removes what was made.
        cluster.build()?;
        Ok(cluster)
    }

    /// The cluster's names and addresses.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        self.plan.name()
    }

    /// The controller's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The admin token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A client of the controller.
    pub fn api(&self) -> Api {
        let ca = std::fs::read_to_string(self.plan.controller_dir().join(CA_FILE)).ok();
        Api::with_ca(&self.server, &self.token, ca.as_deref())
    }

    /// A client of the controller at `server` (one of [`Cluster::servers`]).
    pub fn api_at(&self, server: &str) -> Api {
        let ca = std::fs::read_to_string(self.ca_file()).ok();
        Api::with_ca(server, &self.token, ca.as_deref())
    }

    /// A ureq agent trusting the cluster CA (and only it), for raw requests to controllers.
    pub fn http(&self) -> ureq::Agent {
        let ca = std::fs::read_to_string(self.ca_file()).unwrap_or_default();
        let builder = ureq::AgentBuilder::new();
        match texu_controller::tls::client_config(&ca) {
            Some(tls) => builder.tls_config(tls).build(),
            None => builder.build(),
        }
    }

    /// The cluster CA's certificate (PEM), which the controller keeps in its data dir.
    pub fn ca_file(&self) -> PathBuf {
        self.plan.controller_dir().join(CA_FILE)
    }

    /// Runs `texu ARGS...` against this cluster's controller (never the user's own config).
    pub fn texu(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = self.texu_command();
        cmd.args(args);
        procs::output_with_timeout(
            &mut cmd,
            &format!("texu {}", args.join(" ")),
            Duration::from_secs(60),
        )
    }

    /// Runs `texu ARGS...` and fails unless it succeeds; its stdout.
    pub fn texu_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.texu(args)?;
        procs::check(&out, &format!("texu {}", args.join(" ")))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `texu` with this cluster's server and token in its environment.
    pub fn texu_command(&self) -> Command {
        let mut cmd = Command::new(&self.config.texu_bin);
        cmd.env("TEXU_SERVER", &self.server)
            .env("TEXU_TOKEN", &self.token)
            .env("TEXU_CONFIG", self.plan.client_config())
            .env_remove("RUST_LOG");
        cmd
    }

    /// Applies a manifest file or directory.
    pub fn apply(&self, path: &std::path::Path) -> Result<String> {
        self.texu_ok(&["apply", "-f", &path.to_string_lossy()])
    }

    /// Applies manifests given as YAML text.
    pub fn apply_yaml(&self, yaml: &str) -> Result<String> {
        let path = self.plan.dir().join(format!(
            "applied-{}.yaml",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ));
        std::fs::write(&path, yaml).map_err(|source| ClusterError::Io {
            what: "write a manifest".into(),
            path: path.clone(),
            source,
        })?;
        self.apply(&path)
    }

    /// Like [`wait_until`], and on timeout the error carries the cluster's state and the end
    /// of every log, so a failing test says what the cluster was doing.
    pub fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        condition: impl FnMut() -> Option<T>,
    ) -> Result<T> {
        wait_until(timeout, what, condition).map_err(|e| match e {
            ClusterError::Timeout { what, after, .. } => ClusterError::Timeout {
                what,
                after,
                details: format!("\n{}", self.diagnostics()),
            },
            other => other,
        })
    }

    /// Waits until every board and every wanted container is ready.
    pub fn wait_ready(&self, timeout: Duration) -> Result<Progress> {
        let api = self.api();
        self.wait_until(timeout, "every board and container to be ready", || {
            api.progress().ok().filter(Progress::done)
        })
    }

    /// The cluster's nodes and containers and the end of every process's log.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for args in [
            ["get", "nodes", "-o", "wide"],
            ["get", "containers", "-o", "wide"],
        ] {
            let text = match self.texu(&args) {
                Ok(o) => format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => e.to_string(),
            };
            out.push_str(&format!("--- texu {}\n{text}\n", args.join(" ")));
        }
        let logs = std::iter::once("controller".to_string())
            .chain(self.plan.board_numbers().map(|b| self.plan.node_name(b)));
        for log in logs {
            let path = self.plan.log_path(&log);
            out.push_str(&format!(
                "--- the end of {}\n{}\n",
                path.display(),
                procs::tail(&path, 15)
            ));
        }
        out
    }

    /// Removes everything: agents, containers, controller, namespaces, interfaces, routes and
    /// the state directory. Runs on drop too; calling it first reports errors.
    pub fn teardown(mut self) -> Result<DownReport> {
        self.teardown_inner()
    }

    fn teardown_inner(&mut self) -> Result<DownReport> {
        if self.torn_down {
            return Ok(DownReport::default());
        }
        self.torn_down = true;
        for agent in self.agents.iter_mut().flatten() {
            procs::kill_child(agent);
        }
        self.agents.iter_mut().for_each(|a| *a = None);
        if let Some(controller) = self.controller.as_mut() {
            procs::kill_child(controller);
        }
        self.controller = None;
        self.kill_more_controllers();
        self.keep_logs();
        if self.config.host_routes {
            for board in self.plan.board_numbers() {
                net::remove_host_route(&self.plan, board);
            }
        }
        down::remove_leftovers(self.plan.name())
    }
}

impl Cluster {
    /// With `TEXU_KEEP_LOGS=DIR` set, copies the processes' logs to `DIR/CLUSTER/` before the
    /// state directory goes (to read after a failed test).
    fn keep_logs(&self) {
        let Some(keep) = std::env::var_os("TEXU_KEEP_LOGS") else {
            return;
        };
        let to = PathBuf::from(keep).join(self.plan.name());
        let from = self.plan.dir().join("logs");
        let copied = std::fs::create_dir_all(&to).and_then(|()| {
            for entry in std::fs::read_dir(&from)? {
                let entry = entry?;
                std::fs::copy(entry.path(), to.join(entry.file_name()))?;
            }
            Ok(())
        });
        match copied {
            Ok(()) => eprintln!(
                "texu: logs of cluster {} kept in {}",
                self.plan.name(),
                to.display()
            ),
            Err(e) => eprintln!("texu: could not keep the logs in {}: {e}", to.display()),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.teardown_inner() {
            let name = self.plan.name();
            let hint = if name == DEMO_NAME {
                "`texu demo down` removes the rest".to_string()
            } else {
                format!("the next cluster that takes the name {name} removes the rest")
            };
            eprintln!("texu: cleaning up cluster {name} failed: {e}; {hint}");
        }
    }
}
