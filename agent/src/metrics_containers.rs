//! Each container's CPU and memory use, read from its cgroup at scrape time, next to the limits
//! its role set: `container_cpu_seconds_total`, `container_memory_bytes`,
//! `container_cpu_limit_cores` and `container_memory_limit_bytes`, labelled by container and
//! role.
//!
//! The reconciler says which containers this board holds ([`Containers::set`]) when its list
//! changes; a scrape reads the use of each through the runtime ([`Containers::sample`]), so
//! nothing is read while nobody scrapes. A container that does not run has its limits but no
//! use.

use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use texu_api::Container;

use crate::runtime::{Runtime, Usage};

/// The labels of a per-container series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContainerLabels {
    pub container: String,
    pub role: String,
}

/// One container on this board and the limits its role sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub labels: ContainerLabels,
    pub memory_limit_bytes: Option<u64>,
    pub cpu_limit_millis: Option<u64>,
}

impl Placed {
    /// What the metrics show of a container the controller assigned here.
    pub fn of(c: &Container) -> Placed {
        let resources = c.spec.template.as_ref().map(|t| &t.resources);
        Placed {
            labels: ContainerLabels {
                container: c.metadata.name.clone(),
                role: c.spec.role.clone(),
            },
            memory_limit_bytes: resources
                .and_then(|r| r.memory.as_ref())
                .and_then(|q| q.bytes().ok()),
            cpu_limit_millis: resources
                .and_then(|r| r.cpu.as_ref())
                .and_then(|q| q.cpu_millis().ok()),
        }
    }
}

/// The containers of this board and their use at the last scrape.
#[derive(Debug, Default)]
pub struct Containers {
    placed: Mutex<Vec<Placed>>,
    sampled: Mutex<Vec<(ContainerLabels, Usage)>>,
}

impl Containers {
    /// Sets the containers this board holds.
    pub fn set(&self, placed: Vec<Placed>) {
        if let Ok(mut p) = self.placed.lock() {
            *p = placed;
        }
    }

    fn placed(&self) -> Vec<Placed> {
        self.placed.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Reads the use of every container that runs.
    pub async fn sample(&self, runtime: &dyn Runtime) {
        let mut sampled = Vec::new();
        for p in self.placed() {
            if let Ok(usage) = runtime.usage(&p.labels.container).await {
                sampled.push((p.labels, usage));
            }
        }
        if let Ok(mut s) = self.sampled.lock() {
            *s = sampled;
        }
    }
}

/// Writes one family of series, or nothing when it has none.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: Vec<(&ContainerLabels, M)>,
) -> Result<(), std::fmt::Error> {
    let Some(first) = series.first() else {
        return Ok(());
    };
    let kind: MetricType = first.1.metric_type();
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in &series {
        value.encode(metric.encode_family(*labels)?)?;
    }
    Ok(())
}

impl Collector for Containers {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let placed = self.placed();
        let sampled = self.sampled.lock().map(|s| s.clone()).unwrap_or_default();
        family(
            &mut encoder,
            "container_cpu_seconds",
            "CPU time the container used since it started, from its cgroup",
            sampled
                .iter()
                .map(|(l, u)| (l, ConstCounter::new(u.cpu_nanos as f64 / 1e9)))
                .collect(),
        )?;
        family(
            &mut encoder,
            "container_memory_bytes",
            "Memory charged to the container's cgroup (page cache included)",
            sampled
                .iter()
                .map(|(l, u)| (l, ConstGauge::new(u.memory_bytes as i64)))
                .collect(),
        )?;
        family(
            &mut encoder,
            "container_cpu_limit_cores",
            "The CPU limit its role sets (resources.cpu), in cores",
            placed
                .iter()
                .filter_map(|p| {
                    Some((&p.labels, ConstGauge::new(p.cpu_limit_millis? as f64 / 1e3)))
                })
                .collect(),
        )?;
        family(
            &mut encoder,
            "container_memory_limit_bytes",
            "The memory limit its role sets (resources.memory)",
            placed
                .iter()
                .filter_map(|p| Some((&p.labels, ConstGauge::new(p.memory_limit_bytes? as i64))))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;
    use prometheus_client::registry::Registry;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_scrape_shows_the_use_of_running_containers_next_to_their_limits() {
        let runtime = FakeRuntime::new();
        let mut spec = texu_api::RoleSpec::with_image("host");
        spec.resources.memory = Some("64Mi".into());
        spec.resources.cpu = Some("500m".into());
        let container = |name: &str| {
            Container::new(
                name,
                texu_api::ContainerSpec {
                    role: "web".into(),
                    template: Some(spec.clone()),
                    ..Default::default()
                },
            )
        };
        let runs = container("web-0");
        let stopped = container("web-1");
        let mut cs = runtime::ContainerSpec::new("web-0".to_string(), runtime::Image::Host);
        cs.command = vec!["/bin/sleep".into(), "60".into()];
        runtime.create(&cs).await.unwrap();
        runtime.start("web-0").await.unwrap();
        runtime.set_usage(
            "web-0",
            Usage {
                cpu_nanos: 2_500_000_000,
                memory_bytes: 5 << 20,
            },
        );
        let containers = Arc::new(Containers::default());
        containers.set(vec![Placed::of(&runs), Placed::of(&stopped)]);
        containers.sample(&runtime).await;
        let mut registry = Registry::with_prefix("texu_agent");
        registry.register_collector(Box::new(containers));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let l = |name: &str| format!("{{container=\"{name}\",role=\"web\"}}");
        for line in [
            format!("texu_agent_container_cpu_seconds_total{} 2.5", l("web-0")),
            format!("texu_agent_container_memory_bytes{} 5242880", l("web-0")),
            format!(
                "texu_agent_container_memory_limit_bytes{} 67108864",
                l("web-0")
            ),
            format!(
                "texu_agent_container_memory_limit_bytes{} 67108864",
                l("web-1")
            ),
            format!("texu_agent_container_cpu_limit_cores{} 0.5", l("web-1")),
        ] {
            assert!(text.contains(&line), "no {line} in\n{text}");
        }
        assert!(
            !text.contains(&format!("memory_bytes{}", l("web-1"))),
            "{text}"
        );
    }

    use crate::runtime;
}
