//! One container the reconciler looks after: what it remembers ([`Record`]), its restart
//! backoff, the status it reports, its probes, and where it is in its life on this board as
//! one [`SlotState`] with guard methods, instead of loose flags.

use std::net::Ipv4Addr;

use texu_api::{ContainerPhase, ContainerStatus, Reason};
use tokio::time::Instant;

use super::live_files::LiveFiles;
use super::pre_stop::{HookRun, HookStage};
use super::probes::Probes;
use super::record::Record;
use crate::probe::{BackoffPolicy, RestartBackoff};

/// Where a container is in its life on this board, as far as the agent decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Not made by this agent yet: the next step creates it, or adopts the copy it finds.
    New,
    /// Its last create failed; the next one waits until `retry_at`.
    CreateFailed {
        /// When to try again.
        retry_at: Instant,
    },
    /// Created or adopted by this agent: it runs, or waits for a restart (see the backoff).
    Live,
    /// Stopped by its agent because the board was cut off (`stopOnNodeAfter`); kept, to start
    /// again if a list read after the reconnect still assigns it here.
    CutOff,
    /// Moved or scaled away while serving: it keeps running until `until`, so clients and
    /// proxies that still hold its address finish their requests.
    Leaving {
        /// When it may be removed.
        until: Instant,
    },
    /// Stopped because the controller asked (`desired: Stopped`, a scale-down or its role's
    /// deletion), after its `preStop` hook; kept until the controller removes it.
    Stopped,
}

impl SlotState {
    /// Whether a create may be tried at `now`.
    pub fn can_create(self, now: Instant) -> bool {
        match self {
            SlotState::CreateFailed { retry_at } => now >= retry_at,
            _ => true,
        }
    }

    /// Whether its agent stopped it for a cut-off.
    pub fn is_cut_off(self) -> bool {
        self == SlotState::CutOff
    }

    /// Whether its agent stopped it because the controller asked.
    pub fn is_stopped_on_request(self) -> bool {
        self == SlotState::Stopped
    }

    /// Whether it was found running by an agent that did not start it.
    pub fn is_new(self) -> bool {
        self == SlotState::New
    }

    /// Whether a container no longer assigned here may be removed at `now`.
    pub fn can_remove(self, now: Instant) -> bool {
        match self {
            SlotState::Leaving { until } => now >= until,
            _ => true,
        }
    }
}

/// One container the reconciler looks after.
pub struct Slot {
    /// Where it is in its life here.
    pub state: SlotState,
    /// What survives agent restarts.
    pub record: Record,
    /// Restart delays and the crash-loop rule.
    pub backoff: RestartBackoff,
    /// What the agent reports.
    pub status: ContainerStatus,
    /// Its probes, while they run.
    pub probes: Option<Probes>,
    /// Its address on the board's bridge.
    pub address: Option<Ipv4Addr>,
    /// Its live templates.
    pub live: LiveFiles,
    /// Its `preStop` hook, while it runs or until its result is taken.
    pub pre_stop: Option<HookRun>,
}

impl Slot {
    /// A slot for a container first seen at `now`, with its saved record and address.
    pub fn new(record: Record, address: Option<Ipv4Addr>, now: Instant) -> Slot {
        let status = ContainerStatus {
            address: address.map(|a| a.to_string()),
            restarts: i64::from(record.restarts),
            last_exit: record.last_exit.clone(),
            ..ContainerStatus::default()
        };
        Slot {
            state: SlotState::New,
            record,
            backoff: RestartBackoff::new(BackoffPolicy::default(), now),
            status,
            probes: None,
            address,
            live: LiveFiles::default(),
            pre_stop: None,
        }
    }

    /// Where its `preStop` hook is.
    pub fn hook_stage(&self) -> HookStage {
        self.pre_stop
            .as_ref()
            .map_or(HookStage::Idle, HookRun::stage)
    }

    /// Whether it serves traffic now (a move or scale-down lets it finish).
    pub fn serving(&self) -> bool {
        matches!(
            self.status.phase,
            ContainerPhase::Ready | ContainerPhase::Running
        )
    }

    /// Stops its probes, if they run.
    pub fn stop_probes(&mut self) {
        if let Some(probes) = self.probes.take() {
            probes.stop();
        }
    }

    /// Sets the phase it reports, with a reason and a message.
    pub fn set_phase(
        &mut self,
        phase: ContainerPhase,
        reason: Option<Reason>,
        message: Option<String>,
    ) {
        self.status.phase = phase;
        self.status.reason = reason.map(|r| r.as_str().to_owned());
        self.status.message = message;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn guards_follow_the_state() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        assert!(SlotState::New.can_create(now));
        assert!(!SlotState::CreateFailed { retry_at: later }.can_create(now));
        assert!(SlotState::CreateFailed { retry_at: later }.can_create(later));
        assert!(!SlotState::Leaving { until: later }.can_remove(now));
        assert!(SlotState::Leaving { until: later }.can_remove(later));
        assert!(SlotState::Live.can_remove(now));
        assert!(SlotState::CutOff.is_cut_off() && !SlotState::Live.is_cut_off());
        assert!(SlotState::Stopped.is_stopped_on_request() && SlotState::Stopped.can_remove(now));
    }
}
