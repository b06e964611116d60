//! Unit tests of the event log, against an in-memory store that counts its writes (the clock is
//! paused, and the store never leaves the runtime, so interval arithmetic is exact).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;

use super::*;
use crate::store::{KeyValue, Op, RangeResult, TxnResult, WatchStream};

/// A map behind a mutex that counts transactions, batches and puts, and can be told to fail.
#[derive(Default)]
struct CountingStore {
    keys: std::sync::Mutex<BTreeMap<String, Vec<u8>>>,
    txns: AtomicUsize,
    batches: AtomicUsize,
    /// Puts of each key, to tell an event saved twice.
    puts: std::sync::Mutex<BTreeMap<String, usize>>,
    revision: AtomicUsize,
    fail: AtomicBool,
    /// Transactions tried so far, and the first (counting from 1) that fails with every later
    /// one; 0: none fails.
    tried: AtomicUsize,
    fail_from: AtomicUsize,
}

impl CountingStore {
    fn txns(&self) -> usize {
        self.txns.load(Ordering::SeqCst)
    }
    fn batches(&self) -> usize {
        self.batches.load(Ordering::SeqCst)
    }
    /// The most times one key was put.
    fn most_puts(&self) -> usize {
        self.puts
            .lock()
            .unwrap()
            .values()
            .copied()
            .max()
            .unwrap_or(0)
    }
    fn seqs(&self) -> Vec<u64> {
        self.keys
            .lock()
            .unwrap()
            .keys()
            .map(|k| k.strip_prefix(EVENT_PREFIX).unwrap().parse().unwrap())
            .collect()
    }
}

#[async_trait]
impl Store for CountingStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.keys.lock().unwrap().get(key).map(|v| kv(key, v)))
    }
    async fn range(&self, prefix: &str) -> Result<RangeResult, StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        let kvs = self
            .keys
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| kv(k, v))
            .collect();
        Ok(RangeResult {
            kvs,
            revision: self.revision.load(Ordering::SeqCst) as i64,
        })
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let tried = self.tried.fetch_add(1, Ordering::SeqCst) + 1;
        let fail_from = self.fail_from.load(Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) || (fail_from > 0 && tried >= fail_from) {
            return Err(StoreError::Closed);
        }
        assert!(txn.ops.len() <= MAX_OPS_PER_TXN, "{} ops", txn.ops.len());
        self.txns.fetch_add(1, Ordering::SeqCst);
        let mut keys = self.keys.lock().unwrap();
        for op in txn.ops {
            match op {
                Op::Put { key, value } => {
                    *self.puts.lock().unwrap().entry(key.clone()).or_default() += 1;
                    keys.insert(key, value);
                }
                Op::Delete { key } => {
                    keys.remove(&key);
                }
            }
        }
        let revision = self.revision.fetch_add(1, Ordering::SeqCst) as i64 + 1;
        Ok(TxnResult {
            succeeded: true,
            revision,
        })
    }
    async fn txn_batch(
        &self,
        txns: Vec<Txn>,
    ) -> Result<Vec<Result<TxnResult, StoreError>>, StoreError> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        let mut answers = Vec::with_capacity(txns.len());
        for txn in txns {
            answers.push(self.txn(txn).await);
        }
        Ok(answers)
    }
    async fn watch(&self, _prefix: &str, _from: i64) -> Result<WatchStream, StoreError> {
        Err(StoreError::Closed)
    }
    async fn compact(&self, _revision: i64) -> Result<(), StoreError> {
        Ok(())
    }
    async fn revision(&self) -> Result<i64, StoreError> {
        Ok(self.revision.load(Ordering::SeqCst) as i64)
    }
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

fn kv(key: &str, value: &[u8]) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: value.to_vec(),
        create_revision: 1,
        mod_revision: 1,
        version: 1,
    }
}

fn record_n(events: &Events, n: usize) {
    for i in 0..n {
        events.record(
            EventKind::Placed,
            format!("container/app-{i}"),
            Some("board1"),
            format!("app-{i} on board1"),
        );
    }
}

/// One flush saves every pending event.
async fn flush_all(events: &Events, store: &CountingStore) {
    assert!(
        !events.flush(store).await.unwrap(),
        "events left after a flush"
    );
}

#[test]
fn the_ring_stays_bounded_and_the_seq_continues() {
    let events = Events::new();
    record_n(&events, 2500);
    let all = events.list(0);
    assert_eq!(all.len(), RING_CAPACITY);
    assert_eq!((all[0].seq, all[999].seq), (1501, 2500));
    assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert_eq!(events.list(2400).len(), 100);
    assert_eq!(events.list(2500).len(), 0);
    let (tail, last) = events.read(2498);
    assert_eq!((tail.len(), last), (2, 2500));
    assert_eq!(tail[0].object, "container/app-2498");
    assert_eq!(tail[0].node.as_deref(), Some("board1"));
    assert!(tail[0].time.ends_with('Z'), "{}", tail[0].time);
}

#[tokio::test]
async fn subscribers_see_new_events_in_order() {
    let events = Events::new();
    record_n(&events, 1);
    let mut rx = events.subscribe();
    record_n(&events, 3);
    for seq in 2..=4 {
        assert_eq!(rx.recv().await.unwrap().seq, seq);
    }
}

#[tokio::test(start_paused = true)]
async fn the_flusher_writes_once_per_interval_and_never_when_idle() {
    let store = Arc::new(CountingStore::default());
    let events = Events::new();
    let (stop, stopped) = watch::channel(false);
    let flusher = tokio::spawn(events.clone().run_flusher(
        store.clone(),
        Duration::from_secs(10),
        stopped,
    ));
    // 5 events a second for 29 s: 145 events, one transaction per 10 s interval.
    for _ in 0..145 {
        record_n(&events, 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // t = 31 s: ticks at 10, 20, 30 s
    assert_eq!(store.txns(), 3);
    assert_eq!(store.seqs().len(), 145);
    // An idle minute writes nothing.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(store.txns(), 3);
    // Shutdown saves what came since the last interval, at once.
    record_n(&events, 2);
    stop.send(true).unwrap();
    flusher.await.unwrap();
    assert_eq!(store.txns(), 4);
    assert_eq!(store.seqs().len(), 147);
}

#[tokio::test]
async fn stored_events_stay_bounded_and_keep_the_newest() {
    let store = CountingStore::default();
    let events = Events::new();
    record_n(&events, 1000);
    flush_all(&events, &store).await;
    assert_eq!(store.seqs().len(), STORED_MAX);
    record_n(&events, 1500);
    flush_all(&events, &store).await;
    let seqs = store.seqs();
    assert_eq!(seqs.len(), STORED_MAX);
    assert_eq!((seqs[0], seqs[999]), (1501, 2500));
    // Nothing new: no write.
    let before = store.txns();
    assert!(!events.flush(&store).await.unwrap());
    assert_eq!(store.txns(), before);
}

#[tokio::test]
async fn a_restart_loads_the_saved_events_and_continues_the_seq() {
    let store = CountingStore::default();
    let first = Events::new();
    record_n(&first, 1200);
    flush_all(&first, &store).await;

    let second = Events::new();
    assert_eq!(second.load(&store).await.unwrap(), STORED_MAX);
    let loaded = second.list(0);
    assert_eq!(loaded.len(), RING_CAPACITY);
    assert_eq!(loaded.last().unwrap().seq, 1200);
    assert_eq!(loaded, first.list(200));
    second.record(
        EventKind::NodeNotReady,
        "node/board1",
        Some("board1"),
        "no heartbeat for 2s",
    );
    assert_eq!(second.list(1200)[0].seq, 1201);
    flush_all(&second, &store).await;
    let seqs = store.seqs();
    assert_eq!((seqs.len(), seqs[0], seqs[999]), (STORED_MAX, 202, 1201));
}

#[tokio::test]
async fn events_recorded_before_the_load_follow_the_saved_ones() {
    let store = CountingStore::default();
    let first = Events::new();
    record_n(&first, 3);
    flush_all(&first, &store).await;
    let second = Events::new();
    record_n(&second, 1);
    second.load(&store).await.unwrap();
    let seqs: Vec<u64> = second.list(0).iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
}

#[tokio::test]
async fn store_errors_keep_the_events_for_the_next_flush() {
    let store = CountingStore::default();
    let events = Events::new();
    record_n(&events, 10);
    store.fail.store(true, Ordering::SeqCst);
    assert!(events.flush(&store).await.is_err());
    assert_eq!(events.list(0).len(), 10);
    store.fail.store(false, Ordering::SeqCst);
    assert!(!events.flush(&store).await.unwrap());
    assert_eq!(store.seqs(), (1..=10).collect::<Vec<u64>>());
    assert_eq!(store.txns(), 1);
}

#[tokio::test]
async fn a_burst_is_saved_in_one_batch_of_bounded_transactions() {
    let store = CountingStore::default();
    let events = Events::new();
    // The startup backlog: a full ring at once.
    record_n(&events, RING_CAPACITY);
    flush_all(&events, &store).await;
    assert_eq!((store.batches(), store.txns()), (1, 8)); // 1000 puts, 128 per transaction
    assert_eq!(store.seqs(), (1..=1000).collect::<Vec<u64>>());
    // A second burst also deletes as many of the oldest: 600 ops, still one batch.
    record_n(&events, 300);
    flush_all(&events, &store).await;
    assert_eq!((store.batches(), store.txns()), (2, 13));
    assert_eq!(store.seqs(), (301..=1300).collect::<Vec<u64>>());
    assert_eq!(store.most_puts(), 1);
}

#[tokio::test]
async fn a_batch_that_fails_part_way_keeps_what_it_saved_and_saves_the_rest_next() {
    let store = CountingStore::default();
    let events = Events::new();
    record_n(&events, 1000);
    flush_all(&events, &store).await;
    // 500 puts and 500 deletes: 8 transactions, and the 4th with all after it fails.
    record_n(&events, 500);
    let tried = store.tried.load(Ordering::SeqCst);
    store.fail_from.store(tried + 4, Ordering::SeqCst);
    assert!(
        events.flush(&store).await.unwrap(),
        "a partial save reports events left"
    );
    // The first 3 transactions: 192 deletes, each followed by one put.
    assert_eq!(store.seqs(), (193..=1192).collect::<Vec<u64>>());
    assert_eq!(events.list(0).len(), RING_CAPACITY);
    store.fail_from.store(0, Ordering::SeqCst);
    flush_all(&events, &store).await;
    assert_eq!(store.batches(), 3);
    assert_eq!(store.seqs(), (501..=1500).collect::<Vec<u64>>());
    assert_eq!(store.most_puts(), 1, "an event was saved twice");
    // The ring's account of the store is exact: the next flush deletes the right ones.
    record_n(&events, 1);
    flush_all(&events, &store).await;
    assert_eq!(store.seqs(), (502..=1501).collect::<Vec<u64>>());
}

#[tokio::test]
async fn a_batch_whose_first_transaction_fails_saves_nothing_and_errs() {
    let store = CountingStore::default();
    let events = Events::new();
    record_n(&events, 300);
    store.fail_from.store(1, Ordering::SeqCst);
    assert!(events.flush(&store).await.is_err());
    assert!(store.seqs().is_empty());
    store.fail_from.store(0, Ordering::SeqCst);
    flush_all(&events, &store).await;
    assert_eq!(store.seqs(), (1..=300).collect::<Vec<u64>>());
}

#[test]
fn keys_sort_by_seq() {
    assert_eq!(event_key(42), "/texu/v1/events/00000000000000000042");
    assert!(event_key(9) < event_key(10));
    assert_eq!(event_key(u64::MAX).len(), EVENT_PREFIX.len() + 20);
}
