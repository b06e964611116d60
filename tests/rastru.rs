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
//!    ledger is intact (the statement and `/v1/audit`).
//!
//! Needs root, LXC, Java 17 and the Cassandra install (scripts/setup.sh), Apache httpd and
//! /usr/local/bin/texu-exchange (scripts/test.sh installs it); fails, never skips, without
//! them. Three to four JVMs with a 384M heap each. Traffic stays in 198.18.0.0/15.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use texu::cluster::{Cluster, ClusterConfig};
use texu_api::{Container, ContainerPhase, EventKind};

const TOKEN: &str = "texu-admin-rastru-demo";

fn texu_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_texu"))
}

fn stack_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/demo/rastru")
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

fn containers(c: &Cluster, role: &str) -> Result<Vec<Container>> {
    let mut cs: Vec<Container> = c
        .api()
        .containers()?
        .into_iter()
        .filter(|x| x.spec.role == role)
        .collect();
    cs.sort_by_key(|x| x.spec.ordinal);
    Ok(cs)
}

fn is_ready(c: &Container) -> bool {
    c.status.as_ref().map(|s| s.phase) == Some(ContainerPhase::Ready)
}

fn board_of(c: &Cluster, container: &Container) -> Result<usize> {
    let node = container.spec.node.as_deref().context("not bound")?;
    c.plan()
        .board_numbers()
        .find(|b| c.plan().node_name(*b) == node)
        .with_context(|| format!("no board named {node}"))
}

/// `texu-nodetool ARGS` inside member `name`.
fn nodetool(c: &Cluster, name: &str, args: &[&str]) -> Result<String> {
    let member = containers(c, "cassandra")?
        .into_iter()
        .find(|m| m.metadata.name == name)
        .with_context(|| format!("no member {name}"))?;
    let mut argv = vec!["/usr/local/bin/texu-nodetool"];
    argv.extend_from_slice(args);
    let out = c.exec_in_container(board_of(c, &member)?, name, &argv)?;
    ensure!(
        out.status.success(),
        "nodetool {args:?} in {name}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `UN` lines of `nodetool status [KEYSPACE]`.
fn up_normal(status: &str) -> Vec<String> {
    status
        .lines()
        .filter(|l| l.starts_with("UN "))
        .map(str::to_owned)
        .collect()
}

/// Waits until `nodetool status` inside `name` shows `n` members, all UN.
fn wait_ring(c: &Cluster, name: &str, n: usize, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(status) = nodetool(c, name, &["status"]) {
            let members = status
                .lines()
                .filter(|l| {
                    l.len() > 3 && l.as_bytes()[0].is_ascii_uppercase() && l.as_bytes()[2] == b' '
                })
                .count();
            if up_normal(&status).len() == n && members == n {
                return Ok(status);
            }
            last = status;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    bail!("the ring never showed {n} UN members; last nodetool status:\n{last}")
}

/// The exchange through proxy `proxy` (`ADDRESS:PORT`), as the admin.
struct Exchange {
    base: String,
}

impl Exchange {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let req = ureq::request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .timeout(Duration::from_secs(10));
        let answer = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        let resp = match answer {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => bail!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let text = resp.into_string()?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// `call`, retried (20 times, 1 s apart) on a 5xx or no answer: a ring that has just
    /// formed on a busy machine may time a lightweight transaction out at first. Every write
    /// here carries its own id or creates something new, so a retry is safe.
    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let mut last = String::new();
        for _ in 0..20 {
            match self.call(method, path, body.clone()) {
                Ok((status, v)) if (200..300).contains(&status) => return Ok(v),
                Ok((status, v)) if status < 500 => bail!("{method} {path}: {status} {v}"),
                Ok((status, v)) => last = format!("{status} {v}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        bail!("{method} {path}: still failing after 20 tries: {last}")
    }
}

fn proxy(c: &Cluster) -> Result<Exchange> {
    let p = containers(c, "proxy")?
        .into_iter()
        .find(is_ready)
        .context("no Ready proxy")?;
    let address = p.status.and_then(|s| s.address).context("no address")?;
    Ok(Exchange {
        base: format!("http://{address}:80"),
    })
}

/// Creates `n` members with one account each (`acct-0`, ...), through the proxy.
fn open_accounts(ex: &Exchange, n: usize) -> Result<Vec<String>> {
    let mut codes = Vec::new();
    for i in 0..n {
        let member = ex.ok(
            "POST",
            "/v1/members",
            Some(json!({"name": format!("m{i}")})),
        )?;
        let id = member["id"].as_str().context("member id")?.to_string();
        let code = format!("acct-{i}");
        ex.ok(
            "POST",
            "/v1/accounts",
            Some(json!({"member": id, "creditLimit": -100000, "code": code})),
        )?;
        codes.push(code);
    }
    Ok(codes)
}

/// Transfers `count` times 1 unit round the accounts, each with its own id; the ids
/// acknowledged (201).
fn transfer(ex: &Exchange, codes: &[String], tag: &str, count: usize) -> Result<Vec<String>> {
    let mut acked = Vec::new();
    for i in 0..count {
        let id = format!("{tag}-{i}");
        let (payer, payee) = (&codes[i % codes.len()], &codes[(i + 1) % codes.len()]);
        let body = json!({"id": id, "payer": payer, "payee": payee, "amount": 1});
        // The id makes a retry safe: the same transfer again answers its first outcome.
        if ex.ok("POST", "/v1/transfers", Some(body)).is_ok() {
            acked.push(id);
        }
    }
    Ok(acked)
}

/// Every acknowledged transfer is there, committed, and the audit passes.
fn ledger_intact(ex: &Exchange, acked: &[String]) -> Result<Value> {
    for id in acked {
        let t = ex.ok("GET", &format!("/v1/transfers/{id}"), None)?;
        ensure!(t["state"] == "committed", "transfer {id}: {t}");
    }
    let audit = ex.ok("GET", "/v1/audit", None)?;
    ensure!(audit["ok"] == true, "audit failed: {audit}");
    ensure!(
        audit["committed"].as_u64() == Some(acked.len() as u64),
        "audit counts {} committed, {} were acknowledged: {audit}",
        audit["committed"],
        acked.len()
    );
    Ok(audit)
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

#[test]
fn the_rastru_ring_forms_in_order_serves_the_exchange_and_scales_through_pre_stop() -> Result<()> {
    require_install()?;
    let mut config = ClusterConfig::new(4, texu_bin());
    config.host_routes = true;
    let c = Cluster::start(config).context("cannot start a 4-board cluster")?;
    let started = Instant::now();
    c.apply(&stack_dir())?;

    // 1. In order: the first time member k shows up, every member before it is Ready.
    let mut first_seen: BTreeMap<i64, Vec<bool>> = BTreeMap::new();
    let deadline = started + Duration::from_secs(480);
    loop {
        let members = containers(&c, "cassandra")?;
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
    let status = wait_ring(&c, "cassandra-0", 3, Duration::from_secs(60))?;
    ensure!(up_normal(&status).len() == 3, "{status}");

    let ex = proxy(&c)?;
    let codes = open_accounts(&ex, 4)?;
    let mut acked = transfer(&ex, &codes, "first", 40)?;
    ensure!(
        acked.len() == 40,
        "only {} of 40 transfers acknowledged",
        acked.len()
    );
    // Replication factor 3 on three members: each owns all of the keyspace.
    let owned = nodetool(&c, "cassandra-1", &["status", "rastru"])?;
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
    ledger_intact(&ex, &acked)?;

    // 2. Scale 3 -> 4: the fourth member joins the ring.
    apply_replicas(&c, 4)?;
    c.wait_until(Duration::from_secs(240), "cassandra-3 Ready", || {
        containers(&c, "cassandra")
            .ok()
            .filter(|ms| ms.len() == 4 && ms.iter().all(is_ready))
    })?;
    wait_ring(&c, "cassandra-0", 4, Duration::from_secs(60))?;
    acked.extend(transfer(&ex, &codes, "four", 20)?);

    // ... and 4 -> 3: decommissioned by its preStop hook before it stops, then removed.
    let asked = Instant::now();
    apply_replicas(&c, 3)?;
    c.wait_until(Duration::from_secs(300), "cassandra-3 removed", || {
        containers(&c, "cassandra").ok().filter(|ms| ms.len() == 3)
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
    let status = wait_ring(&c, "cassandra-0", 3, Duration::from_secs(60))?;
    ensure!(
        !status.contains("DN ") && !status.contains("UL "),
        "the ring still lists the decommissioned member:\n{status}"
    );
    acked.extend(transfer(&ex, &codes, "three", 20)?);
    let audit = ledger_intact(&ex, &acked)?;
    eprintln!("ledger after 3 -> 4 -> 3: {audit}");
    c.teardown()?;
    Ok(())
}
