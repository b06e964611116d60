//! The single writer thread: group commit of waiting transactions, each at its own revision, acknowledged after one sync.
//!
//! Whatever waits when the writer is free goes into the next commit: many heartbeats' status
//! writes, a scheduling pass's placements (sent as one request by [`Store::txn_batch`]), the
//! detector's verdicts. Each write keeps its own compare-and-swap: a failed compare fails only
//! that write, and writes apply in the order they arrived, so two writes to one key keep theirs.

use super::*;

pub(super) fn run_writer(shared: &Shared, requests: &mpsc::Receiver<Request>) {
    // `recv` fails only once every sender is gone and the queue is empty, so every request that
    // was accepted is answered before the thread ends.
    while let Ok(first) = requests.recv() {
        let mut writes = first.writes.len();
        let mut group = vec![first];
        while writes < MAX_GROUP {
            match requests.try_recv() {
                Ok(r) => {
                    writes += r.writes.len();
                    group.push(r);
                }
                Err(_) => break,
            }
        }
        commit_group(shared, group);
    }
}

pub(super) fn commit_group(shared: &Shared, group: Vec<Request>) {
    let guard = shared.db.read().unwrap_or_else(PoisonError::into_inner);
    let applied = match guard.as_ref() {
        Some(db) => apply_group(db, &group),
        None => Err(Fail::Closed),
    };
    drop(guard);
    if matches!(&applied, Ok((_, _, _, _, _, true))) {
        shared
            .commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    match applied {
        Ok((outcomes, events, revision, compacted, trimmed, _)) => {
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
            let mut outcomes = outcomes.into_iter();
            for request in group {
                let answers = outcomes
                    .by_ref()
                    .take(request.writes.len())
                    .map(|o| o.map_err(Fail::Db))
                    .collect();
                let _ = request.reply.send(answers);
            }
        }
        Err(fail) => {
            let cause = match fail {
                Fail::Db(e) => Some(Arc::new(e)),
                _ => None,
            };
            for request in group {
                let answers = request
                    .writes
                    .iter()
                    .map(|_| match &cause {
                        Some(e) => Err(Fail::Db(EmbeddedError::Group(e.clone()))),
                        None => Err(Fail::Closed),
                    })
                    .collect();
                let _ = request.reply.send(answers);
            }
        }
    }
}

/// Per write its answer (or why it was refused), then the group's events, revision,
/// compacted revision, whether a compaction removed history and whether it was committed.
type Applied = (
    Vec<std::result::Result<TxnResult, EmbeddedError>>,
    Vec<Event>,
    i64,
    i64,
    bool,
    bool,
);

/// Gives pages freed by a compaction back to the file system. Holds the database exclusively
/// (reads wait) for as long as redb needs; a failure only leaves the file larger than needed.
pub(super) fn shrink_file(shared: &Shared) {
    let mut guard = shared.db.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(db) = guard.as_mut() {
        if let Err(e) = db.compact() {
            tracing::warn!(path = %shared.path, error = %e, "cannot shrink the store file");
        }
    }
}

/// Applies a group of requests in one write transaction; commits only if something changed.
pub(super) fn apply_group(db: &Database, group: &[Request]) -> Res<Applied> {
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
        for write in group.iter().flat_map(|r| &r.writes) {
            match write {
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
    Ok((outcomes, events, revision, compacted, trimmed, changed))
}

pub(super) fn stored(kv: &redb::Table<&str, &[u8]>, key: &str) -> Res<Option<KeyValue>> {
    match kv.get(key)? {
        Some(g) => Ok(Some(codec::decode_kv(key, g.value())?)),
        None => Ok(None),
    }
}

/// Applies one transaction; appends its events and bumps `revision` if it changed anything.
pub(super) fn apply_txn(
    kv: &mut redb::Table<&str, &[u8]>,
    txn: &Txn,
    revision: &mut i64,
    events: &mut Vec<Event>,
) -> Res<TxnResult> {
    for crate::store::Compare::ModRevision {
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
pub(super) fn check_distinct_keys(txn: &Txn) -> std::result::Result<(), EmbeddedError> {
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
