//! `texu label node NODE k=v k-`: the admin's labels on a node, the only ones placement uses.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{bail, Result};
use serde_json::Value;

use crate::client::Client;

/// Arguments of `texu label`.
#[derive(clap::Args)]
pub struct Args {
    /// What to label: `node`.
    kind: String,
    /// The node's name.
    name: String,
    /// `key=value` sets a label, `key-` removes it.
    #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
    changes: Vec<String>,
}

/// One argument as a change: `Some(value)` sets, `None` removes.
pub fn parse_change(text: &str) -> Result<(String, Option<String>)> {
    let (key, value) = match text.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => match text.strip_suffix('-') {
            Some(k) => (k, None),
            None => bail!("{text:?}: expected KEY=VALUE to set a label or KEY- to remove one"),
        },
    };
    texu_api::validate_label_key(key).map_err(|e| anyhow::anyhow!("label key {key:?}: {e}"))?;
    if let Some(v) = value {
        texu_api::validate_label_value(v).map_err(|e| anyhow::anyhow!("label value {v:?}: {e}"))?;
    }
    Ok((key.to_string(), value.map(str::to_string)))
}

/// Runs `texu label`.
pub fn run(client: &Client, args: &Args) -> Result<ExitCode> {
    if !matches!(args.kind.as_str(), "node" | "nodes" | "no") {
        bail!("only nodes carry labels set this way; try texu label node NAME k=v");
    }
    let name = &args.name;
    texu_api::validate_name(name)
        .map_err(|why| anyhow::anyhow!("invalid node name {name:?}: {why}"))?;
    let changes = args
        .changes
        .iter()
        .map(|c| parse_change(c))
        .collect::<Result<BTreeMap<_, _>>>()?;
    let _: Value = client.post_json(
        &format!("/v1/nodes/{name}/labels"),
        &serde_json::json!({ "labels": changes }),
    )?;
    println!("node/{name} labeled");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sets_and_removals() {
        assert_eq!(
            parse_change("trusted=yes").unwrap(),
            ("trusted".into(), Some("yes".into()))
        );
        assert_eq!(
            parse_change("site=").unwrap(),
            ("site".into(), Some(String::new()))
        );
        assert_eq!(parse_change("trusted-").unwrap(), ("trusted".into(), None));
        assert!(parse_change("trusted").is_err());
        assert!(parse_change("a b=c").is_err());
        assert!(parse_change("k=\u{1b}[2J").is_err());
    }
}
