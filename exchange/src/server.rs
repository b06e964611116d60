//! Starting the exchange: the `--store` URL, opening the ledger, the admin token, and serving
//! the API until a signal, with the periodic recovery and compaction passes beside it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use texu_controller::auth::{self, AuthError, Token};
use texu_controller::store::embedded::EmbeddedStore;
use texu_controller::store::etcd::EtcdStore;
use texu_controller::store::StoreError;

use crate::api::{self, ApiState};
use crate::metrics::Metrics;
use crate::store::cassandra::CassandraLedger;
use crate::store::kv::KvLedger;
use crate::store::{Ledger, LedgerError};

/// Keys the etcd backend keeps under, so it can share an etcd with other users.
pub const ETCD_PREFIX: &str = "/texu-exchange";
/// How often the recovery pass and the store compaction run.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(5);

/// Where the ledger lives, as given to `--store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `file:PATH`: one local redb file.
    File(PathBuf),
    /// `etcd://HOST:PORT,HOST:PORT`.
    Etcd(Vec<String>),
    /// `cassandra://HOST1,HOST2/KEYSPACE?rf=N`.
    Cassandra {
        hosts: Vec<String>,
        keyspace: String,
        replication: u32,
    },
}

/// What can stop the exchange from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("--store {url:?}: {reason}")]
    BadStoreUrl { url: String, reason: String },
    #[error("cannot open the data layer")]
    Store(#[source] StoreError),
    #[error("cannot open the data layer")]
    Ledger(#[source] LedgerError),
    #[error("cannot read or create the admin token")]
    Token(#[source] AuthError),
    #[error("--admin-token-file {0} has no file name")]
    TokenPath(PathBuf),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl std::str::FromStr for StoreUrl {
    type Err = StartError;

    fn from_str(url: &str) -> Result<Self, StartError> {
        let bad = |reason: &str| StartError::BadStoreUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let hosts = |list: &str| -> Result<Vec<String>, StartError> {
            let hosts: Vec<String> = list
                .split(',')
                .filter(|h| !h.is_empty())
                .map(str::to_string)
                .collect();
            if hosts.is_empty() {
                return Err(bad("no hosts"));
            }
            Ok(hosts)
        };
        if let Some(path) = url.strip_prefix("file:") {
            if path.is_empty() {
                return Err(bad("no path after file:"));
            }
            Ok(StoreUrl::File(PathBuf::from(path)))
        } else if let Some(list) = url.strip_prefix("etcd://") {
            Ok(StoreUrl::Etcd(hosts(list.trim_end_matches('/'))?))
        } else if let Some(rest) = url.strip_prefix("cassandra://") {
            let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
            let (list, keyspace) = rest
                .split_once('/')
                .ok_or_else(|| bad("no /KEYSPACE after the hosts"))?;
            let valid = !keyspace.is_empty()
                && keyspace.len() <= 48
                && keyspace
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(bad("the keyspace must be 1-48 of a-z 0-9 _"));
            }
            let mut replication = 3;
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("rf", n)) => {
                        replication = n
                            .parse()
                            .ok()
                            .filter(|n| (1..=9).contains(n))
                            .ok_or_else(|| bad("rf must be 1 to 9"))?;
                    }
                    _ => return Err(bad("the only option is rf=N")),
                }
            }
            Ok(StoreUrl::Cassandra {
                hosts: hosts(list)?,
                keyspace: keyspace.to_ascii_lowercase(),
                replication,
            })
        } else {
            Err(bad(
                "expected file:PATH, etcd://HOST:PORT,... or cassandra://HOSTS/KEYSPACE",
            ))
        }
    }
}

/// An open ledger and what its maintenance pass needs.
pub struct Opened {
    pub ledger: Arc<dyn Ledger>,
    kv: Option<Arc<KvLedger>>,
}

/// Opens the ledger `url` names.
pub async fn open(url: &StoreUrl) -> Result<Opened, StartError> {
    let kv = match url {
        StoreUrl::File(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StartError::Store(StoreError::Embedded {
                        path: path.display().to_string(),
                        source: Box::new(e),
                    })
                })?;
            }
            let path = path.clone();
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&path))
                .await
                .map_err(|e| {
                    StartError::Store(StoreError::Embedded {
                        path: "(open)".into(),
                        source: Box::new(e),
                    })
                })?
                .map_err(StartError::Store)?;
            Arc::new(KvLedger::new(Arc::new(store)))
        }
        StoreUrl::Etcd(endpoints) => {
            let store = EtcdStore::connect(endpoints)
                .await
                .map_err(StartError::Store)?
                .with_prefix(ETCD_PREFIX);
            Arc::new(KvLedger::new(Arc::new(store)))
        }
        StoreUrl::Cassandra {
            hosts,
            keyspace,
            replication,
        } => {
            let ledger = CassandraLedger::connect(hosts, keyspace, *replication)
                .await
                .map_err(StartError::Ledger)?;
            return Ok(Opened {
                ledger: Arc::new(ledger),
                kv: None,
            });
        }
    };
    Ok(Opened {
        ledger: kv.clone(),
        kv: Some(kv),
    })
}

/// Reads the admin token from `path`, or creates it there (mode 0600).
pub fn admin_token(path: &Path) -> Result<(Token, bool), StartError> {
    let file = path
        .file_name()
        .and_then(|f| f.to_str())
        .ok_or_else(|| StartError::TokenPath(path.to_path_buf()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    auth::load_or_create(dir, file, "texu-admin-").map_err(StartError::Token)
}

/// Serves the API on `listener` until `stop` resolves, running recovery at start and the
/// maintenance pass every [`MAINTENANCE_INTERVAL`].
pub async fn serve(
    opened: Opened,
    admin: Token,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let metrics = Arc::new(Metrics::new());
    match opened.ledger.recover().await {
        Ok(n) if n > 0 => tracing::info!(settled = n, "recovery settled half-done transfers"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "recovery pass failed; retrying later"),
    }
    let maintenance = tokio::spawn(maintain(opened.ledger.clone(), opened.kv.clone()));
    let state = Arc::new(ApiState::new(opened.ledger, admin, metrics));
    warp::serve(api::routes(state))
        .incoming(listener)
        .graceful(stop)
        .run()
        .await;
    maintenance.abort();
    tracing::info!("exchange stopped");
}

async fn maintain(ledger: Arc<dyn Ledger>, kv: Option<Arc<KvLedger>>) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        match ledger.recover().await {
            Ok(n) if n > 0 => tracing::info!(settled = n, "recovery settled half-done transfers"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "recovery pass failed"),
        }
        if let Some(kv) = &kv {
            if let Err(e) = kv.compact().await {
                tracing::warn!(error = %e, "compacting the store failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse() {
        assert_eq!(
            "file:/tmp/x.redb".parse::<StoreUrl>().ok(),
            Some(StoreUrl::File("/tmp/x.redb".into()))
        );
        assert_eq!(
            "etcd://127.0.0.1:2379,127.0.0.2:2379"
                .parse::<StoreUrl>()
                .ok(),
            Some(StoreUrl::Etcd(vec![
                "127.0.0.1:2379".into(),
                "127.0.0.2:2379".into()
            ]))
        );
        assert_eq!(
            "cassandra://a,b,c/Rastru?rf=3".parse::<StoreUrl>().ok(),
            Some(StoreUrl::Cassandra {
                hosts: vec!["a".into(), "b".into(), "c".into()],
                keyspace: "rastru".into(),
                replication: 3
            })
        );
        for bad in [
            "",
            "file:",
            "etcd://",
            "cassandra://a",
            "cassandra://a/k?rf=0",
            "x://y",
        ] {
            assert!(bad.parse::<StoreUrl>().is_err(), "{bad}");
        }
    }
}
