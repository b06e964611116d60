//! The agent's command line, shared by `texu agent` and the agent-only `texu-agent` binary:
//! both parse [`Args`] and call [`run`], which runs a board's agent until SIGTERM or SIGINT.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::daemon::{self, network::Subnet, Config};
use crate::runtime::LxcRuntime;

/// Arguments of `texu agent` and `texu-agent` (the controller's URL is the --server beside
/// them: `texu`'s global one, or `texu-agent`'s own).
#[derive(clap::Args)]
pub struct Args {
    /// The cluster join token (from the controller's DATA_DIR/join.token); needed only on the
    /// first start, after which the node's own credential is kept in the data dir.
    /// Prefer --join-token-file: a token on the command line is visible to every user of the
    /// board in `ps`.
    #[arg(long, env = "TEXU_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// A file holding the cluster join token (mode 0600; a file others can read is refused).
    /// Wins over --join-token.
    #[arg(long)]
    join_token_file: Option<PathBuf>,
    /// This board's node name (a DNS label).
    #[arg(long)]
    name: String,
    /// Directory for the credential, LXC containers, volumes and records.
    #[arg(long, default_value = "/var/lib/texu/agent")]
    data_dir: PathBuf,
    /// A label for placement, e.g. site=home (repeatable): taken at the first join of a new
    /// name; later only a request, which an admin accepts with `texu label node`.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// This board's overlay (VPN) address.
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
    /// The container bridge to create on this board.
    #[arg(long, default_value = "texu0")]
    bridge: String,
    /// Ask for this container subnet (CIDR); by default the controller assigns one.
    #[arg(long)]
    subnet: Option<String>,
    /// Run containers without any network (no bridge, no routes).
    #[arg(long)]
    no_network: bool,
    /// How often to send a heartbeat.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    heartbeat: std::time::Duration,
    /// Chaos testing: delay each heartbeat by a random time up to this (e.g. 2s), to see that a
    /// jittery link is not declared dead.
    #[arg(long, value_parser = parse_duration, default_value = "0s", hide = true)]
    heartbeat_jitter: std::time::Duration,
    /// Serve /metrics and /healthz here.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// The board's own service ports, which no role may publish as a hostPort (comma
    /// separated; the controller's port from --server and the --metrics-listen port are
    /// always added).
    #[arg(long, value_delimiter = ',', default_value = "22,53")]
    reserved_ports: Vec<u16>,
    /// The most an image may unpack to, in bytes (suffixes K, M, G: 4G); a larger one fails
    /// its container with ImageTooLarge.
    #[arg(long, default_value = "4G", value_parser = parse_bytes)]
    image_max_bytes: u64,
    /// The most files (entries) an image may unpack to.
    #[arg(long, default_value_t = 500_000)]
    image_max_files: u64,
}

/// `500ms`, `2s`, `1m`: a manifest duration.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    texu_api::Duration(text.to_string())
        .as_std()
        .map_err(|e| e.to_string())
}

/// `4G`, `512M`, `64K` or plain bytes.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let (digits, shift) = match text.as_bytes().last() {
        Some(b'K' | b'k') => (&text[..text.len() - 1], 10),
        Some(b'M' | b'm') => (&text[..text.len() - 1], 20),
        Some(b'G' | b'g') => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{text:?}: expected a size such as 4G, 512M or 1048576"))
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected KEY=VALUE"))?;
    texu_api::validate_label_key(k).map_err(|e| format!("label key {k:?}: {e}"))?;
    texu_api::validate_label_value(v).map_err(|e| format!("label value {v:?}: {e}"))?;
    Ok((k.to_string(), v.to_string()))
}

/// Runs the agent.
pub fn run(args: &Args, server: Option<String>) -> Result<ExitCode> {
    one_malloc_arena();
    let Some(server) = server else {
        bail!("say where the controller is: --server http://HOST:PORT (or TEXU_SERVER)");
    };
    texu_api::validate_name(&args.name)
        .map_err(|why| anyhow::anyhow!("--name {:?}: {why}", args.name))?;
    if !nix_is_root() {
        bail!("texu agent runs LXC containers and must run as root");
    }
    let from_env = std::env::var("TEXU_JOIN_TOKEN").ok();
    reexec_clean(
        &server,
        from_env
            .as_deref()
            .filter(|_| args.join_token_file.is_none()),
    )?;
    let join_token = match &args.join_token_file {
        Some(path) => Some(read_token_file(path)?),
        None => args.join_token.clone(),
    };
    let requested = args.subnet.as_deref().map(Subnet::parse).transpose()?;
    let network = (!args.no_network).then(|| (args.bridge.clone(), requested));
    let config = Config {
        server,
        join_token: join_token.map(daemon::JoinToken::new),
        name: args.name.clone(),
        // LXC config needs absolute paths.
        data_dir: std::path::absolute(&args.data_dir)
            .with_context(|| format!("--data-dir {}", args.data_dir.display()))?,
        labels: args.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        address: args.address.clone(),
        network,
        heartbeat: args.heartbeat,
        heartbeat_jitter: args.heartbeat_jitter,
        image_limits: daemon::images::Limits {
            max_bytes: args.image_max_bytes,
            max_files: args.image_max_files,
        },
        reserved_ports: args
            .reserved_ports
            .iter()
            .copied()
            .chain(args.metrics_listen.map(|a| a.port()))
            .collect(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let lxc = LxcRuntime::new(config.data_dir.join("lxc"))
            .context("cannot set up the LXC runtime")?;
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        tracing::info!(node = %config.name, server = %config.server, "agent starting");
        daemon::run(config, Arc::new(lxc), stop, args.metrics_listen).await?;
        tracing::info!("agent stopped; containers keep running");
        Ok(ExitCode::SUCCESS)
    })
}

/// Reads the join token from a file only its owner can read.
pub fn read_token_file(path: &std::path::Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(path).with_context(|| format!("--join-token-file {}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "--join-token-file {}: mode {:o} lets others read the token; chmod 600 it",
            path.display(),
            meta.mode() & 0o777
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--join-token-file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("--join-token-file {} is empty", path.display());
    }
    Ok(token.to_string())
}

/// Waits for SIGTERM or SIGINT (logging which); never returns if the handlers cannot be
/// installed.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// What the agent keeps of its environment: PATH (to find ip and nft) and its log settings.
const KEPT_ENV: [&str; 4] = ["PATH", "RUST_LOG", "RUST_BACKTRACE", "NO_COLOR"];

/// Runs this program again with only [`KEPT_ENV`] in its environment, if it has more. LXC
/// starts each container's init with the environment this process started with (not the
/// current one), so removing variables in place is not enough: TEXU_JOIN_TOKEN or an admin's
/// exported TEXU_TOKEN would show in every container's /proc/1/environ. The server goes onto
/// the command line and a join token from the environment through a pipe (`/dev/fd/N`).
fn reexec_clean(server: &str, pass_token: Option<&str>) -> Result<()> {
    use std::os::fd::IntoRawFd;
    use std::os::unix::process::CommandExt;
    let dirty = std::env::vars_os().any(|(k, _)| !KEPT_ENV.iter().any(|kept| k == *kept));
    if !dirty {
        return Ok(());
    }
    let mut argv = std::env::args_os();
    let arg0 = argv.next().unwrap_or_else(|| "texu".into());
    let mut args: Vec<std::ffi::OsString> = vec!["--server".into(), server.into()];
    while let Some(a) = argv.next() {
        if a == "--server" {
            argv.next();
        } else if !a.to_string_lossy().starts_with("--server=") {
            args.push(a);
        }
    }
    if let Some(token) = pass_token {
        let (read, write) = nix::unistd::pipe().context("cannot make a pipe for the join token")?;
        std::io::Write::write_all(&mut std::fs::File::from(write), token.as_bytes())
            .context("cannot pass the join token on")?;
        // Left open across exec: the new process reads it as its --join-token-file.
        let fd = read.into_raw_fd();
        args.push("--join-token-file".into());
        args.push(format!("/dev/fd/{fd}").into());
    }
    let kept = std::env::vars_os().filter(|(k, _)| KEPT_ENV.iter().any(|kept| k == *kept));
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env_clear()
        .envs(kept)
        .exec();
    Err(err).context("cannot run the agent again with a clean environment")
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Logs to stderr, filtered by `RUST_LOG` (else `default_level`): targets and levels
/// (`warn,texu_agent=debug`), without `tracing`'s span and field filters, whose regex engine
/// would double the agent's own resident code for a feature a board does not need.
pub fn init_logging(default_level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let spec = std::env::var("RUST_LOG").unwrap_or_default();
    let (filter, bad) = match spec.parse::<tracing_subscriber::filter::Targets>() {
        Ok(filter) if !spec.is_empty() => (filter, None),
        parsed => (
            default_level.parse().unwrap_or_default(),
            parsed.err().map(|e| e.to_string()),
        ),
    };
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
    if let Some(why) = bad {
        tracing::warn!("RUST_LOG={spec:?} ignored ({why}): logging at {default_level}");
    }
}

/// `texu-agent`'s whole life: logging at `info` by default, [`run`], and an error on stderr
/// (control characters escaped, as `texu` prints them) with a failure exit.
pub fn main(args: &Args, server: Option<String>) -> ExitCode {
    init_logging("info");
    match run(args, server) {
        Ok(code) => code,
        Err(e) => {
            let text: String = format!("{e:#}")
                .chars()
                .map(|c| match c {
                    '\n' => "\n".to_string(),
                    c if c.is_control() => c.escape_unicode().to_string(),
                    c => c.to_string(),
                })
                .collect();
            eprintln!("error: {text}");
            ExitCode::FAILURE
        }
    }
}

/// One malloc arena for the whole process instead of glibc's up to eight per core: the agent
/// allocates little, from about ten threads, and each arena a thread gets keeps its own free
/// pages. Called by [`run`] before it starts any thread.
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a tunable; nothing else runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
