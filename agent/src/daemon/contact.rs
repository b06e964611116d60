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
#[derive(Debug, Default)]
pub struct Contact {
    state: Mutex<State>,
}

impl Contact {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        match self.state.lock() {
            Ok(mut s) => f(&mut s),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// A heartbeat got through. After a cut-off this starts a new epoch.
    pub fn heartbeat_ok(&self) {
        self.with(|s| {
            if s.failing_since.take().is_some() {
                s.epoch += 1;
            }
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
        self.with(|s| s.failing_since.is_some())
    }

    /// How long the board has been cut off (since its last heartbeat that got through), if it is.
    pub fn cut_off_for(&self) -> Option<Duration> {
        self.with(|s| {
            s.failing_since
                .map(|since| s.last_ok.unwrap_or(since).elapsed())
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
        c.heartbeat_ok();
        assert_eq!(c.epoch(), 0);
        std::thread::sleep(Duration::from_millis(20));
        c.heartbeat_unreachable();
        c.heartbeat_unreachable();
        assert!(c.is_cut_off());
        assert!(c
            .cut_off_for()
            .is_some_and(|d| d >= Duration::from_millis(20)));
        c.heartbeat_ok();
        assert!(!c.is_cut_off());
        assert_eq!(c.epoch(), 1);
        c.heartbeat_ok();
        assert_eq!(c.epoch(), 1);
    }
}
