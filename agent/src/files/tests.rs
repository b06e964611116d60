//! Tests of rendering, the template context and delivery of a role's files.

use super::deliver::relative;
use super::*;
use crate::runtime::{ContainerSpec, FileMount, Image, NetConfig};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use texu_api::{ContainerSpec as ApiSpec, Quantity};

fn file(path: &str, template: &str) -> FileTemplate {
    FileTemplate {
        path: path.into(),
        template: template.into(),
        ..Default::default()
    }
}

fn ctx() -> FileContext {
    FileContext {
        name: "cassandra-1".into(),
        role: "cassandra".into(),
        ordinal: 1,
        node: "board5".into(),
        address: Some("198.19.5.3".into()),
        replaces: None,
        memory_limit: Some(128 * MIB),
        cpu_limit_millis: Some(500),
        env: BTreeMap::from([("CLUSTER".into(), "ring".into())]),
        endpoints: BTreeMap::new(),
    }
}

#[test]
fn endpoints_of_any_role_render_in_order() {
    let member = |ordinal: i64, name: &str| texu_api::Endpoint {
        ordinal,
        name: name.into(),
        node: "board1".into(),
        address: format!("198.19.1.{}", ordinal + 2),
        port: 8080,
    };
    let app = RoleEndpoints {
        role: "app".into(),
        ports: BTreeMap::from([("http".into(), vec![member(0, "app-0"), member(1, "app-1")])]),
    };
    let ctx = ctx().with_endpoints(&BTreeMap::from([("app".into(), app)]));
    let text = render_text(
        "{% for e in endpoints.app.http %}BalancerMember http://{{ e.address }}:{{ e.port }} route={{ e.name }}\n{% endfor %}",
        &ctx,
    )
    .unwrap();
    assert_eq!(
        text,
        "BalancerMember http://198.19.1.2:8080 route=app-0\nBalancerMember http://198.19.1.3:8080 route=app-1\n"
    );
}

fn render_text(template: &str, ctx: &FileContext) -> Result<String, FilesError> {
    let mut out = render(&[file("/etc/texu/x.conf", template)], ctx)?;
    Ok(out.remove(0).text)
}

#[test]
fn files_render_the_containers_identity_and_limits() {
    let text = render_text(
        "{{ name }} {{ role }}#{{ ordinal }} on {{ node }} at {{ address }}\n\
         heap={{ memory_limit_mb // 2 }}m mem={{ memory_limit }} cpu={{ cpu_limit }}/{{ cpu_limit_millis }}\n\
         cluster={{ env.CLUSTER }}\n",
        &ctx(),
    )
    .unwrap();
    assert_eq!(
        text,
        "cassandra-1 cassandra#1 on board5 at 198.19.5.3\n\
         heap=64m mem=134217728 cpu=0.5/500\n\
         cluster=ring\n"
    );
    let whole = FileContext {
        cpu_limit_millis: Some(2000),
        ..ctx()
    };
    assert_eq!(render_text("{{ cpu_limit }}", &whole).unwrap(), "2");
}

#[test]
fn replaces_is_none_unless_set() {
    let t =
        "{% if replaces %}\nreplace_address_first_boot: {{ replaces }}\n{% endif %}\nseeds: x\n";
    assert_eq!(render_text(t, &ctx()).unwrap(), "seeds: x\n");
    let replacing = FileContext {
        replaces: Some("198.19.2.7".into()),
        ..ctx()
    };
    assert_eq!(
        render_text(t, &replacing).unwrap(),
        "replace_address_first_boot: 198.19.2.7\nseeds: x\n"
    );
    let unlimited = FileContext {
        memory_limit: None,
        address: None,
        ..ctx()
    };
    assert_eq!(
        render_text(
            "{{ memory_limit_mb is none }} {{ address is none }}",
            &unlimited
        )
        .unwrap(),
        "True True"
    );
}

#[test]
fn an_undefined_variable_is_an_error_naming_path_and_line() {
    let e = render_text("ok\nname: {{ nmae }}\n", &ctx()).unwrap_err();
    assert!(
        matches!(&e, FilesError::Render { path, line: Some(2), .. } if path == "/etc/texu/x.conf"),
        "{e:?}"
    );
    assert_eq!(e.reason(), Reason::TemplateFailed);
    let text = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(
        text.contains("/etc/texu/x.conf, line 2 (unknown: nmae)"),
        "{text}"
    );
    assert!(text.contains("undefined"), "{text}");
    let e = render_text(
        "{% for i in range(2) %}{{ i }}{{ cpu_limt }}{% endfor %}",
        &ctx(),
    )
    .unwrap_err();
    assert!(
        matches!(&e, FilesError::Render { unknown, .. } if unknown == &["cpu_limt"]),
        "{e:?}"
    );
    // A missing key of a map, and a syntax error, too.
    assert!(render_text("{{ env.NOPE }}", &ctx()).is_err());
    let e = render_text("a\nb\n{% if %}\n", &ctx()).unwrap_err();
    assert!(
        matches!(e, FilesError::Render { line: Some(3), .. }),
        "{e:?}"
    );
}

#[test]
fn output_and_work_are_bounded() {
    let e = render_text(
        "{% for i in range(3000) %}{{ 'x' * 1000 }}{% endfor %}",
        &ctx(),
    )
    .unwrap_err();
    assert!(matches!(e, FilesError::TooLarge { .. }), "{e:?}");
    assert!(e.to_string().contains("more than 1048576 bytes"), "{e}");
    // Just under the limit is fine.
    let big = render_text("{{ 'x' * 1048576 }}", &ctx()).unwrap();
    assert_eq!(big.len(), MAX_FILE_BYTES);
    let t = std::time::Instant::now();
    let e = render_text(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        &ctx(),
    )
    .unwrap_err();
    assert!(matches!(e, FilesError::Render { .. }), "{e:?}");
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn memory_limit_mb_comes_from_the_roles_quantity() {
    let mut role = RoleSpec::with_image("template:busybox");
    role.resources.memory = Some(Quantity::new("128Mi"));
    role.resources.cpu = Some(Quantity::new("250m"));
    let c = container(None);
    let ctx = FileContext::for_container(&c, &role, "board1", None);
    assert_eq!(ctx.memory_limit, Some(128 * MIB));
    assert_eq!(ctx.cpu_limit_millis, Some(250));
    assert_eq!(
        render_text("{{ memory_limit_mb }} {{ cpu_limit }}", &ctx).unwrap(),
        "128 0.25"
    );
}

fn container(replaces: Option<&str>) -> Container {
    Container::new(
        "app-2",
        ApiSpec {
            role: "app".into(),
            ordinal: 2,
            node: Some("board1".into()),
            generation: 1,
            replaces: replaces.map(|a| a.parse().unwrap()),
            ..Default::default()
        },
    )
}

#[test]
fn prepare_writes_files_mounts_them_and_passes_replaces() {
    let t = tempfile::tempdir().unwrap();
    let mut role = RoleSpec::with_image("template:busybox");
    role.files = vec![
        file(
            "/etc/texu/identity",
            "{{ name }} {{ address }} {{ replaces }}\n",
        ),
        file("/run/app.conf", "role={{ role }}\n"),
    ];
    let mut spec = ContainerSpec::new("app-2", Image::Template("busybox".into()));
    spec.network = Some(NetConfig {
        bridge: "texu0".into(),
        address: Ipv4Addr::new(198, 19, 1, 4),
        prefix_len: 24,
        gateway: None,
    });
    prepare(
        t.path(),
        "board1",
        &container(Some("198.19.2.9")),
        &role,
        &mut spec,
    )
    .unwrap();

    let host = t.path().join("files/app-2/etc/texu/identity");
    assert_eq!(
        spec.files,
        vec![
            FileMount {
                host_path: host.clone(),
                container_path: "/etc/texu/identity".into(),
            },
            FileMount {
                host_path: t.path().join("files/app-2/run/app.conf"),
                container_path: "/run/app.conf".into(),
            },
        ]
    );
    assert_eq!(
        fs::read_to_string(&host).unwrap(),
        "app-2 198.19.1.4 198.19.2.9\n"
    );
    assert_eq!(
        fs::metadata(&host).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert_eq!(
        spec.env,
        vec![(REPLACES_ENV.to_owned(), "198.19.2.9".to_owned())]
    );
    assert_eq!(spec.validate(), Ok(()));

    // The next create starts afresh: a file dropped from the role is gone.
    role.files.truncate(1);
    let mut again = ContainerSpec::new("app-2", Image::Template("busybox".into()));
    prepare(t.path(), "board1", &container(None), &role, &mut again).unwrap();
    assert_eq!(fs::read_to_string(&host).unwrap(), "app-2 None None\n");
    assert!(!t.path().join("files/app-2/run").exists());
    assert!(again.env.is_empty());
    assert!(fs::read_dir(host.parent().unwrap()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with("texu-tmp")));
}

#[test]
fn paths_must_be_plain() {
    assert_eq!(relative("/etc/./a").unwrap(), PathBuf::from("etc/a"));
    for bad in ["etc/a", "/etc/../a", "/"] {
        assert!(
            matches!(relative(bad), Err(FilesError::BadPath { .. })),
            "{bad}"
        );
    }
}
