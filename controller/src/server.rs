//! The controller process: opens the store, makes credentials, serves the API until a signal.
//!
//! Its long-running parts (the API server, the node monitor, the scheduler, the store
//! compactor, the event flusher) run supervised: the first that panics or returns while the
//! controller is meant to run stops the controller with an error, so that systemd restarts it
//! rather than leaving it half alive.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::auth::{self, Token};
use crate::connections::{self, Limits};
use crate::events;
use crate::images::ImageStore;
use crate::metrics::Metrics;
use crate::nodes::Nodes;
use crate::objects::Objects;
use crate::scheduling;
use crate::store::compactor::{self, Retention};
use crate::store::embedded::EmbeddedStore;
use crate::store::etcd::EtcdStore;
use crate::store::timed::TimedStore;
use crate::store::{Store, StoreError};
use crate::supervise::{Supervisor, TaskError};

/// File the controller writes its bound address to, so scripts and tests can find it.
pub const ADDRESS_FILE: &str = "controller.addr";
/// File name of the embedded store inside the data dir.
pub const STATE_FILE: &str = "state.redb";
/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Test hook: `TEXU_TEST_FAULT=scheduler-panic` makes the scheduler task panic shortly after
/// start, so tests can see a supervised task failing stop the controller. An environment
/// variable rather than a cargo feature because the tests drive the very `texu` binary users
/// run; it does nothing else and is documented in the README.
pub const FAULT_ENV: &str = "TEXU_TEST_FAULT";
/// Open files kept for everything but API connections (store, image blobs, logs, etcd).
const FILES_RESERVED: u64 = 128;

/// How the controller is configured.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// etcd endpoints; empty means the embedded store in the data dir.
    pub etcd_endpoints: Vec<String>,
    /// A node is NotReady after this long without a heartbeat.
    pub node_grace: Duration,
    /// The range container subnets are carved from, a /24 per board.
    pub cluster_cidr: texu_api::Cidr,
    /// Spread roles rebalance onto a board only after it has stayed Ready this long.
    pub settle: Duration,
    /// Limits on the API's connections.
    pub limits: Limits,
    /// How much store history is kept, and how often older history is compacted away.
    pub retention: Retention,
}

/// What can stop the controller from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A supervised task failed; the controller stopped.
    #[error("controller stopped: {0}")]
    Task(#[source] TaskError),
}

/// A controller that is listening, before it serves.
pub struct Controller {
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    store: Arc<dyn Store>,
    stop: watch::Sender<bool>,
    settings: crate::scheduler::Settings,
    limits: Limits,
    retention: Retention,
    /// The admin token, for writing the local client config.
    pub admin_token: Token,
    /// Where the admin token is kept.
    pub admin_token_path: PathBuf,
    /// True when this start created the admin token.
    pub admin_token_created: bool,
    /// The address actually bound (useful with port 0).
    pub local_addr: SocketAddr,
}

impl Controller {
    /// Prepares the data dir, credentials and store, and binds the listener.
    pub async fn bind(config: &Config) -> Result<Controller, ServerError> {
        create_private_dir(&config.data_dir)?;
        let mut limits = config.limits;
        if let Some(files) = raise_file_limit() {
            // Every connection is a descriptor; the store, the images and logs need some too.
            let room = files.saturating_sub(FILES_RESERVED).max(16) as usize;
            if room < limits.max_connections {
                tracing::warn!(
                    files,
                    connections = room,
                    "the open-file limit lowers the connection cap"
                );
                limits.max_connections = room;
            }
        }
        let (admin_token, created) =
            auth::load_or_create(&config.data_dir, auth::ADMIN_TOKEN_FILE, "texu-admin-")?;
        let (join_token, _) =
            auth::load_or_create(&config.data_dir, auth::JOIN_TOKEN_FILE, "texu-join-")?;
        let store: Arc<dyn Store> = Arc::new(TimedStore::new(open_store(config).await?));
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Listen {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                addr: config.listen,
                source,
            })?;
        let addr_path = config.data_dir.join(ADDRESS_FILE);
        std::fs::write(&addr_path, format!("{local_addr}\n")).map_err(|source| {
            ServerError::WriteFile {
                path: addr_path,
                source,
            }
        })?;
        let (stop, shutdown) = watch::channel(false);
        let objects = Objects::new(store.clone());
        objects.events().load(store.as_ref()).await?;
        let nodes = Arc::new(Nodes::new(
            objects.clone(),
            config.node_grace,
            config.cluster_cidr,
        ));
        let state = Arc::new(ApiState {
            objects: objects.clone(),
            admin_token: admin_token.clone(),
            join_token,
            nodes,
            images: ImageStore::new(config.data_dir.join("images"), objects.clone()),
            metrics: Arc::new(Metrics::new().with_events(objects.events())),
            shutdown,
            watches: Default::default(),
        });
        Ok(Controller {
            listener,
            state,
            store,
            stop,
            settings: crate::scheduler::Settings {
                settle_secs: config.settle.as_secs() as i64,
            },
            limits,
            retention: config.retention,
            admin_token,
            admin_token_path: config.data_dir.join(auth::ADMIN_TOKEN_FILE),
            admin_token_created: created,
            local_addr,
        })
    }

    /// Serves until `signal` completes, then stops accepting, lets in-flight requests finish
    /// (open watches end), saves the last events and closes the store. Stops the same way, but
    /// returns the error, when a supervised task panics or returns first.
    pub async fn serve(
        self,
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let shutdown = self.state.shutdown.clone();
        let stopping = CancellationToken::new();
        let mut tasks = Supervisor::new(stopping.clone());
        tasks.spawn(
            "node monitor",
            self.state.nodes.clone().monitor(shutdown.clone()),
        );
        tasks.spawn(
            "scheduler",
            scheduler(self.state.objects.clone(), self.settings, shutdown.clone()),
        );
        tasks.spawn(
            "store compactor",
            compactor::run(self.store.clone(), self.retention, shutdown.clone()),
        );
        let api_stop = stopping.clone();
        tasks.spawn(
            "API server",
            connections::serve(
                self.listener,
                api::routes(self.state.clone()),
                self.limits,
                async move { api_stop.cancelled().await },
            ),
        );
        // The flusher stops after the loops that record events, so its last flush saves all.
        let (stop_flusher, flusher_stopped) = watch::channel(false);
        let mut flusher = tokio::spawn(self.state.objects.events().clone().run_flusher(
            self.store.clone(),
            events::FLUSH_INTERVAL,
            flusher_stopped,
        ));
        let failure = tokio::select! {
            () = signal => None,
            ended = tasks.watch() => ended.err(),
            ended = &mut flusher => Some(match ended {
                Ok(()) => TaskError::Returned { task: "event flusher" },
                Err(e) => TaskError::Panicked { task: "event flusher", message: e.to_string() },
            }),
        };
        match &failure {
            None => tracing::info!("shutting down: no new connections, finishing requests"),
            Some(e) => tracing::error!(error = %e, "a controller task failed; stopping"),
        }
        let _ = self.stop.send(true);
        stopping.cancel();
        tasks.drain(DRAIN_TIMEOUT).await;
        let _ = stop_flusher.send(true);
        if !flusher.is_finished() {
            let _ = flusher.await;
        }
        if let Err(e) = self.store.close().await {
            tracing::error!(error = %e, "closing the store");
        }
        match failure {
            None => {
                tracing::info!("controller stopped");
                Ok(())
            }
            Some(e) => Err(ServerError::Task(e)),
        }
    }
}

/// The scheduling loop, or the panic [`FAULT_ENV`] asks for.
async fn scheduler(
    objects: Objects,
    settings: crate::scheduler::Settings,
    stop: watch::Receiver<bool>,
) {
    if std::env::var(FAULT_ENV).as_deref() == Ok("scheduler-panic") {
        tokio::time::sleep(Duration::from_millis(500)).await;
        panic!("fault injected by {FAULT_ENV}=scheduler-panic");
    }
    scheduling::run(objects, settings, stop).await;
}

/// Raises the soft limit on open files to the hard one: every connection is a descriptor, and
/// the connection cap, not the default 1,024, should be what bounds them. Returns the limit in
/// force afterwards, if it could be read.
fn raise_file_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::debug!(from = soft, to = hard, "raised the open-file limit");
                Some(hard)
            }
            Err(e) => {
                tracing::warn!(error = %e, soft, "cannot raise the open-file limit");
                Some(soft)
            }
        },
        Ok((soft, _)) => Some(soft),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            None
        }
    }
}

async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    if config.etcd_endpoints.is_empty() {
        let path = config.data_dir.join(STATE_FILE);
        tracing::info!(path = %path.display(), "using the embedded store");
        Ok(Arc::new(EmbeddedStore::open(&path)?))
    } else {
        tracing::info!(endpoints = ?config.etcd_endpoints, "using etcd");
        Ok(Arc::new(EtcdStore::connect(&config.etcd_endpoints).await?))
    }
}

fn create_private_dir(path: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| ServerError::DataDir {
        path: path.to_path_buf(),
        source,
    };
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(err)
}
