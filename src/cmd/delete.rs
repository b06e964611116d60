//! `texu delete role NAME` and `texu delete -f PATH`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use texu_api::Manifest;

use crate::client::{self, Client};

/// Arguments of `texu delete`.
#[derive(clap::Args)]
pub struct Args {
    /// Kind of object: `role`, or `node` to remove a board from the cluster.
    kind: Option<String>,
    /// Names of the objects.
    names: Vec<String>,
    /// Delete the objects these manifests describe.
    #[arg(short = 'f', long = "filename", num_args = 1.., conflicts_with_all = ["kind", "names"])]
    files: Vec<PathBuf>,
    /// Do not fail when an object does not exist.
    #[arg(long)]
    ignore_not_found: bool,
}

/// Runs `texu delete`.
pub fn run(client: &Client, args: &Args) -> Result<ExitCode> {
    let names: Vec<String> = if !args.files.is_empty() {
        let Some(manifests) = super::apply::load_or_report(&args.files) else {
            return Ok(ExitCode::FAILURE);
        };
        manifests
            .into_iter()
            .map(|(_, m)| match m {
                Manifest::Role(r) => r.metadata.name,
            })
            .collect()
    } else {
        match args.kind.as_deref() {
            Some("role" | "roles") => {}
            Some("node" | "nodes") => return delete_nodes(client, &args.names),
            Some(other) => bail!("cannot delete {other:?}: operators delete roles and nodes (containers follow from them)"),
            None => bail!("say what to delete: `texu delete role NAME` or `texu delete -f FILE`"),
        }
        if args.names.is_empty() {
            bail!("name the roles to delete: `texu delete role NAME...`");
        }
        args.names.clone()
    };
    delete_each(client, "role", &names, args.ignore_not_found)
}

/// Deletes `kind/NAME` for each name, going on after a failure; non-zero exit if any failed.
fn delete_each(
    client: &Client,
    kind: &str,
    names: &[String],
    ignore_not_found: bool,
) -> Result<ExitCode> {
    let mut failed = false;
    for name in names {
        if let Err(why) = texu_api::validate_name(name) {
            eprintln!("error: {kind}/{name}: invalid name: {why}");
            failed = true;
            continue;
        }
        match client.delete::<serde_json::Value>(&format!("/v1/{kind}s/{name}")) {
            Ok(_) => println!("{kind}/{name} deleted"),
            Err(e) if client::is_not_found(&e) && ignore_not_found => {}
            Err(e) => {
                eprintln!("error: {kind}/{name}: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Removes boards from the cluster: their containers move, other boards drop their routes.
fn delete_nodes(client: &Client, names: &[String]) -> Result<ExitCode> {
    if names.is_empty() {
        bail!("name the nodes to delete: `texu delete node NAME...`");
    }
    delete_each(client, "node", names, false)
}
