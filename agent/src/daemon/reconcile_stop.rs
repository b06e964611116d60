//! How the reconciler stops a container the controller asks to stop (`desired: Stopped`, for a
//! scale-down or its role's deletion): its `preStop` hook runs first, in the background, then
//! the container stops, and its status says what the hook printed and how it ended.

use texu_api::{Container, ContainerPhase, Reason};

use super::super::pre_stop::HookRun;
use super::super::slot::SlotState;
use super::{Reconciler, STOP_GRACE};
use crate::runtime::RuntimeError;

impl Reconciler {
    /// Starts `c`'s `preStop` hook. Its probes stop first: a member that is leaving is no
    /// longer Ready (so it leaves the endpoints), and a slow hook is never killed as a failed
    /// liveness.
    pub(super) fn run_pre_stop(&mut self, c: &Container) {
        let name = c.metadata.name.as_str();
        let Some(hook) = c.spec.template.as_ref().and_then(|t| t.pre_stop.as_ref()) else {
            return;
        };
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        slot.stop_probes();
        tracing::info!(container = %name, command = ?hook.command, "running the preStop hook");
        slot.pre_stop = Some(HookRun::start(
            self.runtime.clone(),
            name,
            hook,
            self.verdicts.clone(),
        ));
        slot.set_phase(
            ContainerPhase::Stopping,
            Some(Reason::PreStopRunning),
            Some(format!(
                "preStop {:?} runs (timeout {}s)",
                hook.command.join(" "),
                hook.timeout().as_secs()
            )),
        );
    }

    /// Stops a container the controller asks to stop, once its hook (if any) is done, and
    /// reports the hook's result in its status.
    pub(super) async fn stop_on_request(&mut self, name: &str) {
        let result = self
            .slots
            .get_mut(name)
            .and_then(|slot| {
                slot.stop_probes();
                slot.pre_stop.take()
            })
            .and_then(|run| run.take());
        if let Err(e) = self.runtime.stop(name, STOP_GRACE).await {
            if !matches!(
                e,
                RuntimeError::NotFound { .. } | RuntimeError::NotRunning { .. }
            ) {
                tracing::warn!(container = %name, error = %e, "stop failed; trying again");
                return;
            }
        }
        let (reason, message) = match &result {
            Some(r) if r.succeeded() => (Reason::StoppedOnRequest, r.message()),
            Some(r) => (Reason::PreStopFailed, r.message()),
            None => (
                Reason::StoppedOnRequest,
                "stopped: the controller asked (scale-down or role deleted)".to_owned(),
            ),
        };
        tracing::info!(container = %name, %reason, %message, "stopped on request");
        if let Some(slot) = self.slots.get_mut(name) {
            slot.state = SlotState::Stopped;
            slot.set_phase(ContainerPhase::Stopped, Some(reason), Some(message));
        }
    }

    /// A container the controller asks to stop that does not run: reported stopped.
    pub(super) fn mark_stopped(&mut self, name: &str) {
        if let Some(slot) = self.slots.get_mut(name) {
            slot.stop_probes();
            slot.state = SlotState::Stopped;
            slot.set_phase(
                ContainerPhase::Stopped,
                Some(Reason::StoppedOnRequest),
                Some("not running; kept stopped as the controller asks".to_owned()),
            );
        }
    }
}
