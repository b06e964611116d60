//! End to end, the demo's proxy role (manifests/demo/proxy.yaml) with real Apache httpd, real
//! LXC and three boards of the harness in `texu::cluster`: two proxies balance over three `web`
//! responders, each proxy's hostPort reaching every replica, with balancer members that follow
//! the web role's endpoints through live templates.
//!
//! Needs root, iproute2, LXC and apache2 (scripts/setup.sh installs them) and fails, never
//! skips, without them. Traffic stays in the cluster's own 198.18.0.0/15 namespaces.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use texu::cluster::{Cluster, ClusterConfig};

fn texu_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_texu"))
}

/// The busybox responder the proxy balances over: `GET /hostname` answers the container name.
const WEB: &str = r#"apiVersion: texu.io/v1
kind: Role
metadata:
  name: web
spec:
  replicas: 3
  image: template:busybox
  command: [/bin/httpd, -f, -p, "8080", -h, /etc]
  ports:
  - name: http
    port: 8080
  health:
    readiness:
      http: {path: /hostname, port: http}
      periodSeconds: 0.5
  placement:
    spread: node
    maxPerNode: 1
"#;

#[test]
fn two_proxies_on_their_host_ports_reach_all_three_replicas() -> Result<()> {
    ensure!(
        Path::new("/usr/sbin/apache2").exists(),
        "/usr/sbin/apache2 is missing: run scripts/setup.sh (Debian package apache2)"
    );
    let c = Cluster::start(ClusterConfig::new(3, texu_bin())).context("a 3-board cluster")?;
    c.apply_yaml(WEB)?;
    c.apply(&Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/demo/proxy.yaml"))?;
    if let Err(e) = c.wait_ready(Duration::from_secs(120)) {
        let messages = c.texu_ok(&["get", "containers", "-o", "json"])?;
        anyhow::bail!("{e}\n{messages}");
    }
    let proxies: Vec<_> = c
        .api()
        .containers()?
        .into_iter()
        .filter(|x| x.spec.role == "proxy")
        .collect();
    ensure!(proxies.len() == 2, "two proxies, got {}", proxies.len());
    let want: BTreeSet<String> = ["web-0", "web-1", "web-2"].map(String::from).into();
    for proxy in proxies {
        let node = proxy.spec.node.clone().context("a placed proxy")?;
        let board = c
            .plan()
            .board_numbers()
            .find(|b| c.plan().node_name(*b) == node)
            .context("the proxy's board")?;
        let from = if board == 1 { 2 } else { 1 };
        let url = format!("http://{}:8000/hostname", c.plan().board_address(board));
        // Bounded: at most 300 requests or 30 s, until all three replicas answered.
        let mut seen = BTreeSet::new();
        let started = Instant::now();
        for _ in 0..300 {
            if seen == want || started.elapsed() > Duration::from_secs(30) {
                break;
            }
            if let Ok(body) = c.http_get_from_board(from, &url) {
                seen.insert(body.trim().to_string());
            } else {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        assert_eq!(
            seen,
            want,
            "answers through {} at {url}\n{}",
            proxy.metadata.name,
            c.diagnostics()
        );
    }
    Ok(())
}
