//! manifests/rastru/: every file passes the manifest validator, and the Cassandra role's
//! templates, rendered by the agent's renderer, start a real Apache Cassandra 5.0 node through
//! texu-cassandra that its readiness probe then reports Ready; a replacing member that would
//! seed itself is refused.
//!
//! Needs root (a network namespace per node, so the manifest's fixed ports collide with
//! nothing), Java 17 and the Cassandra install of scripts/setup.sh.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use texu_agent::files::{render, FileContext};
use texu_api::{parse_manifests, Manifest, Role};

const JARS: &str = "/usr/local/share/texu-cassandra/lib";
const VOLUME: &str = "/var/lib/cassandra";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rastru() -> Vec<Role> {
    let dir = repo().join("manifests/rastru");
    let mut names: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("manifests/rastru")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|p| {
            let text = fs::read_to_string(p).expect("manifest file");
            let file = p.display().to_string();
            parse_manifests(&file, &text)
                .unwrap_or_else(|d| panic!("{file}: {d:#?}"))
                .into_iter()
                .map(|Manifest::Role(r)| r)
        })
        .collect()
}

fn cassandra_role() -> Role {
    rastru()
        .into_iter()
        .find(|r| r.metadata.name == "cassandra")
        .expect("a cassandra role in manifests/rastru")
}

/// The context the agent gives member `ordinal` at 127.0.0.1 with a 1 GiB limit (fields the
/// context gains later, such as endpoints, keep their defaults).
#[allow(clippy::needless_update)]
fn context(role: &Role, ordinal: i64, replaces: Option<&str>) -> FileContext {
    FileContext {
        name: format!("cassandra-{ordinal}"),
        role: "cassandra".into(),
        ordinal,
        node: "board1".into(),
        address: Some("127.0.0.1".into()),
        replaces: replaces.map(str::to_owned),
        memory_limit: Some(1 << 30),
        cpu_limit_millis: Some(2000),
        env: role.spec.env.clone(),
        ..FileContext::default()
    }
}

/// Renders the role's files for `ctx` into `dir`, the volume path moved to `dir/volume`;
/// returns (cassandra.yaml, node.env) paths.
fn render_into(role: &Role, ctx: &FileContext, dir: &Path) -> (PathBuf, PathBuf) {
    let files = render(&role.spec.files, ctx).unwrap_or_else(|e| panic!("render: {e}"));
    let volume = dir.join("volume");
    let mut out = (PathBuf::new(), PathBuf::new());
    for f in files {
        let name = Path::new(&f.path)
            .file_name()
            .expect("file name")
            .to_owned();
        let path = dir.join(&name);
        fs::write(&path, f.text.replace(VOLUME, &volume.display().to_string())).expect("write");
        match name.to_str() {
            Some("cassandra.yaml") => out.0 = path,
            Some("node.env") => out.1 = path,
            other => panic!("unexpected file {other:?}"),
        }
    }
    assert!(out.0.is_file() && out.1.is_file(), "both files rendered");
    out
}

fn require_install() {
    let jars = fs::read_dir(JARS).map(|d| {
        d.filter_map(Result::ok).any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("cassandra-all-")
        })
    });
    assert!(
        matches!(jars, Ok(true)),
        "Apache Cassandra is not installed in {JARS}: run scripts/setup.sh"
    );
    assert!(
        is_root(),
        "this test needs root (a network namespace per Cassandra node)"
    );
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A node in a network namespace of its own; killed (with everything in it) when dropped.
struct Node {
    child: Child,
}

impl Node {
    fn start(yaml: &Path, env: &Path, log: &Path) -> Node {
        let launcher = repo().join("scripts/cassandra/texu-cassandra");
        let script = format!(
            "ip link set lo up && exec {} run --config {} --env-file {} --die-with-parent",
            launcher.display(),
            yaml.display(),
            env.display()
        );
        let log = fs::File::create(log).expect("log file");
        let child = Command::new("unshare")
            .args([
                "--net",
                "--fork",
                "--kill-child=SIGKILL",
                "--",
                "bash",
                "-c",
            ])
            .arg(script)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("unshare (util-linux)");
        Node { child }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("wait")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_rastru_manifest_validates() {
    let names: Vec<String> = rastru().into_iter().map(|r| r.metadata.name).collect();
    assert_eq!(names, ["app", "cassandra", "proxy"]);
    let c = cassandra_role();
    assert!(c.spec.stateful);
    assert_eq!(c.spec.replicas, 3);
    assert!(c
        .spec
        .health
        .readiness
        .as_ref()
        .is_some_and(|p| p.exec.is_some()));
}

#[test]
fn rendered_cassandra_member_starts_and_becomes_ready() {
    require_install();
    let role = cassandra_role();
    let dir = tempfile::tempdir().expect("tempdir");

    // The first member with no Ready member seeds itself and replaces nothing.
    let (yaml, env) = render_into(&role, &context(&role, 0, None), dir.path());
    let yaml_text = fs::read_to_string(&yaml).expect("yaml");
    assert!(yaml_text.contains("- seeds: \"127.0.0.1\""), "{yaml_text}");
    assert!(
        yaml_text.contains("listen_address: 127.0.0.1"),
        "{yaml_text}"
    );
    let env_text = fs::read_to_string(&env).expect("env");
    assert!(
        env_text.contains("TEXU_CASSANDRA_MEMORY_LIMIT=1024M"),
        "{env_text}"
    );
    assert!(!env_text.contains("REPLACE"), "{env_text}");

    let log = dir.path().join("node.log");
    let mut node = Node::start(&yaml, &env, &log);
    let pid_file = dir.path().join("volume/cassandra.pid");
    let probe = repo().join("scripts/cassandra/texu-cassandra-ready");
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut last = String::new();
    loop {
        if let Some(status) = node.exited() {
            panic!(
                "Cassandra exited ({status}):\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if let Ok(pid) = fs::read_to_string(&pid_file) {
            // The probe runs where the agent runs it: in the member's network namespace.
            let out = Command::new("nsenter")
                .arg(format!("--net=/proc/{}/ns/net", pid.trim()))
                .arg(&probe)
                .args(["--env-file".as_ref(), env.as_os_str()])
                .output()
                .expect("nsenter");
            if out.status.success() {
                break;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "not Ready within 240 s; last probe: {last}\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        sleep(Duration::from_secs(1));
    }
    let log_text = fs::read_to_string(&log).unwrap_or_default();
    assert!(log_text.contains("heap 512M"), "heap from the 1 GiB limit");
    assert!(log_text.contains("Startup complete"), "{log_text}");
    drop(node);
    assert!(
        Command::new("pgrep")
            .args([
                "-f",
                &format!("storagedir={}", dir.path().join("volume").display())
            ])
            .output()
            .expect("pgrep")
            .stdout
            .is_empty(),
        "the node's JVM outlived its namespace"
    );
}

#[test]
fn a_replacing_member_never_seeds_itself() {
    require_install();
    let role = cassandra_role();
    let dir = tempfile::tempdir().expect("tempdir");
    let (yaml, env) = render_into(&role, &context(&role, 1, Some("127.0.0.9")), dir.path());
    let yaml_text = fs::read_to_string(&yaml).expect("yaml");
    assert!(
        !yaml_text.contains("- seeds: \"127.0.0.1"),
        "a replacing member listed itself as a seed:\n{yaml_text}"
    );
    let env_text = fs::read_to_string(&env).expect("env");
    assert!(
        env_text.contains("TEXU_CASSANDRA_REPLACE_ADDRESS=127.0.0.9"),
        "{env_text}"
    );

    // Had it listed itself, the launcher refuses to start it at all.
    let seeded_self = yaml_text.replace("- seeds: \"\"", "- seeds: \"127.0.0.1\"");
    fs::write(&yaml, seeded_self).expect("write");
    let out = Command::new(repo().join("scripts/cassandra/texu-cassandra"))
        .args(["print".as_ref(), "--config".as_ref(), yaml.as_os_str()])
        .args(["--env-file".as_ref(), env.as_os_str()])
        .output()
        .expect("texu-cassandra");
    assert!(!out.status.success(), "a seed was allowed to replace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a seed cannot replace 127.0.0.9"),
        "{stderr}"
    );
}
