//! The scheduler: a pure function from a snapshot of roles, nodes and containers to a plan.
//!
//! No I/O and no clock: the same snapshot always gives the same plan, so it is tested with plain
//! values. Reconciliation (which containers should exist) is separate from placement (which node
//! each goes to): `plan` walks every role's ordinals, and `place` filters and scores nodes.

use std::collections::{BTreeMap, HashMap, HashSet};

use texu_api::{
    Arch, Container, ContainerPhase, ContainerSpec, ContainerStatus, Handoff, ImageRef, Node,
    NodePhase, Role, Strategy,
};

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

/// What is already placed on a node, in requests.
#[derive(Debug, Default, Clone, Copy)]
struct Load {
    cpu_millis: u64,
    memory_bytes: u64,
    containers: u32,
}

fn requests(role: &texu_api::RoleSpec) -> (u64, u64) {
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
fn host_ports(role: &texu_api::RoleSpec) -> Vec<(&'static str, i64)> {
    role.ports
        .iter()
        .filter_map(|p| p.host_port.map(|h| (p.protocol.as_str(), h)))
        .collect()
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

/// The cluster as placement sees it: nodes by index, what each holds, per role.
struct Board<'a> {
    nodes: &'a [Node],
    index: HashMap<&'a str, usize>,
    loads: Vec<Load>,
    /// Containers of each role on each node.
    by_role: HashMap<String, Vec<u32>>,
    /// `hostPort`s taken on each node.
    ports: Vec<HashSet<(&'static str, i64)>>,
}

impl<'a> Board<'a> {
    fn new(nodes: &'a [Node]) -> Self {
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

    fn node_index(&self, name: Option<&str>) -> Option<usize> {
        name.and_then(|n| self.index.get(n).copied())
    }

    fn add(&mut self, node: usize, role: &str, spec: &texu_api::RoleSpec) {
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

    fn count(&self, role: &str, node: usize) -> u32 {
        self.by_role.get(role).map_or(0, |counts| counts[node])
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
            out.delete.push(c.metadata.name.clone());
            continue;
        };
        if c.spec.ordinal >= role.spec.replicas {
            out.delete.push(c.metadata.name.clone());
            continue;
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
                        next.spec.generation = role.metadata.generation;
                        next.spec.template = Some(role.spec.clone());
                        changed = true;
                    }
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

/// Ends a move that cannot finish: its target board is gone or not Ready, or its new copy
/// failed. The old copy never stopped, so nothing is lost; the next pass may try again.
fn settle_handoff(container: &mut Container, board: &Board) -> bool {
    let Some(h) = &container.spec.handoff else {
        return false;
    };
    let target_ready = board
        .node_index(Some(h.node.as_str()))
        .is_some_and(|j| is_ready(&board.nodes[j]));
    let failed = h
        .status
        .as_ref()
        .is_some_and(|s| s.phase == ContainerPhase::Failed);
    if target_ready && !failed {
        return false;
    }
    container.spec.handoff = None;
    true
}

/// Starts make-before-break moves off draining boards, at most `maxUnavailable` of the role
/// at a time (moves already in flight count).
fn drain(
    role: &Role,
    mine: &mut [(Container, Change)],
    placer: &mut Placer<'_>,
    board: &mut Board<'_>,
) {
    let budget = usize::try_from(role.spec.max_unavailable.max(1)).unwrap_or(1);
    let mut moving = mine
        .iter()
        .filter(|(c, _)| c.spec.handoff.is_some())
        .count();
    for (c, change) in mine.iter_mut() {
        if moving >= budget {
            return;
        }
        let Some(i) = board.node_index(c.spec.node.as_deref()) else {
            continue;
        };
        let node = &board.nodes[i];
        if c.spec.handoff.is_some() || !node.spec.draining || !is_ready(node) {
            continue;
        }
        if let Ok(j) = placer.place(board, |_| true) {
            start_handoff(c, j, DRAIN, placer, board);
            change.mark();
            moving += 1;
        }
    }
}

/// One move of a spread role from the board holding the most of it to one holding at least
/// two fewer that has been Ready for the settle period. Only when all of the role is placed,
/// alive and not moving. True if it started one.
fn rebalance(
    role: &Role,
    mine: &mut [(Container, Change)],
    placer: &mut Placer<'_>,
    board: &mut Board<'_>,
    settled: &[bool],
) -> bool {
    let calm = mine.iter().all(|(c, change)| {
        *change == Change::None
            && c.spec.handoff.is_none()
            && board.node_index(c.spec.node.as_deref()).is_some()
            && is_alive(c.status.as_ref())
    });
    if !calm {
        return false;
    }
    let name = role.metadata.name.as_str();
    // The donor: the node with the most of the role; the last ordinal on it moves.
    let Some((donor, most)) = mine
        .iter()
        .filter_map(|(c, _)| board.node_index(c.spec.node.as_deref()))
        .map(|i| (i, board.count(name, i)))
        .max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)))
    else {
        return false;
    };
    // A move needs a donor with at least two more than the target will have.
    if most < 2 {
        return false;
    }
    let Ok(target) = placer.place(board, |j| settled[j]) else {
        return false;
    };
    if board.count(name, target) + 2 > most {
        return false;
    }
    let Some((c, change)) = mine
        .iter_mut()
        .rev()
        .find(|(c, _)| board.node_index(c.spec.node.as_deref()) == Some(donor))
    else {
        return false;
    };
    start_handoff(c, target, REBALANCE, placer, board);
    change.mark();
    true
}

fn start_handoff(
    c: &mut Container,
    target: usize,
    reason: &str,
    placer: &Placer<'_>,
    board: &mut Board<'_>,
) {
    let node = &board.nodes[target];
    c.spec.handoff = Some(Handoff {
        node: node.metadata.name.clone(),
        reason: reason.to_string(),
        image_digest: placer.digest_for(node),
        status: None,
    });
    board.add(target, &placer.role.metadata.name, &placer.role.spec);
}

/// A container on a board that stopped answering: marked `Lost`; a stateless one is placed
/// on another board once the board has been away for the role's `lostAfter` (default 0). A
/// stateful member is never moved automatically. True if the container changed.
fn lost(
    role: &Role,
    node: &Node,
    container: &mut Container,
    placer: &mut Placer<'_>,
    board: &mut Board<'_>,
    now: i64,
) -> bool {
    if is_ready(node) {
        return false;
    }
    let node_name = &node.metadata.name;
    // A move in flight whose new copy's board is fine: the old board died first, so the move
    // completes now (its room on the target is already held).
    if let Some(h) = container.spec.handoff.take() {
        container.spec.node = Some(h.node.clone());
        container.spec.image_digest = h.image_digest;
        container.spec.moved_from = Some(node_name.clone());
        container.status = Some(h.status.unwrap_or_else(|| ContainerStatus {
            phase: ContainerPhase::Pending,
            ..Default::default()
        }));
        if let Some(s) = container.status.as_mut() {
            s.reason = Some("Replaced".into());
            s.message = Some(format!(
                "moved from {node_name}, not ready, to {} (its move was under way)",
                h.node
            ));
        }
        return true;
    }
    let away = in_phase_for(node, now);
    let lost_after = role
        .spec
        .disconnect
        .lost_after
        .as_ref()
        .and_then(|d| d.as_std().ok())
        .map_or(0, |d| d.as_secs() as i64);
    let mut unplaceable = None;
    if !role.spec.stateful && away >= lost_after {
        let mut moved = container.clone();
        placer.bind(&mut moved, board);
        if let Some(new) = moved.spec.node.clone() {
            if let Some(s) = moved.status.as_mut() {
                s.reason = Some("Replaced".into());
                s.message = Some(format!(
                    "moved from {node_name}, not ready for {away}s, to {new}"
                ));
            }
            moved.spec.moved_from = Some(node_name.clone());
            *container = moved;
            return true;
        }
        // Nowhere else to go: it stays bound to its board, Lost, and moves when a place frees
        // up or comes back with the board.
        unplaceable = moved.status.and_then(|s| s.message);
    }
    let message = if role.spec.stateful {
        format!("node {node_name} is not ready; stateful members stay (texu replace moves one)")
    } else if let Some(why) = unplaceable {
        format!("node {node_name} is not ready and no other board fits: {why}")
    } else {
        format!("node {node_name} is not ready; replaced after lostAfter ({lost_after}s)")
    };
    // What was known stays (its address is what `texu replace` hands on as `replaces`).
    let known = container.status.clone().unwrap_or_default();
    let want = ContainerStatus {
        phase: ContainerPhase::Lost,
        reason: Some("NodeNotReady".into()),
        message: Some(message),
        address: known.address,
        restarts: known.restarts,
        last_exit: known.last_exit,
        last_probe: None,
    };
    if container.status.as_ref() == Some(&want) {
        return false;
    }
    container.status = Some(want);
    true
}

/// Binds a container to `target` for `texu replace`: the filters must pass there (other than
/// the container's own place on its old board). The member starts there with `replaces` set to
/// its old address.
pub fn replace(
    role: &Role,
    nodes: &[Node],
    containers: &[Container],
    catalog: &Catalog,
    name: &str,
    target: &str,
) -> Result<Container, String> {
    let mut board = Board::new(nodes);
    let mut found = None;
    for c in containers {
        if c.metadata.name == name {
            found = Some(c.clone());
            continue;
        }
        if let (Some(i), Some(spec)) = (
            board.node_index(c.spec.node.as_deref()),
            c.spec.template.as_ref(),
        ) {
            board.add(i, &c.spec.role, spec);
        }
    }
    let mut c = found.ok_or_else(|| format!("container {name} not found"))?;
    let j = board
        .node_index(Some(target))
        .ok_or_else(|| format!("node {target} not found"))?;
    if c.spec.node.as_deref() == Some(target) {
        return Err(format!("{name} is already on {target}"));
    }
    let placer = Placer::new(role, &board, catalog);
    placer
        .place(&board, |i| i == j)
        .map_err(|why| format!("{name} cannot run on {target}: {why}"))?;
    let old = c.spec.node.clone().unwrap_or_default();
    // Only ever an address: a board's report is a string, and templates put it in scripts.
    c.spec.replaces = c
        .status
        .as_ref()
        .and_then(|s| s.address.as_deref())
        .and_then(|a| a.parse().ok());
    c.spec.node = Some(target.to_string());
    c.spec.image_digest = placer.digest_for(&nodes[j]);
    c.spec.moved_from = None;
    c.spec.handoff = None;
    c.status = Some(ContainerStatus {
        phase: ContainerPhase::Pending,
        reason: Some("Replacing".into()),
        message: Some(format!(
            "replacing the member on {old}{}",
            c.spec
                .replaces
                .map(|a| format!(" (replaces {a})"))
                .unwrap_or_default()
        )),
        ..Default::default()
    });
    Ok(c)
}

/// `NAME:TAG` when the role runs an image from the image store.
fn stored_image(role: &Role) -> Option<String> {
    match role.spec.image_ref() {
        Ok(ImageRef::Stored { name, tag }) => Some(format!("{name}:{tag}")),
        _ => None,
    }
}

/// Places the containers of one role. The filters that do not depend on what is placed
/// (readiness, cordon, architecture, selector, image variant) run once per role; only
/// resources, `maxPerNode` and the score are checked per container.
struct Placer<'r> {
    role: &'r Role,
    cpu: u64,
    memory: u64,
    host_ports: Vec<(&'static str, i64)>,
    /// Why each node is out for this role regardless of load; `None`: a candidate.
    static_reject: Vec<Option<&'static str>>,
    /// Digest per architecture for a stored image.
    variants: Option<&'r BTreeMap<Arch, String>>,
    /// A stored image that was never imported: nothing can be placed.
    missing_image: bool,
}

impl<'r> Placer<'r> {
    fn new(role: &'r Role, board: &Board, catalog: &'r Catalog) -> Self {
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
    fn bind(&mut self, container: &mut Container, board: &mut Board<'_>) -> bool {
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
    fn digest_for(&self, node: &Node) -> Option<String> {
        self.variants.and_then(|v| v.get(&node.spec.arch).cloned())
    }

    /// Picks a node index among those `allowed` for one more container, or says why none fits.
    fn place(&self, board: &Board, allowed: impl Fn(usize) -> bool) -> Result<usize, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use texu_api::{Arch, NodeSpec, NodeStatus, Quantity, RoleSpec};

    const NOW: i64 = 1_795_564_800;

    fn node(name: &str, arch: Arch, ready: bool) -> Node {
        let mut n = Node::new(
            name,
            NodeSpec {
                address: "198.18.0.2".into(),
                arch,
                cpus: 4,
                memory_bytes: 1 << 30,
                subnet: None,
                unschedulable: false,
                draining: false,
            },
        );
        n.status = Some(NodeStatus {
            phase: if ready {
                NodePhase::Ready
            } else {
                NodePhase::NotReady
            },
            ..Default::default()
        });
        n
    }

    fn role(name: &str, replicas: i64) -> Role {
        let mut spec = RoleSpec::with_image("host");
        spec.replicas = replicas;
        let mut r = Role::new(name, spec);
        r.metadata.generation = 1;
        r
    }

    fn apply(plan: &Plan, containers: &mut Vec<Container>) {
        containers.retain(|c| !plan.delete.contains(&c.metadata.name));
        for u in &plan.update {
            if let Some(c) = containers
                .iter_mut()
                .find(|c| c.metadata.name == u.metadata.name)
            {
                *c = u.clone();
            }
        }
        containers.extend(plan.create.iter().cloned());
    }

    fn per_node(containers: &[Container]) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for c in containers {
            *m.entry(c.spec.node.clone().unwrap_or_default())
                .or_default() += 1;
        }
        m
    }

    #[test]
    fn spreads_replicas_evenly_and_is_deterministic() {
        let nodes = vec![
            node("a", Arch::Amd64, true),
            node("b", Arch::Amd64, true),
            node("c", Arch::Amd64, true),
        ];
        let roles = vec![role("app", 6)];
        let p1 = plan(&roles, &nodes, &[], &Catalog::new(), NOW);
        assert_eq!(p1, plan(&roles, &nodes, &[], &Catalog::new(), NOW));
        assert_eq!(p1.create.len(), 6);
        let counts = per_node(&p1.create);
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), [2, 2, 2]);
        assert_eq!(p1.create[0].metadata.name, "app-0");
        let mut containers = Vec::new();
        apply(&p1, &mut containers);
        assert!(
            plan(&roles, &nodes, &containers, &Catalog::new(), NOW).is_empty(),
            "a converged snapshot plans nothing"
        );
    }

    #[test]
    fn scales_down_deletes_the_highest_ordinals_and_deleted_roles() {
        let nodes = vec![node("a", Arch::Amd64, true)];
        let mut containers = Vec::new();
        apply(
            &plan(
                &[role("app", 3), role("db", 1)],
                &nodes,
                &[],
                &Catalog::new(),
                NOW,
            ),
            &mut containers,
        );
        let p = plan(&[role("app", 1)], &nodes, &containers, &Catalog::new(), NOW);
        let mut deleted = p.delete.clone();
        deleted.sort();
        assert_eq!(deleted, ["app-1", "app-2", "db-0"]);
    }

    #[test]
    fn unschedulable_reasons_are_counted() {
        let mut full = node("full", Arch::Amd64, true);
        full.spec.memory_bytes = 64 << 20;
        let nodes = vec![
            node("down", Arch::Amd64, false),
            node("arm", Arch::Arm64, true),
            full,
        ];
        let mut r = role("app", 1);
        r.spec.placement.arch = vec![Arch::Amd64];
        r.spec.resources.memory = Some(Quantity("128Mi".into()));
        let p = plan(&[r], &nodes, &[], &Catalog::new(), NOW);
        let status = p.create[0].status.clone().unwrap();
        assert_eq!(p.create[0].spec.node, None);
        assert_eq!(status.reason.as_deref(), Some("Unschedulable"));
        assert_eq!(
            status.message.as_deref(),
            Some("0/3 nodes: 1 insufficient memory, 1 not ready, 1 wrong architecture")
        );
    }

    #[test]
    fn pending_containers_are_bound_when_a_node_arrives() {
        let mut containers = Vec::new();
        apply(
            &plan(&[role("app", 1)], &[], &[], &Catalog::new(), NOW),
            &mut containers,
        );
        assert_eq!(containers[0].spec.node, None);
        let p = plan(
            &[role("app", 1)],
            &[node("a", Arch::Amd64, true)],
            &containers,
            &Catalog::new(),
            NOW,
        );
        assert_eq!(p.update.len(), 1);
        assert_eq!(p.update[0].spec.node.as_deref(), Some("a"));
    }

    #[test]
    fn a_new_generation_updates_the_template_in_place() {
        let nodes = vec![node("a", Arch::Amd64, true)];
        let mut containers = Vec::new();
        apply(
            &plan(&[role("app", 1)], &nodes, &[], &Catalog::new(), NOW),
            &mut containers,
        );
        let mut r = role("app", 1);
        r.metadata.generation = 2;
        r.spec.command = vec!["/bin/true".into()];
        let p = plan(&[r], &nodes, &containers, &Catalog::new(), NOW);
        assert_eq!(p.update.len(), 1);
        assert_eq!(p.update[0].spec.generation, 2);
        assert_eq!(
            p.update[0].spec.node.as_deref(),
            Some("a"),
            "stays on its node"
        );
    }

    #[test]
    fn stored_images_go_only_where_a_variant_exists_and_carry_its_digest() {
        let nodes = vec![node("pi", Arch::Arm64, true), node("pc", Arch::Amd64, true)];
        let mut r = role("app", 2);
        r.spec.image = "exchange:1.0".into();
        let p = plan(&[r.clone()], &nodes, &[], &Catalog::new(), NOW);
        let status = p.create[0].status.clone().unwrap();
        assert!(status.message.unwrap().contains("not in the image store"));
        let mut catalog = Catalog::new();
        catalog.insert(
            "exchange:1.0".into(),
            BTreeMap::from([(Arch::Arm64, "sha256:aa".to_string())]),
        );
        let p = plan(&[r], &nodes, &[], &catalog, NOW);
        assert_eq!(p.create[0].spec.node.as_deref(), Some("pi"));
        assert_eq!(p.create[0].spec.image_digest.as_deref(), Some("sha256:aa"));
        assert_eq!(
            p.create[1].spec.node.as_deref(),
            Some("pi"),
            "the amd64 board has no variant"
        );
        let mut armonly = role("solo", 1);
        armonly.spec.image = "exchange:1.0".into();
        let p = plan(&[armonly], &nodes[1..], &[], &catalog, NOW);
        assert_eq!(
            p.create[0].status.clone().unwrap().message.as_deref(),
            Some("0/1 nodes: 1 no image variant for its architecture")
        );
    }

    #[test]
    fn containers_of_a_lost_board_move_after_lost_after_and_stateful_ones_stay() {
        let nodes = vec![node("a", Arch::Amd64, true), node("b", Arch::Amd64, true)];
        let mut app = role("app", 2);
        app.spec.placement.max_per_node = Some(1);
        let mut db = role("db", 2);
        db.spec.stateful = true;
        db.spec.placement.max_per_node = Some(1);
        let roles = vec![app.clone(), db.clone()];
        let mut containers = Vec::new();
        apply(
            &plan(&roles, &nodes, &[], &Catalog::new(), NOW),
            &mut containers,
        );
        let on_b = |cs: &[Container], role: &str| {
            cs.iter()
                .find(|c| c.spec.role == role && c.spec.node.as_deref() == Some("b"))
                .map(|c| c.metadata.name.clone())
                .unwrap()
        };
        let (app_b, db_b) = (on_b(&containers, "app"), on_b(&containers, "db"));
        // Board b goes silent at NOW; a third board c is there to take its work.
        let mut down = nodes.clone();
        down[1].status = Some(NodeStatus {
            phase: NodePhase::NotReady,
            since: Some(crate::clock::format_rfc3339(NOW)),
            ..Default::default()
        });
        down.push(node("c", Arch::Amd64, true));
        let p = plan(&roles, &down, &containers, &Catalog::new(), NOW);
        let moved = p.update.iter().find(|c| c.metadata.name == app_b).unwrap();
        assert_eq!(
            moved.spec.node.as_deref(),
            Some("c"),
            "lostAfter 0: replaced at once"
        );
        assert_eq!(
            moved.status.as_ref().unwrap().reason.as_deref(),
            Some("Replaced")
        );
        let member = p.update.iter().find(|c| c.metadata.name == db_b).unwrap();
        assert_eq!(
            member.spec.node.as_deref(),
            Some("b"),
            "a stateful member stays"
        );
        assert_eq!(member.status.as_ref().unwrap().phase, ContainerPhase::Lost);

        // With lostAfter 30s the container is Lost until the board has been away that long.
        let mut patient = app.clone();
        patient.spec.disconnect.lost_after = Some(texu_api::Duration("30s".into()));
        let roles = vec![patient, db];
        let p = plan(&roles, &down, &containers, &Catalog::new(), NOW + 10);
        let waiting = p.update.iter().find(|c| c.metadata.name == app_b).unwrap();
        assert_eq!(waiting.spec.node.as_deref(), Some("b"));
        assert_eq!(waiting.status.as_ref().unwrap().phase, ContainerPhase::Lost);
        let p = plan(&roles, &down, &containers, &Catalog::new(), NOW + 31);
        let moved = p.update.iter().find(|c| c.metadata.name == app_b).unwrap();
        assert_eq!(moved.spec.node.as_deref(), Some("c"));
    }

    #[test]
    fn a_lost_container_with_nowhere_to_go_stays_bound_to_its_board() {
        let nodes = vec![node("a", Arch::Amd64, true), node("b", Arch::Amd64, true)];
        let mut r = role("echo", 2);
        r.spec.placement.max_per_node = Some(1);
        let mut containers = Vec::new();
        apply(
            &plan(&[r.clone()], &nodes, &[], &Catalog::new(), NOW),
            &mut containers,
        );
        let mut down = nodes.clone();
        down[1].status = Some(NodeStatus {
            phase: NodePhase::NotReady,
            since: Some(crate::clock::format_rfc3339(NOW)),
            ..Default::default()
        });
        let p = plan(&[r], &down, &containers, &Catalog::new(), NOW);
        assert_eq!(p.update.len(), 1);
        let lost = &p.update[0];
        assert_eq!(lost.spec.node.as_deref(), Some("b"), "not unbound");
        let status = lost.status.as_ref().unwrap();
        assert_eq!(status.phase, ContainerPhase::Lost);
        assert!(
            status
                .message
                .as_deref()
                .unwrap()
                .contains("maxPerNode reached"),
            "{status:?}"
        );
    }

    #[test]
    fn selector_max_per_node_and_pack() {
        let mut a = node("a", Arch::Amd64, true);
        a.metadata.labels.insert("site".into(), "home".into());
        let nodes = vec![a, node("b", Arch::Amd64, true)];
        let mut r = role("app", 3);
        r.spec
            .placement
            .node_selector
            .insert("site".into(), "home".into());
        r.spec.placement.max_per_node = Some(2);
        let p = plan(&[r], &nodes, &[], &Catalog::new(), NOW);
        assert_eq!(
            p.create
                .iter()
                .filter(|c| c.spec.node.as_deref() == Some("a"))
                .count(),
            2
        );
        let last = p.create[2].status.clone().unwrap();
        assert_eq!(
            last.message.as_deref(),
            Some("0/2 nodes: 1 maxPerNode reached, 1 not matching nodeSelector")
        );

        let mut packed = role("batch", 3);
        packed.spec.placement.strategy = Strategy::Pack;
        let p = plan(&[packed], &nodes, &[], &Catalog::new(), NOW);
        assert_eq!(per_node(&p.create).len(), 1, "pack fills one node first");
    }

    fn ready_since(mut n: Node, since: i64) -> Node {
        if let Some(s) = n.status.as_mut() {
            s.since = Some(crate::clock::format_rfc3339(since));
        }
        n
    }

    /// Marks every container alive (as agents would report) so rebalancing may act.
    fn all_ready(containers: &mut [Container]) {
        for c in containers {
            c.status = Some(ContainerStatus {
                phase: ContainerPhase::Ready,
                ..Default::default()
            });
        }
    }

    #[test]
    fn host_ports_are_a_filter() {
        let nodes = vec![node("a", Arch::Amd64, true), node("b", Arch::Amd64, true)];
        let mut proxy = role("proxy", 3);
        proxy.spec.ports = vec![texu_api::Port {
            name: "http".into(),
            port: 80,
            host_port: Some(8080),
            protocol: Default::default(),
        }];
        let p = plan(&[proxy], &nodes, &[], &Catalog::new(), NOW);
        let bound: Vec<_> = p
            .create
            .iter()
            .filter_map(|c| c.spec.node.clone())
            .collect();
        assert_eq!(bound.len(), 2, "one per board: {bound:?}");
        let pending = p.create.iter().find(|c| c.spec.node.is_none()).unwrap();
        assert_eq!(
            pending.status.as_ref().unwrap().message.as_deref(),
            Some("0/2 nodes: 2 hostPort in use")
        );
    }

    #[test]
    fn spread_over_a_label_fills_sites_evenly() {
        let mut nodes = Vec::new();
        for (name, site) in [
            ("a1", "north"),
            ("a2", "north"),
            ("a3", "north"),
            ("b1", "south"),
        ] {
            let mut n = node(name, Arch::Amd64, true);
            n.metadata.labels.insert("site".into(), site.into());
            nodes.push(n);
        }
        let mut app = role("app", 4);
        app.spec.placement.spread = Some("site".into());
        let p = plan(&[app], &nodes, &[], &Catalog::new(), NOW);
        let south = p
            .create
            .iter()
            .filter(|c| c.spec.node.as_deref() == Some("b1"))
            .count();
        assert_eq!(south, 2, "half of the role in the one-board site");
    }

    #[test]
    fn drain_moves_make_before_break_within_max_unavailable() {
        let nodes = vec![node("a", Arch::Amd64, true), node("b", Arch::Amd64, true)];
        let mut app = role("app", 4);
        app.spec.max_unavailable = 1;
        let roles = vec![app];
        let mut containers = Vec::new();
        apply(
            &plan(&roles, &nodes, &[], &Catalog::new(), NOW),
            &mut containers,
        );
        let mut draining = nodes.clone();
        draining[0].spec.unschedulable = true;
        draining[0].spec.draining = true;
        let p = plan(&roles, &draining, &containers, &Catalog::new(), NOW);
        assert_eq!(p.update.len(), 1, "one move at a time: {:?}", p.update);
        let moving = &p.update[0];
        assert_eq!(
            moving.spec.node.as_deref(),
            Some("a"),
            "the old copy keeps serving"
        );
        let h = moving.spec.handoff.as_ref().unwrap();
        assert_eq!((h.node.as_str(), h.reason.as_str()), ("b", DRAIN));
        apply(&p, &mut containers);
        // While it is in flight nothing else starts; a failed new copy ends the move.
        assert!(plan(&roles, &draining, &containers, &Catalog::new(), NOW).is_empty());
        let c = containers
            .iter_mut()
            .find(|c| c.spec.handoff.is_some())
            .unwrap();
        c.spec.handoff.as_mut().unwrap().status = Some(ContainerStatus {
            phase: ContainerPhase::Failed,
            ..Default::default()
        });
        let p = plan(&roles, &draining, &containers, &Catalog::new(), NOW);
        assert!(p.update.iter().any(|c| c.spec.node.as_deref() == Some("a")));
        // A stateful member stays on a draining board.
        let mut db = role("db", 1);
        db.spec.stateful = true;
        let mut dbs = Vec::new();
        apply(
            &plan(
                std::slice::from_ref(&db),
                &nodes[..1],
                &[],
                &Catalog::new(),
                NOW,
            ),
            &mut dbs,
        );
        assert!(plan(&[db], &draining, &dbs, &Catalog::new(), NOW).is_empty());
    }

    #[test]
    fn a_move_whose_target_fails_is_dropped_and_one_whose_source_dies_completes() {
        let nodes = vec![node("a", Arch::Amd64, true), node("b", Arch::Amd64, true)];
        let roles = vec![role("app", 1)];
        let mut containers = Vec::new();
        apply(
            &plan(&roles, &nodes[..1], &[], &Catalog::new(), NOW),
            &mut containers,
        );
        containers[0].spec.handoff = Some(Handoff {
            node: "b".into(),
            reason: DRAIN.into(),
            image_digest: None,
            status: None,
        });
        let mut b_down = nodes.clone();
        b_down[1] = node("b", Arch::Amd64, false);
        let p = plan(&roles, &b_down, &containers, &Catalog::new(), NOW);
        assert_eq!(p.update[0].spec.handoff, None);
        assert_eq!(p.update[0].spec.node.as_deref(), Some("a"));
        let mut a_down = nodes.clone();
        a_down[0] = node("a", Arch::Amd64, false);
        let p = plan(&roles, &a_down, &containers, &Catalog::new(), NOW);
        assert_eq!(p.update[0].spec.node.as_deref(), Some("b"));
        assert_eq!(p.update[0].spec.moved_from.as_deref(), Some("a"));
    }

    #[test]
    fn rebalance_waits_for_the_settle_period_and_moves_one_at_a_time() {
        let settings = Settings { settle_secs: 30 };
        let roles = vec![role("app", 6)];
        let two = vec![node("a", Arch::Amd64, true), node("b", Arch::Amd64, true)];
        let mut containers = Vec::new();
        apply(
            &plan(&roles, &two, &[], &Catalog::new(), NOW),
            &mut containers,
        );
        all_ready(&mut containers);
        // Board c comes back at NOW: 3, 3, 0.
        let mut three = two.clone();
        three.push(ready_since(node("c", Arch::Amd64, true), NOW));
        let early = plan_with(
            &roles,
            &three,
            &containers,
            &Catalog::new(),
            NOW + 10,
            &settings,
        );
        assert!(
            early.is_empty(),
            "a board back for 10s is not settled: {early:?}"
        );
        let p = plan_with(
            &roles,
            &three,
            &containers,
            &Catalog::new(),
            NOW + 30,
            &settings,
        );
        assert_eq!(p.update.len(), 1);
        let h = p.update[0].spec.handoff.as_ref().unwrap();
        assert_eq!((h.node.as_str(), h.reason.as_str()), ("c", REBALANCE));
        apply(&p, &mut containers);
        let again = plan_with(
            &roles,
            &three,
            &containers,
            &Catalog::new(),
            NOW + 31,
            &settings,
        );
        assert!(again.is_empty(), "one move at a time");
        // The move completes (as the heartbeat does): 2, 3, 1 -> the next move, then even.
        for _ in 0..3 {
            for c in containers.iter_mut() {
                if let Some(h) = c.spec.handoff.take() {
                    c.spec.node = Some(h.node);
                }
            }
            let p = plan_with(
                &roles,
                &three,
                &containers,
                &Catalog::new(),
                NOW + 40,
                &settings,
            );
            apply(&p, &mut containers);
        }
        let counts = per_node(&containers);
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            vec![2, 2, 2],
            "{counts:?}"
        );
    }

    #[test]
    fn replace_moves_a_member_with_its_old_address() {
        let nodes = vec![node("a", Arch::Amd64, false), node("b", Arch::Amd64, true)];
        let mut db = role("db", 1);
        db.spec.stateful = true;
        let mut member = Container::new(
            "db-0",
            ContainerSpec {
                role: "db".into(),
                ordinal: 0,
                node: Some("a".into()),
                generation: 1,
                template: Some(db.spec.clone()),
                ..Default::default()
            },
        );
        member.status = Some(ContainerStatus {
            phase: ContainerPhase::Lost,
            address: Some("198.19.1.5".into()),
            ..Default::default()
        });
        let cs = vec![member];
        let moved = replace(&db, &nodes, &cs, &Catalog::new(), "db-0", "b").unwrap();
        assert_eq!(moved.spec.node.as_deref(), Some("b"));
        assert_eq!(moved.spec.replaces, Some("198.19.1.5".parse().unwrap()));
        assert_eq!(
            moved.status.as_ref().unwrap().reason.as_deref(),
            Some("Replacing")
        );
        let refused = replace(&db, &nodes, &cs, &Catalog::new(), "db-0", "a").unwrap_err();
        assert_eq!(refused, "db-0 is already on a");
        let mut cordoned = nodes.clone();
        cordoned[1].spec.unschedulable = true;
        let refused = replace(&db, &cordoned, &cs, &Catalog::new(), "db-0", "b").unwrap_err();
        assert_eq!(refused, "db-0 cannot run on b: 0/2 nodes: 1 cordoned");
    }
}
