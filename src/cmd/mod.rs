//! The `texu` subcommands, one module each.

pub mod agent;
pub mod apply;
pub mod controller;
pub mod delete;
pub mod demo;
mod demo_stack;
pub mod drain;
pub mod endpoints;
pub mod events;
pub mod get;
pub mod image;
pub mod label;
pub mod sim;
pub mod status;
pub mod token;

use std::process::ExitCode;

use anyhow::Result;

/// `texu schema`: the JSON Schema of manifests.
pub fn schema() -> Result<ExitCode> {
    println!(
        "{}",
        serde_json::to_string_pretty(&texu_api::manifest_json_schema())?
    );
    Ok(ExitCode::SUCCESS)
}

/// `texu cordon NODE` / `texu uncordon NODE`.
pub fn cordon(client: &crate::client::Client, node: &str, on: bool) -> Result<ExitCode> {
    texu_api::validate_name(node)
        .map_err(|why| anyhow::anyhow!("invalid node name {node:?}: {why}"))?;
    let verb = if on { "cordon" } else { "uncordon" };
    let v: serde_json::Value = client.post(&format!("/v1/nodes/{node}/{verb}"))?;
    println!("node/{node} {}", v["result"].as_str().unwrap_or(verb));
    Ok(ExitCode::SUCCESS)
}
