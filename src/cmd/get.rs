//! `texu get` and `texu describe`: read objects and print them as tables, JSON or YAML.

use std::process::ExitCode;

use anyhow::{bail, Result};
use serde_json::Value;

use crate::client::Client;
use crate::output;

/// Arguments of `texu get`.
#[derive(clap::Args)]
pub struct Args {
    /// roles, nodes, containers or endpoints (singular and short forms work too).
    kind: String,
    /// One object's name.
    name: Option<String>,
    /// Output: wide, json or yaml (default: a table).
    #[arg(short, long)]
    output: Option<Format>,
    /// Only containers of this role.
    #[arg(long)]
    role: Option<String>,
    /// Only containers on this node.
    #[arg(long)]
    node: Option<String>,
    /// After listing, print every change as it happens (Ctrl-C to stop).
    #[arg(short, long)]
    watch: bool,
}

/// Arguments of `texu describe`.
#[derive(clap::Args)]
pub struct DescribeArgs {
    /// role, node or container.
    kind: String,
    /// The object's name.
    name: String,
}

/// An output format.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Wide,
    Json,
    Yaml,
}

/// The kinds the CLI reads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Resource {
    Roles,
    Nodes,
    Containers,
}

impl Resource {
    /// Parses `role`, `roles`, `node`, `no`, `container`, `ct`...
    pub fn parse(word: &str) -> Result<Resource> {
        Ok(match word.to_ascii_lowercase().as_str() {
            "role" | "roles" => Resource::Roles,
            "node" | "nodes" | "no" => Resource::Nodes,
            "container" | "containers" | "ct" => Resource::Containers,
            other => bail!("unknown kind {other:?}: expected roles, nodes or containers"),
        })
    }
    fn path(self) -> &'static str {
        match self {
            Resource::Roles => "/v1/roles",
            Resource::Nodes => "/v1/nodes",
            Resource::Containers => "/v1/containers",
        }
    }
    fn singular(self) -> &'static str {
        match self {
            Resource::Roles => "role",
            Resource::Nodes => "node",
            Resource::Containers => "container",
        }
    }
}

/// Runs `texu get`.
pub fn run(client: &Client, args: &Args) -> Result<ExitCode> {
    if super::endpoints::is_endpoints(&args.kind) {
        return super::endpoints::run(client, args.name.as_deref(), args.output);
    }
    let resource = Resource::parse(&args.kind)?;
    if let Some(name) = &args.name {
        texu_api::validate_name(name)
            .map_err(|why| anyhow::anyhow!("invalid name {name:?}: {why}"))?;
        let object: Value = client.get(&format!("{}/{name}", resource.path()))?;
        return print_objects(client, resource, vec![object], args.output, false);
    }
    let mut query = Vec::new();
    for (key, value) in [("role", &args.role), ("node", &args.node)] {
        if let Some(v) = value {
            if resource != Resource::Containers {
                bail!("--{key} filters containers only");
            }
            texu_api::validate_name(v).map_err(|why| anyhow::anyhow!("--{key} {v:?}: {why}"))?;
            query.push(format!("{key}={v}"));
        }
    }
    let path = if query.is_empty() {
        resource.path().to_string()
    } else {
        format!("{}?{}", resource.path(), query.join("&"))
    };
    let list: Value = client.get(&path)?;
    if args.watch {
        return watch(client, resource, &path, &list);
    }
    match args.output {
        Some(Format::Json) => println!("{}", serde_json::to_string_pretty(&list)?),
        Some(Format::Yaml) => print!("{}", output::escape_text(&serde_yaml_ng::to_string(&list)?)),
        _ => {
            let items = list["items"].as_array().cloned().unwrap_or_default();
            return print_objects(client, resource, items, args.output, true);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_objects(
    client: &Client,
    resource: Resource,
    items: Vec<Value>,
    format: Option<Format>,
    is_list: bool,
) -> Result<ExitCode> {
    match format {
        Some(Format::Json) => println!("{}", serde_json::to_string_pretty(&items[0])?),
        Some(Format::Yaml) => print!(
            "{}",
            output::escape_text(&serde_yaml_ng::to_string(&items[0])?)
        ),
        _ if items.is_empty() && is_list => {
            eprintln!("No {} found.", resource.path().trim_start_matches("/v1/"))
        }
        _ => {
            let wide = format == Some(Format::Wide);
            let containers = if resource == Resource::Roles {
                containers(client)?
            } else {
                Vec::new()
            };
            print!("{}", render(resource, &items, &containers, wide));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the list, then one line per change: `MODIFIED role/app generation=2`. When the
/// controller has compacted the history the watch would resume from (410 Gone), lists again,
/// prints the fresh table after a `RESYNC` line, and watches on from the new revision.
fn watch(client: &Client, resource: Resource, path: &str, list: &Value) -> Result<ExitCode> {
    use std::io::BufRead;
    let mut list = list.clone();
    let sep = if path.contains('?') { '&' } else { '?' };
    loop {
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let containers = if resource == Resource::Roles {
            containers(client)?
        } else {
            Vec::new()
        };
        print!("{}", render(resource, &items, &containers, false));
        let revision = list["revision"].as_i64().unwrap_or(0);
        let reader = match client.watch(&format!("{path}{sep}watch=true&revision={revision}")) {
            Err(e) if is_gone(&e) => {
                resync(client, path, &mut list)?;
                continue;
            }
            other => other?,
        };
        let mut gone = false;
        for line in reader.lines() {
            let event: Value = serde_json::from_str(&line?)?;
            if event["type"] == "ERROR" {
                if event["code"] == 410 {
                    gone = true;
                    break;
                }
                bail!("watch ended: {}", s(&event, "/error"));
            }
            if event["type"] == "BOOKMARK" {
                continue;
            }
            println!("{}", output::escape(&change_line(resource, &event)));
        }
        if !gone {
            return Ok(ExitCode::SUCCESS);
        }
        resync(client, path, &mut list)?;
    }
}

fn is_gone(e: &anyhow::Error) -> bool {
    e.downcast_ref::<crate::client::ApiFailure>()
        .is_some_and(|f| f.status == 410)
}

/// Lists again after the watch's revision was compacted away.
fn resync(client: &Client, path: &str, list: &mut Value) -> Result<()> {
    *list = client.get(path)?;
    println!(
        "RESYNC history compacted; listed again at revision {}",
        s(list, "/revision")
    );
    Ok(())
}

/// One watch event as a line: `MODIFIED role/app generation=2`.
fn change_line(resource: Resource, event: &Value) -> String {
    let object = &event["object"];
    let mut out = format!(
        "{} {}/{}",
        s(event, "/type"),
        resource.singular(),
        s(object, "/metadata/name")
    );
    for (label, pointer) in [
        ("phase", "/status/phase"),
        ("node", "/spec/node"),
        ("generation", "/metadata/generation"),
    ] {
        if let Some(v) = object.pointer(pointer).filter(|v| !v.is_null()) {
            out.push_str(&format!(
                " {label}={}",
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            ));
        }
    }
    out
}

fn containers(client: &Client) -> Result<Vec<Value>> {
    let list: Value = client.get("/v1/containers")?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

fn s(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Counts the containers of a role that are `Ready`.
pub fn ready_count(role: &str, containers: &[Value]) -> usize {
    containers
        .iter()
        .filter(|c| c.pointer("/spec/role").and_then(Value::as_str) == Some(role))
        .filter(|c| c.pointer("/status/phase").and_then(Value::as_str) == Some("Ready"))
        .count()
}

/// Renders objects of one kind as a table.
pub fn render(resource: Resource, items: &[Value], containers: &[Value], wide: bool) -> String {
    let age = |o: &Value| output::age(o.pointer("/metadata/created").and_then(Value::as_str));
    match resource {
        Resource::Roles => {
            let mut header = vec!["NAME", "READY", "IMAGE", "GENERATION", "AGE"];
            if wide {
                header.extend(["PORTS", "STRATEGY", "STATEFUL", "PRIVILEGED"]);
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|r| {
                    let name = s(r, "/metadata/name");
                    let ready = ready_count(&name, containers);
                    let desired = r
                        .pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1);
                    let mut row = vec![
                        name,
                        format!("{ready}/{desired}"),
                        s(r, "/spec/image"),
                        s(r, "/metadata/generation"),
                        age(r),
                    ];
                    if wide {
                        let ports: Vec<String> = r
                            .pointer("/spec/ports")
                            .and_then(Value::as_array)
                            .map(|ps| {
                                ps.iter()
                                    .map(|p| match p.get("hostPort").and_then(Value::as_i64) {
                                        Some(h) => format!("{h}:{}", s(p, "/port")),
                                        None => s(p, "/port"),
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        row.push(if ports.is_empty() {
                            "-".into()
                        } else {
                            ports.join(",")
                        });
                        let strategy = s(r, "/spec/placement/strategy");
                        row.push(if strategy == "-" {
                            "spread".into()
                        } else {
                            strategy
                        });
                        for flag in ["/spec/stateful", "/spec/privileged"] {
                            row.push(
                                r.pointer(flag)
                                    .and_then(Value::as_bool)
                                    .unwrap_or(false)
                                    .to_string(),
                            );
                        }
                    }
                    row
                })
                .collect();
            output::table(&header, &rows)
        }
        Resource::Nodes => {
            let mut header = vec!["NAME", "STATUS", "ARCH", "CPUS", "MEMORY", "AGE"];
            if wide {
                header.extend(["ADDRESS", "SUBNET", "LABELS", "REQUESTED"]);
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|n| {
                    let mut status = s(n, "/status/phase");
                    if n.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
                        status.push_str(",Cordoned");
                    }
                    let memory = n
                        .pointer("/spec/memoryBytes")
                        .and_then(Value::as_u64)
                        .map(output::bytes)
                        .unwrap_or_else(|| "-".into());
                    let mut row = vec![
                        s(n, "/metadata/name"),
                        status,
                        s(n, "/spec/arch"),
                        s(n, "/spec/cpus"),
                        memory,
                        age(n),
                    ];
                    if wide {
                        row.push(s(n, "/spec/address"));
                        row.push(s(n, "/spec/subnet"));
                        row.push(labels(n));
                        row.push(requested(n));
                    }
                    row
                })
                .collect();
            output::table(&header, &rows)
        }
        Resource::Containers => {
            let mut header = vec!["NAME", "ROLE", "NODE", "PHASE", "RESTARTS", "AGE"];
            if wide {
                header.extend(["ADDRESS", "GENERATION", "REASON"]);
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|c| {
                    let restarts = c
                        .pointer("/status/restarts")
                        .and_then(Value::as_i64)
                        .unwrap_or(0);
                    let mut row = vec![
                        s(c, "/metadata/name"),
                        s(c, "/spec/role"),
                        s(c, "/spec/node"),
                        s(c, "/status/phase"),
                        restarts.to_string(),
                        age(c),
                    ];
                    if wide {
                        row.push(s(c, "/status/address"));
                        row.push(s(c, "/spec/generation"));
                        row.push(s(c, "/status/reason"));
                    }
                    row
                })
                .collect();
            output::table(&header, &rows)
        }
    }
}

fn labels(o: &Value) -> String {
    match o.pointer("/metadata/labels").and_then(Value::as_object) {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".into(),
    }
}

/// The labels a board asks for that an admin has not given it (`texu label node` accepts
/// them), as `k=v,...`; `-` when none.
fn requested(o: &Value) -> String {
    let given = o.pointer("/metadata/labels").and_then(Value::as_object);
    let pending: Vec<String> = o
        .pointer("/status/requestedLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, v)| given.and_then(|g| g.get(*k)) != Some(*v))
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    if pending.is_empty() {
        "-".into()
    } else {
        pending.join(",")
    }
}

/// Runs `texu describe`.
pub fn describe(client: &Client, args: &DescribeArgs) -> Result<ExitCode> {
    let resource = Resource::parse(&args.kind)?;
    let name = &args.name;
    texu_api::validate_name(name).map_err(|why| anyhow::anyhow!("invalid name {name:?}: {why}"))?;
    let object: Value = client.get(&format!("{}/{name}", resource.path()))?;
    let mut out = String::new();
    let mut say = |line: String| {
        out.push_str(&line);
        out.push('\n');
    };
    say(format!("Kind:         {}", s(&object, "/kind")));
    say(format!("Name:         {name}"));
    say(format!("Labels:       {}", labels(&object)));
    if resource == Resource::Nodes {
        say(format!(
            "Requested:    {} (labels the board asks for; texu label node {name} k=v accepts one)",
            requested(&object)
        ));
    }
    say(format!("Created:      {}", s(&object, "/metadata/created")));
    say(format!(
        "Generation:   {}",
        s(&object, "/metadata/generation")
    ));
    say(format!(
        "Revision:     {}",
        s(&object, "/metadata/revision")
    ));
    say("Spec:".into());
    indented(&object["spec"], &mut say);
    if let Some(status) = object.get("status").filter(|s| !s.is_null()) {
        say("Status:".into());
        indented(status, &mut say);
    }
    let related = match resource {
        Resource::Roles => Some(format!("/v1/containers?role={name}")),
        Resource::Nodes => Some(format!("/v1/containers?node={name}")),
        Resource::Containers => None,
    };
    if let Some(path) = related {
        let list: Value = client.get(&path)?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        say("Containers:".into());
        if items.is_empty() {
            say("  <none>".into());
        } else {
            for line in render(Resource::Containers, &items, &[], true).lines() {
                say(format!("  {line}"));
            }
        }
    }
    print!("{}", output::escape_text(&out));
    Ok(ExitCode::SUCCESS)
}

fn indented(value: &Value, say: &mut impl FnMut(String)) {
    let text = serde_yaml_ng::to_string(value).unwrap_or_default();
    for line in text.lines() {
        say(format!("  {line}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn role_table_counts_ready_containers() {
        let roles = vec![
            json!({"metadata": {"name": "app", "generation": 2}, "spec": {"replicas": 3, "image": "host"}}),
        ];
        let containers = vec![
            json!({"spec": {"role": "app"}, "status": {"phase": "Ready"}}),
            json!({"spec": {"role": "app"}, "status": {"phase": "Creating"}}),
            json!({"spec": {"role": "db"}, "status": {"phase": "Ready"}}),
        ];
        let t = render(Resource::Roles, &roles, &containers, false);
        let mut lines = t.lines();
        assert_eq!(
            lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
            ["NAME", "READY", "IMAGE", "GENERATION", "AGE"]
        );
        assert_eq!(
            lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
            ["app", "1/3", "host", "2", "-"]
        );
    }

    #[test]
    fn parses_kind_words() {
        assert_eq!(Resource::parse("ct").unwrap(), Resource::Containers);
        assert_eq!(Resource::parse("Roles").unwrap(), Resource::Roles);
        assert!(Resource::parse("pods").is_err());
    }
}
