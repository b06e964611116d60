//! Integration tests of `LxcRuntime` against REAL LXC (liblxc): they create, start, stop and
//! destroy containers, so they need root, liblxc, the busybox template and busybox on the
//! board. Missing any of these fails the test with a message saying what is missing.
//!
//! Each test has its own temporary LXC path and container names carrying the test process's
//! pid, so tests run in parallel and twice in a row; a guard stops and destroys whatever a
//! test leaves, even when it fails. Containers get no network (`lxc.net.0.type = empty`)
//! except in the one network test, which makes its own bridge in 198.18.128.0/17 and deletes
//! it afterwards. No traffic leaves loopback and that bridge.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;
use texu_agent::files;
use texu_agent::lxc::{self, LxcContainer, LxcState};
use texu_agent::runtime::cgroup::{proc_cgroup_path, CgroupLayout};
use texu_agent::runtime::{
    ContainerSpec, ExitReason, FileTargetError, Image, LxcRuntime, NetConfig, Phase, Runtime,
    RuntimeError, Volume,
};
use texu_api::{Container, FileTemplate, RoleSpec};

/// Fails (never skips) when the board cannot run these tests.
fn require_lxc() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests start real LXC containers and must run as root"
    );
    assert!(
        !lxc::version().is_empty(),
        "liblxc did not report a version: is liblxc (package lxc) installed?"
    );
    for (path, what) in [
        (
            "/usr/share/lxc/templates/lxc-busybox",
            "the LXC busybox template (lxc-templates)",
        ),
        ("/bin/busybox", "busybox (busybox-static)"),
        ("/sbin/init.lxc.static", "LXC's static init (package lxc)"),
    ] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: install {what}"
        );
    }
}

/// A temporary LXC path with a runtime; stops and destroys every container in it on drop.
struct Board {
    rt: LxcRuntime,
    lxcpath: PathBuf,
    _dir: TempDir,
}

impl Board {
    fn new() -> Self {
        require_lxc();
        let dir = tempfile::Builder::new()
            .prefix("texu-lxc-test-")
            .tempdir()
            .expect("temporary directory");
        // Unprivileged containers' root walks through it (tempdir makes it 0700).
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .expect("chmod the temporary directory");
        let lxcpath = dir.path().join("lxc");
        let rt = LxcRuntime::new(&lxcpath).expect("LXC runtime");
        let lxcpath = rt.lxcpath().to_owned();
        Self {
            rt,
            lxcpath,
            _dir: dir,
        }
    }

    /// A directory for volumes, outside the LXC path.
    fn volume_dir(&self, name: &str) -> PathBuf {
        let p = self._dir.path().join("volumes").join(name);
        std::fs::create_dir_all(&p).expect("volume directory");
        p
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        // Straight liblxc calls: this runs inside the test's runtime, so no async here.
        for name in lxc::list_defined(&self.lxcpath).unwrap_or_default() {
            if let Ok(c) = LxcContainer::new(&name, &self.lxcpath) {
                if c.is_running().unwrap_or(false) {
                    let _ = c.stop();
                    let _ = c.wait(LxcState::Stopped, Duration::from_secs(10));
                }
                // A container whose monitor liblxc cannot reach: kill its recorded init.
                if let Some(pid) = recorded_init(&self.lxcpath.join(&name)) {
                    if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
                if let Err(e) = c.destroy() {
                    eprintln!("cleanup: could not destroy {name}: {e}");
                }
            }
        }
        self.rt.remove_cgroup_dirs();
        lxc::remove_lock_dir(&self.lxcpath);
    }
}

/// The init pid the runtime recorded in a container directory, if any.
fn recorded_init(dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(dir.join("texu.init")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("init "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A container name unique to this test process.
fn unique(base: &str) -> String {
    format!("{base}-{}", std::process::id())
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn busybox(name: &str, command: &[&str]) -> ContainerSpec {
    let mut s = ContainerSpec::new(name, Image::Template("busybox".into()));
    s.command = argv(command);
    s
}

fn host(name: &str, command: &[&str]) -> ContainerSpec {
    let mut s = ContainerSpec::new(name, Image::Host);
    s.command = argv(command);
    s
}

/// Polls the runtime until `done` holds for the container's phase, or panics after `limit`.
async fn wait_for_phase(rt: &LxcRuntime, name: &str, phase: Phase, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let st = rt.state(name).await.expect("state");
        if st.as_ref().map(|s| s.phase) == Some(phase) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not reach {phase:?} within {limit:?}: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn exec_ok(rt: &LxcRuntime, name: &str, args: &[&str]) -> String {
    let out = rt
        .exec(name, &argv(args), Duration::from_secs(10))
        .await
        .expect("exec");
    assert!(
        out.status.success(),
        "{args:?} in {name}: {:?}, stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// This process's cgroups once no start is moving it: other tests in this process start
/// containers at the same time, and each start puts the whole process in its container's
/// monitor cgroup until it moves it back.
fn settled_cgroups() -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        if !now.contains(".monitor") || Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn busybox_template_container_runs_and_stops() {
    let b = Board::new();
    let name = unique("bb-sleep");
    b.rt.create(&busybox(&name, &["/bin/sleep", "1000"]))
        .await
        .expect("create");
    let st = b.rt.state(&name).await.unwrap().expect("defined");
    assert_eq!(st.phase, Phase::Created);
    assert_eq!(b.rt.list().await.unwrap(), vec![name.clone()]);

    let own_cgroups = settled_cgroups();
    let t = Instant::now();
    b.rt.start(&name).await.expect("start");
    eprintln!("busybox container started in {:?}", t.elapsed());
    // liblxc moves the caller into the new container's monitor cgroup; the runtime moves it
    // back.
    assert_eq!(settled_cgroups(), own_cgroups);
    let st = b.rt.state(&name).await.unwrap().expect("defined");
    assert_eq!(st.phase, Phase::Running);
    assert!(st.monitor_reachable);
    let pid = st.init_pid.expect("init pid");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    // LXC's init is PID 1 and runs the command as PID 2.
    let init_cmdline = exec_ok(&b.rt, &name, &["/bin/cat", "/proc/1/cmdline"]).await;
    assert!(init_cmdline.starts_with("init"), "{init_cmdline:?}");
    assert!(exec_ok(&b.rt, &name, &["/bin/ps"])
        .await
        .contains("sleep 1000"));
    assert_eq!(exec_ok(&b.rt, &name, &["/bin/hostname"]).await.trim(), name);
    // Starting a running container is a no-op.
    b.rt.start(&name).await.expect("second start");
    assert_eq!(
        b.rt.state(&name).await.unwrap().unwrap().init_pid,
        Some(pid)
    );

    let t = Instant::now();
    b.rt.stop(&name, Duration::from_secs(5))
        .await
        .expect("stop");
    eprintln!(
        "busybox container stopped (sleep exits on SIGTERM) in {:?}",
        t.elapsed()
    );
    let st = b.rt.state(&name).await.unwrap().expect("defined");
    assert_eq!(st.phase, Phase::Stopped);
    assert_eq!(st.exit_reason, Some(ExitReason::StoppedByRuntime));
    assert_eq!(st.init_pid, None);
    b.rt.stop(&name, Duration::from_secs(5))
        .await
        .expect("stop again");

    // It can start again.
    b.rt.start(&name).await.expect("restart");
    assert_eq!(
        b.rt.state(&name).await.unwrap().unwrap().phase,
        Phase::Running
    );

    b.rt.destroy(&name).await.expect("destroy");
    assert_eq!(b.rt.state(&name).await.unwrap(), None);
    assert!(!b.lxcpath.join(&name).exists());
    assert!(b.rt.list().await.unwrap().is_empty());
    b.rt.destroy(&name)
        .await
        .expect("destroying a missing container succeeds");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_template_runs_once_per_board_and_each_container_has_its_own_copy() {
    let b = Board::new();
    let (first, second) = (unique("bb-first"), unique("bb-second"));
    b.rt.create(&busybox(&first, &["/bin/sleep", "1000"]))
        .await
        .expect("create the first");
    let base = b.lxcpath.join(".texu-templates/busybox");
    let stamp = std::fs::metadata(base.join("texu.base")).expect("a finished base");
    b.rt.create(&busybox(&second, &["/bin/sleep", "1000"]))
        .await
        .expect("create the second");
    // The base was not built again for the second container.
    let again = std::fs::metadata(base.join("texu.base")).unwrap();
    assert_eq!(stamp.modified().unwrap(), again.modified().unwrap());
    assert!(b
        .rt
        .list()
        .await
        .unwrap()
        .iter()
        .all(|n| !n.contains("busybox")));

    for name in [&first, &second] {
        b.rt.start(name).await.expect("start");
    }
    // A file written in one container is neither in the other nor in the base.
    exec_ok(
        &b.rt,
        &first,
        &["/bin/sh", "-c", "echo mine > /etc/only-first"],
    )
    .await;
    let seen =
        b.rt.exec(
            &second,
            &argv(&["/bin/cat", "/etc/only-first"]),
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert!(
        !seen.status.success(),
        "the second container sees the first's file"
    );
    assert!(!base.join("rootfs/etc/only-first").exists());
    // Each has its own hostname, and the base's busybox applets work.
    assert_eq!(
        exec_ok(&b.rt, &second, &["/bin/hostname"]).await.trim(),
        second
    );
    assert!(exec_ok(&b.rt, &second, &["/bin/ls", "/bin"])
        .await
        .contains("httpd"));
    for name in [&first, &second] {
        b.rt.destroy(name).await.expect("destroy");
    }
    assert!(
        base.join("rootfs/bin/busybox").exists(),
        "the base stays for the next create"
    );
    // liblxc's lock files for this LXC path go with it.
    let locks = Path::new("/run/lxc/lock").join(b.lxcpath.strip_prefix("/").unwrap());
    assert!(locks.exists(), "liblxc keeps locks in {}", locks.display());
    drop(b);
    assert!(!locks.exists(), "{} left behind", locks.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn busybox_httpd_serves_on_the_container_loopback() {
    let b = Board::new();
    let name = unique("bb-httpd");
    b.rt.create(&busybox(
        &name,
        &["/bin/httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/etc"],
    ))
    .await
    .expect("create");
    b.rt.start(&name).await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out =
            b.rt.exec(
                &name,
                &argv(&[
                    "/bin/wget",
                    "-q",
                    "-O",
                    "-",
                    "http://127.0.0.1:8080/hostname",
                ]),
                Duration::from_secs(5),
            )
            .await
            .expect("exec wget");
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), name);
            break;
        }
        assert!(Instant::now() < deadline, "httpd never answered: {out:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn host_image_runs_a_host_binary_with_its_own_writable_dirs() {
    let b = Board::new();
    let name = unique("host-sleep");
    b.rt.create(&host(&name, &["/bin/sleep", "1000"]))
        .await
        .expect("create");
    let t = Instant::now();
    b.rt.start(&name).await.expect("start");
    eprintln!("host-image container started in {:?}", t.elapsed());
    let st = b.rt.state(&name).await.unwrap().unwrap();
    assert_eq!(st.phase, Phase::Running);
    assert!(st.init_pid.is_some());

    assert_eq!(
        exec_ok(&b.rt, &name, &["/bin/cat", "/etc/hostname"])
            .await
            .trim(),
        name
    );
    assert!(exec_ok(&b.rt, &name, &["/bin/cat", "/etc/hosts"])
        .await
        .contains(&name));
    // The /var skeleton on its tmpfs, and writable /var, /run, /tmp, /home.
    exec_ok(
        &b.rt,
        &name,
        &[
            "/bin/sh",
            "-c",
            "test -L /var/run && test -L /var/lock && test -d /var/log && test -d /var/lib \
             && test -d /var/tmp && test -d /run/lock \
             && touch /var/log/x /run/x /tmp/x /home/x /var/lock/x",
        ],
    )
    .await;
    // The board's directories are read-only.
    for dir in ["/usr", "/etc", "/bin"] {
        let out =
            b.rt.exec(
                &name,
                &argv(&["/bin/touch", &format!("{dir}/texu-test")]),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert!(!out.status.success(), "{dir} is writable in the container");
    }
    // The command's environment has a PATH; exec gets the same environment, not the agent's.
    let env = exec_ok(&b.rt, &name, &["/usr/bin/env"]).await;
    assert!(env.contains("PATH=/usr/local/sbin"), "{env}");
    assert!(!env.contains("CARGO"), "agent environment leaked: {env}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_gives_the_command_its_grace_period_then_kills() {
    let b = Board::new();
    let data = b.volume_dir("graceful");

    // A command that exits cleanly on SIGTERM after some work, writing to its volume.
    let name = unique("graceful");
    let mut spec = host(
        &name,
        &[
            "/bin/sh",
            "-c",
            "trap 'sleep 1.5; echo bye > /data/bye; exit 0' TERM; echo hi > /data/hi; \
             while :; do sleep 0.1; done",
        ],
    );
    spec.volumes = vec![Volume {
        host_path: data.clone(),
        container_path: "/data".into(),
    }];
    b.rt.create(&spec).await.expect("create");
    b.rt.start(&name).await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !data.join("hi").exists() {
        assert!(
            Instant::now() < deadline,
            "the command never wrote to its volume"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    b.rt.stop(&name, Duration::from_secs(8))
        .await
        .expect("stop");
    let took = t.elapsed();
    // Longer than LXC init's own one-second SIGTERM->SIGKILL, shorter than the grace.
    assert!(
        data.join("bye").exists(),
        "the command was killed before its handler finished"
    );
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(8),
        "{took:?}"
    );

    // A command that ignores SIGTERM is killed when the grace period ends.
    let name = unique("stubborn");
    b.rt.create(&host(
        &name,
        &["/bin/sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
    ))
    .await
    .expect("create");
    b.rt.start(&name).await.expect("start");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    b.rt.stop(&name, Duration::from_secs(1))
        .await
        .expect("stop");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let st = b.rt.state(&name).await.unwrap().unwrap();
    assert_eq!(st.phase, Phase::Stopped);
    assert_eq!(st.exit_reason, Some(ExitReason::StoppedByRuntime));
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_init_process_is_seen_as_stopped() {
    let b = Board::new();
    let name = unique("killed");
    b.rt.create(&busybox(&name, &["/bin/sleep", "1000"]))
        .await
        .expect("create");
    b.rt.start(&name).await.expect("start");
    let pid =
        b.rt.state(&name)
            .await
            .unwrap()
            .unwrap()
            .init_pid
            .expect("pid");
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill init");
    wait_for_phase(&b.rt, &name, Phase::Stopped, Duration::from_secs(10)).await;
    let st = b.rt.state(&name).await.unwrap().unwrap();
    assert_eq!(st.exit_reason, Some(ExitReason::Exited));
    assert!(!st.oom_killed());
    assert!(matches!(
        b.rt.usage(&name).await,
        Err(RuntimeError::NotRunning { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_beyond_its_memory_limit_is_oom_killed_and_says_so() {
    let b = Board::new();
    let name = unique("oom");
    let mut spec = host(
        &name,
        &[
            "/bin/sh",
            "-c",
            "x=0123456789abcdef; while :; do x=$x$x; done",
        ],
    );
    spec.memory_limit_bytes = Some(32 << 20);
    b.rt.create(&spec).await.expect("create");
    b.rt.start(&name).await.expect("start");
    wait_for_phase(&b.rt, &name, Phase::Stopped, Duration::from_secs(15)).await;
    let st = b.rt.state(&name).await.unwrap().unwrap();
    assert!(st.oom_killed(), "{st:?}");
    assert_eq!(st.exit_reason, Some(ExitReason::OomKilled));
    assert!(b.rt.oom_killed(&name).await.unwrap());

    // Starting again clears the record.
    let name2 = unique("no-oom");
    let mut spec2 = host(&name2, &["/bin/sleep", "1000"]);
    spec2.memory_limit_bytes = Some(32 << 20);
    b.rt.create(&spec2).await.expect("create");
    b.rt.start(&name2).await.expect("start");
    assert!(!b.rt.oom_killed(&name2).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_are_applied_and_usage_is_read_back() {
    let b = Board::new();
    let name = unique("usage");
    let mut spec = host(
        &name,
        &[
            "/bin/sh",
            "-c",
            "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 1000",
        ],
    );
    spec.memory_limit_bytes = Some(64 << 20);
    spec.cpu_millis = Some(500);
    b.rt.create(&spec).await.expect("create");
    b.rt.start(&name).await.expect("start");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let usage = b.rt.usage(&name).await.expect("usage");
    assert!(usage.cpu_nanos > 0, "{usage:?}");
    assert!(usage.memory_bytes > 0, "{usage:?}");

    let pid = b.rt.state(&name).await.unwrap().unwrap().init_pid.unwrap();
    let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    match b.rt.host().cgroup.as_ref().expect("cgroups on this board") {
        CgroupLayout::V1 { memory, .. } => {
            let path = proc_cgroup_path(&proc_cgroup, Some("memory")).unwrap();
            assert!(
                path.ends_with(&format!("{}/{name}", b.rt.cgroup_prefix())),
                "{path}"
            );
            let limit =
                std::fs::read_to_string(memory.dir(&path).join("memory.limit_in_bytes")).unwrap();
            assert_eq!(limit.trim(), (64u64 << 20).to_string());
            let cpu_path = proc_cgroup_path(&proc_cgroup, Some("cpu")).unwrap();
            let quota = std::fs::read_to_string(
                Path::new("/sys/fs/cgroup/cpu")
                    .join(cpu_path.trim_start_matches('/'))
                    .join("cpu.cfs_quota_us"),
            );
            if let Ok(q) = quota {
                assert_eq!(q.trim(), "50000");
            }
        }
        CgroupLayout::V2 { unified, .. } => {
            let path = proc_cgroup_path(&proc_cgroup, None).unwrap();
            let dir = unified.dir(&path);
            let max = std::fs::read_to_string(dir.join("memory.max")).unwrap();
            assert_eq!(max.trim(), (64u64 << 20).to_string());
            let cpu = std::fs::read_to_string(dir.join("cpu.max")).unwrap();
            assert_eq!(cpu.trim(), "50000 100000");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_command_or_template_fails_cleanly() {
    let b = Board::new();
    for spec in [
        host(&unique("nope-host"), &["/nope"]),
        host(&unique("nope-path"), &["no-such-program", "x"]),
        busybox(&unique("nope-bb"), &["/bin/nope"]),
    ] {
        let err = b.rt.create(&spec).await.unwrap_err();
        assert!(
            matches!(&err, RuntimeError::CommandNotFound { command, .. } if *command == spec.command[0]),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&format!(
                "command {} not found in the container's filesystem",
                spec.command[0]
            )),
            "{msg}"
        );
        assert!(
            !b.lxcpath.join(&spec.name).exists(),
            "{} left behind",
            spec.name
        );
    }

    let name = unique("bad-template");
    let mut spec = busybox(&name, &["/bin/sleep", "1"]);
    spec.image = Image::Template("no-such-template".into());
    let err = b.rt.create(&spec).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Template { .. }), "{err:?}");
    eprintln!("bad template: {err}");
    assert!(!b.lxcpath.join(&name).exists());

    let mut spec = host(&unique("bad-volume"), &["/bin/sleep", "1"]);
    spec.volumes = vec![Volume {
        host_path: "/nonexistent/texu".into(),
        container_path: "/data".into(),
    }];
    assert!(matches!(
        b.rt.create(&spec).await,
        Err(RuntimeError::VolumeSource { .. })
    ));

    // Only the busybox base the first creates built stays: the failed template left no base.
    let listing = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(listing(&b.lxcpath), vec![".texu-templates".to_string()]);
    let bases = listing(&b.lxcpath.join(".texu-templates"));
    assert_eq!(bases, vec!["busybox".to_string()], "template bases");
    assert!(b.rt.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_returns_exit_code_and_output_and_times_out() {
    let b = Board::new();
    let name = unique("exec");
    let mut spec = busybox(&name, &["/bin/sleep", "1000"]);
    spec.env = vec![("GREETING".into(), "hello there".into())];
    b.rt.create(&spec).await.expect("create");
    assert!(matches!(
        b.rt.exec(&name, &argv(&["/bin/true"]), Duration::from_secs(5))
            .await,
        Err(RuntimeError::NotRunning { .. })
    ));
    b.rt.start(&name).await.expect("start");

    let out =
        b.rt.exec(
            &name,
            &argv(&["/bin/sh", "-c", "echo $GREETING; echo err >&2; exit 7"]),
            Duration::from_secs(5),
        )
        .await
        .expect("exec");
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(out.stdout, b"hello there\n");
    assert_eq!(out.stderr, b"err\n");

    let out =
        b.rt.exec(&name, &argv(&["/no/such/program"]), Duration::from_secs(5))
            .await
            .expect("exec");
    assert_eq!(out.status.code(), Some(127));

    let t = Instant::now();
    let err =
        b.rt.exec(
            &name,
            &argv(&["/bin/sleep", "30"]),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::ExecTimeout { .. }), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(3));

    // Big output is capped, not a deadlock.
    let out =
        b.rt.exec(
            &name,
            &argv(&["/bin/sh", "-c", "head -c 1000000 /dev/zero"]),
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert!(out.status.success());
    assert!(out.truncated);
    assert_eq!(out.stdout.len(), texu_agent::runtime::EXEC_OUTPUT_LIMIT);
}

#[tokio::test(flavor = "multi_thread")]
async fn names_and_missing_containers() {
    let b = Board::new();
    assert!(matches!(
        b.rt.state("../etc").await,
        Err(RuntimeError::InvalidName(_))
    ));
    assert!(matches!(
        b.rt.create(&host("Bad/Name", &["/bin/sleep"])).await,
        Err(RuntimeError::InvalidSpec { .. })
    ));
    let name = unique("ghost");
    assert_eq!(b.rt.state(&name).await.unwrap(), None);
    assert!(matches!(
        b.rt.start(&name).await,
        Err(RuntimeError::NotFound { .. })
    ));
    assert!(matches!(
        b.rt.stop(&name, Duration::from_secs(1)).await,
        Err(RuntimeError::NotFound { .. })
    ));
    b.rt.destroy(&name)
        .await
        .expect("destroy of a missing container");

    b.rt.create(&busybox(&name, &["/bin/sleep", "1000"]))
        .await
        .expect("create");
    assert!(matches!(
        b.rt.create(&busybox(&name, &["/bin/sleep", "1000"])).await,
        Err(RuntimeError::AlreadyExists { .. })
    ));
    // Destroy of a running container kills it first.
    b.rt.start(&name).await.expect("start");
    b.rt.destroy(&name).await.expect("destroy running");
    assert_eq!(b.rt.state(&name).await.unwrap(), None);
}

/// A bridge of the test's own in 198.18.128.0/17, deleted on drop.
struct Bridge {
    name: String,
}

impl Bridge {
    fn new(name: &str, address: &str) -> Self {
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = Command::new("ip").args(["link", "del", name]).output();
        ip(&["link", "add", name, "type", "bridge"]);
        let bridge = Self {
            name: name.to_owned(),
        };
        ip(&["addr", "add", address, "dev", name]);
        ip(&["link", "set", name, "up"]);
        bridge
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_on_a_bridge_serves_on_its_address() {
    let b = Board::new();
    let pid = std::process::id();
    let subnet = 128 + (pid % 100) as u8;
    let bridge = Bridge::new(
        &format!("txb{}", pid % 1_000_000),
        &format!("198.18.{subnet}.1/24"),
    );
    let addr = Ipv4Addr::new(198, 18, subnet, 2);

    let name = unique("net");
    let mut spec = busybox(&name, &["/bin/httpd", "-f", "-p", "8080", "-h", "/etc"]);
    spec.network = Some(NetConfig {
        bridge: bridge.name.clone(),
        address: addr,
        prefix_len: 24,
        gateway: Some(Ipv4Addr::new(198, 18, subnet, 1)),
    });
    b.rt.create(&spec).await.expect("create");
    b.rt.start(&name).await.expect("start");

    let target = SocketAddr::from((addr, 8080));
    let deadline = Instant::now() + Duration::from_secs(5);
    let body = loop {
        let attempt = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&target, Duration::from_millis(500))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET /hostname HTTP/1.0\r\n\r\n")?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)?;
            Ok(buf)
        })
        .await
        .unwrap();
        match attempt {
            Ok(body) => break body,
            Err(e) => {
                assert!(Instant::now() < deadline, "no answer from {target}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(
        body.starts_with("HTTP/1.") && body.contains(" 200 "),
        "{body}"
    );
    assert!(body.trim_end().ends_with(&name), "{body}");
    b.rt.destroy(&name).await.expect("destroy");
    drop(bridge);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_whose_monitor_is_out_of_reach_is_still_seen_and_stopped() {
    let b = Board::new();
    let name = unique("far");
    b.rt.create(&busybox(&name, &["/bin/sleep", "1000"]))
        .await
        .expect("create");

    // Start it from a thread in a network namespace of its own: LXC's command socket is an
    // abstract unix socket, which lives in the monitor's network namespace, so from here
    // liblxc cannot reach the monitor (as for an agent inside a board's namespace).
    let rt = b.rt.clone();
    let n = name.clone();
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare netns");
        let local = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        local.block_on(rt.start(&n))
    })
    .join()
    .expect("starter thread")
    .expect("start in another network namespace");

    let c = LxcContainer::new(&name, &b.lxcpath).unwrap();
    assert_eq!(
        c.state().unwrap(),
        LxcState::Stopped,
        "liblxc should not see it"
    );
    let st = b.rt.state(&name).await.unwrap().expect("defined");
    assert_eq!(st.phase, Phase::Running, "{st:?}");
    assert!(!st.monitor_reachable);
    let pid = st.init_pid.expect("init pid from the record");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert!(b.rt.usage(&name).await.expect("usage").memory_bytes > 0);
    b.rt.start(&name)
        .await
        .expect("start of a running container is a no-op");

    b.rt.stop(&name, Duration::from_secs(5))
        .await
        .expect("stop");
    let st = b.rt.state(&name).await.unwrap().expect("defined");
    assert_eq!(st.phase, Phase::Stopped, "{st:?}");
    assert_eq!(st.exit_reason, Some(ExitReason::StoppedByRuntime));
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    b.rt.destroy(&name).await.expect("destroy");
    assert!(!b.lxcpath.join(&name).exists());
}

/// Renders `files` (path, template) for `spec`'s container the way the agent does on create:
/// written under `data`, mounted read-only through `spec.files`.
fn render_files(
    spec: &mut ContainerSpec,
    data: &Path,
    replaces: Option<&str>,
    files: &[(&str, &str)],
) {
    let mut role = RoleSpec::with_image("template:busybox");
    role.files = files
        .iter()
        .map(|(path, template)| FileTemplate {
            path: path.to_string(),
            template: template.to_string(),
            ..Default::default()
        })
        .collect();
    let c = Container::new(
        spec.name.clone(),
        texu_api::ContainerSpec {
            role: "tf".into(),
            ordinal: 0,
            node: Some("board1".into()),
            generation: 1,
            replaces: replaces.map(|a| a.parse().expect("an IPv4 address")),
            ..Default::default()
        },
    );
    files::prepare(data, "board1", &c, &role, spec).expect("render files");
}

const IDENTITY: &str = "name={{ name }} node={{ node }}\n\
    {% if replaces %}\nreplaces={{ replaces }}\n{% endif %}\n";

#[tokio::test(flavor = "multi_thread")]
async fn rendered_files_in_a_busybox_container_are_read_only() {
    let b = Board::new();
    let data = b.volume_dir("data");
    let name = unique("tf-files-bb");
    let mut spec = busybox(&name, &["/bin/sleep", "1000"]);
    render_files(
        &mut spec,
        &data,
        Some("198.19.2.9"),
        &[("/etc/texu/identity", IDENTITY)],
    );
    b.rt.create(&spec).await.expect("create");
    b.rt.start(&name).await.expect("start");
    let want = format!("name={name} node=board1\nreplaces=198.19.2.9\n");
    assert_eq!(
        exec_ok(&b.rt, &name, &["/bin/cat", "/etc/texu/identity"]).await,
        want
    );
    assert!(exec_ok(&b.rt, &name, &["/bin/env"])
        .await
        .contains("TEXU_REPLACES=198.19.2.9\n"));
    let out =
        b.rt.exec(
            &name,
            &argv(&["/bin/sh", "-c", "echo x > /etc/texu/identity"]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(!out.status.success(), "the rendered file is writable");

    // A restart reuses the file as rendered on create.
    b.rt.stop(&name, Duration::from_secs(5))
        .await
        .expect("stop");
    b.rt.start(&name).await.expect("restart");
    assert_eq!(
        exec_ok(&b.rt, &name, &["/bin/cat", "/etc/texu/identity"]).await,
        want
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn host_image_files_cover_board_files_or_go_where_the_container_can_write() {
    let b = Board::new();
    let data = b.volume_dir("data");
    let name = unique("tf-files-host");
    let mut spec = host(&name, &["/bin/sleep", "1000"]);
    render_files(
        &mut spec,
        &data,
        None,
        &[
            ("/etc/passwd", "root:x:0:0:{{ name }}:/root:/bin/sh\n"),
            ("/run/texu/identity", IDENTITY),
            ("/opt/texu/app.conf", "role={{ role }}\n"),
        ],
    );
    b.rt.create(&spec).await.expect("create");
    b.rt.start(&name).await.expect("start");
    assert_eq!(
        exec_ok(&b.rt, &name, &["/bin/cat", "/run/texu/identity"]).await,
        format!("name={name} node=board1\n")
    );
    assert_eq!(
        exec_ok(&b.rt, &name, &["/bin/cat", "/opt/texu/app.conf"]).await,
        "role=tf\n"
    );
    assert!(exec_ok(&b.rt, &name, &["/bin/cat", "/etc/passwd"])
        .await
        .contains(&name));
    assert!(!exec_ok(&b.rt, &name, &["/usr/bin/env"])
        .await
        .contains("TEXU_REPLACES"));
    b.rt.destroy(&name).await.expect("destroy");

    // A new file under the board's read-only /etc cannot get a mount point.
    let name = unique("tf-files-ro");
    let mut spec = host(&name, &["/bin/sleep", "1000"]);
    render_files(&mut spec, &data, None, &[("/etc/texu/identity", IDENTITY)]);
    let err = b.rt.create(&spec).await.unwrap_err();
    assert!(
        matches!(
            &err,
            RuntimeError::FileTarget { source: FileTargetError::ReadOnlyParent { parent }, .. }
                if parent == Path::new("/etc")
        ),
        "{err:?}"
    );
    eprintln!(
        "file under a read-only /etc: {err}: {}",
        std::error::Error::source(&err).unwrap()
    );
    assert!(!b.lxcpath.join(&name).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn rendered_files_in_a_stored_rootfs_image() {
    let b = Board::new();
    let data = b.volume_dir("data");
    let name = unique("tf-files-rootfs");
    // A minimal stored image: static busybox and its applets, no /etc at all.
    let rootfs = b.volume_dir("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let mut spec = ContainerSpec::new(&name, Image::Rootfs(rootfs.clone()));
    spec.command = argv(&["/bin/sleep", "1000"]);
    render_files(&mut spec, &data, None, &[("/etc/texu/identity", IDENTITY)]);
    b.rt.create(&spec).await.expect("create");
    b.rt.start(&name).await.expect("start");
    assert_eq!(
        exec_ok(&b.rt, &name, &["/bin/cat", "/etc/texu/identity"]).await,
        format!("name={name} node=board1\n")
    );
}

/// `Uid:` and `Gid:` of a board process, from /proc/PID/status.
fn board_ids(pid: u32) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |key: &str| -> u32 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("id")
    };
    (field("Uid:"), field("Gid:"))
}

#[tokio::test(flavor = "multi_thread")]
async fn root_in_a_host_image_container_is_an_ordinary_uid_and_cannot_touch_the_boards_etc() {
    let b = Board::new();
    let name = unique("unpriv-host");
    b.rt.create(&host(&name, &["/bin/sleep", "1000"]))
        .await
        .expect("create");
    b.rt.start(&name).await.expect("start");
    let st = b.rt.state(&name).await.unwrap().expect("defined");
    let (uid, gid) = board_ids(st.init_pid.expect("init pid"));
    assert!(
        uid != 0 && gid != 0,
        "init runs as {uid}:{gid} on the board"
    );
    assert_eq!(
        exec_ok(&b.rt, &name, &["/usr/bin/id", "-u"]).await.trim(),
        "0"
    );

    let marker = format!("texu-escape-{}", std::process::id());
    let attack = format!(
        "mount -o remount,rw,bind /etc; echo rc=$?; echo owned > /etc/{marker}; echo rc=$?"
    );
    let out =
        b.rt.exec(
            &name,
            &argv(&["/bin/sh", "-c", &attack]),
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("attack: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        !Path::new("/etc").join(&marker).exists(),
        "the container wrote the board's /etc"
    );
    assert!(
        !stdout.lines().any(|l| l == "rc=0"),
        "the remount or the write succeeded: {stdout}"
    );
    // The board's files are there to read, owned by nobody; its own dirs are writable.
    let ls = exec_ok(&b.rt, &name, &["/bin/ls", "-ln", "/etc/hostname"]).await;
    assert!(ls.contains(" 65534 65534 "), "{ls}");
    assert!(exec_ok(&b.rt, &name, &["/bin/cat", "/etc/os-release"])
        .await
        .contains("ID="));
    for dir in ["/var", "/run", "/tmp", "/home"] {
        exec_ok(
            &b.rt,
            &name,
            &["/bin/sh", "-c", &format!("echo x > {dir}/w && cat {dir}/w")],
        )
        .await;
    }
    b.rt.destroy(&name).await.expect("destroy");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_privileged_container_is_root_on_the_board() {
    let b = Board::new();
    let name = unique("priv-host");
    let mut spec = host(&name, &["/bin/sleep", "1000"]);
    spec.privileged = true;
    b.rt.create(&spec).await.expect("create");
    b.rt.start(&name).await.expect("start");
    let st = b.rt.state(&name).await.unwrap().expect("defined");
    assert_eq!(board_ids(st.init_pid.expect("init pid")), (0, 0));
    let ls = exec_ok(&b.rt, &name, &["/bin/ls", "-ln", "/etc/hostname"]).await;
    assert!(ls.contains(" 0 0 "), "{ls}");
    b.rt.destroy(&name).await.expect("destroy");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_symlink_cannot_make_the_agent_create_files_outside_the_container() {
    let b = Board::new();
    // What the attacker wants written to: a board directory outside every container.
    let outside = tempfile::Builder::new()
        .prefix("outside-")
        .tempdir()
        .expect("outside dir");
    let rootfs = b.volume_dir("evil-rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    std::os::unix::fs::symlink(outside.path(), rootfs.join("run")).unwrap();
    std::os::unix::fs::symlink("../../../../../../..", rootfs.join("up")).unwrap();
    let data = b.volume_dir("evil-data");
    let spec_with = |name: &str, file: &str, volume: &str| {
        let mut spec = ContainerSpec::new(name, Image::Rootfs(rootfs.clone()));
        spec.command = argv(&["/bin/sleep", "1000"]);
        render_files(&mut spec, &data, None, &[(file, IDENTITY)]);
        spec.volumes = vec![Volume {
            host_path: b.volume_dir("evil-vol"),
            container_path: volume.into(),
        }];
        spec
    };
    let nothing_outside = || {
        assert_eq!(
            std::fs::read_dir(outside.path()).unwrap().count(),
            0,
            "the agent created something in {}",
            outside.path().display()
        );
    };
    // run -> /tmp/outside-XYZ: inside the container that is its own /tmp/outside-XYZ, which
    // does not exist, so there is nowhere to make the mount points.
    for (file, volume) in [("/run/texu/identity", "/srv"), ("/etc/id", "/run/data")] {
        let name = unique("evil");
        let err =
            b.rt.create(&spec_with(&name, file, volume))
                .await
                .unwrap_err();
        eprintln!(
            "{file}, {volume}: {err}: {:?}",
            std::error::Error::source(&err)
        );
        assert!(
            matches!(err, RuntimeError::MountTarget { .. }),
            "{file}: {err:?}"
        );
        nothing_outside();
        assert!(!b.lxcpath.join(&name).exists());
    }
    // up -> ../../../..: `..` stops at the container's root, so the points are made in it.
    let name = unique("evil-up");
    b.rt.create(&spec_with(&name, "/up/tmp/texu/identity", "/up/tmp/data"))
        .await
        .expect("create");
    assert!(rootfs.join("tmp/texu/identity").is_file());
    assert!(rootfs.join("tmp/data").is_dir());
    nothing_outside();
    assert!(!Path::new("/tmp/texu/identity").exists() && !Path::new("/tmp/data").exists());
    b.rt.destroy(&name).await.expect("destroy");
}
