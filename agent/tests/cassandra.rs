//! Cassandra on boards: texu-cassandra sizes the heap from the cgroup's memory limit by
//! Cassandra's rule; manifests/rastru/ passes the manifest validator, and the Cassandra role's
//! templates, rendered by the agent's renderer, start a real Apache Cassandra 5.0 node through
//! texu-cassandra that its readiness probe then reports Ready, also in a real host-image LXC
//! container with a memory limit; a replacing member that would seed itself is refused.
//!
//! Needs root (a network namespace per node, so the manifest's fixed ports collide with
//! nothing; cgroups), Java 17 and the Cassandra install of scripts/setup.sh.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use std::sync::Arc;

use texu_agent::files::{self, render, FileContext};
use texu_agent::lxc;
use texu_agent::runtime::{ContainerSpec, Image, LxcRuntime, Phase, Runtime, Volume};
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
    require_root();
}

fn require_root() {
    assert!(
        is_root(),
        "this test needs root (network namespaces, cgroups for the Cassandra nodes)"
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

#[test]
fn a_replaced_member_restarts_without_replacing_again() {
    require_install();
    let role = cassandra_role();
    let dir = tempfile::tempdir().expect("tempdir");
    // Once Ready its `replaces` is cleared and node.env rendered again: member 0 with no
    // Ready member seeds itself (a cold boot of the ring). Its environment still carries
    // TEXU_REPLACES from its create; the env file decides, so it starts, and plainly.
    let (yaml, env) = render_into(&role, &context(&role, 0, None), dir.path());
    let launch = |with_env_file: bool| {
        let mut cmd = Command::new(repo().join("scripts/cassandra/texu-cassandra"));
        cmd.arg("print").env("TEXU_REPLACES", "127.0.0.9");
        if with_env_file {
            cmd.args(["--config".as_ref(), yaml.as_os_str()])
                .args(["--env-file".as_ref(), env.as_os_str()]);
        } else {
            cmd.args(["--seeds", "127.0.0.2", "--listen", "127.0.0.1"]);
        }
        cmd.output().expect("texu-cassandra")
    };
    let out = launch(true);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "a restart was refused: {said}");
    assert!(!said.contains("replace_address_first_boot"), "{said}");
    // Without an env file, TEXU_REPLACES still says what to replace.
    let out = launch(false);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("-Dcassandra.replace_address_first_boot=127.0.0.9"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A memory and CPU cgroup of this test's own (v2, or v1's memory and cpu hierarchies),
/// removed when dropped.
struct Cgroup {
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    fn new(memory_bytes: u64, cpu_millis: u64) -> Cgroup {
        let name = format!("texu-cassandra-test-{}-{memory_bytes}", std::process::id());
        let quota = cpu_millis * 100; // of a 100 ms period
        let root = Path::new("/sys/fs/cgroup");
        let (dirs, settings) = if root.join("cgroup.controllers").exists() {
            let d = root.join(&name);
            let settings = vec![
                (d.join("memory.max"), memory_bytes.to_string()),
                (d.join("cpu.max"), format!("{quota} 100000")),
            ];
            (vec![d], settings)
        } else {
            let (m, c) = (
                root.join("memory").join(&name),
                root.join("cpu").join(&name),
            );
            let settings = vec![
                (m.join("memory.limit_in_bytes"), memory_bytes.to_string()),
                (c.join("cpu.cfs_period_us"), "100000".to_string()),
                (c.join("cpu.cfs_quota_us"), quota.to_string()),
            ];
            (vec![m, c], settings)
        };
        let cgroup = Cgroup { dirs };
        for d in &cgroup.dirs {
            fs::create_dir(d).unwrap_or_else(|e| panic!("create cgroup {}: {e}", d.display()));
        }
        for (file, value) in settings {
            fs::write(&file, value).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
        cgroup
    }

    /// `texu-cassandra ARGS` run inside this cgroup; its standard output.
    fn run(&self, args: &[&str]) -> String {
        let join: Vec<String> = self
            .dirs
            .iter()
            .map(|d| format!("echo $$ > {}/cgroup.procs", d.display()))
            .collect();
        let script = format!("{} && exec \"$0\" \"$@\"", join.join(" && "));
        let out = Command::new("bash")
            .args(["-c", &script])
            .arg(repo().join("scripts/cassandra/texu-cassandra"))
            .args(args)
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "texu-cassandra {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = fs::remove_dir(d);
        }
    }
}

/// Cassandra's cassandra-env.sh: max(min(limit/2, 1 GiB), min(limit/4, 8 GiB)) and
/// min(100 MiB per core, heap/4), in MiB.
fn cassandra_heap_rule(limit_mib: u64, cores: u64) -> (u64, u64) {
    let heap = (limit_mib / 2).min(1024).max((limit_mib / 4).min(8192));
    (heap, (heap / 4).min(100 * cores))
}

#[test]
fn heap_follows_the_containers_memory_limit() {
    require_root();
    // 512 MiB (a SheevaPlug), 1 GiB, the rastru role's 3 GiB, 6 GiB, 16 GiB: below this VM's RAM,
    // which bounds what a cgroup can give.
    for (limit_mib, cpu_millis) in [
        (512u64, 1000u64),
        (1024, 500),
        (3072, 2000),
        (6144, 4000),
        (16384, 2500),
    ] {
        // The quota in whole CPUs, but never more than the board has.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let cores = cpu_millis.div_ceil(1000).min(cpus);
        let (heap, new) = cassandra_heap_rule(limit_mib, cores);
        let expected = format!("MAX_HEAP_SIZE={heap}M\nHEAP_NEWSIZE={new}M\n");
        let cgroup = Cgroup::new(limit_mib << 20, cpu_millis);
        assert_eq!(
            cgroup.run(&["heap"]),
            expected,
            "{limit_mib} MiB cgroup, {cpu_millis} mCPU"
        );
        // A flag wins over the cgroup, as in a rendered env file; 64 GiB hits the 8 GiB cap.
        let (heap, new) = cassandra_heap_rule(64 << 10, 2);
        assert_eq!(
            cgroup.run(&["heap", "--memory-limit", "64Gi", "--cores", "2"]),
            format!("MAX_HEAP_SIZE={heap}M\nHEAP_NEWSIZE={new}M\n")
        );
        assert_eq!(
            cgroup.run(&["heap", "--memory-limit", "4Gi", "--cores", "2"]),
            "MAX_HEAP_SIZE=1024M\nHEAP_NEWSIZE=200M\n"
        );
    }
}

/// A Cassandra member as manifests/rastru/ describes it, in a real host-image container: its
/// rendered cassandra.yaml and launcher settings (the heap from the rendered memory limit), its
/// data volume, a 1.5 GiB memory limit, and the exec readiness probe run inside the container. The container has no network, so the member is 127.0.0.1 on its own
/// loopback.
#[tokio::test(flavor = "multi_thread")]
async fn a_rastru_member_becomes_ready_in_a_host_container() {
    require_install();
    assert!(
        Path::new("/usr/local/bin/texu-cassandra").exists(),
        "texu-cassandra is not in /usr/local/bin (the board's /usr): run scripts/setup.sh"
    );
    let dir = tempfile::Builder::new()
        .prefix("texu-cassandra-lxc-")
        .tempdir()
        .expect("tempdir");
    // The unprivileged container's root walks through it (tempdir makes it 0700).
    fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .expect("chmod the temp dir");
    let rt = Arc::new(LxcRuntime::new(dir.path().join("lxc")).expect("LXC runtime"));
    let name = format!("cassandra-0-{}", std::process::id());
    // The body runs as a task so that the container goes away whether it passes or panics.
    let body = tokio::spawn(member_in_container(
        rt.clone(),
        name.clone(),
        dir.path().to_owned(),
    ))
    .await;
    if let Err(e) = rt.destroy(&name).await {
        eprintln!("cleanup: could not destroy {name}: {e}");
    }
    rt.remove_cgroup_dirs();
    lxc::remove_lock_dir(rt.lxcpath());
    if let Err(e) = body {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn member_in_container(rt: Arc<LxcRuntime>, name: String, dir: PathBuf) {
    let role = cassandra_role();
    let ctx = FileContext {
        address: Some("127.0.0.1".into()),
        memory_limit: Some(1536 << 20),
        ..context(&role, 0, None)
    };
    let rendered = render(&role.spec.files, &ctx).expect("render");
    let data = dir.join("volume");
    fs::create_dir_all(&data).expect("volume dir");
    let mut spec = ContainerSpec::new(&name, Image::Host);
    spec.command = role.spec.command.clone();
    spec.files = files::write(&dir.join("files"), &rendered).expect("write files");
    spec.volumes = vec![Volume {
        host_path: data.clone(),
        container_path: role.spec.volumes[0].path.clone().into(),
    }];
    spec.memory_limit_bytes = Some(1536 << 20);
    rt.create(&spec).await.expect("create");
    rt.start(&name).await.expect("start");

    let readiness = role.spec.health.readiness.as_ref().expect("readiness");
    let probe = &readiness.exec.as_ref().expect("an exec probe").command;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let st = rt.state(&name).await.expect("state");
        assert_eq!(
            st.as_ref().map(|s| s.phase),
            Some(Phase::Running),
            "Cassandra stopped: {st:?}; its log:\n{}",
            fs::read_to_string(data.join("logs/system.log")).unwrap_or_default()
        );
        let out = rt
            .exec(&name, probe, Duration::from_secs(30))
            .await
            .expect("exec");
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not Ready in 240 s: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let run = |argv: &[&str]| {
        let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
        let (rt, name) = (rt.clone(), name.clone());
        async move {
            let out = rt
                .exec(&name, &argv, Duration::from_secs(30))
                .await
                .expect("exec");
            assert!(out.status.success(), "{argv:?}: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    // The heap came from the rendered limit by Cassandra's rule: max(min(768, 1024),
    // min(384, 8192)) MiB. (The template passes the limit because a container need not see its
    // cgroup: on a cgroup v1 board, /sys/fs/cgroup is empty inside a host-image container.)
    let java = "tr '\\0' ' ' < /proc/$(cat /var/lib/cassandra/cassandra.pid)/cmdline";
    let cmdline = run(&["/bin/sh", "-c", java]).await;
    assert!(cmdline.contains("-Xmx768M"), "{cmdline}");
    assert!(
        data.join("data/system").is_dir(),
        "no system keyspace on the volume"
    );
    let status = run(&["/usr/local/bin/texu-nodetool", "status"]).await;
    assert!(
        status.lines().any(|l| l.starts_with("UN  127.0.0.1 ")),
        "{status}"
    );
}
