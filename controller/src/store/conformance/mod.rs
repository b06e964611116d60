//! The store conformance suite: the behaviour every [`Store`] backend must show, run against the
//! embedded store by its unit tests and against a real etcd by `tests/store_etcd.rs`.
//!
//! Each case works under a fresh key prefix, so the suite can run on a store that already holds
//! other keys. It does assume that nobody else writes to the store while it runs, because it
//! checks exact revision arithmetic and compacts. Cases panic on failure, like test assertions.
//! [`etcd_server`] starts a throwaway etcd for tests and benchmarks.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use super::{Event, EventKind, KeyValue, Store, StoreError, Txn, WatchStream};

mod batch;
pub use batch::txn_batch_each_alone;

/// How long a case waits for a watch event before it fails.
const WAIT: Duration = Duration::from_secs(10);

/// One conformance case: takes the store under test, panics on failure.
pub type Case = fn(Arc<dyn Store>) -> BoxFuture<'static, ()>;

macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        &[$((stringify!($case), |s| $case(s).boxed())),*]
    };
}

/// Every case [`run_all`] runs, by name, in order. [`close_ends_everything`] is not here: it
/// closes the store.
pub const CASES: &[(&str, Case)] = cases![
    get_missing_and_present,
    revision_bumps_by_one,
    create_mod_and_version,
    range_by_prefix,
    txn_compare,
    create_only_txn,
    delete_then_recreate,
    multi_op_txn_is_atomic,
    txn_touching_a_key_twice_is_refused,
    watch_from_zero_sees_only_new,
    watch_replays_then_follows,
    watch_ignores_other_prefixes,
    compaction,
    concurrent_txns_one_wins,
    txn_batch_each_alone,
];

/// Runs every case in [`CASES`] one after another; panics naming the first case that fails.
pub async fn run_all(store: Arc<dyn Store>) {
    for (name, case) in CASES {
        if let Err(panic) = AssertUnwindSafe(case(store.clone())).catch_unwind().await {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("store conformance case `{name}` failed: {why}");
        }
    }
}

/// A key prefix that no other case, run or process uses (ends with `/`).
pub fn unique_prefix(case: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("/conformance/{}-{nanos}-{n}/{case}/", std::process::id())
}

/// A watch read one event at a time, failing the case if nothing arrives within [`WAIT`].
pub struct Watcher {
    stream: WatchStream,
    pending: VecDeque<Event>,
}

impl Watcher {
    /// Opens a watch on `prefix` from `from_revision`.
    pub async fn open(store: &dyn Store, prefix: &str, from_revision: i64) -> Self {
        let stream = store
            .watch(prefix, from_revision)
            .await
            .unwrap_or_else(|e| panic!("watch {prefix} from {from_revision}: {e}"));
        Self {
            stream,
            pending: VecDeque::new(),
        }
    }

    /// The next batch as the store delivered it.
    pub async fn next_batch(&mut self) -> Vec<Event> {
        assert!(self.pending.is_empty(), "next_batch after a partial batch");
        match tokio::time::timeout(WAIT, self.stream.next()).await {
            Ok(Some(Ok(batch))) => {
                assert!(!batch.is_empty(), "watch delivered an empty batch");
                batch
            }
            Ok(Some(Err(e))) => panic!("watch failed: {e}"),
            Ok(None) => panic!("watch ended"),
            Err(_) => panic!("no watch event within {WAIT:?}"),
        }
    }

    /// The next event.
    pub async fn next_event(&mut self) -> Event {
        if self.pending.is_empty() {
            let batch = self.next_batch().await;
            self.pending.extend(batch);
        }
        self.pending.pop_front().unwrap_or_else(|| unreachable!())
    }

    /// The next `n` events.
    pub async fn take(&mut self, n: usize) -> Vec<Event> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next_event().await);
        }
        out
    }
}

fn put_event(key: &str, value: &[u8], create: i64, modified: i64, version: i64) -> Event {
    Event {
        kind: EventKind::Put,
        kv: KeyValue {
            key: key.to_string(),
            value: value.to_vec(),
            create_revision: create,
            mod_revision: modified,
            version,
        },
    }
}

fn delete_event(key: &str, revision: i64) -> Event {
    Event {
        kind: EventKind::Delete,
        kv: KeyValue {
            key: key.to_string(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: revision,
            version: 0,
        },
    }
}

async fn put(store: &dyn Store, key: &str, value: &[u8]) -> i64 {
    store
        .put(key, value.to_vec())
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"))
}

async fn get(store: &dyn Store, key: &str) -> Option<KeyValue> {
    store
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"))
}

async fn revision(store: &dyn Store) -> i64 {
    store
        .revision()
        .await
        .unwrap_or_else(|e| panic!("revision: {e}"))
}

async fn txn(store: &dyn Store, t: Txn) -> super::TxnResult {
    store.txn(t).await.unwrap_or_else(|e| panic!("txn: {e}"))
}

/// A missing key reads as `None`; a written one with its value and revisions.
pub async fn get_missing_and_present(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let p = unique_prefix("get");
    let key = format!("{p}key");
    assert_eq!(get(s, &format!("{p}missing")).await, None);
    let rev = put(s, &key, b"v1").await;
    let want = KeyValue {
        key: key.clone(),
        value: b"v1".to_vec(),
        create_revision: rev,
        mod_revision: rev,
        version: 1,
    };
    assert_eq!(get(s, &key).await, Some(want));
}

/// Each transaction that changes something bumps the revision by exactly one; one that fails or
/// changes nothing leaves it alone.
pub async fn revision_bumps_by_one(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let p = unique_prefix("revision");
    let (a, b) = (format!("{p}a"), format!("{p}b"));
    let r0 = revision(s).await;
    assert_eq!(put(s, &a, b"1").await, r0 + 1, "a put bumps by one");
    assert_eq!(revision(s).await, r0 + 1);
    let two = txn(s, Txn::new().put(&a, "2").put(&b, "2")).await;
    assert!(two.succeeded);
    assert_eq!(two.revision, r0 + 2, "a txn of two puts bumps by one");
    let failed = txn(s, Txn::new().when_mod_revision(&a, r0 + 1).put(&a, "3")).await;
    assert!(!failed.succeeded);
    assert_eq!(failed.revision, r0 + 2, "a failed txn does not bump");
    let absent = s.delete(&format!("{p}absent")).await.expect("delete");
    assert_eq!(absent, r0 + 2, "deleting an absent key does not bump");
    let empty = txn(s, Txn::new()).await;
    assert!(empty.succeeded);
    assert_eq!(empty.revision, r0 + 2, "an empty txn does not bump");
    assert_eq!(s.delete(&a).await.expect("delete"), r0 + 3);
    assert_eq!(revision(s).await, r0 + 3);
}

/// create_revision stays, mod_revision and version move with each write to the key only.
pub async fn create_mod_and_version(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let p = unique_prefix("versions");
    let (key, other) = (format!("{p}key"), format!("{p}other"));
    let r1 = put(s, &key, b"1").await;
    let r2 = put(s, &key, b"2").await;
    put(s, &other, b"x").await;
    let r3 = put(s, &key, b"3").await;
    let kv = get(s, &key).await.expect("present");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version, kv.value),
        (r1, r3, 3, b"3".to_vec())
    );
    assert!(r1 < r2 && r2 < r3);
}

/// A range returns exactly the keys under the prefix, sorted, and the revision it read at.
pub async fn range_by_prefix(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let p = unique_prefix("range");
    let mut last = 0;
    for k in ["a/2", "ab/1", "a/3", "a", "b/1", "a/1"] {
        last = put(s, &format!("{p}{k}"), k.as_bytes()).await;
    }
    let keys = |r: &super::RangeResult| -> Vec<String> {
        r.kvs
            .iter()
            .map(|kv| kv.key[p.len()..].to_string())
            .collect()
    };
    let under_a = s.range(&format!("{p}a/")).await.expect("range");
    assert_eq!(keys(&under_a), ["a/1", "a/2", "a/3"]);
    assert!(under_a.revision >= last);
    assert_eq!(under_a.kvs[0].value, b"a/1");
    let under_ab = s.range(&format!("{p}ab/")).await.expect("range");
    assert_eq!(keys(&under_ab), ["ab/1"]);
    let all = s.range(&p).await.expect("range");
    assert_eq!(keys(&all), ["a", "a/1", "a/2", "a/3", "ab/1", "b/1"]);
    let none = s.range(&format!("{p}none/")).await.expect("range");
    assert!(none.kvs.is_empty());
    assert!(none.revision >= last);
}

/// A txn applies when its compare holds; when it does not, nothing changes.
pub async fn txn_compare(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let p = unique_prefix("compare");
    let (key, other) = (format!("{p}key"), format!("{p}other"));
    let r1 = put(s, &key, b"1").await;
    let ok = txn(s, Txn::new().when_mod_revision(&key, r1).put(&key, "2")).await;
    assert!(ok.succeeded);
    assert_eq!(ok.revision, r1 + 1);
    let stale = Txn::new()
        .when_mod_revision(&key, r1)
        .put(&key, "3")
        .put(&other, "x");
    let failed = txn(s, stale).await;
    assert!(!failed.succeeded);
    assert_eq!(failed.revision, r1 + 1);
    assert_eq!(get(s, &key).await.map(|kv| kv.value), Some(b"2".to_vec()));
    assert_eq!(get(s, &other).await, None);
    assert_eq!(revision(s).await, r1 + 1);
}

/// Comparing mod revision 0 means "only if absent".
pub async fn create_only_txn(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let p = unique_prefix("create-only");
    let key = format!("{p}key");
    let first = txn(s, Txn::new().when_mod_revision(&key, 0).put(&key, "first")).await;
    assert!(first.succeeded);
    let second = txn(s, Txn::new().when_mod_revision(&key, 0).put(&key, "second")).await;
    assert!(!second.succeeded);
    assert_eq!(second.revision, first.revision);
    let kv = get(s, &key).await.expect("present");
    assert_eq!(kv.value, b"first");
    assert_eq!(kv.create_revision, first.revision);
}

/// After a delete the key is absent, and writing it again starts a new life.
pub async fn delete_then_recreate(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let p = unique_prefix("recreate");
    let key = format!("{p}key");
    put(s, &key, b"1").await;
    put(s, &key, b"2").await;
    s.delete(&key).await.expect("delete");
    assert_eq!(get(s, &key).await, None);
    let again = txn(s, Txn::new().when_mod_revision(&key, 0).put(&key, "3")).await;
    assert!(again.succeeded, "an absent key compares as mod revision 0");
    let kv = get(s, &key).await.expect("present");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (again.revision, again.revision, 1)
    );
}

/// Every op of a txn lands at one revision, and a watch sees them together, in op order.
pub async fn multi_op_txn_is_atomic(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let p = unique_prefix("atomic");
    let (a, b, c) = (format!("{p}a"), format!("{p}b"), format!("{p}c"));
    put(s, &c, b"old").await;
    let mut watch = Watcher::open(s, &p, 0).await;
    let t = txn(s, Txn::new().put(&b, "B").put(&a, "A").delete(&c)).await;
    assert!(t.succeeded);
    let r = t.revision;
    assert_eq!(get(s, &a).await.map(|kv| kv.mod_revision), Some(r));
    assert_eq!(get(s, &b).await.map(|kv| kv.mod_revision), Some(r));
    assert_eq!(get(s, &c).await, None);
    assert_eq!(
        watch.next_batch().await,
        vec![
            put_event(&b, b"B", r, r, 1),
            put_event(&a, b"A", r, r, 1),
            delete_event(&c, r),
        ],
        "one batch holding the whole txn"
    );
}

/// A txn that writes one key twice is refused (as etcd does) and changes nothing.
pub async fn txn_touching_a_key_twice_is_refused(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let p = unique_prefix("twice");
    let key = format!("{p}key");
    let before = revision(s).await;
    assert!(s
        .txn(Txn::new().put(&key, "1").put(&key, "2"))
        .await
        .is_err());
    assert!(s.txn(Txn::new().put(&key, "1").delete(&key)).await.is_err());
    assert_eq!(get(s, &key).await, None);
    assert_eq!(revision(s).await, before);
}

/// A watch from revision 0 starts after the call: earlier writes are not replayed.
pub async fn watch_from_zero_sees_only_new(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let p = unique_prefix("watch-zero");
    let (old, new) = (format!("{p}old"), format!("{p}new"));
    put(s, &old, b"x").await;
    let mut watch = Watcher::open(s, &p, 0).await;
    let r = put(s, &new, b"y").await;
    assert_eq!(watch.next_event().await, put_event(&new, b"y", r, r, 1));
}

/// A watch from an old revision replays history once, in order, then follows live writes.
pub async fn watch_replays_then_follows(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let p = unique_prefix("watch-replay");
    let w = format!("{p}w/");
    let (a, b, c, other) = (
        format!("{w}a"),
        format!("{w}b"),
        format!("{w}c"),
        format!("{p}wx/a"),
    );
    let r1 = put(s, &a, b"1").await;
    let r2 = put(s, &b, b"2").await;
    put(s, &other, b"ignored").await;
    let r3 = put(s, &a, b"3").await;
    let r4 = s.delete(&a).await.expect("delete");
    let mut watch = Watcher::open(s, &w, r1).await;
    let replayed = watch.take(4).await;
    assert_eq!(
        replayed,
        vec![
            put_event(&a, b"1", r1, r1, 1),
            put_event(&b, b"2", r2, r2, 1),
            put_event(&a, b"3", r1, r3, 2),
            delete_event(&a, r4),
        ]
    );
    // The next live write must come next: a duplicate of the replay would show up first.
    let r5 = put(s, &c, b"5").await;
    assert_eq!(watch.next_event().await, put_event(&c, b"5", r5, r5, 1));
    let r6 = put(s, &b, b"6").await;
    assert_eq!(watch.next_event().await, put_event(&b, b"6", r2, r6, 2));
}

/// A watch on `/a/` sees nothing of `/ab/` or `/b/`.
pub async fn watch_ignores_other_prefixes(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let p = unique_prefix("watch-prefix");
    let mut watch = Watcher::open(s, &format!("{p}a/"), 0).await;
    put(s, &format!("{p}ab/x"), b"no").await;
    put(s, &format!("{p}b/y"), b"no").await;
    put(s, &format!("{p}a"), b"no").await;
    let key = format!("{p}a/z");
    let r = put(s, &key, b"yes").await;
    assert_eq!(watch.next_event().await, put_event(&key, b"yes", r, r, 1));
}

/// After compaction at `r`, a watch from before `r` fails with `Compacted`, one from `r` works;
/// compacting again or older is harmless and compacting the future is refused.
pub async fn compaction(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let p = unique_prefix("compaction");
    let (k1, k2, k3) = (format!("{p}k1"), format!("{p}k2"), format!("{p}k3"));
    let r1 = put(s, &k1, b"1").await;
    put(s, &k2, b"2").await;
    let r3 = put(s, &k3, b"3").await;
    s.compact(r3).await.expect("compact");
    s.compact(r3)
        .await
        .expect("compacting the same revision again");
    s.compact(r1).await.expect("compacting an older revision");
    let (requested, compacted) = expect_compacted(s, &p, r1).await;
    assert_eq!(requested, r1);
    assert!(compacted >= r3, "compacted {compacted} < {r3}");
    let mut watch = Watcher::open(s, &p, r3).await;
    assert_eq!(watch.next_event().await, put_event(&k3, b"3", r3, r3, 1));
    let future = revision(s).await + 1_000_000;
    assert!(s.compact(future).await.is_err(), "compacting the future");
    // The data itself survives compaction.
    assert_eq!(get(s, &k1).await.map(|kv| kv.value), Some(b"1".to_vec()));
}

/// Waits for a watch from `from` to report `Compacted`, from the call or as its first item.
pub async fn expect_compacted(store: &dyn Store, prefix: &str, from: i64) -> (i64, i64) {
    match store.watch(prefix, from).await {
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => (requested, compacted),
        Err(e) => panic!("watch from compacted revision {from}: {e}"),
        Ok(mut stream) => match tokio::time::timeout(WAIT, stream.next()).await {
            Ok(Some(Err(StoreError::Compacted {
                requested,
                compacted,
            }))) => (requested, compacted),
            other => panic!("watch from compacted revision {from} gave {other:?}"),
        },
    }
}

/// Of several txns racing on the same compare, exactly one wins.
pub async fn concurrent_txns_one_wins(store: Arc<dyn Store>) {
    let p = unique_prefix("race");
    let key = format!("{p}key");
    let r = put(store.as_ref(), &key, b"start").await;
    for (guard, name) in [(r, "update"), (0, "create")] {
        let target = if guard == 0 {
            format!("{p}new")
        } else {
            key.clone()
        };
        let racers = (0..8).map(|i| {
            let (store, target) = (store.clone(), target.clone());
            tokio::spawn(async move {
                let t = Txn::new()
                    .when_mod_revision(&target, guard)
                    .put(&target, format!("racer {i}"));
                (i, store.txn(t).await)
            })
        });
        let mut winners = Vec::new();
        for racer in futures::future::join_all(racers).await {
            let (i, result) = racer.expect("racer task");
            let result = result.unwrap_or_else(|e| panic!("racer {i}: {e}"));
            if result.succeeded {
                winners.push((i, result.revision));
            }
        }
        assert_eq!(winners.len(), 1, "{name} race: winners {winners:?}");
        let (i, rev) = winners[0];
        let kv = get(store.as_ref(), &target).await.expect("present");
        assert_eq!(kv.value, format!("racer {i}").into_bytes());
        assert_eq!(kv.mod_revision, rev);
    }
}

/// Closing ends open watches and makes every later call fail with `Closed`. Closes the store.
pub async fn close_ends_everything(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let p = unique_prefix("close");
    put(s, &format!("{p}a"), b"1").await;
    let mut watch = s.watch(&p, 0).await.expect("watch");
    s.close().await.expect("close");
    match tokio::time::timeout(WAIT, watch.next()).await {
        Ok(None) => {}
        other => panic!("watch after close gave {other:?}"),
    }
    let closed = |r: Result<(), StoreError>, what: &str| match r {
        Err(StoreError::Closed) => {}
        other => panic!("{what} after close gave {other:?}"),
    };
    closed(s.get(&p).await.map(drop), "get");
    closed(s.range(&p).await.map(drop), "range");
    closed(s.put(&p, b"x".to_vec()).await.map(drop), "put");
    closed(s.watch(&p, 0).await.map(drop), "watch");
    closed(s.revision().await.map(drop), "revision");
    closed(s.compact(1).await, "compact");
    s.close().await.expect("closing twice");
}

pub mod etcd_server;

/// Label-churning writes (what self-reported labels did to the store) with the scheduled
/// compaction's step every 1,000 of them: old history is gone, recent history replays, and the
/// live keys are intact. Returns the prefix used. Not in [`run_all`]: it writes 10,000 times.
pub async fn churn_with_compaction(store: Arc<dyn Store>, writes: usize) -> String {
    const WRITERS: usize = 8;
    const KEEP: i64 = 1_000;
    let p = unique_prefix("churn");
    let start = revision(store.as_ref()).await;
    let mut done = 0;
    for round in 0..writes.div_ceil(1_000) {
        let batch = (writes - round * 1_000).min(1_000);
        let tasks = (0..WRITERS).map(|w| {
            let (store, p) = (store.clone(), p.clone());
            tokio::spawn(async move {
                for i in (w..batch).step_by(WRITERS) {
                    let labels: String = (0..8)
                        .map(|l| format!("\"l{l}\":\"{round}-{i}-{l}\","))
                        .collect();
                    let value = format!(
                        "{{\"labels\":{{{labels}\"board\":\"b{w}\"}},\"pad\":\"{}\"}}",
                        "x".repeat(200)
                    );
                    store
                        .put(&format!("{p}node-{w}"), value.into_bytes())
                        .await
                        .expect("put");
                }
            })
        });
        for t in futures::future::join_all(tasks).await {
            t.expect("writer");
        }
        if let Some(r) = crate::store::compactor::compact_once(store.as_ref(), KEEP, done)
            .await
            .expect("compact")
        {
            done = r;
        }
    }
    let head = revision(store.as_ref()).await;
    assert!(
        head - start >= writes as i64,
        "every write bumped the revision"
    );
    assert!(
        done >= head - KEEP - 1_000,
        "compacted up to {done} of {head}"
    );
    let (requested, compacted) = expect_compacted(store.as_ref(), &p, start + 1).await;
    assert_eq!((requested, compacted >= done), (start + 1, true));
    // The kept window still replays.
    let mut watch = Watcher::open(store.as_ref(), &p, head).await;
    assert_eq!(watch.next_event().await.kv.mod_revision, head);
    assert_eq!(
        store.range(&p).await.expect("range").kvs.len(),
        WRITERS,
        "one live key per writer"
    );
    p
}
