//! Supervised tasks: the controller's long-running parts run in one set; the first that ends
//! while the controller is meant to be running (it returned or panicked) stops the whole
//! process with an error, instead of leaving a controller that serves but no longer schedules.

use std::future::Future;

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

/// A supervised task that ended before it was asked to stop.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("the {task} task panicked: {message}")]
    Panicked { task: &'static str, message: String },
    #[error("the {task} task stopped on its own")]
    Returned { task: &'static str },
}

/// A set of named tasks that are stopped together.
pub struct Supervisor {
    tasks: JoinSet<()>,
    names: Vec<(Id, &'static str)>,
    stopping: CancellationToken,
}

impl Supervisor {
    /// An empty set; `stopping` is cancelled when the process is asked to stop.
    pub fn new(stopping: CancellationToken) -> Self {
        Supervisor {
            tasks: JoinSet::new(),
            names: Vec::new(),
            stopping,
        }
    }

    /// Runs `task` under supervision; it must run until asked to stop.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.tasks.spawn(task);
        self.names.push((handle.id(), name));
    }

    fn name(&self, id: Id) -> &'static str {
        self.names
            .iter()
            .find(|(i, _)| *i == id)
            .map_or("unnamed", |(_, n)| n)
    }

    /// Waits until the process is asked to stop (`Ok`) or a task ends first (`Err`: why).
    pub async fn watch(&mut self) -> Result<(), TaskError> {
        tokio::select! {
            () = self.stopping.cancelled() => Ok(()),
            Some(ended) = self.tasks.join_next_with_id() => {
                if self.stopping.is_cancelled() {
                    return Ok(());
                }
                Err(match ended {
                    Ok((id, ())) => TaskError::Returned { task: self.name(id) },
                    Err(e) => {
                        let task = self.name(e.id());
                        let message = if e.is_panic() {
                            panic_message(e.into_panic())
                        } else {
                            "cancelled".to_string()
                        };
                        TaskError::Panicked { task, message }
                    }
                })
            }
        }
    }

    /// After a stop: waits up to `timeout` for every task to end, then aborts the rest.
    pub async fn drain(&mut self, timeout: std::time::Duration) {
        let all = async {
            while let Some(ended) = self.tasks.join_next_with_id().await {
                if let Err(e) = ended {
                    if e.is_panic() {
                        let task = self.name(e.id());
                        tracing::error!(task, "task panicked while stopping");
                    }
                }
            }
        };
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::warn!("tasks still running after {timeout:?}; aborting them");
            self.tasks.abort_all();
        }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_is_reported_by_name() {
        let stop = CancellationToken::new();
        let mut tasks = Supervisor::new(stop.clone());
        let s = stop.clone();
        tasks.spawn("steady", async move { s.cancelled().await });
        tasks.spawn("scheduler", async { panic!("boom") });
        match tasks.watch().await {
            Err(TaskError::Panicked { task, message }) => {
                assert_eq!((task, message.as_str()), ("scheduler", "boom"));
            }
            other => panic!("expected a panic report, got {other:?}"),
        }
        stop.cancel();
        tasks.drain(std::time::Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_task_that_returns_early_is_an_error_and_a_stop_is_not() {
        let stop = CancellationToken::new();
        let mut tasks = Supervisor::new(stop.clone());
        tasks.spawn("detector", async {});
        assert!(matches!(
            tasks.watch().await,
            Err(TaskError::Returned { task: "detector" })
        ));
        let stop = CancellationToken::new();
        let mut tasks = Supervisor::new(stop.clone());
        let s = stop.clone();
        tasks.spawn("api", async move { s.cancelled().await });
        stop.cancel();
        assert!(tasks.watch().await.is_ok());
        tasks.drain(std::time::Duration::from_secs(5)).await;
    }
}
