//! Live templates over the fake runtime (no LXC, no controller): when the endpoints a file
//! reads change, the reconciler re-renders it, installs it in place after the quiet period,
//! runs its check inside the container and one reload per batch; a failed check puts the
//! previous text back and reloads nothing, and a later good render recovers.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, eventually_async, Harness};
use texu_agent::daemon::contact::Contact;
use texu_agent::daemon::Desired;
use texu_agent::files;
use texu_agent::runtime::{FakeCall, FakeRuntime};
use texu_api::{Container, ContainerPhase, Endpoint, FileTemplate, RoleEndpoints, RoleSpec};

const PATH: &str = "/run/texu/members.conf";

fn proxy() -> Container {
    let mut role = RoleSpec::with_image("template:busybox");
    role.command = vec!["/bin/sleep".into(), "1000".into()];
    role.files = vec![FileTemplate {
        path: PATH.into(),
        template:
            "{% for e in endpoints.app.http %}member {{ e.address }}:{{ e.port }}\n{% endfor %}"
                .into(),
        check: vec!["/bin/check".into()],
        reload: vec!["/bin/reload".into()],
        ..Default::default()
    }];
    common::container("proxy-0", 0, role)
}

/// The `app` role with `n` Ready members.
fn endpoints(n: usize) -> Desired {
    let members = (0..n)
        .map(|i| Endpoint {
            ordinal: i as i64,
            name: format!("app-{i}"),
            node: "board1".into(),
            address: format!("198.19.1.{}", i + 2),
            port: 8080,
        })
        .collect();
    let app = RoleEndpoints {
        role: "app".into(),
        ports: BTreeMap::from([("http".into(), members)]),
    };
    Desired::Endpoints(BTreeMap::from([("app".into(), app)]))
}

fn text(n: usize) -> String {
    (0..n)
        .map(|i| format!("member 198.19.1.{}:8080\n", i + 2))
        .collect()
}

fn execs(rt: &FakeRuntime, program: &str) -> usize {
    rt.calls()
        .iter()
        .filter(|c| matches!(c, FakeCall::Exec(_, argv) if argv[0] == program))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_endpoint_changes_is_installed_in_place_checked_and_reloaded_once() {
    let data = tempfile::tempdir().unwrap();
    let h = Harness::start(data.path(), Arc::new(Contact::default()));
    let rt = h.rt.clone();
    h.send(endpoints(1)).await;
    h.send(Desired::Snapshot(vec![proxy()], 0)).await;
    let host = files::dir(data.path(), "proxy-0").join(PATH.trim_start_matches('/'));
    eventually("proxy-0 created with one member", || {
        std::fs::read_to_string(&host).ok() == Some(text(1))
    })
    .await;
    eventually_async("proxy-0 Ready", || async {
        h.status("proxy-0")
            .await
            .is_some_and(|r| r.status.phase == ContainerPhase::Ready)
    })
    .await;
    let inode = std::fs::metadata(&host).unwrap().ino();

    // Ten changes within one second: members 2, 3, ..., 11.
    for n in 2..=11 {
        h.send(endpoints(n)).await;
        tokio::time::sleep(Duration::from_millis(90)).await;
    }
    eventually("the last text in use", || {
        std::fs::read_to_string(&host).ok() == Some(text(11))
    })
    .await;
    eventually("one reload", || execs(&rt, "/bin/reload") == 1).await;
    // Past the quiet period and the maximum wait: still one check and one reload.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(execs(&rt, "/bin/check"), 1, "{:?}", rt.calls());
    assert_eq!(execs(&rt, "/bin/reload"), 1, "{:?}", rt.calls());
    assert_eq!(
        std::fs::metadata(&host).unwrap().ino(),
        inode,
        "installed in place: the bind-mounted inode is the same"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_check_keeps_the_previous_text_and_says_why_and_a_good_render_recovers() {
    let data = tempfile::tempdir().unwrap();
    let h = Harness::start(data.path(), Arc::new(Contact::default()));
    let rt = h.rt.clone();
    h.send(endpoints(2)).await;
    h.send(Desired::Snapshot(vec![proxy()], 0)).await;
    let host = files::dir(data.path(), "proxy-0").join(PATH.trim_start_matches('/'));
    eventually_async("proxy-0 Ready", || async {
        h.status("proxy-0")
            .await
            .is_some_and(|r| r.status.phase == ContainerPhase::Ready)
    })
    .await;

    rt.push_exec_result("proxy-0", 1, b"AH00526: Syntax error on line 3");
    h.send(endpoints(3)).await;
    eventually_async("the check failure in the status", || async {
        h.status("proxy-0").await.is_some_and(|r| {
            r.status.phase == ContainerPhase::Ready
                && r.status.message.as_deref().is_some_and(|m| {
                    m.contains("check of /run/texu/members.conf") && m.contains("line 3")
                })
        })
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&host).unwrap(),
        text(2),
        "the previous text is back"
    );
    assert_eq!(execs(&rt, "/bin/reload"), 0, "nothing reloaded");

    // The next change checks fine: installed, reloaded, the message gone.
    h.send(endpoints(4)).await;
    eventually("the new text and a reload", || {
        std::fs::read_to_string(&host).ok() == Some(text(4)) && execs(&rt, "/bin/reload") == 1
    })
    .await;
    eventually_async("the message cleared", || async {
        h.status("proxy-0")
            .await
            .is_some_and(|r| r.status.message.is_none())
    })
    .await;
    h.stop().await;
}
