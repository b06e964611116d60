//! What the Rastru test reads and does to the ring and the exchange: members and their boards,
//! `nodetool` inside a member, the exchange through a proxy, and the ledger's invariants.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use texu::cluster::Cluster;
use texu_api::{Container, ContainerPhase, NodePhase};

/// The demo's admin token of the exchange (written in its manifests).
pub const TOKEN: &str = "texu-admin-rastru-demo";

pub fn stack_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/demo/rastru")
}

pub fn containers(c: &Cluster, role: &str) -> Result<Vec<Container>> {
    let mut cs: Vec<Container> = c
        .api()
        .containers()?
        .into_iter()
        .filter(|x| x.spec.role == role)
        .collect();
    cs.sort_by_key(|x| x.spec.ordinal);
    Ok(cs)
}

pub fn phase(c: &Container) -> Option<ContainerPhase> {
    c.status.as_ref().map(|s| s.phase)
}

pub fn is_ready(c: &Container) -> bool {
    phase(c) == Some(ContainerPhase::Ready)
}

pub fn address(c: &Container) -> Result<String> {
    c.status
        .as_ref()
        .and_then(|s| s.address.clone())
        .with_context(|| format!("{} has no address", c.metadata.name))
}

/// The board number of node `node`.
pub fn board_named(c: &Cluster, node: &str) -> Result<usize> {
    c.plan()
        .board_numbers()
        .find(|b| c.plan().node_name(*b) == node)
        .with_context(|| format!("no board named {node}"))
}

pub fn board_of(c: &Cluster, container: &Container) -> Result<usize> {
    board_named(c, container.spec.node.as_deref().context("not bound")?)
}

/// The boards (numbers) holding a container of `role`.
pub fn boards_of(c: &Cluster, role: &str) -> Result<Vec<usize>> {
    containers(c, role)?
        .iter()
        .map(|x| board_of(c, x))
        .collect()
}

/// The phase of board `board`'s Node.
pub fn node_phase(c: &Cluster, board: usize) -> Option<NodePhase> {
    let name = c.plan().node_name(board);
    c.api()
        .nodes()
        .ok()?
        .into_iter()
        .find(|n| n.metadata.name == name)
        .and_then(|n| n.status.map(|s| s.phase))
}

pub fn wait_node(c: &Cluster, board: usize, want: NodePhase, timeout: Duration) -> Result<()> {
    c.wait_until(
        timeout,
        &format!("{} {want:?}", c.plan().node_name(board)),
        || (node_phase(c, board) == Some(want)).then_some(()),
    )?;
    Ok(())
}

/// `texu-nodetool ARGS` inside member `name`.
pub fn nodetool(c: &Cluster, name: &str, args: &[&str]) -> Result<String> {
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
pub fn up_normal(status: &str) -> Vec<String> {
    status
        .lines()
        .filter(|l| l.starts_with("UN "))
        .map(str::to_owned)
        .collect()
}

/// Waits until `nodetool status` inside a Ready member (other than on board `avoid`) shows `n`
/// members, all UN.
pub fn wait_ring(c: &Cluster, n: usize, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        let ready: Vec<String> = containers(c, "cassandra")?
            .into_iter()
            .filter(is_ready)
            .map(|m| m.metadata.name)
            .collect();
        for name in &ready {
            match nodetool(c, name, &["status"]) {
                Ok(status) => {
                    let members = status
                        .lines()
                        .filter(|l| {
                            l.len() > 3
                                && l.as_bytes()[0].is_ascii_uppercase()
                                && l.as_bytes()[2] == b' '
                        })
                        .count();
                    if up_normal(&status).len() == n && members == n {
                        return Ok(status);
                    }
                    last = format!("in {name}:\n{status}");
                    break;
                }
                Err(e) => last = format!("in {name}: {e:#}"),
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    bail!("the ring never showed {n} UN members; last nodetool status {last}")
}

/// The exchange through one proxy, as the admin.
#[derive(Clone)]
pub struct Exchange {
    pub base: String,
}

impl Exchange {
    /// One request, no retry: its status and body, or why there was no answer.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
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
            Err(e) => return Err(anyhow::Error::new(e).context(format!("{method} {path}"))),
        };
        let status = resp.status();
        let text = resp.into_string()?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// `call`, retried (20 times, 1 s apart) on a 5xx or no answer: a ring that has just
    /// formed (or lost a member) on a busy machine may time a lightweight transaction out.
    /// Every write here carries its own id or creates something new, so a retry is safe.
    pub fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let mut last = String::new();
        for _ in 0..20 {
            match self.call(method, path, body.as_ref()) {
                Ok((status, v)) if (200..300).contains(&status) => return Ok(v),
                Ok((status, v)) if status < 500 => bail!("{method} {path}: {status} {v}"),
                Ok((status, v)) => last = format!("{status} {v}"),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        bail!("{method} {path}: still failing after 20 tries: {last}")
    }
}

/// The exchange through a Ready proxy that is not on board `avoid` (0: any).
pub fn proxy(c: &Cluster, avoid: usize) -> Result<Exchange> {
    let mut ready = Vec::new();
    for p in containers(c, "proxy")?.into_iter().filter(is_ready) {
        if board_of(c, &p)? != avoid {
            ready.push(p);
        }
    }
    let p = ready.first().context("no Ready proxy")?;
    Ok(Exchange {
        base: format!("http://{}:80", address(p)?),
    })
}

/// Creates `n` members with one account each (`PREFIX-0`, ...), through the proxy.
pub fn open_accounts(ex: &Exchange, prefix: &str, n: usize) -> Result<Vec<String>> {
    let mut codes = Vec::new();
    for i in 0..n {
        let code = format!("{prefix}-{i}");
        let member = ex.ok("POST", "/v1/members", Some(json!({ "name": code })))?;
        let id = member["id"].as_str().context("member id")?.to_string();
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
/// acknowledged.
pub fn transfer(ex: &Exchange, codes: &[String], tag: &str, count: usize) -> Vec<String> {
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
    acked
}

/// Waits (up to `timeout`) until `/v1/audit` passes with nothing in flight (the exchange's
/// recovery pass finishes what a failed request left), and checks it counts `committed`
/// committed transfers when given.
pub fn audit(ex: &Exchange, committed: Option<usize>, timeout: Duration) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let audit = ex.ok("GET", "/v1/audit", None)?;
        if audit["ok"] == true {
            if let Some(want) = committed {
                ensure!(
                    audit["committed"].as_u64() == Some(want as u64),
                    "audit counts {} committed, {want} expected: {audit}",
                    audit["committed"],
                );
            }
            return Ok(audit);
        }
        ensure!(
            Instant::now() < deadline,
            "the audit still fails after {timeout:?}: {audit}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The ledger's state: every account's `(code, balance, entries)`, in order.
pub fn counts(ex: &Exchange) -> Result<Vec<(String, i64, u64)>> {
    let list = ex.ok("GET", "/v1/accounts", None)?;
    let items = list["accounts"]
        .as_array()
        .with_context(|| format!("no accounts list: {list}"))?;
    let mut out: Vec<(String, i64, u64)> = items
        .iter()
        .map(|a| {
            (
                a["code"].as_str().unwrap_or_default().to_string(),
                a["balance"].as_i64().unwrap_or(i64::MIN),
                a["entries"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Every acknowledged transfer of `acked` is there, committed, and the audit passes counting
/// `acked` and `more` other committed transfers (checked elsewhere).
pub fn ledger_intact(ex: &Exchange, acked: &[String], more: usize) -> Result<Value> {
    for id in acked {
        let t = ex.ok("GET", &format!("/v1/transfers/{id}"), None)?;
        ensure!(t["state"] == "committed", "transfer {id}: {t}");
    }
    audit(ex, Some(acked.len() + more), Duration::from_secs(120))
}

/// What each member shows (phase, board, init pid, the end of its system.log) and the
/// cluster's diagnostics: for a failure message.
pub fn members_report(c: &Cluster) -> String {
    let mut out = String::new();
    for m in containers(c, "cassandra").unwrap_or_default() {
        let name = &m.metadata.name;
        let board = board_of(c, &m).unwrap_or(0);
        let pid = c.container_init_pid(board, name);
        out.push_str(&format!(
            "== {name} on board {board}, init {pid:?}, status {:?}\n",
            m.status
        ));
        if pid.is_some() {
            let argv = [
                "/bin/sh",
                "-c",
                "cat /run/cassandra/node.env; tail -n 25 /var/lib/cassandra/logs/system.log",
            ];
            if let Ok(o) = c.exec_in_container(board, name, &argv) {
                out.push_str(&String::from_utf8_lossy(&o.stdout));
            }
        }
    }
    out.push_str(&c.diagnostics());
    out
}

/// Waits (up to `timeout`) until a Ready proxy answers `/v1/audit`: the exchange through it.
pub fn wait_serving(c: &Cluster, timeout: Duration) -> Result<Exchange> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match proxy(c, 0) {
            Ok(ex) => match ex.call("GET", "/v1/audit", None) {
                Ok((200, _)) => return Ok(ex),
                Ok((status, v)) => last = format!("{status} {v}"),
                Err(e) => last = format!("{e:#}"),
            },
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    bail!("the exchange did not serve within {timeout:?}: {last}")
}
