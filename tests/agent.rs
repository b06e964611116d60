//! End-to-end tests of a board: a real controller, a real `texu agent` running real LXC
//! containers on a bridge of its own (198.19.NET.0/24), as root.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{http_get, wait_for, AgentProcess, ControllerProcess};
use serde_json::Value;

/// Every container, by name.
fn containers(c: &ControllerProcess) -> BTreeMap<String, Value> {
    c.get_json(&["containers"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|i| (i["metadata"]["name"].as_str().unwrap().to_string(), i))
        .collect()
}

fn phase(v: &Value) -> &str {
    v["status"]["phase"].as_str().unwrap_or_default()
}

fn wait_ready(c: &ControllerProcess, names: &[&str], timeout: Duration) -> BTreeMap<String, Value> {
    let mut last = BTreeMap::new();
    let deadline = Instant::now() + timeout;
    loop {
        let all = containers(c);
        if names
            .iter()
            .all(|n| all.get(*n).is_some_and(|v| phase(v) == "Ready"))
        {
            return all;
        }
        if Instant::now() > deadline {
            for (n, v) in &all {
                last.insert(n.clone(), v["status"].clone());
            }
            panic!(
                "timed out after {timeout:?} waiting for {names:?} to be Ready; status: {last:#?}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const WEB_AND_HOST: &str = r#"
apiVersion: texu.io/v1
kind: Role
metadata:
  name: web
spec:
  replicas: 3
  image: template:busybox
  command: [/bin/httpd, -f, -p, "8080", -h, /etc]
  ports:
  - name: http
    port: 8080
  volumes:
  - name: data
    path: /data
  health:
    readiness:
      http: {path: /hostname, port: http}
      periodSeconds: 0.2
---
apiVersion: texu.io/v1
kind: Role
metadata:
  name: hostweb
spec:
  replicas: 1
  image: host
  command: [/bin/busybox, httpd, -f, -p, "8081", -h, /etc]
  ports:
  - name: http
    port: 8081
    hostPort: 18081
  health:
    readiness:
      http: {path: /hostname, port: http}
      periodSeconds: 0.2
"#;

#[test]
fn containers_become_ready_restart_survive_an_agent_restart_and_go_with_their_role() {
    common::require_root_and_lxc();
    let c = ControllerProcess::start();
    let mut agent = AgentProcess::start(&c, "board-a", 241);
    c.apply(WEB_AND_HOST);
    let names = ["web-0", "web-1", "web-2", "hostweb-0"];
    let all = wait_ready(&c, &names, Duration::from_secs(60));

    // The CLI shows node, address and phase; the board reaches every container by address.
    let wide = c.texu_ok(&["get", "containers", "-o", "wide"]);
    for name in names {
        let v = &all[name];
        assert_eq!(v["spec"]["node"], "board-a");
        let address = v["status"]["address"].as_str().expect("an address");
        assert!(address.starts_with("198.19.241."), "{address}");
        let line = wide.lines().find(|l| l.starts_with(name)).expect("a row");
        assert!(
            line.contains("board-a") && line.contains(address) && line.contains("Ready"),
            "{line}"
        );
        let port = if name.starts_with("hostweb") {
            8081
        } else {
            8080
        };
        let body = http_get(&format!("http://{address}:{port}/hostname"))
            .unwrap_or_else(|| panic!("no HTTP answer from {name} at {address}:{port}"));
        assert_eq!(body.trim(), name, "the container serves its own hostname");
    }

    // The hostPort is published on the board's own addresses (here: its bridge address).
    let gateway = "198.19.241.1";
    let body = wait_for(Duration::from_secs(10), "the hostPort to answer", || {
        http_get(&format!("http://{gateway}:18081/hostname"))
    });
    assert_eq!(body.trim(), "hostweb-0");

    // Killing a container's init: restarted, restart count 1, Ready again.
    let pid = agent.init_pid("web-1").expect("web-1 runs");
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    wait_for(
        Duration::from_secs(30),
        "web-1 restarted once and Ready",
        || {
            let v = containers(&c).remove("web-1")?;
            (v["status"]["restarts"] == 1 && phase(&v) == "Ready").then_some(())
        },
    );
    assert_eq!(containers(&c)["web-1"]["status"]["lastExit"], "Exited");

    // SIGKILL of the agent and a new agent on the same data dir: nothing restarted, adopted.
    let before: Vec<Option<u32>> = names.iter().map(|n| agent.init_pid(n)).collect();
    assert!(before.iter().all(Option::is_some));
    agent.kill9();
    std::thread::sleep(Duration::from_millis(500));
    agent.spawn();
    // Give the new agent time to reconcile and report, then compare.
    std::thread::sleep(Duration::from_secs(3));
    wait_ready(&c, &names, Duration::from_secs(30));
    let after: Vec<Option<u32>> = names.iter().map(|n| agent.init_pid(n)).collect();
    assert_eq!(before, after, "the same init PIDs: adopted, not restarted");
    assert_eq!(
        containers(&c)["web-1"]["status"]["restarts"],
        1,
        "restart count kept"
    );

    // Deleting the role removes its containers from the LXC path, and their volumes.
    let volume = agent.data_dir.join("volumes/web-0/data");
    assert!(
        volume.is_dir(),
        "{} exists while the role does",
        volume.display()
    );
    c.texu_ok(&["delete", "role", "web"]);
    wait_for(
        Duration::from_secs(30),
        "web containers gone from the LXC path",
        || {
            let left = agent.lxc_containers();
            (!left.iter().any(|n| n.starts_with("web-"))).then_some(())
        },
    );
    assert!(
        !agent.data_dir.join("volumes/web-0").exists(),
        "volume removed with the role"
    );
    assert_eq!(agent.lxc_containers(), ["hostweb-0"]);
}

#[test]
fn a_failing_liveness_probe_restarts_with_growing_delays_into_a_crash_loop() {
    common::require_root_and_lxc();
    let c = ControllerProcess::start();
    let _agent = AgentProcess::start(&c, "board-b", 242);
    c.apply(
        r#"
apiVersion: texu.io/v1
kind: Role
metadata:
  name: sick
spec:
  image: template:busybox
  command: [/bin/sleep, "1000"]
  health:
    liveness:
      tcp: {port: 9}
      periodSeconds: 0.2
      timeoutSeconds: 0.2
      failureThreshold: 1
"#,
    );
    // Record when each restart is first seen.
    let started = Instant::now();
    let mut seen: Vec<Duration> = Vec::new();
    let mut crash_loop = false;
    while seen.len() < 4 && started.elapsed() < Duration::from_secs(60) {
        if let Some(v) = containers(&c).remove("sick-0") {
            let restarts = v["status"]["restarts"].as_u64().unwrap_or(0) as usize;
            while seen.len() < restarts {
                seen.push(started.elapsed());
            }
            crash_loop |= v["status"]["reason"] == "CrashLoopBackOff";
            assert_eq!(
                v["status"]["lastExit"].as_str().unwrap_or("LivenessFailed"),
                "LivenessFailed"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(seen.len() >= 4, "only {} restarts in 60 s", seen.len());
    assert!(crash_loop, "the status showed CrashLoopBackOff");
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[2] > gaps[0] + Duration::from_millis(1500),
        "delays grow (1 s, 2 s, 4 s ...): gaps {gaps:?}"
    );
}

#[test]
fn a_container_over_its_memory_limit_is_killed_and_says_so() {
    common::require_root_and_lxc();
    let c = ControllerProcess::start();
    let _agent = AgentProcess::start(&c, "board-c", 243);
    c.apply(
        r#"
apiVersion: texu.io/v1
kind: Role
metadata:
  name: hog
spec:
  image: template:busybox
  command: [/bin/sh, -c, "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"]
  resources:
    memory: 32Mi
"#,
    );
    let v = wait_for(Duration::from_secs(60), "hog-0 OOM-killed", || {
        let v = containers(&c).remove("hog-0")?;
        (v["status"]["lastExit"] == "OOMKilled").then_some(v)
    });
    assert!(v["status"]["restarts"].as_u64().unwrap() >= 1);
}

#[test]
fn failures_say_why_and_leave_nothing_half_created() {
    common::require_root_and_lxc();
    let c = ControllerProcess::start();
    let agent = AgentProcess::start(&c, "board-d", 244);
    c.apply(
        r#"
apiVersion: texu.io/v1
kind: Role
metadata:
  name: typo
spec:
  image: template:busybox
  command: [/bin/no-such-command]
---
apiVersion: texu.io/v1
kind: Role
metadata:
  name: armonly
spec:
  image: host
  command: [/bin/sleep, "100"]
  placement:
    arch: [arm64]
---
apiVersion: texu.io/v1
kind: Role
metadata:
  name: stored
spec:
  image: exchange:1.0
  command: [/bin/true]
"#,
    );
    let all = wait_for(
        Duration::from_secs(60),
        "all three to settle with a reason",
        || {
            let all = containers(&c);
            let failed = |n: &str| all.get(n).is_some_and(|v| phase(v) == "Failed");
            let unschedulable = all
                .get("armonly-0")
                .is_some_and(|v| v["status"]["reason"] == "Unschedulable");
            let not_imported = all
                .get("stored-0")
                .is_some_and(|v| v["status"]["reason"] == "Unschedulable");
            let settled = failed("typo-0") && not_imported && unschedulable;
            settled.then_some(all)
        },
    );
    let typo = &all["typo-0"]["status"];
    assert_eq!(
        (typo["phase"].as_str(), typo["reason"].as_str()),
        (Some("Failed"), Some("CommandNotFound")),
        "{typo}"
    );
    assert!(
        status_message(typo).contains("/bin/no-such-command"),
        "{typo}"
    );
    let arm = &all["armonly-0"]["status"];
    assert_eq!(arm["phase"], "Pending");
    assert!(
        status_message(arm).contains("1 wrong architecture"),
        "{arm}"
    );
    let stored = &all["stored-0"]["status"];
    assert_eq!(stored["phase"], "Pending");
    assert!(
        status_message(stored).contains("image exchange:1.0 is not in the image store"),
        "{stored}"
    );
    assert!(
        agent.lxc_containers().is_empty(),
        "nothing half-created: {:?}",
        agent.lxc_containers()
    );
}

/// The message of a container's status (it must have one).
fn status_message(status: &Value) -> &str {
    status["message"].as_str().unwrap()
}

/// A root filesystem tarball with busybox and a page to serve.
fn busybox_image(dir: &std::path::Path) -> std::path::PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "www"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("busybox-static is installed (scripts/setup.sh)");
    for applet in ["sh", "httpd", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        root.join("www/index.html"),
        "served from an imported image\n",
    )
    .unwrap();
    common::tarball(&root, &dir.join("bb.tar.gz"))
}

#[test]
fn imported_images_are_verified_cached_and_unpacked_and_a_bad_digest_is_refused() {
    common::require_root_and_lxc();
    let c = ControllerProcess::start();
    let agent = AgentProcess::start(&c, "board-e", 245);
    let tmp = tempfile::tempdir().unwrap();
    let tarball = busybox_image(tmp.path());
    let out = c.texu_ok(&[
        "image",
        "import",
        "bb:1",
        "--arch",
        "amd64",
        tarball.to_str().unwrap(),
    ]);
    assert!(out.contains("image/bb:1 amd64 imported: sha256:"), "{out}");
    let listed = c.texu_ok(&["image", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("bb:1") && l.contains("amd64")),
        "{listed}"
    );
    let role = |name: &str, image: &str| {
        format!(
            "apiVersion: texu.io/v1\nkind: Role\nmetadata:\n  name: {name}\nspec:\n  image: {image}\n  \
             command: [/bin/httpd, -f, -p, \"8080\", -h, /www]\n  ports:\n  - {{name: http, port: 8080}}\n  \
             health:\n    readiness:\n      http: {{path: /index.html, port: http}}\n      periodSeconds: 0.2\n"
        )
    };
    c.apply(&role("img", "bb:1"));
    let all = wait_ready(&c, &["img-0"], Duration::from_secs(60));
    let address = all["img-0"]["status"]["address"]
        .as_str()
        .unwrap()
        .to_string();
    let body = http_get(&format!("http://{address}:8080/index.html")).expect("an answer");
    assert_eq!(body.trim(), "served from an imported image");
    let cached: Vec<_> = std::fs::read_dir(agent.data_dir.join("images/sha256"))
        .unwrap()
        .collect();
    assert_eq!(cached.len(), 1, "one cached blob");

    // An image with no variant for this board's architecture is never placed here.
    c.texu_ok(&[
        "image",
        "import",
        "armonly:1",
        "--arch",
        "arm64",
        tarball.to_str().unwrap(),
    ]);
    c.apply(&role("arm", "armonly:1"));
    let status = wait_for(Duration::from_secs(20), "arm-0 pending", || {
        let v = containers(&c).remove("arm-0")?;
        v["status"]["message"].as_str().map(str::to_string)
    });
    assert_eq!(status, "0/1 nodes: 1 no image variant for its architecture");
    assert!(!agent.lxc_containers().contains(&"arm-0".to_string()));

    // The agent's metrics count its containers by phase.
    let metrics =
        http_get(&format!("http://{}/metrics", agent.metrics_addr)).expect("agent /metrics");
    assert!(
        metrics.contains("texu_agent_containers{phase=\"Ready\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("texu_agent_heartbeat_rtt_seconds_count"),
        "{metrics}"
    );
    assert_eq!(
        http_get(&format!("http://{}/healthz", agent.metrics_addr)).as_deref(),
        Some("ok\n")
    );

    // The same image under another tag, corrupted in the controller's store after import.
    let out = c.texu_ok(&[
        "image",
        "import",
        "bad:1",
        "--arch",
        "amd64",
        tarball.to_str().unwrap(),
    ]);
    let digest = out
        .split("sha256:")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    std::fs::remove_dir_all(agent.data_dir.join("images")).unwrap();
    let blob = c.data_dir.join("images/sha256").join(&digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes.extend_from_slice(b"tampered");
    std::fs::write(&blob, bytes).unwrap();
    c.apply(&role("bad", "bad:1"));
    let status = wait_for(Duration::from_secs(30), "bad-0 refused", || {
        let v = containers(&c).remove("bad-0")?;
        (v["status"]["reason"] == "ImageDigestMismatch").then(|| v["status"].clone())
    });
    assert_eq!(status["phase"], "Failed");
    assert!(status_message(&status).contains(&digest), "{status}");
    assert!(!agent.lxc_containers().contains(&"bad-0".to_string()));
    assert!(
        !agent.data_dir.join("rootfs/bad-0").exists(),
        "no half-made rootfs"
    );
    let leftovers: Vec<_> = std::fs::read_dir(agent.data_dir.join("images/sha256"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "the bad download is not kept: {leftovers:?}"
    );
}

#[test]
fn a_container_turning_ready_is_reported_at_once_not_at_the_next_heartbeat() {
    common::require_root_and_lxc();
    // Heartbeats every 60 s, and the controller allows 180 s of silence: a Ready status can
    // reach the controller within the 30 s waited here only by a prompt heartbeat.
    let c = ControllerProcess::start_with(None, &["--node-grace", "180s"]);
    let _agent = AgentProcess::start_with(&c, "board-f", 246, &["--heartbeat", "60s"]);
    c.apply("apiVersion: texu.io/v1\nkind: Role\nmetadata:\n  name: prompt\nspec:\n  image: host\n  \
         command: [/bin/busybox, httpd, -f, -p, \"8080\", -h, /etc]\n  ports:\n  - {name: http, port: 8080}\n  \
         health:\n    readiness:\n      http: {path: /hostname, port: http}\n      periodSeconds: 0.2\n",
    );
    let all = wait_ready(&c, &["prompt-0"], Duration::from_secs(30));
    assert_eq!(all["prompt-0"]["spec"]["node"], "board-f");
    // The prompt heartbeats are not learned as the link's rhythm: the board stays Ready.
    let nodes = c.get_json(&["nodes"]);
    let node = nodes["items"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["metadata"]["name"] == "board-f"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(node["status"]["phase"], "Ready", "{node}");
}
