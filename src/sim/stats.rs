//! What the simulation measures: heartbeat round trips (per reporting period and in all), failed
//! heartbeats, and how long a power cut's containers take to be reported Ready elsewhere.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Shared by every board's heartbeat loop.
#[derive(Default)]
pub struct Stats {
    /// Round trips of the current period, in microseconds.
    period: Mutex<Vec<u32>>,
    /// Every round trip since the start, in microseconds.
    all: Mutex<Vec<u32>>,
    failed: AtomicU64,
    failover: Mutex<Option<Failover>>,
}

/// A power cut in progress: the containers its boards held, not yet Ready elsewhere.
struct Failover {
    at: Instant,
    boards: usize,
    total: usize,
    waiting: HashSet<String>,
}

/// Percentiles of a set of round trips.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "{} ok, round trip p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.count,
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )
    }
}

/// Percentiles of `micros` (sorted in place); `None` when empty.
pub fn summarize(micros: &mut [u32]) -> Option<Summary> {
    if micros.is_empty() {
        return None;
    }
    micros.sort_unstable();
    let at = |q: f64| {
        let i = ((micros.len() as f64 * q).ceil() as usize).clamp(1, micros.len()) - 1;
        Duration::from_micros(u64::from(micros[i]))
    };
    Some(Summary {
        count: micros.len(),
        p50: at(0.50),
        p99: at(0.99),
        max: at(1.0),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Stats {
    /// A heartbeat was answered after `rtt`, reporting `ready` containers as Ready.
    pub fn answered<'a>(&self, rtt: Duration, ready: impl Iterator<Item = &'a str>) {
        let micros = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX);
        lock(&self.period).push(micros);
        lock(&self.all).push(micros);
        let mut failover = lock(&self.failover);
        if let Some(f) = failover.as_mut() {
            for name in ready {
                f.waiting.remove(name);
            }
            if f.waiting.is_empty() {
                println!(
                    "failover: {} containers of {} powered-off boards Ready elsewhere after {:.2} s",
                    f.total,
                    f.boards,
                    f.at.elapsed().as_secs_f64()
                );
                *failover = None;
            }
        }
    }

    /// A heartbeat failed (refused, timed out, unreachable).
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Boards were powered off now, holding `containers`: time them until all are Ready on
    /// other boards.
    pub fn power_cut(&self, boards: usize, containers: HashSet<String>) {
        if containers.is_empty() {
            println!("failover: the {boards} powered-off boards held no containers");
            return;
        }
        *lock(&self.failover) = Some(Failover {
            at: Instant::now(),
            boards,
            total: containers.len(),
            waiting: containers,
        });
    }

    /// The containers of the last power cut not yet Ready elsewhere.
    pub fn still_moving(&self) -> usize {
        lock(&self.failover).as_ref().map_or(0, |f| f.waiting.len())
    }

    /// Ends the current period: its round trips and the failures so far.
    pub fn period(&self) -> (Option<Summary>, u64) {
        let mut period = std::mem::take(&mut *lock(&self.period));
        (summarize(&mut period), self.failed.load(Ordering::Relaxed))
    }

    /// Every round trip since the start, and the failures.
    pub fn total(&self) -> (Option<Summary>, u64) {
        let mut all = lock(&self.all).clone();
        (summarize(&mut all), self.failed.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let mut micros: Vec<u32> = (1..=100).rev().map(|ms| ms * 1000).collect();
        let s = summarize(&mut micros).unwrap();
        assert_eq!(s.count, 100);
        assert_eq!(s.p50, Duration::from_millis(50));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(s.max, Duration::from_millis(100));
        assert_eq!(summarize(&mut []), None);
    }

    #[test]
    fn a_power_cut_ends_when_every_container_was_reported_ready() {
        let stats = Stats::default();
        stats.power_cut(2, HashSet::from(["a-1".to_string(), "a-2".to_string()]));
        stats.answered(Duration::from_millis(1), ["a-1", "b-9"].into_iter());
        assert_eq!(stats.still_moving(), 1);
        stats.answered(Duration::from_millis(1), ["a-2"].into_iter());
        assert_eq!(stats.still_moving(), 0);
    }
}
