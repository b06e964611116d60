//! Tests of role validation: each rule refused with its field path, all failures at once.

use super::*;
use crate::role::{ExecProbe, HttpProbe, Protocol, RoleSpec, TcpProbe, Volume};
use crate::{Duration, Quantity};

fn port(name: &str, port: i64) -> Port {
    Port {
        name: name.into(),
        port,
        host_port: None,
        protocol: Protocol::Tcp,
    }
}

fn errors_of(role: &Role) -> Vec<String> {
    match role.validate() {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

fn assert_one_error(role: &Role, want: &str) {
    let errors = errors_of(role);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains(want),
        "{:?} does not contain {want:?}",
        errors[0]
    );
}

#[test]
fn minimal_role_is_valid() {
    assert_eq!(
        Role::new("app", RoleSpec::with_image("host")).validate(),
        Ok(())
    );
}

#[test]
fn paths() {
    assert_eq!(child("", "spec"), "spec");
    assert_eq!(child("spec", "env"), "spec.env");
    assert_eq!(
        child("metadata.labels", "texu.io/zone"),
        "metadata.labels[texu.io/zone]"
    );
    assert_eq!(item("spec.ports", 1), "spec.ports[1]");
    assert_eq!(parent("spec.ports[1].port"), Some("spec.ports[1]"));
    assert_eq!(parent("spec.ports[1]"), Some("spec.ports"));
    assert_eq!(parent("spec"), Some(""));
    assert_eq!(parent(""), None);
}

#[test]
fn reports_every_error() {
    let mut spec = RoleSpec::with_image("");
    spec.replicas = -1;
    spec.ports = vec![port("http", 70000), port("http", 80)];
    spec.max_unavailable = 0;
    let mut role = Role::new("Bad_Name", spec);
    role.api_version = "v1".into();
    role.kind = "Pod".into();
    let errors = errors_of(&role);
    let want = [
        "apiVersion: must be texu.io/v1, got \"v1\"",
        "kind: must be Role, got \"Pod\"",
        "metadata.name: must be lowercase letters",
        "spec.replicas: must be 0 or more, got -1",
        "spec.image: must not be empty",
        "spec.ports[0].port: must be between 1 and 65535, got 70000",
        "spec.ports[1].name: duplicate port name \"http\", also spec.ports[0]",
        "spec.maxUnavailable: must be at least 1, got 0",
    ];
    assert_eq!(errors.len(), want.len(), "{errors:#?}");
    for (got, want) in errors.iter().zip(want) {
        assert!(
            got.starts_with(want),
            "{got:?} does not start with {want:?}"
        );
    }
}

#[test]
fn rules() {
    type Edit = fn(&mut RoleSpec);
    let cases: &[(Edit, &str)] = &[
        (|s| s.replicas = MAX_REPLICAS + 1, "spec.replicas: must be at most 10000"),
        (|s| s.image = "busybox".into(), "spec.image: \"busybox\" has no tag"),
        (|s| s.command = vec![String::new()], "spec.command[0]: the program name"),
        (|s| s.command = vec!["sh".into(), "a\0b".into()], "spec.command[1]: must not contain a NUL"),
        (|s| { s.env.insert("1X".into(), "v".into()); }, "spec.env.1X: variable name must not start"),
        (|s| { s.env.insert("A-B".into(), "v".into()); }, "spec.env.A-B: variable name must be letters"),
        (|s| s.resources.cpu = Some(Quantity::from("lots")), "spec.resources.cpu: \"lots\" is not a quantity"),
        (|s| s.resources.cpu = Some(Quantity::from("0")), "spec.resources.cpu: must be more than 0"),
        (|s| s.resources.memory = Some(Quantity::from("12Qi")), "spec.resources.memory: \"12Qi\" has an unknown suffix"),
        (|s| s.resources.memory = Some(Quantity::from("500m")), "not a whole number of bytes"),
        (|s| s.ports = vec![port("a", 80), port("b", 80)], "spec.ports[1].port: duplicate port 80/tcp"),
        (|s| {
            let mut udp = port("dns-udp", 53);
            udp.protocol = Protocol::Udp;
            s.ports = vec![port("dns", 53), udp];
            s.ports[0].host_port = Some(0);
        }, "spec.ports[0].hostPort: must be between 1 and 65535, got 0"),
        (|s| {
            s.ports = vec![port("a", 80), port("b", 81)];
            s.ports[0].host_port = Some(8080);
            s.ports[1].host_port = Some(8080);
        }, "spec.ports[1].hostPort: duplicate hostPort 8080/tcp"),
        (|s| s.ports = vec![port("A", 80)], "spec.ports[0].name: must be lowercase"),
        (|s| s.stateful = true, "spec.stateful: a stateful role needs at least one volume"),
        (|s| s.volumes = vec![Volume { name: "data".into(), path: "data".into() }], "spec.volumes[0].path: must be an absolute path"),
        (|s| s.volumes = vec![Volume { name: "data".into(), path: "/var/../etc".into() }], "spec.volumes[0].path: must not contain '..'"),
        (|s| s.volumes = vec![Volume { name: "data".into(), path: "/".into() }], "must not be the root directory"),
        (|s| s.volumes = vec![
            Volume { name: "data".into(), path: "/a".into() },
            Volume { name: "data".into(), path: "/b".into() },
        ], "spec.volumes[1].name: duplicate volume name"),
        (|s| s.health.readiness = Some(Probe::default()), "spec.health.readiness: needs one of http, tcp or exec"),
        (|s| s.health.readiness = Some(Probe {
            tcp: Some(TcpProbe { port: PortRef::Number(80) }),
            exec: Some(ExecProbe { command: vec!["true".into()] }),
            ..Probe::default()
        }), "spec.health.readiness: must have exactly one of http, tcp or exec, found tcp and exec"),
        (|s| s.health.liveness = Some(Probe {
            http: Some(HttpProbe { path: "/".into(), port: PortRef::Name("web".into()) }),
            ..Probe::default()
        }), "spec.health.liveness.http.port: names port \"web\", which is not in spec.ports (the role has no ports)"),
        (|s| s.health.liveness = Some(Probe {
            http: Some(HttpProbe { path: "health".into(), port: PortRef::Number(80) }),
            ..Probe::default()
        }), "spec.health.liveness.http.path: must start with '/'"),
        (|s| s.health.liveness = Some(Probe {
            tcp: Some(TcpProbe { port: PortRef::Number(0) }),
            ..Probe::default()
        }), "spec.health.liveness.tcp.port: must be between 1 and 65535, got 0"),
        (|s| s.health.liveness = Some(Probe {
            exec: Some(ExecProbe { command: vec![] }),
            ..Probe::default()
        }), "spec.health.liveness.exec.command: must not be empty"),
        (|s| s.health.readiness = Some(Probe {
            tcp: Some(TcpProbe { port: PortRef::Number(80) }),
            period_seconds: 0.0,
            ..Probe::default()
        }), "spec.health.readiness.periodSeconds: must be more than 0, got 0"),
        (|s| s.health.readiness = Some(Probe {
            tcp: Some(TcpProbe { port: PortRef::Number(80) }),
            timeout_seconds: f64::NAN,
            ..Probe::default()
        }), "spec.health.readiness.timeoutSeconds: must be more than 0"),
        (|s| s.health.readiness = Some(Probe {
            tcp: Some(TcpProbe { port: PortRef::Number(80) }),
            failure_threshold: 0,
            ..Probe::default()
        }), "spec.health.readiness.failureThreshold: must be at least 1, got 0"),
        (|s| s.health.readiness = Some(Probe {
            tcp: Some(TcpProbe { port: PortRef::Number(80) }),
            initial_delay_seconds: -1.0,
            ..Probe::default()
        }), "spec.health.readiness.initialDelaySeconds: must be 0 or more"),
        (|s| { s.placement.node_selector.insert("site".into(), "a b".into()); }, "spec.placement.nodeSelector.site: label value must be"),
        (|s| s.placement.spread = Some("Bad Key".into()), "spec.placement.spread: must be `node` or a node label key"),
        (|s| s.placement.max_per_node = Some(0), "spec.placement.maxPerNode: must be at least 1, got 0"),
        (|s| s.files = vec![FileTemplate {
            path: "etc/x".into(), template: String::new(), check: vec![], reload: vec![], ..Default::default()
        }], "spec.files[0].path: must be an absolute path"),
        (|s| s.files = vec![FileTemplate {
            path: "/etc/x".into(), template: String::new(), check: vec![], reload: vec![String::new()], ..Default::default()
        }], "spec.files[0].reload[0]: the program name must not be empty"),
        (|s| s.disconnect.lost_after = Some(Duration::from("soon")), "spec.disconnect.lostAfter: \"soon\" is not a duration"),
        (|s| s.disconnect.stop_on_node_after = Some(Duration::from("30")), "spec.disconnect.stopOnNodeAfter: \"30\" has no unit"),
        (|s| s.pre_stop = Some(crate::PreStop { command: vec![], timeout: None }), "spec.preStop.command: must not be empty"),
        (|s| s.pre_stop = Some(crate::PreStop { command: vec!["true".into()], timeout: Some(Duration::from("0")) }), "spec.preStop.timeout: must be more than 0"),
    ];
    for (edit, want) in cases {
        let mut spec = RoleSpec::with_image("host");
        edit(&mut spec);
        assert_one_error(&Role::new("app", spec), want);
    }
}

#[test]
fn accepted_edge_cases() {
    let mut spec = RoleSpec::with_image("exchange:1.0");
    spec.replicas = 0;
    let mut udp = port("dns-udp", 53);
    udp.protocol = Protocol::Udp;
    spec.ports = vec![port("dns", 53), udp];
    spec.health.readiness = Some(Probe {
        tcp: Some(TcpProbe {
            port: PortRef::Name("dns".into()),
        }),
        ..Probe::default()
    });
    spec.placement.spread = Some("texu.io/site".into());
    spec.stateful = true;
    spec.volumes = vec![Volume {
        name: "data".into(),
        path: "/var/lib/data".into(),
    }];
    spec.disconnect.lost_after = Some(Duration::from("0"));
    let mut role = Role::new("dns", spec);
    role.metadata
        .labels
        .insert("texu.io/tier".into(), "edge".into());
    assert_eq!(role.validate(), Ok(()));
}
