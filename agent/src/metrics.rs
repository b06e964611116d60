//! The agent's Prometheus metrics: containers by phase, probe results, restarts, reconcile
//! duration, heartbeat round-trip, live template steps, and each container's CPU and memory
//! use next to its limits, served with `/healthz` on `--metrics-listen`.

#[path = "metrics_containers.rs"]
mod containers;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use texu_api::{Container, ContainerPhase};

use crate::runtime::Runtime;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FileLabels {
    step: String,
    outcome: String,
}

struct Metrics {
    registry: Registry,
    files: Family<FileLabels, Counter>,
    containers: Family<PhaseLabels, Gauge>,
    restarts: Family<ReasonLabels, Counter>,
    probe_failures: Counter,
    reconcile: Histogram,
    heartbeat: Histogram,
    usage: Arc<containers::Containers>,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let mut registry = Registry::with_prefix("texu_agent");
        let containers = Family::<PhaseLabels, Gauge>::default();
        let restarts = Family::<ReasonLabels, Counter>::default();
        let probe_failures = Counter::default();
        let files = Family::<FileLabels, Counter>::default();
        registry.register(
            "file_steps",
            "Live template steps (render, check, reload) by outcome (ok, failed)",
            files.clone(),
        );
        let reconcile = Histogram::new(exponential_buckets(0.0001, 3.0, 12));
        let heartbeat = Histogram::new(exponential_buckets(0.0005, 2.5, 12));
        registry.register("containers", "Containers by phase", containers.clone());
        registry.register("restarts", "Container restarts by reason", restarts.clone());
        registry.register(
            "probe_failures",
            "Probe-caused restarts (liveness failures)",
            probe_failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile pass",
            reconcile.clone(),
        );
        registry.register(
            "heartbeat_rtt_seconds",
            "Round-trip time of heartbeats to the controller",
            heartbeat.clone(),
        );
        let usage = Arc::new(containers::Containers::default());
        registry.register_collector(Box::new(usage.clone()));
        Metrics {
            usage,
            registry,
            files,
            containers,
            restarts,
            probe_failures,
            reconcile,
            heartbeat,
        }
    })
}

/// Records a reconcile pass and the phases it left containers in.
pub fn reconciled(took: Duration, phases: &[ContainerPhase]) {
    let m = metrics();
    m.reconcile.observe(took.as_secs_f64());
    m.containers.clear();
    for phase in phases {
        m.containers
            .get_or_create(&PhaseLabels {
                phase: phase.as_str().to_string(),
            })
            .inc();
    }
}

/// Sets the containers assigned to this board, whose use and limits a scrape shows.
pub fn assigned<'a>(containers: impl IntoIterator<Item = &'a Container>) {
    let placed = containers.into_iter().map(containers::Placed::of).collect();
    metrics().usage.set(placed);
}

/// Records a container restart and why.
pub fn restarted(reason: &str) {
    let m = metrics();
    m.restarts
        .get_or_create(&ReasonLabels {
            reason: reason.to_string(),
        })
        .inc();
    if reason == "LivenessFailed" {
        m.probe_failures.inc();
    }
}

/// Records one live template step (`render`, `check`, `reload`) and whether it worked.
pub fn file_step(step: &str, ok: bool) {
    metrics()
        .files
        .get_or_create(&FileLabels {
            step: step.to_owned(),
            outcome: if ok { "ok" } else { "failed" }.to_owned(),
        })
        .inc();
}

/// Records a heartbeat's round trip.
pub fn heartbeat_rtt(took: Duration) {
    metrics().heartbeat.observe(took.as_secs_f64());
}

/// The OpenMetrics text exposition.
pub fn encode() -> String {
    encode_for(Some("application/openmetrics-text")).1
}

/// The exposition in the format an `Accept` header asks for, with its `Content-Type`:
/// OpenMetrics when asked (Prometheus asks), else the classic text format 0.0.4 (curl,
/// promtool), as Prometheus's own clients negotiate it.
pub fn encode_for(accept: Option<&str>) -> (&'static str, String) {
    let mut out = String::new();
    let registry = &metrics().registry;
    // Writing into a String cannot fail.
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        let _ = prometheus_client::encoding::text::encode(&mut out, registry);
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            out,
        )
    } else {
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
        ("text/plain; version=0.0.4; charset=utf-8", out)
    }
}

/// Serves `/metrics` and `/healthz` on `addr` until `stop`; a scrape reads each container's
/// use through `runtime`.
pub async fn serve(
    addr: std::net::SocketAddr,
    runtime: Arc<dyn Runtime>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot serve metrics");
            return;
        }
    };
    let stopped = async move {
        let mut stop = stop;
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        let (mut conn, _) = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let runtime = runtime.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            if path == "/metrics" {
                metrics().usage.sample(runtime.as_ref()).await;
            }
            let accept = request.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("accept").then_some(value.trim())
            });
            let (status, kind, body) = match path {
                "/metrics" => {
                    let (kind, body) = encode_for(accept);
                    ("200 OK", kind, body)
                }
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
        });
    }
}
