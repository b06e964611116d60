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
    responder(
        name,
        replicas,
        "0.5",
        &format!("    maxPerNode: {max_per_node}\n"),
    )
}

/// The responder role of [`responder_role`] probed every 0.2 s and with no cap per board: for
/// the tests and benchmarks that time how soon a container is Ready again after a failure.
pub fn quick_responder_role(name: &str, replicas: usize) -> String {
    responder(name, replicas, "0.2", "")
}

/// The responder role with `periodSeconds: PERIOD` and `placement` lines after `spread: node`.
fn responder(name: &str, replicas: usize, period: &str, placement: &str) -> String {
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
      periodSeconds: {period}
  placement:
    spread: node
{placement}"#
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
