//! Tests of node bookkeeping: facts written at most once per interval, container addresses kept only inside the board's subnet.

use super::*;
use crate::store::embedded::EmbeddedStore;
use std::collections::BTreeMap;
use texu_api::Arch;

fn spec() -> NodeSpec {
    NodeSpec {
        address: "198.18.0.2".into(),
        arch: Arch::Amd64,
        cpus: 2,
        memory_bytes: 1 << 30,
        subnet: None,
        unschedulable: false,
        draining: false,
    }
}

#[tokio::test(start_paused = true)]
async fn label_churning_heartbeats_write_at_most_once_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("state.redb")).unwrap());
    let objects = Objects::new(store.clone());
    let nodes = Nodes::new(
        objects.clone(),
        Duration::from_secs(2),
        Cidr::parse("198.19.0.0/16").unwrap(),
    );
    let join = JoinRequest {
        name: "board-a".into(),
        labels: BTreeMap::new(),
        spec: spec(),
    };
    nodes.join(join, Joiner::JoinToken).await.unwrap();
    let revision = || async { objects.list::<Node>().await.unwrap().1 };
    let beat = |i: usize| Heartbeat {
        spec: spec(),
        labels: BTreeMap::from([("churn".to_string(), format!("v{i}"))]),
        containers: Vec::new(),
        prompt: false,
    };
    nodes.heartbeat("board-a", beat(0)).await.unwrap();
    let before = revision().await;
    let started = tokio::time::Instant::now();
    const BEATS: usize = 10_000;
    for i in 1..=BEATS {
        tokio::time::advance(Duration::from_millis(100)).await;
        nodes.heartbeat("board-a", beat(i)).await.unwrap();
    }
    let writes = revision().await - before;
    let windows = started.elapsed().as_secs() / FACTS_WRITE_INTERVAL.as_secs();
    assert!(
        writes as u64 <= windows + 1,
        "{writes} writes for {BEATS} beats over {windows} windows"
    );
    assert!(writes > 0, "the facts do get written");
    // The last request is there once its window is due.
    tokio::time::advance(FACTS_WRITE_INTERVAL).await;
    nodes.heartbeat("board-a", beat(BEATS)).await.unwrap();
    let node = objects.get::<Node>("board-a").await.unwrap().unwrap();
    let status = node.status.unwrap();
    assert_eq!(status.requested_labels["churn"], format!("v{BEATS}"));
    assert!(node.metadata.labels.is_empty(), "requests are not labels");
}

#[tokio::test]
async fn only_addresses_in_the_boards_own_subnet_are_kept() {
    let subnet = Cidr::parse("198.19.1.0/24").ok();
    let report = |address: &str| ReportedContainer {
        name: "db-0".into(),
        generation: 1,
        status: ContainerStatus {
            address: Some(address.into()),
            ..Default::default()
        },
    };
    assert_eq!(
        own_address("a", subnet, &report("198.19.1.7")).as_deref(),
        Some("198.19.1.7")
    );
    for bad in [
        "1.2.3.4\"; touch /tmp/X; echo \"",
        "198.19.2.7",
        "198.19.1.7 ",
        "::1",
        "",
    ] {
        assert_eq!(own_address("a", subnet, &report(bad)), None, "{bad:?}");
    }
    assert_eq!(own_address("a", None, &report("198.19.1.7")), None);
}
