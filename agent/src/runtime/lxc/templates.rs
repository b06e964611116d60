//! Template bases: an LXC template (`busybox`) runs once per board, into a base kept in
//! `<lxcpath>/.texu-templates/<template>/`; each container made from it gets a copy of the
//! base's root filesystem and config. Running the template script costs about a second of CPU
//! (busybox's forks one `ln` per applet); the copy tens of milliseconds. A base is rebuilt when the
//! template script or liblxc changes.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::info;

use super::files::{io_err, log_since, write_atomic};
use super::Inner;
use crate::lxc::{self, LxcContainer};
use crate::runtime::idmap::IdMap;
use crate::runtime::{Result, RuntimeError};

/// The directory under the LXC path that holds the bases (an LXC path of its own: LXC does not
/// list it as a container, having no config file at its top).
pub(super) const BASES_DIR: &str = ".texu-templates";
/// Written last into a finished base: what it was built from.
const STAMP_FILE: &str = "texu.base";
/// Where liblxc looks for templates given by name.
const TEMPLATE_DIR: &str = "/usr/share/lxc/templates";

/// A finished base: its root filesystem and the config items a container copies.
#[derive(Debug)]
pub(super) struct Base {
    pub(super) rootfs: PathBuf,
    pub(super) items: Vec<(String, String)>,
}

/// What a base was built from: the template script (path, size, mtime) and liblxc's version.
fn stamp(template: &str) -> String {
    let script = Path::new(TEMPLATE_DIR).join(format!("lxc-{template}"));
    let file = match fs::metadata(&script) {
        Ok(m) => format!("{} {} {}", script.display(), m.len(), m.mtime()),
        Err(_) => format!("{} missing", script.display()),
    };
    format!("{file}\nliblxc {}\n", lxc::version())
}

/// The items of an LXC config file a copy inherits: all but the rootfs, hostname, network and
/// log, which the container sets for itself.
pub(super) fn inherited_items(config: &str) -> Vec<(String, String)> {
    config
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| {
            !(k == "lxc.rootfs.path"
                || k == "lxc.uts.name"
                || k.starts_with("lxc.net")
                || k.starts_with("lxc.log"))
        })
        .collect()
}

impl Inner {
    /// The base for `template`, built first if missing or out of date. `name` is the container
    /// asking, for errors.
    pub(super) fn template_base(&self, name: &str, template: &str) -> Result<Base> {
        let _one_at_a_time = self.bases.lock().unwrap_or_else(|e| e.into_inner());
        let bases = self.lxcpath.join(BASES_DIR);
        let dir = bases.join(template);
        let want = stamp(template);
        let built = fs::read_to_string(dir.join(STAMP_FILE)).is_ok_and(|s| s == want);
        if !built {
            self.build_base(name, template, &bases, &dir)?;
            let path = dir.join(STAMP_FILE);
            write_atomic(&path, want.as_bytes(), 0o644).map_err(io_err(name, "write", &path))?;
        }
        let config = dir.join("config");
        let text = fs::read_to_string(&config).map_err(io_err(name, "read", &config))?;
        Ok(Base {
            rootfs: dir.join("rootfs"),
            items: inherited_items(&text),
        })
    }

    fn build_base(&self, name: &str, template: &str, bases: &Path, dir: &Path) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(bases)
            .map_err(io_err(name, "create", bases))?;
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(io_err(name, "remove the old base", dir))?;
        }
        info!(template, "building the template base (once per board)");
        let c = LxcContainer::new(template, bases)?;
        // Setting the log first also keeps liblxc from loading the board's default.conf (its
        // lxcbr0 network and such): the template's config is the base.
        let log = bases.join(format!(".{template}.create.log"));
        c.set_config_item("lxc.log.file", &log.display().to_string())?;
        c.set_config_item("lxc.log.level", "WARN")?;
        let created = c.create(template, &[]);
        let tail = log_since(&log, 0);
        let _ = fs::remove_file(&log);
        if let Err(source) = created {
            drop(c);
            let _ = fs::remove_dir_all(dir);
            let _ = fs::remove_dir(bases); // only if no other base is there
            return Err(RuntimeError::Template {
                name: name.to_owned(),
                template: template.to_owned(),
                log: tail,
                source: Box::new(source),
            });
        }
        Ok(())
    }
}

/// Copies a root filesystem: directories and files with their owners and modes (setuid too),
/// device nodes and fifos made anew, and symlinks hard-linked to the base's (a symlink never
/// changes in place, and on ext4 making one costs about a millisecond: busybox has 268).
/// Extended attributes and timestamps are not copied. With an id map, owners are shifted into
/// its range on the way (no extra pass: every entry is chowned anyway). On failure the partial
/// copy is removed.
pub(super) fn copy_rootfs(name: &str, from: &Path, to: &Path, idmap: Option<&IdMap>) -> Result<()> {
    if fs::symlink_metadata(to).is_ok() {
        return Err(io_err(name, "copy the template rootfs to", to)(
            io::Error::from(io::ErrorKind::AlreadyExists),
        ));
    }
    let result = copy_tree(from, to, idmap);
    if let Err((path, e)) = result {
        let _ = fs::remove_dir_all(to);
        return Err(io_err(name, "copy the template rootfs at", &path)(e));
    }
    Ok(())
}

type CopyError = (PathBuf, io::Error);

fn copy_tree(from: &Path, to: &Path, idmap: Option<&IdMap>) -> std::result::Result<(), CopyError> {
    let at = |path: &Path| {
        let path = path.to_owned();
        move |e: io::Error| (path, e)
    };
    let meta = fs::symlink_metadata(from).map_err(at(from))?;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(to)
        .map_err(at(to))?;
    for entry in fs::read_dir(from).map_err(at(from))? {
        let entry = entry.map_err(at(from))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let m = fs::symlink_metadata(&src).map_err(at(&src))?;
        let kind = m.file_type();
        if kind.is_dir() {
            copy_tree(&src, &dst, idmap)?;
            continue;
        }
        if kind.is_symlink() {
            // A shared symlink keeps the base's owner (nobody, inside an unprivileged
            // container): following it and deleting it do not depend on that.
            if fs::hard_link(&src, &dst).is_err() {
                // Another filesystem, or links not allowed: a symlink of its own.
                let target = fs::read_link(&src).map_err(at(&src))?;
                std::os::unix::fs::symlink(target, &dst).map_err(at(&dst))?;
                own(&dst, &m, idmap).map_err(at(&dst))?;
            }
            continue;
        }
        if kind.is_file() {
            fs::copy(&src, &dst).map_err(at(&src))?;
        } else {
            // Device nodes, fifos and sockets are made anew with the same type and number.
            use nix::sys::stat::{mknod, Mode, SFlag};
            mknod(
                &dst,
                SFlag::from_bits_truncate(m.mode() & libc::S_IFMT),
                Mode::from_bits_truncate(m.mode() & 0o7777),
                m.rdev(),
            )
            .map_err(|e| (dst.clone(), io::Error::from(e)))?;
        }
        own(&dst, &m, idmap).map_err(at(&dst))?;
    }
    own(to, &meta, idmap).map_err(at(to))
}

/// Gives `path` the owner (shifted by `idmap`) and mode (with setuid/setgid/sticky bits) of
/// `like`; the owner first, as changing it clears setuid. A symlink's mode is not its own.
fn own(path: &Path, like: &fs::Metadata, idmap: Option<&IdMap>) -> io::Result<()> {
    let (uid, gid) = match idmap {
        Some(map) => (map.uid(like.uid()), map.gid(like.gid())),
        None => (like.uid(), like.gid()),
    };
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if like.file_type().is_symlink() {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(like.mode() & 0o7777))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt;

    use super::*;

    #[test]
    fn a_copy_inherits_all_but_rootfs_name_network_and_log() {
        let config = "# Template used to create this container: busybox\n\
            lxc.rootfs.path = dir:/var/lib/lxc/busybox/rootfs\n\
            lxc.signal.halt = SIGUSR1\n\
            lxc.uts.name = \"busybox\"\n\
            lxc.net.0.type = veth\n\
            lxc.log.file = /tmp/x.log\n\
            \n\
            lxc.mount.entry = shm dev/shm tmpfs defaults,create=dir 0 0\n\
            lxc.mount.entry = /lib lib none ro,bind 0 0\n";
        assert_eq!(
            inherited_items(config),
            vec![
                ("lxc.signal.halt".to_owned(), "SIGUSR1".to_owned()),
                (
                    "lxc.mount.entry".to_owned(),
                    "shm dev/shm tmpfs defaults,create=dir 0 0".to_owned()
                ),
                (
                    "lxc.mount.entry".to_owned(),
                    "/lib lib none ro,bind 0 0".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn a_copy_keeps_modes_and_links_and_shares_only_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let (base, copy) = (tmp.path().join("base"), tmp.path().join("copy"));
        fs::create_dir_all(base.join("bin")).unwrap();
        fs::create_dir_all(base.join("tmp")).unwrap();
        fs::set_permissions(base.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::write(base.join("bin/busybox"), b"#!binary").unwrap();
        fs::set_permissions(base.join("bin/busybox"), fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::symlink("busybox", base.join("bin/sh")).unwrap();
        nix::unistd::mkfifo(
            &base.join("tmp/fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();

        copy_rootfs("t", &base, &copy, None).unwrap();
        let mode = |p: &str| fs::symlink_metadata(copy.join(p)).unwrap().mode();
        assert_eq!(mode("tmp") & 0o7777, 0o1777);
        assert_eq!(mode("bin/busybox") & 0o7777, 0o4755);
        assert_eq!(fs::read(copy.join("bin/busybox")).unwrap(), b"#!binary");
        assert_eq!(
            fs::read_link(copy.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert!(fs::symlink_metadata(copy.join("tmp/fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        let ino = |root: &Path, p: &str| fs::symlink_metadata(root.join(p)).unwrap().ino();
        assert_eq!(
            ino(&base, "bin/sh"),
            ino(&copy, "bin/sh"),
            "symlinks are hard links"
        );
        assert_ne!(
            ino(&base, "bin/busybox"),
            ino(&copy, "bin/busybox"),
            "files are copies"
        );
        // Writing the copy leaves the base alone.
        fs::write(copy.join("bin/busybox"), b"changed").unwrap();
        assert_eq!(fs::read(base.join("bin/busybox")).unwrap(), b"#!binary");

        // An existing destination is refused and left as it was.
        let err = copy_rootfs("t", &base, &copy, None).unwrap_err();
        let cause = std::error::Error::source(&err).map(ToString::to_string);
        assert!(cause.is_some_and(|c| c.contains("exists")), "{err:?}");
        assert_eq!(fs::read(copy.join("bin/busybox")).unwrap(), b"changed");
    }

    #[test]
    fn the_stamp_changes_with_the_template_script() {
        // A template that does not exist still has a stamp (the build then fails clearly).
        let s = stamp("no-such-template");
        assert!(s.contains("lxc-no-such-template missing"), "{s}");
        assert!(s.contains("liblxc "), "{s}");
    }
}
