//! What placement sees of the cluster: each node's load, its `hostPort`s and how many of each role it holds.

use std::collections::{HashMap, HashSet};

use texu_api::Node;

/// What is already placed on a node, in requests.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Load {
    pub(super) cpu_millis: u64,
    pub(super) memory_bytes: u64,
    pub(super) containers: u32,
}

pub(super) fn requests(role: &texu_api::RoleSpec) -> (u64, u64) {
    let cpu = role
        .resources
        .cpu
        .as_ref()
        .and_then(|q| q.cpu_millis().ok())
        .unwrap_or(0);
    let memory = role
        .resources
        .memory
        .as_ref()
        .and_then(|q| q.bytes().ok())
        .unwrap_or(0);
    (cpu, memory)
}

/// The `hostPort`s a role publishes on its board, as `(protocol, port)`.
pub(super) fn host_ports(role: &texu_api::RoleSpec) -> Vec<(&'static str, i64)> {
    role.ports
        .iter()
        .filter_map(|p| p.host_port.map(|h| (p.protocol.as_str(), h)))
        .collect()
}

/// The cluster as placement sees it: nodes by index, what each holds, per role.
pub(super) struct Board<'a> {
    pub(super) nodes: &'a [Node],
    pub(super) index: HashMap<&'a str, usize>,
    pub(super) loads: Vec<Load>,
    /// Containers of each role on each node.
    pub(super) by_role: HashMap<String, Vec<u32>>,
    /// `hostPort`s taken on each node.
    pub(super) ports: Vec<HashSet<(&'static str, i64)>>,
}

impl<'a> Board<'a> {
    pub(super) fn new(nodes: &'a [Node]) -> Self {
        Board {
            nodes,
            index: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.metadata.name.as_str(), i))
                .collect(),
            loads: vec![Load::default(); nodes.len()],
            by_role: HashMap::new(),
            ports: vec![HashSet::new(); nodes.len()],
        }
    }

    pub(super) fn node_index(&self, name: Option<&str>) -> Option<usize> {
        name.and_then(|n| self.index.get(n).copied())
    }

    pub(super) fn add(&mut self, node: usize, role: &str, spec: &texu_api::RoleSpec) {
        let (cpu, memory) = requests(spec);
        let load = &mut self.loads[node];
        load.cpu_millis += cpu;
        load.memory_bytes += memory;
        load.containers += 1;
        self.ports[node].extend(host_ports(spec));
        match self.by_role.get_mut(role) {
            Some(counts) => counts[node] += 1,
            None => {
                let mut counts = vec![0; self.nodes.len()];
                counts[node] = 1;
                self.by_role.insert(role.to_string(), counts);
            }
        }
    }

    pub(super) fn count(&self, role: &str, node: usize) -> u32 {
        self.by_role.get(role).map_or(0, |counts| counts[node])
    }
}
