//! Boards that cannot lie their way in: each test replays an attack a board (or a holder of the
//! join token) tried on a real controller process, and shows it refused.

mod common;

use std::time::{Duration, Instant};

use common::{wait_for, ControllerProcess};
use serde_json::{json, Value};

/// One API call: status, `Retry-After` and the JSON answer.
fn call_full(
    method: &str,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Option<String>, Value) {
    let req = common::http()
        .request(method, url)
        .set("Authorization", &format!("Bearer {token}"));
    let response = common::send(req, body);
    let retry = response.header("Retry-After").map(str::to_string);
    let (code, answer) = common::status_and_json(response);
    (code, retry, answer)
}

fn call(method: &str, url: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    let (code, _, v) = call_full(method, url, token, body);
    (code, v)
}

fn spec(address: &str) -> Value {
    json!({ "address": address, "arch": "amd64", "cpus": 2, "memoryBytes": 1u64 << 30 })
}

/// A join under `name` with `token` as bearer: (status, answer).
fn join_with(c: &ControllerProcess, token: &str, name: &str, body: Value) -> (u16, Value) {
    let mut body = body;
    body["name"] = json!(name);
    call("POST", &format!("{}/v1/join", c.server), token, Some(&body))
}

fn join(c: &ControllerProcess, name: &str, address: &str) -> String {
    let (code, v) = join_with(c, &c.join_token(), name, json!({ "spec": spec(address) }));
    assert_eq!(code, 200, "{v}");
    v["credential"].as_str().unwrap().to_string()
}

fn beat(c: &ControllerProcess, name: &str, credential: &str, body: Value) -> (u16, Value) {
    call(
        "PUT",
        &format!("{}/v1/nodes/{name}/status", c.server),
        credential,
        Some(&body),
    )
}

fn plain_beat(c: &ControllerProcess, name: &str, credential: &str, address: &str) -> u16 {
    beat(c, name, credential, json!({ "spec": spec(address) })).0
}

fn node(c: &ControllerProcess, name: &str) -> Value {
    c.get_json(&["nodes", name])
}

#[test]
fn a_taken_name_needs_its_own_credential_or_the_admin_token_and_a_rejoin_keeps_the_drain() {
    let c = ControllerProcess::start();
    let url = |p: &str| format!("{}{p}", c.server);
    let a = join(&c, "board-a", "198.18.0.2");
    let b = join(&c, "board-b", "198.18.0.3");
    assert_eq!(plain_beat(&c, "board-a", &a, "198.18.0.2"), 200);
    c.texu_ok(&["drain", "board-a", "--timeout", "1s"]);
    assert_eq!(node(&c, "board-a")["spec"]["draining"], true);

    // The takeover: the join token under an existing name.
    let (code, v) = join_with(
        &c,
        &c.join_token(),
        "board-a",
        json!({ "spec": spec("198.18.0.66") }),
    );
    assert_eq!(code, 409, "{v}");
    let why = v["error"].as_str().unwrap();
    assert!(
        why.contains("already exists") && why.contains("texu delete node board-a"),
        "{why}"
    );
    // The real board keeps working, and nothing of it changed.
    assert_eq!(plain_beat(&c, "board-a", &a, "198.18.0.2"), 200);
    assert_eq!(node(&c, "board-a")["spec"]["address"], "198.18.0.2");
    // Another board's credential cannot join as it either.
    let (code, v) = join_with(&c, &b, "board-a", json!({ "spec": spec("198.18.0.3") }));
    assert_eq!(code, 403, "{v}");

    // An explicit re-join with its own credential works and keeps cordon and drain.
    let (code, v) = join_with(&c, &a, "board-a", json!({ "spec": spec("198.18.0.2") }));
    assert_eq!(code, 200, "{v}");
    let a2 = v["credential"].as_str().unwrap().to_string();
    let n = node(&c, "board-a");
    assert_eq!(n["spec"]["unschedulable"], true, "{n}");
    assert_eq!(n["spec"]["draining"], true, "{n}");
    assert_eq!(
        call("GET", &url("/v1/nodes/board-a"), &a, None).0,
        401,
        "a re-join replaces the credential"
    );
    assert_eq!(plain_beat(&c, "board-a", &a2, "198.18.0.2"), 200);
    // So does one with the admin token.
    let (code, v) = join_with(
        &c,
        &c.token,
        "board-a",
        json!({ "spec": spec("198.18.0.2") }),
    );
    assert_eq!(code, 200, "{v}");
    let a3 = v["credential"].as_str().unwrap().to_string();
    assert_eq!(node(&c, "board-a")["spec"]["draining"], true);

    // texu delete node revokes the credential at once; then the name is free again.
    c.texu_ok(&["delete", "node", "board-a"]);
    assert_eq!(plain_beat(&c, "board-a", &a3, "198.18.0.2"), 401);
    assert_eq!(
        call("GET", &url("/v1/nodes"), &a3, None).0,
        401,
        "the old credential gets nothing"
    );
    join(&c, "board-a", "198.18.0.2");
}

#[test]
fn a_subnet_outside_the_cluster_range_is_refused() {
    let c = ControllerProcess::start();
    // The overlay's own range, which would have pulled every board's traffic to the attacker.
    for bad in ["198.18.0.0/24", "10.0.0.0/24", "198.19.0.0/15", "nonsense"] {
        let mut s = spec("198.18.0.9");
        s["subnet"] = json!(bad);
        let (code, v) = join_with(&c, &c.join_token(), "evil", json!({ "spec": s }));
        assert_eq!(code, 422, "{bad}: {v}");
    }
    assert_eq!(
        c.get_json(&["nodes"])["items"].as_array().unwrap().len(),
        0,
        "no node was created"
    );
    let mut s = spec("198.18.0.9");
    s["subnet"] = json!("198.19.7.0/24");
    let (code, v) = join_with(&c, &c.join_token(), "good", json!({ "spec": s }));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["subnet"], "198.19.7.0/24");
    assert_eq!(v["clusterCidr"], "198.19.0.0/16");
}

#[test]
fn repeated_bad_joins_from_one_address_get_429_with_retry_after() {
    let c = ControllerProcess::start();
    let url = format!("{}/v1/join", c.server);
    let body = json!({ "name": "evil", "spec": spec("198.18.0.9") });
    let mut codes = Vec::new();
    let mut retry = None;
    for _ in 0..6 {
        let (code, r, _) = call_full("POST", &url, "texu-join-guess", Some(&body));
        codes.push(code);
        retry = retry.or(r);
    }
    assert_eq!(codes[..4], [401, 401, 401, 401], "{codes:?}");
    assert!(codes[4..].iter().all(|c| *c == 429), "{codes:?}");
    let secs: u64 = retry.expect("a Retry-After header").parse().unwrap();
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
    // Meanwhile the boards already in keep working: only joins are slowed down.
    let (code, _) = call("GET", &format!("{}/v1/nodes", c.server), &c.token, None);
    assert_eq!(code, 200);
}

#[test]
fn a_malformed_reported_address_never_reaches_a_template() {
    let c = ControllerProcess::start();
    let a = join(&c, "board-a", "198.18.0.2");
    let b = join(&c, "board-b", "198.18.0.3");
    let subnet_a = node(&c, "board-a")["spec"]["subnet"]
        .as_str()
        .unwrap()
        .to_string();
    let role = "apiVersion: texu.io/v1\nkind: Role\nmetadata:\n  name: db\nspec:\n  replicas: 1\n  image: host\n  command: [/bin/sleep, '100']\n  placement:\n    nodeSelector:\n      site: a\n";
    c.apply(role);
    c.texu_ok(&["label", "node", "board-a", "site=a"]);
    let db0 = |c: &ControllerProcess| c.get_json(&["containers", "db-0"]);
    wait_for(Duration::from_secs(10), "db-0 on board-a", || {
        plain_beat(&c, "board-a", &a, "198.18.0.2");
        plain_beat(&c, "board-b", &b, "198.18.0.3");
        (c.texu(&["get", "containers", "db-0", "-o", "json"])
            .status
            .success()
            && db0(&c)["spec"]["node"] == "board-a")
            .then_some(())
    });
    let generation = db0(&c)["spec"]["generation"].clone();
    let report = |address: &str| {
        json!({ "spec": spec("198.18.0.2"), "containers": [{ "name": "db-0",
            "generation": generation, "status": { "phase": "Running", "address": address } }] })
    };
    // The injection, and an address in another board's subnet: neither is kept.
    for bad in ["1.2.3.4\"; touch /tmp/X; echo \"", "198.19.200.7"] {
        let (code, v) = beat(&c, "board-a", &a, report(bad));
        assert_eq!(code, 200, "{v}");
        let status = &db0(&c)["status"];
        assert_eq!(status["phase"], "Running", "{status}");
        assert!(
            status.get("address").is_none(),
            "{bad:?} was stored: {status}"
        );
    }
    c.texu_ok(&["label", "node", "board-b", "site=a"]);
    plain_beat(&c, "board-b", &b, "198.18.0.3");
    let out = c.texu_ok(&["replace", "db-0", "--node", "board-b"]);
    assert!(!out.contains("touch"), "{out}");
    let moved = db0(&c);
    assert_eq!(moved["spec"]["node"], "board-b");
    assert!(
        moved["spec"].get("replaces").is_none(),
        "no address, no replaces: {moved}"
    );

    // A genuine address in the board's own subnet is what `replaces` carries.
    let own = subnet_a.replace(".0/24", ".9");
    let generation = moved["spec"]["generation"].clone();
    let report = json!({ "spec": spec("198.18.0.3"), "containers": [{ "name": "db-0",
        "generation": generation, "status": { "phase": "Running", "address": own } }] });
    // Reported by board-b now, whose subnet it is not: dropped too.
    beat(&c, "board-b", &b, report);
    assert!(db0(&c)["status"].get("address").is_none());
    let subnet_b = node(&c, "board-b")["spec"]["subnet"]
        .as_str()
        .unwrap()
        .to_string();
    let own_b = subnet_b.replace(".0/24", ".9");
    let report = json!({ "spec": spec("198.18.0.3"), "containers": [{ "name": "db-0",
        "generation": generation, "status": { "phase": "Running", "address": own_b } }] });
    beat(&c, "board-b", &b, report);
    assert_eq!(db0(&c)["status"]["address"], own_b.as_str());
    plain_beat(&c, "board-a", &a, "198.18.0.2");
    c.texu_ok(&["replace", "db-0", "--node", "board-a"]);
    assert_eq!(db0(&c)["spec"]["replaces"], own_b.as_str());
}

#[test]
fn a_boards_own_labels_do_not_attract_a_role_until_an_admin_gives_them() {
    let c = ControllerProcess::start();
    let url = |p: &str| format!("{}{p}", c.server);
    let a = join(&c, "board-a", "198.18.0.2");
    // The board claims trust in its heartbeats.
    let claim = json!({ "spec": spec("198.18.0.2"), "labels": { "trusted": "yes" } });
    assert_eq!(beat(&c, "board-a", &a, claim.clone()).0, 200);
    let n = node(&c, "board-a");
    assert!(n["metadata"].get("labels").is_none(), "{n}");
    assert_eq!(n["status"]["requestedLabels"]["trusted"], "yes", "{n}");
    let wide = c.texu_ok(&["get", "nodes", "-o", "wide"]);
    assert!(
        wide.lines().next().unwrap().contains("REQUESTED") && wide.contains("trusted=yes"),
        "{wide}"
    );
    let described = c.texu_ok(&["describe", "node", "board-a"]);
    assert!(
        described
            .lines()
            .any(|l| l.starts_with("Requested:") && l.contains("trusted=yes")),
        "{described}"
    );
    let role = "apiVersion: texu.io/v1\nkind: Role\nmetadata:\n  name: secrets\nspec:\n  replicas: 1\n  image: host\n  command: [/bin/sleep, '100']\n  placement:\n    nodeSelector:\n      trusted: \"yes\"\n";
    c.apply(role);
    let pending = wait_for(Duration::from_secs(10), "secrets-0 unschedulable", || {
        beat(&c, "board-a", &a, claim.clone());
        let v = c.get_json(&["containers"]);
        let item = v["items"].as_array()?.first()?.clone();
        item["status"]["message"].is_string().then_some(item)
    });
    assert!(pending["spec"].get("node").is_none(), "{pending}");

    // The board cannot label itself through the admin route.
    let (code, _) = call(
        "POST",
        &url("/v1/nodes/board-a/labels"),
        &a,
        Some(&json!({ "labels": { "trusted": "yes" } })),
    );
    assert_eq!(code, 403);
    // The admin accepts the request; now the role is placed there.
    assert_eq!(
        c.texu_ok(&["label", "node", "board-a", "trusted=yes"])
            .trim(),
        "node/board-a labeled"
    );
    wait_for(Duration::from_secs(10), "secrets-0 on board-a", || {
        beat(&c, "board-a", &a, claim.clone());
        let v = c.get_json(&["containers"]);
        (v["items"][0]["spec"]["node"] == "board-a").then_some(())
    });
    let wide = c.texu_ok(&["get", "nodes", "-o", "wide"]);
    let row = wide.lines().find(|l| l.starts_with("board-a")).unwrap();
    assert!(
        row.contains("trusted=yes") && row.trim_end().ends_with('-'),
        "accepted, nothing pending: {wide}"
    );
    c.texu_ok(&["label", "node", "board-a", "trusted-"]);
    assert!(node(&c, "board-a")["metadata"].get("labels").is_none());
    // Bad labels are refused by the CLI and by the route.
    assert!(!c
        .texu(&["label", "node", "board-a", "a b=c"])
        .status
        .success());
    let (code, _) = call(
        "POST",
        &url("/v1/nodes/board-a/labels"),
        &c.token,
        Some(&json!({ "labels": { "k": "\u{1b}[2J" } })),
    );
    assert_eq!(code, 422);
}

#[test]
fn control_characters_from_a_board_are_refused_or_printed_escaped() {
    let c = ControllerProcess::start();
    let a = join(&c, "board-a", "198.18.0.2");
    // In node facts and labels they are refused outright, at join and in heartbeats.
    for body in [
        json!({ "spec": spec("198.18.0.2"), "labels": { "site": "\u{1b}]0;owned\u{7}" } }),
        json!({ "spec": spec("198.18.0.2\u{1b}[2J") }),
    ] {
        let (code, v) = beat(&c, "board-a", &a, body.clone());
        assert_eq!(code, 422, "{v}");
        let (code, v) = join_with(&c, &c.join_token(), "board-x", body);
        assert_eq!(code, 422, "{v}");
    }
    // In free text (a container's message) they are printed escaped.
    let role = "apiVersion: texu.io/v1\nkind: Role\nmetadata:\n  name: app\nspec:\n  replicas: 1\n  image: host\n  command: [/bin/sleep, '100']\n";
    let out = c.texu_stdin(&["apply", "-f", "-"], role.as_bytes());
    assert!(out.status.success());
    let generation = wait_for(Duration::from_secs(10), "app-0 on board-a", || {
        plain_beat(&c, "board-a", &a, "198.18.0.2");
        let v = c.get_json(&["containers"]);
        (v["items"][0]["spec"]["node"] == "board-a")
            .then(|| v["items"][0]["spec"]["generation"].clone())
    });
    let evil = "\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}31m";
    let report = json!({ "spec": spec("198.18.0.2"), "containers": [{ "name": "app-0",
        "generation": generation, "status": { "phase": "Failed", "reason": evil, "message": evil } }] });
    assert_eq!(beat(&c, "board-a", &a, report).0, 200);
    // Tables are escaped as \x1b; YAML blocks in whatever escape YAML uses, never raw.
    for (args, table) in [
        (vec!["get", "containers", "-o", "wide"], true),
        (vec!["describe", "node", "board-a"], true),
        (vec!["describe", "container", "app-0"], false),
        (vec!["get", "containers", "app-0", "-o", "yaml"], false),
        (vec!["events"], false),
    ] {
        let out = c.texu(&args);
        assert!(out.status.success(), "{args:?}");
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(
            !printed.chars().any(|ch| ch.is_control() && ch != '\n'),
            "{args:?} printed a raw control character: {printed:?}"
        );
        if table {
            assert!(
                printed.contains("\\x1b]0;owned\\x07"),
                "{args:?}: {printed}"
            );
        }
    }
}

#[test]
fn label_churning_heartbeats_write_the_store_at_a_bounded_rate() {
    let c = ControllerProcess::start();
    let a = join(&c, "board-a", "198.18.0.2");
    assert_eq!(plain_beat(&c, "board-a", &a, "198.18.0.2"), 200);
    let revision = |c: &ControllerProcess| c.get_json(&["nodes"])["revision"].as_i64().unwrap();
    let before = revision(&c);
    let started = Instant::now();
    let agent = common::http_builder().build();
    let url = format!("{}/v1/nodes/board-a/status", c.server);
    const BEATS: usize = 10_000;
    for i in 0..BEATS {
        let body = json!({ "spec": spec("198.18.0.2"),
            "labels": { "churn": format!("v{i}") } });
        let code = agent
            .put(&url)
            .set("Authorization", &format!("Bearer {a}"))
            .set("Content-Type", "application/json")
            .send_string(&body.to_string())
            .map(|r| r.status())
            .unwrap_or_else(|e| panic!("heartbeat {i}: {e}"));
        assert_eq!(code, 200);
    }
    let elapsed = started.elapsed();
    let writes = revision(&c) - before;
    // One write per 10 s window at most (plus the first), whatever the beats say.
    let allowed = 1 + elapsed.as_secs() as i64 / 10 + 1;
    println!(
        "{BEATS} label-churning heartbeats in {:.1}s: {writes} store writes (allowed {allowed})",
        elapsed.as_secs_f64()
    );
    assert!(
        writes <= allowed,
        "{writes} writes for {BEATS} beats in {elapsed:?}"
    );
    let size = std::fs::metadata(c.data_dir.join("state.redb"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!("state.redb: {size} bytes");
}

#[test]
fn on_real_boards_the_join_token_neither_takes_a_board_nor_reroutes_its_traffic(
) -> anyhow::Result<()> {
    use texu::cluster::{Cluster, ClusterConfig};
    let c = Cluster::start(ClusterConfig::new(2, common::texu_bin()))?;
    common::remember(c.server(), &c.ca_file());
    let join_token = std::fs::read_to_string(c.plan().controller_dir().join("join.token"))?;
    let join_token = join_token.trim();
    let url = format!("{}/v1/join", c.server());
    let node1 = c.plan().node_name(1);
    let overlay = c.plan().overlay_network();
    // The attacker's board says it is board 1, then asks for the overlay's own range.
    let takeover = json!({ "name": node1, "spec": spec("198.18.0.66") });
    let (code, v) = call("POST", &url, join_token, Some(&takeover));
    anyhow::ensure!(code == 409, "takeover answered {code}: {v}");
    let mut s = spec("198.18.0.66");
    s["subnet"] = json!(overlay);
    let (code, v) = call(
        "POST",
        &url,
        join_token,
        Some(&json!({ "name": "evil", "spec": s })),
    );
    anyhow::ensure!(code == 422, "overlay subnet answered {code}: {v}");
    // Board 1 keeps its credential and stays Ready; its routes go to board 2's containers only.
    let subnet2 = c.plan().board_subnet(2);
    let routes = c.wait_until(
        Duration::from_secs(20),
        "board 1 to route to board 2",
        || {
            let out = c
                .exec_in_board(1, &["ip", "-4", "route", "show", "proto", "197"])
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.lines()
                .any(|l| l.starts_with(&subnet2))
                .then_some(text)
        },
    )?;
    anyhow::ensure!(
        routes.lines().count() == 1,
        "board 1 routes more than board 2's subnet: {routes}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let nodes = c.api().nodes()?;
    let n1 = nodes
        .iter()
        .find(|n| n.metadata.name == node1)
        .ok_or_else(|| anyhow::anyhow!("{node1} is gone"))?;
    anyhow::ensure!(
        n1.status.as_ref().map(|s| s.phase) == Some(texu_api::NodePhase::Ready),
        "{node1} is not Ready after the takeover attempt: {:?}",
        n1.status
    );
    anyhow::ensure!(nodes.len() == 2, "the attacker got a node: {nodes:?}");
    c.teardown()?;
    Ok(())
}
