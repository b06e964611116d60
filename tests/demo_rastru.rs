//! `texu demo` as the README runs it: the default Rastru stack (two Apache proxies, three
//! texu-exchange replicas, a three-member Cassandra ring) on three boards of this machine, from
//! start to Ctrl-C. It checks the progress while the ring forms one member at a time, runs every
//! line the demo prints for a user to copy (through `sh` and the real curl), and that SIGINT
//! leaves nothing behind.
//!
//! Needs root, LXC, Apache, Java 17, the Cassandra install and /usr/local/bin/texu-exchange
//! (scripts/setup.sh and scripts/demo.sh install them) and fails, never skips, without them. The
//! demo has one fixed slot on a machine: this binary runs after tests/cluster.rs's demo test,
//! never beside it. Traffic stays on loopback and in 198.18.0.0/15.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use texu::cluster::fixtures::{demo_container_inits, DemoRun};

/// How long the stack may take to be ready on a loaded 2-core machine (the demo's own limit is
/// 7 minutes; the target on an idle one is under 3).
const READY_WITHIN: Duration = Duration::from_secs(480);

/// The `ready in N s` figure of the demo's line `texu demo: ready in 142.3s`.
fn ready_seconds(output: &[String]) -> Option<f64> {
    output.iter().find_map(|l| {
        l.strip_prefix("texu demo: ready in ")?
            .strip_suffix('s')?
            .parse()
            .ok()
    })
}

/// The `K` of each progress line's `cassandra K/3 Ready`, in order.
fn ring_progress(output: &[String]) -> Vec<usize> {
    output
        .iter()
        .filter(|l| l.starts_with("texu demo: boards "))
        .filter_map(|l| {
            let (_, after) = l.split_once("; cassandra ")?;
            after.split_once("/3 Ready")?.0.parse().ok()
        })
        .collect()
}

/// Runs `script` in `sh` (bounded), as a user pasting it would; its standard output.
fn sh(script: &str) -> Result<String> {
    let out = Command::new("timeout")
        .args(["120", "sh", "-c", script])
        .output()
        .context("cannot run sh")?;
    ensure!(
        out.status.success(),
        "`{script}` failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The JSON document a printed line answered.
fn json(line: &str, answer: &str) -> Result<Value> {
    serde_json::from_str(answer.trim()).with_context(|| format!("`{line}` answered {answer:?}"))
}

#[test]
fn the_readme_demo_forms_the_ring_serves_its_printed_curls_and_ctrl_c_leaves_nothing() -> Result<()>
{
    texu::cluster::preflight()?;
    let started = Instant::now();
    // Exactly `texu demo`, as the README's quick start runs it.
    let mut demo = DemoRun::start(std::path::Path::new(env!("CARGO_BIN_EXE_texu")), &[])?;
    let output = demo.wait_for("texu demo: running", READY_WITHIN)?.to_vec();
    let text = output.join("\n");
    let ready = ready_seconds(&output).with_context(|| format!("no 'ready in' line:\n{text}"))?;
    eprintln!(
        "texu demo (rastru, 3 boards): ready in {ready:.1}s; the running line after {:.1?}",
        started.elapsed()
    );

    // The ring forms one member at a time, and the progress lines say so.
    let ring = ring_progress(&output);
    let first = |k: usize| ring.iter().position(|&n| n == k);
    let (one, two, three) = (first(1), first(2), first(3));
    ensure!(
        one.is_some() && one < two && two < three,
        "the progress did not show cassandra 1/3, 2/3 and 3/3 Ready in order ({ring:?}):\n{text}"
    );
    ensure!(
        text.contains("Nodes:       3/3 ready"),
        "no status with 3 ready boards:\n{text}"
    );

    // Every container's line: a curl for the proxies and the exchange, an address for Cassandra.
    let curls: Vec<&str> = output
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.starts_with("curl http://"))
        .collect();
    let cql = output
        .iter()
        .filter(|l| l.trim().starts_with("# cassandra-") && l.contains(": cql "))
        .count();
    let inits = demo_container_inits();
    ensure!(
        curls.len() == 5 && cql == 3 && inits.len() == 8,
        "expected 5 curl lines (2 proxies, 3 replicas), 3 Cassandra members and 8 containers; \
         got {} curls, {cql} members, {} containers:\n{text}",
        curls.len(),
        inits.len()
    );
    for line in &curls {
        // A replica's line is its readiness path; a proxy's asks a replica through the balancer.
        let answer = sh(line)?;
        ensure!(answer.trim() == "ready", "`{line}` answered {answer:?}");
    }

    // The exchange lines, pasted in order into one shell: each answer checked.
    let lines: Vec<&str> = output
        .iter()
        .filter_map(|l| l.trim().strip_prefix("$ "))
        .collect();
    ensure!(lines.len() == 8, "expected 8 exchange lines:\n{text}");
    let mut script = String::new();
    for (i, line) in lines.iter().enumerate() {
        script.push_str(&format!(
            "{line}\nrc=$?; echo; echo \"@@ {i} $rc\"; [ $rc = 0 ] || exit 1\n"
        ));
    }
    script.push_str("echo \"@@ members $A $B\"\n");
    let out = sh(&script)?;
    let mut answers = vec![String::new(); lines.len()];
    let mut current = String::new();
    let mut members = None;
    for l in out.lines() {
        if let Some(rest) = l.strip_prefix("@@ ") {
            if let Some(ids) = rest.strip_prefix("members ") {
                members = Some(ids.to_string());
            } else if let Some(i) = rest.split(' ').next().and_then(|i| i.parse::<usize>().ok()) {
                answers[i] = std::mem::take(&mut current);
            }
        } else {
            current.push_str(l);
        }
    }
    let members = members.unwrap_or_default();
    ensure!(
        members.split_whitespace().count() == 2,
        "the two member lines set no ids ({members:?}):\n{out}"
    );
    for (i, code) in [(3, "ana"), (4, "ben")] {
        let account = json(lines[i], &answers[i])?;
        ensure!(
            account["code"] == code && account["balance"] == 0,
            "`{}` answered {account}",
            lines[i]
        );
    }
    let transfer = json(lines[5], &answers[5])?;
    ensure!(
        transfer["state"] == "committed" && transfer["amount"] == 120,
        "the transfer answered {transfer}"
    );
    let statement = json(lines[6], &answers[6])?;
    ensure!(
        statement["account"] == "ben"
            && statement["balance"] == 120
            && statement["entries"][0]["amount"] == 120
            && statement["entries"][0]["description"] == "bread",
        "the statement answered {statement}"
    );
    let audit = json(lines[7], &answers[7])?;
    ensure!(
        audit["ok"] == true && audit["accounts"] == 2 && audit["committed"] == 1,
        "the audit answered {audit}"
    );

    // Ctrl-C: the members drain and stop, then the boards go, and nothing is left.
    let stopping = Instant::now();
    demo.interrupt_and_check(Duration::from_secs(180), &inits)?;
    eprintln!("texu demo stopped {:.1?} after SIGINT", stopping.elapsed());
    Ok(())
}
