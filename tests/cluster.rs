//! End-to-end tests of a multi-board cluster on this machine, through the harness in
//! `texu::cluster`: boards are network namespaces on an overlay bridge, each with a real
//! `texu agent` running real LXC containers, and a real controller in the host namespace. Also
//! `texu demo` itself, from start to Ctrl-C.
//!
//! They need root, iproute2 and LXC (scripts/setup.sh installs it all) and fail, never skip,
//! without them. Each test takes its own cluster slot (names and addresses), so they run in
//! parallel and twice in a row; a cluster removes everything it made when it is dropped, also
//! when the test fails. Traffic stays on loopback and in 198.18.0.0/15.
//!
//! The scenarios, a module each under tests/cluster/: `network` (spread, reach, routes),
//! `liveness` (Ready and NotReady boards), `failover`, `disconnect` (a role's disconnect
//! policy), `stateful` (`texu replace`), `drain` and `demo`; `reads` holds what they read from
//! a running cluster.

#[path = "cluster/demo.rs"]
mod demo;
#[path = "cluster/disconnect.rs"]
mod disconnect;
#[path = "cluster/drain.rs"]
mod drain;
#[path = "cluster/failover.rs"]
mod failover;
#[path = "cluster/liveness.rs"]
mod liveness;
#[path = "cluster/network.rs"]
mod network;
#[path = "cluster/reads.rs"]
mod reads;
#[path = "cluster/stateful.rs"]
mod stateful;

use std::path::PathBuf;

use anyhow::{Context, Result};
use texu::cluster::{Cluster, ClusterConfig};

fn texu_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_texu"))
}

/// A cluster of `boards` boards in a free test slot; says what is missing when it cannot run.
fn start(boards: usize) -> Result<Cluster> {
    Cluster::start(ClusterConfig::new(boards, texu_bin()))
        .with_context(|| format!("cannot start a {boards}-board cluster"))
}

/// A cluster of `boards` boards with extra controller flags and per-board agent flags.
fn start_with(
    boards: usize,
    controller_args: &[&str],
    agent_args: &[(usize, &[&str])],
) -> Result<Cluster> {
    let mut config = ClusterConfig::new(boards, texu_bin());
    config.controller_args = controller_args.iter().map(|s| s.to_string()).collect();
    for (board, args) in agent_args {
        config
            .agent_args
            .insert(*board, args.iter().map(|s| s.to_string()).collect());
    }
    Cluster::start(config).with_context(|| format!("cannot start a {boards}-board cluster"))
}
