//! Placement of one role's containers: filters that do not depend on load run once, then per container resources, `maxPerNode` and a score pick the node.

use std::collections::{BTreeMap, HashMap};

use texu_api::{
    Arch, Container, ContainerPhase, ContainerStatus, ImageRef, Node, NodePhase, Role, Strategy,
};

use super::board::{host_ports, requests};
use super::{Board, Catalog};

/// `NAME:TAG` when the role runs an image from the image store.
pub(super) fn stored_image(role: &Role) -> Option<String> {
    match role.spec.image_ref() {
        Ok(ImageRef::Stored { name, tag }) => Some(format!("{name}:{tag}")),
        _ => None,
    }
}

/// Places the containers of one role. The filters that do not depend on what is placed
/// (readiness, cordon, architecture, selector, image variant) run once per role; only
/// resources, `maxPerNode` and the score are checked per container.
pub(super) struct Placer<'r> {
    pub(super) role: &'r Role,
    pub(super) cpu: u64,
    pub(super) memory: u64,
    pub(super) host_ports: Vec<(&'static str, i64)>,
    /// Why each node is out for this role regardless of load; `None`: a candidate.
    pub(super) static_reject: Vec<Option<&'static str>>,
    /// Digest per architecture for a stored image.
    pub(super) variants: Option<&'r BTreeMap<Arch, String>>,
    /// A stored image that was never imported: nothing can be placed.
    pub(super) missing_image: bool,
}

impl<'r> Placer<'r> {
    pub(super) fn new(role: &'r Role, board: &Board, catalog: &'r Catalog) -> Self {
        let spec = &role.spec;
        let stored = stored_image(role);
        let variants = stored.as_ref().and_then(|image| catalog.get(image));
        let static_reject = board
            .nodes
            .iter()
            .map(|node| {
                if node.status.as_ref().map(|s| s.phase) != Some(NodePhase::Ready) {
                    Some("not ready")
                } else if node.spec.unschedulable {
                    Some("cordoned")
                } else if !spec.placement.arch.is_empty()
                    && !spec.placement.arch.contains(&node.spec.arch)
                {
                    Some("wrong architecture")
                } else if variants.is_some_and(|v| !v.contains_key(&node.spec.arch)) {
                    Some("no image variant for its architecture")
                } else if spec
                    .placement
                    .node_selector
                    .iter()
                    .any(|(k, v)| node.metadata.labels.get(k) != Some(v))
                {
                    Some("not matching nodeSelector")
                } else {
                    None
                }
            })
            .collect();
        let (cpu, memory) = requests(spec);
        Placer {
            role,
            cpu,
            memory,
            host_ports: host_ports(spec),
            static_reject,
            variants,
            missing_image: stored.is_some() && variants.is_none(),
        }
    }

    /// Binds a container to the best node, or marks it pending with the reason. True if it
    /// changed.
    pub(super) fn bind(&mut self, container: &mut Container, board: &mut Board<'_>) -> bool {
        let before = (container.spec.node.clone(), container.status.clone());
        match self.place(board, |_| true) {
            Ok(i) => {
                let node = &board.nodes[i];
                container.spec.image_digest = self.digest_for(node);
                board.add(i, &self.role.metadata.name, &self.role.spec);
                container.spec.node = Some(node.metadata.name.clone());
                container.status = Some(ContainerStatus {
                    phase: ContainerPhase::Pending,
                    reason: Some("Scheduled".into()),
                    ..Default::default()
                });
            }
            Err(why) => {
                container.spec.node = None;
                container.spec.image_digest = None;
                container.status = Some(ContainerStatus {
                    phase: ContainerPhase::Pending,
                    reason: Some("Unschedulable".into()),
                    message: Some(why),
                    ..Default::default()
                });
            }
        }
        before != (container.spec.node.clone(), container.status.clone())
    }

    /// The image digest of the variant for `node`'s architecture (stored images only).
    pub(super) fn digest_for(&self, node: &Node) -> Option<String> {
        self.variants.and_then(|v| v.get(&node.spec.arch).cloned())
    }

    /// Picks a node index among those `allowed` for one more container, or says why none fits.
    pub(super) fn place(
        &self,
        board: &Board,
        allowed: impl Fn(usize) -> bool,
    ) -> Result<usize, String> {
        let spec = &self.role.spec;
        if self.missing_image {
            return Err(format!(
                "image {} is not in the image store (texu image import)",
                spec.image
            ));
        }
        let same_role = board.by_role.get(self.role.metadata.name.as_str());
        // Spread over a label (`site`): how many of the role each value already holds.
        let domains: Option<HashMap<&str, i64>> = spec
            .placement
            .spread
            .as_deref()
            .filter(|label| *label != "node")
            .map(|label| {
                let mut counts: HashMap<&str, i64> = HashMap::new();
                for (i, node) in board.nodes.iter().enumerate() {
                    let value = node.metadata.labels.get(label).map_or("", String::as_str);
                    *counts.entry(value).or_default() += i64::from(same_role.map_or(0, |c| c[i]));
                }
                counts
            });
        let mut rejected: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut best: Option<((i64, i64, i64), usize)> = None;
        for (i, node) in board.nodes.iter().enumerate() {
            if !allowed(i) {
                continue;
            }
            let load = &board.loads[i];
            let mine = same_role.map_or(0, |counts| counts[i]);
            let reason = if let Some(why) = self.static_reject[i] {
                Some(why)
            } else if self.host_ports.iter().any(|p| board.ports[i].contains(p)) {
                Some("hostPort in use")
            } else if load.cpu_millis + self.cpu > u64::from(node.spec.cpus) * 1000 {
                Some("insufficient cpu")
            } else if load.memory_bytes + self.memory > node.spec.memory_bytes {
                Some("insufficient memory")
            } else if spec
                .placement
                .max_per_node
                .is_some_and(|max| i64::from(mine) >= max)
            {
                Some("maxPerNode reached")
            } else {
                None
            };
            if let Some(reason) = reason {
                *rejected.entry(reason).or_default() += 1;
                continue;
            }
            let total = i64::from(load.containers);
            let domain = domains.as_ref().map_or(0, |d| {
                let label = spec.placement.spread.as_deref().unwrap_or_default();
                d.get(node.metadata.labels.get(label).map_or("", String::as_str))
                    .copied()
                    .unwrap_or(0)
            });
            // Lower is better. Spread: fewest of this role in the node's label value (site),
            // then on the node, then fewest overall. Pack: fullest.
            let score = match spec.placement.strategy {
                Strategy::Spread => (domain, i64::from(mine), total),
                Strategy::Pack => (-total, i64::from(mine), 0),
            };
            if best.is_none_or(|(b, _)| score < b) {
                best = Some((score, i));
            }
        }
        match best {
            Some((_, i)) => Ok(i),
            None if board.nodes.is_empty() => Err("0/0 nodes: no node has joined".to_string()),
            None => {
                let parts: Vec<String> = rejected
                    .iter()
                    .map(|(why, n)| format!("{n} {why}"))
                    .collect();
                Err(format!(
                    "0/{} nodes: {}",
                    board.nodes.len(),
                    parts.join(", ")
                ))
            }
        }
    }
}
