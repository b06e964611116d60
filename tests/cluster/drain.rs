//! `texu drain` and the rebalance after `texu uncordon`, under a client loop that follows the
//! role's Ready endpoints the way a proxy does: no request fails.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use texu::cluster::fixtures::responder_role as responder;
use texu::cluster::{Cluster, ClusterConfig};
use texu_api::ContainerPhase;

use super::reads::{exactly_one_copy_each, ready_by_node};
use super::texu_bin;

#[test]
fn draining_and_rebalancing_a_board_under_a_request_loop_fail_no_request() -> Result<()> {
    let mut config = ClusterConfig::new(3, texu_bin());
    config.host_routes = true;
    // Rebalance onto a board once it has been Ready (and schedulable) for 3 s.
    config.controller_args = vec!["--settle".into(), "3s".into()];
    let c = Cluster::start(config).context("cannot start a 3-board cluster")?;
    c.apply_yaml(&responder("web", 3, 2))?;
    c.wait_ready(Duration::from_secs(60))?;
    let node2 = c.plan().node_name(2);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let api = c.api();
    let loop_stop = stop.clone();
    // A bounded client loop: at most 40,000 requests or 180 s. Like a proxy, it sends each
    // request to a Ready endpoint of the role, read from the controller every 100 ms.
    let client = std::thread::spawn(move || -> (u64, Vec<String>) {
        let (mut sent, mut failed) = (0u64, Vec::new());
        let mut endpoints: Vec<String> = Vec::new();
        let mut refreshed = Instant::now() - Duration::from_secs(1);
        let started = Instant::now();
        while !loop_stop.load(std::sync::atomic::Ordering::SeqCst)
            && sent < 40_000
            && started.elapsed() < Duration::from_secs(180)
        {
            if refreshed.elapsed() >= Duration::from_millis(100) {
                if let Ok(all) = api.containers() {
                    endpoints = all
                        .iter()
                        .filter(|x| {
                            x.status.as_ref().map(|s| s.phase) == Some(ContainerPhase::Ready)
                        })
                        .filter_map(|x| x.status.as_ref().and_then(|s| s.address.clone()))
                        .collect();
                }
                refreshed = Instant::now();
            }
            if endpoints.is_empty() {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            let target = &endpoints[sent as usize % endpoints.len()];
            let url = format!("http://{target}:8080/hostname");
            sent += 1;
            if let Err(e) = ureq::get(&url).timeout(Duration::from_secs(2)).call() {
                failed.push(format!("{url}: {e}"));
            }
        }
        (sent, failed)
    });
    std::thread::sleep(Duration::from_secs(2));
    let out = c.texu_ok(&["drain", &node2, "--timeout", "90s"])?;
    ensure!(out.contains("drained"), "texu drain said {out:?}");
    // Past the leave delay of the last moved copy.
    std::thread::sleep(Duration::from_secs(4));
    ensure!(
        c.lxc_containers(2).is_empty(),
        "board 2 still holds {:?}",
        c.lxc_containers(2)
    );
    let by_node = ready_by_node(&c)?;
    ensure!(
        !by_node.contains_key(&node2),
        "containers Ready on the drained board: {by_node:?}"
    );
    ensure!(
        by_node.values().map(Vec::len).sum::<usize>() == 3,
        "{by_node:?}"
    );

    // Uncordoned, board 2 takes one container back (make-before-break): one per board.
    c.texu_ok(&["uncordon", &node2])?;
    c.wait_until(
        Duration::from_secs(60),
        "one Ready container per board",
        || {
            let by_node = ready_by_node(&c).ok()?;
            (by_node.len() == 3 && by_node.values().all(|v| v.len() == 1)).then_some(())
        },
    )?;
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (sent, failed) = client
        .join()
        .map_err(|_| anyhow::anyhow!("client loop panicked"))?;
    println!(
        "drain and rebalance under load: {sent} requests, {} failed",
        failed.len()
    );
    ensure!(sent > 100, "only {sent} requests were sent");
    ensure!(
        failed.is_empty(),
        "{} failed requests: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    exactly_one_copy_each(&c)?;
    let events = c.texu_ok(&["events"])?;
    ensure!(events.contains("Drained"), "no Drained event:\n{events}");
    ensure!(
        events.contains("Rebalanced"),
        "no Rebalanced event:\n{events}"
    );
    c.teardown()?;
    Ok(())
}
