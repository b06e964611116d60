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

use texu_api::{Container, ContainerPhase, ExitReason, RoleEndpoints};
use tokio::sync::{mpsc, watch, Mutex, Notify};
use tokio::time::Instant;

use super::client::{Client, Reported};
use super::contact::Contact;
use super::decide::{self, decide, Action, Observed, SlotView};
use super::hostports::{self, Published};
use super::network::{Addresses, Subnet};
use super::probes::Probes;
use super::record::Records;
use super::slot::{Slot, SlotState};
use super::spec::Dirs;
use super::{AgentError, Config, Desired};
use crate::runtime::Runtime;

#[path = "reconcile_act.rs"]
mod act;
#[path = "reconcile_stop.rs"]
mod stop;

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
                        crate::metrics::assigned(self.desired.values());
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
            hook: slot.hook_stage(),
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
            Action::RunPreStop => self.run_pre_stop(c),
            Action::StopOnRequest => self.stop_on_request(name).await,
            Action::MarkStopped => self.mark_stopped(name),
            Action::ForgetPreStop => {
                if let Some(slot) = self.slots.get_mut(name) {
                    slot.pre_stop = None;
                }
            }
        }
        Next::Done
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
}
