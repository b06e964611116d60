//! Step 5 of the Rastru test: cold restarts. First every agent and the controller are killed
//! (SIGKILL) and started again while the containers keep running; then every board loses power
//! (its containers die with it) and the controller is killed, and all come back. Each time the
//! ring comes back with three UN members and the ledger counts what it counted before, and the
//! exchange takes transfers again.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use texu::cluster::Cluster;
use texu_api::NodePhase;

use super::ring;

/// Which cold restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cold {
    /// Agents and controller killed; containers keep running.
    Processes,
    /// Every board powered off and on, and the controller killed: nothing keeps running.
    Boards,
}

/// The init pids of the Cassandra members, by name.
fn member_pids(c: &Cluster) -> Result<Vec<(String, Option<u32>)>> {
    let mut out = Vec::new();
    for m in ring::containers(c, "cassandra")? {
        let board = ring::board_of(c, &m)?;
        out.push((
            m.metadata.name.clone(),
            c.container_init_pid(board, &m.metadata.name),
        ));
    }
    Ok(out)
}

/// One cold restart; `committed` grows by the transfers made afterwards.
pub fn restart(c: &mut Cluster, how: Cold, committed: &mut usize) -> Result<()> {
    let ex = ring::proxy(c, 0)?;
    let before = ring::counts(&ex)?;
    let pids = member_pids(c)?;
    let boards: Vec<usize> = c.plan().board_numbers().collect();
    let started = Instant::now();
    for &b in &boards {
        match how {
            Cold::Processes => c.kill_agent(b)?,
            Cold::Boards => c.power_off(b)?,
        }
    }
    c.kill_controller();
    std::thread::sleep(Duration::from_secs(2));
    c.restart_controller()?;
    for &b in &boards {
        c.restore(b)?;
    }
    for &b in &boards {
        ring::wait_node(c, b, NodePhase::Ready, Duration::from_secs(60))?;
    }
    if how == Cold::Processes {
        // The agents adopted their containers without restarting them.
        let now = member_pids(c)?;
        ensure!(
            now == pids,
            "the members' init pids changed over an agent restart: {pids:?} -> {now:?}"
        );
    }
    if how == Cold::Boards {
        // The controller's statuses are the ones from before the cut until the agents report:
        // wait until every member runs again (a new init) and says Ready.
        let running_again = c.wait_until(
            Duration::from_secs(420),
            "every member started again",
            || {
                std::thread::sleep(Duration::from_millis(500));
                let now = member_pids(c).ok()?;
                let ready = ring::containers(c, "cassandra")
                    .ok()?
                    .iter()
                    .all(ring::is_ready);
                (ready
                    && now
                        .iter()
                        .zip(&pids)
                        .all(|(a, b)| a.1.is_some() && a.1 != b.1))
                .then_some(now)
            },
        );
        if let Err(e) = running_again {
            anyhow::bail!("{e}\n{}", ring::members_report(c));
        }
    }
    c.wait_ready(Duration::from_secs(420))?;
    let ready_in = started.elapsed();
    let status = match ring::wait_ring(c, 3, Duration::from_secs(240)) {
        Ok(s) => s,
        Err(e) => anyhow::bail!("{e:#}\n{}", ring::members_report(c)),
    };
    let ring_in = started.elapsed();
    let ex = ring::wait_serving(c, Duration::from_secs(180))?;
    let after = ring::counts(&ex)?;
    ensure!(
        before == after,
        "counts before the {how:?} restart {before:?}, after {after:?}"
    );
    ring::audit(&ex, Some(*committed), Duration::from_secs(120))?;
    let codes: Vec<String> = before.iter().take(4).map(|a| a.0.clone()).collect();
    let tag = match how {
        Cold::Processes => "after-agents",
        Cold::Boards => "after-boards",
    };
    let acked = ring::transfer(&ex, &codes, tag, 10);
    ensure!(
        acked.len() == 10,
        "only {} of 10 transfers after the restart",
        acked.len()
    );
    *committed += acked.len();
    ring::ledger_intact(&ex, &acked, *committed - acked.len())?;
    eprintln!(
        "cold restart ({how:?}): stack Ready after {ready_in:.1?}, three UN after {ring_in:.1?}, {} accounts as before, transfers again:\n{status}",
        after.len()
    );
    Ok(())
}
