//! Template bases: an LXC template (`busybox`) runs once per board, into a base kept in
//! `<lxcpath>/.texu-templates/<template>/`; each container made from it gets a copy of the
//! base's root filesystem and config. Running the template script costs about a second of CPU
//! (busybox's forks one `ln` per applet); the copy a few milliseconds. A base is rebuilt when the
//! template script or liblxc changes.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use tracing::info;

use super::files::{io_err, log_since, write_atomic};
use super::Inner;
use crate::lxc::{self, LxcContainer};
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

/// Copies a root filesystem with owners, modes, links and device nodes (`cp -a`; reflinks where
/// the filesystem has them).
pub(super) fn copy_rootfs(name: &str, from: &Path, to: &Path) -> Result<()> {
    let out = Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg("--")
        .arg(from)
        .arg(to)
        .output()
        .map_err(io_err(name, "run cp for", to))?;
    if out.status.success() {
        return Ok(());
    }
    let _ = fs::remove_dir_all(to);
    Err(io_err(name, "copy the template rootfs to", to)(
        io::Error::other(format!(
            "cp {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    ))
}

#[cfg(test)]
mod tests {
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
    fn the_stamp_changes_with_the_template_script() {
        // A template that does not exist still has a stamp (the build then fails clearly).
        let s = stamp("no-such-template");
        assert!(s.contains("lxc-no-such-template missing"), "{s}");
        assert!(s.contains("liblxc "), "{s}");
    }
}
