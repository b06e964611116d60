//! A stateful member on a powered-off board: it stays `Lost` there until `texu replace` moves
//! it to a spare board, whose template sees `replaces`; the old board's copy is fenced when
//! it comes back.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use texu::cluster::Cluster;
use texu_api::ContainerPhase;

use super::reads::{address, container, exactly_one_copy_each, running_on, wait_node};
use super::start;

/// The board number of a node name.
fn board_of(c: &Cluster, node: &str) -> Result<usize> {
    c.plan()
        .board_numbers()
        .find(|b| c.plan().node_name(*b) == node)
        .with_context(|| format!("no board is {node}"))
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
