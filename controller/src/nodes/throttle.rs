//! Slowing down repeated bad joins (a wrong token, a name that is taken) per source address.
//!
//! The first few failures cost nothing, so a typo does not lock a board out; after that each
//! failure shuts the address out for twice as long as the one before, up to a minute, and the
//! API answers 429 with `Retry-After` meanwhile. An address that stays quiet is forgotten. The
//! normal path (a good join) only looks the address up.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Failures from one address that are let through before it is shut out.
pub const FREE_FAILURES: u32 = 3;
/// The longest an address is shut out after one failure.
pub const MAX_PENALTY: Duration = Duration::from_secs(60);
/// An address with no failure for this long starts afresh.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Addresses remembered at most; beyond it the quiet ones are forgotten first.
const MAX_TRACKED: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last_failure: Instant,
    blocked_until: Instant,
}

/// Failed joins per source address.
#[derive(Debug, Default)]
pub struct JoinThrottle {
    records: Mutex<HashMap<IpAddr, Record>>,
}

impl JoinThrottle {
    /// How long `from` must still wait, if it is shut out now.
    pub fn wait(&self, from: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let r = records.get(&from)?;
        (r.blocked_until > now).then(|| r.blocked_until - now)
    }

    /// Notes a failed join from `from`; returns how long it is shut out now (zero: not yet).
    pub fn fail(&self, from: IpAddr) -> Duration {
        let now = Instant::now();
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() >= MAX_TRACKED && !records.contains_key(&from) {
            records.retain(|_, r| now.duration_since(r.last_failure) < FORGET_AFTER);
            if records.len() >= MAX_TRACKED {
                if let Some(oldest) = records
                    .iter()
                    .min_by_key(|(_, r)| r.last_failure)
                    .map(|(ip, _)| *ip)
                {
                    records.remove(&oldest);
                }
            }
        }
        let r = records.entry(from).or_insert(Record {
            failures: 0,
            last_failure: now,
            blocked_until: now,
        });
        if now.duration_since(r.last_failure) >= FORGET_AFTER {
            r.failures = 0;
        }
        r.failures = r.failures.saturating_add(1);
        r.last_failure = now;
        let penalty = penalty(r.failures);
        r.blocked_until = now + penalty;
        penalty
    }

    /// A good join from `from`: its earlier failures are forgiven.
    pub fn succeed(&self, from: IpAddr) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.remove(&from);
    }
}

/// How long the `failures`-th failure shuts an address out: nothing for the first few, then
/// 1 s, 2 s, 4 s... up to [`MAX_PENALTY`].
fn penalty(failures: u32) -> Duration {
    if failures <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (failures - FREE_FAILURES - 1).min(16);
    Duration::from_secs(1u64 << doublings).min(MAX_PENALTY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failures_shut_an_address_out_for_longer_and_longer() {
        let t = JoinThrottle::default();
        let bad: IpAddr = "198.18.0.9".parse().unwrap();
        let good: IpAddr = "198.18.0.2".parse().unwrap();
        for _ in 0..FREE_FAILURES {
            assert_eq!(t.fail(bad), Duration::ZERO);
            assert_eq!(t.wait(bad), None, "a few typos cost nothing");
        }
        assert_eq!(t.fail(bad), Duration::from_secs(1));
        assert_eq!(t.wait(bad), Some(Duration::from_secs(1)));
        assert_eq!(t.wait(good), None, "other addresses are not slowed down");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(t.wait(bad), None);
        assert_eq!(t.fail(bad), Duration::from_secs(2));
        for _ in 0..20 {
            t.fail(bad);
        }
        assert_eq!(t.wait(bad), Some(MAX_PENALTY));
        tokio::time::advance(FORGET_AFTER).await;
        assert_eq!(t.fail(bad), Duration::ZERO, "a quiet address starts afresh");
        t.succeed(bad);
        assert_eq!(t.wait(bad), None);
    }

    #[tokio::test(start_paused = true)]
    async fn remembers_a_bounded_number_of_addresses() {
        let t = JoinThrottle::default();
        for i in 0..(MAX_TRACKED as u32 + 100) {
            t.fail(IpAddr::from(std::net::Ipv4Addr::from(0xC612_0000 + i)));
        }
        assert!(t.records.lock().unwrap().len() <= MAX_TRACKED);
    }
}
