//! The scheduler: a pure function from a snapshot of roles, nodes and containers to a plan.
//!
//! No I/O and no clock: the same snapshot always gives the same plan, so it is tested with plain
//! values. Reconciliation (which containers should exist) is separate from placement (which node
//! each goes to): `plan` walks every role's ordinals, and `place` filters and scores nodes.

use std::collections::{BTreeMap, HashMap};

use texu_api::{
    Arch, Container, ContainerPhase, ContainerSpec, ContainerStatus, Node, NodePhase, Role,
    Strategy,
};

mod board;
mod moves;
mod placer;

use board::Board;
pub use moves::replace;
use moves::{drain, lost, rebalance, settle_handoff};
use placer::Placer;

/// What the scheduler wants written.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    /// New containers (bound to a node, or pending with a reason).
    pub create: Vec<Container>,
    /// Existing containers with a new node, template or generation.
    pub update: Vec<Container>,
    /// Names of containers to delete (role gone or scaled down).
    pub delete: Vec<String>,
}

impl Plan {
    /// True when nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// A container's name: `ROLE-ORDINAL`.
pub fn container_name(role: &str, ordinal: i64) -> String {
    format!("{role}-{ordinal}")
}

/// The image store's contents: `NAME:TAG` -> digest per architecture.
pub type Catalog = BTreeMap<String, BTreeMap<Arch, String>>;

/// Cluster-wide scheduling settings (controller flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How long a board must have stayed Ready before spread roles rebalance onto it, so a
    /// flapping link moves nothing.
    pub settle_secs: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { settle_secs: 30 }
    }
}

fn is_ready(node: &Node) -> bool {
    node.status.as_ref().map(|s| s.phase) == Some(NodePhase::Ready)
}

/// Seconds a node has been in its current phase.
fn in_phase_for(node: &Node, now: i64) -> i64 {
    node.status
        .as_ref()
        .and_then(|s| s.since.as_deref())
        .and_then(crate::clock::parse_rfc3339)
        .map_or(0, |since| (now - since).max(0))
}

fn is_alive(status: Option<&ContainerStatus>) -> bool {
    status.is_some_and(|s| matches!(s.phase, ContainerPhase::Running | ContainerPhase::Ready))
}

/// Computes the plan for a snapshot with default settings.
pub fn plan(
    roles: &[Role],
    nodes: &[Node],
    containers: &[Container],
    catalog: &Catalog,
    now: i64,
) -> Plan {
    plan_with(roles, nodes, containers, catalog, now, &Settings::default())
}

/// Computes the plan for a snapshot. `now` (seconds since the epoch) is an input, not a clock
/// read, so the same snapshot always gives the same plan.
///
/// Per role, in order: containers to create or delete for `replicas`; template updates;
/// unbound containers placed; containers of a lost board marked or moved; then at most
/// `maxUnavailable` make-before-break moves off draining boards; then, for spread roles with
/// nothing else moving, one rebalancing move onto a board that has been Ready for the settle
/// period. A move is a `handoff`: the new copy starts on its board while the old one serves,
/// and the controller switches them when the new copy is Ready.
pub fn plan_with(
    roles: &[Role],
    nodes: &[Node],
    containers: &[Container],
    catalog: &Catalog,
    now: i64,
    settings: &Settings,
) -> Plan {
    let mut out = Plan::default();
    let roles_by_name: HashMap<&str, &Role> = roles
        .iter()
        .map(|r| (r.metadata.name.as_str(), r))
        .collect();
    let mut board = Board::new(nodes);
    // Which boards a rebalance may move onto: Ready for the settle period (judged once).
    let settled: Vec<bool> = nodes
        .iter()
        .map(|n| is_ready(n) && in_phase_for(n, now) >= settings.settle_secs)
        .collect();
    let mut existing: HashMap<&str, &Container> = HashMap::new();
    for c in containers {
        existing.insert(c.metadata.name.as_str(), c);
        let Some(role) = roles_by_name.get(c.spec.role.as_str()) else {
            continue; // retired below
        };
        if c.spec.ordinal >= role.spec.replicas {
            continue; // retired below
        }
        let spec = c.spec.template.as_ref().unwrap_or(&role.spec);
        if let Some(i) = board.node_index(c.spec.node.as_deref()) {
            board.add(i, role.metadata.name.as_str(), spec);
        }
        // A move in progress holds room on both boards.
        if let Some(j) = board.node_index(c.spec.handoff.as_ref().map(|h| h.node.as_str())) {
            board.add(j, role.metadata.name.as_str(), spec);
        }
    }
    // Rebalancing moves one container at a time, cluster-wide.
    let mut rebalancing = containers
        .iter()
        .filter(|c| {
            c.spec
                .handoff
                .as_ref()
                .is_some_and(|h| h.reason == REBALANCE)
        })
        .count();
    for role in roles {
        let mut placer = Placer::new(role, &board, catalog);
        let mut mine: Vec<(Container, Change)> = Vec::new();
        for ordinal in 0..role.spec.replicas {
            let name = container_name(&role.metadata.name, ordinal);
            match existing.get(name.as_str()) {
                Some(current) => {
                    let mut next = (*current).clone();
                    let mut changed = false;
                    if current.spec.generation != role.metadata.generation
                        || current.spec.template.as_ref() != Some(&role.spec)
                    {
                        let template = current.spec.template.as_ref();
                        // Only `replicas` changed: the members that stay are left as they are
                        // (no write for each of them, no restart).
                        let only_replicas = template.is_some_and(|t| {
                            texu_api::RoleSpec {
                                replicas: role.spec.replicas,
                                ..t.clone()
                            } == role.spec
                        });
                        if !only_replicas {
                            // A new generation (fencing token: the board makes a new
                            // container) unless only live file texts changed.
                            if template.is_none_or(|t| t.needs_new_containers(&role.spec)) {
                                next.spec.generation = role.metadata.generation;
                            }
                            next.spec.template = Some(role.spec.clone());
                            changed = true;
                        }
                    }
                    changed |= crate::stateful::keep_running(&mut next);
                    changed |= settle_handoff(&mut next, &board);
                    match board.node_index(current.spec.node.as_deref()) {
                        None => changed |= placer.bind(&mut next, &mut board),
                        Some(i) => {
                            changed |=
                                lost(role, &nodes[i], &mut next, &mut placer, &mut board, now)
                        }
                    }
                    let change = if changed {
                        Change::Update
                    } else {
                        Change::None
                    };
                    mine.push((next, change));
                }
                None if !crate::stateful::may_create(
                    role,
                    ordinal,
                    mine.iter().map(|(c, _)| c),
                ) => {}
                None => {
                    let mut container = Container::new(
                        name,
                        ContainerSpec {
                            role: role.metadata.name.clone(),
                            ordinal,
                            generation: role.metadata.generation,
                            template: Some(role.spec.clone()),
                            ..Default::default()
                        },
                    );
                    placer.bind(&mut container, &mut board);
                    mine.push((container, Change::Create));
                }
            }
        }
        if !role.spec.stateful {
            drain(role, &mut mine, &mut placer, &mut board);
            if rebalancing == 0
                && role.spec.placement.strategy == Strategy::Spread
                && rebalance(role, &mut mine, &mut placer, &mut board, &settled)
            {
                rebalancing += 1;
            }
        }
        for (c, change) in mine {
            match change {
                Change::Create => out.create.push(c),
                Change::Update => out.update.push(c),
                Change::None => {}
            }
        }
    }
    crate::stateful::retire(&roles_by_name, nodes, containers, &mut out);
    out
}

/// What the plan does with one of a role's containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    None,
    Create,
    Update,
}

impl Change {
    fn mark(&mut self) {
        if *self == Change::None {
            *self = Change::Update;
        }
    }
}

/// `handoff.reason` of a move off a draining board.
pub const DRAIN: &str = "Drain";
/// `handoff.reason` of a move that evens out a spread role.
pub const REBALANCE: &str = "Rebalance";

#[cfg(test)]
mod tests;
