//! Compaction on a schedule: the store keeps a window of recent revisions for watches to resume
//! from and forgets older history, so its size follows the live keys, not the number of writes.
//! A watch that asks for a forgotten revision gets [`super::StoreError::Compacted`] and lists
//! again (the API answers 410 Gone).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{Result, Store};

/// How much history the store keeps.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// How often to compact.
    pub every: Duration,
    /// Revisions kept behind the current one; watches may resume from any of them.
    pub keep_revisions: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            every: Duration::from_secs(60),
            keep_revisions: 10_000,
        }
    }
}

/// Compacts to `keep_revisions` behind the current revision when that is past `done`; returns
/// the revision compacted at, if it did.
pub async fn compact_once(
    store: &dyn Store,
    keep_revisions: i64,
    done: i64,
) -> Result<Option<i64>> {
    let target = store.revision().await? - keep_revisions.max(0);
    if target <= done.max(0) {
        return Ok(None);
    }
    store.compact(target).await?;
    Ok(Some(target))
}

/// Compacts every `retention.every` until `stop` flips; a failed compaction is retried at the
/// next tick (the history only grows meanwhile).
pub async fn run(store: Arc<dyn Store>, retention: Retention, mut stop: watch::Receiver<bool>) {
    let every = retention.every.max(Duration::from_millis(10));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut done = 0;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        match compact_once(store.as_ref(), retention.keep_revisions, done).await {
            Ok(Some(revision)) => {
                tracing::debug!(revision, "store history compacted");
                done = revision;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "store compaction failed; retrying later"),
        }
    }
}
