//! Routes to the other boards' container subnets, each via that board's overlay address.
//!
//! Routes Texu adds carry their own protocol number, so the agent can find and remove the ones
//! it made (a board left the cluster) without touching anyone else's.
//!
//! The node list comes from the network, so a bad entry must not redirect the board's own
//! traffic: no route is installed for a subnet outside the cluster's container range, for
//! loopback, link-local, multicast or reserved space, or for any network the board is directly
//! connected to (the overlay itself, its LAN, its own bridge).

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

/// Networks no route of Texu's may cover: this host, link-local, multicast and reserved space.
const NEVER: [(Ipv4Addr, u8); 5] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// Where routes may go: inside the cluster's container range (when known), outside this
/// board's own subnet and the networks it is directly connected to.
#[derive(Debug, Clone)]
pub struct Bounds {
    own: Subnet,
    cluster: Option<Subnet>,
    connected: Vec<Subnet>,
}

impl Bounds {
    /// Bounds for a board with subnet `own` in a cluster whose range is `cluster`.
    pub fn new(own: Subnet, cluster: Option<Subnet>) -> Bounds {
        Bounds {
            own,
            cluster,
            connected: Vec::new(),
        }
    }

    /// The same bounds with the board's directly connected networks.
    pub fn with_connected(mut self, connected: Vec<Subnet>) -> Bounds {
        self.connected = connected;
        self
    }

    /// Why a route to `subnet` is refused, if it is.
    pub fn refuse(&self, subnet: &Subnet) -> Option<String> {
        if let Some(cluster) = &self.cluster {
            let inside =
                subnet.prefix_len >= cluster.prefix_len && cluster.contains(subnet.network);
            if !inside {
                return Some(format!("not inside the cluster range {cluster}"));
            }
        }
        if subnet.overlaps(&self.own) {
            return Some(format!("overlaps this board's own subnet {}", self.own));
        }
        if let Some(never) = NEVER
            .iter()
            .map(|(network, prefix_len)| Subnet {
                network: *network,
                prefix_len: *prefix_len,
            })
            .find(|n| n.overlaps(subnet))
        {
            return Some(format!("overlaps reserved range {never}"));
        }
        self.connected
            .iter()
            .find(|n| n.overlaps(subnet))
            .map(|n| format!("overlaps {n}, a network this board is connected to"))
    }
}

/// The routes wanted: every other board's subnet via its overlay address. Boards without a
/// subnet, on this board's own address, or on loopback (several agents on one host) are
/// skipped, and so is any subnet `bounds` refuses.
pub fn wanted(
    nodes: &[texu_api::Node],
    own_name: &str,
    bounds: &Bounds,
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
            if via.is_loopback() || Some(via) == own_address {
                return None;
            }
            if let Some(why) = bounds.refuse(&subnet) {
                tracing::warn!(node = %n.metadata.name, %subnet, %via, "no route: {why}");
                return None;
            }
            Some((subnet, via))
        })
        .collect()
}

/// Keeps the routes in line with the node list until `stop`.
pub async fn run(
    client: Client,
    credential: String,
    name: String,
    bounds: Bounds,
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
                let connected = tokio::task::spawn_blocking(connected)
                    .await
                    .unwrap_or_default();
                let bounds = bounds.clone().with_connected(connected);
                let want = wanted(&nodes, &name, &bounds);
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

/// The networks this board is directly connected to, from its IPv4 addresses (`ip -o addr`).
pub fn connected() -> Vec<Subnet> {
    let Ok(text) = ip_output(&["-4", "-o", "addr", "show"]) else {
        return Vec::new();
    };
    parse_connected(&text)
}

fn parse_connected(text: &str) -> Vec<Subnet> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet")?;
            let (ip, len) = words.next()?.split_once('/')?;
            let ip: Ipv4Addr = ip.parse().ok()?;
            let prefix_len: u8 = len.parse().ok()?;
            // A /31 or /32 (a point-to-point or host address) still must not be routed over.
            let prefix_len = prefix_len.clamp(1, 32);
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            Some(Subnet {
                network: Ipv4Addr::from(u32::from(ip) & mask),
                prefix_len,
            })
        })
        .collect()
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
        let want = wanted(&nodes, "a", &Bounds::new(own, None));
        let got: Vec<String> = want.iter().map(|(s, v)| format!("{s} via {v}")).collect();
        assert_eq!(
            got,
            [
                "198.19.2.0/24 via 198.18.0.3",
                "198.19.3.0/24 via 198.18.0.4"
            ]
        );
    }

    #[test]
    fn a_bad_node_list_cannot_redirect_the_boards_own_traffic() {
        let nodes = vec![
            node("a", "198.18.0.2", Some("198.19.1.0/24")),
            node("good", "198.18.0.3", Some("198.19.2.0/24")),
            node("overlay", "198.18.0.4", Some("198.18.0.0/24")),
            node("loopback", "198.18.0.5", Some("127.0.0.0/8")),
            node("link-local", "198.18.0.6", Some("169.254.0.0/16")),
            node("lan", "198.18.0.7", Some("192.168.1.0/24")),
            node("outside", "198.18.0.8", Some("10.0.0.0/24")),
            node("wide", "198.18.0.9", Some("198.19.0.0/16")),
            node("own", "198.18.0.10", Some("198.19.1.128/25")),
        ];
        let own = Subnet::parse("198.19.1.0/24").unwrap();
        let cluster = Subnet::parse("198.19.0.0/16").unwrap();
        let connected = parse_connected(
            "1: lo    inet 127.0.0.1/8 scope host lo\n\
             2: eth0    inet 198.18.0.2/24 brd 198.18.0.255 scope global eth0\n\
             3: wlan0    inet 192.168.1.20/24 scope global wlan0\n",
        );
        let bounds = Bounds::new(own, Some(cluster)).with_connected(connected.clone());
        let got: Vec<String> = wanted(&nodes, "a", &bounds)
            .iter()
            .map(|(s, v)| format!("{s} via {v}"))
            .collect();
        assert_eq!(got, ["198.19.2.0/24 via 198.18.0.3"]);

        // Without a known cluster range (an older data dir) the other guards still hold.
        let bounds = Bounds::new(own, None).with_connected(connected);
        let got: Vec<Subnet> = wanted(&nodes, "a", &bounds).into_keys().collect();
        assert_eq!(
            got,
            [
                Subnet::parse("10.0.0.0/24").unwrap(),
                Subnet::parse("198.19.2.0/24").unwrap()
            ]
        );
    }
}
