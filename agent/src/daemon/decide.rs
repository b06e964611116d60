//! The reconciler's decision, with no I/O: what one container needs next, from what should run
//! (the controller's container), what the runtime has, the container's [`SlotState`] on this
//! board, the board's contact with the controller, and the time. The reconciler carries the
//! [`Action`] out through the runtime and asks again, so every rule here is tested with plain
//! values on a paused clock.

use std::time::Duration;

use texu_api::{Container, ContainerPhase, DesiredState, ExitReason, Reason};
use tokio::time::Instant;

use super::pre_stop::HookStage;
use super::probes::Verdict;
use super::slot::SlotState;
use crate::probe::RestartBackoff;

/// How long a container that was serving keeps running after it is moved or scaled away, so
/// that clients and proxies that still hold its address finish their requests (the new copy is
/// already Ready when a drain or rebalance moves it).
pub const LEAVE_DELAY: Duration = Duration::from_secs(2);
/// How long a failed create waits before it is tried again.
pub const CREATE_RETRY: Duration = Duration::from_secs(5);

/// What the runtime has of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Nothing by that name.
    Missing,
    /// Its process runs.
    Alive,
    /// It exists and its process ended.
    Ended {
        /// Its memory cgroup recorded an OOM kill.
        oom_killed: bool,
    },
}

/// The board's contact with the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Contact {
    /// How long heartbeats have not got through, while cut off.
    pub cut_off_for: Option<Duration>,
    /// The desired state is a list read after the latest reconnect, while heartbeats get
    /// through: only then may containers be removed or a cut-off stop be undone.
    pub fresh: bool,
}

/// What the decision reads of a container's slot.
#[derive(Debug, Clone, Copy)]
pub struct SlotView<'a> {
    /// Where it is in its life here.
    pub state: SlotState,
    /// The generation of the copy held here.
    pub generation: i64,
    /// Its restart backoff.
    pub backoff: &'a RestartBackoff,
    /// Its probes' verdict, while they run.
    pub verdict: Option<&'a Verdict>,
    /// Where its `preStop` hook is.
    pub hook: HookStage,
}

/// What one container needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing this pass.
    Wait,
    /// The copy here is of another generation: stop and destroy it before anything starts,
    /// so an old copy never runs next to a new one (fencing).
    Fence {
        /// The generation held here.
        held: i64,
    },
    /// Create and start it.
    Create,
    /// The board has been cut off longer than `stopOnNodeAfter`: stop it, keep it.
    StopCutOff {
        /// How long the board has been cut off.
        away: Duration,
    },
    /// Contact is back and a fresh list still assigns it here: start it again.
    Resume,
    /// It runs without probes (adopted, or probes stopped): start them.
    WatchProbes,
    /// It runs: report this phase.
    Report {
        /// Ready or Running.
        phase: ContainerPhase,
        /// Why, when in a crash loop.
        reason: Option<Reason>,
    },
    /// Its liveness probe failed: stop it; that counts as an exit.
    KillForLiveness,
    /// Its process ended: count the exit and wait out the backoff.
    CountExit(ExitReason),
    /// The backoff after an exit is over: start it again.
    Restart,
    /// The controller asks it to stop (scale-down, role deleted) and its role has a `preStop`
    /// hook: run the hook, in the background.
    RunPreStop,
    /// The controller asks it to stop and its hook, if any, is done: stop it and report
    /// what the hook did.
    StopOnRequest,
    /// The controller asks it to stop and it does not run (never made, or ended): report it
    /// stopped, and never start it.
    MarkStopped,
    /// A hook ended after the controller took its stop back: drop the result, keep running.
    ForgetPreStop,
}

/// The `disconnect.stopOnNodeAfter` of `c`'s role, if set and valid.
pub fn stop_on_node_after(c: &Container) -> Option<Duration> {
    c.spec
        .template
        .as_ref()?
        .disconnect
        .stop_on_node_after
        .as_ref()?
        .as_std()
        .ok()
}

/// What container `want` needs next.
pub fn decide(
    want: &Container,
    seen: Observed,
    slot: SlotView<'_>,
    contact: Contact,
    now: Instant,
) -> Action {
    if seen != Observed::Missing && slot.generation != want.spec.generation {
        return Action::Fence {
            held: slot.generation,
        };
    }
    if let Some(away) = contact.cut_off_for {
        if stop_on_node_after(want).is_some_and(|limit| away >= limit) {
            let never_made = slot.state.is_new() && seen == Observed::Missing;
            return if slot.state.is_cut_off() || never_made {
                Action::Wait
            } else {
                Action::StopCutOff { away }
            };
        }
    }
    if want.spec.desired == DesiredState::Stopped {
        return stop_on_request(want, seen, slot);
    }
    if slot.hook == HookStage::Finished {
        return Action::ForgetPreStop;
    }
    if slot.state.is_stopped_on_request() {
        // The controller wants it again (a scale-up while it stopped): start what is kept.
        return match seen {
            Observed::Ended { .. } => Action::Resume,
            _ => Action::Create,
        };
    }
    if slot.state.is_cut_off() {
        // Start again only once a list after the reconnect says it is still ours.
        return if contact.fresh {
            Action::Resume
        } else {
            Action::Wait
        };
    }
    match seen {
        Observed::Missing if slot.state.can_create(now) => Action::Create,
        Observed::Missing => Action::Wait,
        Observed::Alive => match slot.verdict {
            None => Action::WatchProbes,
            Some(v) if v.liveness_failed => Action::KillForLiveness,
            Some(v) => Action::Report {
                phase: if v.ready {
                    ContainerPhase::Ready
                } else {
                    ContainerPhase::Running
                },
                reason: slot
                    .backoff
                    .in_crash_loop(now)
                    .then_some(Reason::CrashLoopBackOff),
            },
        },
        Observed::Ended { oom_killed } => {
            if slot.backoff.restart_at().is_none() {
                Action::CountExit(if oom_killed {
                    ExitReason::OomKilled
                } else {
                    ExitReason::Exited
                })
            } else if slot.backoff.restart_due(now) {
                Action::Restart
            } else {
                Action::Wait
            }
        }
    }
}

/// What a container the controller asks to stop (`desired: Stopped`) needs next: its
/// `preStop` hook first, then the stop; it is never started again while so asked.
fn stop_on_request(want: &Container, seen: Observed, slot: SlotView<'_>) -> Action {
    let has_hook = want
        .spec
        .template
        .as_ref()
        .is_some_and(|t| t.pre_stop.is_some());
    match (slot.hook, seen) {
        (HookStage::Running, _) => Action::Wait,
        (HookStage::Finished, _) => Action::StopOnRequest,
        (HookStage::Idle, Observed::Alive) if has_hook && !slot.state.is_stopped_on_request() => {
            Action::RunPreStop
        }
        (HookStage::Idle, Observed::Alive) => Action::StopOnRequest,
        (HookStage::Idle, _) if slot.state.is_stopped_on_request() => Action::Wait,
        (HookStage::Idle, _) => Action::MarkStopped,
    }
}

/// The state of a slot whose container the controller no longer assigns here: one that
/// serves keeps running for [`LEAVE_DELAY`].
pub fn unassigned(state: SlotState, serving: bool, now: Instant) -> SlotState {
    if serving {
        SlotState::Leaving {
            until: now + LEAVE_DELAY,
        }
    } else {
        state
    }
}

/// Whether a container the runtime has may be removed at `now`: not assigned here, the list
/// that says so is fresh, and any leave delay is over.
pub fn removable(assigned: bool, state: Option<SlotState>, contact: Contact, now: Instant) -> bool {
    contact.fresh && !assigned && state.is_none_or(|s| s.can_remove(now))
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
