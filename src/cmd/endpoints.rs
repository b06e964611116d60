//! `texu get endpoints [ROLE]`: the Ready containers behind each role's named ports.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::Value;

use super::get::Format;
use crate::client::Client;
use crate::output;

/// Whether `word` names endpoints (`endpoints`, `endpoint`, `ep`).
pub fn is_endpoints(word: &str) -> bool {
    matches!(
        word.to_ascii_lowercase().as_str(),
        "endpoints" | "endpoint" | "ep"
    )
}

/// Prints the endpoints of `role`, or of every role.
pub fn run(client: &Client, role: Option<&str>, format: Option<Format>) -> Result<ExitCode> {
    let value: Value = match role {
        Some(role) => {
            texu_api::validate_name(role)
                .map_err(|why| anyhow::anyhow!("invalid role name {role:?}: {why}"))?;
            client.get(&format!("/v1/endpoints/{role}"))?
        }
        None => client.get("/v1/endpoints")?,
    };
    match format {
        Some(Format::Json) => println!("{}", serde_json::to_string_pretty(&value)?),
        Some(Format::Yaml) => print!("{}", serde_yaml_ng::to_string(&value)?),
        _ => {
            let roles = match role {
                Some(_) => vec![value],
                None => value["items"].as_array().cloned().unwrap_or_default(),
            };
            let rows = rows(&roles, format == Some(Format::Wide));
            if rows.is_empty() {
                eprintln!("No endpoints found.");
            } else if format == Some(Format::Wide) {
                print!(
                    "{}",
                    output::table(&["ROLE", "PORT", "ENDPOINT", "CONTAINER", "NODE"], &rows)
                );
            } else {
                print!("{}", output::table(&["ROLE", "PORT", "ENDPOINTS"], &rows));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One row per role and port (`address:port, ...`), or per endpoint when `wide`.
fn rows(roles: &[Value], wide: bool) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for r in roles {
        let role = r["role"].as_str().unwrap_or_default();
        let Some(ports) = r["ports"].as_object() else {
            continue;
        };
        for (port, list) in ports {
            let list = list.as_array().cloned().unwrap_or_default();
            let at = |e: &Value| format!("{}:{}", e["address"].as_str().unwrap_or("?"), e["port"]);
            if !wide {
                let all: Vec<String> = list.iter().map(at).collect();
                let shown = if all.is_empty() {
                    "<none>".into()
                } else {
                    all.join(",")
                };
                rows.push(vec![role.into(), port.clone(), shown]);
                continue;
            }
            for e in &list {
                rows.push(vec![
                    role.into(),
                    port.clone(),
                    at(e),
                    e["name"].as_str().unwrap_or_default().into(),
                    e["node"].as_str().unwrap_or_default().into(),
                ]);
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_per_port_or_per_endpoint() {
        let roles = vec![serde_json::json!({
            "role": "app",
            "ports": {
                "http": [
                    {"ordinal": 0, "name": "app-0", "node": "b1", "address": "198.19.1.2", "port": 8080},
                    {"ordinal": 1, "name": "app-1", "node": "b2", "address": "198.19.2.2", "port": 8080}
                ],
                "admin": []
            }
        })];
        assert_eq!(
            rows(&roles, false),
            [
                vec!["app".to_string(), "admin".into(), "<none>".into()],
                vec![
                    "app".into(),
                    "http".into(),
                    "198.19.1.2:8080,198.19.2.2:8080".into()
                ],
            ]
        );
        let wide = rows(&roles, true);
        assert_eq!(wide.len(), 2);
        assert_eq!(wide[1], ["app", "http", "198.19.2.2:8080", "app-1", "b2"]);
    }
}
