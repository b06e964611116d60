//! `texu status`: nodes ready/total and every role's desired and ready counts on one screen.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::Value;

use crate::client::Client;
use crate::output;

/// Runs `texu status`.
pub fn run(client: &Client) -> Result<ExitCode> {
    let items = |path: &str| -> Result<Vec<Value>> {
        let list: Value = client.get(path)?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    };
    let (nodes, roles, containers) = (
        items("/v1/nodes")?,
        items("/v1/roles")?,
        items("/v1/containers")?,
    );
    print!(
        "{}",
        crate::output::escape_text(&render(client.server(), &nodes, &roles, &containers))
    );
    Ok(ExitCode::SUCCESS)
}

/// The summary text.
pub fn render(server: &str, nodes: &[Value], roles: &[Value], containers: &[Value]) -> String {
    let phase = |v: &Value| {
        v.pointer("/status/phase")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let ready_nodes = nodes
        .iter()
        .filter(|n| phase(n).as_deref() == Some("Ready"))
        .count();
    let mut out = format!("Controller:  {server}\n");
    out.push_str(&format!(
        "Nodes:       {ready_nodes}/{} ready\n",
        nodes.len()
    ));
    let running = containers
        .iter()
        .filter(|c| matches!(phase(c).as_deref(), Some("Running" | "Ready")))
        .count();
    out.push_str(&format!(
        "Containers:  {running}/{} running\n",
        containers.len()
    ));
    if roles.is_empty() {
        out.push_str("Roles:       none (apply a manifest with `texu apply -f FILE`)\n");
        return out;
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = roles
        .iter()
        .map(|r| {
            let name = r
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("-")
                .to_string();
            let desired = r
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let ready = super::get::ready_count(&name, containers);
            let state = if ready as i64 >= desired {
                "ok"
            } else {
                "progressing"
            };
            vec![
                name,
                desired.to_string(),
                ready.to_string(),
                state.to_string(),
            ]
        })
        .collect();
    out.push_str(&output::table(
        &["ROLE", "DESIRED", "READY", "STATE"],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn summarises_nodes_and_roles() {
        let nodes = vec![
            json!({"status": {"phase": "Ready"}}),
            json!({"status": {"phase": "NotReady"}}),
        ];
        let roles = vec![json!({"metadata": {"name": "app"}, "spec": {"replicas": 2}})];
        let containers = vec![json!({"spec": {"role": "app"}, "status": {"phase": "Ready"}})];
        let text = render("http://x", &nodes, &roles, &containers);
        assert!(text.contains("Nodes:       1/2 ready"), "{text}");
        assert!(text.contains("Containers:  1/1 running"), "{text}");
        let last = text
            .lines()
            .last()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>();
        assert_eq!(last, ["app", "2", "1", "progressing"]);
    }
}
