//! Mount points made by the agent inside a directory it does not trust (a container's rootfs,
//! a volume), instead of LXC's `create=dir`/`create=file`, which follow the image's symlinks
//! on the board: a rootfs with `run -> /tmp/elsewhere` made LXC create files outside the
//! container. Every step resolves with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`
//! under the directory's own descriptor, so a symlink, absolute or `..`, stays inside it; and
//! what was opened is checked to lie inside before anything is made there.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{fchown, Gid, Uid};

/// What the mount point is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// A directory (for a volume).
    Dir,
    /// A regular file (for a rendered file).
    File,
}

/// Why a mount point could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// A path component resolved outside the directory (never expected with
    /// `RESOLVE_IN_ROOT`; checked all the same).
    #[error("{path:?} resolves outside {root:?}")]
    Outside {
        /// The root it must stay in.
        root: PathBuf,
        /// The path inside it.
        path: PathBuf,
    },
    /// The path is under a read-only bind of the board's own files.
    #[error("it is under {mount:?}, a read-only mount of the board's own files")]
    ReadOnly {
        /// That mount's container path.
        mount: PathBuf,
    },
    /// A component is a symlink to something missing, or not a directory.
    #[error("{path:?} in {root:?} is not a directory (a dangling symlink or a file is there)")]
    NotADirectory {
        /// The root.
        root: PathBuf,
        /// The component's path inside it.
        path: PathBuf,
    },
    /// A system call failed.
    #[error("cannot {what} {path:?} in {root:?}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The root.
        root: PathBuf,
        /// The path inside it.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn how(flags: OFlag) -> OpenHow {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    // openat2 refuses a mode without O_CREAT.
    if flags.contains(OFlag::O_CREAT) {
        how.mode(Mode::from_bits_truncate(0o644))
    } else {
        how
    }
}

fn open_in(root: &OwnedFd, rel: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    // `.` for the root itself: openat2 wants a non-empty path.
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let fd = openat2(root.as_raw_fd(), rel, how(flags))?;
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Where an open descriptor is on the board.
fn fd_path(fd: &OwnedFd) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Makes the mount point `rel` (relative, no `..`) of `kind` under `root`, with the missing
/// directories before it, all owned by `owner` (uid, gid) when given. An existing one of the
/// right kind is left as it is. Returns where it is on the board.
pub fn make_target(
    root: &Path,
    rel: &Path,
    kind: TargetKind,
    owner: Option<(u32, u32)>,
) -> Result<PathBuf, TargetError> {
    let at = |what: &'static str, path: &Path| {
        let (root, path) = (root.to_owned(), path.to_owned());
        move |e: Errno| TargetError::Io {
            what,
            root,
            path,
            source: io::Error::from(e),
        }
    };
    let root_fd: OwnedFd = File::open(root)
        .map_err(|source| TargetError::Io {
            what: "open",
            root: root.to_owned(),
            path: PathBuf::new(),
            source,
        })?
        .into();
    let real_root = fd_path(&root_fd).map_err(|source| TargetError::Io {
        what: "resolve",
        root: root.to_owned(),
        path: PathBuf::new(),
        source,
    })?;
    let inside = |fd: &OwnedFd, path: &Path| -> Result<PathBuf, TargetError> {
        match fd_path(fd) {
            Ok(p) if p.starts_with(&real_root) => Ok(p),
            _ => Err(TargetError::Outside {
                root: root.to_owned(),
                path: path.to_owned(),
            }),
        }
    };
    let chown = |fd: &OwnedFd, path: &Path| -> Result<(), TargetError> {
        if let Some((uid, gid)) = owner {
            fchown(
                fd.as_raw_fd(),
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
            )
            .map_err(at("chown", path))?;
        }
        Ok(())
    };
    let names: Vec<&OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    let mut parent = open_in(&root_fd, Path::new(""), dir_flags).map_err(at("open", root))?;
    let mut path = PathBuf::new();
    for (i, name) in names.iter().enumerate() {
        path.push(name);
        let last = i + 1 == names.len();
        if last && kind == TargetKind::File {
            break;
        }
        let not_dir = || TargetError::NotADirectory {
            root: root.to_owned(),
            path: path.clone(),
        };
        parent = match open_in(&root_fd, &path, dir_flags) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                // A single name under a descriptor already checked: mkdirat makes no
                // directory through a symlink planted at that name (it fails EEXIST).
                inside(&parent, &path)?;
                match mkdirat(
                    Some(parent.as_raw_fd()),
                    *name,
                    Mode::from_bits_truncate(0o755),
                ) {
                    Ok(()) => {
                        let fd = open_in(&root_fd, &path, dir_flags).map_err(at("open", &path))?;
                        let dir = open_in(&root_fd, &path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                            .map_err(at("open", &path))?;
                        chown(&dir, &path)?;
                        fd
                    }
                    Err(Errno::EEXIST) => return Err(not_dir()),
                    Err(e) => return Err(at("create", &path)(e)),
                }
            }
            Err(Errno::ENOTDIR | Errno::ELOOP) => return Err(not_dir()),
            Err(e) => return Err(at("open", &path)(e)),
        };
        inside(&parent, &path)?;
    }
    if kind == TargetKind::Dir {
        return inside(&parent, &path);
    }
    // The file: made new (and given to the owner), or the one already there. O_NOFOLLOW: a
    // symlink in its place is refused rather than followed.
    let file_flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK;
    let fd = match open_in(&root_fd, &path, file_flags | OFlag::O_CREAT | OFlag::O_EXCL) {
        Ok(fd) => {
            chown(&fd, &path)?;
            fd
        }
        Err(Errno::EEXIST) => open_in(&root_fd, &path, file_flags).map_err(at("open", &path))?,
        Err(e) => return Err(at("create", &path)(e)),
    };
    let file = File::from(fd);
    let is_file = file.metadata().is_ok_and(|m| m.is_file());
    let fd = OwnedFd::from(file);
    let placed = inside(&fd, &path)?;
    if !is_file {
        return Err(TargetError::NotADirectory {
            root: root.to_owned(),
            path,
        });
    }
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn makes_directories_and_files_inside() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("rootfs");
        fs::create_dir(&root).unwrap();
        let d = make_target(&root, Path::new("srv/data"), TargetKind::Dir, None).unwrap();
        assert!(root.join("srv/data").is_dir());
        assert_eq!(d, fs::canonicalize(root.join("srv/data")).unwrap());
        make_target(&root, Path::new("etc/texu/id"), TargetKind::File, None).unwrap();
        assert!(root.join("etc/texu/id").is_file());
        // Again: what is there stays.
        fs::write(root.join("etc/texu/id"), "kept").unwrap();
        make_target(&root, Path::new("etc/texu/id"), TargetKind::File, None).unwrap();
        assert_eq!(
            fs::read_to_string(root.join("etc/texu/id")).unwrap(),
            "kept"
        );
    }

    #[test]
    fn symlinks_out_of_the_root_stay_in_it() {
        let t = tempfile::tempdir().unwrap();
        let (root, outside) = (t.path().join("rootfs"), t.path().join("outside"));
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        symlink(&outside, root.join("run")).unwrap();
        symlink("../../outside", root.join("up")).unwrap();
        for (rel, kind) in [
            ("run/texu/id", TargetKind::File),
            ("run/data", TargetKind::Dir),
            ("up/x", TargetKind::Dir),
        ] {
            let err = make_target(&root, Path::new(rel), kind, None).unwrap_err();
            assert!(
                matches!(err, TargetError::NotADirectory { .. }),
                "{rel}: {err}"
            );
        }
        // The link's target made inside the root: it resolves there, never outside.
        fs::create_dir_all(root.join(outside.strip_prefix("/").unwrap())).unwrap();
        let placed = make_target(&root, Path::new("run/data"), TargetKind::Dir, None).unwrap();
        assert!(
            placed.starts_with(fs::canonicalize(&root).unwrap()),
            "{placed:?}"
        );
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing outside"
        );
        // A symlink where the file goes is refused, not followed.
        symlink("/etc/passwd", root.join("passwd")).unwrap();
        assert!(make_target(&root, Path::new("passwd"), TargetKind::File, None).is_err());
    }
}
