//! The heartbeat: this board's facts and its containers' latest statuses sent to the
//! controller every period, and promptly when a container's phase changed; its outcome tells
//! [`Contact`] whether the board is cut off.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex, Notify};

use super::client::{Client, ClientError, Reported};
use super::contact::Contact;
use super::{node_spec, Config};

/// A random duration in `[0, max)` for chaos testing; no need for a good generator here.
fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64 ^ d.as_secs());
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    max.mul_f64((x >> 11) as f64 / (1u64 << 53) as f64)
}

/// How long a prompt heartbeat waits for more changes of the same burst, and how close the
/// regular one may be due for a prompt one to be left to it.
const PROMPT_GATHER: Duration = Duration::from_millis(50);

/// Sends a heartbeat every period with the latest container statuses, and a prompt one as soon
/// as a container's phase changed (a replacement is seen Ready without waiting for the period);
/// never gives up.
pub(super) async fn heartbeat_loop(
    client: Client,
    credential: String,
    config: Config,
    statuses: Arc<Mutex<Vec<Reported>>>,
    changed: Arc<Notify>,
    contact: Arc<Contact>,
    mut stop: watch::Receiver<bool>,
) {
    let spec = node_spec(&config);
    let mut failures = 0u32;
    let mut prompt = false;
    let mut next_regular = tokio::time::Instant::now();
    loop {
        let containers = statuses.lock().await.clone();
        let (c, cred, name, labels, spec2) = (
            client.clone(),
            credential.clone(),
            config.name.clone(),
            config.labels.clone(),
            spec.clone(),
        );
        let injected = jitter(config.heartbeat_jitter);
        if !injected.is_zero() {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(injected) => {}
            }
        }
        let started = tokio::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            c.heartbeat(&cred, &name, &spec2, &labels, &containers, prompt)
        })
        .await;
        let delay = match result {
            Ok(Ok(())) => {
                if failures > 0 {
                    tracing::info!("controller reachable again");
                }
                failures = 0;
                contact.heartbeat_ok(started.into_std());
                crate::metrics::heartbeat_rtt(started.elapsed());
                config.heartbeat
            }
            Ok(Err(e)) => {
                if matches!(e, ClientError::Unreachable { .. }) {
                    contact.heartbeat_unreachable();
                }
                failures += 1;
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(error = %e, failures, "heartbeat failed; containers keep running");
                }
                (config.heartbeat * 2u32.saturating_pow(failures.min(4)))
                    .min(Duration::from_secs(2))
            }
            Err(e) => {
                tracing::error!(error = %e, "heartbeat task failed");
                config.heartbeat
            }
        };
        // A prompt beat leaves the rhythm alone: the controller learns the link's usual delay
        // from the regular ones.
        if !prompt {
            next_regular = tokio::time::Instant::now() + delay;
        }
        let news = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep_until(next_regular) => false,
            // While failing, the regular beat's backoff decides.
            _ = changed.notified(), if failures == 0 => true,
        };
        prompt = false;
        if news {
            // Gather the rest of the burst; leave it to the regular beat if that is due anyway.
            tokio::time::sleep(PROMPT_GATHER).await;
            if next_regular <= tokio::time::Instant::now() + PROMPT_GATHER {
                tokio::time::sleep_until(next_regular).await;
            } else {
                prompt = true;
            }
        }
    }
}
