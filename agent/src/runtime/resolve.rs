//! Finding a command in a container's filesystem before the container exists, so that
//! `create` can refuse a command that would fail at start ("command /nope not found").
//!
//! The container's view is rebuilt from its LXC config: the rootfs directory, with every bind
//! mount entry laid over it and every other mount (tmpfs) hiding what is below. Symlinks are
//! followed inside that view, so `/bin/sleep -> busybox` and merged-/usr links resolve the
//! way they will in the container.
//!
//! The same view tells whether a file can be bind-mounted at a path: LXC's `create=file` makes
//! a missing mount point and its parent directories, which fails on a read-only mount.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::cgroup::unescape_octal;

/// One mount entry of the container, from an `lxc.mount.entry` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted in the container, as path components.
    pub target: Vec<String>,
    /// The host directory or file shown there, or `None` for a fresh filesystem (tmpfs).
    pub source: Option<PathBuf>,
    /// Mounted read-only (`ro`).
    pub read_only: bool,
}

/// Why a file cannot be bind-mounted at a container path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileTargetError {
    /// A directory is there.
    #[error("a directory is there")]
    IsDirectory,
    /// The path is missing and its nearest existing parent is read-only, so LXC cannot create
    /// the mount point.
    #[error(
        "it does not exist and {parent:?} is read-only there, so it cannot be created; on a \
         host image /usr, /lib, /bin, /sbin and /etc are the board's own: mount over a file the \
         board has, or use a path under /run, /var, /tmp, /home or a new top-level directory"
    )]
    ReadOnlyParent {
        /// The nearest existing parent, as a container path.
        parent: PathBuf,
    },
    /// A parent of the path is not a directory.
    #[error("{parent:?} is not a directory")]
    NotADirectory {
        /// That parent, as a container path.
        parent: PathBuf,
    },
}

/// Where the mount point for a container path is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetBase {
    /// Under this host directory (the rootfs or a writable bind mount's source), at this
    /// relative path: the agent makes it (see `targets`).
    Under {
        /// The rootfs or the bind source.
        root: PathBuf,
        /// The rest of the container path below it.
        rel: PathBuf,
    },
    /// On a filesystem mounted fresh at start (a tmpfs): only LXC can make it, in an empty
    /// filesystem the image has no symlinks in.
    Fresh,
    /// Under a read-only bind (a host image's /etc): cannot be made.
    ReadOnly {
        /// The container path of that mount.
        mount: PathBuf,
    },
}

/// Parses an fstab-style `lxc.mount.entry` value. `None` for lines that are not mounts.
pub fn parse_mount_entry(line: &str) -> Option<MountEntry> {
    let mut fields = line.split_whitespace();
    let source = unescape_octal(fields.next()?);
    let target = unescape_octal(fields.next()?);
    let _fstype = fields.next()?;
    let options = fields.next().unwrap_or("");
    let bind = options.split(',').any(|o| o == "bind" || o == "rbind");
    Some(MountEntry {
        target: components(&target),
        source: bind.then(|| PathBuf::from(source)),
        read_only: options.split(',').any(|o| o == "ro"),
    })
}

fn components(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_owned()),
            _ => None,
        })
        .collect()
}

/// How a container path maps to the host.
enum Mapped {
    /// This host path.
    Host(PathBuf),
    /// The root of a fresh (empty) filesystem: exists, holds nothing.
    EmptyDir,
    /// Inside a fresh filesystem: does not exist yet.
    Absent,
}

/// The container's filesystem as seen from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    rootfs: PathBuf,
    mounts: Vec<MountEntry>,
}

/// Symlinks followed before giving up (as the kernel's limit).
const MAX_SYMLINKS: usize = 40;

impl ContainerView {
    /// The view of a rootfs directory with these mount entries, in config order.
    pub fn new(rootfs: PathBuf, mounts: Vec<MountEntry>) -> Self {
        Self { rootfs, mounts }
    }

    /// Builds the view from `lxc.rootfs.path` and the newline-separated `lxc.mount.entry`
    /// values. `None` when the rootfs is not a plain directory (another storage backend).
    pub fn from_config(rootfs_path: &str, mount_entries: &str) -> Option<Self> {
        let dir = rootfs_path.strip_prefix("dir:").unwrap_or(rootfs_path);
        if !dir.starts_with('/') {
            return None;
        }
        let mounts = mount_entries
            .lines()
            .filter_map(parse_mount_entry)
            .collect();
        Some(Self::new(PathBuf::from(dir), mounts))
    }

    /// The rootfs directory.
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    /// The mount that shows `comps`: the last of the longest matching ones (later mounts cover
    /// earlier ones). `None`: the rootfs itself.
    fn covering(&self, comps: &[String]) -> Option<&MountEntry> {
        self.mounts
            .iter()
            .filter(|m| comps.starts_with(&m.target))
            .max_by_key(|m| m.target.len())
    }

    fn map(&self, comps: &[String]) -> Mapped {
        match self.covering(comps) {
            Some(m) => {
                let rest = &comps[m.target.len()..];
                match &m.source {
                    Some(src) => Mapped::Host(rest.iter().fold(src.clone(), |p, c| p.join(c))),
                    None if rest.is_empty() => Mapped::EmptyDir,
                    None => Mapped::Absent,
                }
            }
            None => Mapped::Host(comps.iter().fold(self.rootfs.clone(), |p, c| p.join(c))),
        }
    }

    /// Resolves an absolute container path, following symlinks inside the container, to the
    /// host path of what it names. `None` if it does not exist.
    pub fn resolve(&self, path: &str) -> Option<PathBuf> {
        match self.map(&self.walk(path)?) {
            Mapped::Host(p) => Some(p),
            Mapped::EmptyDir | Mapped::Absent => None,
        }
    }

    /// Whether a file can be bind-mounted at the absolute container path `path`: a file is
    /// there (it is covered), or the path is missing and its nearest existing parent is a
    /// writable directory (LXC creates the mount point).
    pub fn check_file_target(&self, path: &Path) -> Result<(), FileTargetError> {
        for at in path.ancestors() {
            let Some(comps) = at.to_str().and_then(|s| self.walk(s)) else {
                continue;
            };
            let is_dir = match self.map(&comps) {
                Mapped::Host(p) => p.is_dir(),
                Mapped::EmptyDir => true,
                Mapped::Absent => false,
            };
            if at == path {
                return if is_dir {
                    Err(FileTargetError::IsDirectory)
                } else {
                    Ok(())
                };
            }
            let parent = at.to_owned();
            if !is_dir {
                return Err(FileTargetError::NotADirectory { parent });
            }
            if self.covering(&comps).is_some_and(|m| m.read_only) {
                return Err(FileTargetError::ReadOnlyParent { parent });
            }
            return Ok(());
        }
        Ok(())
    }

    /// Where the mount point for the absolute container path `path` is to be made, by its
    /// literal components (symlinks are for `targets` to resolve inside the base).
    pub fn target_base(&self, path: &Path) -> TargetBase {
        let comps = components(&path.to_string_lossy());
        // The mounts above it, not its own.
        let above = comps.len().saturating_sub(1);
        let Some(m) = self.covering(&comps[..above]) else {
            return TargetBase::Under {
                root: self.rootfs.clone(),
                rel: comps.iter().collect(),
            };
        };
        match &m.source {
            _ if m.read_only => TargetBase::ReadOnly {
                mount: Path::new("/").join(m.target.iter().collect::<PathBuf>()),
            },
            Some(src) => TargetBase::Under {
                root: src.clone(),
                rel: comps[m.target.len()..].iter().collect(),
            },
            None => TargetBase::Fresh,
        }
    }

    /// Follows `path` component by component, symlinks included, to the container path (as
    /// components) of what it names. `None` if it does not exist.
    fn walk(&self, path: &str) -> Option<Vec<String>> {
        let mut pending: Vec<String> = components(path).into_iter().rev().collect();
        let mut current: Vec<String> = Vec::new();
        let mut links = 0;
        while let Some(part) = pending.pop() {
            if part == ".." {
                current.pop();
                continue;
            }
            current.push(part);
            let host = match self.map(&current) {
                Mapped::Host(p) => p,
                Mapped::EmptyDir => continue,
                Mapped::Absent => return None,
            };
            let meta = fs::symlink_metadata(&host).ok()?;
            if meta.file_type().is_symlink() {
                links += 1;
                if links > MAX_SYMLINKS {
                    return None;
                }
                let target = fs::read_link(&host).ok()?;
                current.pop();
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    current.clear();
                }
                // Keep ".." so it pops from `current` when reached.
                let parts = target
                    .split('/')
                    .filter(|s| !s.is_empty() && *s != ".")
                    .map(str::to_owned);
                pending.extend(parts.collect::<Vec<_>>().into_iter().rev());
            }
        }
        Some(current)
    }

    /// Finds `command` as `execvp` in the container would: a path if it has a '/', else
    /// each directory of `path_env`. Returns the host path of an executable regular file.
    pub fn find_command(&self, command: &str, path_env: &str) -> Option<PathBuf> {
        let candidates: Vec<String> = if command.contains('/') {
            vec![format!("/{}", command.trim_start_matches("./"))]
        } else {
            path_env
                .split(':')
                .filter(|d| d.starts_with('/'))
                .map(|d| format!("{}/{command}", d.trim_end_matches('/')))
                .collect()
        };
        candidates.iter().find_map(|c| {
            let host = self.resolve(c)?;
            let meta = fs::metadata(&host).ok()?;
            (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(host)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn exe(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn parses_mount_entries() {
        assert_eq!(
            parse_mount_entry("/usr usr none ro,bind,create=dir 0 0"),
            Some(MountEntry {
                target: vec!["usr".into()],
                source: Some("/usr".into()),
                read_only: true,
            })
        );
        assert_eq!(
            parse_mount_entry("tmpfs /var tmpfs rw,mode=755 0 0"),
            Some(MountEntry {
                target: vec!["var".into()],
                source: None,
                read_only: false,
            })
        );
        assert_eq!(
            parse_mount_entry("/srv/my\\040data data none bind 0 0").and_then(|m| m.source),
            Some(PathBuf::from("/srv/my data"))
        );
        assert_eq!(parse_mount_entry("garbage"), None);
    }

    #[test]
    fn follows_busybox_style_symlinks_in_the_rootfs() {
        let t = tempfile::tempdir().unwrap();
        let rootfs = t.path().join("rootfs");
        exe(&rootfs.join("bin/busybox"));
        symlink("busybox", rootfs.join("bin/sleep")).unwrap();
        let view = ContainerView::new(rootfs.clone(), vec![]);
        assert_eq!(
            view.find_command("/bin/sleep", "/bin"),
            Some(rootfs.join("bin/busybox"))
        );
        assert_eq!(
            view.find_command("sleep", "/usr/bin:/bin"),
            Some(rootfs.join("bin/busybox"))
        );
        assert_eq!(view.find_command("/nope", "/bin"), None);
        assert_eq!(view.find_command("nope", "/bin"), None);
    }

    #[test]
    fn follows_absolute_links_inside_the_container_not_the_host() {
        let t = tempfile::tempdir().unwrap();
        let rootfs = t.path().join("rootfs");
        let host_usr = t.path().join("host-usr");
        exe(&host_usr.join("bin/tool"));
        fs::create_dir_all(&rootfs).unwrap();
        // Merged /usr: /bin -> usr/bin, and an absolute link /sbin -> /usr/bin.
        symlink("usr/bin", rootfs.join("bin")).unwrap();
        symlink("/usr/bin", rootfs.join("sbin")).unwrap();
        let view = ContainerView::new(
            rootfs,
            vec![MountEntry {
                target: vec!["usr".into()],
                source: Some(host_usr.clone()),
                read_only: true,
            }],
        );
        assert_eq!(
            view.find_command("/bin/tool", ""),
            Some(host_usr.join("bin/tool"))
        );
        assert_eq!(
            view.find_command("/sbin/tool", ""),
            Some(host_usr.join("bin/tool"))
        );
        assert_eq!(
            view.find_command("/usr/bin/../bin/tool", ""),
            Some(host_usr.join("bin/tool"))
        );
    }

    #[test]
    fn a_tmpfs_hides_the_rootfs_below_it() {
        let t = tempfile::tempdir().unwrap();
        let rootfs = t.path().join("rootfs");
        exe(&rootfs.join("tmp/prog"));
        let view = ContainerView::new(
            rootfs,
            vec![MountEntry {
                target: vec!["tmp".into()],
                source: None,
                read_only: false,
            }],
        );
        assert_eq!(view.find_command("/tmp/prog", ""), None);
    }

    #[test]
    fn not_executable_is_not_found_and_loops_end() {
        let t = tempfile::tempdir().unwrap();
        let rootfs = t.path().join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        fs::write(rootfs.join("bin/data"), "x").unwrap();
        symlink("loop", rootfs.join("bin/loop")).unwrap();
        let view = ContainerView::new(rootfs, vec![]);
        assert_eq!(view.find_command("/bin/data", ""), None);
        assert_eq!(view.find_command("/bin/loop", ""), None);
        assert_eq!(view.find_command("/bin", ""), None);
    }

    #[test]
    fn a_file_mounts_over_a_file_or_where_its_parent_is_writable() {
        let t = tempfile::tempdir().unwrap();
        let rootfs = t.path().join("rootfs");
        let host_etc = t.path().join("host-etc");
        fs::create_dir_all(rootfs.join("etc")).unwrap();
        fs::create_dir_all(host_etc.join("app")).unwrap();
        fs::write(host_etc.join("app/app.conf"), "").unwrap();
        symlink("etc", rootfs.join("conf")).unwrap();
        let view = ContainerView::from_config(
            &format!("dir:{}", rootfs.display()),
            &format!(
                "{} etc none ro,bind,create=dir 0 0\ntmpfs run tmpfs rw,mode=755 0 0\n",
                host_etc.display()
            ),
        )
        .unwrap();
        let check = |p: &str| view.check_file_target(Path::new(p));
        // Over a file of a read-only bind, in a tmpfs, in the rootfs: fine.
        assert_eq!(check("/etc/app/app.conf"), Ok(()));
        assert_eq!(check("/conf/app/app.conf"), Ok(()));
        assert_eq!(check("/run/texu/x"), Ok(()));
        assert_eq!(check("/opt/app/x.conf"), Ok(()));
        // A new file under a read-only bind, even through a symlink.
        assert_eq!(
            check("/etc/texu/identity"),
            Err(FileTargetError::ReadOnlyParent {
                parent: "/etc".into()
            })
        );
        assert_eq!(
            check("/conf/app/new.conf"),
            Err(FileTargetError::ReadOnlyParent {
                parent: "/conf/app".into()
            })
        );
        assert_eq!(check("/etc/app"), Err(FileTargetError::IsDirectory));
        assert_eq!(check("/run"), Err(FileTargetError::IsDirectory));
        assert_eq!(
            check("/etc/app/app.conf/x"),
            Err(FileTargetError::NotADirectory {
                parent: "/etc/app/app.conf".into()
            })
        );
    }

    #[test]
    fn from_config_reads_lxc_values() {
        let view = ContainerView::from_config(
            "dir:/var/lib/lxc/a/rootfs",
            "/lib lib none ro,bind 0 0\n/usr/lib usr/lib none ro,bind 0 0\n",
        )
        .unwrap();
        assert_eq!(view.rootfs, PathBuf::from("/var/lib/lxc/a/rootfs"));
        assert_eq!(view.mounts.len(), 2);
        assert!(ContainerView::from_config("overlay:/a:/b", "").is_none());
    }
}
