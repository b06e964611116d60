//! Isolation: root in an unprivileged container is an ordinary uid on the board and cannot
//! touch the board's /etc; a privileged one is root; an image's symlink cannot make the agent
//! write outside the container.

use super::files_in_containers::{render_files, IDENTITY};
use super::*;

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
