//! Step 3 of the Rastru test: a board holding a Cassandra member and an app replica loses
//! power while a bounded, paced load of transfers runs through a proxy on another board. Each
//! request is sent once (its failures are the figure); afterwards every acknowledged transfer
//! is in both accounts' statements exactly once, the audit passes, and retrying each failed
//! request with its own id commits it once (never twice).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use texu::cluster::Cluster;
use texu_api::NodePhase;

use super::ring::{self, Exchange};

/// Client threads, each with its own two accounts.
const THREADS: usize = 8;
/// At most this many requests per thread ...
const PER_THREAD: usize = 150;
/// ... one every `PACE` at most ...
const PACE: Duration = Duration::from_millis(100);
/// ... for at most this long; the board loses power `CUT_AFTER` into it.
const LOAD_FOR: Duration = Duration::from_secs(45);
const CUT_AFTER: Duration = Duration::from_secs(10);

/// One request of the load.
struct Sent {
    id: String,
    thread: usize,
    body: Value,
    acked: bool,
}

/// What one failover round did.
pub struct Round {
    /// The board that lost power.
    pub board: usize,
    /// The Cassandra member on it.
    pub member: String,
    /// Requests sent and failed.
    pub sent: usize,
    pub failed: usize,
    /// When the board lost power.
    pub cut_at: Instant,
}

/// Picks the board of round `round`: one holding a Cassandra member and an app replica.
fn victim(c: &Cluster, round: usize) -> Result<(usize, String)> {
    let apps = ring::boards_of(c, "app")?;
    let mut both = Vec::new();
    for m in ring::containers(c, "cassandra")? {
        let b = ring::board_of(c, &m)?;
        if apps.contains(&b) {
            both.push((b, m.metadata.name));
        }
    }
    ensure!(
        !both.is_empty(),
        "no board holds both a Cassandra member and an app replica (app on {apps:?})"
    );
    Ok(both[(round - 1) % both.len()].clone())
}

/// Why one request failed, in a few kinds.
fn kind(answer: &Result<(u16, Value)>) -> String {
    match answer {
        Ok((status, _)) => format!("HTTP {status}"),
        Err(e) => {
            let text = format!("{e:#}").to_lowercase();
            let k = if text.contains("timed out") || text.contains("timeout") {
                "timeout"
            } else if text.contains("refused") {
                "connection refused"
            } else if text.contains("reset") || text.contains("broken pipe") {
                "connection reset"
            } else {
                "no answer"
            };
            k.to_string()
        }
    }
}

/// Thread `t`'s load: at most `PER_THREAD` transfers between its two accounts, paced, until
/// `LOAD_FOR` has passed or `stop` is set; each sent once.
fn load(
    ex: Exchange,
    tag: String,
    t: usize,
    accounts: [String; 2],
    stop: Arc<AtomicBool>,
) -> (Vec<Sent>, BTreeMap<String, usize>) {
    let start = Instant::now();
    let mut sent = Vec::new();
    let mut failed = BTreeMap::new();
    for i in 0..PER_THREAD {
        let due = PACE * i as u32;
        if stop.load(Ordering::Relaxed) || start.elapsed() >= LOAD_FOR {
            break;
        }
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let id = format!("{tag}-{t}-{i}");
        let (payer, payee) = (&accounts[i % 2], &accounts[(i + 1) % 2]);
        let body = json!({"id": id, "payer": payer, "payee": payee, "amount": 1});
        let answer = ex.call("POST", "/v1/transfers", Some(&body));
        let acked = matches!(&answer, Ok((200 | 201, v)) if v["state"] == "committed");
        if !acked {
            *failed.entry(kind(&answer)).or_insert(0) += 1;
        }
        sent.push(Sent {
            id,
            thread: t,
            body,
            acked,
        });
    }
    (sent, failed)
}

/// The transfer ids in account `code`'s statement, in order.
fn statement_ids(ex: &Exchange, code: &str) -> Result<Vec<String>> {
    let s = ex.ok(
        "GET",
        &format!("/v1/accounts/{code}/statement?limit=1000"),
        None,
    )?;
    let entries = s["entries"]
        .as_array()
        .with_context(|| format!("{code}: {s}"))?;
    Ok(entries
        .iter()
        .map(|e| e["transfer"].as_str().unwrap_or_default().to_string())
        .collect())
}

/// Checks each thread's two statements hold every acknowledged transfer of that thread
/// exactly once and nothing it did not send; with `all`, every transfer sent. The number of
/// the load's transfers that are in.
fn check_statements(
    ex: &Exchange,
    sent: &[Sent],
    accounts: &[[String; 2]],
    all: bool,
) -> Result<usize> {
    let mut committed = 0;
    for (t, pair) in accounts.iter().enumerate() {
        let ours: Vec<&Sent> = sent.iter().filter(|s| s.thread == t).collect();
        let ids: BTreeSet<&str> = ours.iter().map(|s| s.id.as_str()).collect();
        let mut seen_in_both = None;
        for code in pair {
            let listed = statement_ids(ex, code)?;
            let unique: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
            ensure!(
                unique.len() == listed.len(),
                "{code}'s statement lists a transfer twice: {listed:?}"
            );
            ensure!(
                unique.is_subset(&ids),
                "{code}'s statement lists transfers never sent: {:?}",
                unique.difference(&ids).collect::<Vec<_>>()
            );
            for s in &ours {
                ensure!(
                    !(s.acked || all) || unique.contains(s.id.as_str()),
                    "transfer {} ({}) is missing from {code}'s statement",
                    s.id,
                    if s.acked { "acknowledged" } else { "retried" }
                );
            }
            if let Some(other) = &seen_in_both {
                ensure!(
                    *other == unique.len(),
                    "{pair:?}: the two statements differ"
                );
            }
            seen_in_both = Some(unique.len());
        }
        committed += seen_in_both.unwrap_or(0);
    }
    Ok(committed)
}

/// One round: the load through a proxy off the victim board, the power cut, and the ledger's
/// checks. `committed`: the committed transfers before; it grows by every transfer sent.
pub fn round(c: &mut Cluster, round: usize, committed: &mut usize) -> Result<Round> {
    let (board, member) = victim(c, round)?;
    let ex = ring::proxy(c, board)?;
    let tag = format!("fo{round}");
    let codes = ring::open_accounts(&ex, &tag, 2 * THREADS)?;
    let accounts: Vec<[String; 2]> = codes
        .chunks(2)
        .map(|p| [p[0].clone(), p[1].clone()])
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = accounts
        .iter()
        .enumerate()
        .map(|(t, pair)| {
            let (ex, tag, pair, stop) = (ex.clone(), tag.clone(), pair.clone(), stop.clone());
            std::thread::spawn(move || load(ex, tag, t, pair, stop))
        })
        .collect();
    std::thread::sleep(CUT_AFTER);
    let cut = c.power_off(board);
    let cut_at = Instant::now();
    if cut.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    let mut sent = Vec::new();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for w in workers {
        let (s, f) = w
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
        sent.extend(s);
        for (k, n) in f {
            *kinds.entry(k).or_insert(0) += n;
        }
    }
    cut.with_context(|| format!("power off board {board}"))?;
    let load_took = started.elapsed();
    let failed = sent.iter().filter(|s| !s.acked).count();
    let share = 100.0 * failed as f64 / sent.len().max(1) as f64;
    eprintln!(
        "rastru failover round {round}: board {board} ({member}) lost power {:.1?} into the load; {} requests in {load_took:.1?}; failures by kind: {kinds:?}",
        CUT_AFTER,
        sent.len()
    );
    eprintln!(
        "rastru failover: {failed} of {} requests failed ({share:.2} %)",
        sent.len()
    );
    ring::wait_node(c, board, NodePhase::NotReady, Duration::from_secs(30))?;

    let proxies: Vec<String> = ring::containers(c, "proxy")?
        .iter()
        .map(|p| {
            let s = p.status.as_ref();
            format!(
                "{} on {:?} {:?} {:?}",
                p.metadata.name,
                p.spec.node,
                s.map(|s| s.phase),
                s.and_then(|s| s.address.clone())
            )
        })
        .collect();
    eprintln!(
        "rastru failover round {round}: the load went through {}; proxies now: {proxies:?}",
        ex.base
    );

    // Every acknowledged transfer is in exactly once; some failed ones may be in too. The
    // checks go through any proxy that serves.
    let checked = Instant::now();
    let ex = ring::wait_serving(c, Duration::from_secs(120))?;
    ring::audit(&ex, None, Duration::from_secs(120))?;
    let in_before_retry = check_statements(&ex, &sent, &accounts, false)?;
    ring::audit(
        &ex,
        Some(*committed + in_before_retry),
        Duration::from_secs(30),
    )?;
    // A retry of a failed request (same id) commits it once, whether or not it was in.
    for s in sent.iter().filter(|s| !s.acked) {
        let t = ex.ok("POST", "/v1/transfers", Some(s.body.clone()))?;
        ensure!(t["state"] == "committed", "retried transfer {}: {t}", s.id);
    }
    let all = check_statements(&ex, &sent, &accounts, true)?;
    ensure!(
        all == sent.len(),
        "{all} of {} transfers in after retries",
        sent.len()
    );
    *committed += sent.len();
    let audit = ring::audit(&ex, Some(*committed), Duration::from_secs(60))?;
    eprintln!(
        "rastru failover round {round}: {in_before_retry} of the load's transfers were in ({} acknowledged), all {} after retrying the failed ones; audit ok ({} committed); checks took {:.1?}",
        sent.len() - failed,
        sent.len(),
        audit["committed"],
        checked.elapsed()
    );
    Ok(Round {
        board,
        member,
        sent: sent.len(),
        failed,
        cut_at,
    })
}

/// Powers board `board` on again after a round and waits until the whole stack is Ready and
/// the ring shows three UN.
pub fn heal(c: &mut Cluster, board: usize) -> Result<()> {
    let asked = Instant::now();
    c.restore(board)?;
    ring::wait_node(c, board, NodePhase::Ready, Duration::from_secs(60))?;
    c.wait_ready(Duration::from_secs(300))?;
    if let Err(e) = ring::wait_ring(c, 3, Duration::from_secs(180)) {
        anyhow::bail!("{e:#}\n{}", ring::members_report(c));
    }
    eprintln!(
        "board {board} back, stack Ready and three UN in {:.1?}",
        asked.elapsed()
    );
    Ok(())
}
