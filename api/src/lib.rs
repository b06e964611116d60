//! Texu's object model: manifests, names, quantities and validation. No I/O.
//!
//! Operators write [`Role`]s in YAML; agents create [`Node`]s; the scheduler creates
//! [`Container`]s. [`parse_manifests`] turns YAML text into checked [`Manifest`]s and reports
//! every problem as a [`Diagnostic`] that points at a line and column.
//!
//! Reading is bounded for hostile input: at most [`MAX_MANIFEST_BYTES`] of text, [`MAX_DEPTH`]
//! levels of nesting, and [`MAX_NODES`] nodes per document once YAML aliases are expanded.

/// Gives a unit-only enum `as_str` and `Display` with the names serde uses.
macro_rules! str_enum {
    ($t:ty { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $t {
            /// The name as written in manifests and shown by the CLI.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name),*
                }
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

mod arch;
mod cidr;
mod container;
mod duration;
mod endpoint;
mod event;
mod image;
mod join_token;
mod live_file;
mod manifest;
mod meta;
mod names;
mod node;
mod quantity;
mod reason;
mod role;
mod schema;
mod validate;
mod yaml;

pub use arch::Arch;
pub use cidr::{Cidr, CidrError};
pub use container::{
    Container, ContainerPhase, ContainerSpec, ContainerStatus, DesiredState, Handoff,
};
pub use duration::{Duration, DurationError};
pub use endpoint::{endpoints_of, Endpoint, RoleEndpoints};
pub use event::{Event, EventKind};
pub use image::{ImageRef, ImageRefError};
pub use join_token::{
    format_join_token, parse_join_token, JoinTokenError, JoinTokenParts, JOIN_TOKEN_PREFIX,
};
pub use live_file::{format_rfc3339, system_time_rfc3339, FileStatus};
pub use manifest::{
    parse_json_role, parse_manifests, parse_manifests_located, Diagnostic, LocatedManifest,
    Manifest, RoleBodyError, MAX_MANIFEST_BYTES,
};
pub use meta::ObjectMeta;
pub use names::{
    validate_container_names, validate_env_key, validate_label_key, validate_label_value,
    validate_name,
};
pub use node::{
    validate_node_facts, validate_node_labels, Node, NodePhase, NodeSpec, NodeStatus,
    MAX_NODE_LABELS,
};
pub use quantity::{Quantity, QuantityError};
pub use reason::{ExitReason, Reason};
pub use role::{
    Disconnect, ExecProbe, FileTemplate, Health, HttpProbe, Keep, Placement, Port, PortRef,
    PreStop, Probe, Protocol, Resources, Role, RoleSpec, RoleStatus, Strategy, TcpProbe, Volume,
    PRE_STOP_TIMEOUT,
};
pub use schema::{manifest_json_schema, role_schema};
pub use validate::{FieldError, MAX_REPLICAS, MAX_ROLE_NAME};
pub use yaml::{MAX_DEPTH, MAX_NODES};

use std::fmt;

/// The `apiVersion` of every Texu object.
pub const API_VERSION: &str = "texu.io/v1";

/// The kinds of object Texu stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A set of identical containers, written by operators.
    Role,
    /// One board, created by its agent.
    Node,
    /// One placed instance of a role, created by the scheduler.
    Container,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 3] = [Kind::Role, Kind::Node, Kind::Container];

    /// The `kind` field's value: `Role`, `Node`, `Container`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Role => "Role",
            Kind::Node => "Node",
            Kind::Container => "Container",
        }
    }

    /// The plural used in URLs and store keys: `roles`, `nodes`, `containers`.
    pub const fn plural(self) -> &'static str {
        match self {
            Kind::Role => "roles",
            Kind::Node => "nodes",
            Kind::Container => "containers",
        }
    }

    /// The kind named by a `kind` field (`Role`) or a plural (`roles`), if any.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s || k.plural() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names() {
        assert_eq!(Kind::Role.as_str(), "Role");
        assert_eq!(Kind::Container.plural(), "containers");
        assert_eq!(Kind::parse("nodes"), Some(Kind::Node));
        assert_eq!(Kind::parse("Node"), Some(Kind::Node));
        assert_eq!(Kind::parse("pods"), None);
        assert_eq!(Kind::Node.to_string(), "Node");
    }
}
