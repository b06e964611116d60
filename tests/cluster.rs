//! End-to-end tests of a multi-board cluster on this machine, through the harness in
//! `texu::cluster`: boards are network namespaces on an overlay bridge, each with a real
//! `texu agent` running real LXC containers, and a real controller in the host namespace. Also
//! `texu demo` itself, from start to Ctrl-C.
//!
//! They need root, iproute2 and LXC (scripts/setup.sh installs it all) and fail, never skip,
//! without them. Each test takes its own cluster slot (names and addresses), so they run in
//! parallel and twice in a row; a cluster removes everything it made when it is dropped, also
//! when the test fails. Traffic stays on loopback and in 198.18.0.0/15.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use texu::cluster::fixtures::{demo_container_inits, responder_role as responder, DemoRun};
use texu::cluster::{self, Cluster, ClusterConfig};
use texu_api::{Container, ContainerPhase};

fn texu_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_texu"))
}

/// A cluster of `boards` boards in a free test slot; says what is missing when it cannot run.
fn start(boards: usize) -> Result<Cluster> {
    Cluster::start(ClusterConfig::new(boards, texu_bin()))
        .with_context(|| format!("cannot start a {boards}-board cluster"))
}

/// Ready containers by node name.
fn ready_by_node(c: &Cluster) -> Result<BTreeMap<String, Vec<Container>>> {
    let mut by_node: BTreeMap<String, Vec<Container>> = BTreeMap::new();
    for container in c.api().containers()? {
        let ready = container.status.as_ref().map(|s| s.phase) == Some(ContainerPhase::Ready);
        if let (true, Some(node)) = (ready, container.spec.node.clone()) {
            by_node.entry(node).or_default().push(container);
        }
    }
    Ok(by_node)
}

fn address(c: &Container) -> Result<String> {
    c.status
        .as_ref()
        .and_then(|s| s.address.clone())
        .with_context(|| format!("container {} has no address", c.metadata.name))
}

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

/// The STATUS column of `texu get nodes` for `node`.
fn node_status(c: &Cluster, node: &str) -> Option<String> {
    let table = c.texu_ok(&["get", "nodes"]).ok()?;
    table.lines().find_map(|line| {
        let mut cols = line.split_whitespace();
        (cols.next() == Some(node)).then(|| cols.next().unwrap_or_default().to_string())
    })
}

fn wait_node(c: &Cluster, board: usize, want: &str) -> Result<()> {
    let node = c.plan().node_name(board);
    c.wait_until(
        Duration::from_secs(20),
        &format!("`texu get nodes` to show {node} {want}"),
        || (node_status(c, &node).as_deref() == Some(want)).then_some(()),
    )?;
    Ok(())
}

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

/// A cluster of `boards` boards with extra controller flags and per-board agent flags.
fn start_with(
    boards: usize,
    controller_args: &[&str],
    agent_args: &[(usize, &[&str])],
) -> Result<Cluster> {
    let mut config = ClusterConfig::new(boards, texu_bin());
    config.controller_args = controller_args.iter().map(|s| s.to_string()).collect();
    for (board, args) in agent_args {
        config
            .agent_args
            .insert(*board, args.iter().map(|s| s.to_string()).collect());
    }
    Cluster::start(config).with_context(|| format!("cannot start a {boards}-board cluster"))
}

/// The boards on which a container of this name runs (its init is alive).
fn running_on(c: &Cluster, name: &str) -> Vec<usize> {
    c.plan()
        .board_numbers()
        .filter(|b| c.container_init_pid(*b, name).is_some())
        .collect()
}

/// Waits until every container of the cluster runs on exactly one board, and stays so for
/// three checks a second apart (a copy stopping late would show up).
fn exactly_one_copy_each(c: &Cluster) -> Result<()> {
    let mut calm = 0;
    c.wait_until(
        Duration::from_secs(40),
        "exactly one running copy of each container, three checks in a row",
        || {
            let names: Vec<String> = c
                .api()
                .containers()
                .ok()?
                .into_iter()
                .map(|x| x.metadata.name)
                .collect();
            let doubles: Vec<(String, Vec<usize>)> = names
                .iter()
                .map(|n| (n.clone(), running_on(c, n)))
                .filter(|(_, boards)| boards.len() != 1)
                .collect();
            if doubles.is_empty() {
                calm += 1;
            } else {
                calm = 0;
                println!("not yet one copy each: {doubles:?}");
            }
            std::thread::sleep(Duration::from_millis(500));
            (calm >= 3).then_some(())
        },
    )?;
    Ok(())
}

fn container(c: &Cluster, name: &str) -> Result<Container> {
    c.api()
        .container(name)?
        .with_context(|| format!("no container {name}"))
}

/// The board number of a node name.
fn board_of(c: &Cluster, node: &str) -> Result<usize> {
    c.plan()
        .board_numbers()
        .find(|b| c.plan().node_name(*b) == node)
        .with_context(|| format!("no board is {node}"))
}

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
        || {
            ready_by_node(&c)
                .ok()?
                .iter()
                .any(|(n, cs)| *n != node2 && cs.iter().any(|x| x.metadata.name == orig2))
                .then_some(())
        },
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
        || {
            ready_by_node(&c)
                .ok()?
                .iter()
                .any(|(n, cs)| *n != node2 && cs.iter().any(|x| x.metadata.name == slow2))
                .then_some(())
        },
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

#[test]
fn a_stateful_member_stays_lost_until_texu_replace_moves_it_with_replaces() -> Result<()> {
    let mut c = start(3)?;
    c.apply_yaml(
        r#"apiVersion: texu.io/v1
kind: Role
metadata:
  name: db
spec:
  replicas: 2
  stateful: true
  image: template:busybox
  command: [/bin/httpd, -f, -p, "8080", -h, /etc/texu]
  ports:
  - name: http
    port: 8080
  health:
    readiness:
      http: {path: /replaces, port: http}
      periodSeconds: 0.5
  volumes:
  - name: data
    path: /var/lib/db
  placement:
    maxPerNode: 1
  files:
  - path: /etc/texu/replaces
    template: "{% if replaces %}{{ replaces }}{% else %}none{% endif %}\n"
"#,
    )?;
    c.wait_ready(Duration::from_secs(60))?;
    let member = container(&c, "db-1")?;
    let old_node = member.spec.node.clone().context("db-1 is not bound")?;
    let old_address = address(&member)?;
    let old_board = board_of(&c, &old_node)?;
    let used: Vec<String> = c
        .api()
        .containers()?
        .into_iter()
        .filter_map(|x| x.spec.node)
        .collect();
    let spare = c
        .plan()
        .board_numbers()
        .map(|b| c.plan().node_name(b))
        .find(|n| !used.contains(n))
        .context("no spare board")?;
    let first = c.http_get_from_board(1, &format!("http://{old_address}:8080/replaces"))?;
    ensure!(
        first.trim() == "none",
        "a first member sees replaces {first:?}"
    );

    c.power_off(old_board)?;
    wait_node(&c, old_board, "NotReady")?;
    // It stays Lost on its board: never moved automatically.
    std::thread::sleep(Duration::from_secs(4));
    let lost = container(&c, "db-1")?;
    ensure!(
        lost.spec.node.as_deref() == Some(old_node.as_str())
            && lost.status.as_ref().map(|s| s.phase) == Some(ContainerPhase::Lost),
        "db-1 should stay Lost on {old_node}: {lost:?}"
    );

    let out = c.texu_ok(&["replace", "db-1", "--node", &spare])?;
    ensure!(out.contains(&old_address), "texu replace said {out:?}");
    let moved = c.wait_until(
        Duration::from_secs(40),
        "db-1 Ready on the spare board",
        || {
            container(&c, "db-1").ok().filter(|x| {
                x.spec.node.as_deref() == Some(spare.as_str())
                    && x.status.as_ref().map(|s| s.phase) == Some(ContainerPhase::Ready)
            })
        },
    )?;
    let new_address = address(&moved)?;
    let seen = c.http_get_from_board(1, &format!("http://{new_address}:8080/replaces"))?;
    ensure!(
        seen.trim() == old_address,
        "the new member's template saw replaces {seen:?}, want {old_address}"
    );
    let cleared = c.wait_until(
        Duration::from_secs(10),
        "replaces cleared after first boot",
        || {
            container(&c, "db-1")
                .ok()
                .filter(|x| x.spec.replaces.is_none())
        },
    )?;
    ensure!(cleared.spec.node.as_deref() == Some(spare.as_str()));

    // The old board comes back with its copy: it is fenced, one copy runs.
    c.restore(old_board)?;
    wait_node(&c, old_board, "Ready")?;
    exactly_one_copy_each(&c)?;
    ensure!(
        running_on(&c, "db-1") == vec![board_of(&c, &spare)?],
        "db-1 runs on boards {:?}",
        running_on(&c, "db-1")
    );
    c.teardown()?;
    Ok(())
}

#[test]
fn draining_and_rebalancing_a_board_under_a_request_loop_fail_no_request() -> Result<()> {
    let mut config = ClusterConfig::new(3, texu_bin());
    config.host_routes = true;
    // Rebalance onto a board once it has been Ready (and schedulable) for 3 s.
    config.controller_args = vec!["--settle".into(), "3s".into()];
    let c = Cluster::start(config).context("cannot start a 3-board cluster")?;
    c.apply_yaml(&responder("web", 3, 2))?;
    c.wait_ready(Duration::from_secs(60))?;
    let node2 = c.plan().node_name(2);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let api = c.api();
    let loop_stop = stop.clone();
    // A bounded client loop: at most 40,000 requests or 180 s. Like a proxy, it sends each
    // request to a Ready endpoint of the role, read from the controller every 100 ms.
    let client = std::thread::spawn(move || -> (u64, Vec<String>) {
        let (mut sent, mut failed) = (0u64, Vec::new());
        let mut endpoints: Vec<String> = Vec::new();
        let mut refreshed = Instant::now() - Duration::from_secs(1);
        let started = Instant::now();
        while !loop_stop.load(std::sync::atomic::Ordering::SeqCst)
            && sent < 40_000
            && started.elapsed() < Duration::from_secs(180)
        {
            if refreshed.elapsed() >= Duration::from_millis(100) {
                if let Ok(all) = api.containers() {
                    endpoints = all
                        .iter()
                        .filter(|x| {
                            x.status.as_ref().map(|s| s.phase) == Some(ContainerPhase::Ready)
                        })
                        .filter_map(|x| x.status.as_ref().and_then(|s| s.address.clone()))
                        .collect();
                }
                refreshed = Instant::now();
            }
            if endpoints.is_empty() {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            let target = &endpoints[sent as usize % endpoints.len()];
            let url = format!("http://{target}:8080/hostname");
            sent += 1;
            if let Err(e) = ureq::get(&url).timeout(Duration::from_secs(2)).call() {
                failed.push(format!("{url}: {e}"));
            }
        }
        (sent, failed)
    });
    std::thread::sleep(Duration::from_secs(2));
    let out = c.texu_ok(&["drain", &node2, "--timeout", "90s"])?;
    ensure!(out.contains("drained"), "texu drain said {out:?}");
    // Past the leave delay of the last moved copy.
    std::thread::sleep(Duration::from_secs(4));
    ensure!(
        c.lxc_containers(2).is_empty(),
        "board 2 still holds {:?}",
        c.lxc_containers(2)
    );
    let by_node = ready_by_node(&c)?;
    ensure!(
        !by_node.contains_key(&node2),
        "containers Ready on the drained board: {by_node:?}"
    );
    ensure!(
        by_node.values().map(Vec::len).sum::<usize>() == 3,
        "{by_node:?}"
    );

    // Uncordoned, board 2 takes one container back (make-before-break): one per board.
    c.texu_ok(&["uncordon", &node2])?;
    c.wait_until(
        Duration::from_secs(60),
        "one Ready container per board",
        || {
            let by_node = ready_by_node(&c).ok()?;
            (by_node.len() == 3 && by_node.values().all(|v| v.len() == 1)).then_some(())
        },
    )?;
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (sent, failed) = client
        .join()
        .map_err(|_| anyhow::anyhow!("client loop panicked"))?;
    println!(
        "drain and rebalance under load: {sent} requests, {} failed",
        failed.len()
    );
    ensure!(sent > 100, "only {sent} requests were sent");
    ensure!(
        failed.is_empty(),
        "{} failed requests: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    exactly_one_copy_each(&c)?;
    let events = c.texu_ok(&["events"])?;
    ensure!(events.contains("Drained"), "no Drained event:\n{events}");
    ensure!(
        events.contains("Rebalanced"),
        "no Rebalanced event:\n{events}"
    );
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
        ready_by_node(&c)
            .ok()?
            .iter()
            .any(|(n, cs)| *n != node2 && cs.iter().any(|x| x.metadata.name == fast2))
            .then_some(())
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
