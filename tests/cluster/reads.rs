//! What the cluster tests read from a running cluster and wait for: Ready containers by
//! board, a container and its address, where copies of a container run, and a node's status
//! as `texu get nodes` shows it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use texu::cluster::Cluster;
use texu_api::{Container, ContainerPhase};

/// Ready containers by node name.
pub fn ready_by_node(c: &Cluster) -> Result<BTreeMap<String, Vec<Container>>> {
    let mut by_node: BTreeMap<String, Vec<Container>> = BTreeMap::new();
    for container in c.api().containers()? {
        let ready = container.status.as_ref().map(|s| s.phase) == Some(ContainerPhase::Ready);
        if let (true, Some(node)) = (ready, container.spec.node.clone()) {
            by_node.entry(node).or_default().push(container);
        }
    }
    Ok(by_node)
}

/// Whether the container `name` is Ready on a node other than `node`.
pub fn ready_elsewhere(c: &Cluster, node: &str, name: &str) -> bool {
    ready_by_node(c).is_ok_and(|by_node| {
        by_node
            .iter()
            .any(|(n, cs)| n != node && cs.iter().any(|x| x.metadata.name == name))
    })
}

/// A container's address on its board's container subnet.
pub fn address(c: &Container) -> Result<String> {
    c.status
        .as_ref()
        .and_then(|s| s.address.clone())
        .with_context(|| format!("container {} has no address", c.metadata.name))
}

/// The STATUS column of `texu get nodes` for `node`.
pub fn node_status(c: &Cluster, node: &str) -> Option<String> {
    let table = c.texu_ok(&["get", "nodes"]).ok()?;
    table.lines().find_map(|line| {
        let mut cols = line.split_whitespace();
        (cols.next() == Some(node)).then(|| cols.next().unwrap_or_default().to_string())
    })
}

/// Waits until `texu get nodes` shows `board`'s node as `want`.
pub fn wait_node(c: &Cluster, board: usize, want: &str) -> Result<()> {
    let node = c.plan().node_name(board);
    c.wait_until(
        Duration::from_secs(20),
        &format!("`texu get nodes` to show {node} {want}"),
        || (node_status(c, &node).as_deref() == Some(want)).then_some(()),
    )?;
    Ok(())
}

/// The boards on which a container of this name runs (its init is alive).
pub fn running_on(c: &Cluster, name: &str) -> Vec<usize> {
    c.plan()
        .board_numbers()
        .filter(|b| c.container_init_pid(*b, name).is_some())
        .collect()
}

/// Waits until every container of the cluster runs on exactly one board, and stays so for
/// three checks a second apart (a copy stopping late would show up).
pub fn exactly_one_copy_each(c: &Cluster) -> Result<()> {
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

/// The container `name`, which must exist.
pub fn container(c: &Cluster, name: &str) -> Result<Container> {
    c.api()
        .container(name)?
        .with_context(|| format!("no container {name}"))
}
