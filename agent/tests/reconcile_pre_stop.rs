//! `preStop` over the fake runtime: a container the controller asks to stop (`desired:
//! Stopped`, a scale-down or its role's deletion) runs its hook inside itself first, then
//! stops; its status says what the hook printed and how it ended, it is never restarted while
//! so asked, and it starts again without a restart counted when the stop is taken back.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{container, wait_phase, Harness};
use texu_agent::daemon::contact::Contact;
use texu_agent::daemon::Desired;
use texu_agent::runtime::{FakeCall, Phase};
use texu_api::{ContainerPhase, DesiredState, PreStop, RoleSpec};

fn role(hook: Option<&[&str]>) -> RoleSpec {
    let mut role = RoleSpec::with_image("template:busybox");
    role.command = vec!["/bin/sleep".into(), "1000".into()];
    role.pre_stop = hook.map(|h| PreStop {
        command: h.iter().map(|s| s.to_string()).collect(),
        timeout: Some("30s".into()),
    });
    role
}

async fn reported(h: &Harness, name: &str, phase: ContainerPhase, reason: &str) -> String {
    let mut last = None;
    for _ in 0..200 {
        last = h.status(name).await;
        if let Some(r) = last
            .as_ref()
            .filter(|r| r.status.phase == phase && r.status.reason.as_deref() == Some(reason))
        {
            return r.status.message.clone().unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{name} never reported {phase:?}/{reason}; last: {last:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_on_request_runs_pre_stop_then_stops_and_reports_the_hook() {
    let data = tempfile::tempdir().unwrap();
    let h = Harness::start(data.path(), Arc::new(Contact::new(Duration::from_secs(60))));
    let hooked = container("db-0", 0, role(Some(&["nodetool", "decommission"])));
    let failing = container("db-1", 1, role(Some(&["nodetool", "decommission"])));
    let plain = container("app-2", 2, role(None));
    let all = vec![hooked.clone(), failing.clone(), plain.clone()];
    h.send(Desired::Snapshot(all.clone(), 0)).await;
    for name in ["db-0", "db-1", "app-2"] {
        wait_phase(&h.rt, name, Phase::Running).await;
    }
    h.rt.push_exec_result("db-0", 0, b"Decommissioned\n");
    h.rt.push_exec_result("db-1", 2, b"nodetool: Unsupported operation\n");
    h.rt.clear_calls();

    let asked: Vec<_> = all
        .iter()
        .cloned()
        .map(|mut c| {
            c.spec.desired = DesiredState::Stopped;
            c
        })
        .collect();
    h.send(Desired::Snapshot(asked.clone(), 0)).await;
    let ok = reported(&h, "db-0", ContainerPhase::Stopped, "StoppedOnRequest").await;
    assert!(
        ok.contains("\"nodetool decommission\" exited 0") && ok.contains("Decommissioned"),
        "{ok}"
    );
    let failed = reported(&h, "db-1", ContainerPhase::Stopped, "PreStopFailed").await;
    assert!(
        failed.contains("exited 2") && failed.contains("Unsupported operation"),
        "{failed}"
    );
    reported(&h, "app-2", ContainerPhase::Stopped, "StoppedOnRequest").await;
    let calls = h.rt.calls();
    let hook = vec!["nodetool".to_string(), "decommission".to_string()];
    for name in ["db-0", "db-1"] {
        let ran = calls
            .iter()
            .position(|c| *c == FakeCall::Exec(name.into(), hook.clone()));
        let stopped = calls
            .iter()
            .position(|c| matches!(c, FakeCall::Stop(n, _) if n == name));
        assert!(
            ran.is_some() && ran < stopped,
            "{name}: the hook runs before the stop: {calls:?}"
        );
    }
    assert!(
        !calls
            .iter()
            .any(|c| matches!(c, FakeCall::Exec(n, _) if n == "app-2")),
        "no hook, nothing run: {calls:?}"
    );

    // Asked to stop, it stays stopped: not restarted, not counted.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for name in ["db-0", "db-1", "app-2"] {
        wait_phase(&h.rt, name, Phase::Stopped).await;
        assert_eq!(h.status(name).await.unwrap().status.restarts, 0);
    }
    assert!(!h.rt.calls().contains(&FakeCall::Start("db-0".into())));

    // The stop taken back (a scale-up before the controller removed it): it starts again.
    h.send(Desired::Snapshot(all, 0)).await;
    wait_phase(&h.rt, "db-0", Phase::Running).await;
    assert!(!h.rt.calls().contains(&FakeCall::Create("db-0".into())));
    assert_eq!(h.status("db-0").await.unwrap().status.restarts, 0);
    h.stop().await;
}
