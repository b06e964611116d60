//! The reconciler: moves the board's LXC containers toward the containers assigned to it.
//!
//! Level-triggered and idempotent: each pass compares what should run (the controller's
//! containers for this node) with what the runtime has, asks [`decide`] what each container
//! needs next, and carries that out through the runtime. On start it adopts the containers it
//! finds in its LXC path without restarting them; it removes containers no longer assigned
//! only after it has heard the controller's list.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use texu_api::{Container, ContainerPhase, ContainerStatus, ExitReason, Reason, RoleEndpoints};
use tokio::sync::{mpsc, watch, Mutex, Notify};
use tokio::time::Instant;

use super::client::{Client, Reported};
use super::contact::Contact;
use super::decide::{self, decide, Action, Observed, SlotView, CREATE_RETRY};
use super::hostports::{self, Published};
use super::live_files;
use super::network::{Addresses, Subnet};
use super::probes::Probes;
use super::record::Records;
use super::slot::{Slot, SlotState};
use super::spec::{self, Dirs, Failure};
use super::{AgentError, Config, Desired};
use crate::files::FileContext;
use crate::runtime::{Runtime, RuntimeError};

/// How often the reconciler looks at the runtime when nothing else wakes it.
const TICK: Duration = Duration::from_millis(250);
/// How long a container gets to stop before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Actions one container may take in one pass (bookkeeping ones ask again at once).
const STEPS_PER_PASS: usize = 4;

/// Whether to ask the decision again in the same pass, and with what the runtime has now.
enum Next {
    Done,
    Again(Observed),
}

/// The reconciler's state.
pub struct Reconciler {
    node: String,
    /// What nftables publishes now (hostPort).
    published: Option<Vec<Published>>,
    runtime: Arc<dyn Runtime>,
    client: Client,
    credential: String,
    dirs: Dirs,
    records: Records,
    network: Option<(String, Subnet)>,
    addresses: Option<Addresses>,
    desired: BTreeMap<String, Container>,
    /// True once the controller's list has been seen: only then are strays removed.
    synced: bool,
    /// The contact epoch of the last list: strays are removed only on a list read after the
    /// latest reconnect (see `contact`).
    synced_epoch: u64,
    contact: Arc<Contact>,
    slots: HashMap<String, Slot>,
    /// Every role's Ready endpoints, for templates.
    endpoints: BTreeMap<String, RoleEndpoints>,
    /// Told when a container's phase changes, so a heartbeat carries it at once.
    changed: Arc<Notify>,
    /// Told by probe watchers when a verdict (ready, liveness failed) changes: a pass runs at
    /// once rather than at the next tick.
    verdicts: Arc<Notify>,
}

impl Reconciler {
    /// A reconciler for the agent `config` over `runtime`.
    pub fn new(
        config: &Config,
        network: Option<(String, Subnet)>,
        runtime: Arc<dyn Runtime>,
        client: Client,
        credential: String,
        contact: Arc<Contact>,
    ) -> Result<Self, AgentError> {
        let dir = config.data_dir.join("containers");
        std::fs::create_dir_all(&dir).map_err(|source| AgentError::DataDir {
            path: dir.clone(),
            source,
        })?;
        let addresses = match &network {
            Some((_, subnet)) => Some(Addresses::load(
                &config.data_dir.join("addresses"),
                *subnet,
            )?),
            None => None,
        };
        Ok(Reconciler {
            node: config.name.clone(),
            published: None,
            runtime,
            client,
            credential,
            dirs: Dirs::new(&config.data_dir),
            records: Records::new(&config.data_dir),
            network,
            addresses,
            desired: BTreeMap::new(),
            synced: false,
            synced_epoch: 0,
            contact,
            slots: HashMap::new(),
            endpoints: BTreeMap::new(),
            changed: Arc::new(Notify::new()),
            verdicts: Arc::new(Notify::new()),
        })
    }

    /// Notifies `changed` whenever a reported container's phase changes.
    pub fn notify_changes(&mut self, changed: Arc<Notify>) {
        self.changed = changed;
    }

    /// Reconciles on every change and every tick until `stop`.
    pub async fn run(
        &mut self,
        mut desired: mpsc::Receiver<Desired>,
        statuses: Arc<Mutex<Vec<Reported>>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tick.tick() => {}
                _ = self.verdicts.notified() => {}
                msg = desired.recv() => match msg {
                    Some(msg) => {
                        self.apply(msg);
                        // Take the rest of a burst before reconciling.
                        while let Ok(more) = desired.try_recv() {
                            self.apply(more);
                        }
                    }
                    None => break,
                },
            }
            let started = std::time::Instant::now();
            self.pass().await;
            crate::metrics::reconciled(started.elapsed(), &self.phases());
            let report = self.report();
            let mut published = statuses.lock().await;
            let phases = |r: &[Reported]| -> Vec<(String, ContainerPhase)> {
                r.iter().map(|x| (x.name.clone(), x.status.phase)).collect()
            };
            if phases(&published) != phases(&report) {
                self.changed.notify_one();
            }
            *published = report;
        }
        for slot in self.slots.values_mut() {
            slot.stop_probes();
        }
    }

    fn apply(&mut self, msg: Desired) {
        let now = Instant::now();
        match msg {
            Desired::Snapshot(items, epoch) => {
                // A fresh list (first, or after a cut-off): what left meanwhile goes at once.
                self.desired = items
                    .into_iter()
                    .filter_map(|c| self.for_this_board(c))
                    .map(|c| (c.metadata.name.clone(), c))
                    .collect();
                for slot in self.slots.values_mut() {
                    if matches!(slot.state, SlotState::Leaving { .. }) {
                        slot.state = SlotState::Live;
                    }
                }
                self.synced = true;
                self.synced_epoch = epoch;
            }
            Desired::Upsert(c) => {
                if let Some(c) = self.for_this_board(*c) {
                    if let Some(slot) = self.slots.get_mut(&c.metadata.name) {
                        if matches!(slot.state, SlotState::Leaving { .. }) {
                            slot.state = SlotState::Live;
                        }
                    }
                    self.desired.insert(c.metadata.name.clone(), c);
                }
            }
            Desired::Endpoints(endpoints) => self.endpoints = endpoints,
            Desired::Remove(name) => {
                self.desired.remove(&name);
                if let Some(slot) = self.slots.get_mut(&name) {
                    slot.state = decide::unassigned(slot.state, slot.serving(), now);
                }
            }
        }
    }

    /// The container as this board runs it: the copy a handoff brings here uses the image
    /// variant chosen for this board.
    fn for_this_board(&self, mut c: Container) -> Option<Container> {
        if !c.spec.runs_on(&self.node) {
            return None;
        }
        if c.spec.node.as_deref() != Some(self.node.as_str()) {
            if let Some(handoff) = &c.spec.handoff {
                c.spec.image_digest = handoff.image_digest.clone();
            }
        }
        Some(c)
    }

    /// The board's contact with the controller, as the decision reads it.
    fn contact(&self) -> decide::Contact {
        decide::Contact {
            cut_off_for: self.contact.cut_off_for(),
            fresh: self.synced
                && !self.contact.is_cut_off()
                && self.synced_epoch == self.contact.epoch(),
        }
    }

    fn phases(&self) -> Vec<ContainerPhase> {
        self.slots.values().map(|s| s.status.phase).collect()
    }

    /// The statuses to report, for containers the controller asked for.
    fn report(&self) -> Vec<Reported> {
        self.desired
            .values()
            .filter_map(|c| {
                let slot = self.slots.get(&c.metadata.name)?;
                Some(Reported {
                    name: c.metadata.name.clone(),
                    generation: c.spec.generation,
                    status: slot.status.clone(),
                })
            })
            .collect()
    }

    /// One pass over every container.
    pub async fn pass(&mut self) {
        let existing = match self.runtime.list().await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containers");
                return;
            }
        };
        self.remove_unassigned(&existing).await;
        let desired: Vec<Container> = self.desired.values().cloned().collect();
        let mut seen = Vec::with_capacity(desired.len());
        for c in &desired {
            self.ensure_slot(&c.metadata.name);
            let Some(observed) = self.observe(c, existing.contains(&c.metadata.name)).await else {
                continue;
            };
            seen.push((c, observed));
        }
        // Fencing first: every older copy stops before anything starts.
        for (c, observed) in &mut seen {
            if let Some(Action::Fence { held }) = self.decision(c, *observed) {
                self.fence(c, held).await;
                *observed = Observed::Missing;
            }
        }
        for (c, observed) in seen {
            self.step(c, observed).await;
            if observed == Observed::Alive {
                self.refresh_files(c).await;
            }
        }
        self.publish_host_ports().await;
    }

    /// Removes what the runtime has that is no longer assigned here (once the list is fresh
    /// and any leave delay is over), and forgets slots whose container is gone.
    async fn remove_unassigned(&mut self, existing: &[String]) {
        let (contact, now) = (self.contact(), Instant::now());
        let strays: Vec<String> = existing
            .iter()
            .filter(|n| {
                let state = self.slots.get(*n).map(|s| s.state);
                decide::removable(self.desired.contains_key(*n), state, contact, now)
            })
            .cloned()
            .collect();
        let gone: Vec<String> = self
            .slots
            .keys()
            .filter(|n| contact.fresh && !self.desired.contains_key(*n) && !existing.contains(n))
            .cloned()
            .collect();
        for name in strays.into_iter().chain(gone) {
            tracing::info!(container = %name, "removing container no longer assigned here");
            self.teardown(&name, true).await;
        }
    }

    /// Makes the slot of a container first seen, with the restart count and last exit that
    /// survive agent restarts, and its address (a container found after an agent restart,
    /// running or about to be restarted, keeps its address).
    fn ensure_slot(&mut self, name: &str) {
        if self.slots.contains_key(name) {
            return;
        }
        let record = self.records.read(name).unwrap_or_default();
        let address = self
            .addresses
            .as_mut()
            .and_then(|a| a.get_or_assign(name).ok());
        self.slots
            .insert(name.to_owned(), Slot::new(record, address, Instant::now()));
    }

    /// What the runtime has of `c`; `None` when its state cannot be read (logged).
    async fn observe(&self, c: &Container, exists: bool) -> Option<Observed> {
        if !exists {
            return Some(Observed::Missing);
        }
        let name = &c.metadata.name;
        match self.runtime.state(name).await {
            Ok(None) => Some(Observed::Missing),
            Ok(Some(s)) if s.phase.is_alive() => Some(Observed::Alive),
            Ok(Some(s)) => Some(Observed::Ended {
                oom_killed: s.oom_killed(),
            }),
            Err(e) => {
                tracing::warn!(container = %name, error = %e, "cannot read state");
                None
            }
        }
    }

    /// What `c` needs next, by the pure decision.
    fn decision(&self, c: &Container, observed: Observed) -> Option<Action> {
        let slot = self.slots.get(&c.metadata.name)?;
        let verdict = slot.probes.as_ref().map(Probes::verdict);
        let view = SlotView {
            state: slot.state,
            generation: slot.record.generation,
            backoff: &slot.backoff,
            verdict: verdict.as_ref(),
        };
        Some(decide(c, observed, view, self.contact(), Instant::now()))
    }

    /// Decides and acts for `c` until it settles for this pass.
    async fn step(&mut self, c: &Container, mut observed: Observed) {
        for _ in 0..STEPS_PER_PASS {
            let Some(action) = self.decision(c, observed) else {
                return;
            };
            match self.act(c, action).await {
                Next::Done => return,
                Next::Again(now) => observed = now,
            }
        }
    }

    /// Carries out `action` for `c` through the runtime.
    async fn act(&mut self, c: &Container, action: Action) -> Next {
        let name = c.metadata.name.as_str();
        match action {
            Action::Wait => {}
            Action::Fence { held } => {
                self.fence(c, held).await;
                return Next::Again(Observed::Missing);
            }
            Action::Create => self.create(c).await,
            Action::StopCutOff { away } => self.stop_cut_off(name, away).await,
            Action::Resume => self.resume(c).await,
            Action::WatchProbes => {
                let Some(slot) = self.slots.get_mut(name) else {
                    return Next::Done;
                };
                if slot.state.is_new() {
                    // Adopted after an agent restart: same generation, still running; keep
                    // it. Its address came from the data dir when its slot was made.
                    tracing::info!(container = %name, "adopted running container");
                }
                slot.state = SlotState::Live;
                slot.probes =
                    Probes::start(c, slot.address, self.runtime.clone(), self.verdicts.clone());
                if slot.probes.is_some() {
                    return Next::Again(Observed::Alive);
                }
                slot.set_phase(ContainerPhase::Running, None, None);
            }
            Action::Report { phase, reason } => {
                if let Some(slot) = self.slots.get_mut(name) {
                    let last = slot.probes.as_ref().map(|p| p.verdict().last_probe);
                    slot.status.last_probe = last.filter(|t| !t.is_empty());
                    slot.set_phase(phase, reason, None);
                }
            }
            Action::KillForLiveness => {
                if let Some(slot) = self.slots.get_mut(name) {
                    let last = slot.probes.as_ref().map(|p| p.verdict().last_probe);
                    tracing::warn!(container = %name, probe = ?last, "liveness failed: restarting");
                    slot.status.last_probe = last;
                    slot.stop_probes();
                }
                let _ = self.runtime.stop(name, STOP_GRACE).await;
                self.count_exit(name, ExitReason::LivenessFailed);
            }
            Action::CountExit(why) => {
                self.count_exit(name, why);
                return Next::Again(Observed::Ended {
                    oom_killed: why == ExitReason::OomKilled,
                });
            }
            Action::Restart => self.restart(c).await,
        }
        Next::Done
    }

    /// Live templates of a running container: re-rendered, installed and reloaded as its
    /// files' inputs change (see `live_files`); what failed shows in its status message.
    async fn refresh_files(&mut self, c: &Container) {
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
        slot.status.message = slot.live.last_error.clone();
    }

    /// Fencing: the copy here is of generation `held`, not the one assigned: it stops and goes
    /// before anything starts, so an old copy never runs next to a new one.
    async fn fence(&mut self, c: &Container, held: i64) {
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
    async fn stop_cut_off(&mut self, name: &str, away: Duration) {
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
    async fn resume(&mut self, c: &Container) {
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
    async fn restart(&mut self, c: &Container) {
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

    /// Keeps nftables' DNAT rules equal to the hostPorts of running containers.
    async fn publish_host_ports(&mut self) {
        let mut want: Vec<Published> = Vec::new();
        for c in self.desired.values() {
            let (Some(template), Some(slot)) =
                (c.spec.template.as_ref(), self.slots.get(&c.metadata.name))
            else {
                continue;
            };
            let Some(address) = slot.address else {
                continue;
            };
            for p in &template.ports {
                let (Some(host_port), Ok(port)) = (
                    p.host_port.and_then(|h| u16::try_from(h).ok()),
                    u16::try_from(p.port),
                ) else {
                    continue;
                };
                want.push(Published {
                    protocol: p.protocol.as_str(),
                    host_port,
                    address,
                    port,
                });
            }
        }
        want.sort();
        if self.published.as_ref() == Some(&want)
            || (self.published.is_none() && want.is_empty() && self.network.is_none())
        {
            return;
        }
        let (node, rules) = (self.node.clone(), want.clone());
        let applied = tokio::task::spawn_blocking(move || hostports::apply(&node, &rules))
            .await
            .unwrap_or_else(|e| Err(format!("nft task failed: {e}")));
        match applied {
            Ok(()) => {
                tracing::info!(ports = want.len(), "host ports published");
                self.published = Some(want);
            }
            Err(e) => tracing::warn!(error = %e, "cannot publish host ports; retrying"),
        }
    }

    async fn create(&mut self, c: &Container) {
        let name = c.metadata.name.as_str();
        self.set_phase(name, ContainerPhase::Creating, None, None);
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
    async fn build(&mut self, c: &Container) -> Result<crate::runtime::ContainerSpec, Failure> {
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

    fn fail_create(&mut self, name: &str, failure: Failure) {
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
    fn count_exit(&mut self, name: &str, why: ExitReason) {
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

    fn start_probes(&mut self, c: &Container) {
        let Some(slot) = self.slots.get_mut(&c.metadata.name) else {
            return;
        };
        slot.stop_probes();
        slot.probes = Probes::start(c, slot.address, self.runtime.clone(), self.verdicts.clone());
    }

    fn set_phase(
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
    async fn teardown(&mut self, name: &str, forget: bool) {
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
