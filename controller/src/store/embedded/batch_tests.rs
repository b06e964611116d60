//! Tests of the embedded store's group commit: waiting writers and a batch share one commit,
//! each write keeps its own compare and its order.

use std::path::PathBuf;
use std::sync::Arc;

use super::EmbeddedStore;
use crate::store::{Store, Txn};

fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("state.redb");
    (dir, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_writes_is_one_commit() {
    let (_dir, path) = temp_db();
    let store = EmbeddedStore::open(&path).expect("open");
    let before = store.commits();
    let txns = (0..500)
        .map(|i| {
            Txn::new()
                .when_mod_revision(format!("/k/{i}"), 0)
                .put(format!("/k/{i}"), "v")
        })
        .collect();
    let answers = store.txn_batch(txns).await.expect("batch");
    assert_eq!(store.commits() - before, 1, "500 writes, one commit");
    let mut revisions: Vec<i64> = answers
        .into_iter()
        .map(|a| {
            let a = a.expect("write");
            assert!(a.succeeded);
            a.revision
        })
        .collect();
    revisions.sort_unstable();
    assert_eq!(
        revisions,
        (1..=500).collect::<Vec<_>>(),
        "each at its own revision"
    );
    assert_eq!(store.range("/k/").await.expect("range").kvs.len(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_commits() {
    let (_dir, path) = temp_db();
    let store = Arc::new(EmbeddedStore::open(&path).expect("open"));
    let before = store.commits();
    const WRITERS: i64 = 200;
    let writers = (0..WRITERS).map(|i| {
        let store = store.clone();
        async move { store.put(&format!("/w/{i}"), vec![1]).await }
    });
    for r in futures::future::join_all(writers).await {
        r.expect("put");
    }
    let commits = store.commits() - before;
    // They wait together while the writer syncs: a handful of commits, not one each.
    assert!(
        commits <= 8,
        "{WRITERS} concurrent writers took {commits} commits"
    );
    assert_eq!(store.revision().await.expect("revision"), WRITERS);
}

#[tokio::test]
async fn a_failed_compare_in_a_batch_fails_alone_and_order_holds_per_key() {
    let (_dir, path) = temp_db();
    let store = EmbeddedStore::open(&path).expect("open");
    let r1 = store.put("/o/key", b"0".to_vec()).await.expect("put");
    // Ten writes to one key, each guarded by the revision the one before it gives: they apply
    // in order only. A stale one in the middle fails alone.
    let mut txns: Vec<Txn> = (0..10)
        .map(|i| {
            Txn::new()
                .when_mod_revision("/o/key", r1 + i)
                .put("/o/key", format!("{}", i + 1))
        })
        .collect();
    txns.insert(
        5,
        Txn::new()
            .when_mod_revision("/o/key", r1)
            .put("/o/key", "stale"),
    );
    txns.push(Txn::new().put("/o/other", "x"));
    let before = store.commits();
    let answers = store.txn_batch(txns).await.expect("batch");
    assert_eq!(store.commits() - before, 1);
    let succeeded: Vec<bool> = answers
        .iter()
        .map(|a| a.as_ref().expect("answer").succeeded)
        .collect();
    let mut expected = vec![true; 12];
    expected[5] = false;
    assert_eq!(succeeded, expected);
    let kv = store.get("/o/key").await.expect("get").expect("present");
    assert_eq!(kv.value, b"10");
    assert_eq!(kv.version, 11);
    assert_eq!(
        store.get("/o/other").await.expect("get").map(|k| k.value),
        Some(b"x".to_vec())
    );
}

#[tokio::test]
async fn a_batch_that_changes_nothing_writes_nothing() {
    let (_dir, path) = temp_db();
    let store = EmbeddedStore::open(&path).expect("open");
    store.put("/n/key", b"0".to_vec()).await.expect("put");
    let before = store.commits();
    let stale = (0..5)
        .map(|_| {
            Txn::new()
                .when_mod_revision("/n/key", 99)
                .put("/n/key", "x")
        })
        .collect();
    let answers = store.txn_batch(stale).await.expect("batch");
    assert!(answers
        .iter()
        .all(|a| !a.as_ref().expect("answer").succeeded));
    store
        .compact(0)
        .await
        .expect("compaction with nothing to do");
    assert_eq!(store.commits(), before, "nothing committed");
}
