//! Manifests and paths that end-to-end tests and benchmarks share: the busybox HTTP responder
//! role (`GET /hostname` answers the container's name), the `texu` binary next to a bench, and
//! `texu demo` run as a user runs it ([`DemoRun`]) with what it may leave behind.

use std::path::PathBuf;

use super::{ClusterError, Result};

mod demo;
pub use demo::{demo_container_inits, demo_leftovers, DemoExit, DemoRun};

/// A role `name` of busybox responders on port 8080 (named `http`), Ready once `/hostname`
/// answers (probed every 0.5 s), spread over the boards with at most `max_per_node` each.
pub fn responder_role(name: &str, replicas: usize, max_per_node: usize) -> String {
    format!(
        r#"apiVersion: texu.io/v1
kind: Role
metadata:
  name: {name}
spec:
  replicas: {replicas}
  image: template:busybox
  command: [/bin/httpd, -f, -p, "8080", -h, /etc]
  ports:
  - name: http
    port: 8080
  health:
    readiness:
      http: {{path: /hostname, port: http}}
      periodSeconds: 0.5
  placement:
    spread: node
    maxPerNode: {max_per_node}
"#
    )
}

/// The `texu` binary of the running benchmark's profile (`target/PROFILE/deps/BENCH` ->
/// `target/PROFILE/texu`).
pub fn texu_next_to_bench() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|source| ClusterError::Spawn {
        what: "find the running benchmark".into(),
        source,
    })?;
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("texu"))
        .ok_or_else(|| ClusterError::Config("cannot find the target directory".into()))?;
    if !bin.exists() {
        return Err(ClusterError::Config(format!(
            "{} is missing: run `cargo build --bin texu` first",
            bin.display()
        )));
    }
    Ok(bin)
}
