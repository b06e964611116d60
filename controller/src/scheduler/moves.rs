//! Moves: ending a handoff that cannot finish, drains, rebalancing, lost boards and `texu replace`.

use texu_api::{Container, ContainerPhase, ContainerStatus, Handoff, Node, Role};

use super::{in_phase_for, is_alive, is_ready, Board, Catalog, Change, Placer, DRAIN, REBALANCE};

/// Ends a move that cannot finish: its target board is gone or not Ready, or its new copy
/// failed. The old copy never stopped, so nothing is lost; the next pass may try again.
pub(super) fn settle_handoff(container: &mut Container, board: &Board) -> bool {
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
pub(super) fn drain(
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
pub(super) fn rebalance(
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

pub(super) fn start_handoff(
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
pub(super) fn lost(
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
        files: Vec::new(),
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
