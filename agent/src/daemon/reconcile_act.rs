//! How the reconciler carries out what it decided: create, fence, stop for a cut-off,
//! resume, restart, count an exit, tear down, and keep live files current, through the runtime.

use std::time::Duration;

use texu_api::{Container, ContainerPhase, ContainerStatus, ExitReason, Reason};
use tokio::time::Instant;

use super::super::decide::CREATE_RETRY;
use super::super::hostports;
use super::super::live_files;
use super::super::probes::Probes;
use super::super::slot::SlotState;
use super::super::spec::{self, Failure};
use super::{Reconciler, STOP_GRACE};
use crate::files::FileContext;
use crate::runtime::RuntimeError;

impl Reconciler {
    /// Live templates of a running container: re-rendered, installed and reloaded as its
    /// files' inputs change (see `live_files`); what failed shows in its status message.
    pub(super) async fn refresh_files(&mut self, c: &Container) {
        let name = c.metadata.name.as_str();
        let Some(template) = c.spec.template.as_ref().filter(|t| !t.files.is_empty()) else {
            return;
        };
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        if slot.state != SlotState::Live || !slot.serving() {
            return;
        }
        let ctx = FileContext::for_container(c, template, &self.node, slot.address)
            .with_endpoints(&self.endpoints);
        let dir = crate::files::dir(self.dirs.data_dir(), name);
        live_files::refresh(
            self.runtime.as_ref(),
            name,
            &template.files,
            &ctx,
            &dir,
            &mut slot.live,
        )
        .await;
        slot.status.message = slot.live.message();
        slot.status.files = slot.live.status(&template.files);
    }

    /// Fencing: the copy here is of generation `held`, not the one assigned: it stops and goes
    /// before anything starts, so an old copy never runs next to a new one.
    pub(super) async fn fence(&mut self, c: &Container, held: i64) {
        let name = &c.metadata.name;
        let wanted = c.spec.generation;
        tracing::info!(container = %name, held, wanted, "fenced: stopping an older generation before starting anything");
        self.teardown(name, false).await;
        if let Some(slot) = self.slots.get_mut(name) {
            // Created again by its next step, with the new generation.
            slot.state = SlotState::New;
            slot.status = ContainerStatus {
                address: slot.status.address.clone(),
                ..Default::default()
            };
        }
    }

    /// `stopOnNodeAfter`: the board has been cut off that long, so it stops the container
    /// itself (a replacement may be running elsewhere). It keeps it, to start again if the
    /// controller still wants it here once contact is back.
    pub(super) async fn stop_cut_off(&mut self, name: &str, away: Duration) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        slot.state = SlotState::CutOff;
        slot.stop_probes();
        tracing::warn!(container = %name, ?away, "cut off from the controller: stopping (stopOnNodeAfter)");
        if let Err(e) = self.runtime.stop(name, STOP_GRACE).await {
            tracing::warn!(container = %name, error = %e, "stop failed");
        }
        self.set_phase(
            name,
            ContainerPhase::Stopped,
            Some(Reason::CutOff),
            Some(format!(
                "stopped by its agent after {}s without the controller (stopOnNodeAfter)",
                away.as_secs()
            )),
        );
    }

    /// Starts a container stopped by `stop_cut_off` again, without counting a restart.
    pub(super) async fn resume(&mut self, c: &Container) {
        let name = c.metadata.name.as_str();
        let started = self.runtime.start(name).await;
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        // Either way it is no longer cut off; if it cannot start, the normal path (recreate
        // or restart) takes it from here.
        slot.state = SlotState::Live;
        match started {
            Ok(()) => {
                tracing::info!(container = %name, "contact is back: starting the container again");
                slot.backoff.started(Instant::now());
                slot.set_phase(ContainerPhase::Running, None, None);
                self.start_probes(c);
            }
            Err(e) => {
                tracing::warn!(container = %name, error = %e, "cannot start again after the cut-off")
            }
        }
    }

    /// Starts a container again once its backoff is over.
    pub(super) async fn restart(&mut self, c: &Container) {
        let name = c.metadata.name.as_str();
        let started = self.runtime.start(name).await;
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        match started {
            Ok(()) => {
                tracing::info!(container = %name, restarts = slot.record.restarts, "container restarted");
                slot.backoff.started(Instant::now());
                slot.set_phase(ContainerPhase::Running, None, None);
                self.start_probes(c);
            }
            Err(e) => {
                tracing::warn!(container = %name, error = %e, "restart failed");
                slot.backoff.exited(Instant::now());
            }
        }
    }

    pub(super) async fn create(&mut self, c: &Container) {
        let name = c.metadata.name.as_str();
        self.set_phase(name, ContainerPhase::Creating, None, None);
        if let Some(Err(message)) = c
            .spec
            .template
            .as_ref()
            .map(|t| hostports::check_reserved(t, &hostports::reserved()))
        {
            let failure = Failure {
                reason: Reason::ReservedHostPort,
                message,
            };
            return self.fail_create(name, failure);
        }
        let spec = match self.build(c).await {
            Ok(spec) => spec,
            Err(failure) => return self.fail_create(name, failure),
        };
        let result = match self.runtime.create(&spec).await {
            Ok(()) => self.runtime.start(name).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            // Leave nothing half-made behind.
            let _ = self.runtime.destroy(name).await;
            let _ = std::fs::remove_dir_all(self.dirs.rootfs(name));
            return self.fail_create(name, Failure::of_runtime(&e));
        }
        tracing::info!(container = %name, generation = c.spec.generation, "container started");
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        slot.state = SlotState::Live;
        slot.record.generation = c.spec.generation;
        slot.backoff.started(Instant::now());
        slot.address = spec.network.as_ref().map(|n| n.address);
        slot.status.address = slot.address.map(|a| a.to_string());
        slot.set_phase(ContainerPhase::Running, None, None);
        self.records.write(name, &slot.record);
        self.start_probes(c);
    }

    /// The runtime's spec for `c`, with its image prepared.
    pub(super) async fn build(
        &mut self,
        c: &Container,
    ) -> Result<crate::runtime::ContainerSpec, Failure> {
        let rootfs = spec::prepare_image(c, &self.client, &self.credential, &self.dirs).await?;
        let board = spec::Board {
            node: &self.node,
            dirs: &self.dirs,
            network: self.network.as_ref(),
            addresses: self.addresses.as_mut(),
            endpoints: &self.endpoints,
        };
        spec::runtime_spec(c, rootfs, board)
    }

    pub(super) fn fail_create(&mut self, name: &str, failure: Failure) {
        let Failure { reason, message } = failure;
        tracing::warn!(container = %name, %reason, %message, "cannot create container");
        if let Some(slot) = self.slots.get_mut(name) {
            slot.state = SlotState::CreateFailed {
                retry_at: Instant::now() + CREATE_RETRY,
            };
        }
        self.set_phase(name, ContainerPhase::Failed, Some(reason), Some(message));
    }

    /// Counts an exit: restarts + 1, the reason kept, a backoff before the next start.
    pub(super) fn count_exit(&mut self, name: &str, why: ExitReason) {
        let now = Instant::now();
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        slot.stop_probes();
        let delay = slot.backoff.exited(now);
        crate::metrics::restarted(why.as_str());
        slot.record.restarts += 1;
        slot.record.last_exit = Some(why.as_str().to_owned());
        slot.status.restarts = i64::from(slot.record.restarts);
        slot.status.last_exit = Some(why.as_str().to_owned());
        let reason = if slot.backoff.in_crash_loop(now) {
            Reason::CrashLoopBackOff
        } else {
            Reason::BackOff
        };
        slot.set_phase(
            ContainerPhase::Failed,
            Some(reason),
            Some(format!("{why}; restarting in {delay:?}")),
        );
        self.records.write(name, &slot.record);
        tracing::warn!(container = %name, reason = %why, restart_in = ?delay, "container exited");
    }

    pub(super) fn start_probes(&mut self, c: &Container) {
        let Some(slot) = self.slots.get_mut(&c.metadata.name) else {
            return;
        };
        slot.stop_probes();
        slot.probes = Probes::start(c, slot.address, self.runtime.clone(), self.verdicts.clone());
    }

    pub(super) fn set_phase(
        &mut self,
        name: &str,
        phase: ContainerPhase,
        reason: Option<Reason>,
        message: Option<String>,
    ) {
        if let Some(slot) = self.slots.get_mut(name) {
            slot.set_phase(phase, reason, message);
        }
    }

    /// Stops and destroys a container; with `forget`, also its slot, record, volumes, files
    /// and address (it is no longer assigned here).
    pub(super) async fn teardown(&mut self, name: &str, forget: bool) {
        if let Some(slot) = self.slots.get_mut(name) {
            slot.stop_probes();
        }
        if let Err(e) = self.runtime.stop(name, STOP_GRACE).await {
            if !matches!(
                e,
                RuntimeError::NotFound { .. } | RuntimeError::NotRunning { .. }
            ) {
                tracing::warn!(container = %name, error = %e, "stop failed");
            }
        }
        if let Err(e) = self.runtime.destroy(name).await {
            if !matches!(e, RuntimeError::NotFound { .. }) {
                tracing::warn!(container = %name, error = %e, "destroy failed");
            }
        }
        if forget {
            self.slots.remove(name);
            self.records.remove(name);
            self.dirs.remove(name);
            if let Some(a) = self.addresses.as_mut() {
                let _ = a.release(name);
            }
        }
    }
}
