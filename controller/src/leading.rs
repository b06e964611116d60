//! The leader's work: the node monitor, the scheduler (which also rebalances), the store
//! compactor and the event flusher run only while this controller leads, all under one stop
//! signal per term (Nomad's `establishLeadership`), and are torn down together when the term
//! ends. Every write they make goes through the fenced store.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::events;
use crate::leader::Leadership;
use crate::nodes::Nodes;
use crate::objects::Objects;
use crate::scheduling;
use crate::store::compactor::{self, Retention};
use crate::store::Store;
use crate::supervise::{Supervisor, TaskError};

/// How long the term's tasks get to stop when it ends.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the leader runs, over the fenced store.
pub struct LeaderWork {
    /// Objects over the fenced store (sharing the API's event log).
    pub objects: Objects,
    pub nodes: Arc<Nodes>,
    pub settings: crate::scheduler::Settings,
    pub retention: Retention,
}

/// Runs the leader's work for every term this controller wins, until `stopping`. Returns an
/// error when one of the term's tasks panics or ends on its own.
pub async fn run(
    leadership: Leadership,
    work: LeaderWork,
    stopping: CancellationToken,
) -> Result<(), TaskError> {
    let mut changes = leadership.changes();
    loop {
        let term = loop {
            if let Some(term) = changes.borrow_and_update().term {
                break term;
            }
            tokio::select! {
                () = stopping.cancelled() => return Ok(()),
                changed = changes.changed() => if changed.is_err() { return Ok(()) },
            }
        };
        if stopping.is_cancelled() {
            return Ok(());
        }
        tracing::info!(
            term,
            "leading: starting the scheduler, the node monitor and the flusher"
        );
        run_term(term, &work, changes.clone(), &stopping).await?;
        if stopping.is_cancelled() {
            return Ok(());
        }
        tracing::warn!(term, "no longer leading: leader work stopped");
    }
}

async fn run_term(
    term: i64,
    work: &LeaderWork,
    mut changes: watch::Receiver<crate::leader::View>,
    stopping: &CancellationToken,
) -> Result<(), TaskError> {
    let store: Arc<dyn Store> = work.objects.store().clone();
    // Another leader may have saved events since this controller read them: continue after.
    if let Err(e) = work.objects.events().load(store.as_ref()).await {
        tracing::warn!(error = %e, "cannot read the saved events at takeover");
    }
    let (stop, stopped) = watch::channel(false);
    let token = CancellationToken::new();
    let mut tasks = Supervisor::new(token.clone());
    // A fresh monitor: every board gets a whole grace period from the takeover.
    tasks.spawn("node monitor", work.nodes.clone().monitor(stopped.clone()));
    tasks.spawn(
        "scheduler",
        scheduler(work.objects.clone(), work.settings, stopped.clone()),
    );
    tasks.spawn(
        "store compactor",
        compactor::run(store.clone(), work.retention, stopped.clone()),
    );
    // The flusher stops after the loops that record events, so its last flush saves all.
    let (stop_flusher, flusher_stopped) = watch::channel(false);
    let mut flusher = tokio::spawn(work.objects.events().clone().run_flusher(
        store.clone(),
        events::FLUSH_INTERVAL,
        flusher_stopped,
    ));
    let failure = tokio::select! {
        () = stopping.cancelled() => None,
        _ = changes.wait_for(|v| v.term != Some(term)) => None,
        ended = tasks.watch() => ended.err(),
        ended = &mut flusher => Some(match ended {
            Ok(()) => TaskError::Returned { task: "event flusher" },
            Err(e) => TaskError::Panicked { task: "event flusher", message: e.to_string() },
        }),
    };
    let _ = stop.send(true);
    token.cancel();
    tasks.drain(STOP_TIMEOUT).await;
    let _ = stop_flusher.send(true);
    if !flusher.is_finished() {
        let _ = flusher.await;
    }
    match failure {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// The scheduling loop, or the panic [`crate::server::FAULT_ENV`] asks for.
async fn scheduler(
    objects: Objects,
    settings: crate::scheduler::Settings,
    stop: watch::Receiver<bool>,
) {
    use crate::server::FAULT_ENV;
    if std::env::var(FAULT_ENV).as_deref() == Ok("scheduler-panic") {
        tokio::time::sleep(Duration::from_millis(500)).await;
        panic!("fault injected by {FAULT_ENV}=scheduler-panic");
    }
    scheduling::run(objects, settings, stop).await;
}
