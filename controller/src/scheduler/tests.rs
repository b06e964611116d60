//! Unit tests of the scheduler on plain values.

use super::*;
use texu_api::{Arch, Handoff, NodeSpec, NodeStatus, Quantity, RoleSpec};

const NOW: i64 = 1_795_564_800;

fn node(name: &str, arch: Arch, ready: bool) -> Node {
    let mut n = Node::new(
        name,
        NodeSpec {
            address: "198.18.0.2".into(),
            arch,
            cpus: 4,
            memory_bytes: 1 << 30,
            subnet: None,
            unschedulable: false,
            draining: false,
        },
    );
    n.status = Some(NodeStatus {
        phase: if ready {
            NodePhase::Ready
        } else {
            NodePhase::NotReady
        },
        ..Default::default()
    });
    n
}

fn role(name: &str, replicas: i64) -> Role {
    let mut spec = RoleSpec::with_image("host");
    spec.replicas = replicas;
    let mut r = Role::new(name, spec);
    r.metadata.generation = 1;
    r
}

fn apply(plan: &Plan, containers: &mut Vec<Container>) {
    containers.retain(|c| !plan.delete.contains(&c.metadata.name));
    for u in &plan.update {
        if let Some(c) = containers
            .iter_mut()
            .find(|c| c.metadata.name == u.metadata.name)
        {
            *c = u.clone();
        }
    }
    containers.extend(plan.create.iter().cloned());
}

fn per_node(containers: &[Container]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for c in containers {
        *m.entry(c.spec.node.clone().unwrap_or_default())
            .or_default() += 1;
    }
    m
}

#[test]
fn spreads_replicas_evenly_and_is_deterministic() {
    let nodes = vec![
        node("a", Arch::Amd64, true),
        node("b", Arch::Amd64, true),
        node("c", Arch::Amd64, true),
    ];
    let roles = vec![role("app", 6)];
    let p1 = plan(&roles, &nodes, &[], &Catalog::new(), NOW);
    assert_eq!(p1, plan(&roles, &nodes, &[], &Catalog::new(), NOW));
    assert_eq!(p1.create.len(), 6);
    let counts = per_node(&p1.create);
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [2, 2, 2]);
    assert_eq!(p1.create[0].metadata.name, "app-0");
    let mut containers = Vec::new();
    apply(&p1, &mut containers);
    assert!(
        plan(&roles, &nodes, &containers, &Catalog::new(), NOW).is_empty(),
        "a converged snapshot plans nothing"
    );
}

#[test]
fn scales_down_deletes_the_highest_ordinals_and_deleted_roles() {
    let nodes = vec![node("a", Arch::Amd64, true)];
    let mut containers = Vec::new();
    apply(
        &plan(
            &[role("app", 3), role("db", 1)],
            &nodes,
            &[],
            &Catalog::new(),
            NOW,
        ),
        &mut containers,
    );
    let p = plan(&[role("app", 1)], &nodes, &containers, &Catalog::new(), NOW);
    let mut deleted = p.delete.clone();
    deleted.sort();
    assert_eq!(deleted, ["app-1", "app-2", "db-0"]);
}

#[test]
fn unschedulable_reasons_are_counted() {
    let mut full = node("full", Arch::Amd64, true);
    full.spec.memory_bytes = 64 << 20;
    let nodes = vec![
        node("down", Arch::Amd64, false),
        node("arm", Arch::Arm64, true),
        full,
    ];
    let mut r = role("app", 1);
    r.spec.placement.arch = vec![Arch::Amd64];
    r.spec.resources.memory = Some(Quantity("128Mi".into()));
    let p = plan(&[r], &nodes, &[], &Catalog::new(), NOW);
    let status = p.create[0].status.clone().unwrap();
    assert_eq!(p.create[0].spec.node, None);
    assert_eq!(status.reason.as_deref(), Some("Unschedulable"));
    assert_eq!(
        status.message.as_deref(),
        Some("0/3 nodes: 1 insufficient memory, 1 not ready, 1 wrong architecture")
    );
}

#[test]
fn pending_containers_are_bound_when_a_node_arrives() {
    let mut containers = Vec::new();
    apply(
        &plan(&[role("app", 1)], &[], &[], &Catalog::new(), NOW),
        &mut containers,
    );
    assert_eq!(containers[0].spec.node, None);
    let p = plan(
        &[role("app", 1)],
        &[node("a", Arch::Amd64, true)],
        &containers,
        &Catalog::new(),
        NOW,
    );
    assert_eq!(p.update.len(), 1);
    assert_eq!(p.update[0].spec.node.as_deref(), Some("a"));
}

#[test]
fn scaling_or_a_new_file_text_keeps_the_containers_generation() {
    let nodes = vec![node("a", Arch::Amd64, true)];
    let with_file = |replicas: i64, generation: i64, text: &str| {
        let mut r = role("app", replicas);
        r.metadata.generation = generation;
        r.spec.files.push(texu_api::FileTemplate {
            path: "/etc/app.conf".into(),
            template: text.into(),
            ..Default::default()
        });
        r
    };
    let mut containers = Vec::new();
    apply(
        &plan(&[with_file(1, 1, "a")], &nodes, &[], &Catalog::new(), NOW),
        &mut containers,
    );
    // Scaling: the new replica is created, the one that stays is not even written.
    let r = with_file(2, 2, "a");
    let p = plan(&[r], &nodes, &containers, &Catalog::new(), NOW);
    assert_eq!(p.create.len(), 1);
    assert!(p.update.is_empty(), "no write, no restart: {:?}", p.update);
    apply(&p, &mut containers);
    // A new text for a live file: the template follows the role, the generation stays.
    let r = with_file(2, 3, "b");
    let p = plan(
        std::slice::from_ref(&r),
        &nodes,
        &containers,
        &Catalog::new(),
        NOW,
    );
    assert_eq!(p.update.len(), 2, "the template follows the role");
    assert!(
        p.update.iter().all(|c| c.spec.generation < 3),
        "no new containers"
    );
    apply(&p, &mut containers);
    let again = plan(&[r], &nodes, &containers, &Catalog::new(), NOW);
    assert!(again.update.is_empty(), "settled: {:?}", again.update);
}

#[test]
fn a_new_generation_updates_the_template_in_place() {
    let nodes = vec![node("a", Arch::Amd64, true)];
    let mut containers = Vec::new();
    apply(
        &plan(&[role("app", 1)], &nodes, &[], &Catalog::new(), NOW),
        &mut containers,
    );
    let mut r = role("app", 1);
    r.metadata.generation = 2;
    r.spec.command = vec!["/bin/true".into()];
    let p = plan(&[r], &nodes, &containers, &Catalog::new(), NOW);
    assert_eq!(p.update.len(), 1);
    assert_eq!(p.update[0].spec.generation, 2);
    assert_eq!(
        p.update[0].spec.node.as_deref(),
        Some("a"),
        "stays on its node"
    );
}

#[test]
fn stored_images_go_only_where_a_variant_exists_and_carry_its_digest() {
    let nodes = vec![node("pi", Arch::Arm64, true), node("pc", Arch::Amd64, true)];
    let mut r = role("app", 2);
    r.spec.image = "exchange:1.0".into();
    let p = plan(&[r.clone()], &nodes, &[], &Catalog::new(), NOW);
    let status = p.create[0].status.clone().unwrap();
    assert!(status.message.unwrap().contains("not in the image store"));
    let mut catalog = Catalog::new();
    catalog.insert(
        "exchange:1.0".into(),
        BTreeMap::from([(Arch::Arm64, "sha256:aa".to_string())]),
    );
    let p = plan(&[r], &nodes, &[], &catalog, NOW);
    assert_eq!(p.create[0].spec.node.as_deref(), Some("pi"));
    assert_eq!(p.create[0].spec.image_digest.as_deref(), Some("sha256:aa"));
    assert_eq!(
        p.create[1].spec.node.as_deref(),
        Some("pi"),
        "the amd64 board has no variant"
    );
    let mut armonly = role("solo", 1);
    armonly.spec.image = "exchange:1.0".into();
    let p = plan(&[armonly], &nodes[1..], &[], &catalog, NOW);
    assert_eq!(
        p.create[0].status.clone().unwrap().message.as_deref(),
        Some("0/1 nodes: 1 no image variant for its architecture")
    );
}

#[test]
fn containers_of_a_lost_board_move_after_lost_after_and_stateful_ones_stay() {
    let nodes = vec![node("a", Arch::Amd64, true), node("b", Arch::Amd64, true)];
    let mut app = role("app", 2);
    app.spec.placement.max_per_node = Some(1);
    let mut db = role("db", 2);
    db.spec.stateful = true;
    db.spec.placement.max_per_node = Some(1);
    let roles = vec![app.clone(), db.clone()];
    let mut containers = Vec::new();
    // Stateful members start in order: db-1 once db-0 is Ready.
    for _ in 0..2 {
        apply(
            &plan(&roles, &nodes, &containers, &Catalog::new(), NOW),
            &mut containers,
        );
        all_ready(&mut containers);
    }
    let on_b = |cs: &[Container], role: &str| {
        cs.iter()
            .find(|c| c.spec.role == role && c.spec.node.as_deref() == Some("b"))
            .map(|c| c.metadata.name.clone())
            .unwrap()
    };
    let (app_b, db_b) = (on_b(&containers, "app"), on_b(&containers, "db"));
    // Board b goes silent at NOW; a third board c is there to take its work.
    let mut down = nodes.clone();
    down[1].status = Some(NodeStatus {
        phase: NodePhase::NotReady,
        since: Some(crate::clock::format_rfc3339(NOW)),
        ..Default::default()
    });
    down.push(node("c", Arch::Amd64, true));
    let p = plan(&roles, &down, &containers, &Catalog::new(), NOW);
    let moved = p.update.iter().find(|c| c.metadata.name == app_b).unwrap();
    assert_eq!(
        moved.spec.node.as_deref(),
        Some("c"),
        "lostAfter 0: replaced at once"
    );
    assert_eq!(
        moved.status.as_ref().unwrap().reason.as_deref(),
        Some("Replaced")
    );
    let member = p.update.iter().find(|c| c.metadata.name == db_b).unwrap();
    assert_eq!(
        member.spec.node.as_deref(),
        Some("b"),
        "a stateful member stays"
    );
    assert_eq!(member.status.as_ref().unwrap().phase, ContainerPhase::Lost);

    // With lostAfter 30s the container is Lost until the board has been away that long.
    let mut patient = app.clone();
    patient.spec.disconnect.lost_after = Some(texu_api::Duration("30s".into()));
    let roles = vec![patient, db];
    let p = plan(&roles, &down, &containers, &Catalog::new(), NOW + 10);
    let waiting = p.update.iter().find(|c| c.metadata.name == app_b).unwrap();
    assert_eq!(waiting.spec.node.as_deref(), Some("b"));
    assert_eq!(waiting.status.as_ref().unwrap().phase, ContainerPhase::Lost);
    let p = plan(&roles, &down, &containers, &Catalog::new(), NOW + 31);
    let moved = p.update.iter().find(|c| c.metadata.name == app_b).unwrap();
    assert_eq!(moved.spec.node.as_deref(), Some("c"));
}

#[test]
fn a_lost_container_with_nowhere_to_go_stays_bound_to_its_board() {
    let nodes = vec![node("a", Arch::Amd64, true), node("b", Arch::Amd64, true)];
    let mut r = role("echo", 2);
    r.spec.placement.max_per_node = Some(1);
    let mut containers = Vec::new();
    apply(
        &plan(&[r.clone()], &nodes, &[], &Catalog::new(), NOW),
        &mut containers,
    );
    let mut down = nodes.clone();
    down[1].status = Some(NodeStatus {
        phase: NodePhase::NotReady,
        since: Some(crate::clock::format_rfc3339(NOW)),
        ..Default::default()
    });
    let p = plan(&[r], &down, &containers, &Catalog::new(), NOW);
    assert_eq!(p.update.len(), 1);
    let lost = &p.update[0];
    assert_eq!(lost.spec.node.as_deref(), Some("b"), "not unbound");
    let status = lost.status.as_ref().unwrap();
    assert_eq!(status.phase, ContainerPhase::Lost);
    assert!(
        status
            .message
            .as_deref()
            .unwrap()
            .contains("maxPerNode reached"),
        "{status:?}"
    );
}

#[test]
fn selector_max_per_node_and_pack() {
    let mut a = node("a", Arch::Amd64, true);
    a.metadata.labels.insert("site".into(), "home".into());
    let nodes = vec![a, node("b", Arch::Amd64, true)];
    let mut r = role("app", 3);
    r.spec
        .placement
        .node_selector
        .insert("site".into(), "home".into());
    r.spec.placement.max_per_node = Some(2);
    let p = plan(&[r], &nodes, &[], &Catalog::new(), NOW);
    assert_eq!(
        p.create
            .iter()
            .filter(|c| c.spec.node.as_deref() == Some("a"))
            .count(),
        2
    );
    let last = p.create[2].status.clone().unwrap();
    assert_eq!(
        last.message.as_deref(),
        Some("0/2 nodes: 1 maxPerNode reached, 1 not matching nodeSelector")
    );

    let mut packed = role("batch", 3);
    packed.spec.placement.strategy = Strategy::Pack;
    let p = plan(&[packed], &nodes, &[], &Catalog::new(), NOW);
    assert_eq!(per_node(&p.create).len(), 1, "pack fills one node first");
}

fn ready_since(mut n: Node, since: i64) -> Node {
    if let Some(s) = n.status.as_mut() {
        s.since = Some(crate::clock::format_rfc3339(since));
    }
    n
}

/// Marks every container alive (as agents would report) so rebalancing may act.
fn all_ready(containers: &mut [Container]) {
    for c in containers {
        c.status = Some(ContainerStatus {
            phase: ContainerPhase::Ready,
            ..Default::default()
        });
    }
}

#[test]
fn host_ports_are_a_filter() {
    let nodes = vec![node("a", Arch::Amd64, true), node("b", Arch::Amd64, true)];
    let mut proxy = role("proxy", 3);
    proxy.spec.ports = vec![texu_api::Port {
        name: "http".into(),
        port: 80,
        host_port: Some(8080),
        protocol: Default::default(),
    }];
    let p = plan(&[proxy], &nodes, &[], &Catalog::new(), NOW);
    let bound: Vec<_> = p
        .create
        .iter()
        .filter_map(|c| c.spec.node.clone())
        .collect();
    assert_eq!(bound.len(), 2, "one per board: {bound:?}");
    let pending = p.create.iter().find(|c| c.spec.node.is_none()).unwrap();
    assert_eq!(
        pending.status.as_ref().unwrap().message.as_deref(),
        Some("0/2 nodes: 2 hostPort in use")
    );
}

#[test]
fn spread_over_a_label_fills_sites_evenly() {
    let mut nodes = Vec::new();
    for (name, site) in [
        ("a1", "north"),
        ("a2", "north"),
        ("a3", "north"),
        ("b1", "south"),
    ] {
        let mut n = node(name, Arch::Amd64, true);
        n.metadata.labels.insert("site".into(), site.into());
        nodes.push(n);
    }
    let mut app = role("app", 4);
    app.spec.placement.spread = Some("site".into());
    let p = plan(&[app], &nodes, &[], &Catalog::new(), NOW);
    let south = p
        .create
        .iter()
        .filter(|c| c.spec.node.as_deref() == Some("b1"))
        .count();
    assert_eq!(south, 2, "half of the role in the one-board site");
}

#[test]
fn drain_moves_make_before_break_within_max_unavailable() {
    let nodes = vec![node("a", Arch::Amd64, true), node("b", Arch::Amd64, true)];
    let mut app = role("app", 4);
    app.spec.max_unavailable = 1;
    let roles = vec![app];
    let mut containers = Vec::new();
    apply(
        &plan(&roles, &nodes, &[], &Catalog::new(), NOW),
        &mut containers,
    );
    let mut draining = nodes.clone();
    draining[0].spec.unschedulable = true;
    draining[0].spec.draining = true;
    let p = plan(&roles, &draining, &containers, &Catalog::new(), NOW);
    assert_eq!(p.update.len(), 1, "one move at a time: {:?}", p.update);
    let moving = &p.update[0];
    assert_eq!(
        moving.spec.node.as_deref(),
        Some("a"),
        "the old copy keeps serving"
    );
    let h = moving.spec.handoff.as_ref().unwrap();
    assert_eq!((h.node.as_str(), h.reason.as_str()), ("b", DRAIN));
    apply(&p, &mut containers);
    // While it is in flight nothing else starts; a failed new copy ends the move.
    assert!(plan(&roles, &draining, &containers, &Catalog::new(), NOW).is_empty());
    let c = containers
        .iter_mut()
        .find(|c| c.spec.handoff.is_some())
        .unwrap();
    c.spec.handoff.as_mut().unwrap().status = Some(ContainerStatus {
        phase: ContainerPhase::Failed,
        ..Default::default()
    });
    let p = plan(&roles, &draining, &containers, &Catalog::new(), NOW);
    assert!(p.update.iter().any(|c| c.spec.node.as_deref() == Some("a")));
    // A stateful member stays on a draining board.
    let mut db = role("db", 1);
    db.spec.stateful = true;
    let mut dbs = Vec::new();
    apply(
        &plan(
            std::slice::from_ref(&db),
            &nodes[..1],
            &[],
            &Catalog::new(),
            NOW,
        ),
        &mut dbs,
    );
    assert!(plan(&[db], &draining, &dbs, &Catalog::new(), NOW).is_empty());
}

#[test]
fn a_move_whose_target_fails_is_dropped_and_one_whose_source_dies_completes() {
    let nodes = vec![node("a", Arch::Amd64, true), node("b", Arch::Amd64, true)];
    let roles = vec![role("app", 1)];
    let mut containers = Vec::new();
    apply(
        &plan(&roles, &nodes[..1], &[], &Catalog::new(), NOW),
        &mut containers,
    );
    containers[0].spec.handoff = Some(Handoff {
        node: "b".into(),
        reason: DRAIN.into(),
        image_digest: None,
        status: None,
    });
    let mut b_down = nodes.clone();
    b_down[1] = node("b", Arch::Amd64, false);
    let p = plan(&roles, &b_down, &containers, &Catalog::new(), NOW);
    assert_eq!(p.update[0].spec.handoff, None);
    assert_eq!(p.update[0].spec.node.as_deref(), Some("a"));
    let mut a_down = nodes.clone();
    a_down[0] = node("a", Arch::Amd64, false);
    let p = plan(&roles, &a_down, &containers, &Catalog::new(), NOW);
    assert_eq!(p.update[0].spec.node.as_deref(), Some("b"));
    assert_eq!(p.update[0].spec.moved_from.as_deref(), Some("a"));
}

#[test]
fn rebalance_waits_for_the_settle_period_and_moves_one_at_a_time() {
    let settings = Settings { settle_secs: 30 };
    let roles = vec![role("app", 6)];
    let two = vec![node("a", Arch::Amd64, true), node("b", Arch::Amd64, true)];
    let mut containers = Vec::new();
    apply(
        &plan(&roles, &two, &[], &Catalog::new(), NOW),
        &mut containers,
    );
    all_ready(&mut containers);
    // Board c comes back at NOW: 3, 3, 0.
    let mut three = two.clone();
    three.push(ready_since(node("c", Arch::Amd64, true), NOW));
    let early = plan_with(
        &roles,
        &three,
        &containers,
        &Catalog::new(),
        NOW + 10,
        &settings,
    );
    assert!(
        early.is_empty(),
        "a board back for 10s is not settled: {early:?}"
    );
    let p = plan_with(
        &roles,
        &three,
        &containers,
        &Catalog::new(),
        NOW + 30,
        &settings,
    );
    assert_eq!(p.update.len(), 1);
    let h = p.update[0].spec.handoff.as_ref().unwrap();
    assert_eq!((h.node.as_str(), h.reason.as_str()), ("c", REBALANCE));
    apply(&p, &mut containers);
    let again = plan_with(
        &roles,
        &three,
        &containers,
        &Catalog::new(),
        NOW + 31,
        &settings,
    );
    assert!(again.is_empty(), "one move at a time");
    // The move completes (as the heartbeat does): 2, 3, 1 -> the next move, then even.
    for _ in 0..3 {
        for c in containers.iter_mut() {
            if let Some(h) = c.spec.handoff.take() {
                c.spec.node = Some(h.node);
            }
        }
        let p = plan_with(
            &roles,
            &three,
            &containers,
            &Catalog::new(),
            NOW + 40,
            &settings,
        );
        apply(&p, &mut containers);
    }
    let counts = per_node(&containers);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "{counts:?}"
    );
}

#[test]
fn replace_moves_a_member_with_its_old_address() {
    let nodes = vec![node("a", Arch::Amd64, false), node("b", Arch::Amd64, true)];
    let mut db = role("db", 1);
    db.spec.stateful = true;
    let mut member = Container::new(
        "db-0",
        ContainerSpec {
            role: "db".into(),
            ordinal: 0,
            node: Some("a".into()),
            generation: 1,
            template: Some(db.spec.clone()),
            ..Default::default()
        },
    );
    member.status = Some(ContainerStatus {
        phase: ContainerPhase::Lost,
        address: Some("198.19.1.5".into()),
        ..Default::default()
    });
    let cs = vec![member];
    let moved = replace(&db, &nodes, &cs, &Catalog::new(), "db-0", "b").unwrap();
    assert_eq!(moved.spec.node.as_deref(), Some("b"));
    assert_eq!(moved.spec.replaces, Some("198.19.1.5".parse().unwrap()));
    assert_eq!(
        moved.status.as_ref().unwrap().reason.as_deref(),
        Some("Replacing")
    );
    let refused = replace(&db, &nodes, &cs, &Catalog::new(), "db-0", "a").unwrap_err();
    assert_eq!(refused, "db-0 is already on a");
    let mut cordoned = nodes.clone();
    cordoned[1].spec.unschedulable = true;
    let refused = replace(&db, &cordoned, &cs, &Catalog::new(), "db-0", "b").unwrap_err();
    assert_eq!(refused, "db-0 cannot run on b: 0/2 nodes: 1 cordoned");
}
