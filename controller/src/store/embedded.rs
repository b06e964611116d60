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

/// Most transactions the writer folds into one commit.
const MAX_GROUP: usize = 256;
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

/// A write for the writer thread. Both kinds are answered with the revision after them (a
/// compaction counts as a write that succeeded without changing the revision).
struct Request {
    write: Write,
    reply: oneshot::Sender<Res<TxnResult>>,
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
        let db = Database::create(path).map_err(|e| fail(e.into()))?;
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
        let requests = lock(&self.writer)
            .as_ref()
            .map(|w| w.requests.clone())
            .ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        requests
            .send(Request { write, reply })
            .map_err(|_| StoreError::Closed)?;
        match answer.await {
            Ok(r) => r.map_err(|e| self.error(e)),
            Err(_) => Err(StoreError::Closed),
        }
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

fn run_writer(shared: &Shared, requests: &mpsc::Receiver<Request>) {
    // `recv` fails only once every sender is gone and the queue is empty, so every request that
    // was accepted is answered before the thread ends.
    while let Ok(first) = requests.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match requests.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        commit_group(shared, group);
    }
}

fn commit_group(shared: &Shared, group: Vec<Request>) {
    let guard = shared.db.read().unwrap_or_else(PoisonError::into_inner);
    let applied = match guard.as_ref() {
        Some(db) => apply_group(db, &group),
        None => Err(Fail::Closed),
    };
    drop(guard);
    match applied {
        Ok((outcomes, events, revision, compacted, trimmed)) => {
            if trimmed {
                shrink_file(shared);
            }
            {
                let mut live = lock(&shared.live);
                live.revision = revision;
                live.compacted = compacted;
                if let (false, Some(sender)) = (events.is_empty(), &live.sender) {
                    // No receivers is fine: nobody is watching.
                    let _ = sender.send(Arc::new(events));
                }
            }
            // Answer only after publishing, so that whoever hears back sees its write everywhere.
            for (request, outcome) in group.into_iter().zip(outcomes) {
                let _ = request.reply.send(outcome.map_err(Fail::Db));
            }
        }
        Err(fail) => {
            let cause = match fail {
                Fail::Db(e) => Some(Arc::new(e)),
                _ => None,
            };
            for request in group {
                let each = match &cause {
                    Some(e) => Fail::Db(EmbeddedError::Group(e.clone())),
                    None => Fail::Closed,
                };
                let _ = request.reply.send(Err(each));
            }
        }
    }
}

/// Per request its answer (or why it was refused), then the group's events, revision,
/// compacted revision and whether a compaction removed history.
type Applied = (
    Vec<std::result::Result<TxnResult, EmbeddedError>>,
    Vec<Event>,
    i64,
    i64,
    bool,
);

/// Gives pages freed by a compaction back to the file system. Holds the database exclusively
/// (reads wait) for as long as redb needs; a failure only leaves the file larger than needed.
fn shrink_file(shared: &Shared) {
    let mut guard = shared.db.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(db) = guard.as_mut() {
        if let Err(e) = db.compact() {
            tracing::warn!(path = %shared.path, error = %e, "cannot shrink the store file");
        }
    }
}

/// Applies a group of requests in one write transaction; commits only if something changed.
fn apply_group(db: &Database, group: &[Request]) -> Res<Applied> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    let mut outcomes = Vec::with_capacity(group.len());
    let mut events = Vec::new();
    let mut changed = false;
    let mut trimmed = false;
    let (revision, compacted) = {
        let mut kv = tx.open_table(KV)?;
        let mut history = tx.open_table(HISTORY)?;
        let mut meta = tx.open_table(META)?;
        let mut revision = meta.get(META_REVISION)?.map(|g| g.value()).unwrap_or(0);
        let mut compacted = meta.get(META_COMPACTED)?.map(|g| g.value()).unwrap_or(0);
        for request in group {
            match &request.write {
                Write::Txn(txn) => {
                    let before = events.len();
                    let result = apply_txn(&mut kv, txn, &mut revision, &mut events)?;
                    if events.len() > before {
                        let record = codec::encode_events(&events[before..]);
                        history.insert(revision, record.as_slice())?;
                        changed = true;
                    }
                    outcomes.push(Ok(result));
                }
                Write::Compact(target) if *target > revision => {
                    outcomes.push(Err(EmbeddedError::FutureRevision {
                        requested: *target,
                        current: revision,
                    }));
                }
                Write::Compact(target) => {
                    if *target > compacted {
                        history.retain_in(..*target, |_, _| false)?;
                        compacted = *target;
                        changed = true;
                        trimmed = true;
                    }
                    outcomes.push(Ok(TxnResult {
                        succeeded: true,
                        revision,
                    }));
                }
            }
        }
        if changed {
            meta.insert(META_REVISION, revision)?;
            meta.insert(META_COMPACTED, compacted)?;
        }
        (revision, compacted)
    };
    if changed {
        tx.commit()?;
    } else {
        // Nothing to write: an idle or refused write must not touch the disk.
        tx.abort()?;
    }
    Ok((outcomes, events, revision, compacted, trimmed))
}

fn stored(kv: &redb::Table<&str, &[u8]>, key: &str) -> Res<Option<KeyValue>> {
    match kv.get(key)? {
        Some(g) => Ok(Some(codec::decode_kv(key, g.value())?)),
        None => Ok(None),
    }
}

/// Applies one transaction; appends its events and bumps `revision` if it changed anything.
fn apply_txn(
    kv: &mut redb::Table<&str, &[u8]>,
    txn: &Txn,
    revision: &mut i64,
    events: &mut Vec<Event>,
) -> Res<TxnResult> {
    for super::Compare::ModRevision {
        key,
        revision: want,
    } in &txn.compares
    {
        let have = stored(kv, key)?.map_or(0, |k| k.mod_revision);
        if have != *want {
            return Ok(TxnResult {
                succeeded: false,
                revision: *revision,
            });
        }
    }
    let next = *revision + 1;
    let mut touched = false;
    for op in &txn.ops {
        match op {
            Op::Put { key, value } => {
                let (create_revision, version) = match stored(kv, key)? {
                    Some(prev) => (prev.create_revision, prev.version + 1),
                    None => (next, 1),
                };
                let record = codec::encode_kv(create_revision, next, version, value);
                kv.insert(key.as_str(), record.as_slice())?;
                events.push(Event {
                    kind: EventKind::Put,
                    kv: KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision,
                        mod_revision: next,
                        version,
                    },
                });
                touched = true;
            }
            Op::Delete { key } => {
                if kv.remove(key.as_str())?.is_some() {
                    events.push(Event {
                        kind: EventKind::Delete,
                        kv: KeyValue {
                            key: key.clone(),
                            value: Vec::new(),
                            create_revision: 0,
                            mod_revision: next,
                            version: 0,
                        },
                    });
                    touched = true;
                }
            }
        }
    }
    if touched {
        *revision = next;
    }
    Ok(TxnResult {
        succeeded: true,
        revision: *revision,
    })
}

/// etcd refuses a transaction that touches one key twice; so does this store.
fn check_distinct_keys(txn: &Txn) -> std::result::Result<(), EmbeddedError> {
    let mut keys: Vec<&str> = txn
        .ops
        .iter()
        .map(|op| match op {
            Op::Put { key, .. } | Op::Delete { key } => key.as_str(),
        })
        .collect();
    keys.sort_unstable();
    match keys.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(EmbeddedError::DuplicateKey {
            key: w[0].to_string(),
        }),
        None => Ok(()),
    }
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
        let prefix = prefix.to_string();
        self.read(move |snapshot| {
            let kv = snapshot.open_table(KV)?;
            let mut kvs = Vec::new();
            for entry in kv.range::<&str>(prefix.as_str()..)? {
                let (k, v) = entry?;
                let key = k.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                kvs.push(codec::decode_kv(key, v.value())?);
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

/// One watch: replays history up to `replay_to`, then follows the live channel. Falling behind
/// the channel sends it back to history, so a slow watcher loses nothing.
struct Watch {
    shared: Arc<Shared>,
    prefix: String,
    /// The next revision this watch has to deliver.
    next: i64,
    /// History covers every revision up to this one that the live channel will not deliver.
    replay_to: i64,
    /// `None` once the store has closed.
    rx: Option<broadcast::Receiver<Commit>>,
}

impl Watch {
    async fn next_batch(&mut self) -> Option<Result<Vec<Event>>> {
        loop {
            if self.next <= self.replay_to {
                match self.replay_chunk().await {
                    Ok(events) if events.is_empty() => continue,
                    Ok(events) => return Some(Ok(events)),
                    Err(Fail::Closed) => return None,
                    Err(f) => return Some(Err(to_store_error(&self.shared.path, f))),
                }
            }
            let rx = self.rx.as_mut()?;
            match rx.recv().await {
                Ok(commit) => {
                    let events: Vec<Event> = commit
                        .iter()
                        .filter(|e| e.kv.mod_revision >= self.next && self.matches(e))
                        .cloned()
                        .collect();
                    if let Some(last) = commit.last() {
                        self.next = self.next.max(last.kv.mod_revision + 1);
                    }
                    if !events.is_empty() {
                        return Some(Ok(events));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let fresh = self.shared.subscribe()?;
                    self.rx = Some(fresh.rx);
                    self.replay_to = fresh.revision;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.rx = None;
                    return None;
                }
            }
        }
    }

    fn matches(&self, e: &Event) -> bool {
        e.kv.key.starts_with(self.prefix.as_str())
    }

    /// Reads up to [`REPLAY_CHUNK`] revisions of history and advances `next` past them.
    async fn replay_chunk(&mut self) -> Res<Vec<Event>> {
        let (from, to, prefix) = (self.next, self.replay_to, self.prefix.clone());
        let (events, last) = read_snapshot(self.shared.clone(), move |snapshot| {
            let meta = snapshot.open_table(META)?;
            let compacted = meta.get(META_COMPACTED)?.map_or(0, |g| g.value());
            if from < compacted {
                return Err(Fail::Compacted {
                    requested: from,
                    compacted,
                });
            }
            let history = snapshot.open_table(HISTORY)?;
            let mut events = Vec::new();
            let (mut seen, mut bytes) = (0, 0);
            let mut last = to;
            for entry in history.range(from..=to)? {
                let (rev, record) = entry?;
                let batch = codec::decode_events(record.value())?;
                events.extend(batch.into_iter().filter(|e| e.kv.key.starts_with(&prefix)));
                seen += 1;
                bytes += record.value().len();
                if seen == REPLAY_CHUNK || bytes >= REPLAY_BYTES {
                    last = rev.value();
                    break;
                }
            }
            Ok((events, last))
        })
        .await?;
        self.next = last + 1;
        Ok(events)
    }
}

/// The on-disk encoding. Every record starts with the format byte, so a later format can be told
/// apart and migrated. Integers are little-endian.
mod codec {
    use super::{EmbeddedError, Event, EventKind, KeyValue};

    /// The format this build writes (also stored in the meta table).
    pub const FORMAT: i64 = 1;
    const TAG: u8 = FORMAT as u8;

    /// A kv record: tag, create revision, mod revision, version, value bytes.
    pub fn encode_kv(create: i64, modified: i64, version: i64, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(25 + value.len());
        out.push(TAG);
        out.extend_from_slice(&create.to_le_bytes());
        out.extend_from_slice(&modified.to_le_bytes());
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    pub fn decode_kv(key: &str, bytes: &[u8]) -> Result<KeyValue, EmbeddedError> {
        let mut r = Reader::new(bytes, "kv")?;
        Ok(KeyValue {
            key: key.to_string(),
            create_revision: r.i64()?,
            mod_revision: r.i64()?,
            version: r.i64()?,
            value: r.rest().to_vec(),
        })
    }

    /// A history record: tag, event count, then per event: kind (0 put, 1 delete), key length and
    /// bytes, create revision, mod revision, version, value length and bytes.
    pub fn encode_events(events: &[Event]) -> Vec<u8> {
        let mut out = vec![TAG];
        out.extend_from_slice(&(events.len() as u32).to_le_bytes());
        for e in events {
            out.push(match e.kind {
                EventKind::Put => 0,
                EventKind::Delete => 1,
            });
            out.extend_from_slice(&(e.kv.key.len() as u32).to_le_bytes());
            out.extend_from_slice(e.kv.key.as_bytes());
            out.extend_from_slice(&e.kv.create_revision.to_le_bytes());
            out.extend_from_slice(&e.kv.mod_revision.to_le_bytes());
            out.extend_from_slice(&e.kv.version.to_le_bytes());
            out.extend_from_slice(&(e.kv.value.len() as u32).to_le_bytes());
            out.extend_from_slice(&e.kv.value);
        }
        out
    }

    pub fn decode_events(bytes: &[u8]) -> Result<Vec<Event>, EmbeddedError> {
        let mut r = Reader::new(bytes, "history")?;
        let count = r.u32()? as usize;
        let mut events = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let kind = match r.take(1)?[0] {
                0 => EventKind::Put,
                1 => EventKind::Delete,
                _ => return Err(r.corrupt()),
            };
            let key_len = r.u32()? as usize;
            let key = std::str::from_utf8(r.take(key_len)?)
                .map_err(|_| r.corrupt())?
                .to_string();
            let create_revision = r.i64()?;
            let mod_revision = r.i64()?;
            let version = r.i64()?;
            let value_len = r.u32()? as usize;
            let value = r.take(value_len)?.to_vec();
            events.push(Event {
                kind,
                kv: KeyValue {
                    key,
                    value,
                    create_revision,
                    mod_revision,
                    version,
                },
            });
        }
        Ok(events)
    }

    struct Reader<'a> {
        bytes: &'a [u8],
        what: &'static str,
    }

    impl<'a> Reader<'a> {
        fn new(bytes: &'a [u8], what: &'static str) -> Result<Self, EmbeddedError> {
            match bytes.split_first() {
                Some((&TAG, rest)) => Ok(Self { bytes: rest, what }),
                _ => Err(EmbeddedError::Corrupt { what }),
            }
        }
        fn corrupt(&self) -> EmbeddedError {
            EmbeddedError::Corrupt { what: self.what }
        }
        fn take(&mut self, n: usize) -> Result<&'a [u8], EmbeddedError> {
            if self.bytes.len() < n {
                return Err(self.corrupt());
            }
            let (head, rest) = self.bytes.split_at(n);
            self.bytes = rest;
            Ok(head)
        }
        fn i64(&mut self) -> Result<i64, EmbeddedError> {
            let b = self.take(8)?;
            Ok(i64::from_le_bytes(
                b.try_into().map_err(|_| self.corrupt())?,
            ))
        }
        fn u32(&mut self) -> Result<u32, EmbeddedError> {
            let b = self.take(4)?;
            Ok(u32::from_le_bytes(
                b.try_into().map_err(|_| self.corrupt())?,
            ))
        }
        fn rest(&mut self) -> &'a [u8] {
            std::mem::take(&mut self.bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;
    use std::path::PathBuf;

    use futures::StreamExt;

    use super::*;
    use crate::store::conformance::{self, Watcher};

    fn temp_db() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.redb");
        (dir, path)
    }

    fn open(path: &Path) -> Arc<dyn Store> {
        Arc::new(EmbeddedStore::open(path).expect("open"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_conformance_suite() {
        let (_dir, path) = temp_db();
        let store = open(&path);
        // Other keys already present must not matter.
        store.put("/unrelated", b"x".to_vec()).await.expect("put");
        conformance::run_all(store).await;
    }

    #[tokio::test]
    async fn passes_the_conformance_suite_on_one_thread() {
        let (_dir, path) = temp_db();
        conformance::run_all(open(&path)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_thousand_churning_writes_leave_a_small_file_after_compaction() {
        let (_dir, path) = temp_db();
        let store = open(&path);
        conformance::churn_with_compaction(store.clone(), 10_000).await;
        store.close().await.expect("close");
        let size = std::fs::metadata(&path).expect("file").len();
        println!("state.redb after 10,000 writes and compaction: {size} bytes");
        assert!(size < 4 << 20, "the store file is {size} bytes");
    }

    #[tokio::test]
    async fn close_ends_watches_and_later_calls() {
        let (_dir, path) = temp_db();
        conformance::close_ends_everything(open(&path)).await;
    }

    #[tokio::test]
    async fn close_releases_the_file() {
        let (_dir, path) = temp_db();
        let store = open(&path);
        store.put("/k", b"v".to_vec()).await.expect("put");
        store.close().await.expect("close");
        let again = open(&path);
        assert_eq!(again.revision().await.expect("revision"), 1);
    }

    #[tokio::test]
    async fn data_and_revision_survive_a_reopen() {
        let (_dir, path) = temp_db();
        let store = open(&path);
        store.put("/a", b"1".to_vec()).await.expect("put");
        store.put("/b", b"2".to_vec()).await.expect("put");
        let last = store.put("/a", b"3".to_vec()).await.expect("put");
        drop(store);
        let store = open(&path);
        assert_eq!(store.revision().await.expect("revision"), last);
        let a = store.get("/a").await.expect("get").expect("present");
        assert_eq!(
            (a.value, a.create_revision, a.version),
            (b"3".to_vec(), 1, 2)
        );
        assert_eq!(store.range("/").await.expect("range").kvs.len(), 2);
        assert_eq!(store.put("/c", b"4".to_vec()).await.expect("put"), last + 1);
    }

    #[tokio::test]
    async fn a_watch_replays_history_after_a_reopen() {
        let (_dir, path) = temp_db();
        let store = open(&path);
        for i in 0..5 {
            store.put(&format!("/k{i}"), vec![i]).await.expect("put");
        }
        store.compact(2).await.expect("compact");
        drop(store);
        let store = open(&path);
        let mut watch = Watcher::open(store.as_ref(), "/", 2).await;
        let keys: Vec<String> = watch.take(4).await.into_iter().map(|e| e.kv.key).collect();
        assert_eq!(keys, ["/k1", "/k2", "/k3", "/k4"]);
        let compacted = conformance::expect_compacted(store.as_ref(), "/", 1).await;
        assert_eq!(compacted, (1, 2), "compaction survives a reopen");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_watcher_catches_up_from_history() {
        let (_dir, path) = temp_db();
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open_with_capacity(&path, 2).expect("open"));
        let mut watch = Watcher::open(store.as_ref(), "/w/", 0).await;
        // Far more commits than the live channel holds, while nobody reads the watch.
        for i in 0..40 {
            store
                .put(&format!("/w/{i:02}"), vec![i])
                .await
                .expect("put");
            store.put("/other", vec![i]).await.expect("put");
        }
        let events = watch.take(40).await;
        let keys: Vec<String> = events.iter().map(|e| e.kv.key.clone()).collect();
        let want: Vec<String> = (0..40).map(|i| format!("/w/{i:02}")).collect();
        assert_eq!(keys, want, "every event once, in order");
        let r = store.put("/w/live", b"x".to_vec()).await.expect("put");
        let live = watch.next_event().await;
        assert_eq!((live.kv.key.as_str(), live.kv.mod_revision), ("/w/live", r));
    }

    #[tokio::test]
    async fn a_slow_watcher_whose_history_was_compacted_ends_with_compacted() {
        let (_dir, path) = temp_db();
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open_with_capacity(&path, 2).expect("open"));
        let mut watch = store.watch("/w/", 0).await.expect("watch");
        for i in 0..10 {
            store.put(&format!("/w/{i}"), vec![i]).await.expect("put");
        }
        store.compact(10).await.expect("compact");
        match watch.next().await {
            Some(Err(StoreError::Compacted {
                requested: 1,
                compacted: 10,
            })) => {}
            other => panic!("expected Compacted, got {other:?}"),
        }
        assert!(watch.next().await.is_none(), "an error ends the watch");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_get_consecutive_revisions() {
        let (_dir, path) = temp_db();
        let store = open(&path);
        let writers = (0..64).map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.put(&format!("/k/{i}"), vec![1]).await })
        });
        let mut revisions: Vec<i64> = futures::future::join_all(writers)
            .await
            .into_iter()
            .map(|r| r.expect("task").expect("put"))
            .collect();
        revisions.sort_unstable();
        assert_eq!(revisions, (1..=64).collect::<Vec<_>>());
        let mut watch = store.watch("/k/", 1).await.expect("watch");
        let mut seen = Vec::new();
        while seen.len() < 64 {
            let batch = watch.next().await.expect("open").expect("events");
            seen.extend(batch.into_iter().map(|e| e.kv.mod_revision));
        }
        assert_eq!(seen, (1..=64).collect::<Vec<_>>());
    }

    #[test]
    fn a_newer_file_format_is_refused() {
        let (_dir, path) = temp_db();
        drop(EmbeddedStore::open(&path).expect("open"));
        {
            let db = Database::create(&path).expect("redb");
            let tx = db.begin_write().expect("write");
            tx.open_table(META)
                .expect("meta")
                .insert(META_FORMAT, 99)
                .expect("insert");
            tx.commit().expect("commit");
        }
        match EmbeddedStore::open(&path) {
            Err(StoreError::Embedded { source, .. }) => assert!(matches!(
                source.downcast_ref::<EmbeddedError>(),
                Some(EmbeddedError::Format { found: 99, .. })
            )),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("opened a format-99 file"),
        }
    }

    #[test]
    fn records_round_trip_and_truncation_is_detected() {
        let events = vec![
            Event {
                kind: EventKind::Put,
                kv: KeyValue {
                    key: "/a".into(),
                    value: vec![0, 1, 2],
                    create_revision: 3,
                    mod_revision: 4,
                    version: 2,
                },
            },
            Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: "/b".into(),
                    value: Vec::new(),
                    create_revision: 0,
                    mod_revision: 4,
                    version: 0,
                },
            },
        ];
        let bytes = codec::encode_events(&events);
        assert_eq!(codec::decode_events(&bytes).expect("decode"), events);
        assert!(codec::decode_events(&bytes[..bytes.len() - 1]).is_err());
        let kv = codec::encode_kv(1, 2, 3, b"value");
        let decoded = codec::decode_kv("/k", &kv).expect("decode");
        assert_eq!(
            (
                decoded.create_revision,
                decoded.mod_revision,
                decoded.version
            ),
            (1, 2, 3)
        );
        assert_eq!(decoded.value, b"value");
        assert!(codec::decode_kv("/k", &kv[..10]).is_err());
        assert!(codec::decode_kv("/k", &[]).is_err());
    }

    const CRASH_DB: &str = "TEXU_CRASH_TEST_DB";

    /// The child half of `nothing_acknowledged_is_lost_to_sigkill`: writes until it is killed.
    #[tokio::test]
    #[ignore = "run by nothing_acknowledged_is_lost_to_sigkill in a child process"]
    async fn crash_child_writes_until_killed() {
        let Some(path) = std::env::var_os(CRASH_DB) else {
            return;
        };
        let store = open(Path::new(&path));
        for i in 0..100_000 {
            let rev = store
                .put(&format!("/crash/{i}"), vec![7; 64])
                .await
                .expect("put");
            println!("acked {i} {rev}");
        }
    }

    #[test]
    fn nothing_acknowledged_is_lost_to_sigkill() {
        let (_dir, path) = temp_db();
        let exe = std::env::current_exe().expect("test binary");
        let mut child = std::process::Command::new(exe)
            .args([
                "--exact",
                "store::embedded::tests::crash_child_writes_until_killed",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DB, &path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let mut acked = None;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.expect("read child");
            let mut words = line.split_whitespace();
            if words.next() != Some("acked") {
                continue;
            }
            let i: u64 = words.next().and_then(|w| w.parse().ok()).expect("index");
            let rev: i64 = words.next().and_then(|w| w.parse().ok()).expect("revision");
            acked = Some((i, rev));
            if i == 50 {
                // SIGKILL, right after an acknowledged write: no chance to flush or close.
                child.kill().expect("kill child");
                break;
            }
        }
        let _ = child.wait();
        let (last, rev) = acked.expect("the child acknowledged writes");
        assert_eq!(last, 50);
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let store = open(&path);
            assert!(store.revision().await.expect("revision") >= rev);
            for i in 0..=last {
                let key = format!("/crash/{i}");
                assert!(store.get(&key).await.expect("get").is_some(), "{key} lost");
            }
        });
    }
}
