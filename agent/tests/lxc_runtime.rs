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

#[path = "lxc_runtime/support.rs"]
mod support;
use support::*;

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

#[path = "lxc_runtime/files.rs"]
mod files_in_containers;
#[path = "lxc_runtime/isolation.rs"]
mod isolation;
#[path = "lxc_runtime/network.rs"]
mod network;
