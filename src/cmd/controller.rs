//! `texu controller`: runs the controller until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use texu_controller::connections::Limits;
use texu_controller::server::{Config, Controller};
use texu_controller::store::compactor::Retention;

use crate::config::{self, ClientConfig};

/// Most threads the controller's store reads run on at once (see the runtime below).
const MAX_BLOCKING_THREADS: usize = 16;

/// glibc malloc arenas the controller allocates from. glibc's default is 8 per core, one per
/// thread that contends: at 1,000 simulated boards the 16 blocking threads and 2 runtime
/// workers had 16 arenas holding 594 MB for 258 MB in use (`malloc_stats`), each blocking
/// thread's arena mostly empty. Two suit a runtime with two workers.
const MALLOC_ARENAS: i32 = 2;
/// How often memory that malloc holds free is given back to the system: a join burst frees
/// most of what it allocated, in pages glibc keeps until `malloc_trim` (it returns only the
/// top of a heap by itself).
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Arguments of `texu controller`.
#[derive(clap::Args)]
pub struct Args {
    /// Directory for the state file, tokens and the bound address.
    #[arg(long, default_value = "/var/lib/texu/controller")]
    data_dir: PathBuf,
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:7080")]
    listen: SocketAddr,
    /// Use etcd instead of the embedded store: etcd://HOST:PORT[,HOST:PORT...]
    #[arg(long)]
    store: Option<String>,
    /// A board is NotReady after this long without a heartbeat (e.g. 2s, 500ms).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    node_grace: std::time::Duration,
    /// The range container subnets come from; each board gets a /24 of it.
    #[arg(long, default_value = "198.19.0.0/16")]
    cluster_cidr: texu_api::Cidr,
    /// Spread roles rebalance onto a board only after it has stayed Ready this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    settle: std::time::Duration,
    /// Do not write the local user's client config.
    #[arg(long)]
    no_client_config: bool,
    /// Most API connections open at once; at the cap the oldest idle one is closed.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// A client must send its request head within this long (slowloris guard).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    header_read_timeout: std::time::Duration,
    /// A connection with no request in flight is closed after this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    idle_timeout: std::time::Duration,
    /// How often the store's history is compacted.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    compact_every: std::time::Duration,
    /// Revisions of history kept behind the current one for watches to resume from.
    #[arg(long, default_value_t = Retention::default().keep_revisions)]
    history_revisions: i64,
    /// The URL other controllers, agents and the CLI reach this controller at, when it is
    /// not the listen address (e.g. with --listen 0.0.0.0:7080 on several controllers).
    #[arg(long)]
    advertise: Option<String>,
}

/// Parses `etcd://h1:2379,h2:2379` into endpoints.
pub fn parse_store(store: Option<&str>) -> Result<Vec<String>> {
    let Some(store) = store else {
        return Ok(Vec::new());
    };
    let Some(list) = store.strip_prefix("etcd://") else {
        bail!("--store {store:?}: expected etcd://HOST:PORT[,HOST:PORT...]");
    };
    let endpoints: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| format!("http://{e}"))
        .collect();
    if endpoints.is_empty() {
        bail!("--store {store:?}: no etcd endpoint given");
    }
    Ok(endpoints)
}

pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    texu_api::Duration(text.to_string())
        .as_std()
        .map_err(|e| e.to_string())
}

/// Runs the controller.
pub fn run(args: &Args, config_path: Option<PathBuf>) -> Result<ExitCode> {
    let config = Config {
        data_dir: args.data_dir.clone(),
        listen: args.listen,
        etcd_endpoints: parse_store(args.store.as_deref())?,
        node_grace: args.node_grace,
        cluster_cidr: args.cluster_cidr,
        settle: args.settle,
        limits: Limits {
            max_connections: args.max_connections.max(1),
            header_read_timeout: args.header_read_timeout,
            idle_timeout: args.idle_timeout,
        },
        retention: Retention {
            every: args.compact_every,
            keep_revisions: args.history_revisions,
        },
        advertise: args.advertise.clone(),
    };
    tune_malloc();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // The embedded store reads on blocking threads: past a few per core they only queue
        // for the same cores, and each costs a stack and a malloc arena (under tokio's
        // default cap of 512, 100 simulated boards had the controller at 311 threads).
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let controller = Controller::bind(&config).await?;
        let server = format!("https://{}", controller.local_addr);
        tracing::info!(%server, "controller listening");
        if controller.admin_token_created {
            eprintln!(
                "texu: admin token written to {}",
                controller.admin_token_path.display()
            );
        }
        if !args.no_client_config {
            let client = ClientConfig {
                server: server.replace("0.0.0.0", "127.0.0.1"),
                token: controller.admin_token.secret().to_string(),
                ca: Some(controller.tls.ca_pem().to_string()),
            };
            write_client_config(&client, &args.data_dir, config_path);
        }
        controller.serve(shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Caps glibc's malloc arenas (before any other thread starts; unless MALLOC_ARENA_MAX is set) and gives free memory back to the
/// system every [`TRIM_EVERY`] from a thread of its own (see [`MALLOC_ARENAS`]).
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt sets a tuning parameter and malloc_trim releases free pages; both
        // are thread-safe glibc calls that touch no Rust-owned memory.
        // An operator's MALLOC_ARENA_MAX (glibc reads it itself) wins over the cap.
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            unsafe {
                nix::libc::mallopt(nix::libc::M_ARENA_MAX, MALLOC_ARENAS);
            }
        }
        let trimmer = std::thread::Builder::new()
            .name("texu-malloc-trim".into())
            .spawn(|| loop {
                std::thread::sleep(TRIM_EVERY);
                // SAFETY: as above.
                unsafe {
                    nix::libc::malloc_trim(0);
                }
            });
        if let Err(e) = trimmer {
            tracing::warn!(error = %e, "cannot start the malloc trim thread");
        }
    }
}

/// Writes the local user's client config when there is none or it names this controller (its
/// address or its CA); otherwise this controller's own copy in its data dir, and says where, so
/// starting a second controller never repoints an admin's CLI.
fn write_client_config(client: &ClientConfig, data_dir: &std::path::Path, path: Option<PathBuf>) {
    let Some(path) = path.or_else(config::default_path) else {
        return;
    };
    let target = match config::read(&path) {
        Ok(None) => path,
        Ok(Some(existing)) if names_same_controller(&existing, client) => path,
        Ok(Some(existing)) => {
            let own = data_dir.join(CLIENT_CONFIG_FILE);
            eprintln!(
                "texu: {} names another controller ({}); left as it is. This controller's client \
                 config is {} (use it with --config or TEXU_CONFIG)",
                path.display(),
                existing.server,
                own.display()
            );
            own
        }
        Err(e) => {
            tracing::warn!("not touching the client config: {e:#}");
            data_dir.join(CLIENT_CONFIG_FILE)
        }
    };
    match config::write(&target, client) {
        Ok(()) => eprintln!("texu: client config written to {}", target.display()),
        Err(e) => tracing::warn!("cannot write the client config: {e:#}"),
    }
}

/// This controller's own client config inside its data dir.
pub const CLIENT_CONFIG_FILE: &str = "client.yaml";

fn names_same_controller(existing: &ClientConfig, this: &ClientConfig) -> bool {
    existing.server.trim_end_matches('/') == this.server
        || existing.ca.is_some() && existing.ca == this.ca
}

/// Waits for SIGTERM or SIGINT (the agent's own; the controller and `texu sim` stop on it too).
pub use texu_agent::cli::shutdown_signal;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_naming_another_controller_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("home/config.yaml");
        // Writes the client config of a controller at `server` with CA `ca`; returns the server
        // the user's config names afterwards.
        let write = |server: &str, ca: &str| {
            let this = ClientConfig {
                server: server.into(),
                token: "t".into(),
                ca: Some(ca.into()),
            };
            write_client_config(&this, dir.path(), Some(user.clone()));
            config::read(&user).unwrap().unwrap().server
        };
        assert_eq!(write("https://127.0.0.1:1", "A"), "https://127.0.0.1:1");
        // The same controller on another port (same CA): the user's config follows it.
        assert_eq!(write("https://127.0.0.1:2", "A"), "https://127.0.0.1:2");
        // Another controller: its own copy in its data dir.
        assert_eq!(write("https://127.0.0.1:3", "B"), "https://127.0.0.1:2");
        let own = config::read(&dir.path().join(CLIENT_CONFIG_FILE))
            .unwrap()
            .unwrap();
        assert_eq!(
            (own.server.as_str(), own.ca.as_deref()),
            ("https://127.0.0.1:3", Some("B"))
        );
    }

    #[test]
    fn parses_etcd_store_urls() {
        assert_eq!(parse_store(None).unwrap(), Vec::<String>::new());
        assert_eq!(
            parse_store(Some("etcd://127.0.0.1:2379,198.18.0.2:2379")).unwrap(),
            vec!["http://127.0.0.1:2379", "http://198.18.0.2:2379"]
        );
        assert!(parse_store(Some("redis://x")).is_err());
        assert!(parse_store(Some("etcd://")).is_err());
    }
}
