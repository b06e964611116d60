//! The control plane under abuse and failure: thousands of half-open connections, watches from
//! a compacted revision or past the per-credential cap, a panicking scheduler task, an agent
//! whose metrics server stops.

use super::*;
use common::call_json;

#[test]
fn two_thousand_half_open_connections_starve_neither_healthz_nor_heartbeats() {
    use std::io::Write;
    // 1,024 open files, as systemd gives a service by default: without limits of its own the
    // controller runs out of descriptors long before 2,000 connections.
    let c = ControllerProcess::start_with_file_limit(1024);
    let spec = serde_json::json!({
        "address": "198.18.0.2", "arch": "amd64", "cpus": 2, "memoryBytes": 1u64 << 30
    });
    let (code, joined) = call_json(
        "POST",
        &format!("{}/v1/join", c.server),
        &c.join_token(),
        Some(&serde_json::json!({ "name": "board-a", "spec": spec })),
    );
    assert_eq!(code, 200, "{joined}");
    let credential = joined["credential"].as_str().unwrap().to_string();
    let beat_url = format!("{}/v1/nodes/board-a/status", c.server);
    let beat_body = serde_json::json!({ "spec": spec, "containers": [] });
    assert_eq!(
        call_json("PUT", &beat_url, &credential, Some(&beat_body)).0,
        200
    );

    // The board keeps beating (every 300 ms, as an agent would) while the flood goes on.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let beats = {
        let (stop, credential, url, body) = (
            stop.clone(),
            credential.clone(),
            beat_url.clone(),
            beat_body.clone(),
        );
        std::thread::spawn(move || {
            let mut answered = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && answered.len() < 200 {
                answered.push(call_json("PUT", &url, &credential, Some(&body)).0);
                std::thread::sleep(Duration::from_millis(300));
            }
            answered
        })
    };

    // 2,000 connections that never finish a request: half send part of a request line, half
    // send nothing at all. Bounded in count; all closed when `flood` is dropped.
    let addr = c.addr();
    let mut flood = Vec::with_capacity(2000);
    for i in 0..2000 {
        let Ok(mut s) = std::net::TcpStream::connect(&addr) else {
            continue;
        };
        if i % 2 == 0 {
            let _ = s.write_all(b"GET /heal");
        }
        flood.push(s);
    }
    assert!(
        flood.len() >= 1900,
        "opened only {} connections",
        flood.len()
    );

    // While they are all held open: /healthz answers, and so do heartbeats.
    let health = format!("{}/healthz", c.server);
    for _ in 0..5 {
        let answer = common::http()
            .get(&health)
            .timeout(Duration::from_secs(5))
            .call()
            .map(|r| r.status());
        assert_eq!(answer.ok(), Some(200), "/healthz during the flood");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Longer than the 2 s grace: a starved board would be NotReady by now.
    std::thread::sleep(Duration::from_secs(2));
    let (code, node) = call_json(
        "GET",
        &format!("{}/v1/nodes/board-a", c.server),
        &c.token,
        None,
    );
    assert_eq!(code, 200, "{node}");
    assert_eq!(node["status"]["phase"], "Ready", "{node}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered = beats.join().unwrap();
    assert!(answered.len() >= 10, "{answered:?}");
    assert!(
        answered.iter().all(|code| *code == 200),
        "every heartbeat answered 200: {answered:?}"
    );
    drop(flood);
}

#[test]
fn a_watch_from_a_compacted_revision_gets_410_with_a_resync_hint() {
    let c = ControllerProcess::start_with(
        None,
        &["--compact-every", "100ms", "--history-revisions", "1"],
    );
    let stack = manifests_dir().join("good/stack.yaml");
    c.texu_ok(&["apply", "-f", stack.to_str().unwrap()]);
    c.texu_ok(&["delete", "role", "proxy"]);
    c.texu_ok(&["apply", "-f", stack.to_str().unwrap()]);
    // Until the compactor has run, the watch opens (200) and streams: give each try a second.
    let (code, body) = common::wait_for(Duration::from_secs(20), "compaction", || {
        match c.watch_roles(1).timeout(Duration::from_secs(1)).call() {
            Err(ureq::Error::Status(410, r)) => Some((
                410,
                serde_json::from_str::<Value>(&r.into_string().ok()?).ok()?,
            )),
            _ => None,
        }
    });
    assert_eq!(code, 410);
    assert!(
        body["error"].as_str().unwrap().contains("compacted"),
        "{body}"
    );
    assert!(
        body["details"][0].as_str().unwrap().starts_with("resync"),
        "{body}"
    );
    // Listing again gives a revision to watch from.
    let list = c.get_json(&["roles"]);
    let revision = list["revision"].as_i64().unwrap();
    let response = c
        .watch_roles(revision)
        .call()
        .expect("a watch from the listed revision opens");
    assert_eq!(response.status(), 200);
}

#[test]
fn open_watches_per_credential_are_capped_with_429() {
    let c = ControllerProcess::start();
    let url = format!("{}/v1/roles?watch=true", c.server);
    let open = || {
        common::http()
            .get(&url)
            .set("Authorization", &format!("Bearer {}", c.token))
            .call()
            .map_err(Box::new)
    };
    let mut watches: Vec<ureq::Response> = (0..32)
        .map(|i| open().unwrap_or_else(|e| panic!("watch {i}: {e}")))
        .collect();
    match open().map_err(|e| *e) {
        Err(ureq::Error::Status(429, r)) => {
            let body: Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("too many open watches"),
                "{body}"
            );
        }
        other => panic!("the 33rd watch: expected 429, got {other:?}"),
    }
    // Closing one frees its slot (once the controller notices the closed stream).
    drop(watches.pop());
    common::wait_for(Duration::from_secs(10), "a freed watch slot", || {
        open().ok()
    });
    // Other requests with the same credential are unaffected.
    assert_eq!(c.get_json(&["roles"])["kind"], "RoleList");
}

#[test]
fn a_scheduler_task_that_panics_stops_the_controller_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut out = std::process::Command::new(common::texu_bin())
        .arg("controller")
        .arg("--data-dir")
        .arg(dir.path().join("controller"))
        .args(["--listen", "127.0.0.1:0", "--no-client-config"])
        .env("TEXU_TEST_FAULT", "scheduler-panic")
        .env("RUST_LOG", "error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run texu controller");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = out.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = out.kill();
            let _ = out.wait();
            panic!("the controller kept running after its scheduler panicked");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "exit status {status}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut out.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("the scheduler task panicked: fault injected"),
        "{err}"
    );
}

#[test]
fn an_agent_whose_metrics_server_stops_exits_with_an_error() {
    common::require_root_and_lxc();
    let c = ControllerProcess::start();
    // The metrics port is taken: the agent's metrics server ends at once, which must stop the
    // whole agent rather than leave it running without metrics.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut agent = std::process::Command::new(common::texu_bin())
        .args(["--server", &c.server, "agent", "--name", "metrics-clash"])
        .arg("--data-dir")
        .arg(dir.path().join("agent"))
        .args([
            "--address",
            "127.0.0.1",
            "--no-network",
            "--metrics-listen",
            &port,
        ])
        .env("TEXU_JOIN_TOKEN", c.join_token())
        .env("TEXU_CONFIG", "/nonexistent/texu-test-config.yaml")
        .env("RUST_LOG", "error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run texu agent");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = agent.kill();
            let _ = agent.wait();
            panic!("the agent kept running without its metrics server");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut agent.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "exit status {status}; {err}");
    assert!(err.contains("its metrics server task returned"), "{err}");
    drop(taken);
}
