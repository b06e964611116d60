//! The Rastru stack of `texu demo` (manifests/demo/rastru/) end to end on the board harness:
//! real Apache Cassandra 5.0 members, real Apache httpd proxies, the exchange and real LXC
//! containers on boards that are network namespaces. One cluster, sequential steps, because
//! every step needs the ring the previous one left:
//!
//! 1. the ring forms in order (a member is created only once those before it are Ready),
//!    `nodetool status` inside a member shows three UN, the keyspace has replication factor 3
//!    (each member owns 100 % of it), and the exchange serves transfers through a proxy;
//! 2. scale 3 -> 4 -> 3: the fourth member joins (four UN), then is decommissioned by its
//!    `preStop` hook before it stops (events say so), the ring is back to three UN, and the
//!    ledger is intact (the statement and `/v1/audit`);
//! 3. a board holding a Cassandra member and an app replica loses power under a bounded
//!    transfer load through a proxy: every acknowledged transfer is in exactly once, the audit
//!    passes, and the failed shares are printed, of first attempts and after each client's one
//!    resend with the same id (`RASTRU_FAILOVER_ROUNDS=N` repeats this N times,
//!    powering the board on between rounds; benches/rastru_failover.sh runs 3);
//! 4. the member on that board stays `Lost`; `texu replace` starts it on the spare board with
//!    `replace_address_first_boot`, the ring is three UN again, the counts are unchanged, and
//!    when the old board comes back its copy is removed, never started;
//! 5. cold restarts: every agent and the controller killed and started again, then every
//!    board powered off and on with the controller: the ring comes back with its data.
//!
//! Needs root, LXC, Java 17 and the Cassandra install (scripts/setup.sh), Apache httpd and
//! /usr/local/bin/texu-exchange (scripts/test.sh installs it); fails, never skips, without
//! them. Three to four JVMs with a 384M heap each. Traffic stays in 198.18.0.0/15.

#[path = "rastru/failover.rs"]
mod failover;
#[path = "rastru/lost.rs"]
mod lost;
#[path = "rastru/restart.rs"]
mod restart;
#[path = "rastru/ring.rs"]
mod ring;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use texu::cluster::{Cluster, ClusterConfig};
use texu_api::EventKind;

use restart::Cold;
use ring::{containers, is_ready, nodetool, stack_dir, up_normal, wait_ring};

fn texu_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_texu"))
}

/// Fails naming what the stack needs and this machine lacks.
fn require_install() -> Result<()> {
    for (path, what) in [
        ("/usr/local/bin/texu-exchange", "run scripts/test.sh, or `cargo build -p texu-exchange && install -m 0755 target/debug/texu-exchange /usr/local/bin/`"),
        ("/usr/local/bin/texu-cassandra", "run scripts/setup.sh (Cassandra's jars and launchers)"),
        ("/usr/local/share/texu-cassandra/lib", "run scripts/setup.sh (Cassandra's jars)"),
        ("/usr/bin/java", "run scripts/setup.sh (openjdk-17-jre-headless)"),
        ("/usr/sbin/apache2", "run scripts/setup.sh (apache2)"),
    ] {
        ensure!(Path::new(path).exists(), "{path} is missing: {what}");
    }
    Ok(())
}

fn apply_replicas(c: &Cluster, replicas: usize) -> Result<()> {
    let text = std::fs::read_to_string(stack_dir().join("cassandra.yaml"))?;
    let scaled = text.replacen("replicas: 3\n", &format!("replicas: {replicas}\n"), 1);
    ensure!(
        scaled != text || replicas == 3,
        "no replicas line to change"
    );
    c.apply_yaml(&scaled)?;
    Ok(())
}

/// How many failover rounds step 3 runs: `RASTRU_FAILOVER_ROUNDS` (1 to 10), default 1.
fn failover_rounds() -> Result<usize> {
    match std::env::var("RASTRU_FAILOVER_ROUNDS") {
        Err(_) => Ok(1),
        Ok(v) => v
            .parse()
            .ok()
            .filter(|n| (1..=10).contains(n))
            .with_context(|| format!("RASTRU_FAILOVER_ROUNDS={v:?}: want 1 to 10")),
    }
}

#[test]
fn the_rastru_ring_forms_scales_and_survives_a_power_cut_a_replace_and_cold_restarts() -> Result<()>
{
    require_install()?;
    let mut config = ClusterConfig::new(4, texu_bin());
    config.host_routes = true;
    let mut c = Cluster::start(config).context("cannot start a 4-board cluster")?;
    if let Err(e) = steps(&mut c) {
        keep_logs(&c);
        return Err(e);
    }
    c.teardown()?;
    Ok(())
}

/// After a failure: the cluster's state, its events and every log copied to
/// /tmp/texu-rastru-logs/ (the cluster's own directory goes with it).
fn keep_logs(c: &Cluster) {
    let keep = Path::new("/tmp/texu-rastru-logs");
    let _ = std::fs::remove_dir_all(keep);
    let _ = std::fs::create_dir_all(keep);
    if let Ok(dir) = std::fs::read_dir(c.plan().dir().join("logs")) {
        for f in dir.flatten() {
            let _ = std::fs::copy(f.path(), keep.join(f.file_name()));
        }
    }
    let events = c.texu(&["events"]).map(|o| o.stdout).unwrap_or_default();
    let _ = std::fs::write(keep.join("events.txt"), events);
    let _ = std::fs::write(keep.join("members.txt"), ring::members_report(c));
    eprintln!(
        "the cluster's logs, events and members kept in {}",
        keep.display()
    );
}

fn steps(c: &mut Cluster) -> Result<()> {
    let started = Instant::now();
    c.apply(&stack_dir())?;

    // 1. In order: the first time member k shows up, every member before it is Ready.
    let mut first_seen: BTreeMap<i64, Vec<bool>> = BTreeMap::new();
    let deadline = started + Duration::from_secs(480);
    loop {
        let members = containers(c, "cassandra")?;
        for m in &members {
            first_seen.entry(m.spec.ordinal).or_insert_with(|| {
                members
                    .iter()
                    .filter(|e| e.spec.ordinal < m.spec.ordinal)
                    .map(is_ready)
                    .collect()
            });
        }
        if members.len() == 3 && members.iter().all(is_ready) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the ring was not Ready after 480s: {:?}\n{}",
            members
                .iter()
                .map(|m| (&m.metadata.name, m.status.clone()))
                .collect::<Vec<_>>(),
            c.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for (ordinal, before) in &first_seen {
        ensure!(
            before.len() == *ordinal as usize && before.iter().all(|r| *r),
            "cassandra-{ordinal} was created before those below it were Ready: {before:?}"
        );
    }
    let ring_ready = started.elapsed();
    c.wait_ready(Duration::from_secs(180))?;
    eprintln!(
        "rastru stack: ring Ready after {ring_ready:.1?}, everything after {:.1?}",
        started.elapsed()
    );
    let status = wait_ring(c, 3, Duration::from_secs(60))?;
    ensure!(up_normal(&status).len() == 3, "{status}");

    let ex = ring::proxy(c, 0)?;
    let codes = ring::open_accounts(&ex, "acct", 4)?;
    let mut acked = ring::transfer(&ex, &codes, "first", 40);
    ensure!(
        acked.len() == 40,
        "only {} of 40 transfers acknowledged",
        acked.len()
    );
    // Replication factor 3 on three members: each owns all of the keyspace.
    let owned = nodetool(c, "cassandra-1", &["status", "rastru"])?;
    let full = up_normal(&owned)
        .iter()
        .filter(|l| l.contains("100.0%"))
        .count();
    ensure!(full == 3, "rastru is not replicated 3 times:\n{owned}");
    let statement = ex.ok("GET", "/v1/accounts/acct-1/statement", None)?;
    ensure!(
        statement["entries"]
            .as_array()
            .is_some_and(|e| e.len() == 20),
        "acct-1's statement: {statement}"
    );
    ring::ledger_intact(&ex, &acked, 0)?;

    // 2. Scale 3 -> 4: the fourth member joins the ring.
    apply_replicas(c, 4)?;
    c.wait_until(Duration::from_secs(240), "cassandra-3 Ready", || {
        containers(c, "cassandra")
            .ok()
            .filter(|ms| ms.len() == 4 && ms.iter().all(is_ready))
    })?;
    wait_ring(c, 4, Duration::from_secs(60))?;
    acked.extend(ring::transfer(&ex, &codes, "four", 20));

    // ... and 4 -> 3: decommissioned by its preStop hook before it stops, then removed.
    let asked = Instant::now();
    apply_replicas(c, 3)?;
    c.wait_until(Duration::from_secs(300), "cassandra-3 removed", || {
        containers(c, "cassandra").ok().filter(|ms| ms.len() == 3)
    })?;
    eprintln!(
        "cassandra-3 decommissioned and removed in {:.1?}",
        asked.elapsed()
    );
    let list: Value = serde_json::from_str(&c.texu_ok(&["events", "-o", "json"])?)?;
    let events: Vec<texu_api::Event> = serde_json::from_value(list["items"].clone())?;
    let said = |kind: EventKind| {
        events
            .iter()
            .find(|e| e.kind == kind && e.object == "container/cassandra-3")
            .map(|e| e.message.clone())
    };
    let stopping = said(EventKind::Stopping).context("no Stopping event for cassandra-3")?;
    ensure!(stopping.contains("decommission"), "{stopping}");
    let removed = said(EventKind::Removed).context("no Removed event for cassandra-3")?;
    ensure!(
        removed.contains("texu-nodetool decommission\" exited 0"),
        "the hook did not succeed: {removed}"
    );
    let status = wait_ring(c, 3, Duration::from_secs(60))?;
    ensure!(
        !status.contains("DN ") && !status.contains("UL "),
        "the ring still lists the decommissioned member:\n{status}"
    );
    acked.extend(ring::transfer(&ex, &codes, "three", 20));
    let audit = ring::ledger_intact(&ex, &acked, 0)?;
    eprintln!(
        "ledger after 3 -> 4 -> 3: {audit}; steps 1-2 took {:.1?}",
        started.elapsed()
    );

    // 3. Power cuts under load; the last round's board stays off for step 4.
    let mut committed = acked.len();
    let rounds = failover_rounds()?;
    let (mut sent, mut first_failed, mut failed) = (0, 0, 0);
    let mut last = None;
    for round in 1..=rounds {
        let step = Instant::now();
        let r = failover::round(c, round, &mut committed)?;
        (sent, first_failed, failed) = (
            sent + r.sent,
            first_failed + r.first_failed,
            failed + r.failed,
        );
        eprintln!("step 3 round {round} took {:.1?}", step.elapsed());
        if round < rounds {
            failover::heal(c, r.board)?;
        }
        last = Some(r);
    }
    let last = last.context("no failover round ran")?;
    eprintln!(
        "rastru failover over {rounds} round(s): {}",
        failover::shares(sent, first_failed, failed)
    );

    // 4. The lost member stays Lost; texu replace moves it; the old board comes back.
    let step = Instant::now();
    lost::stays_lost_then_replaced(c, &last, committed)?;
    eprintln!("step 4 took {:.1?}", step.elapsed());

    // 5. Cold restarts: processes only, then whole boards.
    for how in [Cold::Processes, Cold::Boards] {
        let step = Instant::now();
        restart::restart(c, how, &mut committed)?;
        eprintln!("step 5 ({how:?}) took {:.1?}", step.elapsed());
    }
    eprintln!("rastru test: every step done in {:.1?}", started.elapsed());
    Ok(())
}
