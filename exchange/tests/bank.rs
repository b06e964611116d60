//! The bank test (Jepsen's shape) against the real binary on each backend: concurrent clients
//! make transfers among a few accounts with tight limits, optionally with the app SIGKILLed
//! midway and started again; then the sum of balances is 0, no statement entry lies beyond its
//! limits, every acknowledged transfer is on both statements exactly once, no refused one is.
//!
//! `EXCHANGE_BANK_CLIENTS` (default 16) and `EXCHANGE_BANK_TRANSFERS` (per client, default 500;
//! `EXCHANGE_BANK_CASSANDRA_TRANSFERS`, default 50, on Cassandra) size the load. The etcd tests
//! need /usr/bin/etcd, the Cassandra tests texu-cassandra (both from scripts/setup.sh); they
//! fail without them.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{account, audit, member, statement, App, Backend};
use rand::Rng;
use serde_json::json;

const ACCOUNTS: usize = 20;
const CREDIT_LIMIT: i64 = -40;
const MAXIMUM_BALANCE: i64 = 40;
const MAX_TRANSFER: i64 = 25;
/// How long a client keeps retrying one transfer while the app is down.
const RETRY_WINDOW: Duration = Duration::from_secs(60);

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One transfer a client asked for and the definitive answer it got.
struct Outcome {
    id: String,
    payer: usize,
    payee: usize,
    amount: i64,
    status: u16,
}

/// Transfers per client on Cassandra unless `EXCHANGE_BANK_CASSANDRA_TRANSFERS` says otherwise.
/// Each transfer is about twenty Paxos round trips: the full load of the issue (16 x 500) passed
/// on one `--fast` node but took 463 s, and 501 s with the app killed midway (2026-12-02, debug
/// build, the 2-core VM at load 15-24; benches/README.md), against a few minutes for the whole
/// rest of the suite. CI runs the same invariants at a tenth of the load; the full run is
/// `EXCHANGE_BANK_CASSANDRA_TRANSFERS=500 cargo test -p texu-exchange --test bank cassandra`.
const CASSANDRA_TRANSFERS: usize = 50;

fn bank(backend: Backend, kill_midway: bool) {
    let clients = env_count("EXCHANGE_BANK_CLIENTS", 16);
    let per_client = match backend {
        Backend::Cassandra(_) => {
            env_count("EXCHANGE_BANK_CASSANDRA_TRANSFERS", CASSANDRA_TRANSFERS)
        }
        _ => env_count("EXCHANGE_BANK_TRANSFERS", 500),
    };
    let mut app = App::start(backend);
    let admin = app.admin();
    let codes: Vec<String> = (0..ACCOUNTS).map(|i| format!("acct-{i:02}")).collect();
    let tokens: Vec<String> = codes
        .iter()
        .map(|code| {
            let m = member(&admin, code);
            account(&admin, &m, code, CREDIT_LIMIT, Some(MAXIMUM_BALANCE));
            m.token
        })
        .collect();

    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let members: Vec<_> = tokens.iter().map(|t| app.client(t)).collect();
            let codes = codes.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut rng = rand::thread_rng();
                let mut outcomes = Vec::with_capacity(per_client);
                for n in 0..per_client {
                    let payer = rng.gen_range(0..ACCOUNTS);
                    let payee = (payer + rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
                    let amount = rng.gen_range(1..=MAX_TRANSFER);
                    let id = format!("c{c}-{n}");
                    let body = json!({
                        "id": id, "payer": codes[payer], "payee": codes[payee],
                        "amount": amount, "description": format!("load {id}")
                    })
                    .to_string();
                    let deadline = Instant::now() + RETRY_WINDOW;
                    // Retry with the same id until a definitive answer: what a careful client
                    // does when the app dies under it.
                    let status = loop {
                        match members[payer].try_send("POST", "/v1/transfers", Some(&body), &[]) {
                            Ok(r) if r.status < 500 => break r.status,
                            other => {
                                assert!(
                                    Instant::now() < deadline,
                                    "transfer {id} got no answer in {RETRY_WINDOW:?}: {other:?}"
                                );
                                std::thread::sleep(Duration::from_millis(100));
                            }
                        }
                    };
                    outcomes.push(Outcome {
                        id,
                        payer,
                        payee,
                        amount,
                        status,
                    });
                    done.fetch_add(1, Ordering::Relaxed);
                }
                outcomes
            })
        })
        .collect();

    let total = clients * per_client;
    if kill_midway {
        while done.load(Ordering::Relaxed) < total / 2 {
            std::thread::sleep(Duration::from_millis(10));
        }
        app.kill();
        eprintln!(
            "killed the app after {} transfers",
            done.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(300));
        app.restart();
    }
    let outcomes: Vec<Outcome> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap_or_else(|_| panic!("a client failed")))
        .collect();
    let elapsed = started.elapsed();

    let committed: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 201).collect();
    let refused: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 422).collect();
    let other: Vec<(&str, u16)> = outcomes
        .iter()
        .filter(|o| o.status != 201 && o.status != 422)
        .map(|o| (o.id.as_str(), o.status))
        .collect();
    eprintln!(
        "{total} transfers in {elapsed:?}: {} committed, {} refused",
        committed.len(),
        refused.len()
    );
    assert!(other.is_empty(), "answers other than 201/422: {other:?}");
    assert!(
        !committed.is_empty() && !refused.is_empty(),
        "the load should both commit and hit limits"
    );

    // Multi-step backends settle transfers a killed app left half-done in their recovery pass.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut report = audit(&admin);
    while report["inFlight"] != json!([]) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        report = audit(&admin);
    }
    assert_eq!(report["ok"], true, "audit: {report}");
    assert_eq!(report["sumOfBalances"], 0, "audit: {report}");
    assert_eq!(report["inFlight"], json!([]), "audit: {report}");

    // transfer id -> (account index, amount) of every statement entry.
    let mut entries: HashMap<String, Vec<(usize, i64)>> = HashMap::new();
    let mut sum = 0;
    for (i, code) in codes.iter().enumerate() {
        let lines = statement(&admin, code);
        let mut running = 0;
        for e in &lines {
            let (balance, amount) = (e["balance"].as_i64(), e["amount"].as_i64());
            let (Some(balance), Some(amount)) = (balance, amount) else {
                panic!("malformed entry {e}");
            };
            running += amount;
            assert_eq!(balance, running, "{code}: running balance of {e}");
            assert!(
                (CREDIT_LIMIT..=MAXIMUM_BALANCE).contains(&balance),
                "{code}: entry beyond the limits: {e}"
            );
            let id = e["transfer"].as_str().unwrap_or_default().to_string();
            entries.entry(id).or_default().push((i, amount));
        }
        sum += running;
    }
    assert_eq!(sum, 0, "statements sum to {sum}");
    for o in &committed {
        let mut got = entries.remove(&o.id).unwrap_or_default();
        got.sort();
        let mut want = vec![(o.payer, -o.amount), (o.payee, o.amount)];
        want.sort();
        assert_eq!(
            got, want,
            "acknowledged transfer {} on the statements",
            o.id
        );
    }
    for o in &refused {
        assert!(
            !entries.contains_key(&o.id),
            "refused transfer {} is on a statement",
            o.id
        );
    }
    assert!(
        entries.is_empty(),
        "entries of transfers nobody was told about: {:?}",
        entries.keys().take(10).collect::<Vec<_>>()
    );
}

#[test]
fn bank_invariants_hold_on_the_embedded_store() {
    bank(Backend::File, false);
}

#[test]
fn bank_invariants_hold_on_the_embedded_store_with_the_app_killed_midway() {
    bank(Backend::File, true);
}

#[test]
fn bank_invariants_hold_on_etcd() {
    bank(Backend::etcd(), false);
}

#[test]
fn bank_invariants_hold_on_etcd_with_the_app_killed_midway() {
    bank(Backend::etcd(), true);
}

#[test]
fn bank_invariants_hold_on_cassandra() {
    bank(Backend::cassandra(), false);
}

#[test]
fn bank_invariants_hold_on_cassandra_with_the_app_killed_midway() {
    bank(Backend::cassandra(), true);
}
