//! Failover benchmark: power off a board holding containers, time until every one of them is
//! Ready on another board; repeated, then p50 and p99. Run as root: `cargo bench --bench failover`.
//! ROUNDS (default 5) sets the number of power-offs.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use texu::cluster::fixtures::quick_responder_role;
use texu::cluster::{Cluster, ClusterConfig};
use texu_api::ContainerPhase;

/// Names of the Ready containers on `node`.
fn ready_on(c: &Cluster, node: &str) -> Result<Vec<String>> {
    Ok(c.api()
        .containers()?
        .into_iter()
        .filter(|x| x.spec.node.as_deref() == Some(node))
        .filter(|x| x.status.as_ref().map(|s| s.phase) == Some(ContainerPhase::Ready))
        .map(|x| x.metadata.name)
        .collect())
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list" || a.starts_with("--test")) {
        return Ok(()); // cargo test --benches asks benches to list themselves
    }
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let mut config = ClusterConfig::new(3, texu::cluster::fixtures::texu_next_to_bench()?);
    config.log_filter = "warn".into();
    let mut c = Cluster::start(config)?;
    c.apply_yaml(&quick_responder_role("echo", 6))?;
    c.wait_ready(Duration::from_secs(120))?;
    // The failure detector judges a board it has heard from only a few times gently (its two
    // assumed starting intervals count until it has learned 8 of its own): let the boards run
    // for a while first, as boards in use have.
    std::thread::sleep(Duration::from_secs(10));
    let mut times = Vec::new();
    for round in 0..rounds {
        // The board holding the most containers.
        let (board, moved) = (1..=3)
            .map(|b| (b, ready_on(&c, &c.plan().node_name(b)).unwrap_or_default()))
            .max_by_key(|(_, v)| v.len())
            .context("no board")?;
        let node = c.plan().node_name(board);
        let started = Instant::now();
        c.power_off(board)?;
        c.wait_until(Duration::from_secs(60), "replacements Ready", || {
            let all = c.api().containers().ok()?;
            let done = moved.iter().all(|m| {
                all.iter().any(|x| {
                    &x.metadata.name == m
                        && x.spec.node.as_deref() != Some(node.as_str())
                        && x.status.as_ref().map(|s| s.phase) == Some(ContainerPhase::Ready)
                })
            });
            done.then_some(())
        })?;
        let took = started.elapsed();
        println!(
            "round {}: board {board} ({} containers) off -> Ready elsewhere in {took:.2?}",
            round + 1,
            moved.len()
        );
        times.push(took);
        c.restore(board)?;
        c.wait_ready(Duration::from_secs(60))?;
        std::thread::sleep(Duration::from_secs(2));
    }
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "failover over {} power-offs: p50 {:.2?}, p99 {:.2?}, min {:.2?}, max {:.2?} (target p99 < 5 s)",
        times.len(),
        pct(0.5),
        pct(0.99),
        times[0],
        times[times.len() - 1]
    );
    c.teardown()?;
    Ok(())
}
