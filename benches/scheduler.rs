//! Scheduler benchmark: placing 10,000 containers onto 1,000 nodes in one pass (target < 1 s).

use criterion::{criterion_group, criterion_main, Criterion};
use texu_api::{Arch, Node, NodePhase, NodeSpec, NodeStatus, Quantity, Role, RoleSpec};
use texu_controller::scheduler::{plan, Catalog};

fn nodes(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| {
            let mut node = Node::new(
                format!("board-{i}"),
                NodeSpec {
                    address: format!("198.18.{}.{}", i / 250, i % 250 + 2),
                    arch: if i % 4 == 0 { Arch::Arm64 } else { Arch::Amd64 },
                    cpus: 4,
                    memory_bytes: 4 << 30,
                    subnet: None,
                    unschedulable: false,
                    draining: false,
                },
            );
            node.metadata
                .labels
                .insert("site".into(), format!("site-{}", i % 10));
            node.status = Some(NodeStatus {
                phase: NodePhase::Ready,
                ..Default::default()
            });
            node
        })
        .collect()
}

/// 100 roles of 100 replicas each, with requests, some with arch and selector constraints.
fn roles() -> Vec<Role> {
    (0..100)
        .map(|i| {
            let mut spec = RoleSpec::with_image("host");
            spec.replicas = 100;
            spec.resources.cpu = Some(Quantity("100m".into()));
            spec.resources.memory = Some(Quantity("64Mi".into()));
            if i % 3 == 0 {
                spec.placement.arch = vec![Arch::Amd64];
            }
            if i % 5 == 0 {
                spec.placement.max_per_node = Some(1);
            }
            let mut role = Role::new(format!("role-{i}"), spec);
            role.metadata.generation = 1;
            role
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let (nodes, roles) = (nodes(1000), roles());
    let catalog = Catalog::new();
    let placed = plan(&roles, &nodes, &[], &catalog, 0);
    assert_eq!(placed.create.len(), 10_000);
    assert!(
        placed.create.iter().all(|c| c.spec.node.is_some()),
        "everything fits"
    );
    let mut group = c.benchmark_group("scheduler");
    group.sample_size(10);
    group.bench_function("place 10,000 containers on 1,000 nodes", |b| {
        b.iter(|| plan(&roles, &nodes, &[], &catalog, 0))
    });
    // A converged cluster: everything placed, the pass finds nothing to do.
    let converged = placed.create.clone();
    group.bench_function("converged pass, 10,000 containers, 1,000 nodes", |b| {
        b.iter(|| plan(&roles, &nodes, &converged, &catalog, 0))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
