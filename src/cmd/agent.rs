//! `texu agent`: runs a board's agent until SIGTERM or SIGINT.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use texu_agent::daemon::{self, network::Subnet, Config};
use texu_agent::runtime::LxcRuntime;

/// Arguments of `texu agent` (the controller's URL is the global --server).
#[derive(clap::Args)]
pub struct Args {
    /// The cluster join token (from the controller's DATA_DIR/join.token); needed only on the
    /// first start, after which the node's own credential is kept in the data dir.
    #[arg(long, env = "TEXU_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
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
    #[arg(long, default_value = "500ms", value_parser = super::controller::parse_duration)]
    heartbeat: std::time::Duration,
    /// Chaos testing: delay each heartbeat by a random time up to this (e.g. 2s), to see that a
    /// jittery link is not declared dead.
    #[arg(long, value_parser = super::controller::parse_duration, default_value = "0s", hide = true)]
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
    let Some(server) = server else {
        bail!("say where the controller is: --server http://HOST:PORT (or TEXU_SERVER)");
    };
    texu_api::validate_name(&args.name)
        .map_err(|why| anyhow::anyhow!("--name {:?}: {why}", args.name))?;
    if !nix_is_root() {
        bail!("texu agent runs LXC containers and must run as root");
    }
    let requested = args.subnet.as_deref().map(Subnet::parse).transpose()?;
    let network = (!args.no_network).then(|| (args.bridge.clone(), requested));
    let config = Config {
        server,
        join_token: args.join_token.clone(),
        name: args.name.clone(),
        // LXC config needs absolute paths.
        data_dir: std::path::absolute(&args.data_dir)
            .with_context(|| format!("--data-dir {}", args.data_dir.display()))?,
        labels: args.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        address: args.address.clone(),
        network,
        heartbeat: args.heartbeat,
        heartbeat_jitter: args.heartbeat_jitter,
        image_limits: texu_agent::daemon::images::Limits {
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
            super::controller::shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        tracing::info!(node = %config.name, server = %config.server, "agent starting");
        daemon::run(config, Arc::new(lxc), stop, args.metrics_listen).await?;
        tracing::info!("agent stopped; containers keep running");
        Ok(ExitCode::SUCCESS)
    })
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
