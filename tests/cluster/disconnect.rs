//! A role's `disconnect` policy on a partitioned board: `lostAfter` (replace only after a
//! while), `keep` (which copy runs on when the board comes back) and `stopOnNodeAfter` (the
//! cut-off agent stops its containers itself, and starts them again once back).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use texu::cluster::fixtures::responder_role as responder;
use texu::cluster::Cluster;

use super::reads::{container, exactly_one_copy_each, ready_elsewhere, running_on, wait_node};
use super::start;

/// A responder role with a `disconnect` policy (YAML lines under `disconnect:`).
fn responder_with(name: &str, replicas: usize, max_per_node: usize, disconnect: &[&str]) -> String {
    let lines: String = disconnect.iter().map(|l| format!("    {l}\n")).collect();
    responder(name, replicas, max_per_node).replace(
        "  placement:",
        &format!("  disconnect:\n{lines}  placement:"),
    )
}

/// The name of a container of `role` bound to `board`.
fn role_on(c: &Cluster, role: &str, board: usize) -> Result<String> {
    let node = c.plan().node_name(board);
    c.api()
        .containers()?
        .into_iter()
        .find(|x| x.spec.role == role && x.spec.node.as_deref() == Some(node.as_str()))
        .map(|x| x.metadata.name)
        .with_context(|| format!("no container of {role} on board {board}"))
}

#[test]
fn partitions_shorter_than_lost_after_move_nothing_longer_ones_leave_one_copy() -> Result<()> {
    let mut c = start(3)?;
    // `slow` waits 8 s before replacing; `orig` replaces at once but keeps the original copy
    // when its board comes back.
    let slow = responder_with("slow", 3, 2, &["lostAfter: 8s"]);
    let orig = responder_with("orig", 3, 2, &["keep: original"]);
    c.apply_yaml(&format!("{slow}---\n{orig}"))?;
    c.wait_ready(Duration::from_secs(90))?;
    let node2 = c.plan().node_name(2);
    let slow2 = role_on(&c, "slow", 2)?;
    let init = c
        .container_init_pid(2, &slow2)
        .context("slow on board 2 is not running")?;
    let orig2 = role_on(&c, "orig", 2)?;
    let orig_init = c
        .container_init_pid(2, &orig2)
        .context("orig on board 2 is not running")?;

    // Shorter than lostAfter: board 2 goes NotReady and comes back; `slow` does not move.
    // `orig` (lostAfter 0) is replaced at once, and when the board is back its original copy
    // wins (keep: original) and the replacement stops.
    c.partition(2)?;
    wait_node(&c, 2, "NotReady")?;
    c.wait_until(
        Duration::from_secs(30),
        "orig's replacement Ready elsewhere",
        || ready_elsewhere(&c, &node2, &orig2).then_some(()),
    )?;
    c.restore(2)?;
    wait_node(&c, 2, "Ready")?;
    exactly_one_copy_each(&c)?;
    c.wait_ready(Duration::from_secs(30))?;
    let after = container(&c, &slow2)?;
    ensure!(
        after.spec.node.as_deref() == Some(node2.as_str()),
        "{slow2} moved during a short partition: {after:?}"
    );
    ensure!(
        c.container_init_pid(2, &slow2) == Some(init),
        "{slow2} was restarted by a short partition"
    );
    ensure!(
        c.container_init_pid(2, &orig2) == Some(orig_init),
        "keep: original, but the original {orig2} on board 2 (init {orig_init}) is not the one running: runs on {:?}; {:?}\n{}",
        running_on(&c, &orig2),
        container(&c, &orig2)?,
        c.diagnostics()
    );
    ensure!(
        container(&c, &orig2)?.spec.node.as_deref() == Some(node2.as_str()),
        "keep: original, but {orig2} is not bound to board 2"
    );

    // Longer than lostAfter: `slow` is replaced after 8 s; after the heal one copy of each
    // container runs, and for `slow` (keep: replacement) it is not the one on board 2.
    c.partition(2)?;
    c.wait_until(
        Duration::from_secs(40),
        "slow's container of board 2 to be Ready on another board",
        || ready_elsewhere(&c, &node2, &slow2).then_some(()),
    )?;
    ensure!(
        c.container_init_pid(2, &slow2).is_some(),
        "a partitioned board keeps its containers running"
    );
    c.restore(2)?;
    wait_node(&c, 2, "Ready")?;
    exactly_one_copy_each(&c)?;
    ensure!(
        running_on(&c, &slow2) != vec![2],
        "keep: replacement, but {slow2} still runs on board 2"
    );
    // `orig` was replaced again at once; on this second return too its original wins.
    c.wait_ready(Duration::from_secs(30))?;
    ensure!(
        c.container_init_pid(2, &orig2) == Some(orig_init),
        "keep: original, but after the second partition the original {orig2} on board 2 (init {orig_init}) is not the one running: runs on {:?}; {:?}\n{}",
        running_on(&c, &orig2),
        container(&c, &orig2)?,
        c.diagnostics()
    );
    let events = c.texu_ok(&["events"])?;
    ensure!(
        events.contains("KeptOriginal"),
        "no KeptOriginal event:\n{events}"
    );
    ensure!(events.contains("Fenced"), "no Fenced event:\n{events}");
    c.teardown()?;
    Ok(())
}

#[test]
fn a_cut_off_board_stops_containers_after_stop_on_node_after_and_starts_them_again() -> Result<()> {
    let mut c = start(3)?;
    // `guard` is not replaced for a minute but stops on a board cut off for 2 s; `fast` is
    // replaced at once and stops on the cut-off board too, so two never run at once.
    let guard = responder_with("guard", 3, 1, &["lostAfter: 60s", "stopOnNodeAfter: 2s"]);
    let fast = responder_with("fast", 3, 2, &["stopOnNodeAfter: 2s"]);
    c.apply_yaml(&format!("{guard}---\n{fast}"))?;
    c.wait_ready(Duration::from_secs(90))?;
    let node2 = c.plan().node_name(2);
    let (guard2, fast2) = (role_on(&c, "guard", 2)?, role_on(&c, "fast", 2)?);
    let guard_init = c
        .container_init_pid(2, &guard2)
        .context("guard on board 2 is not running")?;

    c.partition(2)?;
    c.wait_until(
        Duration::from_secs(30),
        "the cut-off board to stop both containers",
        || {
            (c.container_init_pid(2, &guard2).is_none()
                && c.container_init_pid(2, &fast2).is_none())
            .then_some(())
        },
    )?;
    c.wait_until(Duration::from_secs(30), "fast's replacement Ready", || {
        ready_elsewhere(&c, &node2, &fast2).then_some(())
    })?;
    ensure!(
        running_on(&c, &fast2).len() == 1,
        "two copies of {fast2} run during the partition: boards {:?}",
        running_on(&c, &fast2)
    );
    ensure!(
        running_on(&c, &guard2).is_empty(),
        "{guard2} runs on boards {:?} while its board is cut off",
        running_on(&c, &guard2)
    );
    let bound = container(&c, &guard2)?;
    ensure!(
        bound.spec.node.as_deref() == Some(node2.as_str()),
        "guard moved within its lostAfter: {bound:?}"
    );

    // Back: guard starts again on board 2 (a new init, no restart counted); fast's copy
    // there is fenced and removed.
    c.restore(2)?;
    wait_node(&c, 2, "Ready")?;
    c.wait_ready(Duration::from_secs(60))?;
    let again = c
        .container_init_pid(2, &guard2)
        .context("guard did not start again on board 2")?;
    ensure!(
        again != guard_init,
        "guard's init {guard_init} never stopped"
    );
    let status = container(&c, &guard2)?.status.context("no status")?;
    ensure!(
        status.restarts == 0,
        "a cut-off stop counted as a restart: {status:?}"
    );
    exactly_one_copy_each(&c)?;
    ensure!(
        running_on(&c, &fast2) != vec![2],
        "{fast2} runs on board 2 again"
    );
    c.teardown()?;
    Ok(())
}
