//! Conformance of [`Store::txn_batch`]: each transaction of a batch succeeds or fails alone, in
//! order, at its own revision.

use std::sync::Arc;

use super::{get, put, revision, unique_prefix, Watcher};
use crate::store::{Store, Txn};

/// A batch answers each transaction in order: a stale compare fails alone (a second write to
/// a key sees the first), a transaction touching a key twice is refused alone, and every
/// other one lands at its own revision.
pub async fn txn_batch_each_alone(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let p = unique_prefix("batch");
    let (a, b, c) = (format!("{p}a"), format!("{p}b"), format!("{p}c"));
    let r1 = put(s, &a, b"1").await;
    let batch = vec![
        Txn::new().when_mod_revision(&a, r1).put(&a, "2"),
        // Sees the write before it: `a` is no longer at r1.
        Txn::new().when_mod_revision(&a, r1).put(&a, "3"),
        Txn::new().when_mod_revision(&b, 0).put(&b, "new"),
        Txn::new().put(&c, "twice").put(&c, "again"),
        Txn::new().put(&c, "1"),
    ];
    let answers = s
        .txn_batch(batch)
        .await
        .unwrap_or_else(|e| panic!("txn_batch: {e}"));
    assert_eq!(answers.len(), 5, "one answer per transaction");
    let ok = |i: usize| match &answers[i] {
        Ok(r) => r.clone(),
        Err(e) => panic!("transaction {i} of the batch: {e}"),
    };
    assert!(ok(0).succeeded, "{answers:?}");
    assert!(!ok(1).succeeded, "a stale compare fails: {answers:?}");
    assert!(ok(2).succeeded, "{answers:?}");
    assert!(
        answers[3].is_err(),
        "a key touched twice is refused: {answers:?}"
    );
    assert!(ok(4).succeeded, "{answers:?}");
    let mut landed = vec![ok(0).revision, ok(2).revision, ok(4).revision];
    landed.sort_unstable();
    assert_eq!(landed, vec![r1 + 1, r1 + 2, r1 + 3], "{answers:?}");
    assert_eq!(revision(s).await, r1 + 3);
    assert_eq!(get(s, &a).await.map(|kv| kv.value), Some(b"2".to_vec()));
    assert_eq!(get(s, &b).await.map(|kv| kv.value), Some(b"new".to_vec()));
    assert_eq!(get(s, &c).await.map(|kv| kv.value), Some(b"1".to_vec()));
    let mut watch = Watcher::open(s, &p, r1 + 1).await;
    let seen = watch.take(3).await;
    let mut keys: Vec<&str> = seen.iter().map(|e| e.kv.key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, [a.as_str(), b.as_str(), c.as_str()]);
    // An empty batch is no write.
    assert!(s.txn_batch(Vec::new()).await.expect("empty").is_empty());
    assert_eq!(revision(s).await, r1 + 3);
}
