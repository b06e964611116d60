//! Events: one record per controller decision, kept in a bounded in-memory ring, followed live
//! by `texu events --watch`, and saved to the store in one batched transaction at most every
//! [`FLUSH_INTERVAL`], so a controller on an SD card writes little even when a board fails.
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
use crate::store::{Store, StoreError, Txn};

/// Events kept in memory; the oldest go first.
pub const RING_CAPACITY: usize = 1000;
/// Events kept in the store; older ones are deleted as new ones are saved.
pub const STORED_MAX: usize = 1000;
/// Longest time an event waits in memory before it is saved (one write per interval at most).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(10);
/// Where events are saved: one key per event, `EVENT_PREFIX` + the seq in 20 digits.
pub const EVENT_PREFIX: &str = "/texu/v1/events/";
/// Puts and deletes in one flush. etcd refuses transactions of more than 128 operations by
/// default (`--max-txn-ops`), and a small bound keeps each SD-card write small; a larger burst is
/// saved over the next intervals.
const MAX_OPS_PER_FLUSH: usize = 128;
/// Events a live follower may fall behind before it has to catch up from the ring.
const LIVE_BUFFER: usize = 256;
/// Flushes at shutdown, enough to save a full ring in batches of [`MAX_OPS_PER_FLUSH`].
const FINAL_FLUSHES: usize = 2 * RING_CAPACITY / MAX_OPS_PER_FLUSH + 2;

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

    /// Saves the events recorded since the last flush in one transaction, deleting the oldest
    /// saved ones beyond [`STORED_MAX`]. Writes nothing when nothing is new. Returns true when
    /// more events wait (a burst larger than one transaction holds). On an error nothing is
    /// lost from memory and the next flush tries again.
    pub async fn flush(&self, store: &dyn Store) -> Result<bool, StoreError> {
        let _one_at_a_time = self.inner.flushing.lock().await;
        let (txn, saved, deleted, last, more) = {
            let ring = self.lock();
            let start = ring.events.partition_point(|e| e.seq <= ring.flushed_seq);
            let pending = ring.events.len() - start;
            if pending == 0 {
                return Ok(false);
            }
            let excess = |puts: usize| (ring.stored.len() + puts).saturating_sub(STORED_MAX);
            let mut puts = 0;
            while puts < pending && puts + 1 + excess(puts + 1) <= MAX_OPS_PER_FLUSH {
                puts += 1;
            }
            let deletes = excess(puts).min(MAX_OPS_PER_FLUSH - puts);
            let mut txn = Txn::new();
            let mut saved = Vec::with_capacity(puts);
            let mut last = ring.flushed_seq;
            for event in ring.events.range(start..start + puts) {
                last = event.seq;
                match serde_json::to_vec(event) {
                    Ok(value) => {
                        txn = txn.put(event_key(event.seq), value);
                        saved.push(event.seq);
                    }
                    Err(e) => {
                        tracing::warn!(seq = event.seq, error = %e, "cannot encode an event; not saving it")
                    }
                }
            }
            for seq in ring.stored.iter().take(deletes) {
                txn = txn.delete(event_key(*seq));
            }
            (txn, saved, deletes, last, puts < pending)
        };
        if !txn.ops.is_empty() {
            store.txn(txn).await?;
        }
        let mut ring = self.lock();
        ring.flushed_seq = ring.flushed_seq.max(last);
        let deleted = deleted.min(ring.stored.len());
        ring.stored.drain(..deleted);
        ring.stored.extend(saved);
        Ok(more)
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

#[cfg(test)]
mod tests;
