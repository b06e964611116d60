//! Several controllers on one etcd: three `texu controller` processes on a real three-member
//! etcd cluster (started here on loopback), three boards from the cluster harness. The leader
//! is SIGKILLed or frozen with SIGSTOP; the tests check what a user would: a new leader takes
//! over, no board is marked NotReady for the change, a board lost meanwhile is still failed
//! over with no duplicate containers, a frozen leader writes nothing once it wakes, and agents
//! and the CLI keep working. Needs root, LXC and etcd (scripts/setup.sh).

use std::time::{Duration, Instant};

use futures::StreamExt;
use nix::sys::signal::Signal;
use texu::cluster::fixtures::quick_responder_role;
use texu::cluster::{Cluster, ClusterConfig};
use texu_api::{ContainerPhase, Node, NodePhase};
use texu_controller::store::etcd::EtcdStore;
use texu_controller::store::etcd_cluster::EtcdCluster;
use texu_controller::store::Store;

/// An etcd cluster and three controllers on it with three boards.
fn start() -> (EtcdCluster, Cluster) {
    let etcd = EtcdCluster::start(3).unwrap_or_else(|e| panic!("three-member etcd: {e}"));
    let mut config = ClusterConfig::new(3, env!("CARGO_BIN_EXE_texu"));
    config.controllers = 3;
    config.controller_args = vec!["--store".into(), etcd.store_url()];
    config.log_filter = "info".into();
    config.start_timeout = Duration::from_secs(60);
    let cluster = Cluster::start(config).unwrap_or_else(|e| panic!("cluster: {e}"));
    (etcd, cluster)
}

/// What `GET /v1/leader` says on `server`, if it answers.
fn leader_view(c: &Cluster, server: &str, token: &str) -> Option<serde_json::Value> {
    let text = c
        .http()
        .get(&format!("{server}/v1/leader"))
        .set("Authorization", &format!("Bearer {token}"))
        .timeout(Duration::from_secs(2))
        .call()
        .ok()?
        .into_string()
        .ok()?;
    serde_json::from_str(&text).ok()
}

/// The index (from 1) of the controller that says it leads, among those still running, and
/// its term.
fn leader(c: &Cluster, skip: &[usize]) -> Option<(usize, i64)> {
    c.servers()
        .iter()
        .enumerate()
        .filter(|(i, _)| !skip.contains(&(i + 1)))
        .find_map(|(i, s)| {
            let v = leader_view(c, s, c.token())?;
            (v["leading"] == true).then(|| (i + 1, v["term"].as_i64().unwrap_or(0)))
        })
}

fn wait<T>(c: &Cluster, secs: u64, what: &str, f: impl FnMut() -> Option<T>) -> T {
    c.wait_until(Duration::from_secs(secs), what, f)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// Every node object written to etcd from revision `from` on: (node, phase, revision).
fn node_writes(etcd: &EtcdCluster, from: i64) -> Vec<(String, NodePhase, i64)> {
    block_on(async {
        let store = EtcdStore::connect(&etcd.urls()).await.expect("etcd");
        let mut watch = store.watch("/texu/v1/nodes/", from).await.expect("watch");
        let mut out = Vec::new();
        // History replays at once; a quiet second means it is all here.
        while let Ok(Some(batch)) = tokio::time::timeout(Duration::from_secs(1), watch.next()).await
        {
            for event in batch.expect("watch batch") {
                if let Ok(node) = serde_json::from_slice::<Node>(&event.kv.value) {
                    let phase = node.status.map_or(NodePhase::NotReady, |s| s.phase);
                    out.push((node.metadata.name, phase, event.kv.mod_revision));
                }
            }
        }
        out
    })
}

fn etcd_revision(etcd: &EtcdCluster) -> i64 {
    block_on(async {
        let store = EtcdStore::connect(&etcd.urls()).await.expect("etcd");
        store.revision().await.expect("revision")
    })
}

/// `texu ARGS` with every controller listed, `first` first (a dead one, to show failover).
fn texu_through(c: &Cluster, first: usize, args: &[&str]) -> std::process::Output {
    let mut servers = c.servers();
    let dead = servers.remove(first - 1);
    servers.insert(0, dead);
    let mut cmd = c.texu_command();
    cmd.env("TEXU_SERVER", servers.join(",")).args(args);
    cmd.output().expect("run texu")
}

#[test]
fn sigkill_of_the_leader_hands_over_and_a_board_lost_meanwhile_still_fails_over() {
    let (etcd, mut c) = start();
    c.apply_yaml(&quick_responder_role("echo", 3))
        .unwrap_or_else(|e| panic!("apply: {e}"));
    let (first, term) = wait(&c, 30, "a leader", || leader(&c, &[]));
    let api_of = |c: &Cluster, n: usize| c.api_at(&c.servers()[n - 1]);
    let survivor = if first == 1 { 2 } else { 1 };
    let api = api_of(&c, survivor);
    wait(&c, 120, "three echo containers Ready", || {
        let ready = api
            .containers()
            .ok()?
            .into_iter()
            .filter(|x| x.status.as_ref().map(|s| s.phase) == Some(ContainerPhase::Ready));
        (ready.count() == 3).then_some(())
    });
    let before = etcd_revision(&etcd);
    // The board that holds echo-0 dies right after the leader does.
    let victim_node = api
        .container("echo-0")
        .ok()
        .flatten()
        .and_then(|x| x.spec.node)
        .expect("echo-0 is placed");
    let victim = (1..=3)
        .find(|b| c.plan().node_name(*b) == victim_node)
        .expect("board of echo-0");
    let killed = Instant::now();
    c.kill_controller_n(first);
    c.power_off(victim)
        .unwrap_or_else(|e| panic!("power off: {e}"));
    let (next, next_term) = wait(&c, 30, "a new leader", || leader(&c, &[first]));
    eprintln!(
        "new leader: controller {next} (term {next_term}, was {first} at {term}) after {:?}",
        killed.elapsed()
    );
    assert_ne!(next, first);
    assert!(next_term > term, "a new term: {next_term} after {term}");
    let api = api_of(&c, next);
    // The lost board's echo container runs again on a surviving board, exactly once.
    wait(&c, 60, "echo-0 Ready on another board", || {
        let x = api.container("echo-0").ok()??;
        let ready = x.status.as_ref().map(|s| s.phase) == Some(ContainerPhase::Ready);
        (ready && x.spec.node.as_deref() != Some(victim_node.as_str())).then_some(())
    });
    eprintln!("failover with a leader change: {:?}", killed.elapsed());
    let containers = api.containers().expect("containers");
    assert_eq!(containers.len(), 3, "no extra container objects");
    let cluster = &c;
    let mut running: Vec<String> = (1..=3)
        .filter(|b| *b != victim)
        .flat_map(|b| {
            cluster
                .lxc_containers(b)
                .into_iter()
                .filter(move |name| cluster.container_init_pid(b, name).is_some())
        })
        .collect();
    running.sort();
    assert_eq!(
        running,
        vec!["echo-0", "echo-1", "echo-2"],
        "each container runs once on the surviving boards"
    );
    // No surviving board was marked NotReady: not by the dead leader, not by the new one.
    let writes = node_writes(&etcd, before + 1);
    let wrongly_down: Vec<_> = writes
        .iter()
        .filter(|(n, p, _)| *p == NodePhase::NotReady && *n != victim_node)
        .collect();
    assert!(
        wrongly_down.is_empty(),
        "boards marked NotReady: {wrongly_down:?}"
    );
    assert!(
        writes
            .iter()
            .any(|(n, p, _)| *p == NodePhase::NotReady && *n == victim_node),
        "the lost board is NotReady: {writes:?}"
    );
    // The surviving agents moved to the new leader: it has their heartbeats.
    let nodes = api.nodes().expect("nodes");
    for node in nodes.iter().filter(|n| n.metadata.name != victim_node) {
        assert_eq!(
            node.status.as_ref().map(|s| s.phase),
            Some(NodePhase::Ready),
            "{} after the change",
            node.metadata.name
        );
    }
    // The CLI, given the dead controller first, answers through another one.
    let out = texu_through(&c, first, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let leader_url = &c.servers()[next - 1];
    assert!(
        text.contains(&format!("Leader:      {leader_url}")),
        "texu status names the new leader:\n{text}"
    );
    c.teardown().unwrap_or_else(|e| panic!("teardown: {e}"));
}

#[test]
fn a_leader_frozen_past_its_lease_writes_nothing_after_the_new_one_took_over() {
    let (etcd, mut c) = start();
    let (first, term) = wait(&c, 30, "a leader", || leader(&c, &[]));
    let before = etcd_revision(&etcd);
    assert!(
        c.signal_controller(first, Signal::SIGSTOP),
        "SIGSTOP the leader"
    );
    let (next, next_term) = wait(&c, 30, "a new leader", || leader(&c, &[first]));
    assert!(next_term > term);
    // Let the frozen leader's view go stale: every board's heartbeats now reach the new
    // leader, so on waking the old one would find them all silent for seconds.
    let api = c.api_at(&c.servers()[next - 1]);
    wait(&c, 30, "the boards' heartbeats at the new leader", || {
        let nodes = api.nodes().ok()?;
        let fresh = nodes.iter().all(|n| {
            n.status.as_ref().map(|s| s.phase) == Some(NodePhase::Ready)
                && n.status
                    .as_ref()
                    .is_some_and(|s| s.last_heartbeat.is_some())
        });
        (fresh && nodes.len() == 3).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(c.signal_controller(first, Signal::SIGCONT), "SIGCONT");
    let old = c.servers()[first - 1].clone();
    wait(&c, 30, "the old leader to say it follows", || {
        let v = leader_view(&c, &old, c.token())?;
        (v["leading"] == false && v["leader"].as_str() == Some(c.servers()[next - 1].as_str()))
            .then_some(())
    });
    let metrics = c
        .http()
        .get(&format!("{old}/metrics"))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
        .unwrap_or_default();
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("texu_controller_fenced_writes_total"))
        .unwrap_or("texu_controller_fenced_writes_total ?");
    eprintln!("old leader after waking: {refused}");
    let writes = node_writes(&etcd, before + 1);
    let down: Vec<_> = writes
        .iter()
        .filter(|(_, p, _)| *p == NodePhase::NotReady)
        .collect();
    assert!(down.is_empty(), "no board was marked NotReady: {down:?}");
    for n in api.nodes().expect("nodes") {
        assert_eq!(n.status.map(|s| s.phase), Some(NodePhase::Ready));
    }
    c.teardown().unwrap_or_else(|e| panic!("teardown: {e}"));
}
