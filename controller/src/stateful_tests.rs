//! The stateful rules through the whole scheduler, with plain values: ordered start, retiring
//! one member at a time through a stop on request, and scaling that restarts nobody.

use super::*;
use crate::scheduler::{plan, Catalog};
use texu_api::{ContainerStatus, NodeSpec, NodeStatus, PreStop, RoleSpec};

const NOW: i64 = 1_795_564_800;

fn nodes(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| {
            let mut node = Node::new(
                format!("b{i}"),
                NodeSpec {
                    address: format!("198.18.0.{}", i + 2),
                    arch: texu_api::Arch::Amd64,
                    cpus: 4,
                    memory_bytes: 8 << 30,
                    subnet: None,
                    unschedulable: false,
                    draining: false,
                },
            );
            node.status = Some(NodeStatus {
                phase: NodePhase::Ready,
                ..Default::default()
            });
            node
        })
        .collect()
}

fn ring(replicas: i64, generation: i64) -> Role {
    let mut spec = RoleSpec::with_image("host");
    spec.replicas = replicas;
    spec.stateful = true;
    spec.pre_stop = Some(PreStop {
        command: vec!["texu-nodetool".into(), "decommission".into()],
        timeout: Some("10m".into()),
    });
    let mut r = Role::new("cassandra", spec);
    r.metadata.generation = generation;
    r
}

/// Applies a plan the way the scheduling loop writes it.
fn apply(p: &Plan, containers: &mut Vec<Container>) {
    containers.retain(|c| !p.delete.contains(&c.metadata.name));
    for u in &p.update {
        if let Some(c) = containers
            .iter_mut()
            .find(|c| c.metadata.name == u.metadata.name)
        {
            *c = u.clone();
        }
    }
    containers.extend(p.create.iter().cloned());
    containers.sort_by_key(|c| c.spec.ordinal);
}

/// What an agent would report.
fn report(containers: &mut [Container], name: &str, phase: ContainerPhase) {
    let c = containers
        .iter_mut()
        .find(|c| c.metadata.name == name)
        .expect("container");
    c.status = Some(ContainerStatus {
        phase,
        ..Default::default()
    });
}

/// A ring of `n` Ready members, formed one at a time.
fn formed(n: i64, nodes: &[Node]) -> Vec<Container> {
    let mut containers = Vec::new();
    for i in 0..n {
        apply(
            &plan(&[ring(n, 1)], nodes, &containers, &Catalog::new(), NOW),
            &mut containers,
        );
        report(
            &mut containers,
            &format!("cassandra-{i}"),
            ContainerPhase::Ready,
        );
    }
    containers
}

fn names(cs: &[Container]) -> Vec<&str> {
    cs.iter().map(|c| c.metadata.name.as_str()).collect()
}

#[test]
fn members_start_one_at_a_time_each_once_those_before_are_ready() {
    let (nodes, mut containers) = (nodes(3), Vec::new());
    let roles = [ring(3, 1)];
    let p = plan(&roles, &nodes, &containers, &Catalog::new(), NOW);
    assert_eq!(names(&p.create), ["cassandra-0"]);
    apply(&p, &mut containers);
    // Running is not enough: only Ready lets the next one in.
    report(&mut containers, "cassandra-0", ContainerPhase::Running);
    assert!(plan(&roles, &nodes, &containers, &Catalog::new(), NOW).is_empty());
    report(&mut containers, "cassandra-0", ContainerPhase::Ready);
    let p = plan(&roles, &nodes, &containers, &Catalog::new(), NOW);
    assert_eq!(names(&p.create), ["cassandra-1"]);
    apply(&p, &mut containers);
    assert!(plan(&roles, &nodes, &containers, &Catalog::new(), NOW)
        .create
        .is_empty());
    report(&mut containers, "cassandra-1", ContainerPhase::Ready);
    let p = plan(&roles, &nodes, &containers, &Catalog::new(), NOW);
    assert_eq!(names(&p.create), ["cassandra-2"]);
    apply(&p, &mut containers);
    let boards: std::collections::BTreeSet<_> =
        containers.iter().map(|c| c.spec.node.clone()).collect();
    assert_eq!(boards.len(), 3, "one member per board: {containers:?}");

    // A member that exists is never held back: with cassandra-0 down, 1 and 2 stay as they
    // are, and a scale-up waits for it.
    report(&mut containers, "cassandra-2", ContainerPhase::Ready);
    report(&mut containers, "cassandra-0", ContainerPhase::Failed);
    let p = plan(&[ring(4, 2)], &nodes, &containers, &Catalog::new(), NOW);
    assert!(p.is_empty(), "{p:?}");
}

#[test]
fn scaling_gives_the_members_that_stay_no_new_generation() {
    let nodes = nodes(4);
    let containers = formed(3, &nodes);
    let p = plan(&[ring(4, 2)], &nodes, &containers, &Catalog::new(), NOW);
    assert_eq!(names(&p.create), ["cassandra-3"]);
    assert!(p.update.is_empty(), "no member restarts: {:?}", p.update);
    // A real change of the template still reaches every member.
    let mut changed = ring(3, 3);
    changed.spec.env.insert("X".into(), "1".into());
    let p = plan(&[changed], &nodes, &containers, &Catalog::new(), NOW);
    assert_eq!(p.update.len(), 3);
    assert!(p.update.iter().all(|c| c.spec.generation == 3));
}

#[test]
fn a_scale_down_stops_the_highest_first_and_removes_it_before_the_next() {
    let nodes = nodes(4);
    let mut containers = formed(4, &nodes);
    let roles = [ring(2, 2)];
    let p = plan(&roles, &nodes, &containers, &Catalog::new(), NOW);
    assert!(p.delete.is_empty() && p.create.is_empty(), "{p:?}");
    assert_eq!(names(&p.update), ["cassandra-3"]);
    assert_eq!(p.update[0].spec.desired, DesiredState::Stopped);
    apply(&p, &mut containers);
    // While its hook runs, nothing else moves.
    report(&mut containers, "cassandra-3", ContainerPhase::Stopping);
    assert!(plan(&roles, &nodes, &containers, &Catalog::new(), NOW).is_empty());
    report(&mut containers, "cassandra-3", ContainerPhase::Stopped);
    let p = plan(&roles, &nodes, &containers, &Catalog::new(), NOW);
    assert_eq!(p.delete, ["cassandra-3"]);
    assert!(p.update.is_empty(), "the next waits until this one is gone");
    apply(&p, &mut containers);
    let p = plan(&roles, &nodes, &containers, &Catalog::new(), NOW);
    assert_eq!(names(&p.update), ["cassandra-2"]);
    assert!(p.delete.is_empty());
    apply(&p, &mut containers);

    // Scaled back up before it was removed: it runs on, as it was.
    let p = plan(&[ring(3, 3)], &nodes, &containers, &Catalog::new(), NOW);
    assert_eq!(names(&p.update), ["cassandra-2"]);
    assert_eq!(p.update[0].spec.desired, DesiredState::Running);
}

#[test]
fn leaving_containers_stop_first_only_with_a_hook_or_state_and_a_board_to_run_it() {
    let mut nodes = nodes(2);
    let mut app = RoleSpec::with_image("host");
    app.replicas = 2;
    let mut hooked = app.clone();
    hooked.pre_stop = Some(PreStop {
        command: vec!["/bin/drain".into()],
        timeout: None,
    });
    let roles = [Role::new("app", app), Role::new("web", hooked), ring(1, 1)];
    let mut containers = Vec::new();
    for _ in 0..2 {
        apply(
            &plan(&roles, &nodes, &containers, &Catalog::new(), NOW),
            &mut containers,
        );
        for c in containers.iter_mut() {
            c.status = Some(ContainerStatus {
                phase: ContainerPhase::Ready,
                ..Default::default()
            });
        }
    }
    assert_eq!(containers.len(), 5);
    // Every role deleted: app's go at once, web's and the ring's are asked to stop, all at once.
    let p = plan(&[], &nodes, &containers, &Catalog::new(), NOW);
    let mut deleted = p.delete.clone();
    deleted.sort();
    assert_eq!(deleted, ["app-0", "app-1"]);
    let mut asked = names(&p.update);
    asked.sort();
    assert_eq!(asked, ["cassandra-0", "web-0", "web-1"]);
    apply(&p, &mut containers);
    // A board that is not Ready cannot run a hook: its containers go at once.
    let on_b1: Vec<String> = containers
        .iter()
        .filter(|c| c.spec.node.as_deref() == Some("b1"))
        .map(|c| c.metadata.name.clone())
        .collect();
    nodes[1].status = Some(NodeStatus {
        phase: NodePhase::NotReady,
        ..Default::default()
    });
    let mut p = plan(&[], &nodes, &containers, &Catalog::new(), NOW);
    p.delete.sort();
    assert_eq!(p.delete, on_b1);
}

#[test]
fn stops_on_request_become_events_with_what_the_hook_said() {
    let events = Events::new();
    let mut c = Container::new(
        "cassandra-3",
        texu_api::ContainerSpec {
            role: "cassandra".into(),
            ordinal: 3,
            node: Some("b3".into()),
            template: Some(ring(4, 1).spec),
            ..Default::default()
        },
    );
    record_update(&events, None, &c);
    assert!(events.list(0).is_empty(), "a running container is no stop");
    let before = c.clone();
    c.spec.desired = DesiredState::Stopped;
    record_update(&events, Some(&before), &c);
    record_update(&events, Some(&c), &c);
    c.status = Some(ContainerStatus {
        phase: ContainerPhase::Stopped,
        message: Some("preStop \"texu-nodetool decommission\" exited 0 after 41.2s".into()),
        ..Default::default()
    });
    record_removed(&events, &c);
    let got: Vec<_> = events
        .list(0)
        .into_iter()
        .map(|e| (e.kind, e.node, e.message))
        .collect();
    assert_eq!(
        got,
        [
            (
                EventKind::Stopping,
                Some("b3".into()),
                "cassandra-3 stops for a scale-down or its role's deletion; preStop \"texu-nodetool decommission\" runs first".into()
            ),
            (
                EventKind::Removed,
                Some("b3".into()),
                "cassandra-3 removed: preStop \"texu-nodetool decommission\" exited 0 after 41.2s".into()
            ),
        ]
    );
}
