//! Nodes: the boards of a cluster, created by their agents when they join.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::arch::Arch;
use crate::meta::{is_false, is_zero, ObjectMeta};
use crate::names::{validate_label_key, validate_label_value};
use crate::{Cidr, Kind, API_VERSION};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The most labels a board may ask for, or an admin may set, on one node.
pub const MAX_NODE_LABELS: usize = 32;
/// The most CPUs a board may claim.
pub const MAX_NODE_CPUS: u32 = 4096;
/// The most memory a board may claim: 16 TiB.
pub const MAX_NODE_MEMORY_BYTES: u64 = 1 << 44;

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
    /// The labels the board asks for (`texu agent --label`). Placement uses only
    /// `metadata.labels`, which admins set (`texu label node`); these are shown so an admin
    /// can accept them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requested_labels: BTreeMap<String, String>,
}

/// Checks what a board says about itself (on join and in heartbeats): an IPv4 address, sane
/// capacity, a subnet in CIDR form and well-formed labels. Returns every problem, in words.
pub fn validate_node_facts(spec: &NodeSpec, labels: &BTreeMap<String, String>) -> Vec<String> {
    let mut errors = Vec::new();
    if spec.address.parse::<Ipv4Addr>().is_err() {
        errors.push(format!(
            "spec.address: must be an IPv4 address such as 198.18.0.2, got {:?}",
            shorten(&spec.address)
        ));
    }
    if spec.cpus == 0 || spec.cpus > MAX_NODE_CPUS {
        errors.push(format!(
            "spec.cpus: must be 1 to {MAX_NODE_CPUS}, got {}",
            spec.cpus
        ));
    }
    if spec.memory_bytes == 0 || spec.memory_bytes > MAX_NODE_MEMORY_BYTES {
        errors.push(format!(
            "spec.memoryBytes: must be 1 to {MAX_NODE_MEMORY_BYTES}, got {}",
            spec.memory_bytes
        ));
    }
    if let Some(subnet) = &spec.subnet {
        if let Err(e) = Cidr::parse(subnet) {
            errors.push(format!("spec.subnet: {e}"));
        }
    }
    errors.extend(validate_node_labels(labels));
    errors
}

/// Checks a node's labels: at most [`MAX_NODE_LABELS`], each key and value well-formed.
pub fn validate_node_labels(labels: &BTreeMap<String, String>) -> Vec<String> {
    let mut errors = Vec::new();
    if labels.len() > MAX_NODE_LABELS {
        errors.push(format!(
            "labels: at most {MAX_NODE_LABELS} labels, got {}",
            labels.len()
        ));
        return errors;
    }
    for (key, value) in labels {
        if let Err(why) = validate_label_key(key) {
            errors.push(format!("labels: key {:?} {why}", shorten(key)));
        }
        if let Err(why) = validate_label_value(value) {
            errors.push(format!("labels[{}]: value {why}", shorten(key)));
        }
    }
    errors
}

/// At most 64 characters of a refused string, so an error message stays readable.
fn shorten(s: &str) -> String {
    s.chars().take(64).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NodeSpec {
        NodeSpec {
            address: "198.18.0.2".into(),
            arch: Arch::Amd64,
            cpus: 2,
            memory_bytes: 1 << 30,
            subnet: None,
            unschedulable: false,
            draining: false,
        }
    }

    #[test]
    fn sane_facts_pass() {
        let labels = BTreeMap::from([("site".to_string(), "home".to_string())]);
        assert!(validate_node_facts(&spec(), &labels).is_empty());
    }

    #[test]
    fn bad_facts_are_refused_with_reasons() {
        let mut s = spec();
        s.address = "1.2.3.4\"; touch /tmp/X; echo \"".into();
        s.cpus = 0;
        s.memory_bytes = u64::MAX;
        s.subnet = Some("nope".into());
        let labels = BTreeMap::from([
            ("site".to_string(), "\u{1b}]0;owned\u{7}".to_string()),
            ("a b".to_string(), "x".to_string()),
        ]);
        let errors = validate_node_facts(&s, &labels);
        for want in [
            "spec.address",
            "spec.cpus",
            "spec.memoryBytes",
            "spec.subnet",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(want)),
                "{want}: {errors:?}"
            );
        }
        assert!(
            errors.iter().any(|e| e.contains("control character")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.contains("key \"a b\"")),
            "{errors:?}"
        );
    }

    #[test]
    fn too_many_labels_are_refused() {
        let labels: BTreeMap<String, String> = (0..=MAX_NODE_LABELS)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        assert_eq!(validate_node_labels(&labels).len(), 1);
    }
}
