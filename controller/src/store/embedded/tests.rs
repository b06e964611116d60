//! Tests of the embedded store: the conformance suite, compaction, reopen, slow watchers, file format and SIGKILL durability.

use std::io::BufRead;
use std::path::PathBuf;

use futures::StreamExt;

use super::*;
use crate::store::conformance::{self, Watcher};

fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("state.redb");
    (dir, path)
}

fn open(path: &Path) -> Arc<dyn Store> {
    Arc::new(EmbeddedStore::open(path).expect("open"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite() {
    let (_dir, path) = temp_db();
    let store = open(&path);
    // Other keys already present must not matter.
    store.put("/unrelated", b"x".to_vec()).await.expect("put");
    conformance::run_all(store).await;
}

#[tokio::test]
async fn passes_the_conformance_suite_on_one_thread() {
    let (_dir, path) = temp_db();
    conformance::run_all(open(&path)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_churning_writes_leave_a_small_file_after_compaction() {
    let (_dir, path) = temp_db();
    let store = open(&path);
    conformance::churn_with_compaction(store.clone(), 10_000).await;
    store.close().await.expect("close");
    let size = std::fs::metadata(&path).expect("file").len();
    println!("state.redb after 10,000 writes and compaction: {size} bytes");
    assert!(size < 4 << 20, "the store file is {size} bytes");
}

#[tokio::test]
async fn close_ends_watches_and_later_calls() {
    let (_dir, path) = temp_db();
    conformance::close_ends_everything(open(&path)).await;
}

#[tokio::test]
async fn close_releases_the_file() {
    let (_dir, path) = temp_db();
    let store = open(&path);
    store.put("/k", b"v".to_vec()).await.expect("put");
    store.close().await.expect("close");
    let again = open(&path);
    assert_eq!(again.revision().await.expect("revision"), 1);
}

#[tokio::test]
async fn data_and_revision_survive_a_reopen() {
    let (_dir, path) = temp_db();
    let store = open(&path);
    store.put("/a", b"1".to_vec()).await.expect("put");
    store.put("/b", b"2".to_vec()).await.expect("put");
    let last = store.put("/a", b"3".to_vec()).await.expect("put");
    drop(store);
    let store = open(&path);
    assert_eq!(store.revision().await.expect("revision"), last);
    let a = store.get("/a").await.expect("get").expect("present");
    assert_eq!(
        (a.value, a.create_revision, a.version),
        (b"3".to_vec(), 1, 2)
    );
    assert_eq!(store.range("/").await.expect("range").kvs.len(), 2);
    assert_eq!(store.put("/c", b"4".to_vec()).await.expect("put"), last + 1);
}

#[tokio::test]
async fn a_watch_replays_history_after_a_reopen() {
    let (_dir, path) = temp_db();
    let store = open(&path);
    for i in 0..5 {
        store.put(&format!("/k{i}"), vec![i]).await.expect("put");
    }
    store.compact(2).await.expect("compact");
    drop(store);
    let store = open(&path);
    let mut watch = Watcher::open(store.as_ref(), "/", 2).await;
    let keys: Vec<String> = watch.take(4).await.into_iter().map(|e| e.kv.key).collect();
    assert_eq!(keys, ["/k1", "/k2", "/k3", "/k4"]);
    let compacted = conformance::expect_compacted(store.as_ref(), "/", 1).await;
    assert_eq!(compacted, (1, 2), "compaction survives a reopen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_catches_up_from_history() {
    let (_dir, path) = temp_db();
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open_with_capacity(&path, 2).expect("open"));
    let mut watch = Watcher::open(store.as_ref(), "/w/", 0).await;
    // Far more commits than the live channel holds, while nobody reads the watch.
    for i in 0..40 {
        store
            .put(&format!("/w/{i:02}"), vec![i])
            .await
            .expect("put");
        store.put("/other", vec![i]).await.expect("put");
    }
    let events = watch.take(40).await;
    let keys: Vec<String> = events.iter().map(|e| e.kv.key.clone()).collect();
    let want: Vec<String> = (0..40).map(|i| format!("/w/{i:02}")).collect();
    assert_eq!(keys, want, "every event once, in order");
    let r = store.put("/w/live", b"x".to_vec()).await.expect("put");
    let live = watch.next_event().await;
    assert_eq!((live.kv.key.as_str(), live.kv.mod_revision), ("/w/live", r));
}

#[tokio::test]
async fn a_slow_watcher_whose_history_was_compacted_ends_with_compacted() {
    let (_dir, path) = temp_db();
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open_with_capacity(&path, 2).expect("open"));
    let mut watch = store.watch("/w/", 0).await.expect("watch");
    for i in 0..10 {
        store.put(&format!("/w/{i}"), vec![i]).await.expect("put");
    }
    store.compact(10).await.expect("compact");
    match watch.next().await {
        Some(Err(StoreError::Compacted {
            requested: 1,
            compacted: 10,
        })) => {}
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(watch.next().await.is_none(), "an error ends the watch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_get_consecutive_revisions() {
    let (_dir, path) = temp_db();
    let store = open(&path);
    let writers = (0..64).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.put(&format!("/k/{i}"), vec![1]).await })
    });
    let mut revisions: Vec<i64> = futures::future::join_all(writers)
        .await
        .into_iter()
        .map(|r| r.expect("task").expect("put"))
        .collect();
    revisions.sort_unstable();
    assert_eq!(revisions, (1..=64).collect::<Vec<_>>());
    let mut watch = store.watch("/k/", 1).await.expect("watch");
    let mut seen = Vec::new();
    while seen.len() < 64 {
        let batch = watch.next().await.expect("open").expect("events");
        seen.extend(batch.into_iter().map(|e| e.kv.mod_revision));
    }
    assert_eq!(seen, (1..=64).collect::<Vec<_>>());
}

#[test]
fn a_newer_file_format_is_refused() {
    let (_dir, path) = temp_db();
    drop(EmbeddedStore::open(&path).expect("open"));
    {
        let db = Database::create(&path).expect("redb");
        let tx = db.begin_write().expect("write");
        tx.open_table(META)
            .expect("meta")
            .insert(META_FORMAT, 99)
            .expect("insert");
        tx.commit().expect("commit");
    }
    match EmbeddedStore::open(&path) {
        Err(StoreError::Embedded { source, .. }) => assert!(matches!(
            source.downcast_ref::<EmbeddedError>(),
            Some(EmbeddedError::Format { found: 99, .. })
        )),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened a format-99 file"),
    }
}

#[test]
fn records_round_trip_and_truncation_is_detected() {
    let events = vec![
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: "/a".into(),
                value: vec![0, 1, 2],
                create_revision: 3,
                mod_revision: 4,
                version: 2,
            },
        },
        Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: "/b".into(),
                value: Vec::new(),
                create_revision: 0,
                mod_revision: 4,
                version: 0,
            },
        },
    ];
    let bytes = codec::encode_events(&events);
    assert_eq!(codec::decode_events(&bytes).expect("decode"), events);
    assert!(codec::decode_events(&bytes[..bytes.len() - 1]).is_err());
    let kv = codec::encode_kv(1, 2, 3, b"value");
    let decoded = codec::decode_kv("/k", &kv).expect("decode");
    assert_eq!(
        (
            decoded.create_revision,
            decoded.mod_revision,
            decoded.version
        ),
        (1, 2, 3)
    );
    assert_eq!(decoded.value, b"value");
    assert!(codec::decode_kv("/k", &kv[..10]).is_err());
    assert!(codec::decode_kv("/k", &[]).is_err());
}

const CRASH_DB: &str = "TEXU_CRASH_TEST_DB";

/// The child half of `nothing_acknowledged_is_lost_to_sigkill`: writes until it is killed.
#[tokio::test]
#[ignore = "run by nothing_acknowledged_is_lost_to_sigkill in a child process"]
async fn crash_child_writes_until_killed() {
    let Some(path) = std::env::var_os(CRASH_DB) else {
        return;
    };
    let store = open(Path::new(&path));
    for i in 0..100_000 {
        let rev = store
            .put(&format!("/crash/{i}"), vec![7; 64])
            .await
            .expect("put");
        println!("acked {i} {rev}");
    }
}

#[test]
fn nothing_acknowledged_is_lost_to_sigkill() {
    let (_dir, path) = temp_db();
    let exe = std::env::current_exe().expect("test binary");
    let mut child = std::process::Command::new(exe)
        .args([
            "--exact",
            "store::embedded::tests::crash_child_writes_until_killed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DB, &path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut acked = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.expect("read child");
        let mut words = line.split_whitespace();
        if words.next() != Some("acked") {
            continue;
        }
        let i: u64 = words.next().and_then(|w| w.parse().ok()).expect("index");
        let rev: i64 = words.next().and_then(|w| w.parse().ok()).expect("revision");
        acked = Some((i, rev));
        if i == 50 {
            // SIGKILL, right after an acknowledged write: no chance to flush or close.
            child.kill().expect("kill child");
            break;
        }
    }
    let _ = child.wait();
    let (last, rev) = acked.expect("the child acknowledged writes");
    assert_eq!(last, 50);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = open(&path);
        assert!(store.revision().await.expect("revision") >= rev);
        for i in 0..=last {
            let key = format!("/crash/{i}");
            assert!(store.get(&key).await.expect("get").is_some(), "{key} lost");
        }
    });
}

#[tokio::test]
async fn a_range_containing_keeps_only_the_matching_values_at_the_same_revision() {
    let (_dir, path) = temp_db();
    let store = open(&path);
    for (key, node) in [
        ("/c/a", "b1"),
        ("/c/b", "b2"),
        ("/c/c", "b1"),
        ("/d/x", "b1"),
    ] {
        let value = format!(r#"{{"spec":{{"node":"{node}"}}}}"#).into_bytes();
        store.put(key, value).await.expect("put");
    }
    let needles = [br#""node":"b1""#.to_vec()];
    let some = store
        .range_containing("/c/", &needles)
        .await
        .expect("range");
    let keys: Vec<&str> = some.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/c/a", "/c/c"]);
    let all = store.range("/c/").await.expect("range");
    assert_eq!((all.kvs.len(), all.revision), (3, some.revision));
    assert_eq!(some.kvs[1], all.kvs[2]);
    // No needles: the whole range.
    assert_eq!(
        store.range_containing("/c/", &[]).await.expect("range"),
        all
    );
}
