//! A phi-accrual failure detector per board: learns each link's heartbeat rhythm so a jittery
//! VPN link is not declared dead while a silent board is.
//!
//! Hayashibara et al.'s phi accrual detector, in the form Akka and Cassandra use: it keeps the
//! last [`WINDOW`] intervals between heartbeats and turns the time since the last one into a
//! suspicion level `phi = -log10(P(a heartbeat still comes))`, with the interval modelled as a
//! normal distribution (the logistic approximation of its tail). A board is judged dead when
//! both the controller's grace period has passed and `phi` reaches [`THRESHOLD`]; on a steady
//! link the grace period decides (2 s by default), on a jittery one the learned rhythm does.
//! A hard ceiling ([`Detector::ceiling`]) bounds how long any board can stay silent and Ready.
//!
//! Pure: times are passed in, so it is tested with plain numbers.

use std::collections::VecDeque;
use std::time::Duration;

/// How many intervals it remembers.
pub const WINDOW: usize = 64;
/// How many learned intervals it takes before the two assumed ones are dropped.
const LEARNED_ENOUGH: usize = 8;
/// Suspicion at which a board is judged dead (1e-8 chance that a heartbeat still comes).
pub const THRESHOLD: f64 = 8.0;
/// The smallest standard deviation it assumes, so a very steady link does not make the first
/// late beat look fatal.
const MIN_STD_SECS: f64 = 0.1;

/// One board's heartbeat history.
#[derive(Debug, Clone)]
pub struct Detector {
    intervals: VecDeque<f64>,
    /// Two assumed intervals, counted until [`LEARNED_ENOUGH`] real ones are in.
    prior: [f64; 2],
    /// The last heartbeat of any kind: silence is counted from it.
    last: Option<f64>,
    /// The last heartbeat of the rhythm: intervals are counted from it.
    last_rhythm: Option<f64>,
    grace: f64,
}

impl Detector {
    /// A detector for a link expected to beat well within `grace`. It starts with two assumed
    /// intervals around `grace / 2`, so the first heartbeats are judged gently while it learns;
    /// once it has learned [`LEARNED_ENOUGH`] of its own they no longer count (they would make a
    /// young board's verdict up to a second slower).
    pub fn new(grace: Duration) -> Self {
        let grace = grace.as_secs_f64();
        let prior = grace / 2.0;
        Detector {
            intervals: VecDeque::with_capacity(WINDOW),
            prior: [prior * 0.5, prior * 1.5],
            last: None,
            last_rhythm: None,
            grace,
        }
    }

    /// Records a heartbeat that arrived at `now` (seconds on any monotonic clock). A gap that
    /// was judged an outage is not learned as rhythm: a board back from a partition is watched
    /// as closely as before it.
    pub fn beat(&mut self, now: f64) {
        if let Some(from) = self.last_rhythm {
            let interval = now - from;
            if interval > 0.0 && !self.judged_dead(interval) {
                if self.intervals.len() == WINDOW {
                    self.intervals.pop_front();
                }
                self.intervals.push_back(interval);
            }
        }
        self.last = Some(now);
        self.last_rhythm = Some(now);
    }

    /// Records a heartbeat sent out of rhythm (early, with news): the board is alive at `now`,
    /// but the gap is not learned, and the next interval is measured from the last rhythmic one.
    pub fn touch(&mut self, now: f64) {
        self.last = Some(now);
    }

    /// Silence after which a board is dead whatever its history: ten grace periods.
    pub fn ceiling(&self) -> f64 {
        self.grace * 10.0
    }

    fn mean_std(&self) -> (f64, f64) {
        let prior: &[f64] = if self.intervals.len() < LEARNED_ENOUGH {
            &self.prior
        } else {
            &[]
        };
        let all = || self.intervals.iter().chain(prior);
        let n = (self.intervals.len() + prior.len()) as f64;
        let mean = all().sum::<f64>() / n;
        let var = all().map(|i| (i - mean) * (i - mean)).sum::<f64>() / n;
        (mean, var.sqrt().max(MIN_STD_SECS))
    }

    /// The suspicion level `silence` seconds after the last heartbeat.
    pub fn phi(&self, silence: f64) -> f64 {
        let (mean, std) = self.mean_std();
        let y = (silence - mean) / std;
        let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
        let p_later = if silence > mean {
            e / (1.0 + e)
        } else {
            1.0 - 1.0 / (1.0 + e)
        };
        if p_later <= 0.0 {
            f64::INFINITY
        } else {
            -p_later.log10()
        }
    }

    /// True when the board should be judged dead at `now`: the grace period has passed and
    /// its learned rhythm makes a heartbeat this late too unlikely, or it passed the ceiling.
    /// A board never heard from is judged by `since` (e.g. the controller's start).
    pub fn is_dead(&self, now: f64, since: f64) -> bool {
        self.judged_dead(self.silence(now, since))
    }

    /// Whether `silence` seconds without a heartbeat mean the board is dead.
    fn judged_dead(&self, silence: f64) -> bool {
        silence >= self.grace && (silence >= self.ceiling() || self.phi(silence) >= THRESHOLD)
    }

    /// When the last heartbeat of any kind came, if one did.
    pub fn last(&self) -> Option<f64> {
        self.last
    }

    /// Seconds since the last heartbeat, or since `since` (e.g. a new leader's takeover) if
    /// none came after it: silence from before `since` does not count.
    pub fn silence(&self, now: f64, since: f64) -> f64 {
        now - self.last.map_or(since, |last| last.max(since))
    }

    /// The silence, in seconds, at which a board with this history is judged dead.
    pub fn deadline(&self) -> f64 {
        let (mut lo, mut hi) = (self.grace, self.ceiling());
        if self.phi(lo) >= THRESHOLD {
            return lo;
        }
        for _ in 0..40 {
            let mid = (lo + hi) / 2.0;
            if self.phi(mid) >= THRESHOLD {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn silence_from_before_a_takeover_does_not_count() {
        let mut d = Detector::new(Duration::from_secs(2));
        for i in 0..20 {
            d.beat(f64::from(i) * 0.5);
        }
        // Last beat at 9.5 s; a new leader takes over at 60 s: judged from 60 s, not 9.5 s.
        assert!(!d.is_dead(61.0, 60.0));
        assert!((d.silence(61.0, 60.0) - 1.0).abs() < 1e-9);
        assert!(d.is_dead(63.0, 60.0));
    }

    use super::*;

    #[test]
    fn a_new_board_is_judged_gently_and_a_young_steady_one_at_the_grace_period() {
        let (new, _) = fed([0.5; 2]);
        assert!(new.deadline() > 2.2, "deadline {}", new.deadline());
        let (young, _) = fed([0.5; LEARNED_ENOUGH]);
        assert!(
            (young.deadline() - 2.0).abs() < 1e-9,
            "deadline {}",
            young.deadline()
        );
    }

    #[test]
    fn an_early_beat_out_of_rhythm_keeps_the_board_alive_without_teaching_a_faster_rhythm() {
        // A window full of 0.5 s gaps: more of them change nothing.
        let (mut d, mut t) = fed([0.5; WINDOW]);
        let learned = d.mean_std();
        // A beat 0.1 s after each regular one.
        for _ in 0..20 {
            d.touch(t + 0.1);
            t += 0.5;
            d.beat(t);
        }
        assert_eq!(d.mean_std(), learned, "touches changed the learned rhythm");
        // It counts as a sign of life: silence is measured from it.
        d.touch(t + 0.4);
        assert!((d.silence(t + 1.0, 0.0) - 0.6).abs() < 1e-9);
        // Back after an outage with a prompt beat first: the outage is still not learned.
        t += 30.0;
        d.touch(t);
        d.beat(t + 0.3);
        assert_eq!(d.mean_std(), learned, "an outage was learned as rhythm");
    }

    const GRACE: Duration = Duration::from_secs(2);

    fn fed(intervals: impl IntoIterator<Item = f64>) -> (Detector, f64) {
        let mut d = Detector::new(GRACE);
        let mut t = 100.0;
        d.beat(t);
        for i in intervals {
            t += i;
            d.beat(t);
        }
        (d, t)
    }

    /// A deterministic pseudo-random sequence in [0, 1).
    fn noise(n: usize) -> Vec<f64> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 11) as f64 / (1u64 << 53) as f64
            })
            .collect()
    }

    #[test]
    fn a_steady_link_is_dead_at_the_grace_period() {
        let (d, t) = fed(std::iter::repeat_n(0.5, 40));
        assert!(!d.is_dead(t + 1.9, 0.0));
        assert!(d.is_dead(t + 2.0, 0.0));
        assert!((d.deadline() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_jittery_link_is_given_longer_and_still_judged() {
        // Beats every 0.5 s plus up to 2 s of delay: gaps of up to 2.5 s are normal here.
        let gaps: Vec<f64> = noise(64).into_iter().map(|r| 0.5 + 2.0 * r).collect();
        let longest = gaps.iter().cloned().fold(0.0, f64::max);
        assert!(
            longest > 2.0,
            "the sample should contain gaps beyond the grace period"
        );
        let (d, t) = fed(gaps.clone());
        for gap in &gaps {
            assert!(
                !d.is_dead(t + gap, 0.0),
                "a usual gap of {gap:.2}s is not death"
            );
        }
        let deadline = d.deadline();
        assert!(deadline > 2.5 && deadline < 6.0, "deadline {deadline}");
        assert!(d.is_dead(t + deadline + 0.01, 0.0));
    }

    #[test]
    fn the_first_beats_are_judged_gently_and_the_ceiling_holds() {
        // Two beats 2.4 s apart right after joining: the prior keeps the board alive.
        let (d, t) = fed([2.4]);
        assert!(!d.is_dead(t + 2.4, 0.0));
        // A slow link is learned; however slow, twenty seconds of silence is death.
        let (d, t) = fed(std::iter::repeat_n(3.0, 10));
        assert!(!d.is_dead(t + 3.2, 0.0));
        assert!(d.is_dead(t + d.ceiling(), 0.0));
    }

    #[test]
    fn a_board_never_heard_is_judged_from_since() {
        let d = Detector::new(GRACE);
        assert!(!d.is_dead(11.0, 10.0));
        assert!(d.is_dead(10.0 + d.ceiling(), 10.0));
    }

    #[test]
    fn an_outage_is_not_learned_as_rhythm() {
        let (mut d, t) = fed(std::iter::repeat_n(0.5, 40));
        d.beat(t + 30.0);
        d.beat(t + 30.5);
        assert!(d.is_dead(t + 30.5 + 2.0, 0.0));
    }

    #[test]
    fn phi_grows_with_silence() {
        let (d, _) = fed(std::iter::repeat_n(0.5, 20));
        let values: Vec<f64> = [0.3, 0.5, 0.8, 1.0, 1.5]
            .iter()
            .map(|s| d.phi(*s))
            .collect();
        assert!(values.windows(2).all(|w| w[0] <= w[1]), "{values:?}");
    }
}
