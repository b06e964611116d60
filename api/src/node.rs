//! Nodes: the boards of a cluster, created by their agents when they join.

use crate::arch::Arch;
use crate::meta::{is_false, is_zero, ObjectMeta};
use crate::{Kind, API_VERSION};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One board.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Node {
    /// Always `texu.io/v1`.
    pub api_version: String,
    /// Always `Node`.
    pub kind: String,
    /// The board's name and labels.
    pub metadata: ObjectMeta,
    /// What the board offers.
    pub spec: NodeSpec,
    /// What the controller last heard from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NodeStatus>,
}

impl Node {
    /// A node with the given name and spec, no labels and no status.
    pub fn new(name: impl Into<String>, spec: NodeSpec) -> Node {
        Node {
            api_version: API_VERSION.to_string(),
            kind: Kind::Node.as_str().to_string(),
            metadata: ObjectMeta::named(name),
            spec,
            status: None,
        }
    }
}

/// A board's address and capacity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    /// The board's overlay (VPN) address.
    pub address: String,
    /// Its CPU architecture.
    pub arch: Arch,
    /// CPUs it offers to containers.
    pub cpus: u32,
    /// Memory it offers to containers, in bytes.
    pub memory_bytes: u64,
    /// The container subnet the controller gave it (CIDR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Cordoned: no new containers are placed on it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unschedulable: bool,
    /// Being drained (`texu drain`): its containers move to other boards, make-before-break.
    #[serde(default, skip_serializing_if = "is_false")]
    pub draining: bool,
}

/// What the controller last heard from a board.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeStatus {
    /// Whether its heartbeats arrive.
    #[serde(default)]
    pub phase: NodePhase,
    /// The time of its last heartbeat (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
    /// How many containers it runs.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub containers: i64,
    /// Why it is in this phase, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When `phase` last changed (RFC 3339): how long a board has been away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// Whether a board's heartbeats arrive.
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
pub enum NodePhase {
    /// Heartbeats arrive.
    Ready,
    /// Heartbeats stopped for longer than the grace period, or never came.
    #[default]
    NotReady,
}

str_enum!(NodePhase { Ready => "Ready", NotReady => "NotReady" });
