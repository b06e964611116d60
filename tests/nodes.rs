//! Boards at the API level: joining, per-node credentials and their limits, heartbeats,
//! readiness and placement, against a real controller process.

mod common;

use std::time::Duration;

use common::{call_json as call, wait_for, ControllerProcess};
use serde_json::{json, Value};

fn spec(address: &str) -> Value {
    spec_of(address, "amd64")
}

fn spec_of(address: &str, arch: &str) -> Value {
    json!({ "address": address, "arch": arch, "cpus": 2, "memoryBytes": 1u64 << 30 })
}

fn join(c: &ControllerProcess, name: &str, address: &str) -> String {
    join_as(c, name, spec(address))
}

fn join_as(c: &ControllerProcess, name: &str, spec: Value) -> String {
    let (code, v) = call(
        "POST",
        &format!("{}/v1/join", c.server),
        &c.join_token(),
        Some(&json!({ "name": name, "labels": {"site": "home"}, "spec": spec })),
    );
    assert_eq!(code, 200, "{v}");
    v["credential"].as_str().unwrap().to_string()
}

fn beat(c: &ControllerProcess, name: &str, credential: &str, containers: Value) -> u16 {
    beat_as(c, name, credential, spec("198.18.0.2"), containers)
}

fn beat_as(
    c: &ControllerProcess,
    name: &str,
    credential: &str,
    spec: Value,
    containers: Value,
) -> u16 {
    let body = json!({ "spec": spec, "labels": {"site": "home"}, "containers": containers });
    call(
        "PUT",
        &format!("{}/v1/nodes/{name}/status", c.server),
        credential,
        Some(&body),
    )
    .0
}

#[test]
fn boards_join_see_only_their_own_containers_and_go_not_ready_when_silent() {
    let c = ControllerProcess::start_with(None, &["--node-grace", "600ms"]);
    let a = join(&c, "board-a", "198.18.0.2");
    let b = join(&c, "board-b", "198.18.0.3");
    assert!(a.starts_with("texu-node-board-a-"));

    // A wrong join token gets nothing.
    let (code, _) = call(
        "POST",
        &format!("{}/v1/join", c.server),
        "texu-join-wrong",
        Some(&json!({ "name": "evil", "spec": spec("198.18.0.9") })),
    );
    assert_eq!(code, 401);

    // Both boards report in; the role's 4 replicas are spread 2 and 2.
    assert_eq!(beat(&c, "board-a", &a, json!([])), 200);
    assert_eq!(beat(&c, "board-b", &b, json!([])), 200);
    let app = "apiVersion: texu.io/v1\nkind: Role\nmetadata:\n  name: app\nspec:\n  replicas: 3\n  image: host\n  command: [/bin/sleep, '100']\n";
    c.apply(app);
    let containers = wait_for(Duration::from_secs(10), "3 app containers placed", || {
        // Keep both boards Ready meanwhile (the grace period is short here).
        beat(&c, "board-a", &a, json!([]));
        beat(&c, "board-b", &b, json!([]));
        let list = c.get_json(&["containers", "--role", "app"]);
        let items = list["items"].as_array().cloned().unwrap_or_default();
        (items.len() == 3 && items.iter().all(|i| i["spec"]["node"].is_string())).then_some(items)
    });
    let on_b: Vec<String> = containers
        .iter()
        .filter(|i| i["spec"]["node"] == "board-b")
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let on_a: Vec<String> = containers
        .iter()
        .filter(|i| i["spec"]["node"] == "board-a")
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !on_a.is_empty() && !on_b.is_empty(),
        "spread over both boards: {on_a:?} {on_b:?}"
    );

    // Board A reads its own containers, and nothing of board B's.
    let url = |p: &str| format!("{}{p}", c.server);
    let (code, list) = call("GET", &url("/v1/containers?node=board-a"), &a, None);
    assert_eq!(code, 200);
    assert!(list["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["spec"]["node"] == "board-a"));
    assert_eq!(
        call("GET", &url("/v1/containers?node=board-b"), &a, None).0,
        403
    );
    assert_eq!(call("GET", &url("/v1/containers"), &a, None).0, 403);
    assert_eq!(
        call(
            "GET",
            &url(&format!("/v1/containers/{}", on_b[0])),
            &a,
            None
        )
        .0,
        403
    );
    assert_eq!(
        call(
            "GET",
            &url(&format!("/v1/containers/{}", on_a[0])),
            &a,
            None
        )
        .0,
        200
    );
    assert_eq!(call("GET", &url("/v1/roles"), &a, None).0, 403);
    assert_eq!(
        call("PUT", &url("/v1/roles/app"), &a, Some(&json!({}))).0,
        403
    );
    assert_eq!(call("GET", &url("/v1/nodes/board-b"), &a, None).0, 403);
    // ...and cannot change B's node or containers.
    let forged = json!([{ "name": on_b[0], "generation": 1, "status": { "phase": "Failed" } }]);
    assert_eq!(beat(&c, "board-b", &a, forged.clone()), 403);
    assert_eq!(beat(&c, "board-a", &a, forged), 200);
    let victim = c.get_json(&["containers", &on_b[0]]);
    assert_ne!(
        victim["status"]["phase"], "Failed",
        "A's report about B's container is ignored"
    );

    // Its own container status, reported in a heartbeat, shows in the API.
    let report = json!([{ "name": on_a[0], "generation": 1,
        "status": { "phase": "Ready", "address": "198.19.0.5", "restarts": 1 } }]);
    assert_eq!(beat(&c, "board-a", &a, report), 200);
    let mine = c.get_json(&["containers", &on_a[0]]);
    assert_eq!(mine["status"]["phase"], "Ready");
    assert_eq!(mine["status"]["address"], "198.19.0.5");
    let wide = c.texu_ok(&["get", "containers", "-o", "wide"]);
    assert!(
        wide.lines().any(|l| l.contains(&on_a[0])
            && l.contains("board-a")
            && l.contains("198.19.0.5")
            && l.contains("Ready")),
        "{wide}"
    );

    // Nodes are Ready while they beat; B goes silent and becomes NotReady, A stays Ready.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let states = loop {
        beat(&c, "board-a", &a, json!([]));
        let nodes = c.get_json(&["nodes"]);
        let phase = |n: &str| {
            nodes["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["metadata"]["name"] == n)
                .map(|i| {
                    i["status"]["phase"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
                .unwrap()
        };
        let states = (phase("board-a"), phase("board-b"));
        if states.1 == "NotReady" || std::time::Instant::now() > deadline {
            break states;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(states, ("Ready".to_string(), "NotReady".to_string()));
    let status = c.texu_ok(&["status"]);
    assert!(status.contains("Nodes:       1/2 ready"), "{status}");

    // A cordoned board gets no new containers; uncordoned, it does again.
    assert_eq!(
        c.texu_ok(&["cordon", "board-a"]).trim(),
        "node/board-a cordoned"
    );
    assert!(c.texu_ok(&["get", "nodes"]).contains(",Cordoned"));
    assert_eq!(
        call("POST", &url("/v1/nodes/board-a/cordon"), &a, None).0,
        403,
        "a board cannot cordon"
    );
    assert_eq!(
        c.texu_ok(&["uncordon", "board-a"]).trim(),
        "node/board-a uncordoned"
    );

    // A stolen-looking credential for another name, or garbage, is refused.
    let forged_credential = a.replace("board-a", "board-b");
    assert_eq!(
        call(
            "GET",
            &url("/v1/containers?node=board-b"),
            &forged_credential,
            None
        )
        .0,
        401
    );
    assert_eq!(
        call("GET", &url("/v1/nodes/board-a"), "texu-node-", None).0,
        401
    );
}

#[test]
fn roles_wait_pending_with_a_reason_when_no_board_fits() {
    let c = ControllerProcess::start();
    c.texu_ok(&[
        "apply",
        "-f",
        common::manifests_dir()
            .join("good/stack.yaml")
            .to_str()
            .unwrap(),
    ]);
    let reason = wait_for(Duration::from_secs(10), "a pending container", || {
        let app0 = c.texu(&["get", "containers", "proxy-0", "-o", "json"]);
        let v: Value = serde_json::from_slice(&app0.stdout).ok()?;
        v["status"]["message"].as_str().map(str::to_string)
    });
    assert_eq!(reason, "0/0 nodes: no node has joined");
    let wide = c.texu_ok(&["get", "containers", "-o", "wide"]);
    assert!(wide.contains("Unschedulable"), "{wide}");
}

#[test]
fn subnets_are_assigned_kept_on_rejoin_and_freed_when_a_board_is_removed() {
    let c = ControllerProcess::start_with(None, &["--cluster-cidr", "198.19.64.0/23"]);
    let subnet_of = |name: &str| c.get_json(&["nodes", name])["spec"]["subnet"].clone();
    let a = join(&c, "board-a", "198.18.0.2");
    join(&c, "board-b", "198.18.0.3");
    assert_eq!(subnet_of("board-a"), "198.19.64.0/24");
    assert_eq!(subnet_of("board-b"), "198.19.65.0/24");
    // The range holds two /24s: a third board is refused with a reason.
    let (code, v) = call(
        "POST",
        &format!("{}/v1/join", c.server),
        &c.join_token(),
        Some(&json!({ "name": "board-c", "spec": spec("198.18.0.4") })),
    );
    assert_eq!(code, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("no free container subnets"),
        "{v}"
    );
    // Rejoining (with its own credential) keeps the subnet.
    let (code, v) = call(
        "POST",
        &format!("{}/v1/join", c.server),
        &a,
        Some(&json!({ "name": "board-a", "spec": spec("198.18.0.2") })),
    );
    assert_eq!(code, 200, "{v}");
    let a = v["credential"].as_str().unwrap().to_string();
    assert_eq!(subnet_of("board-a"), "198.19.64.0/24");
    // Removing a board frees its subnet and its credential stops working.
    assert_eq!(
        c.texu_ok(&["delete", "node", "board-a"]).trim(),
        "node/board-a deleted"
    );
    assert_eq!(
        call("GET", &format!("{}/v1/nodes/board-a", c.server), &a, None).0,
        401
    );
    join(&c, "board-c", "198.18.0.4");
    assert_eq!(subnet_of("board-c"), "198.19.64.0/24");
}

/// A tarball with one file saying which architecture it is for.
fn variant(dir: &std::path::Path, arch: &str) -> std::path::PathBuf {
    let root = dir.join(arch);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("arch"), arch).unwrap();
    common::tarball(&root, &dir.join(format!("{arch}.tar.gz")))
}

/// Container app-0 as listed (`null` before it exists).
fn app0(c: &ControllerProcess) -> Value {
    let list = c.get_json(&["containers"]);
    let items = list["items"].as_array().cloned().unwrap_or_default();
    items
        .into_iter()
        .find(|i| i["metadata"]["name"] == "app-0")
        .unwrap_or(Value::Null)
}

#[test]
fn a_kept_original_keeps_its_own_boards_image_variant() {
    let c = ControllerProcess::start_with(None, &["--node-grace", "600ms"]);
    let tmp = tempfile::tempdir().unwrap();
    let import = |arch: &str| {
        let tarball = variant(tmp.path(), arch);
        let out = c.texu_ok(&[
            "image",
            "import",
            "app:1",
            "--arch",
            arch,
            tarball.to_str().unwrap(),
        ]);
        let digest = out
            .split("imported: ")
            .nth(1)
            .and_then(|d| d.split_whitespace().next());
        digest
            .unwrap_or_else(|| panic!("no digest in {out:?}"))
            .to_string()
    };
    let (arm_digest, x86_digest) = (import("arm64"), import("amd64"));
    assert_ne!(arm_digest, x86_digest);

    // Only the arm board is there: app-0 goes to it, with the arm64 variant.
    let (arm_spec, x86_spec) = (
        spec_of("198.18.0.2", "arm64"),
        spec_of("198.18.0.3", "amd64"),
    );
    let arm = join_as(&c, "board-arm", arm_spec.clone());
    beat_as(&c, "board-arm", &arm, arm_spec.clone(), json!([]));
    let role = "apiVersion: texu.io/v1\nkind: Role\nmetadata:\n  name: app\nspec:\n  replicas: 1\n  image: app:1\n  command: [/bin/sleep, '100']\n  disconnect:\n    keep: original\n";
    c.apply(role);
    let ready = json!([{ "name": "app-0", "generation": 1,
        "status": { "phase": "Ready", "address": "198.19.0.5" } }]);
    let placed = wait_for(Duration::from_secs(10), "app-0 on the arm board", || {
        beat_as(&c, "board-arm", &arm, arm_spec.clone(), ready.clone());
        let app = app0(&c);
        (app["spec"]["node"] == "board-arm" && app["status"]["phase"] == "Ready").then_some(app)
    });
    assert_eq!(placed["spec"]["imageDigest"], arm_digest.as_str());

    // The arm board falls silent: app-0 moves to the amd64 board, with its variant.
    let x86 = join_as(&c, "board-x86", x86_spec.clone());
    let moved = wait_for(
        Duration::from_secs(10),
        "app-0 moved to the amd64 board",
        || {
            beat_as(&c, "board-x86", &x86, x86_spec.clone(), json!([]));
            std::thread::sleep(Duration::from_millis(100));
            let app = app0(&c);
            (app["spec"]["node"] == "board-x86").then_some(app)
        },
    );
    assert_eq!(moved["spec"]["imageDigest"], x86_digest.as_str());

    // The arm board is back with its copy running: it stays there (keep: original), and with
    // the arm64 variant again, not the amd64 one its replacement ran.
    assert_eq!(
        beat_as(&c, "board-arm", &arm, arm_spec.clone(), ready.clone()),
        200
    );
    let kept = app0(&c);
    assert_eq!(kept["spec"]["node"], "board-arm", "{kept}");
    assert_eq!(kept["spec"]["imageDigest"], arm_digest.as_str(), "{kept}");
    let events = c.texu_ok(&["events"]);
    assert!(events.contains("KeptOriginal"), "{events}");
}
