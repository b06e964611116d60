//! Watches: replay history up to the live point, then follow the live channel; a slow watcher falls back to history and loses nothing.

use super::*;

/// One watch: replays history up to `replay_to`, then follows the live channel. Falling behind
/// the channel sends it back to history, so a slow watcher loses nothing.
pub(super) struct Watch {
    pub(super) shared: Arc<Shared>,
    pub(super) prefix: String,
    /// The next revision this watch has to deliver.
    pub(super) next: i64,
    /// History covers every revision up to this one that the live channel will not deliver.
    pub(super) replay_to: i64,
    /// `None` once the store has closed.
    pub(super) rx: Option<broadcast::Receiver<Commit>>,
}

impl Watch {
    pub(super) async fn next_batch(&mut self) -> Option<Result<Vec<Event>>> {
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
