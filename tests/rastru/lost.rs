//! Step 4 of the Rastru test: the member on the board that lost power stays `Lost` on that
//! board (a stateful member is never moved by itself); `texu replace` starts it on the board
//! with no member, with `replace_address_first_boot` naming its old address; the ring is three
//! UN again without the old address and the ledger counts what it counted before. Then the old
//! board powers on: its copy of the member is removed, never started, and the ring keeps three
//! members.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use texu::cluster::Cluster;
use texu_api::{ContainerPhase, NodePhase};

use super::failover::Round;
use super::ring;

/// Past the failure detector (seconds) this margin more, the member must still be where it was.
const MARGIN: Duration = Duration::from_secs(15);

/// Whether `status` (nodetool's) lists `address` as a member.
fn lists(status: &str, address: &str) -> bool {
    status
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(address))
}

pub fn stays_lost_then_replaced(c: &mut Cluster, lost: &Round, committed: usize) -> Result<()> {
    let node = c.plan().node_name(lost.board);
    let name = lost.member.as_str();
    let member_now = |c: &Cluster| -> Result<texu_api::Container> {
        ring::containers(c, "cassandra")?
            .into_iter()
            .find(|m| m.metadata.name == name)
            .with_context(|| format!("{name} is gone"))
    };
    // The board went NotReady during step 3; the member must stay put a margin past that.
    ring::wait_node(c, lost.board, NodePhase::NotReady, Duration::from_secs(30))?;
    let since = Instant::now();
    while since.elapsed() < MARGIN {
        let m = member_now(c)?;
        ensure!(
            m.spec.node.as_deref() == Some(node.as_str()),
            "{name} moved by itself to {:?}",
            m.spec.node
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let m = member_now(c)?;
    ensure!(
        m.spec.node.as_deref() == Some(node.as_str())
            && ring::phase(&m) == Some(ContainerPhase::Lost),
        "{name} should stay Lost on {node} {:.0?} after the power cut: {:?}",
        lost.cut_at.elapsed(),
        m.status
    );
    let old_address = ring::address(&m)?;
    eprintln!(
        "{name} still Lost on {node} {:.1?} after the power cut",
        lost.cut_at.elapsed()
    );

    let ex = ring::proxy(c, lost.board)?;
    let before = ring::counts(&ex)?;
    let used = ring::boards_of(c, "cassandra")?;
    let spare = c
        .plan()
        .board_numbers()
        .find(|b| !used.contains(b))
        .context("no board without a Cassandra member")?;
    let spare_node = c.plan().node_name(spare);
    let asked = Instant::now();
    let said = c.texu_ok(&["replace", name, "--node", &spare_node])?;
    ensure!(said.contains(&old_address), "texu replace said {said:?}");
    c.wait_until(
        Duration::from_secs(420),
        &format!("{name} Ready on {spare_node}"),
        || {
            std::thread::sleep(Duration::from_millis(500));
            member_now(c).ok().filter(|m| {
                m.spec.node.as_deref() == Some(spare_node.as_str()) && ring::is_ready(m)
            })
        },
    )?;
    let replaced_in = asked.elapsed();
    // The JVM was started with replace_address_first_boot naming the old address.
    let out = c.exec_in_container(
        spare,
        name,
        &[
            "/bin/sh",
            "-c",
            "tr '\\0' ' ' < /proc/$(cat /var/lib/cassandra/cassandra.pid)/cmdline; echo; \
             grep -i -m 3 'replac' /var/lib/cassandra/logs/system.log || true",
        ],
    )?;
    let seen = String::from_utf8_lossy(&out.stdout);
    let flag = format!("-Dcassandra.replace_address_first_boot={old_address}");
    ensure!(seen.contains(&flag), "{name}'s JVM has no {flag}: {seen}");
    for line in seen.lines().skip(1) {
        eprintln!("  {name} system.log: {line}");
    }
    let status = ring::wait_ring(c, 3, Duration::from_secs(180))?;
    ensure!(
        !lists(&status, &old_address),
        "the ring still lists the old address {old_address}:\n{status}"
    );
    c.wait_until(
        Duration::from_secs(60),
        "replaces cleared once Ready",
        || member_now(c).ok().filter(|m| m.spec.replaces.is_none()),
    )?;
    let after = ring::counts(&ex)?;
    ensure!(
        before == after,
        "counts before the replace {before:?}, after {after:?}"
    );
    ring::audit(&ex, Some(committed), Duration::from_secs(60))?;
    eprintln!(
        "{name} replaced onto {spare_node} (replacing {old_address}) and Ready in {replaced_in:.1?}; three UN, {} accounts as before",
        after.len()
    );

    // The old board comes back: its copy of the member goes, never started.
    let back = Instant::now();
    c.restore(lost.board)?;
    ring::wait_node(c, lost.board, NodePhase::Ready, Duration::from_secs(60))?;
    let mut started_again = false;
    c.wait_until(
        Duration::from_secs(90),
        &format!("{node}'s old copy of {name} removed"),
        || {
            started_again |= c.container_init_pid(lost.board, name).is_some();
            (!c.lxc_containers(lost.board).contains(&lost.member)).then_some(())
        },
    )?;
    ensure!(
        !started_again,
        "{node} started its old copy of {name} again"
    );
    c.wait_ready(Duration::from_secs(300))?;
    // A few looks over 10 s: the old address never shows up again.
    for _ in 0..3 {
        let status = ring::wait_ring(c, 3, Duration::from_secs(120))?;
        ensure!(
            !lists(&status, &old_address),
            "the old member rejoined the ring as {old_address}:\n{status}"
        );
        std::thread::sleep(Duration::from_secs(3));
    }
    ensure!(
        ring::counts(&ex)? == before,
        "counts changed after the old board came back"
    );
    eprintln!(
        "{node} back: its old {name} removed, the ring still three UN, in {:.1?}",
        back.elapsed()
    );
    Ok(())
}
