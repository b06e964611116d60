//! Verdicts from attempts, and restart delays: pure state machines with no clock inside. Callers
//! pass the instants and results in, so every rule here is tested with plain values.
//!
//! A [`ProbeState`] turns one probe's attempts into [`ProbeStatus::Passed`] or
//! [`ProbeStatus::Failed`] with the probe's thresholds and says when the next attempt is due.
//! A [`RestartBackoff`] says how long to wait before restarting a container that ended, and
//! whether it is in a crash loop.
//!
//! # Restart delays and the crash-loop rule
//!
//! Every time a container's process ends or its liveness probe fails, the agent calls
//! [`RestartBackoff::exited`]. An exit that comes less than [`BackoffPolicy::reset_after`]
//! (60 s) after the container's last start extends the current *streak* of exits in a row; an
//! exit after a longer run starts a new streak. The `n`-th exit of a streak waits
//! `min(initial * 2^(n-1), max)` before the restart: 1 s, 2 s, 4 s, 8 s, 16 s, 32 s, then 60 s.
//!
//! The container is in a **crash loop** while its streak is at least
//! [`BackoffPolicy::crash_loop_after`] (3): it ended three times in a row, each time within 60 s
//! of starting, so the next delay is 4 s or more. The crash loop lasts through the short runs
//! between restarts (the status does not flicker) and ends once the container has run for 60 s
//! since its last start.

use super::check::CheckResult;
use std::fmt;
use std::time::Duration;
use texu_api::Probe;
use tokio::time::Instant;

/// A probe's timing and thresholds, in the agent's types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTiming {
    /// Wait after the container's start before the first attempt.
    pub initial_delay: Duration,
    /// Time from one attempt's start to the next one's.
    pub period: Duration,
    /// Time after which an attempt counts as failed.
    pub timeout: Duration,
    /// Failures in a row that make the probe `Failed`.
    pub failure_threshold: u32,
    /// Successes in a row that make the probe `Passed`.
    pub success_threshold: u32,
}

impl ProbeTiming {
    /// The timing of `probe`. Values validation would reject (zero, negative, not finite) fall
    /// back to the defaults instead of panicking.
    pub fn from_probe(probe: &Probe) -> ProbeTiming {
        let defaults = ProbeTiming::default();
        ProbeTiming {
            initial_delay: seconds(probe.initial_delay_seconds).unwrap_or(defaults.initial_delay),
            period: positive_seconds(probe.period_seconds).unwrap_or(defaults.period),
            timeout: positive_seconds(probe.timeout_seconds).unwrap_or(defaults.timeout),
            failure_threshold: threshold(probe.failure_threshold),
            success_threshold: threshold(probe.success_threshold),
        }
    }
}

impl Default for ProbeTiming {
    /// The API's defaults: no delay, every second, 1 s timeout, 3 failures, 1 success.
    fn default() -> Self {
        ProbeTiming {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failure_threshold: 3,
            success_threshold: 1,
        }
    }
}

fn seconds(value: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(value).ok()
}

fn positive_seconds(value: f64) -> Option<Duration> {
    seconds(value).filter(|d| !d.is_zero())
}

fn threshold(value: i64) -> u32 {
    u32::try_from(value.max(1)).unwrap_or(u32::MAX)
}

/// A probe's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeStatus {
    /// Not enough attempts yet for a verdict.
    Unknown,
    /// `success_threshold` successes in a row, and no `failure_threshold` failures since.
    Passed,
    /// `failure_threshold` failures in a row, and no `success_threshold` successes since.
    Failed,
}

impl ProbeStatus {
    /// The word shown to people.
    pub const fn as_str(self) -> &'static str {
        match self {
            ProbeStatus::Unknown => "unknown",
            ProbeStatus::Passed => "passed",
            ProbeStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for ProbeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One probe of one container run: its schedule, its counters and its verdict.
///
/// The verdict only moves when a threshold is reached, so a single failed attempt of a passing
/// probe leaves it `Passed` (and a single success of a failed one leaves it `Failed`). After a
/// restart of the container, start over with a new state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeState {
    timing: ProbeTiming,
    next_due: Instant,
    status: ProbeStatus,
    successes: u32,
    failures: u32,
    last: Option<CheckResult>,
}

impl ProbeState {
    /// The state of a probe of a container that started at `started`.
    pub fn new(timing: ProbeTiming, started: Instant) -> ProbeState {
        ProbeState {
            timing,
            next_due: started + timing.initial_delay,
            status: ProbeStatus::Unknown,
            successes: 0,
            failures: 0,
            last: None,
        }
    }

    /// The probe's timing.
    pub fn timing(&self) -> &ProbeTiming {
        &self.timing
    }

    /// When the next attempt should start.
    pub fn next_due(&self) -> Instant {
        self.next_due
    }

    /// Whether an attempt should start at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        now >= self.next_due
    }

    /// Records an attempt that ended at `now` and schedules the next one a period after this
    /// one was due (at once if the attempt took longer than the period). Returns the new
    /// verdict if it changed.
    pub fn record(&mut self, now: Instant, result: CheckResult) -> Option<ProbeStatus> {
        self.next_due = (self.next_due + self.timing.period).max(now);
        let before = self.status;
        if result.success {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
            if self.successes >= self.timing.success_threshold {
                self.status = ProbeStatus::Passed;
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
            if self.failures >= self.timing.failure_threshold {
                self.status = ProbeStatus::Failed;
            }
        }
        self.last = Some(result);
        (self.status != before).then_some(self.status)
    }

    /// The verdict.
    pub fn status(&self) -> ProbeStatus {
        self.status
    }

    /// The last attempt's result, if any ran.
    pub fn last_result(&self) -> Option<&CheckResult> {
        self.last.as_ref()
    }

    /// What the last attempt found, if any ran.
    pub fn reason(&self) -> Option<&str> {
        self.last.as_ref().map(|r| r.reason.as_str())
    }

    /// Failed attempts in a row.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// Successful attempts in a row.
    pub fn consecutive_successes(&self) -> u32 {
        self.successes
    }

    /// For a readiness probe: whether the container should receive traffic.
    pub fn is_ready(&self) -> bool {
        self.status == ProbeStatus::Passed
    }

    /// For a liveness probe: whether the container should be restarted.
    pub fn should_restart(&self) -> bool {
        self.status == ProbeStatus::Failed
    }
}

/// How restart delays grow and when a container counts as crash looping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The delay after the first exit of a streak.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// A run at least this long ends the streak of exits.
    pub reset_after: Duration,
    /// Exits in a row from which the container is in a crash loop.
    pub crash_loop_after: u32,
}

impl Default for BackoffPolicy {
    /// 1 s doubling to 60 s, reset after 60 s of running, crash loop from the third exit.
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            reset_after: Duration::from_secs(60),
            crash_loop_after: 3,
        }
    }
}

impl BackoffPolicy {
    /// The delay before restarting after the `streak`-th exit in a row (counting from 1).
    pub fn delay(&self, streak: u32) -> Duration {
        let factor = 2u32
            .checked_pow(streak.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Where a container is in its restart cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPhase {
    /// It runs (or is being started), and is not in a crash loop.
    Running,
    /// It ended and waits until `restart_at` to be restarted.
    BackOff {
        /// When it should be started again.
        restart_at: Instant,
    },
    /// It keeps ending soon after each start (see the module's crash-loop rule).
    CrashLoop {
        /// When it should be started again; `None` while the current attempt runs.
        restart_at: Option<Instant>,
    },
}

impl RestartPhase {
    /// The one-word reason shown in a container's status: `Running`, `BackOff`, `CrashLoop`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RestartPhase::Running => "Running",
            RestartPhase::BackOff { .. } => "BackOff",
            RestartPhase::CrashLoop { .. } => "CrashLoop",
        }
    }
}

impl fmt::Display for RestartPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The restart delays and crash-loop state of one container (rule in the module's docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartBackoff {
    policy: BackoffPolicy,
    started: Instant,
    restart_at: Option<Instant>,
    streak: u32,
    restarts: u32,
}

impl RestartBackoff {
    /// The backoff of a container that started (or was adopted running) at `started`.
    pub fn new(policy: BackoffPolicy, started: Instant) -> RestartBackoff {
        RestartBackoff {
            policy,
            started,
            restart_at: None,
            streak: 0,
            restarts: 0,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &BackoffPolicy {
        &self.policy
    }

    /// The container's process ended or its liveness probe failed at `now`: returns how long to
    /// wait before starting it again. Calling it again before [`started`](Self::started) counts
    /// no new exit and returns the time left.
    pub fn exited(&mut self, now: Instant) -> Duration {
        if let Some(restart_at) = self.restart_at {
            return restart_at.saturating_duration_since(now);
        }
        if self.ran_well(now) {
            self.streak = 0;
        }
        self.streak = self.streak.saturating_add(1);
        let delay = self.policy.delay(self.streak);
        self.restart_at = Some(now + delay);
        delay
    }

    /// The container was started again at `now`. Counts a restart if it was waiting for one;
    /// calling it again, or while it runs, only moves its start time.
    pub fn started(&mut self, now: Instant) {
        if self.restart_at.take().is_some() {
            self.restarts = self.restarts.saturating_add(1);
        }
        self.started = now;
    }

    /// When the container should be started again, if it is waiting for a restart.
    pub fn restart_at(&self) -> Option<Instant> {
        self.restart_at
    }

    /// Whether it waits for a restart that is due at `now`.
    pub fn restart_due(&self, now: Instant) -> bool {
        self.restart_at.is_some_and(|at| now >= at)
    }

    /// How many times it was restarted.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Exits in a row, each soon after a start, as of `now` (0 once it has run well).
    pub fn streak(&self, now: Instant) -> u32 {
        if self.restart_at.is_none() && self.ran_well(now) {
            0
        } else {
            self.streak
        }
    }

    /// Where it is in its restart cycle at `now`.
    pub fn phase(&self, now: Instant) -> RestartPhase {
        if self.streak(now) >= self.policy.crash_loop_after {
            RestartPhase::CrashLoop {
                restart_at: self.restart_at,
            }
        } else if let Some(restart_at) = self.restart_at {
            RestartPhase::BackOff { restart_at }
        } else {
            RestartPhase::Running
        }
    }

    /// Whether it is in a crash loop at `now`.
    pub fn in_crash_loop(&self, now: Instant) -> bool {
        matches!(self.phase(now), RestartPhase::CrashLoop { .. })
    }

    fn ran_well(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.started) >= self.policy.reset_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn ok() -> CheckResult {
        CheckResult::success("HTTP 200 from 198.19.1.2:8000/health")
    }

    fn bad() -> CheckResult {
        CheckResult::failure("connection refused by 198.19.1.2:8000")
    }

    fn timing(failures: u32, successes: u32) -> ProbeTiming {
        ProbeTiming {
            initial_delay: 5 * S,
            period: 2 * S,
            timeout: S,
            failure_threshold: failures,
            success_threshold: successes,
        }
    }

    #[test]
    fn first_attempt_waits_for_the_initial_delay_then_runs_every_period() {
        let t0 = Instant::now();
        let mut state = ProbeState::new(timing(3, 1), t0);
        assert_eq!(state.status(), ProbeStatus::Unknown);
        assert!(state.last_result().is_none());
        assert!(!state.is_due(t0 + 4 * S));
        assert!(state.is_due(t0 + 5 * S));
        state.record(t0 + 5 * S, ok());
        assert_eq!(state.next_due(), t0 + 7 * S);
        // A late attempt keeps the schedule: due a period after it was due, not after it ran.
        state.record(t0 + 7 * S + S / 2, ok());
        assert_eq!(state.next_due(), t0 + 9 * S);
        // An attempt that outlasts the period makes the next one due at once.
        state.record(t0 + 12 * S, ok());
        assert_eq!(state.next_due(), t0 + 12 * S);
    }

    #[test]
    fn passes_after_success_threshold_and_fails_after_failure_threshold() {
        let t0 = Instant::now();
        let mut state = ProbeState::new(timing(3, 2), t0);
        assert_eq!(state.record(t0, ok()), None);
        assert!(!state.is_ready());
        assert_eq!(state.record(t0, ok()), Some(ProbeStatus::Passed));
        assert!(state.is_ready());
        assert!(!state.should_restart());

        // Two failures are not enough: the verdict holds, the reason shows the latest attempt.
        assert_eq!(state.record(t0, bad()), None);
        assert_eq!(state.record(t0, bad()), None);
        assert!(state.is_ready());
        assert_eq!(state.consecutive_failures(), 2);
        assert_eq!(
            state.reason(),
            Some("connection refused by 198.19.1.2:8000")
        );
        assert_eq!(state.record(t0, bad()), Some(ProbeStatus::Failed));
        assert!(!state.is_ready());
        assert!(state.should_restart());
        assert_eq!(state.record(t0, bad()), None);

        // One success does not undo a failed verdict when two are needed.
        assert_eq!(state.record(t0, ok()), None);
        assert!(state.should_restart());
        assert_eq!(state.consecutive_successes(), 1);
        assert_eq!(state.consecutive_failures(), 0);
        assert_eq!(state.record(t0, ok()), Some(ProbeStatus::Passed));
        assert_eq!(state.last_result(), Some(&ok()));
    }

    #[test]
    fn a_failure_resets_the_success_count() {
        let t0 = Instant::now();
        let mut state = ProbeState::new(timing(3, 2), t0);
        state.record(t0, ok());
        state.record(t0, bad());
        assert_eq!(state.record(t0, ok()), None);
        assert_eq!(state.status(), ProbeStatus::Unknown);
        assert_eq!(state.record(t0, ok()), Some(ProbeStatus::Passed));
    }

    #[test]
    fn timing_from_probe_uses_defaults_for_values_validation_rejects() {
        let probe = Probe {
            period_seconds: 0.5,
            timeout_seconds: 0.25,
            initial_delay_seconds: 10.0,
            failure_threshold: 5,
            success_threshold: 2,
            ..Probe::default()
        };
        assert_eq!(
            ProbeTiming::from_probe(&probe),
            ProbeTiming {
                initial_delay: 10 * S,
                period: S / 2,
                timeout: S / 4,
                failure_threshold: 5,
                success_threshold: 2,
            }
        );
        let broken = Probe {
            period_seconds: 0.0,
            timeout_seconds: f64::NAN,
            initial_delay_seconds: -1.0,
            failure_threshold: 0,
            success_threshold: i64::MAX,
            ..Probe::default()
        };
        assert_eq!(
            ProbeTiming::from_probe(&broken),
            ProbeTiming {
                success_threshold: u32::MAX,
                failure_threshold: 1,
                ..ProbeTiming::default()
            }
        );
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let policy = BackoffPolicy::default();
        let delays: Vec<u64> = (1..=9).map(|n| policy.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(policy.delay(u32::MAX), 60 * S);
    }

    #[test]
    fn quick_exits_back_off_then_crash_loop() {
        let t0 = Instant::now();
        let mut backoff = RestartBackoff::new(BackoffPolicy::default(), t0);
        assert_eq!(backoff.phase(t0), RestartPhase::Running);

        let mut now = t0 + 3 * S;
        let mut delays = Vec::new();
        let mut phases = Vec::new();
        for _ in 0..4 {
            let delay = backoff.exited(now);
            delays.push(delay.as_secs());
            phases.push(backoff.phase(now).as_str());
            assert!(!backoff.restart_due(now + delay - S / 2));
            now += delay;
            assert!(backoff.restart_due(now));
            backoff.started(now);
            now += 3 * S;
        }
        assert_eq!(delays, [1, 2, 4, 8]);
        assert_eq!(phases, ["BackOff", "BackOff", "CrashLoop", "CrashLoop"]);
        assert_eq!(backoff.restarts(), 4);
        // Between restarts, the short run still shows as a crash loop.
        assert_eq!(
            backoff.phase(now),
            RestartPhase::CrashLoop { restart_at: None }
        );
        assert_eq!(backoff.streak(now), 4);
    }

    #[test]
    fn a_long_enough_run_ends_the_crash_loop_and_resets_the_delay() {
        let t0 = Instant::now();
        let mut backoff = RestartBackoff::new(BackoffPolicy::default(), t0);
        let mut now = t0;
        for _ in 0..5 {
            now += S;
            now += backoff.exited(now);
            backoff.started(now);
        }
        assert!(backoff.in_crash_loop(now + 59 * S));
        assert!(!backoff.in_crash_loop(now + 60 * S));
        assert_eq!(backoff.phase(now + 60 * S), RestartPhase::Running);
        assert_eq!(backoff.exited(now + 61 * S), S);
        assert_eq!(backoff.restarts(), 5);
    }

    #[test]
    fn exited_and_started_are_idempotent() {
        let t0 = Instant::now();
        let mut backoff = RestartBackoff::new(BackoffPolicy::default(), t0);
        assert_eq!(backoff.exited(t0), S);
        // The reconciler sees the same exit again half a second later.
        assert_eq!(backoff.exited(t0 + S / 2), S / 2);
        assert_eq!(backoff.restart_at(), Some(t0 + S));
        backoff.started(t0 + S);
        backoff.started(t0 + S);
        assert_eq!(backoff.restarts(), 1);
        assert_eq!(backoff.exited(t0 + 2 * S), 2 * S);
    }

    #[test]
    fn a_policy_can_crash_loop_sooner() {
        let policy = BackoffPolicy {
            initial: S / 2,
            max: 4 * S,
            reset_after: 10 * S,
            crash_loop_after: 1,
        };
        let t0 = Instant::now();
        let mut backoff = RestartBackoff::new(policy, t0);
        assert_eq!(backoff.exited(t0), S / 2);
        assert_eq!(
            backoff.phase(t0),
            RestartPhase::CrashLoop {
                restart_at: Some(t0 + S / 2)
            }
        );
        // A run of reset_after or more counts as a good one: the next exit starts a new streak.
        backoff.started(t0 + S);
        assert_eq!(backoff.exited(t0 + 11 * S), S / 2);
    }
}
