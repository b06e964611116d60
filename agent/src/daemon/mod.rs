//! `texu agent`: joins the cluster (`join`), follows this board's containers and makes them so.
//!
//! Three parts run together: a watcher thread that lists and watches this node's containers
//! (`watchers`; level-triggered: every change wakes the reconciler at once), the reconciler that
//! moves the runtime toward that desired state and keeps each container's status (`reconcile`),
//! and a heartbeat that carries those statuses to the controller (`heartbeat`). The controller being unreachable changes nothing
//! on the board: containers keep running and the agent retries with capped backoff.
//!
//! These parts (and the route keeper and the metrics server) run supervised: one that panics or
//! ends while the agent is meant to run stops the agent with an error and a non-zero exit, so
//! systemd restarts it, instead of leaving a board that heartbeats but no longer reconciles.

pub mod client;
pub mod contact;
mod decide;
pub mod facts;
mod heartbeat;
pub mod hostports;
pub mod images;
mod join;
mod live_files;
pub mod network;
mod pre_stop;
mod probes;
mod reconcile;
mod record;
mod routes;
pub mod servers;
mod slot;
mod spec;
pub mod trust;
mod watchers;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use texu_api::{Container, NodeSpec};
use tokio::sync::{mpsc, watch, Mutex, Notify};

use crate::runtime::Runtime;
use client::{Client, ClientError, Reported};
use contact::Contact;
use heartbeat::heartbeat_loop;
pub use join::{credential, JoinToken, CLUSTER_CIDR_FILE, CREDENTIAL_FILE};
pub use reconcile::Reconciler;
use watchers::{spawn_endpoints_watcher, spawn_watcher};

/// How the agent is configured.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: String,
    /// The cluster join token; needed only until the node has its own credential, then
    /// forgotten (in every copy of the config).
    pub join_token: Option<JoinToken>,
    pub name: String,
    pub data_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    /// The board's overlay address.
    pub address: String,
    /// The board's container bridge and, optionally, the subnet to ask for (the controller
    /// assigns one otherwise); `None`: containers get no network.
    pub network: Option<(String, Option<network::Subnet>)>,
    pub heartbeat: Duration,
    /// Chaos testing: a random delay of up to this before each heartbeat (zero: none).
    pub heartbeat_jitter: Duration,
    /// How much an image may unpack to.
    pub image_limits: images::Limits,
    /// The board's own service ports, never published as a `hostPort` (the controller's port
    /// is added to these).
    pub reserved_ports: Vec<u16>,
}

/// What stops the agent from starting.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot use data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "this node has no credential yet and no --join-token-file (or --join-token) was given"
    )]
    NoJoinToken,
    #[error(transparent)]
    Trust(#[from] trust::TrustError),
    #[error("joining the cluster failed: {0}")]
    Join(#[source] ClientError),
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// A supervised part of the agent ended while the agent was meant to run.
    #[error("the agent stopped: its {task} task {how}")]
    Task { task: &'static str, how: String },
}

/// A change seen by the watcher thread.
#[derive(Debug)]
pub enum Desired {
    /// A full list, read in contact epoch `.1`: replaces everything known.
    Snapshot(Vec<Container>, u64),
    /// One container added or changed.
    Upsert(Box<Container>),
    /// One container removed.
    Remove(String),
    /// Every role's Ready endpoints, for live templates.
    Endpoints(BTreeMap<String, texu_api::RoleEndpoints>),
}

/// This board's facts, as sent on join and in every heartbeat.
pub fn node_spec(config: &Config) -> NodeSpec {
    NodeSpec {
        address: config.address.clone(),
        arch: facts::arch(),
        cpus: facts::cpus(),
        memory_bytes: facts::memory_bytes(),
        subnet: config
            .network
            .as_ref()
            .and_then(|(_, s)| s.as_ref())
            .map(ToString::to_string),
        unschedulable: false,
        draining: false,
    }
}

/// Runs the agent (and its metrics server on `metrics`) until `stop` flips to true, or until one
/// of its tasks fails.
pub async fn run(
    config: Config,
    runtime: Arc<dyn Runtime>,
    stop: watch::Receiver<bool>,
    metrics: Option<std::net::SocketAddr>,
) -> Result<(), AgentError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| AgentError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    images::set_limits(config.image_limits);
    hostports::set_reserved(hostports::reserved_for(
        &config.reserved_ports,
        &config.server,
    ));
    let client = Client::pinned(&config.server, trust::tls_for(&config).await?);
    let credential = credential(&config, &client).await?;
    let mut tasks = Tasks::default();
    let network = match &config.network {
        Some((bridge, _)) => {
            let subnet = assigned_subnet(&client, &credential, &config.name).await;
            network::ensure_bridge(bridge, subnet)?;
            tracing::info!(%bridge, %subnet, "container network ready");
            let cluster = std::fs::read_to_string(config.data_dir.join(CLUSTER_CIDR_FILE))
                .ok()
                .and_then(|t| network::Subnet::parse(t.trim()).ok());
            tasks.spawn(
                "route",
                routes::run(
                    client.clone(),
                    credential.clone(),
                    config.name.clone(),
                    routes::Bounds::new(subnet, cluster),
                    stop.clone(),
                ),
            );
            Some((bridge.clone(), subnet))
        }
        None => None,
    };
    if let Some(addr) = metrics {
        tasks.spawn(
            "metrics server",
            crate::metrics::serve(addr, runtime.clone(), stop.clone()),
        );
    }
    let statuses: Arc<Mutex<Vec<Reported>>> = Arc::new(Mutex::new(Vec::new()));
    // Cut off after three heartbeat periods (plus any injected jitter) without one getting
    // through.
    let contact = Arc::new(Contact::new(config.heartbeat * 3 + config.heartbeat_jitter));
    let (desired_tx, desired_rx) = mpsc::channel::<Desired>(1024);

    let watcher_ended = spawn_watcher(
        client.clone(),
        credential.clone(),
        config.name.clone(),
        contact.clone(),
        desired_tx.clone(),
        stop.clone(),
    );
    spawn_endpoints_watcher(
        client.clone(),
        credential.clone(),
        desired_tx.clone(),
        stop.clone(),
    );
    // The watcher is a thread (it blocks on the stream); this task ends when it does.
    tasks.spawn("container watch", async move {
        let _ = watcher_ended.await;
    });
    let changed = Arc::new(Notify::new());
    tasks.spawn(
        "heartbeat",
        heartbeat_loop(
            client.clone(),
            credential.clone(),
            config.clone(),
            statuses.clone(),
            changed.clone(),
            contact.clone(),
            stop.clone(),
        ),
    );
    let mut reconciler = Reconciler::new(
        &config,
        network,
        runtime,
        client.clone(),
        credential.clone(),
        contact,
    )?;
    reconciler.notify_changes(changed);
    let reconcile_stop = stop.clone();
    tasks.spawn("reconciler", async move {
        reconciler.run(desired_rx, statuses, reconcile_stop).await;
    });
    tasks.spawn("heap trim", trim_heap(stop.clone()));
    tasks.supervise(stop).await
}

/// Every 2 s, gives the heap pages malloc holds free back to the kernel, which glibc otherwise
/// keeps: the agent's heap grows during a reconcile pass (and LXC's calls) and most of it is
/// free again after. A trim of the agent's small heap takes microseconds.
async fn trim_heap(mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only releases free memory, under malloc's own locks.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// The agent's long-running tasks, by name.
#[derive(Default)]
struct Tasks {
    set: tokio::task::JoinSet<()>,
    names: Vec<(tokio::task::Id, &'static str)>,
}

impl Tasks {
    fn spawn(
        &mut self,
        name: &'static str,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let id = self.set.spawn(task).id();
        self.names.push((id, name));
    }

    /// Runs until `stop` flips (then waits for every task) or a task ends first (an error).
    async fn supervise(mut self, mut stop: watch::Receiver<bool>) -> Result<(), AgentError> {
        let ended = tokio::select! {
            _ = stop.wait_for(|s| *s) => None,
            Some(ended) = self.set.join_next_with_id() => Some(ended),
        };
        let failure = ended.filter(|_| !*stop.borrow()).map(|ended| {
            let (id, how) = match ended {
                Ok((id, ())) => (id, "returned".to_string()),
                Err(e) if e.is_panic() => (e.id(), "panicked".to_string()),
                Err(e) => (e.id(), format!("failed: {e}")),
            };
            let task = self
                .names
                .iter()
                .find(|(i, _)| *i == id)
                .map_or("unnamed", |(_, n)| n);
            AgentError::Task { task, how }
        });
        if let Some(e) = &failure {
            tracing::error!(error = %e, "an agent task failed; stopping");
            // The others stop on the same signal the admin's SIGTERM would flip.
            self.set.abort_all();
        }
        while self.set.join_next().await.is_some() {}
        failure.map_or(Ok(()), Err)
    }
}

/// The subnet the controller assigned to this node (it keeps it across rejoins); retries until
/// the controller answers.
async fn assigned_subnet(client: &Client, credential: &str, name: &str) -> network::Subnet {
    let mut backoff = Duration::from_millis(100);
    loop {
        let (c, cred, n) = (client.clone(), credential.to_string(), name.to_string());
        let node = tokio::task::spawn_blocking(move || c.node(&cred, &n)).await;
        match node {
            Ok(Ok(node)) => match node.spec.subnet.as_deref().map(network::Subnet::parse) {
                Some(Ok(subnet)) => return subnet,
                other => tracing::warn!(?other, "the controller gave this node no usable subnet"),
            },
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read this node's subnet; retrying"),
            Err(e) => tracing::warn!(error = %e, "subnet task failed"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
