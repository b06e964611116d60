//! Unpacking hostile image tarballs made with the system's own tar and zstd (as `texu image
//! import` users make them), and tarballs with hand-made headers for attacks tar refuses to
//! write.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use super::*;

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test makes device nodes (mknod) and must run as root"
    );
}

/// Packs directory `root` with GNU tar and compresses it with zstd into `to`.
fn tar_zst(root: &Path, to: &Path) {
    let tar = to.with_extension("");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(root)
        .arg("."));
    run(Command::new("zstd")
        .args(["-q", "-f", "--rm"])
        .arg(&tar)
        .arg("-o")
        .arg(to));
}

fn small() -> Limits {
    Limits {
        max_bytes: 10 << 20,
        max_files: 1000,
    }
}

#[test]
fn device_nodes_and_fifos_are_dropped_and_setid_bits_cleared() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for dir in ["bin", "dev", "tmp"] {
        std::fs::create_dir_all(src.join(dir)).unwrap();
    }
    run(Command::new("mknod")
        .arg(src.join("dev/mem"))
        .args(["c", "1", "1"]));
    run(Command::new("mknod")
        .arg(src.join("dev/sda"))
        .args(["b", "8", "0"]));
    run(Command::new("mkfifo").arg(src.join("dev/initctl")));
    std::fs::write(src.join("bin/su"), "#!/bin/sh\nid\n").unwrap();
    std::fs::set_permissions(src.join("bin/su"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::write(src.join("bin/wall"), "wall").unwrap();
    std::fs::set_permissions(
        src.join("bin/wall"),
        std::fs::Permissions::from_mode(0o2755),
    )
    .unwrap();
    std::fs::set_permissions(src.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(src.join("hello"), "hello").unwrap();
    let tarball = tmp.path().join("image.tar.zst");
    tar_zst(&src, &tarball);

    let dest = tmp.path().join("rootfs");
    let unpacked = unpack_within(&tarball, &dest, small()).expect("unpack");
    assert_eq!(unpacked.dropped, 3, "{unpacked:?}");
    assert_eq!(unpacked.setid_cleared, 2, "{unpacked:?}");
    for gone in ["dev/mem", "dev/sda", "dev/initctl"] {
        assert!(
            std::fs::symlink_metadata(dest.join(gone)).is_err(),
            "{gone} was unpacked"
        );
    }
    let mode = |p: &str| {
        std::fs::metadata(dest.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("bin/su"), 0o755, "setuid bit kept");
    assert_eq!(mode("bin/wall"), 0o755, "setgid bit kept");
    assert_eq!(mode("tmp"), 0o1777, "the sticky bit of /tmp is kept");
    assert_eq!(
        std::fs::read_to_string(dest.join("bin/su")).unwrap(),
        "#!/bin/sh\nid\n"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("hello")).unwrap(),
        "hello"
    );
    let dev = std::fs::read_dir(dest.join("dev")).unwrap().count();
    assert_eq!(dev, 0, "dev/ holds nothing");
    let kinds: Vec<_> = walk(&dest)
        .into_iter()
        .filter(|m| {
            let t = m.file_type();
            t.is_char_device() || t.is_block_device() || t.is_fifo() || t.is_socket()
        })
        .collect();
    assert!(kinds.is_empty(), "special files left: {kinds:?}");
}

fn walk(dir: &Path) -> Vec<std::fs::Metadata> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        if meta.is_dir() {
            out.extend(walk(&entry.path()));
        }
        out.push(meta);
    }
    out
}

#[test]
fn a_zstd_bomb_stops_at_the_cap_and_leaves_no_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // 100 MB of zeros (a sparse file: tar reads it as zeros, the disk holds nothing).
    let zeros = std::fs::File::create(src.join("zeros")).unwrap();
    zeros.set_len(100 << 20).unwrap();
    let tarball = tmp.path().join("bomb.tar.zst");
    tar_zst(&src, &tarball);
    let packed = std::fs::metadata(&tarball).unwrap().len();
    assert!(packed < 1 << 20, "the bomb is small: {packed} bytes");

    let dest = tmp.path().join("rootfs");
    let (reason, message) = unpack_within(&tarball, &dest, small()).expect_err("the cap");
    assert_eq!(reason, "ImageTooLarge");
    assert!(
        message.contains("more than 10485760 bytes") && message.contains("--image-max-bytes"),
        "{message}"
    );
    assert!(!dest.exists(), "the partial directory is left behind");

    // The same image fits a cap that allows it.
    let roomy = Limits {
        max_bytes: 200 << 20,
        ..small()
    };
    let unpacked = unpack_within(&tarball, &dest, roomy).expect("unpack under a larger cap");
    assert_eq!(unpacked.bytes, 100 << 20);
    assert_eq!(
        std::fs::metadata(dest.join("zeros")).unwrap().len(),
        100 << 20
    );
}

#[test]
fn too_many_files_stop_at_the_cap() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..50 {
        std::fs::write(src.join(format!("f{i}")), "x").unwrap();
    }
    let tarball = tmp.path().join("many.tar.zst");
    tar_zst(&src, &tarball);
    let dest = tmp.path().join("rootfs");
    let limits = Limits {
        max_files: 20,
        ..small()
    };
    let (reason, message) = unpack_within(&tarball, &dest, limits).expect_err("the cap");
    assert_eq!(reason, "ImageTooLarge");
    assert!(message.contains("more than 20 files"), "{message}");
    assert!(!dest.exists());
}

/// A plain tarball written entry by entry, with paths tar itself would refuse to write.
struct Raw(tar::Builder<Vec<u8>>);

impl Raw {
    fn new() -> Raw {
        Raw(tar::Builder::new(Vec::new()))
    }

    fn header(path: &str, kind: EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h
    }

    fn file(mut self, path: &str, text: &str) -> Raw {
        let mut h = Raw::header(path, EntryType::Regular, text.len() as u64);
        h.set_cksum();
        self.0.append(&h, text.as_bytes()).unwrap();
        self
    }

    fn link(mut self, path: &str, kind: EntryType, target: &str) -> Raw {
        let mut h = Raw::header(path, kind, 0);
        h.set_link_name(target).unwrap();
        h.set_cksum();
        self.0.append(&h, std::io::empty()).unwrap();
        self
    }

    fn write(self, to: &Path) {
        std::fs::write(to, self.0.into_inner().unwrap()).unwrap();
    }
}

#[test]
fn entries_outside_the_root_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let dest = tmp.path().join("rootfs");
    let cases: Vec<(&str, Raw)> = vec![
        ("dot-dot", Raw::new().file("../outside/x", "pwned")),
        (
            "through a symlink",
            Raw::new()
                .link("evil", EntryType::Symlink, outside.to_str().unwrap())
                .file("evil/x", "pwned"),
        ),
        (
            "hard link out",
            Raw::new().link("passwd", EntryType::Link, "../outside/secret"),
        ),
    ];
    std::fs::write(outside.join("secret"), "secret").unwrap();
    for (what, raw) in cases {
        let tarball = tmp.path().join("attack.tar");
        raw.write(&tarball);
        let err = unpack_within(&tarball, &dest, small()).expect_err(what);
        assert_eq!(err.0, "ImageFailed", "{what}: {err:?}");
        assert!(!dest.exists(), "{what}: partial directory left");
        assert!(
            !outside.join("x").exists(),
            "{what}: wrote outside the root"
        );
    }
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "secret"
    );

    // An absolute path lands inside the root.
    let tarball = tmp.path().join("absolute.tar");
    Raw::new().file("/etc/texu-test", "inside").write(&tarball);
    unpack_within(&tarball, &dest, small()).expect("absolute path");
    assert_eq!(
        std::fs::read_to_string(dest.join("etc/texu-test")).unwrap(),
        "inside"
    );
}

#[test]
fn compressed_formats_unpack() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hostname"), "board").unwrap();
    for (ext, flag) in [
        ("tar", None),
        ("tar.gz", Some("-z")),
        ("tar.xz", Some("-J")),
    ] {
        let tarball = tmp.path().join(format!("image.{ext}"));
        let mut cmd = Command::new("tar");
        cmd.arg("-cf")
            .arg(&tarball)
            .args(flag)
            .arg("-C")
            .arg(&src)
            .arg(".");
        run(&mut cmd);
        let dest = tmp.path().join("rootfs");
        unpack_within(&tarball, &dest, small()).unwrap_or_else(|e| panic!("{ext}: {e:?}"));
        assert_eq!(
            std::fs::read_to_string(dest.join("etc/hostname")).unwrap(),
            "board"
        );
    }
    let corrupt = tmp.path().join("corrupt.tar.gz");
    std::fs::write(&corrupt, [0x1f, 0x8b, 8, 0, 1, 2, 3]).unwrap();
    let dest = tmp.path().join("rootfs");
    let err = unpack_within(&corrupt, &dest, small()).expect_err("corrupt gzip");
    assert_eq!(err.0, "ImageFailed");
    assert!(!dest.exists());
}

#[test]
fn what_follows_the_end_of_the_archive_is_not_unpacked_or_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello"), "hello").unwrap();
    let tar = tmp.path().join("image.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .arg("."));
    // 100 MB of zeros after the archive's end, inside the compressed stream.
    let file = std::fs::OpenOptions::new().write(true).open(&tar).unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len + (100 << 20)).unwrap();
    let tarball = tmp.path().join("image.tar.zst");
    run(Command::new("zstd")
        .args(["-q", "-f"])
        .arg(&tar)
        .arg("-o")
        .arg(&tarball));
    let dest = tmp.path().join("rootfs");
    let unpacked = unpack_within(&tarball, &dest, small()).expect("unpack");
    assert_eq!(unpacked.bytes, 5);
    assert_eq!(
        std::fs::read_to_string(dest.join("hello")).unwrap(),
        "hello"
    );
}
