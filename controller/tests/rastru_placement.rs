//! Where the scheduler puts the production Rastru stack (manifests/rastru/) on a mix of real
//! boards: Cassandra members only on the big labelled ones, never on a 512 MB SheevaPlug or a
//! small Pi, while the proxy and the app run there too. The manifests are the files as shipped.

use std::collections::BTreeMap;
use std::path::Path;

use texu_api::{
    parse_manifests, Arch, Container, ContainerPhase, ContainerStatus, Manifest, Node, NodePhase,
    NodeSpec, NodeStatus, Role,
};
use texu_controller::scheduler::{plan, Catalog};

const NOW: i64 = 1_795_564_800;
const GIB: u64 = 1 << 30;

fn rastru() -> Vec<Role> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/rastru");
    ["cassandra.yaml", "app.yaml", "proxy.yaml"]
        .iter()
        .flat_map(|f| {
            let path = dir.join(f);
            let text = std::fs::read_to_string(&path).expect("a manifests/rastru file");
            parse_manifests(f, &text)
                .unwrap_or_else(|d| panic!("{f}: {d:#?}"))
                .into_iter()
                .map(|Manifest::Role(r)| r)
        })
        .map(|mut r| {
            r.metadata.generation = 1;
            r
        })
        .collect()
}

/// A Ready board with what its agent reports (MemTotal is a little under the RAM on the box).
fn board(name: &str, arch: Arch, cpus: u32, memory_bytes: u64, labels: &[(&str, &str)]) -> Node {
    let mut n = Node::new(
        name,
        NodeSpec {
            address: "198.18.0.2".into(),
            arch,
            cpus,
            memory_bytes,
            subnet: None,
            unschedulable: false,
            draining: false,
        },
    );
    n.metadata.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    n.status = Some(NodeStatus {
        phase: NodePhase::Ready,
        ..Default::default()
    });
    n
}

/// Plans until nothing changes, every placed container turning Ready (members start in order).
fn settle(roles: &[Role], nodes: &[Node]) -> Vec<Container> {
    let mut containers: Vec<Container> = Vec::new();
    for _ in 0..20 {
        let p = plan(roles, nodes, &containers, &Catalog::new(), NOW);
        if p.is_empty() {
            break;
        }
        containers.retain(|c| !p.delete.contains(&c.metadata.name));
        for u in p.update {
            if let Some(c) = containers
                .iter_mut()
                .find(|c| c.metadata.name == u.metadata.name)
            {
                *c = u;
            }
        }
        containers.extend(p.create);
        for c in containers.iter_mut().filter(|c| c.spec.node.is_some()) {
            c.status = Some(ContainerStatus {
                phase: ContainerPhase::Ready,
                address: Some("198.19.1.2".into()),
                ..Default::default()
            });
        }
    }
    containers
}

/// Container name -> its board ("" when pending), and the pending ones' messages.
fn placed(containers: &[Container]) -> (BTreeMap<String, String>, Vec<String>) {
    let on = containers
        .iter()
        .map(|c| {
            (
                c.metadata.name.clone(),
                c.spec.node.clone().unwrap_or_default(),
            )
        })
        .collect();
    let pending = containers
        .iter()
        .filter(|c| c.spec.node.is_none())
        .map(|c| {
            let message = c.status.as_ref().and_then(|s| s.message.clone());
            format!("{}: {}", c.metadata.name, message.unwrap_or_default())
        })
        .collect();
    (on, pending)
}

#[test]
fn cassandra_goes_to_the_big_labelled_boards_and_the_small_ones_still_run_proxy_and_app() {
    let yes = [("cassandra", "yes")];
    let nodes = vec![
        board("pi5-a", Arch::Arm64, 4, 8 * GIB - (200 << 20), &yes),
        board("pi4-b", Arch::Arm64, 4, 4 * GIB - (300 << 20), &yes),
        board("nuc-c", Arch::Amd64, 4, 8 * GIB, &yes),
        // Unlabelled but big: no member without the label.
        board("pi5-d", Arch::Arm64, 4, 8 * GIB, &[]),
        // Labelled but small: the memory request keeps members off.
        board("pi4-2g", Arch::Arm64, 4, 2 * GIB - (200 << 20), &yes),
        board("sheevaplug", Arch::Armel, 1, 512 << 20, &yes),
    ];
    let (on, pending) = placed(&settle(&rastru(), &nodes));
    assert!(pending.is_empty(), "pending: {pending:?}");
    let mut members: Vec<&str> = (0..3)
        .map(|i| on[&format!("cassandra-{i}")].as_str())
        .collect();
    members.sort();
    assert_eq!(members, ["nuc-c", "pi4-b", "pi5-a"], "{on:?}");
    for (name, node) in &on {
        assert!(!node.is_empty(), "{name} not placed: {on:?}");
    }
}

#[test]
fn on_small_boards_alone_proxy_and_app_run_and_cassandra_waits_for_insufficient_memory() {
    let yes = [("cassandra", "yes")];
    let nodes = vec![
        board("sheevaplug-1", Arch::Armel, 1, 512 << 20, &yes),
        board("sheevaplug-2", Arch::Armel, 1, 512 << 20, &yes),
        board("pi3", Arch::Arm64, 4, GIB - (100 << 20), &yes),
    ];
    let (on, pending) = placed(&settle(&rastru(), &nodes));
    for name in ["proxy-0", "proxy-1", "app-0", "app-1", "app-2"] {
        assert!(!on[name].is_empty(), "{name} is not placed: {on:?}");
    }
    assert!(
        on.iter()
            .any(|(n, b)| !n.starts_with("cassandra") && b.starts_with("sheevaplug-")),
        "nothing on a SheevaPlug: {on:?}"
    );
    // Members start in order: only the first exists, pending, and says why.
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert!(
        pending[0].starts_with("cassandra-0: ") && pending[0].contains("insufficient memory"),
        "{pending:?}"
    );
}
