//! `texu sim` against a real controller process: simulated boards join, their containers are
//! Ready, a quarter of them lose power at once, their containers come up Ready on the others
//! and no board that kept its power is ever marked NotReady. No root or LXC needed: the boards'
//! runtime is faked, the controller and its store are real.

mod common;

use std::collections::HashSet;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{texu_bin, wait_for, ControllerProcess};
use serde_json::Value;

const BOARDS: usize = 20;
const PER_BOARD: usize = 2;

/// A `texu sim` child whose stdout lines arrive on a channel; killed on drop.
struct Sim {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Sim {
    fn start(c: &ControllerProcess, token_file: &std::path::Path, args: &[&str]) -> Sim {
        let mut child = Command::new(texu_bin())
            .arg("sim")
            .arg("--join-token-file")
            .arg(token_file)
            .args(args)
            .env("TEXU_SERVER", &c.server)
            .env("TEXU_TOKEN", &c.token)
            .env("TEXU_CA_FILE", c.ca_file())
            .env("TEXU_CONFIG", "/nonexistent/texu-test-config.yaml")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn texu sim");
        let stdout = child.stdout.take().expect("stdout pipe");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Sim {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line starting with `prefix`, within `timeout`.
    fn line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "texu sim printed no {prefix:?} line within {timeout:?}; it printed {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// SIGTERM, then the rest of its output.
    fn stop(&mut self) -> Vec<String> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signal texu sim");
        let status = self.child.wait().expect("wait for texu sim");
        assert!(status.success(), "texu sim exited with {status}");
        self.lines.try_iter().collect()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn items(c: &ControllerProcess, kind: &str) -> Vec<Value> {
    c.get_json(&[kind])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn phase(object: &Value) -> &str {
    object["status"]["phase"].as_str().unwrap_or_default()
}

#[test]
fn simulated_boards_hold_ready_containers_and_a_power_cut_moves_only_the_dark_boards_work() {
    let c = ControllerProcess::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let token_file = tmp.path().join("join.token");
    std::fs::write(&token_file, c.join_token()).expect("write the join token");
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod 600 the join token");
    let boards = BOARDS.to_string();
    let per_board = PER_BOARD.to_string();
    let mut sim = Sim::start(
        &c,
        &token_file,
        &[
            "--boards",
            &boards,
            "--prefix",
            "simt",
            "--containers-per-board",
            &per_board,
            "--power-off",
            "25",
            "--after",
            "6s",
            "--report-every",
            "2s",
        ],
    );
    sim.line("joined 20 boards", Duration::from_secs(60));

    // Every board Ready and every container Ready, as the controller sees them.
    let want = BOARDS * PER_BOARD;
    wait_for(Duration::from_secs(60), "every container Ready", || {
        let containers = items(&c, "containers");
        (containers.len() == want && containers.iter().all(|x| phase(x) == "Ready")).then_some(())
    });
    let nodes = items(&c, "nodes");
    assert_eq!(nodes.len(), BOARDS, "{nodes:#?}");
    assert!(nodes.iter().all(|n| phase(n) == "Ready"), "{nodes:#?}");
    let containers = items(&c, "containers");
    let addresses: HashSet<&str> = containers
        .iter()
        .filter_map(|x| x["status"]["address"].as_str())
        .collect();
    assert_eq!(addresses.len(), want, "one address each: {containers:#?}");

    // A quarter of the boards go dark at once.
    let off = sim.line("power off: 5 boards", Duration::from_secs(60));
    let dark: HashSet<String> = off
        .rsplit_once(": ")
        .map(|(_, names)| names.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    assert_eq!(dark.len(), 5, "{off}");
    sim.line("failover: ", Duration::from_secs(60));
    wait_for(
        Duration::from_secs(30),
        "the dark boards' containers Ready on boards with power",
        || {
            let containers = items(&c, "containers");
            let moved = containers.len() == want
                && containers.iter().all(|x| {
                    phase(x) == "Ready"
                        && x["spec"]["node"]
                            .as_str()
                            .is_some_and(|n| !dark.contains(n))
                });
            moved.then_some(())
        },
    );
    let nodes = items(&c, "nodes");
    for n in &nodes {
        let name = n["metadata"]["name"].as_str().unwrap_or_default();
        let expected = if dark.contains(name) {
            "NotReady"
        } else {
            "Ready"
        };
        assert_eq!(phase(n), expected, "node {name}: {n:#}");
    }
    let events: Value =
        serde_json::from_str(&c.texu_ok(&["events", "-o", "json"])).expect("events as JSON");
    let wrongly_down: Vec<&Value> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "NodeNotReady")
        .filter(|e| !e["node"].as_str().is_some_and(|n| dark.contains(n)))
        .collect();
    assert!(
        wrongly_down.is_empty(),
        "boards with power were marked NotReady: {wrongly_down:#?}"
    );

    let rest = sim.stop();
    assert!(
        rest.iter().any(|l| l.starts_with("total: heartbeats")),
        "texu sim ends with its totals: {:#?}",
        [sim.seen.clone(), rest].concat()
    );
}
