//! One simulated board: it heartbeats at the real rate with the status of every container the
//! controller assigns to it, follows its own containers through a watch as an agent does, and
//! reports each one Ready at once (the runtime is faked: nothing is started). Powered off, it
//! goes silent; powered on again, it comes back empty, as a board whose power was cut.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper::Method;
use serde::Deserialize;
use texu_api::{Cidr, Container, ContainerPhase, ContainerStatus, DesiredState, NodeSpec};
use texu_controller::nodes::{Heartbeat, ReportedContainer};
use tokio::sync::{watch, Notify};

use super::http::Http;
use super::stats::Stats;

/// How long a heartbeat may take before it counts as failed (the agent's own figure).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);
/// Silence on a watch after which it is taken for dead (the controller bookmarks every 2 s).
const WATCH_QUIET: Duration = Duration::from_secs(6);
/// A failed list or watch is tried again after this long.
const RETRY: Duration = Duration::from_millis(500);

/// One container the board holds.
#[derive(Debug, Clone)]
struct Held {
    generation: i64,
    desired: DesiredState,
    address: Ipv4Addr,
}

/// A joined board and what it holds.
pub struct Board {
    pub name: String,
    spec: NodeSpec,
    /// The labels it joined with, said again in every heartbeat as an agent does.
    labels: BTreeMap<String, String>,
    subnet: Cidr,
    credential: String,
    held: Mutex<BTreeMap<String, Held>>,
    /// Rung when what the board holds changed: a prompt heartbeat, as the agent sends.
    changed: Notify,
    /// True while the board has power.
    power: watch::Sender<bool>,
    /// Set once a heartbeat was answered: the controller has seen the board Ready.
    heard: std::sync::atomic::AtomicBool,
}

#[derive(Deserialize)]
struct ContainerList {
    revision: i64,
    items: Vec<Container>,
}

#[derive(Deserialize)]
struct WatchLine {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    object: serde_json::Value,
}

impl Board {
    /// A board that joined as `name` with `spec` (its subnet filled in), `labels` and
    /// `credential`.
    pub fn new(
        name: String,
        spec: NodeSpec,
        labels: BTreeMap<String, String>,
        subnet: Cidr,
        credential: String,
    ) -> Board {
        Board {
            name,
            spec,
            labels,
            subnet,
            credential,
            held: Mutex::new(BTreeMap::new()),
            changed: Notify::new(),
            power: watch::channel(true).0,
            heard: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The names of the containers it holds now.
    pub fn containers(&self) -> HashSet<String> {
        self.held().keys().cloned().collect()
    }

    /// True once a heartbeat of this board was answered.
    pub fn heard(&self) -> bool {
        self.heard.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Cuts (false) or restores (true) the board's power.
    pub fn set_power(&self, on: bool) {
        self.power.send_replace(on);
    }

    /// Takes `c` if the controller assigns it here (bound, or the new copy of a move), drops it
    /// otherwise. True when what the board holds changed.
    fn take(&self, c: &Container) -> bool {
        let mine = c.spec.node.as_deref() == Some(&self.name)
            || c.spec.handoff.as_ref().is_some_and(|h| h.node == self.name);
        let mut held = self.held();
        if !mine {
            return held.remove(&c.metadata.name).is_some();
        }
        if let Some(h) = held.get_mut(&c.metadata.name) {
            let same = h.generation == c.spec.generation && h.desired == c.spec.desired;
            h.generation = c.spec.generation;
            h.desired = c.spec.desired;
            return !same;
        }
        let used: HashSet<Ipv4Addr> = held.values().map(|h| h.address).collect();
        let Some(address) = self.subnet.hosts().find(|a| !used.contains(a)) else {
            tracing::warn!(board = %self.name, container = %c.metadata.name, "subnet full; container not taken");
            return false;
        };
        held.insert(
            c.metadata.name.clone(),
            Held {
                generation: c.spec.generation,
                desired: c.spec.desired,
                address,
            },
        );
        true
    }

    /// What a heartbeat says now: every container Ready at its address (Stopped when it should
    /// be stopped).
    fn heartbeat(&self, prompt: bool) -> Heartbeat {
        let containers = self
            .held()
            .iter()
            .map(|(name, h)| ReportedContainer {
                name: name.clone(),
                generation: h.generation,
                status: ContainerStatus {
                    phase: match h.desired {
                        DesiredState::Running => ContainerPhase::Ready,
                        DesiredState::Stopped => ContainerPhase::Stopped,
                    },
                    address: Some(h.address.to_string()),
                    ..Default::default()
                },
            })
            .collect();
        Heartbeat {
            spec: self.spec.clone(),
            labels: self.labels.clone(),
            containers,
            prompt,
        }
    }

    /// Heartbeats every `period` (and at once when what it holds changed) while it has power;
    /// `offset` spreads the boards' beats over the period. Runs until `stop`.
    pub async fn beat(
        self: Arc<Self>,
        http: Http,
        stats: Arc<Stats>,
        period: Duration,
        offset: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let path = format!("/v1/nodes/{}/status", self.name);
        let mut power = self.power.subscribe();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let prompt = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tick.tick() => false,
                _ = self.changed.notified() => true,
            };
            if !*power.borrow_and_update() {
                // Dark: no beats until the power is back, then a beat at once.
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = power.wait_for(|on| *on) => {}
                }
            }
            let beat = self.heartbeat(prompt);
            let body = match serde_json::to_vec(&beat) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(board = %self.name, error = %e, "cannot encode a heartbeat");
                    continue;
                }
            };
            let sent = Instant::now();
            match http
                .send(
                    Method::PUT,
                    &path,
                    &self.credential,
                    Some(body),
                    HEARTBEAT_TIMEOUT,
                )
                .await
            {
                Ok(_) => {
                    self.heard.store(true, std::sync::atomic::Ordering::Relaxed);
                    stats.answered(
                        sent.elapsed(),
                        beat.containers
                            .iter()
                            .filter(|c| c.status.phase == ContainerPhase::Ready)
                            .map(|c| c.name.as_str()),
                    )
                }
                Err(e) => {
                    tracing::debug!(board = %self.name, error = %e, "heartbeat failed");
                    stats.failed();
                }
            }
        }
    }

    /// Lists its containers, then follows them through a watch, as an agent does; lists again
    /// when the watch ends. Powered off it forgets everything and waits. Runs until `stop`.
    pub async fn follow(self: Arc<Self>, http: Http, mut stop: watch::Receiver<bool>) {
        let list_path = format!("/v1/containers?node={}", self.name);
        let mut power = self.power.subscribe();
        loop {
            if !*power.borrow_and_update() {
                self.held().clear();
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = power.wait_for(|on| *on) => {}
                }
                continue;
            }
            let session = async {
                let revision = self.list(&http, &list_path).await?;
                let path = format!(
                    "/v1/containers?node={}&watch=true&revision={revision}",
                    self.name
                );
                let mut lines = http.watch(&path, &self.credential).await?;
                while let Some(line) = lines.next(WATCH_QUIET).await? {
                    self.on_line(&line);
                }
                Ok::<(), super::http::HttpError>(())
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = power.wait_for(|on| !*on) => continue,
                ended = session => {
                    if let Err(e) = ended {
                        tracing::debug!(board = %self.name, error = %e, "list or watch failed; again");
                    }
                }
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    /// Reads its containers afresh: holds exactly those. Returns the list's revision.
    async fn list(&self, http: &Http, path: &str) -> Result<i64, super::http::HttpError> {
        let bytes = http
            .send(
                Method::GET,
                path,
                &self.credential,
                None,
                Duration::from_secs(10),
            )
            .await?;
        let list: ContainerList = match serde_json::from_slice(&bytes) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(board = %self.name, error = %e, "container list does not decode");
                return Ok(0);
            }
        };
        let names: HashSet<&str> = list
            .items
            .iter()
            .map(|c| c.metadata.name.as_str())
            .collect();
        let mut changed = false;
        self.held().retain(|name, _| {
            let keep = names.contains(name.as_str());
            changed |= !keep;
            keep
        });
        for c in &list.items {
            changed |= self.take(c);
        }
        if changed {
            self.changed.notify_one();
        }
        Ok(list.revision)
    }

    /// One line of the watch: a container added, changed or deleted.
    fn on_line(&self, line: &[u8]) {
        let Ok(event) = serde_json::from_slice::<WatchLine>(line) else {
            tracing::warn!(board = %self.name, "watch line does not decode");
            return;
        };
        let changed = match event.kind.as_str() {
            "ADDED" | "MODIFIED" => match serde_json::from_value::<Container>(event.object) {
                Ok(c) => self.take(&c),
                Err(e) => {
                    tracing::warn!(board = %self.name, error = %e, "watched container does not decode");
                    false
                }
            },
            "DELETED" => event.object["metadata"]["name"]
                .as_str()
                .is_some_and(|name| self.held().remove(name).is_some()),
            _ => false,
        };
        if changed {
            self.changed.notify_one();
        }
    }
}
