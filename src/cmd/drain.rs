//! `texu drain NODE` and `texu replace ROLE-N --node NODE`: moving containers off a board on
//! purpose.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use texu_api::{Container, ContainerPhase};

use crate::client::Client;

/// `texu drain`.
#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// The node's name.
    pub node: String,
    /// Return at once instead of waiting until the node holds no stateless container.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this long (the drain itself goes on).
    #[arg(long, default_value = "5m", value_parser = super::controller::parse_duration)]
    pub timeout: Duration,
}

/// `texu replace`.
#[derive(Debug, clap::Args)]
pub struct ReplaceArgs {
    /// The container, e.g. cassandra-1.
    pub container: String,
    /// The board it moves to.
    #[arg(long)]
    pub node: String,
}

#[derive(serde::Deserialize)]
struct List {
    items: Vec<Container>,
}

fn valid(kind: &str, name: &str) -> Result<()> {
    texu_api::validate_name(name)
        .map_err(|why| anyhow::anyhow!("invalid {kind} name {name:?}: {why}"))
}

/// Cordons the node and moves its stateless containers to other boards, each new copy Ready
/// before the old one stops, within each role's `maxUnavailable`; waits until it is empty.
pub fn drain(client: &Client, args: &DrainArgs) -> Result<ExitCode> {
    let node = &args.node;
    valid("node", node)?;
    let v: serde_json::Value = client.post(&format!("/v1/nodes/{node}/drain"))?;
    println!("node/{node} {}", v["result"].as_str().unwrap_or("draining"));
    if args.no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    let started = Instant::now();
    let mut last: Option<Vec<String>> = None;
    loop {
        let list: List = client.get(&format!("/v1/containers?node={node}"))?;
        let bound: Vec<&Container> = list
            .items
            .iter()
            .filter(|c| c.spec.node.as_deref() == Some(node.as_str()))
            .collect();
        let stateful: Vec<&str> = bound
            .iter()
            .filter(|c| c.spec.template.as_ref().is_some_and(|t| t.stateful))
            .map(|c| c.metadata.name.as_str())
            .collect();
        let moving: Vec<String> = bound
            .iter()
            .filter(|c| !c.spec.template.as_ref().is_some_and(|t| t.stateful))
            .map(|c| match &c.spec.handoff {
                Some(h) => {
                    let phase = h
                        .status
                        .as_ref()
                        .map_or(ContainerPhase::Pending, |s| s.phase);
                    format!("{} -> {} ({phase})", c.metadata.name, h.node)
                }
                None => format!("{} (waiting for room)", c.metadata.name),
            })
            .collect();
        if last.as_ref() != Some(&moving) {
            for line in &moving {
                println!("  {line}");
            }
            last = Some(moving.clone());
        }
        if moving.is_empty() {
            for name in &stateful {
                println!(
                    "  {name} stays: stateful members are never moved automatically (texu replace {name} --node NODE)"
                );
            }
            println!("node/{node} drained");
            return Ok(ExitCode::SUCCESS);
        }
        if started.elapsed() >= args.timeout {
            bail!(
                "node {node} still holds {} container(s) after {:?}; the drain goes on (texu get containers -o wide)",
                moving.len(),
                args.timeout
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Moves one member to another board; it starts there with `replaces` set to its old address.
pub fn replace(client: &Client, args: &ReplaceArgs) -> Result<ExitCode> {
    valid("container", &args.container)?;
    valid("node", &args.node)?;
    let v: serde_json::Value = client.post(&format!(
        "/v1/containers/{}/replace?node={}",
        args.container, args.node
    ))?;
    println!(
        "container/{} {}",
        args.container,
        v["message"].as_str().unwrap_or("replacing")
    );
    Ok(ExitCode::SUCCESS)
}
