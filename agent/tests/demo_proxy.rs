//! The demo's proxy role (manifests/demo/proxy.yaml): its manifest is valid, and its
//! configuration rendered with two `web` members passes Debian's own `apache2 -t`, which is
//! the `check` the agent runs before any reload. Needs apache2 (scripts/setup.sh installs it).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use texu_agent::files::{self, FileContext};
use texu_api::{parse_manifests, Container, ContainerSpec, Endpoint, Manifest, RoleEndpoints};

#[test]
fn the_demo_proxy_renders_a_config_apache_accepts_with_every_web_member() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/demo/proxy.yaml");
    let text = std::fs::read_to_string(&path).expect("manifests/demo/proxy.yaml");
    let manifests = parse_manifests("proxy.yaml", &text).expect("a valid manifest");
    let Some(Manifest::Role(role)) = manifests.into_iter().next() else {
        panic!("proxy.yaml holds no role");
    };
    let members: Vec<Endpoint> = (0..2)
        .map(|i| Endpoint {
            ordinal: i,
            name: format!("web-{i}"),
            node: format!("board{i}"),
            address: format!("198.19.{i}.2"),
            port: 8080,
        })
        .collect();
    let web = RoleEndpoints {
        role: "web".into(),
        ports: BTreeMap::from([("http".into(), members)]),
    };
    let c = Container::new(
        "proxy-0",
        ContainerSpec {
            role: "proxy".into(),
            node: Some("board1".into()),
            generation: 1,
            template: Some(role.spec.clone()),
            ..Default::default()
        },
    );
    let ctx = FileContext::for_container(&c, &role.spec, "board1", None)
        .with_endpoints(&BTreeMap::from([("web".into(), web)]));
    let rendered = files::render(&role.spec.files, &ctx).expect("the template renders");
    let conf = &rendered[0].text;
    for member in [
        "http://198.19.0.2:8080\" route=web-0",
        "http://198.19.1.2:8080\" route=web-1",
    ] {
        assert!(conf.contains(member), "{member} missing from:\n{conf}");
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("httpd.conf");
    std::fs::write(&file, conf).unwrap();
    let out = Command::new("/usr/sbin/apache2")
        .arg("-t")
        .arg("-f")
        .arg(&file)
        .output()
        .expect("/usr/sbin/apache2 is missing: run scripts/setup.sh (Debian package apache2)");
    assert!(
        out.status.success(),
        "apache2 -t refused the rendered config: {}\n{conf}",
        String::from_utf8_lossy(&out.stderr)
    );
}
