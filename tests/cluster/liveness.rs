//! How the controller judges a board: a powered-off or partitioned board goes NotReady and
//! comes back Ready when restored (a partition keeps its containers running), and a jittery
//! heartbeat keeps its board Ready while a silent one does not.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use texu::cluster::fixtures::responder_role as responder;

use super::reads::{node_status, wait_node};
use super::{start, start_with};

#[test]
fn a_powered_off_board_goes_not_ready_and_a_restored_one_comes_back() -> Result<()> {
    let mut c = start(2)?;
    c.apply_yaml(&responder("echo", 2, 1))?;
    c.wait_ready(Duration::from_secs(60))?;
    let on_board2 = c.lxc_containers(2);
    let inits: Vec<u32> = on_board2
        .iter()
        .filter_map(|name| c.container_init_pid(2, name))
        .collect();
    ensure!(!inits.is_empty(), "board2 runs no container");

    c.power_off(2)?;
    ensure!(!c.agent_running(2), "board2's agent survived the power cut");
    for name in &on_board2 {
        ensure!(
            c.container_init_pid(2, name).is_none(),
            "container {name} survived the power cut"
        );
    }
    // The link is cut: from board 2 the controller is out of reach.
    let healthz = format!("{}/healthz", c.server());
    ensure!(
        c.http_get_from_board(2, &healthz).is_err(),
        "board2 still reaches the controller after the power cut"
    );
    wait_node(&c, 2, "NotReady")?;
    assert_eq!(node_status(&c, "board1").as_deref(), Some("Ready"));

    c.restore(2)?;
    wait_node(&c, 2, "Ready")?;
    c.wait_ready(Duration::from_secs(60))?;

    // A partition: the board drops off, its containers keep running, and it comes back.
    let survivor = c
        .lxc_containers(1)
        .first()
        .cloned()
        .context("no container on board1")?;
    let init = c
        .container_init_pid(1, &survivor)
        .context("board1's container is not running")?;
    c.partition(1)?;
    wait_node(&c, 1, "NotReady")?;
    assert_eq!(
        c.container_init_pid(1, &survivor),
        Some(init),
        "partitioned containers keep running"
    );
    ensure!(c.agent_running(1), "a partition does not stop the agent");
    c.restore(1)?;
    wait_node(&c, 1, "Ready")?;
    c.teardown()?;
    Ok(())
}

#[test]
fn a_jittery_heartbeat_keeps_its_board_ready_and_a_silent_one_does_not() -> Result<()> {
    // Board 2 delays each heartbeat by up to 2 s: gaps of up to 2.5 s, past the 2 s grace.
    let mut c = start_with(2, &[], &[(2, &["--heartbeat-jitter", "2s"])])?;
    let node2 = c.plan().node_name(2);
    let watch_for = Duration::from_secs(25);
    let started = Instant::now();
    let mut checks = 0;
    while started.elapsed() < watch_for {
        let nodes = c.api().nodes()?;
        let phase = nodes
            .iter()
            .find(|n| n.metadata.name == node2)
            .and_then(|n| n.status.as_ref())
            .map(|s| s.phase.to_string());
        ensure!(
            phase.as_deref() == Some("Ready"),
            "the jittery {node2} was judged {phase:?} after {:?}",
            started.elapsed()
        );
        checks += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let events = c.texu_ok(&["events"])?;
    ensure!(
        !events.contains("NodeNotReady"),
        "a NodeNotReady event for a jittery board:\n{events}"
    );
    println!("{node2} stayed Ready through {checks} checks over {watch_for:?} of jitter");
    // Silent: it is judged NotReady (later than a steady board would be, as it should).
    let cut = Instant::now();
    c.partition(2)?;
    c.wait_until(
        Duration::from_secs(20),
        "the silent board to be NotReady",
        || (node_status(&c, &node2).as_deref() == Some("NotReady")).then_some(()),
    )?;
    println!("silent jittery board NotReady after {:?}", cut.elapsed());
    c.teardown()?;
    Ok(())
}
