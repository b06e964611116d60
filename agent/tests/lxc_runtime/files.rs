//! Rendered files in containers: read-only in busybox and stored rootfs images, covering or
//! beside the board's own files in `host` images.

use super::*;

/// Renders `files` (path, template) for `spec`'s container the way the agent does on create:
/// written under `data`, mounted read-only through `spec.files`.
pub(super) fn render_files(
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

pub(super) const IDENTITY: &str = "name={{ name }} node={{ node }}\n\
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
