//! What a database ring needs of the scheduler, as pure rules over the same snapshot: members
//! of a stateful role start in order (member N+1 is created only once 0..N are Ready); a
//! scale-down retires the highest ordinal first, one at a time, each only once the previous
//! one is gone; and a container that leaves for a scale-down or its role's deletion is first
//! asked to stop (`desired: Stopped`, so its agent runs the `preStop` hook, e.g. `nodetool
//! decommission`) and removed only once its agent reports it stopped. Scaling alone never
//! gives the members that stay a new generation (which would restart them all).

use std::collections::{BTreeMap, HashMap};

use texu_api::{Container, ContainerPhase, DesiredState, EventKind, Node, NodePhase, Role};

use crate::events::Events;
use crate::scheduler::Plan;

/// Whether member `ordinal` of `role`, missing, may be created now: for a stateful role, only
/// when every member before it exists and is Ready (`earlier`: the role's containers below
/// `ordinal`, at most one per ordinal).
pub fn may_create<'a>(
    role: &Role,
    ordinal: i64,
    earlier: impl IntoIterator<Item = &'a Container>,
) -> bool {
    let ready = earlier.into_iter().filter(|c| is_ready(c)).count();
    !role.spec.stateful || i64::try_from(ready).is_ok_and(|n| n >= ordinal)
}

/// A container within its role's `replicas` again (a scale-up taken back before it was
/// removed) runs again. True if it changed.
pub fn keep_running(c: &mut Container) -> bool {
    if c.spec.desired == DesiredState::Running {
        return false;
    }
    c.spec.desired = DesiredState::Running;
    true
}

fn is_ready(c: &Container) -> bool {
    c.status.as_ref().map(|s| s.phase) == Some(ContainerPhase::Ready)
}

/// Whether a container is one a plan should retire: its role is gone, or its ordinal is at or
/// beyond the role's `replicas`.
pub fn is_leaving(c: &Container, roles: &HashMap<&str, &Role>) -> bool {
    roles
        .get(c.spec.role.as_str())
        .is_none_or(|r| c.spec.ordinal >= r.spec.replicas)
}

/// Retires the containers that leave (see [`is_leaving`]) into `out`: a stateless one without
/// a `preStop` hook is deleted at once; any other is asked to stop first and deleted once its
/// agent reports it stopped (or at once if its board is not Ready, or it never ran there).
/// A stateful role that scales down retires only its highest leaving ordinal.
pub fn retire(
    roles: &HashMap<&str, &Role>,
    nodes: &[Node],
    containers: &[Container],
    out: &mut Plan,
) {
    let ready_nodes: Vec<&str> = nodes
        .iter()
        .filter(|n| n.status.as_ref().map(|s| s.phase) == Some(NodePhase::Ready))
        .map(|n| n.metadata.name.as_str())
        .collect();
    // The highest leaving ordinal of each stateful role that still exists.
    let mut highest: BTreeMap<&str, i64> = BTreeMap::new();
    for c in containers.iter().filter(|c| is_leaving(c, roles)) {
        if roles
            .get(c.spec.role.as_str())
            .is_some_and(|r| r.spec.stateful)
        {
            let h = highest
                .entry(c.spec.role.as_str())
                .or_insert(c.spec.ordinal);
            *h = (*h).max(c.spec.ordinal);
        }
    }
    for c in containers.iter().filter(|c| is_leaving(c, roles)) {
        if highest
            .get(c.spec.role.as_str())
            .is_some_and(|h| *h != c.spec.ordinal)
        {
            continue; // waits for the one above it to be gone
        }
        let template = c.spec.template.as_ref();
        let stop_first = template.is_some_and(|t| t.stateful || t.pre_stop.is_some());
        let on_ready_node = c
            .spec
            .node
            .as_deref()
            .is_some_and(|n| ready_nodes.contains(&n));
        let phase = c.status.as_ref().map(|s| s.phase);
        let never_ran = matches!(
            phase,
            None | Some(ContainerPhase::Pending | ContainerPhase::Lost)
        );
        if !stop_first || !on_ready_node || never_ran {
            out.delete.push(c.metadata.name.clone());
        } else if c.spec.desired != DesiredState::Stopped {
            let mut asked = c.clone();
            asked.spec.desired = DesiredState::Stopped;
            // A move in flight ends here: nothing starts for a container that leaves.
            asked.spec.handoff = None;
            out.update.push(asked);
        } else if matches!(
            phase,
            Some(ContainerPhase::Stopped | ContainerPhase::Failed)
        ) {
            out.delete.push(c.metadata.name.clone());
        }
    }
}

/// Records what a written container shows about a stop on request: asked to stop (Stopping).
pub fn record_update(events: &Events, before: Option<&Container>, after: &Container) {
    let asked = |c: &Container| c.spec.desired == DesiredState::Stopped;
    if !asked(after) || before.is_some_and(asked) {
        return;
    }
    let name = &after.metadata.name;
    let hook = after
        .spec
        .template
        .as_ref()
        .and_then(|t| t.pre_stop.as_ref())
        .map_or_else(
            || "no preStop hook".to_owned(),
            |h| format!("preStop {:?} runs first", h.command.join(" ")),
        );
    events.record(
        EventKind::Stopping,
        format!("container/{name}"),
        after.spec.node.as_deref(),
        format!("{name} stops for a scale-down or its role's deletion; {hook}"),
    );
}

/// Records the removal of a container that was stopped on request, with what its agent
/// reported (the hook's output and how it ended).
pub fn record_removed(events: &Events, c: &Container) {
    if c.spec.desired != DesiredState::Stopped {
        return;
    }
    let name = &c.metadata.name;
    let said = c
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_else(|| "its board did not report".to_owned());
    events.record(
        EventKind::Removed,
        format!("container/{name}"),
        c.spec.node.as_deref(),
        format!("{name} removed: {said}"),
    );
}

#[cfg(test)]
#[path = "stateful_tests.rs"]
mod tests;
