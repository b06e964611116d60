//! The decision's rules, with plain values on a paused clock.

use super::*;
use crate::probe::BackoffPolicy;
use texu_api::RoleSpec;
use tokio::time::advance;

const S: Duration = Duration::from_secs(1);

fn container(generation: i64, stop_on_node_after: Option<&str>) -> Container {
    let mut role = RoleSpec::with_image("template:busybox");
    role.disconnect.stop_on_node_after = stop_on_node_after.map(Into::into);
    Container::new(
        "app-0",
        texu_api::ContainerSpec {
            role: "app".into(),
            node: Some("board1".into()),
            generation,
            template: Some(role),
            ..Default::default()
        },
    )
}

/// One container's slot as plain values.
struct Slot {
    state: SlotState,
    generation: i64,
    backoff: RestartBackoff,
    verdict: Option<Verdict>,
    hook: HookStage,
}

impl Slot {
    fn new(state: SlotState, generation: i64) -> Slot {
        Slot {
            state,
            generation,
            backoff: RestartBackoff::new(BackoffPolicy::default(), Instant::now()),
            verdict: None,
            hook: HookStage::Idle,
        }
    }

    fn decide(&self, want: &Container, seen: Observed, contact: Contact) -> Action {
        let view = SlotView {
            state: self.state,
            generation: self.generation,
            backoff: &self.backoff,
            verdict: self.verdict.as_ref(),
            hook: self.hook,
        };
        decide(want, seen, view, contact, Instant::now())
    }
}

fn connected() -> Contact {
    Contact {
        cut_off_for: None,
        fresh: true,
    }
}

fn verdict(ready: bool, liveness_failed: bool) -> Option<Verdict> {
    Some(Verdict {
        ready,
        liveness_failed,
        last_probe: String::new(),
    })
}

fn running(ready: bool) -> Action {
    Action::Report {
        phase: if ready {
            ContainerPhase::Ready
        } else {
            ContainerPhase::Running
        },
        reason: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_missing_container_is_created_and_a_failed_create_waits_its_retry() {
    let want = container(1, None);
    let slot = Slot::new(SlotState::New, 0);
    assert_eq!(
        slot.decide(&want, Observed::Missing, connected()),
        Action::Create
    );

    let failed = Slot::new(
        SlotState::CreateFailed {
            retry_at: Instant::now() + CREATE_RETRY,
        },
        0,
    );
    assert_eq!(
        failed.decide(&want, Observed::Missing, connected()),
        Action::Wait
    );
    advance(CREATE_RETRY - S).await;
    assert_eq!(
        failed.decide(&want, Observed::Missing, connected()),
        Action::Wait
    );
    advance(S).await;
    assert_eq!(
        failed.decide(&want, Observed::Missing, connected()),
        Action::Create
    );
}

#[tokio::test(start_paused = true)]
async fn a_running_copy_of_the_same_generation_is_adopted_not_restarted() {
    let want = container(1, None);
    // Found by an agent that just started: its record says generation 1.
    let mut slot = Slot::new(SlotState::New, 1);
    assert_eq!(
        slot.decide(&want, Observed::Alive, connected()),
        Action::WatchProbes
    );
    slot.state = SlotState::Live;
    slot.verdict = verdict(false, false);
    assert_eq!(
        slot.decide(&want, Observed::Alive, connected()),
        running(false)
    );
    slot.verdict = verdict(true, false);
    assert_eq!(
        slot.decide(&want, Observed::Alive, connected()),
        running(true)
    );
}

#[tokio::test(start_paused = true)]
async fn an_exit_waits_a_doubling_backoff_and_oom_and_liveness_are_told_apart() {
    let want = container(1, None);
    let mut slot = Slot::new(SlotState::Live, 1);
    let ended = Observed::Ended { oom_killed: false };
    assert_eq!(
        slot.decide(&want, ended, connected()),
        Action::CountExit(ExitReason::Exited)
    );
    // Counting it starts a 1 s backoff; asking again counts nothing new.
    assert_eq!(slot.backoff.exited(Instant::now()), S);
    assert_eq!(slot.decide(&want, ended, connected()), Action::Wait);
    advance(S).await;
    assert_eq!(slot.decide(&want, ended, connected()), Action::Restart);
    slot.backoff.started(Instant::now());

    // It ends again at once: the next wait is 2 s.
    assert_eq!(
        slot.decide(&want, ended, connected()),
        Action::CountExit(ExitReason::Exited)
    );
    assert_eq!(slot.backoff.exited(Instant::now()), 2 * S);
    advance(S).await;
    assert_eq!(slot.decide(&want, ended, connected()), Action::Wait);
    advance(S).await;
    assert_eq!(slot.decide(&want, ended, connected()), Action::Restart);

    let fresh = Slot::new(SlotState::Live, 1);
    assert_eq!(
        fresh.decide(&want, Observed::Ended { oom_killed: true }, connected()),
        Action::CountExit(ExitReason::OomKilled)
    );
    let mut failing = Slot::new(SlotState::Live, 1);
    failing.verdict = verdict(true, true);
    assert_eq!(
        failing.decide(&want, Observed::Alive, connected()),
        Action::KillForLiveness
    );
}

#[tokio::test(start_paused = true)]
async fn three_quick_exits_in_a_row_are_a_crash_loop_until_it_runs_well() {
    let want = container(1, None);
    let mut slot = Slot::new(SlotState::Live, 1);
    for _ in 0..3 {
        let delay = slot.backoff.exited(Instant::now());
        advance(delay).await;
        assert_eq!(
            slot.decide(&want, Observed::Ended { oom_killed: false }, connected()),
            Action::Restart
        );
        slot.backoff.started(Instant::now());
    }
    slot.verdict = verdict(true, false);
    assert_eq!(
        slot.decide(&want, Observed::Alive, connected()),
        Action::Report {
            phase: ContainerPhase::Ready,
            reason: Some(Reason::CrashLoopBackOff)
        }
    );
    // A minute of running ends the streak.
    advance(60 * S).await;
    assert_eq!(
        slot.decide(&want, Observed::Alive, connected()),
        running(true)
    );
}

#[tokio::test(start_paused = true)]
async fn an_older_generation_is_fenced_before_anything_else() {
    let want = container(2, Some("300ms"));
    let mut slot = Slot::new(SlotState::Live, 1);
    slot.verdict = verdict(true, false);
    for seen in [Observed::Alive, Observed::Ended { oom_killed: false }] {
        assert_eq!(
            slot.decide(&want, seen, connected()),
            Action::Fence { held: 1 }
        );
        // Also while cut off past stopOnNodeAfter: the old copy must not run.
        let cut_off = Contact {
            cut_off_for: Some(10 * S),
            fresh: false,
        };
        assert_eq!(slot.decide(&want, seen, cut_off), Action::Fence { held: 1 });
    }
    // Once it is gone, the new generation is created.
    slot.state = SlotState::New;
    assert_eq!(
        slot.decide(&want, Observed::Missing, connected()),
        Action::Create
    );
}

#[tokio::test(start_paused = true)]
async fn a_cut_off_board_stops_what_asks_for_it_and_resumes_only_on_a_fresh_list() {
    let guarded = container(1, Some("300ms"));
    let plain = container(1, None);
    let mut slot = Slot::new(SlotState::Live, 1);
    slot.verdict = verdict(true, false);
    let cut_off = |ms: u64| Contact {
        cut_off_for: Some(Duration::from_millis(ms)),
        fresh: false,
    };
    // Not yet stopOnNodeAfter: it keeps running, as does a role without it.
    assert_eq!(
        slot.decide(&guarded, Observed::Alive, cut_off(200)),
        running(true)
    );
    assert_eq!(
        slot.decide(&plain, Observed::Alive, cut_off(5000)),
        running(true)
    );
    assert_eq!(
        slot.decide(&guarded, Observed::Alive, cut_off(300)),
        Action::StopCutOff {
            away: Duration::from_millis(300)
        }
    );
    slot.state = SlotState::CutOff;
    let ended = Observed::Ended { oom_killed: false };
    assert_eq!(slot.decide(&guarded, ended, cut_off(900)), Action::Wait);
    // Contact is back but the list is from before: still stopped, no exit counted.
    let stale = Contact {
        cut_off_for: None,
        fresh: false,
    };
    assert_eq!(slot.decide(&guarded, ended, stale), Action::Wait);
    assert_eq!(slot.decide(&guarded, ended, connected()), Action::Resume);
    // Never made here before the cut-off: not created while it lasts.
    let unmade = Slot::new(SlotState::New, 0);
    assert_eq!(
        unmade.decide(&guarded, Observed::Missing, cut_off(900)),
        Action::Wait
    );
}

#[tokio::test(start_paused = true)]
async fn a_serving_container_moved_away_leaves_after_the_delay() {
    let now = Instant::now();
    let leaving = unassigned(SlotState::Live, true, now);
    assert_eq!(
        leaving,
        SlotState::Leaving {
            until: now + LEAVE_DELAY
        }
    );
    assert!(!removable(
        false,
        Some(leaving),
        connected(),
        Instant::now()
    ));
    advance(LEAVE_DELAY - Duration::from_millis(1)).await;
    assert!(!removable(
        false,
        Some(leaving),
        connected(),
        Instant::now()
    ));
    advance(Duration::from_millis(1)).await;
    assert!(removable(false, Some(leaving), connected(), Instant::now()));

    // One that does not serve goes at once; none goes on a stale list or while assigned.
    let idle = unassigned(SlotState::Live, false, now);
    assert!(removable(false, Some(idle), connected(), now));
    assert!(removable(false, None, connected(), now));
    let stale = Contact {
        cut_off_for: None,
        fresh: false,
    };
    assert!(!removable(false, None, stale, now));
    assert!(!removable(true, Some(SlotState::Live), connected(), now));
}

fn stopped(mut c: Container, hook: bool) -> Container {
    c.spec.desired = texu_api::DesiredState::Stopped;
    if let Some(t) = c.spec.template.as_mut() {
        t.pre_stop = hook.then(|| texu_api::PreStop {
            command: vec!["nodetool".into(), "decommission".into()],
            timeout: None,
        });
    }
    c
}

#[tokio::test(start_paused = true)]
async fn a_stop_on_request_runs_the_hook_first_then_stops_and_never_starts_again() {
    let want = stopped(container(1, None), true);
    let mut slot = Slot::new(SlotState::Live, 1);
    slot.verdict = verdict(true, false);
    assert_eq!(
        slot.decide(&want, Observed::Alive, connected()),
        Action::RunPreStop
    );
    slot.hook = HookStage::Running;
    assert_eq!(
        slot.decide(&want, Observed::Alive, connected()),
        Action::Wait,
        "the container runs on while its hook runs"
    );
    slot.hook = HookStage::Finished;
    assert_eq!(
        slot.decide(&want, Observed::Alive, connected()),
        Action::StopOnRequest
    );
    // Stopped: it stays stopped, and is not counted as an exit or restarted.
    slot.hook = HookStage::Idle;
    slot.state = SlotState::Stopped;
    let ended = Observed::Ended { oom_killed: false };
    assert_eq!(slot.decide(&want, ended, connected()), Action::Wait);
    advance(Duration::from_secs(600)).await;
    assert_eq!(slot.decide(&want, ended, connected()), Action::Wait);
    // Without a hook it stops at once; one never made is only reported stopped.
    let plain = stopped(container(1, None), false);
    let live = Slot::new(SlotState::Live, 1);
    assert_eq!(
        live.decide(&plain, Observed::Alive, connected()),
        Action::StopOnRequest
    );
    let fresh = Slot::new(SlotState::New, 0);
    assert_eq!(
        fresh.decide(&want, Observed::Missing, connected()),
        Action::MarkStopped
    );
    // A fenced older copy still goes first.
    let old = Slot::new(SlotState::Live, 0);
    assert_eq!(
        old.decide(&want, Observed::Alive, connected()),
        Action::Fence { held: 0 }
    );
}

#[tokio::test(start_paused = true)]
async fn a_stop_taken_back_starts_the_kept_container_again() {
    let want = container(1, None);
    let mut slot = Slot::new(SlotState::Stopped, 1);
    let ended = Observed::Ended { oom_killed: false };
    assert_eq!(slot.decide(&want, ended, connected()), Action::Resume);
    assert_eq!(
        slot.decide(&want, Observed::Missing, connected()),
        Action::Create
    );
    // A hook that ends after the stop was taken back is dropped.
    slot.state = SlotState::Live;
    slot.hook = HookStage::Finished;
    assert_eq!(
        slot.decide(&want, Observed::Alive, connected()),
        Action::ForgetPreStop
    );
}
