//! Step 3 of the Rastru test: a board holding a Cassandra member and an app replica loses
//! power while a bounded, paced load of transfers runs through a proxy on another board. Each
//! client does what the API asks of one (README, "Idempotency-Key"): a transfer that gets no
//! answer, a timeout or a 5xx is sent again once, at once, with the same id. Both figures are
//! printed: the requests that failed on their first attempt (what the proxy let through:
//! Apache cannot resend a request already sent to a member that died) and those that still
//! failed after the resend. Afterwards every acknowledged transfer is in both accounts'
//! statements exactly once, the audit passes, and retrying each failed request with its own id
//! commits it once (never twice).

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

/// One transfer of the load.
struct Sent {
    id: String,
    thread: usize,
    body: Value,
    /// Committed on its first attempt.
    first_acked: bool,
    /// Committed on its first attempt or on the resend.
    acked: bool,
}

/// What one failover round did.
pub struct Round {
    /// The board that lost power.
    pub board: usize,
    /// The Cassandra member on it.
    pub member: String,
    /// Transfers sent, failed on their first attempt, and failed after the resend.
    pub sent: usize,
    pub first_failed: usize,
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
        // Who answered and why: Apache's error page or the exchange's JSON error.
        Ok((status, body)) => {
            let text = match body {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            let why: String = match text.split_once("<title>") {
                Some((_, title)) => {
                    format!("Apache: {}", title.split("</title>").next().unwrap_or(""))
                }
                None => text,
            }
            .chars()
            .filter(|c| !c.is_control())
            .take(100)
            .collect();
            format!("HTTP {status}: {why}")
        }
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

/// Whether a client sends a request that got `answer` again: no answer, or a 5xx.
fn worth_resending(answer: &Result<(u16, Value)>) -> bool {
    !matches!(answer, Ok((status, _)) if *status < 500)
}

/// Thread `t`'s load: at most `PER_THREAD` transfers between its two accounts, paced, until
/// `LOAD_FOR` has passed or `stop` is set; a transfer [worth resending](worth_resending) is
/// sent once more with the same id. The failures counted are the first attempts'.
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
        let committed =
            |a: &Result<(u16, Value)>| matches!(a, Ok((200 | 201, v)) if v["state"] == "committed");
        let answer = ex.call("POST", "/v1/transfers", Some(&body));
        let first_acked = committed(&answer);
        let mut acked = first_acked;
        if !first_acked {
            *failed.entry(kind(&answer)).or_insert(0) += 1;
            if worth_resending(&answer) {
                let again = ex.call("POST", "/v1/transfers", Some(&body));
                acked = committed(&again);
                if !acked {
                    *failed
                        .entry(format!("resend: {}", kind(&again)))
                        .or_insert(0) += 1;
                }
            }
        }
        sent.push(Sent {
            id,
            thread: t,
            body,
            first_acked,
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
    let first_failed = sent.iter().filter(|s| !s.first_acked).count();
    let failed = sent.iter().filter(|s| !s.acked).count();
    eprintln!(
        "rastru failover round {round}: board {board} ({member}) lost power {:.1?} into the load; {} transfers in {load_took:.1?}; failures by kind (first attempts, and resends that failed too): {kinds:?}",
        CUT_AFTER,
        sent.len()
    );
    eprintln!(
        "rastru failover: {}",
        shares(sent.len(), first_failed, failed)
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
        first_failed,
        failed,
        cut_at,
    })
}

/// The figures of `sent` transfers: how many failed on their first attempt and after the
/// client's resend, with their shares.
pub fn shares(sent: usize, first_failed: usize, failed: usize) -> String {
    let share = |n: usize| 100.0 * n as f64 / sent.max(1) as f64;
    format!(
        "{first_failed} of {sent} requests failed on their first attempt ({:.2} %); {failed} still failed after the client's resend ({:.2} %)",
        share(first_failed),
        share(failed)
    )
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
