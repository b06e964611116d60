//! The store conformance suite against a real etcd, started on loopback for each test.
//!
//! Needs /usr/bin/etcd (Debian's etcd-server; scripts/setup.sh installs it). Without it these
//! tests fail and say so: they never skip.

use std::sync::Arc;
use std::time::Duration;

use texu_controller::store::conformance::{self, etcd_server::EtcdServer, Watcher};
use texu_controller::store::etcd::EtcdStore;
use texu_controller::store::{Store, StoreError};

async fn connect(etcd: &EtcdServer) -> EtcdStore {
    EtcdStore::connect(&[etcd.endpoint()])
        .await
        .unwrap_or_else(|e| panic!("connect to etcd at {}: {e}", etcd.endpoint()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_passes_the_conformance_suite() {
    let etcd = EtcdServer::start();
    let store = connect(&etcd).await;
    // Other keys already present must not matter.
    store.put("/unrelated", b"x".to_vec()).await.expect("put");
    conformance::run_all(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefixed_store_passes_the_suite_and_sees_only_its_keys() {
    let etcd = EtcdServer::start();
    let ours = connect(&etcd).await.with_prefix("/texu-a");
    let theirs = connect(&etcd).await.with_prefix("/texu-b");
    theirs.put("/k", b"theirs".to_vec()).await.expect("put");
    let mut watch = Watcher::open(&ours, "", 0).await;
    theirs.put("/k2", b"theirs".to_vec()).await.expect("put");
    let r = ours.put("/k", b"ours".to_vec()).await.expect("put");
    let event = watch.next_event().await;
    assert_eq!((event.kv.key.as_str(), event.kv.mod_revision), ("/k", r));
    let all = ours.range("").await.expect("range");
    assert_eq!(all.kvs.len(), 1);
    assert_eq!(all.kvs[0].value, b"ours");
    conformance::run_all(Arc::new(ours)).await;
    let theirs_now = theirs.range("").await.expect("range");
    assert_eq!(
        theirs_now.kvs.len(),
        2,
        "the suite stayed inside its prefix"
    );
}

#[tokio::test]
async fn close_ends_watches_and_later_calls() {
    let etcd = EtcdServer::start();
    conformance::close_ends_everything(Arc::new(connect(&etcd).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_after_etcd_restarts() {
    let mut etcd = EtcdServer::start();
    let store = connect(&etcd).await;
    let mut watch = Watcher::open(&store, "/w/", 0).await;
    let r1 = store.put("/w/a", b"1".to_vec()).await.expect("put");
    assert_eq!(watch.next_event().await.kv.mod_revision, r1);
    etcd.restart()
        .unwrap_or_else(|e| panic!("restart etcd: {e}"));
    // The client reconnects on its own; give it a few tries.
    let mut r2 = None;
    for _ in 0..50 {
        match store.put("/w/b", b"2".to_vec()).await {
            Ok(r) => {
                r2 = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let r2 = r2.expect("etcd answers again after the restart");
    let event = watch.next_event().await;
    assert_eq!(
        (event.kv.key.as_str(), event.kv.mod_revision),
        ("/w/b", r2),
        "the watch resumed without losing or repeating events"
    );
}

#[tokio::test]
async fn calls_fail_cleanly_when_etcd_is_gone() {
    let mut etcd = EtcdServer::start();
    let store = connect(&etcd).await;
    store.put("/k", b"v".to_vec()).await.expect("put");
    etcd.stop();
    assert!(matches!(
        store.get("/k").await,
        Err(StoreError::Etcd { .. })
    ));
    assert!(store.watch("/", 0).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_churning_writes_are_compacted_in_etcd() {
    let etcd = EtcdServer::start();
    let store: Arc<dyn Store> = Arc::new(connect(&etcd).await);
    conformance::churn_with_compaction(store, 10_000).await;
}
