//! Store benchmarks: the embedded store (redb, one file) and etcd (a real etcd on loopback), the
//! same operations on both. Figures and how to run them: benches/README.md.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use futures::StreamExt;
use texu_controller::store::conformance::etcd_server::EtcdServer;
use texu_controller::store::embedded::EmbeddedStore;
use texu_controller::store::etcd::EtcdStore;
use texu_controller::store::{Store, Txn};
use tokio::runtime::Runtime;

/// Keys in the range benchmark.
const RANGE_KEYS: usize = 1_000;
/// Bytes per value, about a small manifest object.
const VALUE_BYTES: usize = 256;
/// Writers in the concurrent-put benchmark (the embedded store folds them into group commits).
const CONCURRENT: usize = 16;

fn value() -> Vec<u8> {
    vec![b'x'; VALUE_BYTES]
}

/// Writes RANGE_KEYS keys under /bench/range/ in transactions of 100 (etcd allows 128 ops).
async fn seed(store: &dyn Store) {
    for chunk in 0..RANGE_KEYS / 100 {
        let mut txn = Txn::new();
        for i in 0..100 {
            txn = txn.put(format!("/bench/range/{:05}", chunk * 100 + i), value());
        }
        store.txn(txn).await.expect("seed");
    }
}

fn bench_store(c: &mut Criterion, rt: &Runtime, backend: &str, store: Arc<dyn Store>) {
    rt.block_on(seed(store.as_ref()));
    let mut group = c.benchmark_group(format!("store/{backend}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let store = store.as_ref();
    let counter = AtomicU64::new(0);
    let counter = &counter;

    group.bench_function("put", |b| {
        b.to_async(rt).iter(|| async move {
            let i = counter.fetch_add(1, Ordering::Relaxed) % 1_000;
            store
                .put(&format!("/bench/put/{i}"), value())
                .await
                .expect("put")
        })
    });

    group.bench_function(format!("put_x{CONCURRENT}_concurrent"), |b| {
        b.to_async(rt).iter(|| async move {
            let keys: Vec<String> = (0..CONCURRENT)
                .map(|w| format!("/bench/conc/{w}"))
                .collect();
            let puts = keys.iter().map(|k| store.put(k, value()));
            for r in futures::future::join_all(puts).await {
                r.expect("put");
            }
        })
    });

    group.bench_function("get", |b| {
        b.to_async(rt).iter(|| async move {
            let kv = store.get("/bench/range/00500").await.expect("get");
            assert!(kv.is_some());
        })
    });

    group.bench_function(format!("range_{RANGE_KEYS}"), |b| {
        b.to_async(rt).iter(|| async move {
            let r = store.range("/bench/range/").await.expect("range");
            assert_eq!(r.kvs.len(), RANGE_KEYS);
        })
    });

    let last = AtomicI64::new(rt.block_on(store.put("/bench/txn", value())).expect("put"));
    let last = &last;
    group.bench_function("txn_compare_put", |b| {
        b.to_async(rt).iter(|| async move {
            let seen = last.load(Ordering::Relaxed);
            let txn = Txn::new()
                .when_mod_revision("/bench/txn", seen)
                .put("/bench/txn", value());
            let r = store.txn(txn).await.expect("txn");
            assert!(r.succeeded, "nobody else writes /bench/txn");
            last.store(r.revision, Ordering::Relaxed);
        })
    });

    let watch = rt.block_on(store.watch("/bench/watch/", 0)).expect("watch");
    let watch = tokio::sync::Mutex::new(watch);
    let watch = &watch;
    group.bench_function("watch_put_to_event", |b| {
        b.to_async(rt).iter(|| async move {
            let mut watch = watch.lock().await;
            let rev = store.put("/bench/watch/k", value()).await.expect("put");
            let batch = watch.next().await.expect("watch open").expect("events");
            assert_eq!(batch.last().map(|e| e.kv.mod_revision), Some(rev));
        })
    });
    group.finish();
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn embedded(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(&dir.path().join("state.redb")).expect("open");
    bench_store(c, &rt, "embedded", Arc::new(store));
}

fn etcd(c: &mut Criterion) {
    let rt = runtime();
    let server = EtcdServer::start();
    let store = rt
        .block_on(EtcdStore::connect(&[server.endpoint()]))
        .expect("connect to etcd");
    bench_store(c, &rt, "etcd", Arc::new(store));
    drop(server);
}

criterion_group!(benches, embedded, etcd);
criterion_main!(benches);
