//! The controller's Prometheus metrics: requests by route and status, latency, objects by kind,
//! events by kind.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

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
        Metrics {
            registry,
            requests,
            latency,
            objects: objects.clone(),
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
}
