//! Boards: joining with the cluster token, per-node credentials, heartbeats and readiness.
//!
//! Heartbeats live in memory; the store is written only when something a user can see changes
//! (a node becomes Ready or NotReady, a container's status changes), so an idle cluster writes
//! close to nothing. What a board says about itself (facts, requested labels, its container
//! count) is checked, and written at most once per [`FACTS_WRITE_INTERVAL`], so a board that
//! changes them every beat cannot make the store grow with every beat.

mod joins;
mod throttle;

pub use joins::{Joiner, NodeError};
pub use throttle::JoinThrottle;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use texu_api::{
    Cidr, Container, ContainerPhase, ContainerStatus, EventKind, ImageRef, Keep, Node, NodePhase,
    NodeSpec, NodeStatus, Role,
};
use tokio::sync::Mutex;

use crate::clock;
use crate::detector::Detector;
use crate::leader::Leadership;
use crate::objects::{ObjectError, Objects};

/// Where per-node credential hashes are kept.
const CREDENTIAL_PREFIX: &str = "/texu/v1/credentials/";

/// What an agent sends to join.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinRequest {
    pub name: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    pub spec: NodeSpec,
}

/// What the controller answers to a join: the node's own credential and container subnet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    pub name: String,
    pub credential: String,
    pub subnet: Option<String>,
    /// The cluster's container range: agents route only to subnets inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_cidr: Option<String>,
    /// Every controller's API URL, so the agent can move to another when its own stops.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controllers: Vec<String>,
}

/// A board's facts and requested labels reach the store at most this often; a change of
/// readiness is written at once.
pub const FACTS_WRITE_INTERVAL: Duration = Duration::from_secs(10);

/// Where subnet claims live: one key per subnet, naming its node, so two joins never share.
const SUBNET_PREFIX: &str = "/texu/v1/subnets/";

/// One container's status as an agent reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReportedContainer {
    pub name: String,
    pub generation: i64,
    pub status: ContainerStatus,
}

/// A heartbeat: the node's facts and the status of its containers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Heartbeat {
    pub spec: NodeSpec,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub containers: Vec<ReportedContainer>,
    /// Sent out of rhythm, as soon as a container's status changed: a sign of life, but not a
    /// beat whose gap the failure detector learns.
    #[serde(default)]
    pub prompt: bool,
}

/// Node bookkeeping shared by the API and the readiness monitor.
pub struct Nodes {
    objects: Objects,
    /// The cluster's container range; each node gets a /24 of it.
    cluster_cidr: Cidr,
    /// Each board's heartbeat rhythm, in seconds since `epoch`.
    detectors: Mutex<HashMap<String, Detector>>,
    epoch: Instant,
    grace: Duration,
    /// When each board's node object was last written from a heartbeat.
    written: Mutex<HashMap<String, tokio::time::Instant>>,
    /// Failed joins per source address.
    throttle: JoinThrottle,
    /// Heartbeats and the monitor write through this: the leader's fenced store.
    leader_objects: Objects,
    /// Who leads; `None` for the only controller.
    leadership: Option<Leadership>,
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The address a board reports for one of its containers, kept only when it is an IPv4
/// address inside the board's own subnet (the one its agent assigned), written in canonical
/// form. Anything else is dropped: it would reach other boards' templates via `replaces`.
fn own_address(node: &str, subnet: Option<Cidr>, reported: &ReportedContainer) -> Option<String> {
    let text = reported.status.address.as_deref()?;
    let valid = text
        .parse::<Ipv4Addr>()
        .ok()
        .filter(|ip| subnet.is_some_and(|s| s.contains(*ip)));
    if valid.is_none() {
        tracing::warn!(
            node,
            container = %reported.name,
            address = ?text.chars().take(64).collect::<String>(),
            subnet = ?subnet.map(|s| s.to_string()),
            "reported container address is not in the board's subnet; dropped"
        );
    }
    valid.map(|ip| ip.to_string())
}

impl Nodes {
    /// Node bookkeeping over `objects`; a node is NotReady after `grace` without heartbeats.
    pub fn new(objects: Objects, grace: Duration, cluster_cidr: Cidr) -> Self {
        Nodes {
            objects: objects.clone(),
            cluster_cidr,
            detectors: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            grace,
            written: Mutex::new(HashMap::new()),
            throttle: JoinThrottle::default(),
            leader_objects: objects,
            leadership: None,
        }
    }

    /// Takes heartbeats only while `leadership` leads, and writes them and the monitor's
    /// verdicts through `fenced` (the same objects over the fenced store).
    pub fn with_leadership(mut self, leadership: Leadership, fenced: Objects) -> Self {
        self.leadership = Some(leadership);
        self.leader_objects = fenced;
        self
    }

    /// Every controller's API URL (the join answer and heartbeat answers carry it).
    pub fn controllers(&self) -> Vec<String> {
        self.leadership
            .as_ref()
            .map(|l| l.view().controllers)
            .unwrap_or_default()
    }

    /// The leadership, when several controllers share the store.
    pub fn leadership(&self) -> Option<&Leadership> {
        self.leadership.as_ref()
    }

    /// `Err(NotLeader)` with where the leader is, unless this controller leads.
    fn must_lead(&self) -> Result<(), NodeError> {
        match &self.leadership {
            Some(l) if !l.is_leader() => Err(NodeError::NotLeader {
                leader: l.leader_elsewhere(),
            }),
            _ => Ok(()),
        }
    }

    /// Failed joins per source address, for the join route.
    pub fn throttle(&self) -> &JoinThrottle {
        &self.throttle
    }

    /// Fills each node's `status.lastHeartbeat` with the last heartbeat this controller
    /// received from it (kept in memory: the store's copy is written only when something
    /// else changes).
    pub async fn fill_last_heartbeats(&self, nodes: &mut [Node]) {
        let detectors = self.detectors.lock().await;
        let now = self.epoch.elapsed().as_secs_f64();
        for node in nodes {
            let Some(last) = detectors.get(&node.metadata.name).and_then(Detector::last) else {
                continue;
            };
            let ago = (now - last).max(0.0);
            let at = clock::now_secs() - ago.round() as i64;
            node.status
                .get_or_insert_with(NodeStatus::default)
                .last_heartbeat = Some(clock::format_rfc3339(at));
        }
    }

    /// Takes a heartbeat: marks the node seen, and writes node and container status that changed.
    /// Facts that fail [`texu_api::validate_node_facts`] refuse the whole heartbeat.
    pub async fn heartbeat(&self, name: &str, beat: Heartbeat) -> Result<(), NodeError> {
        self.must_lead()?;
        let errors = texu_api::validate_node_facts(&beat.spec, &beat.labels);
        if !errors.is_empty() {
            return Err(NodeError::Invalid {
                name: name.to_string(),
                errors,
            });
        }
        let now = self.epoch.elapsed().as_secs_f64();
        {
            let mut detectors = self.detectors.lock().await;
            let detector = detectors
                .entry(name.to_string())
                .or_insert_with(|| Detector::new(self.grace));
            if beat.prompt {
                detector.touch(now);
            } else {
                detector.beat(now);
            }
        }
        let Some(mut node) = self.objects.get::<Node>(name).await? else {
            return Err(ObjectError::NotFound {
                kind: "node",
                name: name.to_string(),
            }
            .into());
        };
        let subnet = node
            .spec
            .subnet
            .as_deref()
            .and_then(|s| Cidr::parse(s).ok());
        let was_ready = node.status.as_ref().map(|s| s.phase) == Some(NodePhase::Ready);
        let mut next = node.clone();
        next.spec.address = beat.spec.address;
        next.spec.arch = beat.spec.arch;
        next.spec.cpus = beat.spec.cpus;
        next.spec.memory_bytes = beat.spec.memory_bytes;
        let count = beat.containers.len() as i64;
        let status = next.status.get_or_insert_with(NodeStatus::default);
        status.phase = NodePhase::Ready;
        status.containers = count;
        status.message = None;
        status.requested_labels = beat.labels;
        if !was_ready {
            status.since = Some(clock::now_rfc3339());
        }
        let said_more = next.spec != node.spec || next.status != node.status;
        if !was_ready || (said_more && self.facts_write_due(name).await) {
            if let Some(s) = next.status.as_mut() {
                s.last_heartbeat = Some(clock::now_rfc3339());
            }
            node = next;
            self.leader_objects.replace(&node).await?;
            self.written
                .lock()
                .await
                .insert(name.to_string(), tokio::time::Instant::now());
            if !was_ready {
                tracing::info!(node = name, "node is Ready");
                self.objects.events().record(
                    EventKind::NodeReady,
                    format!("node/{name}"),
                    Some(name),
                    "heartbeats arrive",
                );
            }
        }
        if !was_ready {
            let names: Vec<(&str, &str)> = beat
                .containers
                .iter()
                .map(|r| (r.name.as_str(), r.status.phase.as_str()))
                .collect();
            tracing::info!(node = name, containers = ?names, "heartbeat from a board that was not Ready");
        }
        self.take_reports(name, !was_ready, subnet, beat.containers)
            .await
    }

    /// Writes what the reported container statuses change, all in one store batch (one
    /// commit), each guarded on its own. A conflict means someone changed a container
    /// meanwhile: it is read again and retried (up to four rounds), as the decisions of a
    /// returning board's first heartbeat are taken only once.
    async fn take_reports(
        &self,
        name: &str,
        returning: bool,
        subnet: Option<Cidr>,
        reports: Vec<ReportedContainer>,
    ) -> Result<(), NodeError> {
        let mut pending: Vec<ReportedContainer> = reports
            .into_iter()
            .map(|mut reported| {
                reported.status.address = own_address(name, subnet, &reported);
                reported
            })
            .collect();
        for _ in 0..4 {
            if pending.is_empty() {
                break;
            }
            // One read after another: a heartbeat holds at most one blocking read at a time,
            // so a thousand boards' beats do not flood the blocking pool with threads.
            let mut reads = Vec::with_capacity(pending.len());
            for r in &pending {
                reads.push(self.objects.get::<Container>(&r.name).await);
            }
            let mut writes = Vec::new();
            let mut written = Vec::new();
            for (reported, read) in std::mem::take(&mut pending).into_iter().zip(reads) {
                let Some(c) = read? else {
                    continue;
                };
                if c.spec.generation != reported.generation {
                    tracing::debug!(node = name, container = %reported.name, reported = reported.generation, current = c.spec.generation, "report of an older generation ignored");
                    continue;
                }
                if let Some(next) = self
                    .take_report(name, returning, c, reported.clone())
                    .await?
                {
                    writes.push(next);
                    written.push(reported);
                }
            }
            if writes.is_empty() {
                break;
            }
            let answers = self.leader_objects.replace_all(&writes).await?;
            for (reported, answer) in written.into_iter().zip(answers) {
                match answer {
                    Err(ObjectError::Stale { .. }) => pending.push(reported),
                    Err(e) => return Err(e.into()),
                    Ok(_) => {}
                }
            }
        }
        Ok(())
    }

    /// True when a board's facts may be written again (see [`FACTS_WRITE_INTERVAL`]).
    async fn facts_write_due(&self, name: &str) -> bool {
        let written = self.written.lock().await;
        written
            .get(name)
            .is_none_or(|at| at.elapsed() >= FACTS_WRITE_INTERVAL)
    }

    /// What one reported container status changes, if anything:
    /// - bound here: its status (and `replaces` is cleared once the member is Ready: it is
    ///   for the first boot only);
    /// - the new copy of a move to this board: the move's status, and once it is Ready the
    ///   switch (the old board then stops its copy after a short leave delay);
    /// - a board coming back with a copy that a failover moved away: with `keep: original`
    ///   the copy here wins and the replacement is dropped; otherwise the copy here is fenced
    ///   (the board stops it when it reads its list).
    async fn take_report(
        &self,
        name: &str,
        returning: bool,
        mut c: Container,
        reported: ReportedContainer,
    ) -> Result<Option<Container>, ObjectError> {
        let status = reported.status;
        let ready = status.phase == ContainerPhase::Ready;
        let alive = matches!(
            status.phase,
            ContainerPhase::Ready | ContainerPhase::Running
        );
        let object = format!("container/{}", c.metadata.name);
        if c.spec.node.as_deref() == Some(name) {
            let mut changed = c.status.as_ref() != Some(&status);
            if ready && c.spec.replaces.take().is_some() {
                changed = true;
            }
            if c.spec.moved_from.is_some() && returning {
                c.spec.moved_from = None;
                changed = true;
            }
            let events = self.objects.events();
            crate::file_events::record_failures(events, &object, name, c.status.as_ref(), &status);
            c.status = Some(status);
            return Ok(changed.then_some(c));
        }
        if let Some(h) = c.spec.handoff.as_mut().filter(|h| h.node == name) {
            if !ready {
                if h.status.as_ref() == Some(&status) {
                    return Ok(None);
                }
                h.status = Some(status);
                return Ok(Some(c));
            }
            let reason = h.reason.clone();
            let from = c.spec.node.clone().unwrap_or_default();
            c.spec.image_digest = h.image_digest.clone();
            c.spec.node = Some(name.to_string());
            c.spec.handoff = None;
            c.spec.moved_from = None;
            c.status = Some(status);
            let kind = if reason == crate::scheduler::REBALANCE {
                EventKind::Rebalanced
            } else {
                EventKind::Drained
            };
            self.objects.events().record(
                kind,
                object,
                Some(name),
                format!("moved from {from} to {name}, make-before-break ({reason})"),
            );
            return Ok(Some(c));
        }
        if !returning || c.spec.moved_from.as_deref() != Some(name) {
            return Ok(None);
        }
        let role = self.objects.get::<Role>(&c.spec.role).await?;
        let keep_original = role
            .as_ref()
            .is_some_and(|r| r.spec.disconnect.keep == Keep::Original && !r.spec.stateful);
        let elsewhere = c.spec.node.clone().unwrap_or_default();
        if keep_original && alive {
            self.objects.events().record(
                EventKind::KeptOriginal,
                object,
                Some(name),
                format!("{name} is back with it running: it stays here and the copy on {elsewhere} stops (keep: original)"),
            );
            c.spec.node = Some(name.to_string());
            c.spec.moved_from = None;
            c.spec.handoff = None;
            c.status = Some(status);
            if let Some(role) = &role {
                // The variant of a stored image for this board's architecture, not the one the
                // replacement's board ran.
                c.spec.image_digest = self.digest_for(role, name).await?;
            }
            return Ok(Some(c));
        }
        self.objects.events().record(
            EventKind::Fenced,
            object,
            Some(name),
            format!(
                "{name} is back; its copy stops, the one on {elsewhere} stays (keep: replacement)"
            ),
        );
        c.spec.moved_from = None;
        Ok(Some(c))
    }

    /// The variant of the role's stored image that `node` runs (`None` for host and LXC
    /// template images, or when the store has none for the node's architecture).
    async fn digest_for(&self, role: &Role, node: &str) -> Result<Option<String>, ObjectError> {
        let Ok(ImageRef::Stored { name, tag }) = role.spec.image_ref() else {
            return Ok(None);
        };
        let Some(node) = self.objects.get::<Node>(node).await? else {
            return Ok(None);
        };
        let catalog = crate::scheduling::catalog(&self.objects).await?;
        Ok(catalog
            .get(&format!("{name}:{tag}"))
            .and_then(|variants| variants.get(&node.spec.arch))
            .cloned())
    }

    /// Marks nodes whose heartbeats stopped for the grace period NotReady; runs until `stop`.
    pub async fn monitor(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        // Nodes get one grace period after a controller (re)start before they are judged.
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.check(started).await {
                tracing::warn!(error = %e, "node readiness check failed; retrying");
            }
        }
    }

    async fn check(&self, started: Instant) -> Result<(), ObjectError> {
        let (nodes, _) = self.objects.list::<Node>().await?;
        let now = self.epoch.elapsed().as_secs_f64();
        let since = started.duration_since(self.epoch).as_secs_f64();
        // Judge every Ready node under the lock, without copying the detectors' histories.
        let dead: Vec<(Node, f64, f64)> = {
            let detectors = self.detectors.lock().await;
            let unheard = Detector::new(self.grace);
            nodes
                .into_iter()
                .filter(|n| n.status.as_ref().map(|s| s.phase) == Some(NodePhase::Ready))
                .filter_map(|n| {
                    let d = detectors.get(&n.metadata.name).unwrap_or(&unheard);
                    d.is_dead(now, since)
                        .then(|| (d.silence(now, since), d.deadline()))
                        .map(|(silence, deadline)| (n, silence, deadline))
                })
                .collect()
        };
        // Every verdict of this check in one store batch (one commit): a site's power cut
        // marks its boards NotReady together.
        let mut verdicts = Vec::with_capacity(dead.len());
        let mut messages = Vec::with_capacity(dead.len());
        for (mut node, silence, deadline) in dead {
            tracing::warn!(node = %node.metadata.name, "no heartbeat for {silence:.1}s: NotReady");
            let message = format!(
                "no heartbeat for {silence:.1}s (this link's usual rhythm allows {deadline:.1}s)"
            );
            if let Some(s) = node.status.as_mut() {
                s.phase = NodePhase::NotReady;
                s.message = Some(message.clone());
                s.since = Some(clock::now_rfc3339());
            }
            verdicts.push(node);
            messages.push(message);
        }
        if verdicts.is_empty() {
            return Ok(());
        }
        let answers = self.leader_objects.replace_all(&verdicts).await?;
        for ((node, message), answer) in verdicts.iter().zip(messages).zip(answers) {
            if answer.is_ok() {
                let name = &node.metadata.name;
                self.objects.events().record(
                    texu_api::EventKind::NodeNotReady,
                    format!("node/{name}"),
                    Some(name),
                    message,
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
