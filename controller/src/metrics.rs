//! The controller's Prometheus metrics: requests by route and status, latency, objects by kind,
//! events by kind, nodes by phase, heartbeat age per node, containers pending by reason and
//! scheduling pass duration.

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

/// Durations of scheduling passes, shared by every [`Metrics`] of the process.
fn scheduling_passes() -> &'static Histogram {
    static PASSES: OnceLock<Histogram> = OnceLock::new();
    PASSES.get_or_init(|| Histogram::new(exponential_buckets(0.0005, 2.5, 12)))
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
        scheduling_passes().observe(self.0.elapsed().as_secs_f64());
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
        registry.register(
            "scheduling_pass_duration_seconds",
            "Duration of one scheduling pass",
            scheduling_passes().clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            objects,
            nodes,
            heartbeat_age,
            pending,
        }
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

    /// Sets the board and pending-container series from a snapshot taken at `now` (Unix seconds).
    pub fn set_cluster(&self, nodes: &[Node], containers: &[Container], now: i64) {
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
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
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
        let mut ready = Node::new(
            "b1",
            texu_api::NodeSpec {
                address: "198.18.0.2".into(),
                arch: texu_api::Arch::Amd64,
                cpus: 2,
                memory_bytes: 1 << 30,
                subnet: None,
                unschedulable: false,
                draining: false,
            },
        );
        ready.status = Some(texu_api::NodeStatus {
            phase: NodePhase::Ready,
            last_heartbeat: Some("1970-01-01T00:01:40Z".into()),
            ..Default::default()
        });
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
