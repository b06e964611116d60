//! Containers on the overlay: six replicas spread two per board and answer on their board,
//! reach containers on other boards (and a hostPort on another board's overlay address), and
//! a removed board's routes leave the other boards.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use texu::cluster::fixtures::responder_role as responder;
use texu::cluster::Cluster;
use texu_api::Container;

use super::reads::{address, ready_by_node};
use super::start;

/// A 3-board cluster with `echo` (6 replicas, 2 per board) ready.
fn spread_cluster() -> Result<(Cluster, BTreeMap<String, Vec<Container>>)> {
    let c = start(3)?;
    c.apply_yaml(&responder("echo", 6, 2))?;
    c.wait_ready(Duration::from_secs(60))?;
    let by_node = ready_by_node(&c)?;
    for board in 1..=3 {
        let node = c.plan().node_name(board);
        let on_board = by_node.get(&node).map_or(0, Vec::len);
        ensure!(
            on_board == 2,
            "{node} runs {on_board} echo containers, want 2:\n{}",
            c.diagnostics()
        );
    }
    Ok((c, by_node))
}

#[test]
fn six_replicas_spread_two_per_board_and_answer_on_their_board() -> Result<()> {
    let (c, by_node) = spread_cluster()?;
    let on_board1 = &by_node[&c.plan().node_name(1)];
    for container in on_board1 {
        let url = format!("http://{}:8080/hostname", address(container)?);
        // From the board's own namespace, as a process on board 1 would.
        let body = c.http_get_from_board(1, &url)?;
        assert_eq!(body.trim(), container.metadata.name, "{url}");
    }
    // From inside one container on board 1 to the other, across the board's bridge.
    let (a, b) = (&on_board1[0], &on_board1[1]);
    let body = c.http_get_from_container(1, &a.metadata.name, &address(b)?, 8080, "/hostname")?;
    assert_eq!(body.trim(), b.metadata.name);
    let report = c.teardown()?;
    assert_eq!(report.containers.len(), 6, "{report}");
    Ok(())
}

/// Depends on the agents routing every other board's subnet through that board's overlay
/// address (issue 4, item 2): without those routes a board's packets to another board's
/// containers go to the host, which does not forward them.
#[test]
fn containers_reach_containers_on_other_boards() -> Result<()> {
    let (c, by_node) = spread_cluster()?;
    let from = &by_node[&c.plan().node_name(1)][0].metadata.name;
    for board in [2, 3] {
        let target = &by_node[&c.plan().node_name(board)][0];
        let addr = address(target)?;
        let body = c.http_get_from_container(1, from, &addr, 8080, "/hostname")?;
        assert_eq!(body.trim(), target.metadata.name, "{from} -> {addr}");
        let body = c.http_get_from_board(1, &format!("http://{addr}:8080/hostname"))?;
        assert_eq!(body.trim(), target.metadata.name, "board1 -> {addr}");
    }
    // A hostPort is published on its board's own (overlay) address, reachable from another board.
    c.apply_yaml(
        "apiVersion: texu.io/v1\nkind: Role\nmetadata:\n  name: front\nspec:\n  \
         image: template:busybox\n  command: [/bin/httpd, -f, -p, \"80\", -h, /etc]\n  \
         ports:\n  - {name: http, port: 80, hostPort: 8088}\n  health:\n    readiness:\n      \
         http: {path: /hostname, port: http}\n      periodSeconds: 0.2\n",
    )?;
    c.wait_ready(Duration::from_secs(60))?;
    let front = c
        .api()
        .containers()?
        .into_iter()
        .find(|x| x.metadata.name == "front-0")
        .context("front-0")?;
    let node = front.spec.node.clone().context("front-0 is placed")?;
    let board = (1..=3)
        .find(|b| c.plan().node_name(*b) == node)
        .context("front-0's board")?;
    let other = if board == 1 { 2 } else { 1 };
    let url = format!("http://{}:8088/hostname", c.plan().board_address(board));
    let body = c.wait_until(Duration::from_secs(10), "the hostPort to answer", || {
        c.http_get_from_board(other, &url).ok()
    })?;
    assert_eq!(body.trim(), "front-0", "{url} from board {other}");
    Ok(())
}

/// The routes Texu installed inside a board's namespace, as `SUBNET via ADDRESS` lines.
fn texu_routes(c: &Cluster, board: usize) -> Result<Vec<String>> {
    let out = c.exec_in_board(board, &["ip", "-4", "route", "show", "proto", "197"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .collect())
}

#[test]
fn removing_a_board_removes_its_routes_on_the_other_boards() -> Result<()> {
    let c = start(3)?;
    let subnet3 = c.plan().board_subnet(3);
    let node3 = c.plan().node_name(3);
    // Board 1 routes to boards 2 and 3, each via its overlay address.
    let routes = c.wait_until(
        Duration::from_secs(20),
        "board 1 to route to boards 2 and 3",
        || texu_routes(&c, 1).ok().filter(|r| r.len() == 2),
    )?;
    assert!(routes.iter().any(|r| r.starts_with(&subnet3)), "{routes:?}");
    c.texu_ok(&["delete", "node", &node3])?;
    c.wait_until(
        Duration::from_secs(20),
        "board 1 and 2 to drop the route to board 3",
        || {
            let gone =
                |b| texu_routes(&c, b).is_ok_and(|r| !r.iter().any(|l| l.starts_with(&subnet3)));
            (gone(1) && gone(2)).then_some(())
        },
    )?;
    assert_eq!(texu_routes(&c, 1)?.len(), 1, "the route to board 2 stays");
    Ok(())
}
