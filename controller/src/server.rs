//! The controller process: opens the store, makes credentials, serves the API until a signal.
//!
//! Its long-running parts (the API server, the leader election, and the leader's work: node
//! monitor, scheduler, store compactor, event flusher, see [`crate::leading`]) run supervised:
//! the first that panics or returns while the controller is meant to run stops the controller
//! with an error, so that systemd restarts it rather than leaving it half alive.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::auth::{self, Token};
use crate::connections::{self, Limits};
use crate::images::ImageStore;
use crate::join_token::JoinToken;
use crate::leader::{self, Leadership};
use crate::leading::{self, LeaderWork};
use crate::metrics::Metrics;
use crate::nodes::Nodes;
use crate::objects::Objects;
use crate::store::compactor::Retention;
use crate::store::embedded::EmbeddedStore;
use crate::store::etcd::EtcdStore;
use crate::store::timed::TimedStore;
use crate::store::{Store, StoreError};
use crate::supervise::{Supervisor, TaskError};
use crate::tls::{Tls, TlsError};

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
    /// The API URL other controllers, agents and the CLI reach this one at (default: the
    /// bound address).
    pub advertise: Option<String>,
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
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] TlsError),
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
    /// The cluster CA and the server certificate.
    pub tls: Arc<Tls>,
    store: Arc<dyn Store>,
    stop: watch::Sender<bool>,
    settings: crate::scheduler::Settings,
    limits: Limits,
    retention: Retention,
    leadership: Leadership,
    /// etcd endpoints to campaign on; empty for the only controller.
    etcd_endpoints: Vec<String>,
    fenced: Objects,
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
        let tls = Tls::load_or_create(&config.data_dir, config.listen)?;
        let join_token = JoinToken::load_or_create(&config.data_dir, &tls.ca_hash())?;
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
        let address = config
            .advertise
            .clone()
            .unwrap_or_else(|| format!("https://{local_addr}"));
        let leadership = if config.etcd_endpoints.is_empty() {
            Leadership::sole(&address)
        } else {
            Leadership::elected(&address)
        };
        let fenced = objects.with_store(leadership.fence(store.clone()));
        let nodes = Arc::new(
            Nodes::new(objects.clone(), config.node_grace, config.cluster_cidr)
                .with_leadership(leadership.clone(), fenced.clone()),
        );
        let state = Arc::new(ApiState {
            objects: objects.clone(),
            admin_token: admin_token.clone(),
            join_token,
            nodes,
            images: ImageStore::new(config.data_dir.join("images"), objects.clone()),
            metrics: Arc::new(
                Metrics::new()
                    .with_events(objects.events())
                    .with_leadership(&leadership),
            ),
            shutdown,
            watches: Default::default(),
        });
        Ok(Controller {
            listener,
            state,
            tls,
            store,
            stop,
            settings: crate::scheduler::Settings {
                settle_secs: config.settle.as_secs() as i64,
            },
            limits,
            retention: config.retention,
            leadership,
            etcd_endpoints: config.etcd_endpoints.clone(),
            fenced,
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
        let stopping = CancellationToken::new();
        let mut tasks = Supervisor::new(stopping.clone());
        tasks.spawn(
            "certificate renewal",
            self.tls.clone().renew_loop(self.state.shutdown.clone()),
        );
        let tls_config = self.tls.server_config()?;
        let api_stop = stopping.clone();
        tasks.spawn(
            "API server",
            connections::serve(
                self.listener,
                api::routes(self.state.clone()),
                self.limits,
                tls_config,
                async move { api_stop.cancelled().await },
            ),
        );
        // The election outlives the leader's work, so a leader saves its last events before
        // it gives the key up.
        let resign = CancellationToken::new();
        let mut election = tokio::spawn(match self.etcd_endpoints.is_empty() {
            true => futures::future::Either::Left(std::future::pending::<()>()),
            false => futures::future::Either::Right(leader::campaign(
                self.etcd_endpoints.clone(),
                self.leadership.clone(),
                resign.clone(),
            )),
        });
        let mut leading = tokio::spawn(leading::run(
            self.leadership.clone(),
            LeaderWork {
                objects: self.fenced.clone(),
                nodes: self.state.nodes.clone(),
                settings: self.settings,
                retention: self.retention,
            },
            stopping.clone(),
        ));
        let failure = tokio::select! {
            () = signal => None,
            ended = tasks.watch() => ended.err(),
            ended = &mut leading => Some(match ended {
                Ok(Ok(())) => TaskError::Returned { task: "leader work" },
                Ok(Err(e)) => e,
                Err(e) => TaskError::Panicked { task: "leader work", message: e.to_string() },
            }),
            ended = &mut election => Some(match ended {
                Ok(()) => TaskError::Returned { task: "leader election" },
                Err(e) => TaskError::Panicked { task: "leader election", message: e.to_string() },
            }),
        };
        match &failure {
            None => tracing::info!("shutting down: no new connections, finishing requests"),
            Some(e) => tracing::error!(error = %e, "a controller task failed; stopping"),
        }
        let _ = self.stop.send(true);
        stopping.cancel();
        tasks.drain(DRAIN_TIMEOUT).await;
        if !leading.is_finished() {
            let _ = leading.await;
        }
        resign.cancel();
        if self.etcd_endpoints.is_empty() {
            election.abort();
        } else if !election.is_finished() {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, election).await;
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
