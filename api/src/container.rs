//! Containers: placed instances of a role, written by the scheduler and reported by agents.

use crate::meta::{is_default, is_zero, ObjectMeta};
use crate::{Kind, API_VERSION};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One placed instance of a role (like a Kubernetes pod or a Nomad allocation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Container {
    /// Always `texu.io/v1`.
    pub api_version: String,
    /// Always `Container`.
    pub kind: String,
    /// The container's name (`app-0`) and labels.
    pub metadata: ObjectMeta,
    /// Where it runs and whether it should.
    pub spec: ContainerSpec,
    /// What its agent reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ContainerStatus>,
}

impl Container {
    /// A container with the given name and spec, no labels and no status.
    pub fn new(name: impl Into<String>, spec: ContainerSpec) -> Container {
        Container {
            api_version: API_VERSION.to_string(),
            kind: Kind::Container.as_str().to_string(),
            metadata: ObjectMeta::named(name),
            spec,
            status: None,
        }
    }
}

/// Which role a container belongs to, where it runs and whether it should run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerSpec {
    /// The role's name.
    pub role: String,
    /// Its ordinal in the role (`cassandra-1` has ordinal 1).
    pub ordinal: i64,
    /// The node it is bound to; none while it waits for a place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// A fencing token: an agent holding an older generation stops the container first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: i64,
    /// Whether it should run.
    #[serde(default, skip_serializing_if = "is_default")]
    pub desired: DesiredState,
    /// The role's spec at `generation`: what the agent builds. Agents read only their own
    /// containers, so each carries the template it was made from (like a pod's spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<crate::RoleSpec>,
    /// For an image from the image store: the `sha256:` digest of the variant for the node's
    /// architecture, chosen when the container was bound to the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// Set by `texu replace`: the address of the member this one replaces. Its templates see it
    /// as `replaces` on its first boot on the new board only (Cassandra's
    /// `replace_address_first_boot`); the controller clears it once the member is Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<std::net::Ipv4Addr>,
    /// The board a failover moved it from, while that board is away: with `keep: original`
    /// the copy still running there wins when it comes back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_from: Option<String>,
    /// A make-before-break move in progress (drain or rebalance): the copy on `handoff.node`
    /// starts while this one runs, and takes over once it is Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<Handoff>,
}

/// A make-before-break move: where the new copy runs and what its board reports about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Handoff {
    /// The board the new copy runs on.
    pub node: String,
    /// Why it moves: `Drain` or `Rebalance`.
    pub reason: String,
    /// The image digest for that board's architecture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// What that board reports about the new copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ContainerStatus>,
}

impl ContainerSpec {
    /// True when `node` should run this container: it is bound there, or a handoff to it is
    /// in progress.
    pub fn runs_on(&self, node: &str) -> bool {
        self.node.as_deref() == Some(node) || self.handoff.as_ref().is_some_and(|h| h.node == node)
    }
}

/// Whether a container should run.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum DesiredState {
    /// It should run.
    #[default]
    Running,
    /// It should be stopped.
    Stopped,
}

str_enum!(DesiredState { Running => "Running", Stopped => "Stopped" });

/// What an agent reports about a container.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerStatus {
    /// Where it is in its life.
    #[serde(default)]
    pub phase: ContainerPhase,
    /// Its address on its node's container subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// How many times its agent restarted it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: i64,
    /// The last probe result, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe: Option<String>,
    /// A one-word reason for the phase (`ImagePullFailed`, `NodeLost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Details for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How its process last ended (`exit 1`, `signal 9`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// Its live files (a role's `files`) while it runs: text in use, times, last error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<crate::FileStatus>,
}

/// Where a container is in its life.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum ContainerPhase {
    /// Waiting for a node or for its agent.
    #[default]
    Pending,
    /// Its agent is creating it.
    Creating,
    /// Its process runs; not (yet) ready.
    Running,
    /// Its readiness probe passes: it receives traffic.
    Ready,
    /// It failed and is not being restarted right now.
    Failed,
    /// Its agent is stopping it.
    Stopping,
    /// It is stopped.
    Stopped,
    /// Its node stopped answering.
    Lost,
}

str_enum!(ContainerPhase {
    Pending => "Pending",
    Creating => "Creating",
    Running => "Running",
    Ready => "Ready",
    Failed => "Failed",
    Stopping => "Stopping",
    Stopped => "Stopped",
    Lost => "Lost",
});
