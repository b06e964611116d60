//! End-to-end tests of what a container can see of its board: a real controller and a real
//! `texu agent` running real LXC containers, as root. Containers are unprivileged unless
//! their role says `privileged: true`, and none sees the agent's secrets.

mod common;

use std::time::Duration;

use common::{wait_for, AgentProcess, ControllerProcess};

/// The environment a board process started with, one `KEY=VALUE` per line.
fn environ(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', "\n"))
        .unwrap_or_default()
}

/// The board uid a process runs as.
fn board_uid(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .expect("uid of the container's init")
}

/// Children of a board process.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

const ROLES: &str = r#"
apiVersion: texu.io/v1
kind: Role
metadata:
  name: plain
spec:
  image: host
  command: [/bin/sleep, "1000"]
  env:
    MODE: prod
---
apiVersion: texu.io/v1
kind: Role
metadata:
  name: root
spec:
  image: template:busybox
  command: [/bin/sleep, "1000"]
  privileged: true
"#;

#[test]
fn containers_see_no_agent_secret_run_unprivileged_and_a_privileged_role_opts_out() {
    let c = ControllerProcess::start();
    let join = c.join_token();
    // Secrets in the agent's environment, as an admin's shell might have exported them.
    let agent = AgentProcess::start_with_env(
        &c,
        "board-u",
        247,
        &[],
        &[
            ("TEXU_JOIN_TOKEN", join.as_str()),
            ("TEXU_TOKEN", "texu-admin-secret-in-the-agents-env"),
        ],
    );
    c.apply(ROLES);
    let init = |name: &str| {
        wait_for(Duration::from_secs(60), &format!("{name} running"), || {
            agent.init_pid(name)
        })
    };
    let (plain, root) = (init("plain-0"), init("root-0"));

    // No TEXU_* secret in any container process, nor in the agent itself now.
    let agent_pid = agent.pid().expect("agent runs");
    for (what, pid) in [
        ("the agent", agent_pid),
        ("plain-0 init", plain),
        ("root-0 init", root),
    ]
    .into_iter()
    .chain(children(plain).into_iter().map(|p| ("plain-0 command", p)))
    {
        let env = environ(pid);
        assert!(
            !env.contains("TEXU_") && !env.contains(&join),
            "{what} (pid {pid}) sees a secret: {env}"
        );
    }
    let cmdline = std::fs::read(format!("/proc/{agent_pid}/cmdline")).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(&join),
        "the join token is on the agent's command line"
    );
    let command = children(plain)
        .into_iter()
        .map(environ)
        .find(|e| e.contains("MODE=prod"));
    assert!(command.is_some(), "the role's env reaches its command");

    // Unprivileged by default; the privileged role is root on the board and says so.
    assert_ne!(board_uid(plain), 0, "plain-0 runs as root on the board");
    assert_eq!(board_uid(root), 0, "the privileged role runs as root");
    let wide = c.texu_ok(&["get", "roles", "-o", "wide"]);
    let column = |role: &str| {
        let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
        let at = header
            .iter()
            .position(|h| *h == "PRIVILEGED")
            .expect("PRIVILEGED column");
        let row = wide
            .lines()
            .find(|l| l.split_whitespace().next() == Some(role))
            .expect("role row");
        row.split_whitespace().nth(at).unwrap().to_string()
    };
    assert_eq!(column("root"), "true", "{wide}");
    assert_eq!(column("plain"), "false", "{wide}");
}

#[test]
fn a_join_token_file_others_can_read_is_refused() {
    let c = ControllerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("join.token");
    std::fs::write(&file, c.join_token()).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = c.texu(&[
        "agent",
        "--name",
        "board-leaky",
        "--no-network",
        "--data-dir",
        dir.path().join("agent").to_str().unwrap(),
        "--join-token-file",
        file.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
}

#[test]
fn a_join_token_from_the_environment_still_joins_and_leaves_the_environment() {
    let c = ControllerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let join = c.join_token();
    let mut agent = std::process::Command::new(common::texu_bin())
        .args(["--server", &c.server, "agent", "--name", "board-env"])
        .args(["--no-network", "--data-dir"])
        .arg(dir.path().join("agent"))
        .env("TEXU_JOIN_TOKEN", &join)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn texu agent");
    wait_for(Duration::from_secs(30), "board-env to join", || {
        let nodes = c.get_json(&["nodes"]);
        let found = nodes["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n["metadata"]["name"] == "board-env"));
        found.then_some(())
    });
    let env = environ(agent.id());
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        !env.contains("TEXU_JOIN_TOKEN") && !env.contains(&join),
        "the agent kept the token in its environment: {env}"
    );
}
