//! `texu sim`: simulated boards against a real controller (see `crate::sim`).

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use texu_api::Cidr;

use crate::sim::{self, PowerCut};

/// Arguments of `texu sim` (the controller's URL is the global --server; the admin token,
/// needed only with --containers-per-board, the global --token or the client config).
#[derive(clap::Args)]
pub struct Args {
    /// How many boards to simulate.
    #[arg(long, default_value_t = 100)]
    boards: usize,
    /// A file holding the cluster join token (mode 0600).
    #[arg(long)]
    join_token_file: std::path::PathBuf,
    /// Board names are PREFIX-0000, PREFIX-0001, ... (also the name of the role applied).
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Apply a role of BOARDS x M containers onto the simulated boards (needs the admin
    /// token); 0 applies nothing.
    #[arg(long, default_value_t = 0)]
    containers_per_board: usize,
    /// The controller's --cluster-cidr: board i asks for the i-th subnet of it.
    #[arg(long, default_value = "198.19.0.0/16")]
    cluster_cidr: String,
    /// Each board's subnet length (a /26 holds 61 containers; 1,000 of them fit in a /16).
    #[arg(long, default_value_t = 26)]
    subnet_prefix: u8,
    /// CPUs each board offers.
    #[arg(long, default_value_t = 4)]
    cpus: u32,
    /// Memory each board offers, in MiB.
    #[arg(long, default_value_t = 8192)]
    memory_mib: u64,
    /// How often each board heartbeats (the agent's default).
    #[arg(long, default_value = "500ms", value_parser = super::controller::parse_duration)]
    heartbeat: std::time::Duration,
    /// Power off this percent of the boards at once (rounded up to whole boards).
    #[arg(long)]
    power_off: Option<f64>,
    /// ... this long after every board joined and all the containers were held.
    #[arg(long, default_value = "10s", value_parser = super::controller::parse_duration)]
    after: std::time::Duration,
    /// ... and power them on again this long after (never, if not given).
    #[arg(long, value_parser = super::controller::parse_duration)]
    back_after: Option<std::time::Duration>,
    /// Stop after this long (default: at Ctrl-C or SIGTERM).
    #[arg(long, value_parser = super::controller::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Print heartbeat round trips this often.
    #[arg(long, default_value = "10s", value_parser = super::controller::parse_duration)]
    report_every: std::time::Duration,
}

/// Runs the simulation.
pub fn run(
    args: &Args,
    server: Option<String>,
    ca: Option<String>,
    admin: impl FnOnce() -> Result<crate::client::Client>,
) -> Result<ExitCode> {
    let Some(server) = server else {
        bail!("say where the controller is: --server https://HOST:PORT (or TEXU_SERVER)");
    };
    let Some(ca) = ca else {
        bail!(
            "texu sim trusts only the cluster CA: pass --ca-file DATA_DIR/ca.pem (the \
             controller's data dir) or run it where `texu controller` wrote the CLI config"
        );
    };
    let tls = texu_controller::tls::client_config(&ca)
        .ok_or_else(|| anyhow::anyhow!("the cluster CA is not a PEM certificate"))?;
    texu_api::validate_name(&format!("{}-0000", args.prefix))
        .map_err(|why| anyhow::anyhow!("--prefix {:?}: {why}", args.prefix))?;
    let cluster_cidr = Cidr::parse(&args.cluster_cidr).context("--cluster-cidr")?;
    if let Some(p) = args.power_off.filter(|p| !(0.0..=100.0).contains(p)) {
        bail!("--power-off {p}: a percent from 0 to 100");
    }
    let join_token = super::agent::read_token_file(&args.join_token_file)?;
    let admin = if args.containers_per_board > 0 {
        Some(admin().context("--containers-per-board applies a role: it needs the admin token")?)
    } else {
        None
    };
    let options = sim::Options {
        server,
        join_token,
        boards: args.boards,
        prefix: args.prefix.clone(),
        cluster_cidr,
        subnet_prefix: args.subnet_prefix,
        cpus: args.cpus,
        memory_bytes: args.memory_mib << 20,
        heartbeat: args.heartbeat,
        containers_per_board: args.containers_per_board,
        admin,
        tls,
        power_cut: args.power_off.map(|percent| PowerCut {
            percent,
            after: args.after,
            back_after: args.back_after,
        }),
        duration: args.duration,
        report_every: args.report_every,
    };
    raise_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            super::controller::shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        sim::run(options, stop).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Two connections per board (heartbeats, watch): raise the soft open-file limit to the hard.
fn raise_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, "cannot raise the open-file limit");
            }
        }
    }
}
