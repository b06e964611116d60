//! The scheduling loop: wakes on any change to roles, nodes or containers, runs the pure
//! scheduler over a fresh snapshot and writes its plan with revision-guarded transactions.

use std::time::Duration;

use futures::{FutureExt, StreamExt};
use texu_api::{Container, Kind, Node, Role};
use tokio::sync::watch;

use crate::images::ImageStore;
use crate::objects::{ObjectError, Objects, KEY_ROOT};
use crate::scheduler;

/// How long the loop waits for more changes before it plans: a burst becomes one pass.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// Longest pause between passes, so a missed wake-up never strands a container.
const RESYNC: Duration = Duration::from_secs(1);

/// Runs until `stop` flips to true. Never panics on a store error: logs, backs off, retries.
pub async fn run(objects: Objects, mut stop: watch::Receiver<bool>) {
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
            match pass(&objects).await {
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
pub async fn pass(objects: &Objects) -> Result<(), ObjectError> {
    let (roles, _) = objects.list::<Role>().await?;
    let (nodes, _) = objects.list::<Node>().await?;
    let (containers, _) = objects.list::<Container>().await?;
    let catalog: scheduler::Catalog = ImageStore::list(objects)
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
        .collect();
    let plan = scheduler::plan(
        &roles,
        &nodes,
        &containers,
        &catalog,
        crate::clock::now_secs(),
    );
    if plan.is_empty() {
        return Ok(());
    }
    for name in &plan.delete {
        if let Some(c) = containers.iter().find(|c| &c.metadata.name == name) {
            if objects
                .delete_at(Kind::Container, name, c.metadata.revision)
                .await?
            {
                tracing::info!(container = %name, "container removed");
            }
        }
    }
    for c in plan.create.iter().chain(plan.update.iter()) {
        match objects.replace(c).await {
            Ok(_) => match &c.spec.node {
                Some(node) => {
                    tracing::info!(container = %c.metadata.name, %node, generation = c.spec.generation, "container placed")
                }
                None => {
                    tracing::info!(container = %c.metadata.name, reason = ?c.status.as_ref().and_then(|s| s.message.as_deref()), "container unschedulable")
                }
            },
            // Someone else wrote it meanwhile: the next pass sees the new state.
            Err(ObjectError::Stale { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
