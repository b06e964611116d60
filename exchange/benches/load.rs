//! Transfers per second and latency of the real `texu-exchange` binary per backend, at a fixed
//! offered load (open loop: each request has a scheduled start, and its latency counts from
//! then, so a stall is not hidden by the client waiting), and the app's resident memory.
//!
//! `cargo bench -p texu-exchange --bench load` (benches/exchange.sh runs it). Environment:
//! `EXCHANGE_BENCH_RATE` (transfers/s offered, default 200), `EXCHANGE_BENCH_SECONDS` (default
//! 20), `EXCHANGE_BENCH_BACKENDS` (default `file,etcd`; add `cassandra` to start a node with
//! texu-cassandra).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{account, member, App, Backend};
use rand::Rng;
use serde_json::json;

const ACCOUNTS: usize = 20;
const WORKERS: usize = 32;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn run(name: &str, backend: Backend, rate: u64, seconds: u64) {
    let app = App::start(backend);
    let admin = app.admin();
    let codes: Vec<String> = (0..ACCOUNTS).map(|i| format!("b{i:02}")).collect();
    let tokens: Vec<String> = codes
        .iter()
        .map(|c| {
            let m = member(&admin, c);
            account(&admin, &m, c, -1_000_000_000, None);
            m.token
        })
        .collect();
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let next = Arc::new(Mutex::new(0u64));
    let start = Instant::now() + Duration::from_millis(200);
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let clients: Vec<_> = tokens.iter().map(|t| app.client(t)).collect();
            let codes = codes.clone();
            let next = next.clone();
            std::thread::spawn(move || {
                let mut rng = rand::thread_rng();
                let mut out = Vec::new();
                loop {
                    let n = {
                        let mut g = next.lock().unwrap_or_else(|p| p.into_inner());
                        if *g >= total {
                            return out;
                        }
                        *g += 1;
                        *g - 1
                    };
                    let due = start + interval * n as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let payer = rng.gen_range(0..ACCOUNTS);
                    let payee = (payer + rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
                    let body = json!({ "payer": codes[payer], "payee": codes[payee], "amount": 1 });
                    let ok = clients[payer]
                        .try_send("POST", "/v1/transfers", Some(&body.to_string()), &[])
                        .is_ok_and(|r| r.status == 201);
                    out.push((due.elapsed(), ok));
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut failed = 0;
    for w in workers {
        for (latency, ok) in w.join().unwrap_or_default() {
            if ok {
                latencies.push(latency);
            } else {
                failed += 1;
            }
        }
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let rss = app.pid().map_or(0, rss_kib);
    println!(
        "{name:<10} offered {rate}/s for {seconds} s: {:.0} transfers/s committed, p50 {:.1} ms, \
         p99 {:.1} ms, failed {failed}, app RSS {:.1} MiB",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        rss as f64 / 1024.0
    );
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let rate: u64 = env("EXCHANGE_BENCH_RATE", 200);
    let seconds: u64 = env("EXCHANGE_BENCH_SECONDS", 20);
    let backends: String = env("EXCHANGE_BENCH_BACKENDS", "file,etcd".to_string());
    for name in backends.split(',') {
        match name {
            "file" => run(name, Backend::File, rate, seconds),
            "etcd" => run(name, Backend::etcd(), rate, seconds),
            "cassandra" => run(name, Backend::cassandra(), rate, seconds),
            other => eprintln!("unknown backend {other}"),
        }
    }
}
