//! Leader-change benchmark (run by benches/ha.sh): three controllers on a three-member etcd,
//! three boards; each round SIGKILLs the leader and powers off the board holding `echo-0`
//! right after, then times (a) until another controller leads and (b) until `echo-0` is Ready
//! on another board. Between rounds the board and the controller come back. Prints every
//! round and min / p50 / p99 / max. ROUNDS (default 5) sets the number of rounds.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use texu::cluster::fixtures::quick_responder_role;
use texu::cluster::{Api, Cluster, ClusterConfig};
use texu_api::{ContainerPhase, NodePhase};
use texu_controller::store::etcd_cluster::EtcdCluster;

/// The controller (from 1) that says it leads, skipping `dead`.
fn leader(c: &Cluster, dead: usize) -> Option<usize> {
    c.servers().iter().enumerate().find_map(|(i, s)| {
        if i + 1 == dead {
            return None;
        }
        let text = ureq::get(&format!("{s}/v1/leader"))
            .set("Authorization", &format!("Bearer {}", c.token()))
            .timeout(Duration::from_millis(500))
            .call()
            .ok()?
            .into_string()
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        (v["leading"] == true).then_some(i + 1)
    })
}

fn wait<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn summary(name: &str, mut times: Vec<f64>) {
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    println!(
        "{name}: min {:.2} s, p50 {:.2} s, p99 {:.2} s, max {:.2} s ({} rounds)",
        times[0],
        at(0.5),
        at(0.99),
        times[times.len() - 1],
        times.len()
    );
}

fn main() -> Result<()> {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let etcd = EtcdCluster::start(3).map_err(anyhow::Error::msg)?;
    let mut config = ClusterConfig::new(3, texu::cluster::fixtures::texu_next_to_bench()?);
    config.controllers = 3;
    config.controller_args = vec!["--store".into(), etcd.store_url()];
    config.log_filter = "warn".into();
    config.start_timeout = Duration::from_secs(60);
    let mut c = Cluster::start(config)?;
    c.apply_yaml(&quick_responder_role("echo", 3))?;
    let (mut elections, mut failovers) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let first = wait("a leader", 30, || leader(&c, 0))?;
        let api = Api::new(&c.servers()[first - 1], c.token());
        wait("every board and echo container Ready", 120, || {
            let nodes = api.nodes().ok()?;
            let ready_nodes = nodes
                .iter()
                .filter(|n| n.status.as_ref().map(|s| s.phase) == Some(NodePhase::Ready))
                .count();
            let containers = api.containers().ok()?;
            let ready = containers
                .iter()
                .filter(|x| x.status.as_ref().map(|s| s.phase) == Some(ContainerPhase::Ready))
                .count();
            (ready_nodes == 3 && ready == 3 && containers.len() == 3).then_some(())
        })?;
        // Boards in use have a learned rhythm; give the detectors a few seconds of it.
        std::thread::sleep(Duration::from_secs(5));
        let node = api
            .container("echo-0")?
            .and_then(|x| x.spec.node)
            .context("echo-0 is placed")?;
        let board = (1..=3)
            .find(|b| c.plan().node_name(*b) == node)
            .context("board of echo-0")?;
        let start = Instant::now();
        c.kill_controller_n(first);
        c.power_off(board)?;
        let next = wait("a new leader", 30, || leader(&c, first))?;
        let elected = start.elapsed().as_secs_f64();
        let api = Api::new(&c.servers()[next - 1], c.token());
        wait("echo-0 Ready elsewhere", 60, || {
            let x = api.container("echo-0").ok()??;
            let ready = x.status.as_ref().map(|s| s.phase) == Some(ContainerPhase::Ready);
            (ready && x.spec.node.as_deref() != Some(node.as_str())).then_some(())
        })?;
        let failover = start.elapsed().as_secs_f64();
        println!(
            "round {round}: leader {first} -> {next} in {elected:.2} s; echo-0 off {node} Ready again in {failover:.2} s"
        );
        elections.push(elected);
        failovers.push(failover);
        c.restore(board)?;
        c.restart_controller_n(first)?;
    }
    summary("new leader after SIGKILL", elections);
    summary("failover with a leader change", failovers);
    c.teardown()?;
    Ok(())
}
