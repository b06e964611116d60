//! `texu apply -f PATH...`: validate every manifest locally, then create or update each object.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use serde::Deserialize;
use serde_json::Value;
use texu_api::{Manifest, Role};

use crate::client::{self, Client};
use crate::load;

/// Arguments of `texu apply`.
#[derive(clap::Args)]
pub struct Args {
    /// Manifest files, directories (*.yaml, *.yml) or `-` for stdin.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    files: Vec<PathBuf>,
    /// Validate and show what would change, without writing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Deserialize)]
struct Applied {
    result: String,
    object: Role,
}

/// Runs `texu apply`.
pub fn run(client: &Client, args: &Args) -> Result<ExitCode> {
    let Some(manifests) = load_or_report(&args.files) else {
        return Ok(ExitCode::FAILURE);
    };
    let mut failed = false;
    for (_file, manifest) in manifests {
        match manifest {
            Manifest::Role(role) => {
                let name = role.metadata.name.clone();
                match apply_role(client, role, args.dry_run) {
                    Ok(line) => println!("{line}"),
                    Err(e) => {
                        eprintln!("error: role/{name}: {e:#}");
                        failed = true;
                    }
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Loads and validates manifests, printing every diagnostic; `None` when any is invalid.
pub fn load_or_report(files: &[PathBuf]) -> Option<Vec<(String, Manifest)>> {
    match load::load_paths(files) {
        Ok(manifests) => Some(manifests),
        Err(diagnostics) => {
            for d in &diagnostics {
                eprintln!("{d}");
            }
            eprintln!(
                "error: {} problem{} found; nothing was applied",
                diagnostics.len(),
                if diagnostics.len() == 1 { "" } else { "s" }
            );
            None
        }
    }
}

fn apply_role(client: &Client, role: Role, dry_run: bool) -> Result<String> {
    let path = format!("/v1/roles/{}", role.metadata.name);
    let name = role.metadata.name.clone();
    if !dry_run {
        let applied: Applied = client.put(&path, &role)?;
        return Ok(format!("role/{name} {}", applied.result));
    }
    let before: Option<Role> = match client.get::<Role>(&path) {
        Ok(r) => Some(r),
        Err(e) if client::is_not_found(&e) => None,
        Err(e) => return Err(e),
    };
    let applied: Applied = client.put(&format!("{path}?dryRun=true"), &role)?;
    let mut line = format!("role/{name} {} (dry run)", applied.result);
    if let Some(before) = before {
        let old = serde_json::to_value(&before.spec)?;
        let new = serde_json::to_value(&applied.object.spec)?;
        let mut changes = Vec::new();
        diff("spec", &old, &new, &mut changes);
        for change in changes {
            line.push_str(&format!("\n  {change}"));
        }
    }
    Ok(line)
}

/// Lists the leaves that differ between two JSON values, as `path: old -> new`.
pub fn diff(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let (x, y) = (
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                );
                diff(&format!("{path}.{k}"), x, y, out);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), x, y, out);
            }
        }
        _ if old != new => out.push(format!("{path}: {old} -> {new}")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_names_changed_leaves() {
        let mut out = Vec::new();
        diff(
            "spec",
            &json!({"replicas": 3, "ports": [{"port": 80}], "image": "host"}),
            &json!({"replicas": 4, "ports": [{"port": 80}], "image": "host", "command": ["x"]}),
            &mut out,
        );
        assert_eq!(
            out,
            vec!["spec.command: null -> [\"x\"]", "spec.replicas: 3 -> 4"]
        );
    }
}
