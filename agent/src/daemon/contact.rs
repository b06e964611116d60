//! The agent's link to the controller: whether heartbeats get through, since when they do not,
//! and a reconnect epoch that tells the watcher to list afresh after a cut-off.
//!
//! After a partition the board must not act on anything it heard before or during the cut-off:
//! the first heartbeat after it lets the controller settle which copy of a moved container wins
//! (`keep: original | replacement`), and only a list read after that heartbeat may remove
//! containers from the board.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct State {
    last_ok: Option<Instant>,
    failing_since: Option<Instant>,
    epoch: u64,
}

/// Shared between the heartbeat loop, the watcher thread and the reconciler.
#[derive(Debug)]
pub struct Contact {
    state: Mutex<State>,
    /// Silence after which the board counts as cut off even if no request failed yet (a
    /// request into a partition may hang rather than fail).
    threshold: Duration,
}

impl Default for Contact {
    fn default() -> Self {
        Contact::new(Duration::from_millis(1500))
    }
}

impl Contact {
    /// A link that counts as cut off after `threshold` without a heartbeat getting through.
    pub fn new(threshold: Duration) -> Self {
        Contact {
            state: Mutex::new(State::default()),
            threshold,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        match self.state.lock() {
            Ok(mut s) => f(&mut s),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    fn cut_off_at(&self, s: &State, at: Instant) -> bool {
        s.failing_since.is_some_and(|f| f <= at)
            || s.last_ok
                .is_some_and(|t| at.saturating_duration_since(t) > self.threshold)
    }

    /// A heartbeat sent at `sent` got through. If the board was cut off when it was sent, the
    /// controller has now seen the board again: a new epoch starts. A late answer to a request
    /// sent before a cut-off says nothing about now and is ignored.
    pub fn heartbeat_ok(&self, sent: Instant) {
        self.with(|s| {
            if self.cut_off_at(s, sent) {
                s.epoch += 1;
            } else if self.cut_off_at(s, Instant::now()) {
                return;
            }
            s.failing_since = None;
            s.last_ok = Some(Instant::now());
        });
    }

    /// A heartbeat could not reach the controller.
    pub fn heartbeat_unreachable(&self) {
        self.with(|s| {
            s.failing_since.get_or_insert_with(Instant::now);
        });
    }

    /// True while heartbeats do not get through.
    pub fn is_cut_off(&self) -> bool {
        self.with(|s| self.cut_off_at(s, Instant::now()))
    }

    /// How long the board has been cut off (since its last heartbeat that got through), if it is.
    pub fn cut_off_for(&self) -> Option<Duration> {
        self.with(|s| {
            self.cut_off_at(s, Instant::now()).then(|| {
                s.last_ok
                    .or(s.failing_since)
                    .map_or(Duration::ZERO, |t| t.elapsed())
            })
        })
    }

    /// Which stretch of contact this is: it grows by one each time heartbeats get through again.
    pub fn epoch(&self) -> u64 {
        self.with(|s| s.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_off_is_measured_from_the_last_good_heartbeat_and_ends_an_epoch() {
        let c = Contact::default();
        assert!(!c.is_cut_off());
        assert_eq!(c.cut_off_for(), None);
        c.heartbeat_ok(Instant::now());
        assert_eq!(c.epoch(), 0);
        std::thread::sleep(Duration::from_millis(20));
        c.heartbeat_unreachable();
        c.heartbeat_unreachable();
        assert!(c.is_cut_off());
        assert!(c
            .cut_off_for()
            .is_some_and(|d| d >= Duration::from_millis(20)));
        c.heartbeat_ok(Instant::now());
        assert!(!c.is_cut_off());
        assert_eq!(c.epoch(), 1);
        c.heartbeat_ok(Instant::now());
        assert_eq!(c.epoch(), 1);
    }

    #[test]
    fn silence_is_a_cut_off_and_a_late_answer_from_before_it_does_not_end_it() {
        let c = Contact::new(Duration::from_millis(50));
        c.heartbeat_ok(Instant::now());
        // A request sent now hangs in a partition; nothing fails, yet the silence counts.
        let hung = Instant::now();
        std::thread::sleep(Duration::from_millis(80));
        assert!(c.is_cut_off());
        c.heartbeat_ok(hung);
        assert!(c.is_cut_off(), "a late answer from before the cut-off");
        assert_eq!(c.epoch(), 0);
        // A heartbeat sent while cut off gets through: the controller saw the board again.
        c.heartbeat_ok(Instant::now());
        assert!(!c.is_cut_off());
        assert_eq!(c.epoch(), 1);
    }
}
