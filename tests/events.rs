//! Events end to end: a real controller process, the real `texu events` binary, boards simulated
//! over HTTP (join and heartbeats, no LXC), and a restart that keeps the saved events.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{texu_bin, wait_for, ControllerProcess};
use serde_json::{json, Value};

fn role(name: &str) -> String {
    format!(
        "apiVersion: texu.io/v1\nkind: Role\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n  image: host\n  command: [/bin/sleep, '100']\n"
    )
}

fn apply(c: &ControllerProcess, name: &str) {
    c.apply(&role(name));
}

/// `texu events -o json`'s items.
fn events(c: &ControllerProcess) -> Vec<Value> {
    let list: Value = serde_json::from_str(&c.texu_ok(&["events", "-o", "json"])).unwrap();
    list["items"].as_array().cloned().unwrap_or_default()
}

fn find(events: &[Value], kind: &str, object: &str) -> Option<Value> {
    events
        .iter()
        .find(|e| e["kind"] == kind && e["object"] == object)
        .cloned()
}

fn status(method: &str, url: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value) {
    let mut req = common::http().request(method, url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    common::status_and_json(common::send(req, body))
}

/// `texu events --watch` as a child process whose stdout lines arrive on a channel; killed on drop.
struct Watcher {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Watcher {
    fn start(c: &ControllerProcess) -> Watcher {
        let mut child = Command::new(texu_bin())
            .args(["events", "--watch"])
            .env("TEXU_SERVER", &c.server)
            .env("TEXU_CA_FILE", c.ca_file())
            .env("TEXU_TOKEN", &c.token)
            .env("TEXU_CONFIG", "/nonexistent/texu-test-config.yaml")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn texu events --watch");
        let stdout = child.stdout.take().expect("stdout pipe");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Watcher { child, lines }
    }

    /// Waits up to 15 s for a line containing every one of `words`; returns it.
    fn expect(&self, words: &[&str]) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if words.iter().all(|w| line.contains(w)) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no line with {words:?} from texu events --watch; saw {seen:#?}"),
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn unschedulable_containers_show_in_texu_events_and_watch_prints_new_ones() {
    let c = ControllerProcess::start();
    let url = format!("{}/v1/events", c.server);
    assert_eq!(status("GET", &url, None, None).0, 401);
    assert_eq!(status("GET", &url, Some("texu-admin-wrong"), None).0, 401);

    apply(&c, "app");
    let event = wait_for(
        Duration::from_secs(10),
        "an Unschedulable event for app-0",
        || find(&events(&c), "Unschedulable", "container/app-0"),
    );
    assert_eq!(event["message"], "0/0 nodes: no node has joined");
    assert!(event["node"].is_null(), "{event}");
    let table = c.texu_ok(&["events"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["AGE", "KIND", "OBJECT", "NODE", "MESSAGE"]);
    let row = lines
        .find(|l| l.contains("container/app-0"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("Unschedulable"), "{row}");
    assert!(row.contains("0/0 nodes: no node has joined"), "{row}");
    let yaml = c.texu_ok(&["events", "-o", "yaml"]);
    assert!(yaml.contains("kind: Unschedulable"), "{yaml}");

    // An idle cluster records nothing more: the loop resyncs every second without writing.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(events(&c).len(), 1, "{:#?}", events(&c));

    let watcher = Watcher::start(&c);
    watcher.expect(&["AGE", "KIND", "OBJECT"]);
    watcher.expect(&["Unschedulable", "container/app-0"]);
    apply(&c, "web");
    let line = watcher.expect(&["container/web-0"]);
    assert!(line.contains("Unschedulable"), "{line}");
    assert!(line.contains("no node has joined"), "{line}");
}

fn spec(address: &str) -> Value {
    json!({ "address": address, "arch": "amd64", "cpus": 2, "memoryBytes": 1u64 << 30 })
}

#[test]
fn a_silent_board_is_not_ready_and_its_container_is_replaced() {
    let c = ControllerProcess::start_with(None, &["--node-grace", "600ms"]);
    let join = |name: &str, address: &str| {
        let (code, v) = status(
            "POST",
            &format!("{}/v1/join", c.server),
            Some(&c.join_token()),
            Some(&json!({ "name": name, "spec": spec(address) })),
        );
        assert_eq!(code, 200, "{v}");
        v["credential"].as_str().unwrap().to_string()
    };
    let boards = [
        ("board-a", join("board-a", "198.18.0.2")),
        ("board-b", join("board-b", "198.18.0.3")),
    ];
    let beat = |name: &str, credential: &str| {
        let url = format!("{}/v1/nodes/{name}/status", c.server);
        let body = json!({ "spec": spec("198.18.0.2"), "containers": [] });
        status("PUT", &url, Some(credential), Some(&body)).0
    };
    // A board may not read the events.
    let (code, _) = status(
        "GET",
        &format!("{}/v1/events", c.server),
        Some(&boards[0].1),
        None,
    );
    assert_eq!(code, 403);

    apply(&c, "app");
    let placed = wait_for(Duration::from_secs(10), "app-0 placed", || {
        for (name, credential) in &boards {
            beat(name, credential);
        }
        find(&events(&c), "Placed", "container/app-0")
    });
    let first = placed["node"].as_str().unwrap().to_string();
    assert_eq!(placed["message"], format!("app-0 on {first}"));
    let (other, other_credential) = boards.iter().find(|(n, _)| *n != first).unwrap();

    // The first board falls silent; the other keeps beating.
    let (not_ready, replaced) = wait_for(
        Duration::from_secs(15),
        "NodeNotReady and Replaced events",
        || {
            beat(other, other_credential);
            let all = events(&c);
            Some((
                find(&all, "NodeNotReady", &format!("node/{first}"))?,
                find(&all, "Replaced", "container/app-0")?,
            ))
        },
    );
    assert_eq!(not_ready["node"], first.as_str());
    assert!(
        not_ready["message"]
            .as_str()
            .unwrap()
            .starts_with("no heartbeat for"),
        "{not_ready}"
    );
    assert_eq!(replaced["node"], *other);
    assert!(
        replaced["message"]
            .as_str()
            .unwrap()
            .contains(&format!("moved from {first}")),
        "{replaced}"
    );
    assert!(not_ready["seq"].as_u64() < replaced["seq"].as_u64());
}

/// Stops the controller with SIGTERM (its last flush saves the events) and starts it again.
fn stop_and_start(c: &mut ControllerProcess) {
    c.signal(common::SIGTERM);
    let exit = c
        .wait_exit(Duration::from_secs(15))
        .expect("controller exits after SIGTERM");
    assert!(exit.success(), "{exit}");
    c.spawn();
}

#[test]
fn events_survive_a_restart_and_the_seq_continues() {
    let mut c = ControllerProcess::start();
    apply(&c, "app");
    let before = wait_for(Duration::from_secs(10), "an event", || {
        let all = events(&c);
        (!all.is_empty()).then_some(all)
    });
    // SIGTERM saves the events at once, without waiting for the flush interval.
    stop_and_start(&mut c);
    let after = events(&c);
    assert_eq!(after, before, "the saved events come back");
    apply(&c, "web");
    let web = wait_for(Duration::from_secs(10), "an event for web-0", || {
        find(&events(&c), "Unschedulable", "container/web-0")
    });
    let last = before.last().unwrap()["seq"].as_u64().unwrap();
    assert!(web["seq"].as_u64().unwrap() > last, "{web} after {last}");
}

#[test]
fn a_burst_larger_than_one_etcd_transaction_is_saved_in_batches() {
    let etcd = texu_controller::store::conformance::etcd_server::EtcdServer::start();
    let endpoint = etcd.endpoint().trim_start_matches("http://").to_string();
    let mut c = ControllerProcess::start_with_store(Some(format!("etcd://{endpoint}")));
    let many = role("app").replace("replicas: 1", "replicas: 200");
    c.apply(&many);
    wait_for(Duration::from_secs(20), "200 events", || {
        (events(&c).len() == 200).then_some(())
    });
    // etcd refuses transactions of more than 128 operations; the last flush takes two.
    stop_and_start(&mut c);
    let after = events(&c);
    assert_eq!(after.len(), 200);
    assert_eq!(after.last().unwrap()["seq"], 200);
}
