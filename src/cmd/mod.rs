//! The `texu` subcommands, one module each.

pub mod agent;
pub mod apply;
pub mod controller;
pub mod delete;
pub mod demo;
pub mod get;
pub mod image;
pub mod status;

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
