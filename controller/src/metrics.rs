//! The controller's Prometheus metrics: requests by route and status, latency, objects by kind,
//! events by kind, nodes by phase, heartbeat age per node, containers pending by reason,
//! scheduling pass duration, failovers and their duration, and store operation latency.
//!
//! Series that the scheduler, the failover tracker and the store record are process-wide
//! ([`shared`]): they are recorded far from the API state that owns a [`Metrics`].

use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use texu_api::{Container, ContainerPhase, Node, NodePhase};

use crate::clock::parse_rfc3339;

/// Labels of one API request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route pattern (`/v1/roles/{name}`), never the raw path, to bound cardinality.
    pub route: String,
    pub method: String,
    pub status: u16,
}

/// Labels of an object count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// Every metric the controller exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    objects: Family<KindLabels, Gauge>,
    nodes: Family<PhaseLabels, Gauge>,
    heartbeat_age: Family<NodeLabels, Gauge<f64, AtomicU64>>,
    pending: Family<ReasonLabels, Gauge>,
    failovers_open: Gauge,
    failover_open_seconds: Gauge<f64, AtomicU64>,
}

/// Labels of a count by phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

/// Labels of a per-board series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
}

/// Labels of a count by reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Labels of a store operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

/// Labels of a failover count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// The series recorded outside the API, shared by every [`Metrics`] of the process.
struct Shared {
    passes: Histogram,
    store_ops: Family<OpLabels, Histogram>,
    store_errors: Family<OpLabels, Counter>,
    failovers: Family<OutcomeLabels, Counter>,
    failover_durations: Histogram,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let failovers = Family::<OutcomeLabels, Counter>::default();
        // Both outcomes exist from the start, so `increase()` sees the first failover.
        for outcome in ["completed", "returned"] {
            let _ = failovers.get_or_create(&OutcomeLabels { outcome });
        }
        Shared {
            passes: Histogram::new(exponential_buckets(0.0005, 2.5, 12)),
            store_ops: Family::new_with_constructor(
                (|| Histogram::new(exponential_buckets(0.00005, 3.0, 12))) as fn() -> Histogram,
            ),
            store_errors: Family::default(),
            failovers,
            // 0.25 s to about 8.5 min: the target is under 5 s.
            failover_durations: Histogram::new(exponential_buckets(0.25, 2.0, 12)),
        }
    })
}

/// Records one store operation (`get`, `range`, `txn`, ...), how long it took and whether it
/// failed.
pub fn store_operation(op: &'static str, seconds: f64, ok: bool) {
    let s = shared();
    s.store_ops.get_or_create(&OpLabels { op }).observe(seconds);
    if !ok {
        s.store_errors.get_or_create(&OpLabels { op }).inc();
    }
}

/// Records a failover that ended (see [`crate::failover`]).
pub fn failover_ended(outcome: crate::failover::Outcome) {
    let s = shared();
    s.failovers
        .get_or_create(&OutcomeLabels {
            outcome: outcome.as_str(),
        })
        .inc();
    if let crate::failover::Outcome::Completed { seconds } = outcome {
        s.failover_durations.observe(seconds);
    }
}

/// Records how long one scheduling pass took when dropped, whichever way the pass ends.
pub struct PassTimer(std::time::Instant);

impl PassTimer {
    pub fn start() -> Self {
        PassTimer(std::time::Instant::now())
    }
}

impl Drop for PassTimer {
    fn drop(&mut self) {
        shared().passes.observe(self.0.elapsed().as_secs_f64());
    }
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("texu_controller");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0001, 2.5, 14))) as fn() -> Histogram,
        );
        let objects = Family::<KindLabels, Gauge>::default();
        registry.register(
            "http_requests",
            "API requests by route, method and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "API request latency by route",
            latency.clone(),
        );
        registry.register("objects", "Stored objects by kind", objects.clone());
        let nodes = Family::<PhaseLabels, Gauge>::default();
        registry.register("nodes", "Boards by phase", nodes.clone());
        let heartbeat_age = Family::<NodeLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "node_heartbeat_age_seconds",
            "Seconds since each board's last heartbeat",
            heartbeat_age.clone(),
        );
        let pending = Family::<ReasonLabels, Gauge>::default();
        registry.register(
            "containers_pending",
            "Containers in phase Pending by reason",
            pending.clone(),
        );
        let shared = shared();
        registry.register(
            "scheduling_pass_duration_seconds",
            "Duration of one scheduling pass",
            shared.passes.clone(),
        );
        registry.register(
            "store_operation_duration_seconds",
            "Latency of store operations by operation",
            shared.store_ops.clone(),
        );
        registry.register(
            "store_errors",
            "Failed store operations by operation",
            shared.store_errors.clone(),
        );
        registry.register(
            "failovers",
            "Failovers that ended: completed (every replacement Ready) or returned (the board came back first)",
            shared.failovers.clone(),
        );
        registry.register(
            "failover_duration_seconds",
            "From a board seen NotReady until all its replacements are Ready",
            shared.failover_durations.clone(),
        );
        let failovers_open = Gauge::<i64>::default();
        registry.register(
            "failovers_open",
            "Failovers under way",
            failovers_open.clone(),
        );
        let failover_open_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "failover_open_seconds",
            "How long the oldest failover under way has lasted (0 when none)",
            failover_open_seconds.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            objects,
            nodes,
            heartbeat_age,
            pending,
            failovers_open,
            failover_open_seconds,
        }
    }

    /// Also exports this controller's leadership: `leader` (1 while it leads),
    /// `elections_total` (terms it won) and `fenced_writes_total` (writes its fence refused).
    pub fn with_leadership(mut self, leadership: &crate::leader::Leadership) -> Self {
        let r = &mut self.registry;
        r.register(
            "leader",
            "1 while this controller leads",
            leadership.leading.clone(),
        );
        r.register(
            "elections",
            "Terms this controller won",
            leadership.elections.clone(),
        );
        r.register(
            "fenced_writes",
            "Leader writes refused because this controller no longer led",
            leadership.refused_writes.clone(),
        );
        self
    }

    /// Also exports how many events of each kind `events` recorded (`events_total{kind}`).
    pub fn with_events(mut self, events: &crate::events::Events) -> Self {
        self.registry
            .register("events", "Events recorded by kind", events.counts());
        self
    }

    /// Records one finished request.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method: method.to_string(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// Sets the number of stored objects of one kind.
    pub fn set_objects(&self, kind: &str, count: i64) {
        self.objects
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .set(count);
    }

    /// Sets the board and pending-container series from a snapshot taken at `now` (Unix seconds),
    /// and the failovers under way.
    pub fn set_cluster(&self, nodes: &[Node], containers: &[Container], now: i64) {
        let open = crate::failover::open_now();
        self.failovers_open.set(open.len() as i64);
        self.failover_open_seconds
            .set(open.into_iter().fold(0.0, f64::max));
        self.nodes.clear();
        for phase in [NodePhase::Ready, NodePhase::NotReady] {
            self.phase_gauge(phase.as_str()).set(0);
        }
        self.heartbeat_age.clear();
        for node in nodes {
            let status = node.status.clone().unwrap_or_default();
            self.phase_gauge(status.phase.as_str()).inc();
            let last = status.last_heartbeat.as_deref().and_then(parse_rfc3339);
            if let Some(last) = last {
                self.heartbeat_age
                    .get_or_create(&NodeLabels {
                        node: node.metadata.name.clone(),
                    })
                    .set((now - last).max(0) as f64);
            }
        }
        self.pending.clear();
        for c in containers {
            let status = c.status.clone().unwrap_or_default();
            if status.phase == ContainerPhase::Pending {
                let reason = status.reason.unwrap_or_else(|| "Unscheduled".to_string());
                self.pending.get_or_create(&ReasonLabels { reason }).inc();
            }
        }
    }

    fn phase_gauge(&self, phase: &str) -> impl std::ops::Deref<Target = Gauge> + '_ {
        self.nodes.get_or_create(&PhaseLabels {
            phase: phase.to_string(),
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        self.encode_as(Format::OpenMetrics)
    }

    /// Every metric in `format`.
    pub fn encode_as(&self, format: Format) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = match format {
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
        };
        out
    }
}

/// The text format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0, for clients that ask for it (Prometheus does).
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4, for everything else (curl, promtool).
    Prometheus,
}

impl Format {
    /// The format an `Accept` header asks for, as Prometheus's own clients negotiate it.
    pub fn from_accept(accept: Option<&str>) -> Format {
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_requests_latency_and_objects() {
        let m = Metrics::new();
        m.observe_request("/v1/roles", "GET", 200, 0.002);
        m.set_objects("role", 3);
        let text = m.encode();
        assert!(text.contains(
            "texu_controller_http_requests_total{route=\"/v1/roles\",method=\"GET\",status=\"200\"} 1"
        ));
        assert!(text.contains(
            "texu_controller_http_request_duration_seconds_count{route=\"/v1/roles\"} 1"
        ));
        assert!(text.contains("texu_controller_objects{kind=\"role\"} 3"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn prometheus_gets_openmetrics_and_other_clients_the_classic_text_format() {
        // What Prometheus 2.x sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        let m = Metrics::new();
        m.observe_request("/v1/roles", "GET", 200, 0.002);
        let classic = m.encode_as(Format::Prometheus);
        // promtool wants the help text under the counter's sample name.
        assert!(
            classic.contains("# HELP texu_controller_http_requests_total "),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"), "{classic}");
    }

    #[test]
    fn counts_events_by_kind() {
        let events = crate::events::Events::new();
        let m = Metrics::new().with_events(&events);
        events.record(texu_api::EventKind::Lost, "container/app-0", None, "gone");
        assert!(m
            .encode()
            .contains("texu_controller_events_total{kind=\"Lost\"} 1"));
    }

    #[test]
    fn counts_nodes_by_phase_heartbeat_age_and_pending_reasons() {
        let mut ready = crate::failover::tests::node("b1", NodePhase::Ready);
        if let Some(s) = ready.status.as_mut() {
            s.last_heartbeat = Some("1970-01-01T00:01:40Z".into());
        }
        let mut pending = Container::new("app-0", Default::default());
        pending.status = Some(texu_api::ContainerStatus {
            reason: Some("NoNodeFits".into()),
            ..Default::default()
        });
        let m = Metrics::new();
        m.set_cluster(&[ready], &[pending], 103);
        let text = m.encode();
        assert!(
            text.contains("texu_controller_nodes{phase=\"Ready\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("texu_controller_nodes{phase=\"NotReady\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("texu_controller_node_heartbeat_age_seconds{node=\"b1\"} 3.0"),
            "{text}"
        );
        assert!(
            text.contains("texu_controller_containers_pending{reason=\"NoNodeFits\"} 1"),
            "{text}"
        );
    }
}
