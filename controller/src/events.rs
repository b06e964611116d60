//! Events: one record per controller decision, kept in a bounded in-memory ring, followed live
//! by `texu events --watch`, and saved to the store at most every [`FLUSH_INTERVAL`], every
//! pending event in one batch of transactions (one commit in the embedded store), so a
//! controller on an SD card writes little even when a board fails or a burst follows a start.
//!
//! Recording never waits for I/O and never fails: a store that is down only delays the saving.
//! After a restart the saved events come back into the ring and the sequence continues.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use texu_api::{Event, EventKind};
use tokio::sync::{broadcast, watch};

use crate::clock;
use crate::metrics::KindLabels;
use crate::store::{Op, Store, StoreError, Txn};

/// Events kept in memory; the oldest go first.
pub const RING_CAPACITY: usize = 1000;
/// Events kept in the store; older ones are deleted as new ones are saved.
pub const STORED_MAX: usize = 1000;
/// Longest time an event waits in memory before it is saved (one write per interval at most).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(10);
/// Where events are saved: one key per event, `EVENT_PREFIX` + the seq in 20 digits.
pub const EVENT_PREFIX: &str = "/texu/v1/events/";
/// Puts and deletes in one transaction of a flush: etcd refuses transactions of more than 128
/// operations by default (`--max-txn-ops`). A flush sends as many as its events need, in one
/// batch.
const MAX_OPS_PER_TXN: usize = 128;
/// Events a live follower may fall behind before it has to catch up from the ring.
const LIVE_BUFFER: usize = 256;
/// Flushes at shutdown: one saves everything, the others retry what a partly failed batch left.
const FINAL_FLUSHES: usize = 3;

/// The store key of the event with sequence number `seq`.
pub fn event_key(seq: u64) -> String {
    format!("{EVENT_PREFIX}{seq:020}")
}

/// The controller's event log: cheap to clone, shared by every part that decides something.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

struct Inner {
    ring: Mutex<Ring>,
    live: broadcast::Sender<Event>,
    counts: Family<KindLabels, Counter>,
    /// One flush at a time, so two never write the same events.
    flushing: tokio::sync::Mutex<()>,
}

struct Ring {
    events: VecDeque<Event>,
    /// The seq of the newest event recorded (0: none yet).
    last_seq: u64,
    /// Every event up to this seq is saved, or was dropped from the ring before its turn.
    flushed_seq: u64,
    /// Seqs of the events in the store, oldest first.
    stored: VecDeque<u64>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    /// An empty event log; [`Events::load`] brings back what an earlier run saved.
    pub fn new() -> Self {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        Events {
            inner: Arc::new(Inner {
                ring: Mutex::new(Ring {
                    events: VecDeque::with_capacity(RING_CAPACITY),
                    last_seq: 0,
                    flushed_seq: 0,
                    stored: VecDeque::new(),
                }),
                live,
                counts: Family::default(),
                flushing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Records one decision: logs it, keeps it in the ring and tells live followers. Never
    /// blocks on I/O and never fails.
    pub fn record(
        &self,
        kind: EventKind,
        object: impl Into<String>,
        node: Option<&str>,
        message: impl Into<String>,
    ) {
        let (object, message) = (object.into(), message.into());
        tracing::info!(kind = kind.as_str(), %object, node = node.unwrap_or("-"), "{message}");
        self.inner
            .counts
            .get_or_create(&KindLabels {
                kind: kind.as_str().to_string(),
            })
            .inc();
        let mut ring = self.lock();
        ring.last_seq += 1;
        let event = Event {
            seq: ring.last_seq,
            time: clock::now_rfc3339(),
            kind,
            object,
            node: node.map(str::to_string),
            message,
        };
        if ring.events.len() >= RING_CAPACITY {
            ring.events.pop_front();
        }
        ring.events.push_back(event.clone());
        // Sent under the lock so followers see events in seq order; no follower is fine.
        let _ = self.inner.live.send(event);
    }

    /// The events in the ring with a seq above `after_seq`, oldest first.
    pub fn list(&self, after_seq: u64) -> Vec<Event> {
        self.read(after_seq).0
    }

    /// Like [`Events::list`], with the seq of the newest event recorded so far, read together:
    /// a follower that resumes after that seq misses nothing.
    pub fn read(&self, after_seq: u64) -> (Vec<Event>, u64) {
        let ring = self.lock();
        let start = ring.events.partition_point(|e| e.seq <= after_seq);
        (ring.events.range(start..).cloned().collect(), ring.last_seq)
    }

    /// Every event recorded from now on. A receiver that falls more than a few hundred events
    /// behind gets `Lagged` and should catch up with [`Events::list`].
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.live.subscribe()
    }

    /// How many events of each kind were recorded, for the metrics.
    pub fn counts(&self) -> Family<KindLabels, Counter> {
        self.inner.counts.clone()
    }

    /// Brings back the events an earlier run saved, so the seq continues after the highest.
    /// Call it before anything records; events recorded earlier are renumbered after the saved.
    pub async fn load(&self, store: &dyn Store) -> Result<usize, StoreError> {
        let range = store.range(EVENT_PREFIX).await?;
        let mut stored = Vec::with_capacity(range.kvs.len());
        let mut loaded = Vec::with_capacity(range.kvs.len());
        for kv in &range.kvs {
            let Some(seq) = kv
                .key
                .strip_prefix(EVENT_PREFIX)
                .and_then(|s| s.parse::<u64>().ok())
            else {
                tracing::warn!(key = %kv.key, "ignoring a stored event with a foreign key");
                continue;
            };
            stored.push(seq);
            match serde_json::from_slice::<Event>(&kv.value) {
                Ok(event) if event.seq == seq => loaded.push(event),
                Ok(_) => {
                    tracing::warn!(key = %kv.key, "ignoring a stored event whose seq differs from its key")
                }
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "ignoring a corrupt stored event")
                }
            }
        }
        stored.sort_unstable();
        loaded.sort_by_key(|e| e.seq);
        let highest = stored.last().copied().unwrap_or(0);
        let count = loaded.len();
        let mut ring = self.lock();
        let mut events: VecDeque<Event> = loaded.into();
        let mut seq = highest;
        // Events already saved are in `loaded` (a new leader reads them again at takeover).
        let flushed = ring.flushed_seq;
        for mut early in ring.events.drain(..).filter(|e| e.seq > flushed) {
            seq += 1;
            early.seq = seq;
            events.push_back(early);
        }
        while events.len() > RING_CAPACITY {
            events.pop_front();
        }
        ring.events = events;
        ring.last_seq = seq;
        ring.flushed_seq = highest;
        ring.stored = stored.into();
        tracing::info!(events = count, next_seq = seq + 1, "events loaded");
        Ok(count)
    }

    /// Saves every event recorded since the last flush, deleting the oldest saved ones beyond
    /// [`STORED_MAX`], in one [`Store::txn_batch`] of transactions of at most
    /// [`MAX_OPS_PER_TXN`] ops each (the embedded store commits it with one sync). Writes
    /// nothing when nothing is new. Returns true when events still wait because a transaction
    /// of the batch failed: those before it count as saved, the rest is sent again by the next
    /// flush (a later one that did succeed is merely written twice: puts and deletes of event
    /// keys are idempotent). `Err` when nothing could be saved; nothing is lost from memory.
    pub async fn flush(&self, store: &dyn Store) -> Result<bool, StoreError> {
        let _one_at_a_time = self.inner.flushing.lock().await;
        let mut chunks = {
            let ring = self.lock();
            let start = ring.events.partition_point(|e| e.seq <= ring.flushed_seq);
            if start == ring.events.len() {
                return Ok(false);
            }
            plan_flush(ring.events.range(start..), &ring.stored)
        };
        // Only the last chunk can be empty (its events did not encode): it needs no write.
        let txns: Vec<Txn> = chunks
            .iter_mut()
            .filter(|c| !c.txn.ops.is_empty())
            .map(|c| std::mem::take(&mut c.txn))
            .collect();
        let sent = txns.len();
        let answers = if sent == 0 {
            Vec::new()
        } else {
            store.txn_batch(txns).await?
        };
        let saved = answers
            .iter()
            .take_while(|a| matches!(a, Ok(r) if r.succeeded))
            .count();
        let all = saved == sent;
        let failed = answers.into_iter().nth(saved);
        {
            let mut ring = self.lock();
            for chunk in chunks
                .into_iter()
                .take(if all { usize::MAX } else { saved })
            {
                ring.flushed_seq = ring.flushed_seq.max(chunk.through_seq);
                let deleted = chunk.deletes.min(ring.stored.len());
                ring.stored.drain(..deleted);
                ring.stored.extend(chunk.saved);
            }
        }
        if all {
            return Ok(false);
        }
        match failed {
            Some(Err(e)) if saved == 0 => Err(e),
            failed => {
                let reason = match failed {
                    Some(Err(e)) => e.to_string(),
                    _ => "the store did not apply it".to_string(),
                };
                tracing::warn!(
                    saved, sent, error = %reason,
                    "saved the events of only the first transactions; the rest waits for the next flush"
                );
                Ok(true)
            }
        }
    }

    /// Flushes every `interval` until `stop` flips to true (or its sender goes), then saves
    /// what is left. Store errors are logged and retried at the next interval.
    pub async fn run_flusher(
        self,
        store: Arc<dyn Store>,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.flush(store.as_ref()).await {
                tracing::warn!(error = %e, "cannot save events; keeping them in memory, retrying in {interval:?}");
            }
        }
        for _ in 0..FINAL_FLUSHES {
            match self.flush(store.as_ref()).await {
                Ok(true) => continue,
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot save the last events at shutdown");
                    return;
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        // The ring is always left consistent, so a panic elsewhere does not make it unusable.
        self.inner
            .ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One transaction of a flush, and what it saved once it succeeded.
#[derive(Default)]
struct Chunk {
    txn: Txn,
    /// Every pending event up to this seq is saved (or skipped) once this chunk is.
    through_seq: u64,
    /// The seqs this chunk puts, oldest first.
    saved: Vec<u64>,
    /// How many of the oldest stored events this chunk deletes.
    deletes: usize,
}

/// Splits the saving of `pending` into transactions of at most [`MAX_OPS_PER_TXN`] ops, in seq
/// order. Each put comes after the deletes that keep the store at [`STORED_MAX`] events, so any
/// prefix of the chunks leaves the store bounded and the ring's account of it exact. Pending
/// events that this very flush would delete again are not written at all.
fn plan_flush<'a>(
    pending: impl ExactSizeIterator<Item = &'a Event>,
    stored: &VecDeque<u64>,
) -> Vec<Chunk> {
    let skip = pending.len().saturating_sub(STORED_MAX);
    let mut chunks = Vec::new();
    let mut chunk = Chunk::default();
    let mut in_store = stored.len();
    let mut oldest = stored.iter();
    fn add(chunks: &mut Vec<Chunk>, chunk: &mut Chunk, op: Op) {
        if chunk.txn.ops.len() >= MAX_OPS_PER_TXN {
            chunks.push(std::mem::take(chunk));
        }
        chunk.txn.ops.push(op);
    }
    for event in pending.skip(skip) {
        match serde_json::to_vec(event) {
            Ok(value) => {
                while in_store >= STORED_MAX {
                    let Some(seq) = oldest.next() else { break };
                    add(
                        &mut chunks,
                        &mut chunk,
                        Op::Delete {
                            key: event_key(*seq),
                        },
                    );
                    chunk.deletes += 1;
                    in_store -= 1;
                }
                add(
                    &mut chunks,
                    &mut chunk,
                    Op::Put {
                        key: event_key(event.seq),
                        value,
                    },
                );
                chunk.saved.push(event.seq);
                in_store += 1;
            }
            Err(e) => {
                tracing::warn!(seq = event.seq, error = %e, "cannot encode an event; not saving it")
            }
        }
        chunk.through_seq = event.seq;
    }
    chunks.push(chunk);
    chunks
}

#[cfg(test)]
mod tests;
