//! The exchange's Prometheus metrics: requests by route and status, request latency, transfers
//! by outcome, and data-layer latency by operation.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

// The request labels are the controller's, so both servers' request metrics read the same.
pub use texu_controller::metrics::{RequestLabels, RouteLabels};

/// Labels of a transfer outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// committed, pending, refused, rejected, repeated, conflict.
    pub outcome: String,
}

/// Labels of a data-layer call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.5, 14))
}

/// Every metric the exchange exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily<RouteLabels>,
    transfers: Family<OutcomeLabels, Counter>,
    store: HistogramFamily<OpLabels>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("texu_exchange");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = HistogramFamily::<RouteLabels>::new_with_constructor(latency_buckets);
        let transfers = Family::<OutcomeLabels, Counter>::default();
        let store = HistogramFamily::<OpLabels>::new_with_constructor(latency_buckets);
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
        registry.register(
            "transfers",
            "Transfer requests by outcome",
            transfers.clone(),
        );
        registry.register(
            "store_duration_seconds",
            "Data-layer call latency by operation",
            store.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            transfers,
            store,
        }
    }

    /// Counts one answered request.
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

    /// Counts one transfer outcome.
    pub fn transfer(&self, outcome: &str) {
        self.transfers
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Records how long one data-layer call took.
    pub fn observe_store(&self, op: &str, seconds: f64) {
        self.store
            .get_or_create(&OpLabels { op: op.to_string() })
            .observe(seconds);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
