//! Routes to the other boards' container subnets, each via that board's overlay address.
//!
//! Routes Texu adds carry their own protocol number, so the agent can find and remove the ones
//! it made (a board left the cluster) without touching anyone else's.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::sync::watch;

use super::client::Client;
use super::network::{ip, ip_output, Subnet};

/// The `proto` value on every route Texu installs.
pub const ROUTE_PROTO: &str = "197";
/// How often the node list is read.
const PERIOD: Duration = Duration::from_secs(1);

/// The routes wanted: every other board's subnet via its overlay address. Boards without a
/// subnet, on this board's own address, or on loopback (several agents on one host) are skipped.
pub fn wanted(
    nodes: &[texu_api::Node],
    own_name: &str,
    own_subnet: Subnet,
) -> BTreeMap<Subnet, Ipv4Addr> {
    let own_address = nodes
        .iter()
        .find(|n| n.metadata.name == own_name)
        .and_then(|n| n.spec.address.parse::<Ipv4Addr>().ok());
    nodes
        .iter()
        .filter(|n| n.metadata.name != own_name)
        .filter_map(|n| {
            let subnet = Subnet::parse(n.spec.subnet.as_deref()?).ok()?;
            let via: Ipv4Addr = n.spec.address.parse().ok()?;
            let usable =
                !via.is_loopback() && Some(via) != own_address && !subnet.overlaps(&own_subnet);
            usable.then_some((subnet, via))
        })
        .collect()
}

/// Keeps the routes in line with the node list until `stop`.
pub async fn run(
    client: Client,
    credential: String,
    name: String,
    own: Subnet,
    mut stop: watch::Receiver<bool>,
) {
    // ip(8) runs on blocking threads: a slow fork must never hold up heartbeats.
    let mut installed: BTreeMap<Subnet, Ipv4Addr> = tokio::task::spawn_blocking(current)
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    loop {
        let (c, cred) = (client.clone(), credential.clone());
        match tokio::task::spawn_blocking(move || c.nodes(&cred)).await {
            Ok(Ok(nodes)) => {
                let want = wanted(&nodes, &name, own);
                if want != installed {
                    let before = installed.clone();
                    match tokio::task::spawn_blocking(move || apply(&before, &want)).await {
                        Ok(now) => installed = now,
                        Err(e) => tracing::warn!(error = %e, "route task failed"),
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot read the node list; routes unchanged")
            }
            Err(e) => tracing::warn!(error = %e, "route task failed"),
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}

/// Adds, changes and removes routes; returns what is installed afterwards.
fn apply(
    installed: &BTreeMap<Subnet, Ipv4Addr>,
    want: &BTreeMap<Subnet, Ipv4Addr>,
) -> BTreeMap<Subnet, Ipv4Addr> {
    for subnet in installed.keys().filter(|s| !want.contains_key(s)) {
        match ip(&["route", "del", &subnet.to_string(), "proto", ROUTE_PROTO]) {
            Ok(()) => tracing::info!(%subnet, "route removed: its board left"),
            Err(e) => tracing::warn!(%subnet, error = %e, "cannot remove route"),
        }
    }
    for (subnet, via) in want {
        if installed.get(subnet) == Some(via) {
            continue;
        }
        match ip(&[
            "route",
            "replace",
            &subnet.to_string(),
            "via",
            &via.to_string(),
            "proto",
            ROUTE_PROTO,
        ]) {
            Ok(()) => tracing::info!(%subnet, %via, "route to a board's containers"),
            Err(e) => tracing::warn!(%subnet, %via, error = %e, "cannot add route"),
        }
    }
    current().unwrap_or_else(|| want.clone())
}

/// The routes Texu installed, read back from the kernel.
pub fn current() -> Option<BTreeMap<Subnet, Ipv4Addr>> {
    let text = ip_output(&["-4", "route", "show", "proto", ROUTE_PROTO]).ok()?;
    Some(
        text.lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let subnet = Subnet::parse(words.next()?).ok()?;
                let via = words.skip_while(|w| *w != "via").nth(1)?.parse().ok()?;
                Some((subnet, via))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use texu_api::{Arch, Node, NodeSpec};

    fn node(name: &str, address: &str, subnet: Option<&str>) -> Node {
        Node::new(
            name,
            NodeSpec {
                address: address.into(),
                arch: Arch::Amd64,
                cpus: 1,
                memory_bytes: 1,
                subnet: subnet.map(str::to_string),
                unschedulable: false,
                draining: false,
            },
        )
    }

    #[test]
    fn routes_every_other_board_via_its_overlay_address() {
        let nodes = vec![
            node("a", "198.18.0.2", Some("198.19.1.0/24")),
            node("b", "198.18.0.3", Some("198.19.2.0/24")),
            node("c", "198.18.0.4", Some("198.19.3.0/24")),
            node("d", "198.18.0.5", None),
            node("e", "127.0.0.1", Some("198.19.5.0/24")),
        ];
        let own = Subnet::parse("198.19.1.0/24").unwrap();
        let want = wanted(&nodes, "a", own);
        let got: Vec<String> = want.iter().map(|(s, v)| format!("{s} via {v}")).collect();
        assert_eq!(
            got,
            [
                "198.19.2.0/24 via 198.18.0.3",
                "198.19.3.0/24 via 198.18.0.4"
            ]
        );
    }
}
