//! The scheduling loop: wakes on any change to roles, nodes or containers, runs the pure
//! scheduler over a fresh snapshot and writes its plan with revision-guarded transactions.

use std::collections::HashMap;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use texu_api::{Container, ContainerPhase, EventKind, Kind, Node, Role};
use tokio::sync::watch;

use crate::events::Events;
use crate::images::ImageStore;
use crate::objects::{ObjectError, Objects, KEY_ROOT};
use crate::scheduler;

/// How long the loop waits for more changes before it plans: a burst becomes one pass.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// Most container writes of a pass in one store batch (one commit in the embedded store).
const WRITE_BATCH: usize = 512;
/// Longest pause between passes, so a missed wake-up never strands a container.
const RESYNC: Duration = Duration::from_secs(1);

/// Runs until `stop` flips to true. Never panics on a store error: logs, backs off, retries.
pub async fn run(objects: Objects, settings: scheduler::Settings, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut changes = match objects.store().watch(KEY_ROOT, 0).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "scheduler cannot watch the store; retrying in {backoff:?}");
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            match pass(&objects, &settings).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %e, "scheduling pass failed; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            // Wait for a change (or the resync timer), then take the rest of the burst.
            let watching = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(RESYNC) => true,
                batch = changes.next() => matches!(batch, Some(Ok(_))),
            };
            if !watching {
                break; // the watch ended: make a new one
            }
            tokio::time::sleep(DEBOUNCE).await;
            while let Some(Some(Ok(_))) = changes.next().now_or_never() {}
        }
    }
}

/// One scheduling pass over a fresh snapshot.
pub async fn pass(objects: &Objects, settings: &scheduler::Settings) -> Result<(), ObjectError> {
    let _timer = crate::metrics::PassTimer::start();
    let (roles, _) = objects.list::<Role>().await?;
    let (nodes, _) = objects.list::<Node>().await?;
    let (containers, _) = objects.list::<Container>().await?;
    crate::failover::observe(&roles, &nodes, &containers);
    let catalog = catalog(objects).await?;
    let plan = scheduler::plan_with(
        &roles,
        &nodes,
        &containers,
        &catalog,
        crate::clock::now_secs(),
        settings,
    );
    write(objects, &containers, &plan).await
}

/// The image store's contents as the scheduler sees them.
pub async fn catalog(objects: &Objects) -> Result<scheduler::Catalog, ObjectError> {
    Ok(ImageStore::list(objects)
        .await?
        .into_iter()
        .map(|image| {
            let variants = image
                .variants
                .into_iter()
                .map(|(arch, v)| (arch, v.digest))
                .collect();
            (format!("{}:{}", image.name, image.tag), variants)
        })
        .collect())
}

/// Writes a plan: deletions guarded by revision, then creations and updates, each step in
/// batches of [`WRITE_BATCH`] (one store commit each), every write guarded on its own.
async fn write(
    objects: &Objects,
    containers: &[Container],
    plan: &scheduler::Plan,
) -> Result<(), ObjectError> {
    if plan.is_empty() {
        return Ok(());
    }
    let before: HashMap<&str, &Container> = containers
        .iter()
        .map(|c| (c.metadata.name.as_str(), c))
        .collect();
    let doomed: Vec<&Container> = plan
        .delete
        .iter()
        .filter_map(|name| before.get(name.as_str()).copied())
        .collect();
    for chunk in doomed.chunks(WRITE_BATCH) {
        let at: Vec<(&str, i64)> = chunk
            .iter()
            .map(|c| (c.metadata.name.as_str(), c.metadata.revision))
            .collect();
        let answers = objects.delete_all_at(Kind::Container, &at).await?;
        for (c, answer) in chunk.iter().zip(answers) {
            if answer? {
                tracing::info!(container = %c.metadata.name, "container removed");
                crate::stateful::record_removed(objects.events(), c);
            }
        }
    }
    let writes: Vec<Container> = plan
        .create
        .iter()
        .chain(plan.update.iter())
        .cloned()
        .collect();
    for chunk in writes.chunks(WRITE_BATCH) {
        let answers = objects.replace_all(chunk).await?;
        for (c, answer) in chunk.iter().zip(answers) {
            match answer {
                Ok(_) => {
                    let was = before.get(c.metadata.name.as_str()).copied();
                    record_decision(objects.events(), was, c);
                    crate::stateful::record_update(objects.events(), was, c);
                }
                // Someone else wrote it meanwhile: the next pass sees the new state.
                Err(ObjectError::Stale { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Records what a written container shows about the decision: bound to a new node (Placed, or
/// Replaced after its node was lost), left pending (Unschedulable, with why), or Lost.
fn record_decision(events: &Events, before: Option<&Container>, after: &Container) {
    let name = &after.metadata.name;
    let object = format!("container/{name}");
    let status = after.status.as_ref();
    let message = status.and_then(|s| s.message.clone());
    let was = before.and_then(|b| b.status.as_ref());
    match after.spec.node.as_deref() {
        Some(node) if before.and_then(|b| b.spec.node.as_deref()) != Some(node) => {
            if status.and_then(|s| s.reason.as_deref()) == Some("Replaced") {
                let message = message.unwrap_or_else(|| format!("{name} replaced on {node}"));
                events.record(EventKind::Replaced, object, Some(node), message);
            } else {
                events.record(
                    EventKind::Placed,
                    object,
                    Some(node),
                    format!("{name} on {node}"),
                );
            }
        }
        Some(node) => {
            let target = after.spec.handoff.as_ref();
            let before_target = before
                .and_then(|b| b.spec.handoff.as_ref())
                .map(|h| &h.node);
            if let Some(h) = target.filter(|h| Some(&h.node) != before_target) {
                // A move starts: the new copy is placed; the switch is recorded when it is
                // Ready (Drained or Rebalanced).
                events.record(
                    EventKind::Placed,
                    object.clone(),
                    Some(&h.node),
                    format!(
                        "{name}: a new copy on {} before the one on {node} stops ({})",
                        h.node, h.reason
                    ),
                );
            }
            if status.map(|s| s.phase) == Some(ContainerPhase::Lost) && was != status {
                let message = message.unwrap_or_else(|| format!("node {node} is not ready"));
                events.record(EventKind::Lost, object, Some(node), message);
            }
        }
        None => {
            if let Some(why) = status
                .filter(|s| s.phase == ContainerPhase::Pending)
                .and_then(|s| s.message.clone().or_else(|| s.reason.clone()))
            {
                events.record(EventKind::Unschedulable, object, None, why);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use texu_api::{ContainerSpec, ContainerStatus, NodeSpec, NodeStatus, RoleSpec};

    use super::*;
    use crate::store::embedded::EmbeddedStore;

    fn kinds(events: &Events) -> Vec<(EventKind, String, Option<String>, String)> {
        events
            .list(0)
            .into_iter()
            .map(|e| (e.kind, e.object, e.node, e.message))
            .collect()
    }

    fn container(
        node: Option<&str>,
        phase: ContainerPhase,
        reason: &str,
        message: &str,
    ) -> Container {
        let mut c = Container::new(
            "app-0",
            ContainerSpec {
                role: "app".into(),
                ordinal: 0,
                node: node.map(str::to_string),
                generation: 1,
                ..Default::default()
            },
        );
        c.status = Some(ContainerStatus {
            phase,
            reason: Some(reason.into()),
            message: (!message.is_empty()).then(|| message.to_string()),
            ..Default::default()
        });
        c
    }

    #[test]
    fn decisions_become_events() {
        let events = Events::new();
        let pending = container(None, ContainerPhase::Pending, "Unschedulable", "0/0 nodes");
        record_decision(&events, None, &pending);
        let placed = container(Some("b1"), ContainerPhase::Pending, "Scheduled", "");
        record_decision(&events, Some(&pending), &placed);
        // A new template on the same node is no decision.
        record_decision(&events, Some(&placed), &placed);
        let lost = container(Some("b1"), ContainerPhase::Lost, "NodeNotReady", "b1 gone");
        record_decision(&events, Some(&placed), &lost);
        let moved = container(
            Some("b2"),
            ContainerPhase::Pending,
            "Replaced",
            "moved to b2",
        );
        record_decision(&events, Some(&lost), &moved);
        // A drain starts a move; the same plan again records nothing new.
        let mut moving = moved.clone();
        moving.spec.handoff = Some(texu_api::Handoff {
            node: "b3".into(),
            reason: crate::scheduler::DRAIN.into(),
            image_digest: None,
            status: None,
        });
        record_decision(&events, Some(&moved), &moving);
        record_decision(&events, Some(&moving), &moving);
        let c = || "container/app-0".to_string();
        assert_eq!(
            kinds(&events),
            [
                (EventKind::Unschedulable, c(), None, "0/0 nodes".into()),
                (
                    EventKind::Placed,
                    c(),
                    Some("b1".into()),
                    "app-0 on b1".into()
                ),
                (EventKind::Lost, c(), Some("b1".into()), "b1 gone".into()),
                (
                    EventKind::Replaced,
                    c(),
                    Some("b2".into()),
                    "moved to b2".into()
                ),
                (
                    EventKind::Placed,
                    c(),
                    Some("b3".into()),
                    format!(
                        "app-0: a new copy on b3 before the one on b2 stops ({})",
                        crate::scheduler::DRAIN
                    )
                ),
            ]
        );
    }

    #[tokio::test]
    async fn a_pass_records_only_what_it_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("state.redb")).unwrap());
        let objects = Objects::new(store);
        let mut spec = RoleSpec::with_image("host");
        spec.replicas = 1;
        objects
            .apply_role(Role::new("app", spec), false)
            .await
            .unwrap();
        pass(&objects, &Default::default()).await.unwrap();
        pass(&objects, &Default::default()).await.unwrap();
        let events = kinds(objects.events());
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].0, EventKind::Unschedulable);
        assert!(events[0].3.contains("no node has joined"), "{events:?}");

        let mut node = Node::new(
            "board1",
            NodeSpec {
                address: "198.18.0.2".into(),
                arch: texu_api::Arch::Amd64,
                cpus: 2,
                memory_bytes: 1 << 30,
                subnet: None,
                unschedulable: false,
                draining: false,
            },
        );
        node.status = Some(NodeStatus {
            phase: texu_api::NodePhase::Ready,
            ..Default::default()
        });
        objects.replace(&node).await.unwrap();
        pass(&objects, &Default::default()).await.unwrap();
        pass(&objects, &Default::default()).await.unwrap();
        let events = kinds(objects.events());
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(
            events[1],
            (
                EventKind::Placed,
                "container/app-0".into(),
                Some("board1".into()),
                "app-0 on board1".into()
            )
        );
    }
}
