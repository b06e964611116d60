//! The embedded store: one redb file on the controller's board, for a cluster with one controller.
//!
//! Every acknowledged transaction has been committed with immediate durability, so a crash loses
//! nothing that was acknowledged. One writer thread applies transactions in arrival order; when
//! several are waiting it applies them in one redb commit (group commit), each at its own
//! revision, and acknowledges them after that single sync. Reads run on tokio's blocking pool
//! against redb snapshots and never wait for the writer. Besides the keys the file keeps a history
//! log (revision -> events) that watches replay from, until `compact` trims it; nothing trims it
//! on its own, so the controller compacts on a schedule ([`super::compactor`]). A compaction that
//! removed history also gives the freed pages back to the file system (redb's own `compact`), so
//! the file shrinks to what the keys and the kept history need.

use std::path::Path;
use std::sync::{mpsc, Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use async_trait::async_trait;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use super::{
    Event, EventKind, KeyValue, Op, RangeResult, Result, Store, StoreError, Txn, TxnResult,
    WatchStream,
};

/// Key -> [`codec::encode_kv`] record.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Revision -> [`codec::encode_events`] record: every change, for watch replay.
const HISTORY: TableDefinition<i64, &[u8]> = TableDefinition::new("history");
/// [`META_FORMAT`], [`META_REVISION`], [`META_COMPACTED`].
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const META_FORMAT: &str = "format";
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

/// Most writes the writer folds into one commit from requests that wait (one
/// [`Store::txn_batch`] larger than this is committed whole, alone).
const MAX_GROUP: usize = 1024;
/// redb's page cache (reads, and writes not yet committed). redb's default is 1 GiB, which
/// lets the cache grow with the file (a 30 MB file at 10,000 containers, all of it resident);
/// a small bound keeps the store's share of the controller's memory fixed, and pages beyond it
/// are read from the kernel's page cache, which the system can reclaim.
const CACHE_BYTES: usize = 16 << 20;
/// Commits a watch may fall behind before it goes back to the history table to catch up.
const LIVE_CAPACITY: usize = 1024;
/// Revisions a catching-up watch reads from history per blocking call.
const REPLAY_CHUNK: usize = 512;
/// Bytes of history records a catching-up watch reads per blocking call (one record may pass
/// it), so watches replaying big objects hold a bounded amount each.
const REPLAY_BYTES: usize = 1 << 20;

/// What went wrong inside the embedded store (the source of [`StoreError::Embedded`]).
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// redb failed: I/O, a full disk, a damaged file, or the file is open in another process.
    #[error("database error")]
    Redb(#[source] redb::Error),
    /// A record does not decode; the file was damaged or written by something else.
    #[error("stored record is malformed: {what}")]
    Corrupt { what: &'static str },
    /// The file was written by a newer Texu.
    #[error("file format {found} is not supported by this build (it reads format {supported})")]
    Format { found: i64, supported: i64 },
    /// A transaction wrote or deleted one key twice (etcd refuses that too).
    #[error("a transaction may touch key {key:?} only once")]
    DuplicateKey { key: String },
    /// `compact` asked for a revision that does not exist yet.
    #[error("cannot compact at revision {requested}: the current revision is {current}")]
    FutureRevision { requested: i64, current: i64 },
    /// The operating system refused a thread for the writer.
    #[error("could not start the writer thread")]
    SpawnWriter(#[source] std::io::Error),
    /// A read or close on the blocking pool was cancelled or panicked.
    #[error("a blocking store task failed")]
    Task(#[source] tokio::task::JoinError),
    /// The commit that carried this transaction failed; the cause is shared by its whole group.
    #[error("group commit failed")]
    Group(#[source] Arc<EmbeddedError>),
}

/// Why an internal operation did not complete, before it is given the store's path.
#[derive(Debug)]
enum Fail {
    Closed,
    Compacted { requested: i64, compacted: i64 },
    Db(EmbeddedError),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Fail {
            fn from(e: $t) -> Self {
                Fail::Db(EmbeddedError::Redb(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<EmbeddedError> for Fail {
    fn from(e: EmbeddedError) -> Self {
        Fail::Db(e)
    }
}

type Res<T> = std::result::Result<T, Fail>;

/// A key-value store in one redb file.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    writer: Mutex<Option<Writer>>,
}

/// State shared by the store, its writer thread, blocking reads and watch streams.
struct Shared {
    path: String,
    /// `None` once closed. Blocking reads hold the read guard while they run, so closing waits
    /// for them and the file is released when `close` returns.
    db: RwLock<Option<Database>>,
    /// Taken by the writer to publish a commit and by a watch to subscribe, so that a watch knows
    /// exactly which revisions it will receive live and which it must replay.
    live: Mutex<Live>,
    /// Durable commits since the store was opened (a group is one).
    commits: std::sync::atomic::AtomicU64,
}

/// The events of one group commit, in revision order.
type Commit = Arc<Vec<Event>>;

struct Live {
    /// `None` once closed, which ends every watch.
    sender: Option<broadcast::Sender<Commit>>,
    revision: i64,
    compacted: i64,
}

/// A live receiver and the revisions it was taken at: it delivers every commit after `revision`.
struct Subscription {
    rx: broadcast::Receiver<Commit>,
    revision: i64,
    compacted: i64,
}

struct Writer {
    requests: mpsc::Sender<Request>,
    thread: JoinHandle<()>,
}

/// Writes for the writer thread, applied in order in one commit and answered together, each
/// with the revision after it (a compaction counts as a write that succeeded without changing
/// the revision).
struct Request {
    writes: Vec<Write>,
    reply: oneshot::Sender<Vec<Res<TxnResult>>>,
}

enum Write {
    Txn(Txn),
    Compact(i64),
}

/// Locks ignore poisoning: every critical section leaves its data consistent, and nothing in them
/// panics by design, so refusing service after a poisoned lock would only turn one bug into two.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EmbeddedStore {
    /// Opens the store in `path`, creating the file if it does not exist. Blocks while redb opens
    /// the file (and repairs it after a crash), so async callers may want `spawn_blocking`.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_capacity(path, LIVE_CAPACITY)
    }

    fn open_with_capacity(path: &Path, capacity: usize) -> Result<Self> {
        let display = path.display().to_string();
        let fail = |f: Fail| to_store_error(&display, f);
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| fail(e.into()))?;
        let (revision, compacted) = init_tables(&db).map_err(fail)?;
        let (sender, _) = broadcast::channel(capacity);
        let shared = Arc::new(Shared {
            path: display.clone(),
            db: RwLock::new(Some(db)),
            live: Mutex::new(Live {
                sender: Some(sender),
                revision,
                compacted,
            }),
            commits: std::sync::atomic::AtomicU64::new(0),
        });
        let (requests, rx) = mpsc::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("texu-store-writer".into())
            .spawn(move || run_writer(&thread_shared, &rx))
            .map_err(|e| fail(EmbeddedError::SpawnWriter(e).into()))?;
        Ok(Self {
            shared,
            writer: Mutex::new(Some(Writer { requests, thread })),
        })
    }

    fn error(&self, f: Fail) -> StoreError {
        to_store_error(&self.shared.path, f)
    }

    /// Hands a write to the writer thread and waits until it is durable (or refused).
    async fn write(&self, write: Write) -> Result<TxnResult> {
        self.write_all(vec![write])
            .await?
            .pop()
            .unwrap_or(Err(StoreError::Closed))
    }

    /// Hands writes to the writer thread as one request (they share one commit) and waits until
    /// they are durable; one answer per write, in order.
    async fn write_all(&self, writes: Vec<Write>) -> Result<Vec<Result<TxnResult>>> {
        let count = writes.len();
        let requests = lock(&self.writer)
            .as_ref()
            .map(|w| w.requests.clone())
            .ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        requests
            .send(Request { writes, reply })
            .map_err(|_| StoreError::Closed)?;
        let answers = answer.await.map_err(|_| StoreError::Closed)?;
        if answers.len() != count {
            return Err(StoreError::Closed);
        }
        Ok(answers
            .into_iter()
            .map(|r| r.map_err(|e| self.error(e)))
            .collect())
    }

    /// Durable commits since the store was opened: a group of writes that waited together, or
    /// one [`Store::txn_batch`], counts once.
    pub fn commits(&self) -> u64 {
        self.shared
            .commits
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `f` on a snapshot, on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadTransaction) -> Res<T> + Send + 'static,
    {
        read_snapshot(self.shared.clone(), f)
            .await
            .map_err(|e| self.error(e))
    }
}

fn to_store_error(path: &str, f: Fail) -> StoreError {
    match f {
        Fail::Closed => StoreError::Closed,
        Fail::Compacted {
            requested,
            compacted,
        } => StoreError::Compacted {
            requested,
            compacted,
        },
        Fail::Db(e) => StoreError::Embedded {
            path: path.to_string(),
            source: Box::new(e),
        },
    }
}

async fn read_snapshot<T, F>(shared: Arc<Shared>, f: F) -> Res<T>
where
    T: Send + 'static,
    F: FnOnce(&redb::ReadTransaction) -> Res<T> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let guard = shared.db.read().unwrap_or_else(PoisonError::into_inner);
        let db = guard.as_ref().ok_or(Fail::Closed)?;
        let snapshot = db.begin_read()?;
        f(&snapshot)
    })
    .await
    .map_err(|e| Fail::Db(EmbeddedError::Task(e)))?
}

/// Creates missing tables and reads (revision, compacted revision).
fn init_tables(db: &Database) -> Res<(i64, i64)> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    let found = {
        tx.open_table(KV)?;
        tx.open_table(HISTORY)?;
        let mut meta = tx.open_table(META)?;
        let found = meta.get(META_FORMAT)?.map(|g| g.value());
        if found.is_none() {
            meta.insert(META_FORMAT, codec::FORMAT)?;
        }
        found
    };
    match found {
        Some(f) if f != codec::FORMAT => {
            tx.abort()?;
            return Err(EmbeddedError::Format {
                found: f,
                supported: codec::FORMAT,
            }
            .into());
        }
        Some(_) => tx.abort()?,
        None => tx.commit()?,
    }
    let snapshot = db.begin_read()?;
    let meta = snapshot.open_table(META)?;
    let get = |k| -> Res<i64> { Ok(meta.get(k)?.map(|g| g.value()).unwrap_or(0)) };
    Ok((get(META_REVISION)?, get(META_COMPACTED)?))
}

impl Shared {
    /// A receiver of every commit after the returned revision, or `None` once closed.
    fn subscribe(&self) -> Option<Subscription> {
        let live = lock(&self.live);
        Some(Subscription {
            rx: live.sender.as_ref()?.subscribe(),
            revision: live.revision,
            compacted: live.compacted,
        })
    }

    /// Ends watches and releases the file. Waits for the writer to drain and reads to finish.
    fn shut_down(&self, writer: Option<Writer>) {
        if let Some(Writer { requests, thread }) = writer {
            drop(requests);
            // The writer never panics by design; if it did, there is nothing left to clean up.
            let _ = thread.join();
        }
        lock(&self.live).sender = None;
        let db = self
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(db);
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        let writer = lock(&self.writer).take();
        if writer.is_some() {
            self.shared.shut_down(writer);
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_string();
        self.read(move |snapshot| {
            let kv = snapshot.open_table(KV)?;
            let found = kv.get(key.as_str())?;
            match found {
                Some(g) => Ok(Some(codec::decode_kv(&key, g.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn range(&self, prefix: &str) -> Result<RangeResult> {
        self.range_containing(prefix, &[]).await
    }

    async fn range_containing(&self, prefix: &str, needles: &[Vec<u8>]) -> Result<RangeResult> {
        let prefix = prefix.to_string();
        let needles = needles.to_vec();
        self.read(move |snapshot| {
            let kv = snapshot.open_table(KV)?;
            let mut kvs = Vec::new();
            for entry in kv.range::<&str>(prefix.as_str()..)? {
                let (k, v) = entry?;
                let key = k.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                // The record holds the value verbatim: a needle in it is in the value.
                if super::contains_all(v.value(), &needles) {
                    kvs.push(codec::decode_kv(key, v.value())?);
                }
            }
            let meta = snapshot.open_table(META)?;
            let revision = meta.get(META_REVISION)?.map_or(0, |g| g.value());
            Ok(RangeResult { kvs, revision })
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        check_distinct_keys(&txn).map_err(|e| self.error(e.into()))?;
        self.write(Write::Txn(txn)).await
    }

    async fn txn_batch(&self, txns: Vec<Txn>) -> Result<Vec<Result<TxnResult>>> {
        // A transaction that touches a key twice is refused alone; the rest share one commit.
        let mut answers: Vec<Option<Result<TxnResult>>> = Vec::with_capacity(txns.len());
        let mut writes = Vec::with_capacity(txns.len());
        for txn in txns {
            match check_distinct_keys(&txn) {
                Ok(()) => {
                    answers.push(None);
                    writes.push(Write::Txn(txn));
                }
                Err(e) => answers.push(Some(Err(self.error(e.into())))),
            }
        }
        let mut written = if writes.is_empty() {
            Vec::new()
        } else {
            self.write_all(writes).await?
        }
        .into_iter();
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| written.next().unwrap_or(Err(StoreError::Closed))))
            .collect())
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream> {
        let Subscription {
            rx,
            revision,
            compacted,
        } = self.shared.subscribe().ok_or(StoreError::Closed)?;
        if from_revision > 0 && from_revision < compacted {
            return Err(StoreError::Compacted {
                requested: from_revision,
                compacted,
            });
        }
        let next = if from_revision <= 0 {
            revision + 1
        } else {
            from_revision
        };
        let state = Watch {
            shared: self.shared.clone(),
            prefix: prefix.to_string(),
            next,
            replay_to: revision,
            rx: Some(rx),
        };
        // An `Err` item ends the stream: the state is dropped after yielding it.
        Ok(Box::pin(futures::stream::unfold(
            Some(state),
            |state| async move {
                let mut w = state?;
                match w.next_batch().await? {
                    Ok(batch) => Some((Ok(batch), Some(w))),
                    Err(e) => Some((Err(e), None)),
                }
            },
        )))
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        self.write(Write::Compact(revision)).await.map(drop)
    }

    async fn revision(&self) -> Result<i64> {
        let live = lock(&self.shared.live);
        match live.sender {
            Some(_) => Ok(live.revision),
            None => Err(StoreError::Closed),
        }
    }

    async fn close(&self) -> Result<()> {
        let writer = lock(&self.writer).take();
        if writer.is_none() {
            return Ok(());
        }
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.shut_down(writer))
            .await
            .map_err(|e| self.error(EmbeddedError::Task(e).into()))
    }
}

mod codec;
mod watch;
mod writer;

use watch::Watch;
use writer::{check_distinct_keys, run_writer};

#[cfg(test)]
mod batch_tests;
#[cfg(test)]
mod tests;
