//! `texu demo`: a whole multi-board cluster on this machine — boards as network namespaces on
//! an overlay bridge, a controller, one agent per board, the demo stack — until Ctrl-C, which
//! removes all of it. `texu demo down` removes what a killed demo left behind.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use texu::cluster::{self, Cluster, ClusterConfig, ClusterError, Progress, DEMO_NAME};
use texu_api::{Container, ContainerPhase, Role};

use super::demo_stack::{self, Stack};

/// Arguments of `texu demo`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    /// How many boards (network namespaces) to run, 1 to 15.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=15))]
    boards: u8,
    /// Apply these manifests (a file or directory) instead of a built-in stack.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// The built-in stack: rastru (Apache, the exchange, a Cassandra ring; manifests/demo/rastru/),
    /// light (the exchange on etcd; manifests/demo/light/) or web (busybox responders).
    #[arg(long, value_enum, default_value = "rastru")]
    stack: Stack,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Stop a running demo and remove whatever a killed one left behind.
    Down,
}

/// Runs `texu demo` or `texu demo down`.
pub fn run(args: &Args) -> Result<ExitCode> {
    match args.action {
        Some(Action::Down) => down(),
        None => up(args),
    }
}

fn up(args: &Args) -> Result<ExitCode> {
    cluster::preflight()?;
    if let Some(file) = &args.file {
        if !file.exists() {
            bail!("-f {}: no such file or directory", file.display());
        }
    } else if let Some(lacks) = args.stack.missing() {
        bail!("{lacks}");
    }
    let stop = watch_signals()?;
    let exe = std::env::current_exe().context("cannot find the texu binary itself")?;
    let started = Instant::now();
    let boards = usize::from(args.boards);
    println!(
        "texu demo: starting a controller and {} (network namespaces texu-{DEMO_NAME}-b*)",
        count(boards, "board")
    );
    let cluster = match Cluster::start(ClusterConfig::demo(boards, &exe)) {
        Ok(c) => c,
        Err(ClusterError::AlreadyRunning { pid, .. }) => {
            bail!("a demo is already running (process {pid}): Ctrl-C it, or run `texu demo down`")
        }
        Err(e) => return Err(e).context("cannot start the demo cluster"),
    };
    let plan = cluster.plan().clone();
    println!(
        "texu demo: {} ready in {:.1}s; controller {}",
        count(plan.boards(), "board"),
        started.elapsed().as_secs_f64(),
        cluster.server()
    );
    match &args.file {
        Some(file) => cluster.apply(file)?,
        None => cluster.apply_yaml(&args.stack.manifests())?,
    };
    let timeout = args.stack.ready_timeout();
    if !wait_ready(&cluster, &stop, started, timeout)? {
        return stop_demo(cluster);
    }
    println!(
        "texu demo: ready in {:.1}s\n",
        started.elapsed().as_secs_f64()
    );
    print!("{}", cluster.texu_ok(&["status"])?);
    print_what_to_try(
        &cluster,
        &exe,
        args.file.is_none() && args.stack.has_exchange(),
    )?;

    while !stop.is_set() {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop_demo(cluster)
}

/// Shows a line per change of the ready count (with the seconds since the demo `started`) until
/// everything is ready, for at most `timeout`; false when the user stopped the demo first.
fn wait_ready(
    cluster: &Cluster,
    stop: &StopFlag,
    started: Instant,
    timeout: Duration,
) -> Result<bool> {
    let api = cluster.api();
    let deadline = Instant::now() + timeout;
    let mut last: Option<Progress> = None;
    loop {
        if stop.is_set() {
            return Ok(false);
        }
        if let Ok(progress) = api.progress() {
            if last != Some(progress) && progress.desired > 0 {
                let at = started.elapsed().as_secs();
                println!("texu demo: {progress} ({at}s){}", forming(&api));
                last = Some(progress);
            }
            if progress.done() {
                return Ok(true);
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "the demo stack was not ready after {timeout:?}:\n{}",
                cluster.diagnostics()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// While a stateful role forms (members start one at a time): `; cassandra 1/3 Ready`.
fn forming(api: &cluster::Api) -> String {
    let (Ok(roles), Ok(containers)) = (api.roles(), api.containers()) else {
        return String::new();
    };
    let mut out = String::new();
    for role in roles.iter().filter(|r| r.spec.stateful) {
        let ready = containers
            .iter()
            .filter(|c| c.spec.role == role.metadata.name)
            .filter(|c| c.status.as_ref().map(|s| s.phase) == Some(ContainerPhase::Ready))
            .count();
        out.push_str(&format!(
            "; {} {ready}/{} Ready",
            role.metadata.name, role.spec.replicas
        ));
    }
    out
}

fn print_what_to_try(cluster: &Cluster, exe: &std::path::Path, exchange: bool) -> Result<()> {
    let api = cluster.api();
    let (roles, mut containers) = (api.roles()?, api.containers()?);
    containers.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let plan = cluster.plan();
    println!("\nEvery container answers on its address, from this machine too:");
    // A proxy's readiness is its port: in an exchange stack its line asks the exchange behind
    // it whether it is ready (`/` would be a 404 of the exchange's).
    let tcp_path = if exchange { "/readyz" } else { "/" };
    for c in &containers {
        if let Some(line) = curl_line(c, &roles, tcp_path) {
            println!("  {line}");
        }
    }
    if let Some(proxy) = exchange
        .then(|| demo_stack::proxy_address(&containers))
        .flatten()
    {
        println!(
            "\nThe exchange through a proxy: two members, two accounts, a transfer, a statement:"
        );
        for line in demo_stack::exchange_lines(&proxy) {
            println!("  $ {line}");
        }
    }
    println!(
        "\nThe CLI:     export TEXU_CONFIG={}\n             {} get containers -o wide",
        plan.client_config().display(),
        exe.display()
    );
    println!(
        "A board:     ip netns exec {} ip route     (boards: {})",
        plan.netns(1),
        plan.board_numbers()
            .map(|b| plan.netns(b))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "Dashboard:   {}/ui     (admin token: {})",
        cluster.server(),
        plan.controller_dir().join("admin.token").display()
    );
    println!("Logs:        {}", plan.dir().join("logs").display());
    println!("\ntexu demo: running; Ctrl-C stops it and removes everything.");
    Ok(())
}

/// `curl http://ADDRESS:PORT/PATH    # NAME on NODE`, for a ready container with a port: PATH
/// is its HTTP readiness probe's, else `tcp_path`.
fn curl_line(c: &Container, roles: &[Role], tcp_path: &str) -> Option<String> {
    let status = c
        .status
        .as_ref()
        .filter(|s| s.phase == ContainerPhase::Ready)?;
    let address = status.address.as_deref()?;
    let spec = &roles.iter().find(|r| r.metadata.name == c.spec.role)?.spec;
    let port = spec.ports.first()?;
    let on = c.spec.node.as_deref().unwrap_or("-");
    let path = match spec.health.readiness.as_ref() {
        Some(p) if p.http.is_some() => p.http.as_ref().map(|h| h.path.clone())?,
        // Not HTTP (a Cassandra member's CQL): its address, no curl.
        Some(p) if p.exec.is_some() => {
            let name = &c.metadata.name;
            return Some(format!(
                "# {name} on {on}: {} {address}:{}",
                port.name, port.port
            ));
        }
        _ => tcp_path.into(),
    };
    let url = format!("http://{address}:{}{path}", port.port);
    Some(format!("curl {url:<38} # {} on {on}", c.metadata.name))
}

/// `1 board`, `3 boards`.
fn count(n: usize, thing: &str) -> String {
    format!("{n} {thing}{}", if n == 1 { "" } else { "s" })
}

fn stop_demo(cluster: Cluster) -> Result<ExitCode> {
    println!("\ntexu demo: stopping; removing containers, boards, bridges and routes");
    let started = Instant::now();
    let report = cluster.teardown().context("cleaning up the demo failed")?;
    println!(
        "texu demo: stopped in {:.1}s ({report})",
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// A flag that SIGINT or SIGTERM sets, with the runtime that watches for them.
struct StopFlag {
    stop: Arc<AtomicBool>,
    _runtime: tokio::runtime::Runtime,
}

impl StopFlag {
    fn is_set(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Watches for SIGINT and SIGTERM. The handlers are installed before this returns, so an early
/// Ctrl-C is not lost; the cluster's processes are in their own process groups and do not see
/// a terminal's Ctrl-C, which leaves the stopping, in order, to the demo.
fn watch_signals() -> Result<StopFlag> {
    use tokio::signal::unix::{signal, SignalKind};
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (mut int, mut term) = runtime.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;
    let flag = stop.clone();
    runtime.spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        flag.store(true, Ordering::SeqCst);
    });
    Ok(StopFlag {
        stop,
        _runtime: runtime,
    })
}

fn down() -> Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("texu demo down removes network namespaces and containers and must run as root");
    }
    if let Some(pid) = cluster::owner(DEMO_NAME) {
        println!("texu demo down: stopping the running demo (process {pid})");
        if let Err(e) = cluster::stop_owner(DEMO_NAME, Duration::from_secs(60)) {
            println!("texu demo down: {e}; removing the demo anyway");
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
    let report = cluster::down(DEMO_NAME).context("cannot remove the demo's leftovers")?;
    println!("texu demo down: {report}");
    Ok(ExitCode::SUCCESS)
}
