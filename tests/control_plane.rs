//! End-to-end tests of the control plane: a real `texu controller` process, driven by the real
//! `texu` CLI and by raw HTTP, on the embedded store and on a real etcd.

mod common;

use std::time::Duration;

use common::{manifests_dir, ControllerProcess};
use serde_json::Value;
use texu_controller::store::conformance::etcd_server::EtcdServer;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// Apply, read back, re-apply, change, delete: what an operator does on day one.
fn role_lifecycle(c: &ControllerProcess) {
    let good = manifests_dir().join("good");
    let stack = good.join("stack.yaml");
    let stack = stack.to_str().unwrap();

    let out = c.texu_ok(&["apply", "-f", stack]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["role/proxy created", "role/app created", "role/db created"],
        "first apply"
    );

    let roles = c.get_json(&["roles"]);
    assert_eq!(names(&roles), ["app", "db", "proxy"]);
    assert!(roles["revision"].as_i64().unwrap() > 0);
    let app = c.get_json(&["roles", "app"]);
    assert_eq!(app["metadata"]["generation"], 1);
    assert_eq!(app["spec"]["replicas"], 3);

    let out = c.texu_ok(&["apply", "-f", stack]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "role/proxy unchanged",
            "role/app unchanged",
            "role/db unchanged"
        ],
        "re-apply of the same manifest"
    );
    assert_eq!(
        c.get_json(&["roles", "app"])["metadata"]["revision"],
        app["metadata"]["revision"]
    );

    let changed = good.join("stack-changed.yaml");
    let changed = changed.to_str().unwrap();
    let dry = c.texu_ok(&["apply", "--dry-run", "-f", changed]);
    assert!(dry.contains("role/app configured (dry run)"), "{dry}");
    assert!(dry.contains("spec.replicas: 3 -> 4"), "{dry}");
    assert_eq!(
        c.get_json(&["roles", "app"])["spec"]["replicas"],
        3,
        "dry run wrote nothing"
    );

    let out = c.texu_ok(&["apply", "-f", changed]);
    assert!(out.contains("role/app configured"), "{out}");
    assert!(out.contains("role/proxy unchanged"), "{out}");
    let app2 = c.get_json(&["roles", "app"]);
    assert_eq!(app2["metadata"]["generation"], 2);
    assert_eq!(app2["spec"]["replicas"], 4);
    assert_eq!(app2["metadata"]["created"], app["metadata"]["created"]);

    let table = c.texu_ok(&["get", "roles"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "IMAGE", "GENERATION", "AGE"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("app ") && l.contains("0/4")),
        "{table}"
    );

    let yaml = c.texu_ok(&["get", "roles", "db", "-o", "yaml"]);
    assert!(yaml.contains("stateful: true"), "{yaml}");
    let described = c.texu_ok(&["describe", "role", "app"]);
    assert!(described.contains("Generation:   2"), "{described}");

    let status = c.texu_ok(&["status"]);
    assert!(status.contains("Nodes:       0/0 ready"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["app", "4", "0", "progressing"]),
        "{status}"
    );

    let out = c.texu_ok(&["delete", "role", "app"]);
    assert_eq!(out.trim(), "role/app deleted");
    let missing = c.texu(&["get", "roles", "app"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("role app not found"),
        "{}",
        stderr(&missing)
    );

    let out = c.texu_ok(&["delete", "-f", stack, "--ignore-not-found"]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["role/proxy deleted", "role/db deleted"]
    );
    assert!(names(&c.get_json(&["roles"])).is_empty());
}

#[test]
fn role_lifecycle_on_the_embedded_store() {
    let c = ControllerProcess::start();
    role_lifecycle(&c);
}

#[test]
fn role_lifecycle_on_etcd() {
    let etcd = EtcdServer::start();
    let endpoint = etcd.endpoint().trim_start_matches("http://").to_string();
    let c = ControllerProcess::start_with_store(Some(format!("etcd://{endpoint}")));
    role_lifecycle(&c);
}

#[test]
fn stdin_and_directories_are_manifest_sources() {
    let c = ControllerProcess::start();
    let text = std::fs::read(manifests_dir().join("good/stack.yaml")).unwrap();
    let out = c.texu_stdin(&["apply", "-f", "-"], &text);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 3);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        manifests_dir().join("good/stack.yaml"),
        dir.path().join("a.yaml"),
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
    let out = c.texu_ok(&["apply", "-f", dir.path().to_str().unwrap()]);
    assert_eq!(
        out.lines().filter(|l| l.ends_with("unchanged")).count(),
        3,
        "{out}"
    );
}

#[test]
fn malformed_manifests_are_refused_with_positions_and_store_nothing() {
    let c = ControllerProcess::start();
    let bad = manifests_dir().join("bad");
    let mut files: Vec<_> = std::fs::read_dir(&bad)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    // Generated here rather than committed: a 10 MB file.
    let tmp = tempfile::tempdir().unwrap();
    let huge = tmp.path().join("huge.yaml");
    let mut text =
        String::from("apiVersion: texu.io/v1\nkind: Role\nmetadata:\n  name: huge\n  labels:\n");
    while text.len() < 10 << 20 {
        text.push_str(&format!("    k{}: v\n", text.len()));
    }
    std::fs::write(&huge, text).unwrap();
    files.push(huge);
    files.sort();
    assert!(files.len() >= 21, "corpus has {} files", files.len());

    for file in &files {
        let path = file.to_str().unwrap();
        let out = c.texu(&["apply", "-f", path]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{path} was accepted");
        assert_eq!(
            out.status.code(),
            Some(1),
            "{path}: exit {:?}\n{err}",
            out.status
        );
        assert!(!err.contains("panicked"), "{path}: {err}");
        let first = err.lines().next().unwrap_or_default();
        let rest = first
            .strip_prefix(path)
            .and_then(|r| r.strip_prefix(':'))
            .unwrap_or_else(|| panic!("{path}: first line is not FILE:LINE:COLUMN: {first:?}"));
        let mut parts = rest.splitn(3, ':');
        let line: usize = parts
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("{first}"));
        let column: usize = parts
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("{first}"));
        let message = parts.next().unwrap_or_default().trim();
        assert!(line >= 1 && column >= 1, "{first}");
        assert!(!message.is_empty(), "{first}");
        assert!(err.contains("nothing was applied"), "{path}: {err}");
    }
    assert!(
        names(&c.get_json(&["roles"])).is_empty(),
        "nothing is stored"
    );

    // One bad document among good ones: nothing at all is applied.
    let mixed = tmp.path().join("mixed.yaml");
    let good = std::fs::read_to_string(manifests_dir().join("good/stack.yaml")).unwrap();
    std::fs::write(&mixed, format!("{good}\n---\napiVersion: texu.io/v1\nkind: Role\nmetadata:\n  name: A_B\nspec:\n  image: host\n")).unwrap();
    let out = c.texu(&["apply", "-f", mixed.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        names(&c.get_json(&["roles"])).is_empty(),
        "nothing is stored"
    );
}

fn http(method: &str, url: &str, token: Option<&str>) -> u16 {
    let mut req = common::http().request(method, url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let result = if method == "PUT" {
        req.set("Content-Type", "application/json")
            .send_string("{}")
    } else {
        req.call()
    };
    match result {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

#[test]
fn every_v1_route_requires_a_valid_token() {
    let c = ControllerProcess::start();
    assert!(!texu_controller::api::ROUTES.is_empty());
    for (method, pattern) in texu_controller::api::ROUTES {
        let url = format!("{}{}", c.server, pattern.replace("{name}", "app"));
        assert_eq!(
            http(method, &url, None),
            401,
            "{method} {pattern} without a token"
        );
        assert_eq!(
            http(method, &url, Some("wrong")),
            401,
            "{method} {pattern} with a wrong token"
        );
        let wrong_same_length = "x".repeat(c.token.len());
        assert_eq!(
            http(method, &url, Some(&wrong_same_length)),
            401,
            "{method} {pattern}"
        );
        let good = if *pattern == "/v1/join" {
            c.join_token()
        } else {
            c.token.clone()
        };
        assert_ne!(
            http(method, &url, Some(&good)),
            401,
            "{method} {pattern} with the token"
        );
    }
    // Unknown /v1 paths do not reveal whether they exist.
    assert_eq!(http("GET", &format!("{}/v1/secrets", c.server), None), 401);
    // Health and metrics are open.
    assert_eq!(http("GET", &format!("{}/healthz", c.server), None), 200);
    assert_eq!(http("GET", &format!("{}/metrics", c.server), None), 200);
}

#[test]
fn api_errors_are_json_with_the_right_status() {
    let c = ControllerProcess::start();
    let auth = format!("Bearer {}", c.token);
    let put = |name: &str, body: &str| match common::http()
        .put(&format!("{}/v1/roles/{name}", c.server))
        .set("Authorization", &auth)
        .set("Content-Type", "application/json")
        .send_string(body)
    {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    };
    let (status, body) = put("app", "{not json");
    assert_eq!(status, 400, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());

    let role = r#"{"apiVersion":"texu.io/v1","kind":"Role","metadata":{"name":"app"},"spec":{"image":"host","replicas":-1}}"#;
    let (status, body) = put("app", role);
    assert_eq!(status, 422, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["details"][0].as_str().unwrap().contains("spec.replicas"),
        "{body}"
    );

    let (status, body) = put("other", &role.replace("-1", "1"));
    assert_eq!(status, 400, "name mismatch: {body}");
    let (status, _) = put("..", &role.replace("-1", "1"));
    assert!(status == 400 || status == 404, "dot-dot name: {status}");
    let (status, body) = put("A_B", &role.replace("-1", "1"));
    assert_eq!(status, 400, "{body}");

    // A 2 MiB body announced by Content-Length is refused before it is sent...
    let addr = c.addr();
    let head = format!(
        "PUT /v1/roles/app HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        2 << 20
    );
    assert_eq!(raw_status(&c, head.as_bytes()), 413);
    // ...and a chunked body with no length is cut off once it passes the limit.
    let mut chunked = format!(
        "PUT /v1/roles/app HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..40 {
        chunked.extend_from_slice(format!("{:x}\r\n", 64 << 10).as_bytes());
        chunked.extend(std::iter::repeat_n(b'x', 64 << 10));
        chunked.extend_from_slice(b"\r\n");
    }
    assert_eq!(raw_status(&c, &chunked), 413);

    assert_eq!(
        http(
            "POST",
            &format!("{}/v1/roles/app", c.server),
            Some(&c.token)
        ),
        405
    );
    assert_eq!(
        http(
            "GET",
            &format!("{}/v1/roles/nope", c.server),
            Some(&c.token)
        ),
        404
    );
    assert_eq!(
        http(
            "GET",
            &format!("{}/v1/containers?role=Bad_Name", c.server),
            Some(&c.token)
        ),
        400
    );
}

/// Sends raw bytes (as much as the server takes) and returns the response's status code.
fn raw_status(c: &common::ControllerProcess, request: &[u8]) -> u16 {
    use std::io::{Read, Write};
    let mut stream = common::tls_stream(&c.addr(), &c.ca_file());
    // The server may answer and close before it has read everything: ignore write errors.
    let _ = stream.write_all(request);
    // Read without writing: TLS output a closed connection refused would only fail again.
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(n) = stream.conn.reader().read(&mut buf) {
            if n > 0 {
                response.extend_from_slice(&buf[..n]);
                if response.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
                continue;
            }
        }
        match stream.conn.read_tls(&mut stream.sock) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if stream.conn.process_new_packets().is_err() {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}

#[test]
fn metrics_count_requests_and_objects() {
    let c = ControllerProcess::start();
    c.texu_ok(&[
        "apply",
        "-f",
        manifests_dir().join("good/stack.yaml").to_str().unwrap(),
    ]);
    c.texu_ok(&["get", "roles"]);
    let text = common::http()
        .get(&format!("{}/metrics", c.server))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        text.contains("texu_controller_objects{kind=\"Role\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("route=\"/v1/roles/{name}\",method=\"PUT\",status=\"201\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("texu_controller_http_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[test]
fn watch_streams_changes_after_a_revision() {
    use std::io::BufRead;
    let c = ControllerProcess::start();
    let stack = manifests_dir().join("good/stack.yaml");
    c.texu_ok(&["apply", "-f", stack.to_str().unwrap()]);
    let list = c.get_json(&["roles"]);
    let revision = list["revision"].as_i64().unwrap();
    let response = c.watch_roles(revision).call().unwrap();
    assert_eq!(
        response.header("content-type"),
        Some("application/x-ndjson")
    );
    // Quiet streams carry BOOKMARK lines every few seconds; the changes are what matter here.
    let mut lines = std::io::BufReader::new(response.into_reader())
        .lines()
        .filter(|l| !l.as_ref().is_ok_and(|l| l.contains("\"BOOKMARK\"")));
    c.texu_ok(&[
        "apply",
        "-f",
        manifests_dir()
            .join("good/stack-changed.yaml")
            .to_str()
            .unwrap(),
    ]);
    c.texu_ok(&["delete", "role", "proxy"]);
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["type"], "MODIFIED");
    assert_eq!(first["object"]["metadata"]["name"], "app");
    assert_eq!(first["object"]["spec"]["replicas"], 4);
    assert!(first["revision"].as_i64().unwrap() > revision);
    let second: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(second["type"], "DELETED");
    assert_eq!(second["object"]["metadata"]["name"], "proxy");
}

#[test]
fn sigkill_during_applies_loses_no_acknowledged_write() {
    let mut c = ControllerProcess::start();
    let auth = format!("Bearer {}", c.token);
    let server = c.server.clone();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    // A bounded stream of applies from another thread; every 2xx answer is an acknowledgement.
    let writer = std::thread::spawn(move || {
        for i in 0..2000 {
            let name = format!("r{i}");
            let body = format!(
                r#"{{"apiVersion":"texu.io/v1","kind":"Role","metadata":{{"name":"{name}"}},"spec":{{"image":"host","replicas":{}}}}}"#,
                i % 7
            );
            match common::http()
                .put(&format!("{server}/v1/roles/{name}"))
                .set("Authorization", &auth)
                .timeout(Duration::from_secs(2))
                .send_string(&body)
            {
                Ok(r) if r.status() == 201 => {
                    if tx.send(name).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    });
    common::wait_for(Duration::from_secs(30), "50 stored applies", || {
        let stored = c.get_json(&["roles"])["items"]
            .as_array()
            .map_or(0, |a| a.len());
        (stored >= 50).then_some(())
    });
    c.kill9();
    writer.join().unwrap();
    let acknowledged: Vec<String> = rx.try_iter().collect();
    c.spawn();
    let stored = names(&c.get_json(&["roles"]));
    for name in &acknowledged {
        assert!(
            stored.contains(name),
            "acknowledged {name} is missing after SIGKILL"
        );
    }
    assert!(stored.len() >= 50, "stored {}", stored.len());
    // The store still takes writes.
    c.texu_ok(&[
        "apply",
        "-f",
        manifests_dir().join("good/stack.yaml").to_str().unwrap(),
    ]);
}

#[test]
fn sigterm_stops_cleanly_and_state_survives() {
    let mut c = ControllerProcess::start();
    c.texu_ok(&[
        "apply",
        "-f",
        manifests_dir().join("good/stack.yaml").to_str().unwrap(),
    ]);
    // An open watch must not keep the controller from stopping.
    let watch = common::http()
        .get(&format!("{}/v1/roles?watch=true", c.server))
        .set("Authorization", &format!("Bearer {}", c.token))
        .call()
        .unwrap();
    c.signal(common::SIGTERM);
    let status = c
        .wait_exit(Duration::from_secs(15))
        .expect("controller exits after SIGTERM");
    assert!(status.success(), "{status}");
    drop(watch);
    c.spawn();
    assert_eq!(names(&c.get_json(&["roles"])), ["app", "db", "proxy"]);
    c.signal(common::SIGINT);
    assert!(c
        .wait_exit(Duration::from_secs(15))
        .expect("exits after SIGINT")
        .success());
}

#[test]
fn a_refused_connection_names_the_address_and_a_likely_cause() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let server = format!("https://{addr}");
    let out = common::texu_with(&server, "t", &["get", "roles"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&server), "{err}");
    assert!(err.contains("is the controller running?"), "{err}");
}

#[test]
fn schema_describes_roles() {
    let out = common::texu_with("https://127.0.0.1:1", "t", &["schema"], None);
    assert!(out.status.success());
    let schema: Value = serde_json::from_str(&stdout(&out)).expect("schema is JSON");
    assert!(
        schema.to_string().contains("replicas"),
        "schema names replicas"
    );
}

#[path = "control_plane/limits.rs"]
mod limits;
