//! `texu demo` with the quick `web` stack on two boards, from start to Ctrl-C: it gets ready,
//! its printed curl lines work from the host, and SIGINT leaves nothing behind.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use texu::cluster;
use texu::cluster::fixtures::{demo_container_inits, DemoRun};

use super::texu_bin;

#[test]
fn the_demo_gets_ready_and_ctrl_c_leaves_nothing_behind() -> Result<()> {
    cluster::preflight()?;
    let started = Instant::now();
    // The quick stack: this test is about the demo's life (ready, curl, Ctrl-C); the default
    // Rastru stack has its own test in tests/demo_rastru.rs.
    let mut demo = DemoRun::start(&texu_bin(), &["--boards", "2", "--stack", "web"])?;
    // Ready, then everything up to the "running" line (status and what to curl).
    let text = demo
        .wait_for("texu demo: running", Duration::from_secs(90))?
        .join("\n");
    let ready_after = started.elapsed();
    eprintln!("texu demo --boards 2 was ready after {ready_after:.1?}");
    ensure!(
        text.contains("Nodes:       2/2 ready"),
        "no status with 2 ready boards:\n{text}"
    );
    let url = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("curl ")?.split_whitespace().next())
        .with_context(|| format!("no curl line:\n{text}"))?
        .to_string();
    // The host routes to every board's containers, so the printed command works from here.
    let body = ureq::get(&url)
        .timeout(Duration::from_secs(2))
        .call()?
        .into_string()?;
    ensure!(!body.trim().is_empty(), "{url} answered nothing");
    // A curl line per ready container, and each of those runs on a board.
    let printed = text
        .lines()
        .filter(|l| l.trim().starts_with("curl "))
        .count();
    let inits = demo_container_inits();
    ensure!(
        printed > 0 && inits.len() == printed,
        "the demo printed {printed} containers, {} run:\n{text}",
        inits.len()
    );

    demo.interrupt_and_check(Duration::from_secs(30), &inits)?;
    Ok(())
}
