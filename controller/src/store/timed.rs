//! A [`Store`] that times every operation of the store it wraps, whichever backend that is,
//! into the controller's metrics (`store_operation_duration_seconds{op}` and
//! `store_errors_total{op}`).
//!
//! It sits at the trait seam, so the embedded and etcd backends stay free of metrics code.
//! A watch is timed until its stream is set up, not while it follows changes.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{KeyValue, RangeResult, Result, Store, Txn, TxnResult, WatchStream};

/// A store whose operations are timed.
pub struct TimedStore {
    inner: Arc<dyn Store>,
}

impl TimedStore {
    /// Times every operation of `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        TimedStore { inner }
    }
}

/// Runs `op` and records how long it took under `name`, and whether it failed.
async fn timed<T>(name: &'static str, op: impl Future<Output = Result<T>>) -> Result<T> {
    let started = Instant::now();
    let result = op.await;
    crate::metrics::store_operation(name, started.elapsed().as_secs_f64(), result.is_ok());
    result
}

#[async_trait]
impl Store for TimedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        timed("get", self.inner.get(key)).await
    }
    async fn range(&self, prefix: &str) -> Result<RangeResult> {
        timed("range", self.inner.range(prefix)).await
    }
    async fn range_containing(&self, prefix: &str, needles: &[Vec<u8>]) -> Result<RangeResult> {
        timed("range", self.inner.range_containing(prefix, needles)).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        timed("txn", self.inner.txn(txn)).await
    }
    async fn txn_batch(&self, txns: Vec<Txn>) -> Result<Vec<Result<TxnResult>>> {
        timed("txn_batch", self.inner.txn_batch(txns)).await
    }
    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream> {
        timed("watch", self.inner.watch(prefix, from_revision)).await
    }
    async fn compact(&self, revision: i64) -> Result<()> {
        timed("compact", self.inner.compact(revision)).await
    }
    async fn revision(&self) -> Result<i64> {
        timed("revision", self.inner.revision()).await
    }
    async fn close(&self) -> Result<()> {
        timed("close", self.inner.close()).await
    }
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<i64> {
        timed("put", self.inner.put(key, value)).await
    }
    async fn delete(&self, key: &str) -> Result<i64> {
        timed("delete", self.inner.delete(key)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;
    use crate::store::embedded::EmbeddedStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_conformance_suite_and_times_each_operation() {
        let dir = tempfile::tempdir().expect("temp dir");
        let embedded = EmbeddedStore::open(&dir.path().join("state.redb")).expect("open");
        let store: Arc<dyn Store> = Arc::new(TimedStore::new(Arc::new(embedded)));
        conformance::run_all(store.clone()).await;
        let text = crate::metrics::Metrics::new().encode();
        for op in ["get", "range", "txn", "watch", "compact", "revision", "put"] {
            let count =
                format!("texu_controller_store_operation_duration_seconds_count{{op=\"{op}\"}} ");
            let line = text
                .lines()
                .find(|l| l.starts_with(&count))
                .unwrap_or_else(|| panic!("no {count} in\n{text}"));
            let n: u64 = line[count.len()..].parse().expect("a count");
            assert!(n > 0, "{line}");
        }
    }
}
