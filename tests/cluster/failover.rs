//! Failover of stateless containers: a powered-off board's containers are Ready on the other
//! boards and answer there, also when the controller is killed as the failover starts; when
//! the board comes back, one copy of each runs.

use std::time::Duration;

use anyhow::{ensure, Result};
use texu::cluster::fixtures::responder_role as responder;

use super::reads::{address, exactly_one_copy_each, ready_by_node, wait_node};
use super::start;

#[test]
fn a_powered_off_boards_containers_are_ready_on_the_other_boards() -> Result<()> {
    let mut c = start(3)?;
    c.apply_yaml(&responder("echo", 6, 3))?;
    c.wait_ready(Duration::from_secs(60))?;
    let node2 = c.plan().node_name(2);
    let before = ready_by_node(&c)?;
    let moved: Vec<String> = before
        .get(&node2)
        .map(|cs| cs.iter().map(|c| c.metadata.name.clone()).collect())
        .unwrap_or_default();
    ensure!(
        moved.len() == 2,
        "board 2 runs {moved:?}, want 2 containers"
    );
    let off = std::time::Instant::now();
    c.power_off(2)?;
    let after = c.wait_until(
        Duration::from_secs(30),
        "board 2's containers to be Ready on boards 1 and 3",
        || {
            let by_node = ready_by_node(&c).ok()?;
            let elsewhere = by_node
                .iter()
                .filter(|(node, _)| **node != node2)
                .flat_map(|(_, cs)| cs.iter().map(|c| c.metadata.name.clone()))
                .collect::<Vec<_>>();
            moved
                .iter()
                .all(|m| elsewhere.contains(m))
                .then_some(by_node)
        },
    )?;
    println!("power-off to replacements Ready: {:?}", off.elapsed());
    let total: usize = after.values().map(Vec::len).sum();
    ensure!(total == 6, "all 6 Ready after the failover: {after:?}");
    // Each replacement answers from its new board.
    for name in &moved {
        let container = after
            .values()
            .flatten()
            .find(|c| &c.metadata.name == name)
            .unwrap();
        let url = format!("http://{}:8080/hostname", address(container)?);
        let body = c.http_get_from_board(1, &url)?;
        ensure!(body.trim() == name.as_str(), "{url} answered {body:?}");
    }
    Ok(())
}

#[test]
fn a_controller_killed_during_a_failover_converges_without_duplicates() -> Result<()> {
    let mut c = start(3)?;
    c.apply_yaml(&responder("echo", 6, 3))?;
    c.wait_ready(Duration::from_secs(60))?;
    let node2 = c.plan().node_name(2);
    c.power_off(2)?;
    // Kill the controller as the failover starts: board 2 just went NotReady.
    wait_node(&c, 2, "NotReady")?;
    c.kill_controller();
    std::thread::sleep(Duration::from_millis(500));
    c.restart_controller()?;
    c.wait_until(
        Duration::from_secs(60),
        "all 6 Ready on boards 1 and 3",
        || {
            let by_node = ready_by_node(&c).ok()?;
            let total: usize = by_node
                .iter()
                .filter(|(n, _)| **n != node2)
                .map(|(_, cs)| cs.len())
                .sum();
            (total == 6).then_some(())
        },
    )?;
    ensure!(
        c.api().containers()?.len() == 6,
        "the controller holds more than 6 containers"
    );
    exactly_one_copy_each(&c)?;
    // Board 2 comes back with old copies on disk: they are fenced, one copy each runs.
    c.restore(2)?;
    wait_node(&c, 2, "Ready")?;
    exactly_one_copy_each(&c)?;
    c.teardown()?;
    Ok(())
}
