//! The etcd store: the controller's state in an etcd cluster, for control planes on several boards.
//!
//! etcd already has the store's shape (one revision, guarded transactions, watches from a
//! revision), so this module maps types and errors. Keys may live under a namespace prefix
//! ([`EtcdStore::with_prefix`]) so that several clusters or tests can share one etcd; the prefix is
//! invisible to callers. Every request has a deadline, so an unreachable etcd shows up as an error,
//! not a hang. A watch whose connection breaks resumes from the next revision it owes, and gives
//! up with an error after [`RECONNECT_WINDOW`] without etcd.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, CompactionOptions, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType,
    GetOptions, KvClient, Txn as EtcdTxn, TxnOp, WatchClient, WatchOptions,
};
use tokio::sync::watch as signal;

use super::{
    Compare, Event, EventKind, KeyValue, Op, RangeResult, Result, Store, StoreError, Txn,
    TxnResult, WatchStream,
};

/// Deadline for one request to etcd.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a broken watch keeps trying to reconnect before it ends with an error.
pub const RECONNECT_WINDOW: Duration = Duration::from_secs(30);
/// Keys per page when ranging over a prefix (each page stays well under gRPC's message limit).
const RANGE_PAGE: i64 = 500;

/// What went wrong talking to etcd, besides the client's own errors (the source of
/// [`StoreError::Etcd`]).
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// etcd did not answer within [`REQUEST_TIMEOUT`].
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// etcd ended a watch for a reason other than compaction.
    #[error("etcd cancelled the watch: {reason}")]
    WatchCancelled { reason: String },
    /// etcd returned a key this store cannot have written.
    #[error("key {0:?} is not UTF-8 or lies outside this store's prefix")]
    ForeignKey(String),
    /// `compact` asked for a revision that does not exist yet.
    #[error("cannot compact at revision {requested}: the current revision is {current}")]
    FutureRevision { requested: i64, current: i64 },
    /// `connect` was given no endpoints.
    #[error("no endpoints given")]
    NoEndpoints,
}

/// A store in an etcd cluster.
pub struct EtcdStore {
    kv: KvClient,
    watch: WatchClient,
    endpoints: String,
    prefix: String,
    /// Becomes true on close; watches listen to it to end.
    closed: signal::Sender<bool>,
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (`host:port` or `http://host:port`) and checks that it
    /// answers.
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        let joined = endpoints.join(",");
        let fail = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Etcd {
            endpoints: joined.clone(),
            source: e,
        };
        if endpoints.is_empty() {
            return Err(fail(Box::new(EtcdError::NoEndpoints)));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            // HTTP/2 pings notice a dead etcd on an idle watch connection.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        let client =
            match tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(endpoints, Some(options)))
                .await
            {
                Ok(Ok(client)) => client,
                Ok(Err(e)) => return Err(fail(Box::new(e))),
                Err(_) => return Err(fail(Box::new(EtcdError::Timeout(REQUEST_TIMEOUT)))),
            };
        let store = Self {
            kv: client.kv_client(),
            watch: client.watch_client(),
            endpoints: joined.clone(),
            prefix: String::new(),
            closed: signal::channel(false).0,
        };
        store.revision().await?;
        Ok(store)
    }

    /// Keeps every key under `prefix` in etcd (e.g. `/texu`), hidden from callers.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    fn error(&self, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        StoreError::Etcd {
            endpoints: self.endpoints.clone(),
            source: Box::new(e),
        }
    }

    fn check_open(&self) -> Result<()> {
        if *self.closed.borrow() {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs one request with the deadline and maps its errors.
    async fn call<T>(
        &self,
        request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        self.check_open()?;
        match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.error(e)),
            Err(_) => Err(self.error(EtcdError::Timeout(REQUEST_TIMEOUT))),
        }
    }

    fn key_value(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        let key = strip(&self.prefix, kv.key()).map_err(|e| self.error(e))?;
        Ok(KeyValue {
            key,
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
        })
    }
}

fn strip(prefix: &str, key: &[u8]) -> Result<String, EtcdError> {
    std::str::from_utf8(key)
        .ok()
        .and_then(|k| k.strip_prefix(prefix))
        .map(str::to_string)
        .ok_or_else(|| EtcdError::ForeignKey(String::from_utf8_lossy(key).into_owned()))
}

/// The first key after every key that starts with `prefix`, as etcd expects a range end.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            if let Some(b) = end.last_mut() {
                *b += 1;
            }
            return end;
        }
        end.pop();
    }
    // Every byte was 0xff (or the prefix was empty): the range runs to the end of the keyspace.
    vec![0]
}

fn is_out_of_range(e: &StoreError) -> bool {
    let StoreError::Etcd { source, .. } = e else {
        return false;
    };
    matches!(
        source.downcast_ref::<etcd_client::Error>(),
        Some(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::OutOfRange
    )
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut kv = self.kv.clone();
        let resp = self.call(kv.get(self.full(key), None)).await?;
        resp.kvs().first().map(|k| self.key_value(k)).transpose()
    }

    async fn range(&self, prefix: &str) -> Result<RangeResult> {
        let full = self.full(prefix).into_bytes();
        let (mut start, end) = if full.is_empty() {
            (vec![0], vec![0])
        } else {
            let end = prefix_end(&full);
            (full, end)
        };
        let mut kvs = Vec::new();
        let mut revision = 0;
        // Later pages read at the first page's revision, so the whole range is one snapshot.
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(RANGE_PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let mut kv = self.kv.clone();
            let resp = self.call(kv.get(start.clone(), Some(options))).await?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            for k in resp.kvs() {
                kvs.push(self.key_value(k)?);
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok(RangeResult { kvs, revision })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|Compare::ModRevision { key, revision }| {
                if *revision == 0 {
                    EtcdCompare::create_revision(self.full(key), CompareOp::Equal, 0)
                } else {
                    EtcdCompare::mod_revision(self.full(key), CompareOp::Equal, *revision)
                }
            })
            .collect();
        let ops: Vec<TxnOp> = txn
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => TxnOp::put(self.full(key), value.clone(), None),
                Op::Delete { key } => TxnOp::delete(self.full(key), None),
            })
            .collect();
        let mut kv = self.kv.clone();
        let resp = self
            .call(kv.txn(EtcdTxn::new().when(compares).and_then(ops)))
            .await?;
        Ok(TxnResult {
            succeeded: resp.succeeded(),
            revision: resp.header().map_or(0, |h| h.revision()),
        })
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream> {
        self.check_open()?;
        let mut state = EtcdWatch {
            client: self.watch.clone(),
            key: self.full(prefix).into_bytes(),
            prefix: self.prefix.clone(),
            endpoints: self.endpoints.clone(),
            next: from_revision.max(0),
            stream: None,
            closed: self.closed.subscribe(),
        };
        // Create the watch before returning, so that "from 0" means "after this call".
        let created = state.open().await?;
        if state.next == 0 {
            state.next = created + 1;
        }
        Ok(Box::pin(futures::stream::unfold(
            Some(state),
            |state| async move {
                let mut w = state?;
                match w.next_batch().await {
                    Some(Ok(batch)) => Some((Ok(batch), Some(w))),
                    Some(Err(e)) => Some((Err(e), None)),
                    None => None,
                }
            },
        )))
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        let mut kv = self.kv.clone();
        let options = CompactionOptions::new().with_physical();
        match self.call(kv.compact(revision, Some(options))).await {
            Ok(_) => Ok(()),
            // etcd answers OutOfRange both for "already compacted" (harmless: the history is gone
            // either way) and for "future revision"; the current revision tells them apart.
            Err(e) if is_out_of_range(&e) => {
                let current = self.revision().await?;
                if revision <= current {
                    Ok(())
                } else {
                    Err(self.error(EtcdError::FutureRevision {
                        requested: revision,
                        current,
                    }))
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn revision(&self) -> Result<i64> {
        let mut kv = self.kv.clone();
        let key = if self.prefix.is_empty() {
            "/".to_string()
        } else {
            self.prefix.clone()
        };
        let resp = self
            .call(kv.get(key, Some(GetOptions::new().with_count_only())))
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    async fn close(&self) -> Result<()> {
        self.closed.send_replace(true);
        Ok(())
    }
}

/// One watch over a prefix, resumable from `next` after a broken connection.
struct EtcdWatch {
    client: WatchClient,
    key: Vec<u8>,
    prefix: String,
    endpoints: String,
    /// The next revision this watch owes its reader (0 until etcd has said where "now" is).
    next: i64,
    stream: Option<etcd_client::WatchStream>,
    closed: signal::Receiver<bool>,
}

impl EtcdWatch {
    fn error(&self, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        StoreError::Etcd {
            endpoints: self.endpoints.clone(),
            source: Box::new(e),
        }
    }

    /// Creates the etcd watch from `next` and waits until etcd confirms it; returns the revision
    /// etcd was at.
    async fn open(&mut self) -> Result<i64> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.next)
            .with_progress_notify();
        let key = self.key.clone();
        let mut client = self.client.clone();
        let created = async {
            let mut stream = client.watch(key, Some(options)).await?;
            let first = stream.message().await?;
            Ok::<_, etcd_client::Error>((stream, first))
        };
        let (stream, first) = match tokio::time::timeout(REQUEST_TIMEOUT, created).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(self.error(e)),
            Err(_) => return Err(self.error(EtcdError::Timeout(REQUEST_TIMEOUT))),
        };
        let Some(first) = first else {
            return Err(self.error(EtcdError::WatchCancelled {
                reason: "stream closed before the watch was created".into(),
            }));
        };
        if first.canceled() {
            return Err(self.cancelled(&first));
        }
        self.stream = Some(stream);
        Ok(first.header().map_or(0, |h| h.revision()))
    }

    fn cancelled(&self, resp: &etcd_client::WatchResponse) -> StoreError {
        if resp.compact_revision() > 0 {
            StoreError::Compacted {
                requested: self.next,
                compacted: resp.compact_revision(),
            }
        } else {
            self.error(EtcdError::WatchCancelled {
                reason: resp.cancel_reason().to_string(),
            })
        }
    }

    /// The next batch; `None` when the store closes; an `Err` ends the watch.
    async fn next_batch(&mut self) -> Option<Result<Vec<Event>>> {
        loop {
            if *self.closed.borrow() {
                return None;
            }
            let Some(stream) = self.stream.as_mut() else {
                if let Err(e) = self.reconnect().await? {
                    return Some(Err(e));
                }
                continue;
            };
            let message = tokio::select! {
                _ = self.closed.changed() => return None,
                m = stream.message() => m,
            };
            let resp = match message {
                Ok(Some(resp)) => resp,
                // The connection broke or etcd ended the stream: resume from `next`.
                Ok(None) | Err(_) => {
                    self.stream = None;
                    continue;
                }
            };
            if resp.canceled() {
                return Some(Err(self.cancelled(&resp)));
            }
            if resp.events().is_empty() {
                // A progress notice: etcd has sent everything up to its header revision.
                if !resp.created() {
                    if let Some(h) = resp.header() {
                        self.next = self.next.max(h.revision() + 1);
                    }
                }
                continue;
            }
            let mut batch = Vec::with_capacity(resp.events().len());
            let mut last = self.next;
            for e in resp.events() {
                let Some(kv) = e.kv() else { continue };
                // After a reconnect etcd may resend what was already delivered.
                if kv.mod_revision() < self.next {
                    continue;
                }
                last = last.max(kv.mod_revision());
                let key = match strip(&self.prefix, kv.key()) {
                    Ok(k) => k,
                    Err(err) => return Some(Err(self.error(err))),
                };
                let kind = match e.event_type() {
                    EventType::Put => EventKind::Put,
                    EventType::Delete => EventKind::Delete,
                };
                batch.push(Event {
                    kind,
                    kv: KeyValue {
                        key,
                        value: kv.value().to_vec(),
                        create_revision: kv.create_revision(),
                        mod_revision: kv.mod_revision(),
                        version: kv.version(),
                    },
                });
            }
            self.next = last + 1;
            if !batch.is_empty() {
                return Some(Ok(batch));
            }
        }
    }

    /// Re-creates the watch with backoff. `None`: the store closed while waiting.
    async fn reconnect(&mut self) -> Option<Result<(), StoreError>> {
        let deadline = tokio::time::Instant::now() + RECONNECT_WINDOW;
        let mut delay = Duration::from_millis(100);
        loop {
            if *self.closed.borrow() {
                return None;
            }
            match self.open().await {
                Ok(_) => return Some(Ok(())),
                Err(e @ StoreError::Compacted { .. }) => return Some(Err(e)),
                Err(e) if tokio::time::Instant::now() + delay > deadline => return Some(Err(e)),
                Err(_) => {}
            }
            tokio::select! {
                _ = self.closed.changed() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn strip_removes_the_namespace() {
        assert_eq!(
            strip("/texu", b"/texu/roles/a").ok(),
            Some("/roles/a".into())
        );
        assert!(strip("/texu", b"/other/x").is_err());
        assert!(strip("", b"\xff").is_err());
    }

    #[tokio::test]
    async fn connect_to_nothing_is_an_error_not_a_panic() {
        // Port 1 on loopback: nothing listens there, so the connection is refused at once.
        let endpoints = vec!["127.0.0.1:1".to_string()];
        assert!(matches!(
            EtcdStore::connect(&endpoints).await,
            Err(StoreError::Etcd { .. })
        ));
        assert!(EtcdStore::connect(&[]).await.is_err());
    }
}
