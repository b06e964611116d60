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
    let mut text = render(&client.server(), &nodes, &roles, &containers);
    // Several controllers: say which leads (a single controller's output stays as it was).
    if let Ok(leader) = client.get::<Value>("/v1/leader") {
        if let Some(line) = leader_line(&leader) {
            let at = text.find('\n').map_or(text.len(), |i| i + 1);
            text.insert_str(at, &line);
        }
    }
    print!("{}", crate::output::escape_text(&text));
    Ok(ExitCode::SUCCESS)
}

/// `Leader: URL (N controllers)` when several controllers share the store.
pub fn leader_line(answer: &Value) -> Option<String> {
    let controllers = answer["controllers"].as_array().map_or(0, Vec::len);
    if controllers < 2 {
        return None;
    }
    let leader = answer["leader"].as_str().unwrap_or("none elected yet");
    Some(format!(
        "Leader:      {leader} ({controllers} controllers)\n"
    ))
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
    fn the_leader_shows_only_when_there_are_several_controllers() {
        let one = json!({"leader": "http://a:1", "controllers": ["http://a:1"]});
        assert_eq!(leader_line(&one), None);
        let three = json!({"leader": "http://b:2", "controllers": ["http://a:1", "http://b:2", "http://c:3"]});
        assert_eq!(
            leader_line(&three).as_deref(),
            Some("Leader:      http://b:2 (3 controllers)\n")
        );
        let none = json!({"leader": null, "controllers": ["http://a:1", "http://b:2"]});
        assert!(leader_line(&none).is_some_and(|l| l.contains("none elected yet")));
    }

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
