//! Events: one record per controller decision (placed, lost, node not ready...), for `texu events`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One decision the controller took, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Event {
    /// Its place in the controller's sequence: increasing, never reused.
    pub seq: u64,
    /// When it happened (RFC 3339).
    pub time: String,
    /// What kind of decision it was.
    pub kind: EventKind,
    /// The object it is about: `container/app-1`, `node/board2`.
    pub object: String,
    /// The board it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// What happened, for people.
    pub message: String,
}

/// What kind of decision an [`Event`] records.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum EventKind {
    /// A container was bound to a node.
    Placed,
    /// A container has no node that fits.
    Unschedulable,
    /// A node's heartbeats arrive again.
    NodeReady,
    /// A node's heartbeats stopped for the grace period.
    NodeNotReady,
    /// A container's node stopped answering.
    Lost,
    /// A lost container was placed on another node.
    Replaced,
    /// A container moved off a draining node.
    Drained,
    /// A container moved to even out the spread.
    Rebalanced,
    /// An old copy of a container was stopped by its generation (fencing token).
    Fenced,
    /// A returning node's copy won over the replacement (`keep: original`).
    KeptOriginal,
    /// A replacement is being started (make-before-break or `texu replace`).
    Replacing,
    /// A running container's live file failed to render, check or reload; the previous text
    /// stays in use.
    FileFailed,
    /// A container is asked to stop for a scale-down or its role's deletion (its `preStop`
    /// hook runs first).
    Stopping,
    /// A container stopped for a scale-down or its role's deletion is removed, with what its
    /// `preStop` hook printed and how it ended.
    Removed,
}

str_enum!(EventKind {
    Placed => "Placed",
    Unschedulable => "Unschedulable",
    NodeReady => "NodeReady",
    NodeNotReady => "NodeNotReady",
    Lost => "Lost",
    Replaced => "Replaced",
    Drained => "Drained",
    Rebalanced => "Rebalanced",
    Fenced => "Fenced",
    KeptOriginal => "KeptOriginal",
    Replacing => "Replacing",
    FileFailed => "FileFailed",
    Stopping => "Stopping",
    Removed => "Removed",
});

impl EventKind {
    /// Every kind, in a fixed order.
    pub const ALL: [EventKind; 14] = [
        EventKind::Placed,
        EventKind::Unschedulable,
        EventKind::NodeReady,
        EventKind::NodeNotReady,
        EventKind::Lost,
        EventKind::Replaced,
        EventKind::Drained,
        EventKind::Rebalanced,
        EventKind::Fenced,
        EventKind::KeptOriginal,
        EventKind::Replacing,
        EventKind::FileFailed,
        EventKind::Stopping,
        EventKind::Removed,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_serde_and_round_trip() {
        for kind in EventKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        let event = Event {
            seq: 7,
            time: "2026-01-02T03:04:05Z".into(),
            kind: EventKind::Placed,
            object: "container/app-1".into(),
            node: Some("board2".into()),
            message: "app-1 on board2".into(),
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], "Placed");
        assert_eq!(json["seq"], 7);
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), event);
        let unknown = r#"{"seq":1,"time":"t","kind":"Lost","object":"o","message":"m","x":1}"#;
        assert!(serde_json::from_str::<Event>(unknown).is_err());
    }
}
