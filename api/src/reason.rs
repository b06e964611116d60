//! Reasons that code compares: why a container is in its phase, and how its process last
//! ended. Each serializes to the one word that `status.reason` and `status.lastExit` have
//! always carried, so clients that read the strings see no change.

use serde::{Deserialize, Serialize};

/// Why a container is in its phase, as its agent reports it (`status.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// Stopped by its agent because the board was cut off (`stopOnNodeAfter`).
    CutOff,
    /// Ended; waiting before the next start.
    BackOff,
    /// Ends soon after each start.
    CrashLoopBackOff,
    /// The runtime could not create or start it.
    CreateFailed,
    /// Its command is not in its root filesystem.
    CommandNotFound,
    /// The runtime refused its spec (a file target, a bad setting).
    InvalidSpec,
    /// Its image could not be cached or unpacked.
    ImageFailed,
    /// Its image could not be downloaded from the controller.
    ImagePullFailed,
    /// The downloaded image is not the one its digest names.
    ImageDigestMismatch,
    /// The image unpacks to more bytes or files than the board allows.
    ImageTooLarge,
    /// It asks for a hostPort the board reserves.
    ReservedHostPort,
    /// No variant of its image fits this board.
    ImageUnavailable,
    /// Its image reference does not parse.
    InvalidImage,
    /// It came without its role's template.
    NoTemplate,
    /// A volume directory could not be made.
    VolumeFailed,
    /// No address could be given to it.
    NetworkFailed,
    /// A file template does not render.
    TemplateFailed,
    /// A rendered file could not be written on the board.
    FilesFailed,
    /// Stopped for a scale-down or its role's deletion (after its `preStop` hook, if any).
    StoppedOnRequest,
    /// Its `preStop` hook runs.
    PreStopRunning,
    /// Its `preStop` hook failed or timed out; it was stopped anyway.
    PreStopFailed,
}

str_enum!(Reason {
    CutOff => "CutOff",
    BackOff => "BackOff",
    CrashLoopBackOff => "CrashLoopBackOff",
    CreateFailed => "CreateFailed",
    CommandNotFound => "CommandNotFound",
    InvalidSpec => "InvalidSpec",
    ImageFailed => "ImageFailed",
    ImagePullFailed => "ImagePullFailed",
    ImageDigestMismatch => "ImageDigestMismatch",
    ImageTooLarge => "ImageTooLarge",
    ReservedHostPort => "ReservedHostPort",
    ImageUnavailable => "ImageUnavailable",
    InvalidImage => "InvalidImage",
    NoTemplate => "NoTemplate",
    VolumeFailed => "VolumeFailed",
    NetworkFailed => "NetworkFailed",
    TemplateFailed => "TemplateFailed",
    FilesFailed => "FilesFailed",
    StoppedOnRequest => "StoppedOnRequest",
    PreStopRunning => "PreStopRunning",
    PreStopFailed => "PreStopFailed",
});

impl Reason {
    /// The reason named `word`, if it is one of these.
    pub fn parse(word: &str) -> Option<Reason> {
        serde_json::from_value(serde_json::Value::String(word.to_owned())).ok()
    }
}

/// How a container's process last ended (`status.lastExit`), as its agent counts restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExitReason {
    /// Its process ended by itself.
    Exited,
    /// The memory cgroup killed it.
    #[serde(rename = "OOMKilled")]
    OomKilled,
    /// Its agent stopped it because its liveness probe failed.
    LivenessFailed,
}

str_enum!(ExitReason {
    Exited => "Exited",
    OomKilled => "OOMKilled",
    LivenessFailed => "LivenessFailed",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_serialize_to_the_words_status_always_carried() {
        for (reason, word) in [
            (Reason::CutOff, "CutOff"),
            (Reason::CrashLoopBackOff, "CrashLoopBackOff"),
            (Reason::TemplateFailed, "TemplateFailed"),
        ] {
            assert_eq!(serde_json::to_value(reason).unwrap(), word);
            assert_eq!(reason.as_str(), word);
            assert_eq!(Reason::parse(word), Some(reason));
        }
        assert_eq!(
            serde_json::to_value(ExitReason::OomKilled).unwrap(),
            "OOMKilled"
        );
        assert_eq!(ExitReason::LivenessFailed.as_str(), "LivenessFailed");
        assert_eq!(Reason::parse("Replaced"), None);
    }
}
