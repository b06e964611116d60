//! `texu agent`: joins the cluster, follows this board's containers and makes them so.
//!
//! Three parts run together: a watcher thread that lists and watches this node's containers
//! (level-triggered: every change wakes the reconciler at once), the reconciler that moves the
//! runtime toward that desired state and keeps each container's status, and a heartbeat that
//! carries those statuses to the controller. The controller being unreachable changes nothing
//! on the board: containers keep running and the agent retries with capped backoff.
//!
//! These parts (and the route keeper and the metrics server) run supervised: one that panics or
//! ends while the agent is meant to run stops the agent with an error and a non-zero exit, so
//! systemd restarts it, instead of leaving a board that heartbeats but no longer reconciles.

pub mod client;
pub mod contact;
mod decide;
pub mod facts;
pub mod hostports;
pub mod images;
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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use texu_api::{Container, NodeSpec};
use tokio::sync::{mpsc, watch, Mutex, Notify};

use crate::runtime::Runtime;
use client::{Client, ClientError, Reported};
use contact::Contact;
pub use reconcile::Reconciler;

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

/// The cluster join token, shared by every copy of the agent's config so that forgetting it
/// once forgets it everywhere. Its bytes are overwritten when dropped.
#[derive(Clone)]
pub struct JoinToken(Arc<std::sync::Mutex<Option<Secret>>>);

impl JoinToken {
    /// Holds `token`.
    pub fn new(token: String) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(Secret(token)))))
    }

    /// The token, unless forgotten.
    fn get(&self) -> Option<Secret> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Drops the token (and wipes it): the node holds its own credential now.
    pub fn forget(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Whether the token is still held.
    pub fn is_held(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_held() {
            "JoinToken(held)"
        } else {
            "JoinToken(forgotten)"
        })
    }
}

/// A string whose bytes are zeroed when it is dropped.
#[derive(Clone)]
struct Secret(String);

impl Drop for Secret {
    fn drop(&mut self) {
        let s = std::mem::take(&mut self.0);
        let mut bytes = s.into_bytes();
        for b in bytes.iter_mut() {
            // SAFETY: a valid, exclusive pointer into the vector; volatile so the zeroing of a
            // buffer about to be freed is not optimized away.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
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

/// File holding the node's credential inside the data dir (mode 0600).
pub const CREDENTIAL_FILE: &str = "node.credential";
/// File holding the cluster's container range, as the join answer gave it: routes go only to
/// subnets inside it.
pub const CLUSTER_CIDR_FILE: &str = "cluster.cidr";

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

/// Reads the stored credential, or joins with the join token and stores the new one.
pub async fn credential(config: &Config, client: &Client) -> Result<String, AgentError> {
    let path = config.data_dir.join(CREDENTIAL_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let c = text.trim().to_string();
        if !c.is_empty() {
            if let Some(t) = &config.join_token {
                t.forget();
            }
            return Ok(c);
        }
    }
    let token = config
        .join_token
        .as_ref()
        .and_then(JoinToken::get)
        .ok_or(AgentError::NoJoinToken)?;
    let spec = node_spec(config);
    let mut backoff = Duration::from_millis(200);
    loop {
        let (client, name, labels, spec, token) = (
            client.clone(),
            config.name.clone(),
            config.labels.clone(),
            spec.clone(),
            token.clone(),
        );
        let result =
            tokio::task::spawn_blocking(move || client.join(&token.0, &name, &labels, &spec))
                .await
                .unwrap_or_else(|e| Err(ClientError::Decode(format!("join task failed: {e}"))));
        match result {
            Ok((credential, cluster_cidr)) => {
                if let Some(cidr) = cluster_cidr {
                    let cidr_path = config.data_dir.join(CLUSTER_CIDR_FILE);
                    write_private(&cidr_path, &cidr).map_err(|source| AgentError::DataDir {
                        path: cidr_path,
                        source,
                    })?;
                }
                write_private(&path, &credential).map_err(|source| AgentError::DataDir {
                    path: path.clone(),
                    source,
                })?;
                tracing::info!(node = %config.name, "joined the cluster");
                if let Some(t) = &config.join_token {
                    t.forget();
                }
                return Ok(credential);
            }
            // Refused outright: retrying will not help.
            Err(
                e @ ClientError::Status {
                    status: 400..=499, ..
                },
            ) => return Err(AgentError::Join(e)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot join yet; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
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

/// Lists then watches every role's endpoints on a blocking thread, forever, with backoff,
/// passing the whole map on after each change (live templates render from it).
fn spawn_endpoints_watcher(
    client: Client,
    credential: String,
    tx: mpsc::Sender<Desired>,
    stop: watch::Receiver<bool>,
) {
    let spawned = std::thread::Builder::new()
        .name("texu-endpoints".into())
        .spawn(move || {
            let mut backoff = Duration::from_millis(100);
            while !*stop.borrow() {
                let result = client
                    .endpoints(&credential)
                    .and_then(|(mut all, revision)| {
                        if tx.blocking_send(Desired::Endpoints(all.clone())).is_err() {
                            return Ok(());
                        }
                        backoff = Duration::from_millis(100);
                        client.watch_endpoints(&credential, revision, |event| {
                            if event.kind == "ERROR" {
                                return false;
                            }
                            let Ok(e) =
                                serde_json::from_value::<texu_api::RoleEndpoints>(event.object)
                            else {
                                return !*stop.borrow();
                            };
                            if event.kind == "DELETED" {
                                all.remove(&e.role);
                            } else {
                                all.insert(e.role.clone(), e);
                            }
                            tx.blocking_send(Desired::Endpoints(all.clone())).is_ok()
                        })
                    });
                if let Err(e) = result {
                    tracing::debug!(error = %e, "endpoints watch ended; listing again");
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the endpoints watcher: live templates will not follow endpoints");
    }
}

/// Lists then watches this node's containers on a blocking thread, forever, with backoff.
///
/// While heartbeats do not get through it neither lists nor passes on events: a stream that
/// survived a partition may deliver moves the controller made meanwhile, and acting on them
/// before the controller has seen this board again could stop the copy that should win. After
/// a cut-off it drops the old stream and lists afresh, tagging the list with the new epoch.
fn spawn_watcher(
    client: Client,
    credential: String,
    node: String,
    contact: Arc<Contact>,
    tx: mpsc::Sender<Desired>,
    stop: watch::Receiver<bool>,
) -> tokio::sync::oneshot::Receiver<()> {
    // Dropped when the thread ends, however it ends (a panic unwinds through it too).
    let (alive, ended) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("texu-watch".into())
        .spawn(move || {
            let _alive = alive;
            let mut backoff = Duration::from_millis(100);
            while !*stop.borrow() {
                if contact.is_cut_off() {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                let epoch = contact.epoch();
                let result = client.containers(&credential, &node).and_then(|(items, revision)| {
                    if tx.blocking_send(Desired::Snapshot(items, epoch)).is_err() {
                        return Ok(());
                    }
                    backoff = Duration::from_millis(100);
                    client.watch(&credential, &node, revision, |event| {
                        if contact.is_cut_off() || contact.epoch() != epoch {
                            return false;
                        }
                        let name = event.object["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string();
                        let msg = match event.kind.as_str() {
                            "BOOKMARK" => return !*stop.borrow(),
                            "DELETED" => Desired::Remove(name),
                            "ERROR" => return false,
                            _ => match serde_json::from_value::<Container>(event.object) {
                                Ok(c) if c.spec.runs_on(&node) => Desired::Upsert(Box::new(c)),
                                // Moved to another node: for this board it is gone.
                                Ok(_) => Desired::Remove(name),
                                Err(e) => {
                                    tracing::warn!(error = %e, "undecodable container event");
                                    return true;
                                }
                            },
                        };
                        tx.blocking_send(msg).is_ok() && !*stop.borrow()
                    })
                });
                if tx.is_closed() {
                    return;
                }
                match result {
                    // The revision listed was compacted away meanwhile: list again at once.
                    Err(ClientError::Status { status: 410, .. }) => {
                        tracing::info!("watch history compacted; listing this node's containers again");
                        continue;
                    }
                    Err(e) => tracing::warn!(error = %e, "watch of this node's containers failed; retrying in {backoff:?}"),
                    Ok(()) => {}
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
        .map(|_| ())
        .unwrap_or_else(|e| tracing::error!(error = %e, "cannot start the watch thread"));
    ended
}

/// A random duration in `[0, max)` for chaos testing; no need for a good generator here.
fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64 ^ d.as_secs());
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    max.mul_f64((x >> 11) as f64 / (1u64 << 53) as f64)
}

/// How long a prompt heartbeat waits for more changes of the same burst, and how close the
/// regular one may be due for a prompt one to be left to it.
const PROMPT_GATHER: Duration = Duration::from_millis(50);

/// Sends a heartbeat every period with the latest container statuses, and a prompt one as soon
/// as a container's phase changed (a replacement is seen Ready without waiting for the period);
/// never gives up.
async fn heartbeat_loop(
    client: Client,
    credential: String,
    config: Config,
    statuses: Arc<Mutex<Vec<Reported>>>,
    changed: Arc<Notify>,
    contact: Arc<Contact>,
    mut stop: watch::Receiver<bool>,
) {
    let spec = node_spec(&config);
    let mut failures = 0u32;
    let mut prompt = false;
    let mut next_regular = tokio::time::Instant::now();
    loop {
        let containers = statuses.lock().await.clone();
        let (c, cred, name, labels, spec2) = (
            client.clone(),
            credential.clone(),
            config.name.clone(),
            config.labels.clone(),
            spec.clone(),
        );
        let injected = jitter(config.heartbeat_jitter);
        if !injected.is_zero() {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(injected) => {}
            }
        }
        let started = tokio::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            c.heartbeat(&cred, &name, &spec2, &labels, &containers, prompt)
        })
        .await;
        let delay = match result {
            Ok(Ok(())) => {
                if failures > 0 {
                    tracing::info!("controller reachable again");
                }
                failures = 0;
                contact.heartbeat_ok(started.into_std());
                crate::metrics::heartbeat_rtt(started.elapsed());
                config.heartbeat
            }
            Ok(Err(e)) => {
                if matches!(e, ClientError::Unreachable { .. }) {
                    contact.heartbeat_unreachable();
                }
                failures += 1;
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(error = %e, failures, "heartbeat failed; containers keep running");
                }
                (config.heartbeat * 2u32.saturating_pow(failures.min(4)))
                    .min(Duration::from_secs(2))
            }
            Err(e) => {
                tracing::error!(error = %e, "heartbeat task failed");
                config.heartbeat
            }
        };
        // A prompt beat leaves the rhythm alone: the controller learns the link's usual delay
        // from the regular ones.
        if !prompt {
            next_regular = tokio::time::Instant::now() + delay;
        }
        let news = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep_until(next_regular) => false,
            // While failing, the regular beat's backoff decides.
            _ = changed.notified(), if failures == 0 => true,
        };
        prompt = false;
        if news {
            // Gather the rest of the burst; leave it to the regular beat if that is due anyway.
            tokio::time::sleep(PROMPT_GATHER).await;
            if next_regular <= tokio::time::Instant::now() + PROMPT_GATHER {
                tokio::time::sleep_until(next_regular).await;
            } else {
                prompt = true;
            }
        }
    }
}
