//! A container's probes as the reconciler holds them: started on a runner task, read as a
//! [`Verdict`], and a wake for the reconciler whenever that verdict changes.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use texu_api::Container;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::probe::{Exec, ProbeReport, ProbeRunner, ProbeTarget};
use crate::runtime::Runtime;

/// What the reconciler decides on: the probes' current verdict.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// The readiness probe passes (or there is none).
    pub ready: bool,
    /// The liveness probe failed its threshold: restart.
    pub liveness_failed: bool,
    /// The last result, for people.
    pub last_probe: String,
}

/// A container's running probes.
pub struct Probes {
    cancel: CancellationToken,
    reports: watch::Receiver<ProbeReport>,
}

impl Probes {
    /// Starts the probes of `c` at `address` (loopback without a network), waking `verdicts`
    /// whenever their verdict changes. `None` when the container has no template or its
    /// probes cannot be built (logged).
    pub fn start(
        c: &Container,
        address: Option<Ipv4Addr>,
        runtime: Arc<dyn Runtime>,
        verdicts: Arc<Notify>,
    ) -> Option<Probes> {
        let name = &c.metadata.name;
        let template = c.spec.template.as_ref()?;
        let target = ProbeTarget {
            container: name.clone(),
            address: IpAddr::V4(address.unwrap_or(Ipv4Addr::LOCALHOST)),
        };
        let exec: Arc<dyn Exec> = Arc::new(RuntimeExec(runtime));
        match ProbeRunner::new(target, &template.health, &template.ports, exec) {
            Ok(runner) => {
                let reports = runner.subscribe();
                let cancel = CancellationToken::new();
                tokio::spawn(forward_verdicts(
                    runner.subscribe(),
                    verdicts,
                    cancel.clone(),
                ));
                runner.spawn(cancel.clone());
                Some(Probes { cancel, reports })
            }
            Err(e) => {
                tracing::warn!(container = %name, error = %e, "probes not started");
                None
            }
        }
    }

    /// The verdict as of the last probe.
    pub fn verdict(&self) -> Verdict {
        let r = self.reports.borrow();
        Verdict {
            ready: r.ready,
            liveness_failed: r.liveness_failed,
            last_probe: r.last_probe.clone(),
        }
    }

    /// Stops them.
    pub fn stop(self) {
        self.cancel.cancel();
    }
}

/// Runs probes' `exec` checks through the runtime.
struct RuntimeExec(Arc<dyn Runtime>);

#[async_trait::async_trait]
impl Exec for RuntimeExec {
    async fn exec(&self, container: &str, argv: &[String]) -> Result<i32, String> {
        let out = self
            .0
            .exec(container, argv, Duration::from_secs(30))
            .await
            .map_err(|e| e.to_string())?;
        Ok(out.status.code().unwrap_or(-1))
    }
}

/// Wakes the reconciler when a probe's verdict changes (not on every probe: the text of the
/// last result changes each time), until `cancel`.
async fn forward_verdicts(
    mut rx: watch::Receiver<ProbeReport>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let verdict = |r: &ProbeReport| (r.ready, r.liveness_failed);
    let mut last = verdict(&rx.borrow());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = verdict(&rx.borrow_and_update());
                if now != last {
                    last = now;
                    wake.notify_one();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_a_changed_verdict_wakes_the_reconciler() {
        let report = |ready: bool, text: &str| ProbeReport {
            ready,
            liveness_failed: false,
            last_probe: text.into(),
        };
        let (tx, rx) = watch::channel(report(false, ""));
        let wake = Arc::new(Notify::new());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(forward_verdicts(rx, wake.clone(), cancel.clone()));
        // A wake is waited for up to 5 s; its absence is checked for 200 ms.
        let woken = |limit: u64| {
            let wake = wake.clone();
            async move {
                tokio::time::timeout(Duration::from_millis(limit), wake.notified())
                    .await
                    .is_ok()
            }
        };
        // A new result with the same verdict: no wake.
        tx.send(report(false, "readiness failed: connection refused"))
            .unwrap();
        assert!(!woken(200).await, "woken by a result with the same verdict");
        // Ready: a wake.
        tx.send(report(true, "HTTP 200")).unwrap();
        assert!(
            woken(5000).await,
            "not woken when the container turned ready"
        );
        tx.send(report(true, "HTTP 200 again")).unwrap();
        assert!(!woken(200).await);
        cancel.cancel();
        task.await.unwrap();
    }
}
