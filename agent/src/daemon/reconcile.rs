//! The reconciler: moves the board's LXC containers toward the containers assigned to it.
//!
//! Level-triggered and idempotent: each pass compares what should run (the controller's
//! containers for this node) with what the runtime has, and takes one step per container. On
//! start it adopts the containers it finds in its LXC path without restarting them; it removes
//! containers no longer assigned only after it has heard the controller's list.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use texu_api::{Container, ContainerPhase, ContainerStatus, ImageRef, RoleSpec};
use tokio::sync::{mpsc, watch, Mutex, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::{Client, Reported};
use super::contact::Contact;
use super::hostports::{self, Published};
use super::images::{self, ImageFailure};
use super::network::{Addresses, Subnet};
use super::{AgentError, Config, Desired};
use crate::probe::{BackoffPolicy, Exec, ProbeReport, ProbeRunner, ProbeTarget, RestartBackoff};
use crate::runtime::{self, ContainerState, NetConfig, Runtime, RuntimeError};

/// How often the reconciler looks at the runtime when nothing else wakes it.
const TICK: Duration = Duration::from_millis(250);
/// How long a container gets to stop before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a failed create waits before it is tried again.
const CREATE_RETRY: Duration = Duration::from_secs(5);
/// How long a container that was serving keeps running after it is moved or scaled away, so
/// that clients and proxies that still hold its address finish their requests (the new copy is
/// already Ready when a drain or rebalance moves it).
const LEAVE_DELAY: Duration = Duration::from_secs(2);

/// The role's `disconnect.stopOnNodeAfter`, if set and valid.
fn stop_on_node_after(c: &Container) -> Option<Duration> {
    c.spec
        .template
        .as_ref()?
        .disconnect
        .stop_on_node_after
        .as_ref()?
        .as_std()
        .ok()
}

/// What the agent remembers about a container across its own restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Record {
    generation: i64,
    restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_exit: Option<String>,
}

/// One container the reconciler looks after.
struct Slot {
    record: Record,
    backoff: RestartBackoff,
    status: ContainerStatus,
    probes: Option<(CancellationToken, watch::Receiver<ProbeReport>)>,
    retry_create_at: Option<Instant>,
    address: Option<Ipv4Addr>,
    /// Stopped by the agent itself because the board was cut off (`stopOnNodeAfter`).
    cut_off_stopped: bool,
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

/// The reconciler's state.
pub struct Reconciler {
    node: String,
    /// What nftables publishes now (hostPort).
    published: Option<Vec<Published>>,
    runtime: Arc<dyn Runtime>,
    client: Client,
    credential: String,
    data_dir: PathBuf,
    network: Option<(String, Subnet)>,
    addresses: Option<Addresses>,
    desired: BTreeMap<String, Container>,
    /// True once the controller's list has been seen: only then are strays removed.
    synced: bool,
    /// The contact epoch of the last list: strays are removed only on a list read after the
    /// latest reconnect (see `contact`).
    synced_epoch: u64,
    contact: Arc<Contact>,
    /// Containers moved or scaled away that still serve until the deadline.
    leaving: HashMap<String, Instant>,
    slots: HashMap<String, Slot>,
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
            data_dir: config.data_dir.clone(),
            network,
            addresses,
            desired: BTreeMap::new(),
            synced: false,
            synced_epoch: 0,
            contact,
            leaving: HashMap::new(),
            slots: HashMap::new(),
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
        for slot in self.slots.values() {
            if let Some((cancel, _)) = &slot.probes {
                cancel.cancel();
            }
        }
    }

    fn apply(&mut self, msg: Desired) {
        match msg {
            Desired::Snapshot(items, epoch) => {
                // A fresh list (first, or after a cut-off): what left meanwhile goes at once.
                self.desired = items
                    .into_iter()
                    .filter_map(|c| self.for_this_board(c))
                    .map(|c| (c.metadata.name.clone(), c))
                    .collect();
                self.leaving.clear();
                self.synced = true;
                self.synced_epoch = epoch;
            }
            Desired::Upsert(c) => {
                if let Some(c) = self.for_this_board(*c) {
                    self.leaving.remove(&c.metadata.name);
                    self.desired.insert(c.metadata.name.clone(), c);
                }
            }
            Desired::Remove(name) => {
                self.desired.remove(&name);
                let serving = self.slots.get(&name).is_some_and(|s| {
                    matches!(
                        s.status.phase,
                        ContainerPhase::Ready | ContainerPhase::Running
                    )
                });
                if serving {
                    self.leaving.insert(name, Instant::now() + LEAVE_DELAY);
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

    /// True when the desired state is fresh enough to remove containers: a list read after the
    /// latest reconnect, while heartbeats get through.
    fn fresh(&self) -> bool {
        self.synced && !self.contact.is_cut_off() && self.synced_epoch == self.contact.epoch()
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
        if self.fresh() {
            let now = Instant::now();
            let strays: Vec<String> = existing
                .iter()
                .filter(|n| !self.desired.contains_key(*n))
                .filter(|n| self.leaving.get(*n).is_none_or(|due| *due <= now))
                .cloned()
                .collect();
            for name in strays {
                self.leaving.remove(&name);
                self.remove(&name).await;
            }
            let gone: Vec<String> = self
                .slots
                .keys()
                .filter(|n| !self.desired.contains_key(*n) && !existing.contains(n))
                .cloned()
                .collect();
            for name in gone {
                self.remove(&name).await;
            }
        }
        self.fence(&existing).await;
        let cut_off = self.contact.cut_off_for();
        let fresh = self.fresh();
        let desired: Vec<Container> = self.desired.values().cloned().collect();
        for c in desired {
            let name = &c.metadata.name;
            if let Some(away) = cut_off {
                if stop_on_node_after(&c).is_some_and(|limit| away >= limit) {
                    self.stop_cut_off(name, away).await;
                    continue;
                }
            }
            if self.slots.get(name).is_some_and(|s| s.cut_off_stopped) {
                // Start again only once a list after the reconnect says it is still ours.
                if !fresh {
                    continue;
                }
                self.resume(&c).await;
                continue;
            }
            self.step(&c, existing.contains(name)).await;
        }
        self.publish_host_ports().await;
    }

    /// Fencing: a container here whose generation is older than the one assigned is stopped
    /// before anything starts, so an old copy never runs next to a new one.
    async fn fence(&mut self, existing: &[String]) {
        let stale: Vec<(String, i64, i64)> = self
            .desired
            .values()
            .filter(|c| existing.contains(&c.metadata.name))
            .filter_map(|c| {
                let name = &c.metadata.name;
                let held = match self.slots.get(name) {
                    Some(slot) => slot.record.generation,
                    None => read_record(&self.record_path(name))?.generation,
                };
                (held != c.spec.generation).then(|| (name.clone(), held, c.spec.generation))
            })
            .collect();
        for (name, held, wanted) in stale {
            tracing::info!(container = %name, held, wanted, "fenced: stopping an older generation before starting anything");
            self.teardown(&name, false).await;
            if let Some(slot) = self.slots.get_mut(&name) {
                // Recreated by its step with the new generation.
                slot.record.generation = wanted;
                slot.status = ContainerStatus {
                    address: slot.status.address.clone(),
                    ..Default::default()
                };
            }
        }
    }

    /// `stopOnNodeAfter`: the board has been cut off that long, so it stops the container
    /// itself (a replacement may be running elsewhere). It keeps it, to start again if the
    /// controller still wants it here once contact is back.
    async fn stop_cut_off(&mut self, name: &str, away: Duration) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        if slot.cut_off_stopped {
            return;
        }
        slot.cut_off_stopped = true;
        if let Some((cancel, _)) = slot.probes.take() {
            cancel.cancel();
        }
        tracing::warn!(container = %name, ?away, "cut off from the controller: stopping (stopOnNodeAfter)");
        if let Err(e) = self.runtime.stop(name, STOP_GRACE).await {
            tracing::warn!(container = %name, error = %e, "stop failed");
        }
        self.set_phase(
            name,
            ContainerPhase::Stopped,
            Some("CutOff"),
            Some(format!(
                "stopped by its agent after {}s without the controller (stopOnNodeAfter)",
                away.as_secs()
            )),
        );
    }

    /// Starts a container stopped by `stop_cut_off` again, without counting a restart.
    async fn resume(&mut self, c: &Container) {
        let name = c.metadata.name.clone();
        match self.runtime.start(&name).await {
            Ok(()) => {
                tracing::info!(container = %name, "contact is back: starting the container again");
                if let Some(slot) = self.slots.get_mut(&name) {
                    slot.cut_off_stopped = false;
                    slot.backoff.started(Instant::now());
                }
                self.set_phase(&name, ContainerPhase::Running, None, None);
                self.start_probes(c);
            }
            Err(e) => {
                // Let the normal path (recreate or restart) take it from here.
                tracing::warn!(container = %name, error = %e, "cannot start again after the cut-off");
                if let Some(slot) = self.slots.get_mut(&name) {
                    slot.cut_off_stopped = false;
                }
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

    async fn step(&mut self, c: &Container, exists: bool) {
        let name = c.metadata.name.clone();
        if !self.slots.contains_key(&name) {
            // The restart count and last exit survive agent restarts through the record.
            let record = read_record(&self.record_path(&name)).unwrap_or_default();
            // Addresses are kept in the data dir: a container found after an agent restart
            // (running, or stopped and about to be restarted) keeps its address.
            let address = self
                .addresses
                .as_mut()
                .and_then(|a| a.get_or_assign(&name).ok());
            self.slots.insert(
                name.clone(),
                Slot {
                    record,
                    backoff: RestartBackoff::new(BackoffPolicy::default(), Instant::now()),
                    status: ContainerStatus::default(),
                    probes: None,
                    retry_create_at: None,
                    address,
                    cut_off_stopped: false,
                },
            );
            if let Some(slot) = self.slots.get_mut(&name) {
                slot.status.address = slot.address.map(|a| a.to_string());
                slot.status.restarts = i64::from(slot.record.restarts);
                slot.status.last_exit = slot.record.last_exit.clone();
            }
        }
        let state = if exists {
            match self.runtime.state(&name).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(container = %name, error = %e, "cannot read state");
                    return;
                }
            }
        } else {
            None
        };
        let generation_matches = self
            .slots
            .get(&name)
            .is_some_and(|s| s.record.generation == c.spec.generation);
        match state {
            Some(_) if !generation_matches => {
                // Fencing: an older generation stops before the new one starts.
                tracing::info!(container = %name, generation = c.spec.generation, "new generation: recreating");
                self.teardown(&name, false).await;
                self.create(c).await;
            }
            None => self.create(c).await,
            Some(state) if state.phase.is_alive() => self.running(c, &state).await,
            Some(state) => self.exited(c, &state).await,
        }
    }

    async fn create(&mut self, c: &Container) {
        let name = c.metadata.name.clone();
        let now = Instant::now();
        if let Some(slot) = self.slots.get(&name) {
            if slot.retry_create_at.is_some_and(|t| now < t) {
                return;
            }
        }
        self.set_phase(&name, ContainerPhase::Creating, None, None);
        if let Some(Err(message)) = c
            .spec
            .template
            .as_ref()
            .map(|t| hostports::check_reserved(t, &hostports::reserved()))
        {
            self.fail_create(&name, "ReservedHostPort", message);
            return;
        }
        let rootfs = match self.prepare_image(c).await {
            Ok(rootfs) => rootfs,
            Err((reason, message)) => {
                self.fail_create(&name, reason, message);
                return;
            }
        };
        let spec = match self.runtime_spec(c, rootfs) {
            Ok(spec) => spec,
            Err((reason, message)) => {
                self.fail_create(&name, reason, message);
                return;
            }
        };
        let result = match self.runtime.create(&spec).await {
            Ok(()) => self.runtime.start(&name).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                tracing::info!(container = %name, generation = c.spec.generation, "container started");
                let Some(slot) = self.slots.get_mut(&name) else {
                    return;
                };
                slot.record.generation = c.spec.generation;
                slot.retry_create_at = None;
                slot.backoff.started(Instant::now());
                slot.address = spec.network.as_ref().map(|n| n.address);
                slot.status.address = slot.address.map(|a| a.to_string());
                let record = slot.record.clone();
                write_record(&self.record_path(&name), &record);
                self.set_phase(&name, ContainerPhase::Running, None, None);
                self.start_probes(c);
            }
            Err(e) => {
                // Leave nothing half-made behind.
                let _ = self.runtime.destroy(&name).await;
                let _ = std::fs::remove_dir_all(self.rootfs_dir(&name));
                let reason = match &e {
                    RuntimeError::CommandNotFound { .. } => "CommandNotFound",
                    RuntimeError::InvalidSpec { .. } | RuntimeError::FileTarget { .. } => {
                        "InvalidSpec"
                    }
                    RuntimeError::Template { .. } => "ImageFailed",
                    _ => "CreateFailed",
                };
                self.fail_create(&name, reason, error_chain(&e));
            }
        }
    }

    fn fail_create(&mut self, name: &str, reason: &str, message: String) {
        tracing::warn!(container = %name, reason, %message, "cannot create container");
        if let Some(slot) = self.slots.get_mut(name) {
            slot.retry_create_at = Some(Instant::now() + CREATE_RETRY);
        }
        self.set_phase(name, ContainerPhase::Failed, Some(reason), Some(message));
    }

    async fn running(&mut self, c: &Container, _state: &ContainerState) {
        let name = &c.metadata.name;
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        if slot.probes.is_none() && slot.status.phase != ContainerPhase::Creating {
            // Adopted after an agent restart: same generation, still running; keep it. Its
            // address came from the data dir when its slot was made.
            if slot.status.phase == ContainerPhase::Pending {
                tracing::info!(container = %name, "adopted running container");
            }
            self.start_probes(c);
        }
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        let report = slot.probes.as_ref().map(|(_, rx)| rx.borrow().clone());
        match report {
            Some(r) if r.liveness_failed => {
                tracing::warn!(container = %name, probe = %r.last_probe, "liveness failed: restarting");
                slot.status.last_probe = Some(r.last_probe.clone());
                if let Some((cancel, _)) = slot.probes.take() {
                    cancel.cancel();
                }
                let _ = self.runtime.stop(name, STOP_GRACE).await;
                self.record_exit(name, "LivenessFailed".into());
            }
            Some(r) => {
                slot.status.last_probe = (!r.last_probe.is_empty()).then(|| r.last_probe.clone());
                let phase = if r.ready {
                    ContainerPhase::Ready
                } else {
                    ContainerPhase::Running
                };
                let reason = slot
                    .backoff
                    .in_crash_loop(Instant::now())
                    .then_some("CrashLoopBackOff");
                self.set_phase(name, phase, reason, None);
            }
            None => self.set_phase(name, ContainerPhase::Running, None, None),
        }
    }

    async fn exited(&mut self, c: &Container, state: &ContainerState) {
        let name = c.metadata.name.clone();
        let now = Instant::now();
        let waiting = self
            .slots
            .get(&name)
            .and_then(|s| s.backoff.restart_at())
            .is_some();
        if !waiting {
            let why = if state.oom_killed() {
                "OOMKilled".to_string()
            } else {
                "Exited".to_string()
            };
            self.record_exit(&name, why);
        }
        let Some(slot) = self.slots.get_mut(&name) else {
            return;
        };
        if slot.backoff.restart_due(now) {
            match self.runtime.start(&name).await {
                Ok(()) => {
                    tracing::info!(container = %name, restarts = slot.record.restarts, "container restarted");
                    slot.backoff.started(Instant::now());
                    self.set_phase(&name, ContainerPhase::Running, None, None);
                    self.start_probes(c);
                }
                Err(e) => {
                    tracing::warn!(container = %name, error = %e, "restart failed");
                    slot.backoff.exited(Instant::now());
                }
            }
        }
    }

    /// Counts an exit: restarts + 1, the reason kept, a backoff before the next start.
    fn record_exit(&mut self, name: &str, why: String) {
        let now = Instant::now();
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        if let Some((cancel, _)) = slot.probes.take() {
            cancel.cancel();
        }
        let delay = slot.backoff.exited(now);
        crate::metrics::restarted(&why);
        slot.record.restarts += 1;
        slot.record.last_exit = Some(why.clone());
        slot.status.restarts = i64::from(slot.record.restarts);
        slot.status.last_exit = Some(why.clone());
        let record = slot.record.clone();
        let crash_loop = slot.backoff.in_crash_loop(now);
        write_record(&self.record_path(name), &record);
        tracing::warn!(container = %name, reason = %why, restart_in = ?delay, "container exited");
        let reason = if crash_loop {
            "CrashLoopBackOff"
        } else {
            "BackOff"
        };
        self.set_phase(
            name,
            ContainerPhase::Failed,
            Some(reason),
            Some(format!("{why}; restarting in {delay:?}")),
        );
    }

    fn start_probes(&mut self, c: &Container) {
        let name = c.metadata.name.clone();
        let Some(template) = c.spec.template.as_ref() else {
            return;
        };
        let Some(slot) = self.slots.get_mut(&name) else {
            return;
        };
        if let Some((cancel, _)) = slot.probes.take() {
            cancel.cancel();
        }
        let address = slot
            .address
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let target = ProbeTarget {
            container: name.clone(),
            address,
        };
        let exec: Arc<dyn Exec> = Arc::new(RuntimeExec(self.runtime.clone()));
        match ProbeRunner::new(target, &template.health, &template.ports, exec) {
            Ok(runner) => {
                let rx = runner.subscribe();
                let cancel = CancellationToken::new();
                tokio::spawn(forward_verdicts(
                    runner.subscribe(),
                    self.verdicts.clone(),
                    cancel.clone(),
                ));
                runner.spawn(cancel.clone());
                slot.probes = Some((cancel, rx));
            }
            Err(e) => tracing::warn!(container = %name, error = %e, "probes not started"),
        }
    }

    fn set_phase(
        &mut self,
        name: &str,
        phase: ContainerPhase,
        reason: Option<&str>,
        message: Option<String>,
    ) {
        if let Some(slot) = self.slots.get_mut(name) {
            slot.status.phase = phase;
            slot.status.reason = reason.map(str::to_string);
            slot.status.message = message;
        }
    }

    /// Stops and destroys a container no longer assigned here, with its volumes and address.
    async fn remove(&mut self, name: &str) {
        tracing::info!(container = %name, "removing container no longer assigned here");
        self.teardown(name, true).await;
    }

    async fn teardown(&mut self, name: &str, forget: bool) {
        if let Some(slot) = self.slots.get_mut(name) {
            if let Some((cancel, _)) = slot.probes.take() {
                cancel.cancel();
            }
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
            let _ = std::fs::remove_file(self.record_path(name));
            let _ = std::fs::remove_dir_all(self.volumes_dir(name));
            let _ = std::fs::remove_dir_all(self.rootfs_dir(name));
            let _ = std::fs::remove_dir_all(crate::files::dir(&self.data_dir, name));
            if let Some(a) = self.addresses.as_mut() {
                let _ = a.release(name);
            }
        }
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.data_dir
            .join("containers")
            .join(format!("{name}.json"))
    }

    fn rootfs_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join("rootfs").join(name)
    }

    fn volumes_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join("volumes").join(name)
    }

    /// For an image from the image store: downloads (once, verified) and unpacks a fresh root
    /// filesystem for this container. `None` for host and template images.
    async fn prepare_image(&self, c: &Container) -> Result<Option<PathBuf>, ImageFailure> {
        let Some(template) = c.spec.template.as_ref() else {
            return Ok(None);
        };
        let Ok(ImageRef::Stored { name, tag }) = template.image_ref() else {
            return Ok(None);
        };
        let digest = c.spec.image_digest.clone().ok_or((
            "ImageUnavailable",
            format!("image {name}:{tag} has no variant for this board's architecture"),
        ))?;
        let (client, credential) = (self.client.clone(), self.credential.clone());
        let cache = self.data_dir.join("images");
        let rootfs = self.rootfs_dir(&c.metadata.name);
        tokio::task::spawn_blocking(move || {
            let tarball = images::fetch(&client, &credential, &cache, &digest)?;
            images::unpack(&tarball, &rootfs)?;
            Ok(Some(rootfs))
        })
        .await
        .unwrap_or_else(|e| Err(("ImageFailed", format!("image task failed: {e}"))))
    }

    /// The runtime's spec for a container, or a reason and message why it cannot be built.
    fn runtime_spec(
        &mut self,
        c: &Container,
        rootfs: Option<PathBuf>,
    ) -> Result<runtime::ContainerSpec, ImageFailure> {
        let name = &c.metadata.name;
        let template: &RoleSpec = c.spec.template.as_ref().ok_or((
            "NoTemplate",
            "the container has no template from its role".to_string(),
        ))?;
        let image = match template.image_ref() {
            Ok(ImageRef::Host) => runtime::Image::Host,
            Ok(ImageRef::Template(t)) => runtime::Image::Template(t),
            Ok(ImageRef::Stored { name: image, tag }) => match rootfs {
                Some(path) => runtime::Image::Rootfs(path),
                None => {
                    return Err((
                        "ImageUnavailable",
                        format!("image {image}:{tag} was not prepared"),
                    ))
                }
            },
            Err(e) => return Err(("InvalidImage", e.to_string())),
        };
        let mut spec = runtime::ContainerSpec::new(name.clone(), image);
        spec.privileged = template.privileged;
        spec.command = template.command.clone();
        spec.env = template
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        spec.hostname = Some(name.clone());
        spec.memory_limit_bytes = template
            .resources
            .memory
            .as_ref()
            .and_then(|q| q.bytes().ok());
        spec.cpu_millis = template
            .resources
            .cpu
            .as_ref()
            .and_then(|q| q.cpu_millis().ok())
            .map(|m| m.min(u64::from(u32::MAX)) as u32);
        for volume in &template.volumes {
            let host = self.volumes_dir(name).join(&volume.name);
            std::fs::create_dir_all(&host).map_err(|e| {
                (
                    "VolumeFailed",
                    format!("cannot create {}: {e}", host.display()),
                )
            })?;
            spec.volumes.push(runtime::Volume {
                host_path: host,
                container_path: PathBuf::from(&volume.path),
            });
        }
        if let (Some((bridge, subnet)), Some(addresses)) = (&self.network, self.addresses.as_mut())
        {
            let address = addresses
                .get_or_assign(name)
                .map_err(|e| ("NetworkFailed", e.to_string()))?;
            spec.network = Some(NetConfig {
                bridge: bridge.clone(),
                address,
                prefix_len: subnet.prefix_len,
                gateway: Some(subnet.gateway()),
            });
        }
        crate::files::prepare(&self.data_dir, &self.node, c, template, &mut spec)
            .map_err(|e| (e.reason(), error_chain(&e)))?;
        Ok(spec)
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

/// An error and its causes on one line: `a: b: c`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

fn read_record(path: &Path) -> Option<Record> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_record(path: &Path, record: &Record) {
    let tmp = path.with_extension("tmp");
    let result = serde_json::to_vec(record)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cannot save container record");
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
