//! Proxy benchmark (issue 11): the demo proxy (manifests/demo/proxy.yaml, real Apache httpd)
//! over busybox `web` responders on three boards of the local cluster harness. Prints:
//!
//! 1. new member: the time from a new web replica's Ready (as the controller reports it) to the
//!    first request it answers through a proxy, ROUNDS times (scale 4 -> 5 and back);
//! 2. lost member: 100 requests/s for 30 s from the host namespace through one proxy while the
//!    board holding a web replica (not that proxy's) is powered off (after 5 s), ROUNDS times: failed
//!    requests and their share, p50/p99 latency, and the time from the power-off until the dead
//!    member is gone from the proxy's rendered config;
//! 3. lost proxy: the board of a proxy powered off, the time until the replacement proxy is
//!    Ready elsewhere and answers, PROXY_ROUNDS times.
//!
//! Run as root through `benches/proxy.sh` (ROUNDS, default 5; PROXY_ROUNDS, default 3). Only
//! the cluster's own 198.18.0.0/15 addresses are used; every load loop is bounded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use texu::cluster::{Cluster, ClusterConfig};
use texu_api::ContainerPhase;

const RATE: u64 = 100;
const LOAD_FOR: Duration = Duration::from_secs(30);
const CUT_AFTER: Duration = Duration::from_secs(5);
const CONF: &str = "run/texu/httpd.conf";

fn web(replicas: usize) -> String {
    texu::cluster::fixtures::responder_role("web", replicas, 3)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Ready containers of `role`: name -> (board, address).
fn ready(c: &Cluster, role: &str) -> Result<BTreeMap<String, (usize, String)>> {
    let mut out = BTreeMap::new();
    for x in c.api().containers()? {
        let status = x.status.as_ref();
        if x.spec.role != role || status.map(|s| s.phase) != Some(ContainerPhase::Ready) {
            continue;
        }
        let (Some(node), Some(address)) = (
            x.spec.node.as_deref(),
            status.and_then(|s| s.address.clone()),
        ) else {
            continue;
        };
        let board = c
            .plan()
            .board_numbers()
            .find(|b| c.plan().node_name(*b) == node)
            .context("a board for the node")?;
        out.insert(x.metadata.name.clone(), (board, address));
    }
    Ok(out)
}

fn get(url: &str, timeout: Duration) -> Result<String, String> {
    ureq::get(url)
        .timeout(timeout)
        .call()
        .map_err(|e| e.to_string())?
        .into_string()
        .map_err(|e| e.to_string())
}

fn proxy_url(c: &Cluster, board: usize) -> String {
    format!("http://{}:8000/hostname", c.plan().board_address(board))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Waits until every node is Ready and `want` containers of each role are Ready.
fn settle(c: &Cluster, want: &[(&str, usize)]) -> Result<()> {
    c.wait_until(Duration::from_secs(180), "the stack to be Ready", || {
        let nodes = c.api().nodes().ok()?;
        let up = nodes
            .iter()
            .all(|n| n.status.as_ref().map(|s| s.phase) == Some(texu_api::NodePhase::Ready));
        let ok = want
            .iter()
            .all(|(role, n)| ready(c, role).map(|r| r.len() == *n).unwrap_or(false));
        (up && ok).then_some(())
    })?;
    Ok(())
}

/// 1. From a new replica's Ready to its first answer through the proxy on `board`.
fn new_member(c: &Cluster, board: usize, rounds: usize) -> Result<Vec<Duration>> {
    let url = proxy_url(c, board);
    let mut out = Vec::new();
    for round in 1..=rounds {
        c.apply_yaml(&web(5))?;
        let ready_at = c.wait_until(Duration::from_secs(120), "web-4 Ready", || {
            ready(c, "web")
                .ok()?
                .contains_key("web-4")
                .then(Instant::now)
        })?;
        let served = c.wait_until(Duration::from_secs(30), "web-4 through the proxy", || {
            (get(&url, Duration::from_secs(2)).ok()?.trim() == "web-4").then(Instant::now)
        })?;
        let took = served.duration_since(ready_at);
        println!(
            "new member round {round}: web-4 Ready -> first answer through the proxy {}",
            ms(took)
        );
        out.push(took);
        c.apply_yaml(&web(4))?;
        settle(c, &[("web", 4), ("proxy", 2)])?;
        std::thread::sleep(Duration::from_secs(3));
    }
    Ok(out)
}

/// Bounded open-loop load: RATE requests/s for LOAD_FOR through `url`, from 8 threads.
fn load(url: &str) -> Arc<Mutex<Vec<(bool, Duration)>>> {
    let results = Arc::new(Mutex::new(Vec::new()));
    let total = RATE * LOAD_FOR.as_secs();
    let threads = 8;
    let start = Instant::now() + Duration::from_millis(50);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let url = url.to_string();
            let results = results.clone();
            std::thread::spawn(move || {
                let mut i = t;
                while i < total {
                    let due = start + Duration::from_micros(i * 1_000_000 / RATE);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let began = Instant::now();
                    let ok = get(&url, Duration::from_secs(5)).is_ok();
                    if let Ok(mut r) = results.lock() {
                        r.push((ok, began.elapsed()));
                    }
                    i += threads;
                }
            })
        })
        .collect();
    std::thread::spawn(move || {
        for h in handles {
            let _ = h.join();
        }
    })
    .join()
    .ok();
    results
}

/// The rendered config of `proxy` on `board`.
fn config(c: &Cluster, board: usize, proxy: &str) -> String {
    let path = c
        .plan()
        .board_dir(board)
        .join("files")
        .join(proxy)
        .join(CONF);
    std::fs::read_to_string(path).unwrap_or_default()
}

/// 2. Power off a board holding a web replica (not the proxy's) under load through a proxy.
fn lost_member(c: &mut Cluster, rounds: usize) -> Result<()> {
    let mut failed_all = 0usize;
    let mut sent_all = 0usize;
    let mut latencies_all = Vec::new();
    for round in 1..=rounds {
        let proxies = ready(c, "proxy")?;
        let (proxy, (proxy_board, _)) = proxies.iter().next().context("a proxy")?;
        let (proxy, proxy_board) = (proxy.clone(), *proxy_board);
        // A board holding a web replica, not the proxy's: one without a proxy if there is one.
        let proxy_boards: Vec<usize> = proxies.values().map(|(b, _)| *b).collect();
        let web_boards: Vec<usize> = ready(c, "web")?.values().map(|(b, _)| *b).collect();
        let victim = web_boards
            .iter()
            .copied()
            .find(|b| !proxy_boards.contains(b))
            .or_else(|| web_boards.iter().copied().find(|b| *b != proxy_board))
            .context("a web replica on another board than the proxy's")?;
        // The members on the victim, as the config names them.
        let dead: Vec<String> = ready(c, "web")?
            .values()
            .filter(|(b, _)| *b == victim)
            .map(|(_, address)| format!("http://{address}:8080"))
            .collect();
        let url = proxy_url(c, proxy_board);
        let loader = std::thread::spawn(move || load(&url));
        std::thread::sleep(CUT_AFTER);
        c.power_off(victim)?;
        let cut = Instant::now();
        let gone = c.wait_until(
            Duration::from_secs(60),
            "the dead member out of the config",
            || {
                let text = config(c, proxy_board, &proxy);
                dead.iter()
                    .all(|d| !text.contains(d.as_str()))
                    .then(Instant::now)
            },
        )?;
        let results = loader.join().map_err(|_| anyhow::anyhow!("load thread"))?;
        let results = results
            .lock()
            .map_err(|_| anyhow::anyhow!("results"))?
            .clone();
        let failed = results.iter().filter(|(ok, _)| !ok).count();
        let mut lat: Vec<Duration> = results.iter().map(|(_, d)| *d).collect();
        lat.sort();
        println!(
            "lost member round {round}: board{victim} off; {} requests, {failed} failed ({:.3} %), p50 {}, p99 {}, dead member gone from {proxy}'s config after {}",
            results.len(),
            100.0 * failed as f64 / results.len().max(1) as f64,
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(gone.duration_since(cut)),
        );
        failed_all += failed;
        sent_all += results.len();
        latencies_all.extend(lat);
        c.restore(victim)?;
        settle(c, &[("web", 4), ("proxy", 2)])?;
        std::thread::sleep(Duration::from_secs(3));
    }
    latencies_all.sort();
    println!(
        "lost member, all rounds: {sent_all} requests, {failed_all} failed ({:.3} %), p50 {}, p99 {}",
        100.0 * failed_all as f64 / sent_all.max(1) as f64,
        ms(percentile(&latencies_all, 0.5)),
        ms(percentile(&latencies_all, 0.99)),
    );
    Ok(())
}

/// 3. Power off a proxy's board: time until the replacement is Ready elsewhere and answers.
fn lost_proxy(c: &mut Cluster, rounds: usize) -> Result<()> {
    for round in 1..=rounds {
        let proxies = ready(c, "proxy")?;
        let (proxy, (board, _)) = proxies.iter().next().context("a proxy")?;
        let (proxy, board) = (proxy.clone(), *board);
        c.power_off(board)?;
        let cut = Instant::now();
        let (moved, ready_at) = c.wait_until(
            Duration::from_secs(120),
            "the replacement proxy Ready",
            || {
                let (b, _) = ready(c, "proxy").ok()?.get(&proxy).cloned()?;
                (b != board).then(|| (b, Instant::now()))
            },
        )?;
        let url = proxy_url(c, moved);
        let served = c.wait_until(
            Duration::from_secs(30),
            "the replacement proxy answering",
            || {
                get(&url, Duration::from_secs(2))
                    .ok()
                    .map(|_| Instant::now())
            },
        )?;
        println!(
            "lost proxy round {round}: board{board} off; {proxy} Ready on board{moved} after {}, answering after {}",
            ms(ready_at.duration_since(cut)),
            ms(served.duration_since(cut)),
        );
        c.restore(board)?;
        settle(c, &[("web", 4), ("proxy", 2)])?;
    }
    Ok(())
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let rounds = env_usize("ROUNDS", 5);
    let proxy_rounds = env_usize("PROXY_ROUNDS", 3);
    let proxy_yaml =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/demo/proxy.yaml");
    let mut c = Cluster::start(ClusterConfig::new(
        3,
        texu::cluster::fixtures::texu_next_to_bench()?,
    ))
    .context("a 3-board cluster")?;
    c.apply_yaml(&web(4))?;
    c.apply(&proxy_yaml)?;
    settle(&c, &[("web", 4), ("proxy", 2)])?;
    let proxies = ready(&c, "proxy")?;
    let (_, (board, _)) = proxies.iter().next().context("a proxy")?;
    let board = *board;
    let mut took = new_member(&c, board, rounds)?;
    took.sort();
    println!(
        "new member, {rounds} rounds: p50 {}, max {}",
        ms(percentile(&took, 0.5)),
        ms(took.last().copied().unwrap_or_default())
    );
    lost_member(&mut c, rounds)?;
    lost_proxy(&mut c, proxy_rounds)?;
    c.teardown()?;
    Ok(())
}
