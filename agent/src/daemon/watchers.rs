//! The watcher threads: this node's containers, and every role's endpoints for live templates,
//! each listed then watched from the controller, forever with backoff, and passed on to the
//! reconciler as [`Desired`] changes.

use std::sync::Arc;
use std::time::Duration;

use texu_api::Container;
use tokio::sync::{mpsc, watch};

use super::client::{Client, ClientError};
use super::contact::Contact;
use super::Desired;

/// Lists then watches every role's endpoints on a blocking thread, forever, with backoff,
/// passing the whole map on after each change (live templates render from it).
pub(super) fn spawn_endpoints_watcher(
    client: Client,
    credential: String,
    tx: mpsc::Sender<Desired>,
    stop: watch::Receiver<bool>,
) {
    let spawned = std::thread::Builder::new()
        .name("texu-endpoints".into())
        .spawn(move || {
            let mut backoff = Duration::from_millis(100);
            while !*stop.borrow() {
                let result = client
                    .endpoints(&credential)
                    .and_then(|(mut all, revision)| {
                        if tx.blocking_send(Desired::Endpoints(all.clone())).is_err() {
                            return Ok(());
                        }
                        backoff = Duration::from_millis(100);
                        client.watch_endpoints(&credential, revision, |event| {
                            if event.kind == "ERROR" {
                                return false;
                            }
                            let Ok(e) =
                                serde_json::from_value::<texu_api::RoleEndpoints>(event.object)
                            else {
                                return !*stop.borrow();
                            };
                            if event.kind == "DELETED" {
                                all.remove(&e.role);
                            } else {
                                all.insert(e.role.clone(), e);
                            }
                            tx.blocking_send(Desired::Endpoints(all.clone())).is_ok()
                        })
                    });
                if let Err(e) = result {
                    tracing::debug!(error = %e, "endpoints watch ended; listing again");
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the endpoints watcher: live templates will not follow endpoints");
    }
}

/// Lists then watches this node's containers on a blocking thread, forever, with backoff.
///
/// While heartbeats do not get through it neither lists nor passes on events: a stream that
/// survived a partition may deliver moves the controller made meanwhile, and acting on them
/// before the controller has seen this board again could stop the copy that should win. After
/// a cut-off it drops the old stream and lists afresh, tagging the list with the new epoch.
pub(super) fn spawn_watcher(
    client: Client,
    credential: String,
    node: String,
    contact: Arc<Contact>,
    tx: mpsc::Sender<Desired>,
    stop: watch::Receiver<bool>,
) -> tokio::sync::oneshot::Receiver<()> {
    // Dropped when the thread ends, however it ends (a panic unwinds through it too).
    let (alive, ended) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("texu-watch".into())
        .spawn(move || {
            let _alive = alive;
            let mut backoff = Duration::from_millis(100);
            while !*stop.borrow() {
                if contact.is_cut_off() {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                let epoch = contact.epoch();
                let result = client.containers(&credential, &node).and_then(|(items, revision)| {
                    if tx.blocking_send(Desired::Snapshot(items, epoch)).is_err() {
                        return Ok(());
                    }
                    backoff = Duration::from_millis(100);
                    client.watch(&credential, &node, revision, |event| {
                        if contact.is_cut_off() || contact.epoch() != epoch {
                            return false;
                        }
                        let name = event.object["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string();
                        let msg = match event.kind.as_str() {
                            "BOOKMARK" => return !*stop.borrow(),
                            "DELETED" => Desired::Remove(name),
                            "ERROR" => return false,
                            _ => match serde_json::from_value::<Container>(event.object) {
                                Ok(c) if c.spec.runs_on(&node) => Desired::Upsert(Box::new(c)),
                                // Moved to another node: for this board it is gone.
                                Ok(_) => Desired::Remove(name),
                                Err(e) => {
                                    tracing::warn!(error = %e, "undecodable container event");
                                    return true;
                                }
                            },
                        };
                        tx.blocking_send(msg).is_ok() && !*stop.borrow()
                    })
                });
                if tx.is_closed() {
                    return;
                }
                match result {
                    // The revision listed was compacted away meanwhile: list again at once.
                    Err(ClientError::Status { status: 410, .. }) => {
                        tracing::info!("watch history compacted; listing this node's containers again");
                        continue;
                    }
                    Err(e) => tracing::warn!(error = %e, "watch of this node's containers failed; retrying in {backoff:?}"),
                    Ok(()) => {}
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
        .map(|_| ())
        .unwrap_or_else(|e| tracing::error!(error = %e, "cannot start the watch thread"));
    ended
}
