//! The controller's state store: a key-value store shaped like etcd's KV API.
//!
//! Keys are strings, values are bytes. Every successful write bumps one global revision; each key
//! remembers the revision that created it and the one that last modified it. Writes are guarded
//! transactions (compare a key's mod revision, then put or delete), and a watch replays every
//! change under a prefix from a given revision, then follows live changes. Two backends implement
//! it: [`embedded::EmbeddedStore`] (redb, one file) and [`etcd::EtcdStore`] (a real etcd cluster).

pub mod compactor;
pub mod embedded;
pub mod etcd;
pub mod timed;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
#[cfg(any(test, feature = "conformance"))]
pub mod etcd_cluster;

use async_trait::async_trait;
use futures::stream::BoxStream;

/// A store result.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What can go wrong talking to a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded database file could not be opened, read or written.
    #[error("embedded store {path}: {source}")]
    Embedded {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// etcd refused a request or could not be reached.
    #[error("etcd at {endpoints}: {source}")]
    Etcd {
        endpoints: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A watch asked for history that compaction has removed.
    #[error("revision {requested} has been compacted (oldest kept: {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    /// The store was closed.
    #[error("store is closed")]
    Closed,
    /// A leader-only write from a controller that does not lead (or no longer does).
    #[error("this controller is not the leader")]
    NotLeader,
}

/// One key with its value and revisions, as etcd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created this key (since it was last absent).
    pub create_revision: i64,
    /// Revision of the last write to this key.
    pub mod_revision: i64,
    /// Number of writes since creation (1 after the first put).
    pub version: i64,
}

/// A guard on a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's mod revision equals this value; 0 means "the key does not exist".
    ModRevision { key: String, revision: i64 },
}

/// A write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
    },
    /// Deleting an absent key is not an error and does not bump the revision by itself.
    Delete {
        key: String,
    },
}

/// A transaction: if every compare holds, apply every op atomically at one new revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a guard on a key's mod revision (0: the key must be absent).
    pub fn when_mod_revision(mut self, key: impl Into<String>, revision: i64) -> Self {
        self.compares.push(Compare::ModRevision {
            key: key.into(),
            revision,
        });
        self
    }
    /// Adds a put.
    pub fn put(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.ops.push(Op::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }
    /// Adds a delete.
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }
}

/// Every key a transaction compares or writes.
fn txn_keys(txn: &Txn) -> Vec<&str> {
    let compared = txn.compares.iter().map(|c| match c {
        Compare::ModRevision { key, .. } => key.as_str(),
    });
    let written = txn.ops.iter().map(|op| match op {
        Op::Put { key, .. } | Op::Delete { key } => key.as_str(),
    });
    compared.chain(written).collect()
}

/// True when `bytes` contains every one of `needles`.
pub fn contains_all(bytes: &[u8], needles: &[Vec<u8>]) -> bool {
    needles
        .iter()
        .all(|n| memchr::memmem::find(bytes, n).is_some())
}

/// The outcome of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// True when every compare held and the ops were applied.
    pub succeeded: bool,
    /// The store's revision after the transaction (unchanged when it failed or changed nothing).
    pub revision: i64,
}

/// A list of keys and the revision at which it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub revision: i64,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch. For a delete, `kv.value` is empty and `kv.mod_revision` is the
/// revision of the delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

/// A watch: batches of events in revision order. Ends when the store closes; an `Err` item ends it.
pub type WatchStream = BoxStream<'static, Result<Vec<Event>>>;

/// The store the controller keeps its state in.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Reads every key that starts with `prefix`, sorted by key.
    async fn range(&self, prefix: &str) -> Result<RangeResult>;
    /// Like [`Store::range`], keeping only the keys whose value contains every one of
    /// `needles` (a superset for the caller to filter exactly). The embedded store looks in
    /// the stored bytes before copying them, so a filtered list of 10 keys among 10,000 holds
    /// 10 values, not 10,000.
    async fn range_containing(&self, prefix: &str, needles: &[Vec<u8>]) -> Result<RangeResult> {
        let mut range = self.range(prefix).await?;
        range.kvs.retain(|kv| contains_all(&kv.value, needles));
        Ok(range)
    }
    /// Runs a guarded transaction.
    async fn txn(&self, txn: Txn) -> Result<TxnResult>;
    /// Runs independent transactions, each with its own compares and its own revision, as if
    /// one after the other in order, and answers each: a failed compare or a refused
    /// transaction fails only itself. The embedded store commits them all with one sync (a
    /// group commit); this default sends them at once, one round of concurrent requests per
    /// run of transactions that share no key, so writes to one key keep their order. `Err`
    /// only when nothing could be tried (the store is closed).
    async fn txn_batch(&self, txns: Vec<Txn>) -> Result<Vec<Result<TxnResult>>> {
        let mut answers = Vec::with_capacity(txns.len());
        let mut round: Vec<Txn> = Vec::new();
        let mut keys: std::collections::HashSet<String> = std::collections::HashSet::new();
        for txn in txns {
            let touched = txn_keys(&txn);
            if touched.iter().any(|k| keys.contains(*k)) {
                let sent = std::mem::take(&mut round);
                answers
                    .extend(futures::future::join_all(sent.into_iter().map(|t| self.txn(t))).await);
                keys.clear();
            }
            keys.extend(touched.into_iter().map(str::to_string));
            round.push(txn);
        }
        answers.extend(futures::future::join_all(round.into_iter().map(|t| self.txn(t))).await);
        Ok(answers)
    }
    /// Watches every key under `prefix`, replaying changes with revision >= `from_revision`
    /// (0: only changes after the call), then following new ones.
    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream>;
    /// Forgets history older than `revision`; later watches from before it get `Compacted`.
    async fn compact(&self, revision: i64) -> Result<()>;
    /// The current global revision.
    async fn revision(&self) -> Result<i64>;
    /// Flushes and releases the store; later calls fail with `Closed`.
    async fn close(&self) -> Result<()>;

    /// Unconditional put; returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<i64> {
        Ok(self.txn(Txn::new().put(key, value)).await?.revision)
    }
    /// Unconditional delete; returns the revision after it.
    async fn delete(&self, key: &str) -> Result<i64> {
        Ok(self.txn(Txn::new().delete(key)).await?.revision)
    }
}
