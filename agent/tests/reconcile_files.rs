//! The reconciler renders a role's `files` when it creates a container, over the fake runtime
//! (no LXC, no controller): the spec it hands the runtime mounts the rendered files, a
//! template error fails the container with `TemplateFailed`, a restart does not render again,
//! and removing the container removes its files.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, Harness};
use texu_agent::daemon::contact::Contact;
use texu_agent::daemon::Desired;
use texu_agent::files;
use texu_agent::runtime::FakeCall;
use texu_api::{Container, ContainerPhase, FileTemplate, RoleSpec};

fn container(name: &str, ordinal: i64, template: &str, replaces: Option<&str>) -> Container {
    let mut role = RoleSpec::with_image("template:busybox");
    role.command = vec!["/bin/sleep".into(), "1000".into()];
    role.files = vec![FileTemplate {
        path: "/etc/texu/identity".into(),
        template: template.into(),
        ..Default::default()
    }];
    let mut c = common::container(name, ordinal, role);
    c.spec.replaces = replaces.map(|a| a.parse().expect("an IPv4 address"));
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn files_are_rendered_into_the_spec_on_create_and_removed_with_the_container() {
    let data = tempfile::tempdir().unwrap();
    let h = Harness::start(data.path(), Arc::new(Contact::default()));
    let rt = h.rt.clone();

    let good = container(
        "app-0",
        0,
        "{{ name }}#{{ ordinal }} on {{ node }}\n{% if replaces %}\nreplaces {{ replaces }}\n{% endif %}\n",
        Some("198.19.2.9"),
    );
    let bad = container("app-1", 1, "line 1\n{{ nmae }}\n", None);
    h.send(Desired::Snapshot(vec![good.clone(), bad], 0)).await;

    eventually("app-0 created", || rt.spec("app-0").is_some()).await;
    let spec = rt.spec("app-0").unwrap();
    let host = files::dir(data.path(), "app-0").join("etc/texu/identity");
    assert_eq!(spec.files.len(), 1);
    assert_eq!(spec.files[0].host_path, host);
    assert_eq!(
        spec.files[0].container_path,
        Path::new("/etc/texu/identity")
    );
    assert_eq!(
        std::fs::read_to_string(&host).unwrap(),
        "app-0#0 on board1\nreplaces 198.19.2.9\n"
    );
    assert!(spec
        .env
        .contains(&("TEXU_REPLACES".into(), "198.19.2.9".into())));

    // The template error fails the create, and says where.
    let mut failed = None;
    for _ in 0..200 {
        failed = h.status("app-1").await;
        if failed
            .as_ref()
            .is_some_and(|r| r.status.phase == ContainerPhase::Failed)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let failed = failed.expect("app-1 reported").status;
    assert_eq!(failed.phase, ContainerPhase::Failed);
    assert_eq!(failed.reason.as_deref(), Some("TemplateFailed"));
    let message = failed.message.unwrap_or_default();
    assert!(
        message.contains("/etc/texu/identity, line 2 (unknown: nmae)"),
        "{message}"
    );
    assert!(rt.spec("app-1").is_none());

    // A restart after the command exits reuses the files as rendered.
    std::fs::write(&host, "kept\n").unwrap();
    rt.clear_calls();
    rt.kill("app-0");
    eventually("app-0 restarted", || {
        rt.calls().contains(&FakeCall::Start("app-0".into()))
    })
    .await;
    assert!(!rt.calls().contains(&FakeCall::Create("app-0".into())));
    assert_eq!(std::fs::read_to_string(&host).unwrap(), "kept\n");

    h.send(Desired::Remove("app-0".into())).await;
    eventually("app-0 removed", || rt.spec("app-0").is_none()).await;
    eventually("its files removed", || {
        !files::dir(data.path(), "app-0").exists()
    })
    .await;

    h.stop().await;
}
