//! Roles: sets of identical containers, the one kind of object operators write.

use crate::arch::Arch;
use crate::duration::Duration;
use crate::image::{ImageRef, ImageRefError};
use crate::meta::{is_default, is_false, ObjectMeta};
use crate::quantity::Quantity;
use crate::{Kind, API_VERSION};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A set of identical containers, written by an operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Role {
    /// Always `texu.io/v1`.
    pub api_version: String,
    /// Always `Role`.
    pub kind: String,
    /// The role's name and labels.
    pub metadata: ObjectMeta,
    /// What the operator wants.
    pub spec: RoleSpec,
    /// What the controller observed; ignored on apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RoleStatus>,
}

impl Role {
    /// A role with the given name and spec, no labels and no status.
    pub fn new(name: impl Into<String>, spec: RoleSpec) -> Role {
        Role {
            api_version: API_VERSION.to_string(),
            kind: Kind::Role.as_str().to_string(),
            metadata: ObjectMeta::named(name),
            spec,
            status: None,
        }
    }
}

/// Observed container counts of a role.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleStatus {
    /// Containers that exist for the role.
    #[serde(default)]
    pub replicas: i64,
    /// Containers whose readiness probe passes.
    #[serde(default)]
    pub ready: i64,
}

/// What an operator wants of a role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleSpec {
    /// How many containers (default 1).
    #[serde(default = "one")]
    pub replicas: i64,
    /// The root filesystem: `host`, `template:NAME` or `NAME:TAG`.
    pub image: String,
    /// The command to run, as an argument vector (no shell).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// CPU and memory limits.
    #[serde(default, skip_serializing_if = "is_default")]
    pub resources: Resources,
    /// Ports the containers listen on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// Directories kept across restarts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Readiness and liveness probes.
    #[serde(default, skip_serializing_if = "is_default")]
    pub health: Health,
    /// Where containers may run.
    #[serde(default, skip_serializing_if = "is_default")]
    pub placement: Placement,
    /// Stable identities and volumes kept on their board; never moved automatically.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stateful: bool,
    /// Dangerous: run with the board's own ids and capabilities, so root in the container is
    /// root on the board. Off by default: containers are unprivileged (their root is an
    /// ordinary uid on the board).
    #[serde(default, skip_serializing_if = "is_false")]
    pub privileged: bool,
    /// Files rendered into the containers from live cluster state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileTemplate>,
    /// What to do when a container's board stops answering.
    #[serde(default, skip_serializing_if = "is_default")]
    pub disconnect: Disconnect,
    /// How many containers may be down at once during a drain or an update (default 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub max_unavailable: i64,
    /// A command run inside a container before it is stopped for a scale-down or the role's
    /// deletion (`nodetool decommission`); its output and result go to events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_stop: Option<PreStop>,
}

impl RoleSpec {
    /// Whether going from `self` to `next` needs new containers (a new generation): any change
    /// but the replica count and the live parts of existing files (template text, `check`,
    /// `reload`, `quietPeriod`, `maxWait`), which running containers take in place. Adding or
    /// removing a file path does need new containers (a new bind mount).
    pub fn needs_new_containers(&self, next: &RoleSpec) -> bool {
        fn fixed(spec: &RoleSpec) -> RoleSpec {
            let mut spec = spec.clone();
            spec.replicas = 0;
            for f in &mut spec.files {
                *f = FileTemplate {
                    path: std::mem::take(&mut f.path),
                    ..FileTemplate::default()
                };
            }
            spec
        }
        fixed(self) != fixed(next)
    }

    /// A spec with one replica of `image` and defaults everywhere else.
    pub fn with_image(image: impl Into<String>) -> RoleSpec {
        RoleSpec {
            image: image.into(),
            ..RoleSpec::default()
        }
    }

    /// Where the root filesystem comes from.
    pub fn image_ref(&self) -> Result<ImageRef, ImageRefError> {
        ImageRef::parse(&self.image)
    }

    /// The port named `name`, if any.
    pub fn port(&self, name: &str) -> Option<&Port> {
        self.ports.iter().find(|p| p.name == name)
    }
}

impl Default for RoleSpec {
    fn default() -> Self {
        RoleSpec {
            replicas: 1,
            image: String::new(),
            command: Vec::new(),
            env: BTreeMap::new(),
            resources: Resources::default(),
            ports: Vec::new(),
            volumes: Vec::new(),
            health: Health::default(),
            placement: Placement::default(),
            stateful: false,
            privileged: false,
            files: Vec::new(),
            disconnect: Disconnect::default(),
            max_unavailable: 1,
            pre_stop: None,
        }
    }
}

/// CPU and memory limits of each container.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// CPU: `500m`, `2`, `0.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory: `128Mi`, `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// A port the containers listen on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    /// Its name, for probes and endpoints.
    pub name: String,
    /// The port inside the container.
    pub port: i64,
    /// Also publish it on this port of the board's own addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<i64>,
    /// `tcp` (default) or `udp`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: Protocol,
}

/// A transport protocol.
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
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

str_enum!(Protocol { Tcp => "tcp", Udp => "udp" });

/// A directory kept across restarts, on the board that runs the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    /// Its name.
    pub name: String,
    /// Where it is mounted: an absolute path inside the container.
    pub path: String,
}

/// Readiness and liveness probes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Health {
    /// Passes when the container should receive traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Probe>,
    /// Fails when the container should be restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Probe>,
}

/// A health check: exactly one of `http`, `tcp` or `exec`, and its timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    /// An HTTP GET that must answer 2xx or 3xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    /// A TCP connection that must be accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpProbe>,
    /// A command run in the container that must exit 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProbe>,
    /// Seconds between probes (default 1).
    #[serde(default = "one_f64")]
    pub period_seconds: f64,
    /// Seconds before a probe counts as failed (default 1).
    #[serde(default = "one_f64")]
    pub timeout_seconds: f64,
    /// Failures in a row that flip the result to failed (default 3).
    #[serde(default = "three")]
    pub failure_threshold: i64,
    /// Successes in a row that flip the result to passed (default 1).
    #[serde(default = "one")]
    pub success_threshold: i64,
    /// Seconds to wait after the start before the first probe (default 0).
    #[serde(default)]
    pub initial_delay_seconds: f64,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            http: None,
            tcp: None,
            exec: None,
            period_seconds: 1.0,
            timeout_seconds: 1.0,
            failure_threshold: 3,
            success_threshold: 1,
            initial_delay_seconds: 0.0,
        }
    }
}

/// An HTTP GET probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpProbe {
    /// The path to request (default `/`).
    #[serde(default = "root_path")]
    pub path: String,
    /// The port: a number or the name of one of the role's ports.
    pub port: PortRef,
}

/// A TCP connect probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpProbe {
    /// The port: a number or the name of one of the role's ports.
    pub port: PortRef,
}

/// A command probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecProbe {
    /// The command, as an argument vector (no shell).
    pub command: Vec<String>,
}

/// A port given by number or by the name of one of the role's ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum PortRef {
    /// A port number.
    Number(i64),
    /// The name of a port in `spec.ports`.
    Name(String),
}

impl PortRef {
    /// The port number, looking names up in `ports`.
    pub fn resolve(&self, ports: &[Port]) -> Option<i64> {
        match self {
            PortRef::Number(n) => Some(*n),
            PortRef::Name(name) => ports.iter().find(|p| &p.name == name).map(|p| p.port),
        }
    }
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(name) => f.write_str(name),
        }
    }
}

impl<'de> Deserialize<'de> for PortRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortRefVisitor;

        impl serde::de::Visitor<'_> for PortRefVisitor {
            type Value = PortRef;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or the name of a port")
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortRef, E> {
                Ok(PortRef::Number(v))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortRef, E> {
                i64::try_from(v)
                    .map(PortRef::Number)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortRef, E> {
                Ok(PortRef::Name(v.to_string()))
            }
        }

        deserializer.deserialize_any(PortRefVisitor)
    }
}

/// Where a role's containers may run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Placement {
    /// Architectures the image exists for; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arch: Vec<Arch>,
    /// Labels a node must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Spread containers across nodes (`node`) or across values of a node label (`site`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<String>,
    /// At most this many of the role's containers on one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_node: Option<i64>,
    /// Spread over many boards (default) or pack onto few so idle boards can power down.
    #[serde(default, skip_serializing_if = "is_default")]
    pub strategy: Strategy,
}

/// How the scheduler ranks nodes.
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
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Prefer the emptiest nodes.
    #[default]
    Spread,
    /// Prefer the fullest nodes.
    Pack,
}

str_enum!(Strategy { Spread => "spread", Pack => "pack" });

/// A file rendered into the container from a template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileTemplate {
    /// Where to write it: an absolute path inside the container.
    pub path: String,
    /// The template (minijinja syntax).
    pub template: String,
    /// A command that checks the new file before it is used (`apachectl configtest`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub check: Vec<String>,
    /// A command that makes the program read the new file (`apachectl -k graceful`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reload: Vec<String>,
    /// After a change of its rendered text, how long no further change must come before it
    /// is installed (default 250ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_period: Option<Duration>,
    /// The longest a changed text waits for a quiet period (default 2s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait: Option<Duration>,
}

/// A hook run inside a container before it is stopped for a scale-down or the role's deletion
/// (not for restarts, moves or fencing). The container stops when the command ends, whatever
/// its exit, or when the timeout passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreStop {
    /// The command, as an argument vector (no shell).
    pub command: Vec<String>,
    /// How long it may run before it is given up on and the container stops (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// The default [`PreStop::timeout`].
pub const PRE_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl PreStop {
    /// How long the hook may run.
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
            .as_ref()
            .and_then(|d| d.as_std().ok())
            .unwrap_or(PRE_STOP_TIMEOUT)
    }
}

/// What to do when the board holding a container stops answering.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Disconnect {
    /// How long before the container is replaced elsewhere (default: at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_after: Option<Duration>,
    /// The agent stops the container itself when cut off this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_on_node_after: Option<Duration>,
    /// Which copy runs on when the board comes back.
    #[serde(default, skip_serializing_if = "is_default")]
    pub keep: Keep,
}

/// Which copy of a container wins when its lost board comes back.
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
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// The container on the returning board.
    Original,
    /// The replacement started elsewhere.
    #[default]
    Replacement,
}

str_enum!(Keep { Original => "original", Replacement => "replacement" });

fn one() -> i64 {
    1
}

fn is_one(n: &i64) -> bool {
    *n == 1
}

fn three() -> i64 {
    3
}

fn one_f64() -> f64 {
    1.0
}

fn root_path() -> String {
    "/".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_beyond_replicas_and_live_file_texts_need_new_containers() {
        let mut spec = RoleSpec::with_image("host");
        spec.files = vec![FileTemplate {
            path: "/run/a.conf".into(),
            template: "v1".into(),
            ..Default::default()
        }];
        let mut next = spec.clone();
        next.replicas = 5;
        next.files[0].template = "v2".into();
        next.files[0].reload = vec!["reload".into()];
        assert!(!spec.needs_new_containers(&next));
        next.files[0].path = "/run/b.conf".into();
        assert!(
            spec.needs_new_containers(&next),
            "a new path is a new mount"
        );
        let mut next = spec.clone();
        next.command = vec!["/bin/true".into()];
        assert!(spec.needs_new_containers(&next));
    }
}
