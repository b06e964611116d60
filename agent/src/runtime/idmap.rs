//! The id map of unprivileged containers: container uids and gids `0..count` are the board's
//! `start..start+count`, a range of root's subordinate ids from `/etc/subuid` and
//! `/etc/subgid` (as Incus and LXD do). Root in a container is then an ordinary uid on the
//! board, and the board's own files (owned by ids outside the range) show as nobody inside.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::config::ConfigItem;

/// Where root's subordinate uids and gids are listed.
pub const SUBUID_FILE: &str = "/etc/subuid";
/// See [`SUBUID_FILE`].
pub const SUBGID_FILE: &str = "/etc/subgid";

/// Fewest ids a range must hold: a whole 16-bit id space, as distributions' images expect
/// (`nobody` is 65534).
pub const MIN_RANGE: u32 = 65536;

/// One mapping of container ids onto board ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// The board uid of container uid 0.
    pub uid_start: u32,
    /// The board gid of container gid 0.
    pub gid_start: u32,
    /// How many ids, uids and gids alike.
    pub count: u32,
}

/// Why no id map could be found.
#[derive(Debug, thiserror::Error)]
pub enum IdMapError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No usable range for root in the file.
    #[error(
        "{path} has no range of at least {MIN_RANGE} ids for root: add one, e.g. \
         `echo root:1000000:65536 >> {path}` (scripts/setup.sh does), so containers run \
         unprivileged"
    )]
    NoRange {
        /// The file.
        path: PathBuf,
    },
}

/// The first range for `user` of at least [`MIN_RANGE`] ids in a subuid/subgid file's text,
/// as (start, count). A range starting at 0 is ignored: it would map container root to root.
pub fn parse_range(text: &str, user: &str) -> Option<(u32, u32)> {
    text.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        let (start, count): (u32, u32) = (start.parse().ok()?, count.parse().ok()?);
        (who == user && start > 0 && count >= MIN_RANGE && start.checked_add(count).is_some())
            .then_some((start, count))
    })
}

fn range_in(path: &Path) -> Result<(u32, u32), IdMapError> {
    let text = fs::read_to_string(path).map_err(|source| IdMapError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_range(&text, "root").ok_or_else(|| IdMapError::NoRange {
        path: path.to_owned(),
    })
}

impl IdMap {
    /// Root's ranges on this board, [`MIN_RANGE`] ids of each.
    pub fn detect() -> Result<Self, IdMapError> {
        let (uid_start, uids) = range_in(Path::new(SUBUID_FILE))?;
        let (gid_start, gids) = range_in(Path::new(SUBGID_FILE))?;
        Ok(Self {
            uid_start,
            gid_start,
            count: uids.min(gids).min(MIN_RANGE),
        })
    }

    /// The board uid of container uid `uid` (ids past the range keep their number: they are
    /// unmapped, nobody inside).
    pub fn uid(&self, uid: u32) -> u32 {
        if uid < self.count {
            self.uid_start + uid
        } else {
            uid
        }
    }

    /// The board gid of container gid `gid` (see [`IdMap::uid`]).
    pub fn gid(&self, gid: u32) -> u32 {
        if gid < self.count {
            self.gid_start + gid
        } else {
            gid
        }
    }

    /// The `lxc.idmap` items.
    pub fn config_items(&self) -> [ConfigItem; 2] {
        [
            (
                "lxc.idmap",
                format!("u 0 {} {}", self.uid_start, self.count),
            ),
            (
                "lxc.idmap",
                format!("g 0 {} {}", self.gid_start, self.count),
            ),
        ]
    }

    /// Gives `path` (not following a symlink) to container root, if it belongs to the board's
    /// root: a directory the agent made for the container to write.
    pub fn give_to_root(&self, path: &Path) -> io::Result<()> {
        let m = fs::symlink_metadata(path)?;
        if m.uid() == 0 && m.gid() == 0 {
            std::os::unix::fs::lchown(path, Some(self.uid_start), Some(self.gid_start))?;
        }
        Ok(())
    }

    /// Gives a container its volume. A volume whose top is still owned by the board's root was
    /// either just made, or written by a privileged container (before containers ran
    /// unprivileged by default, or before the role dropped `privileged: true`): its whole tree
    /// shifts into the range once, so the same users inside own the same files. Later starts
    /// find the top in the range and walk nothing.
    pub fn adopt_volume(&self, path: &Path) -> io::Result<()> {
        let m = fs::symlink_metadata(path)?;
        if m.uid() == 0 && m.gid() == 0 {
            self.shift_tree(path)?;
        }
        Ok(())
    }

    /// Shifts the owners of everything under `root` (itself included, symlinks not followed)
    /// into the range: an unpacked image's tree made for this container alone. Ids already
    /// in the range stay, so shifting twice changes nothing.
    pub fn shift_tree(&self, root: &Path) -> io::Result<()> {
        let m = fs::symlink_metadata(root)?;
        self.shift_one(root, &m)?;
        if m.is_dir() {
            for entry in fs::read_dir(root)? {
                self.shift_tree(&entry?.path())?;
            }
        }
        Ok(())
    }

    fn shift_one(&self, path: &Path, m: &fs::Metadata) -> io::Result<()> {
        let in_range = |id: u32, start: u32| id >= start && id - start < self.count;
        if in_range(m.uid(), self.uid_start) && in_range(m.gid(), self.gid_start) {
            return Ok(());
        }
        std::os::unix::fs::lchown(path, Some(self.uid(m.uid())), Some(self.gid(m.gid())))?;
        // Changing the owner clears setuid/setgid on files; put the mode back.
        if !m.file_type().is_symlink() && m.mode() & 0o6000 != 0 {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(m.mode() & 0o7777))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_roots_first_big_enough_range() {
        let text = "alice:100000:65536\nroot:0:65536\nroot:200000:1000\nroot:1000000:65536\n";
        assert_eq!(parse_range(text, "root"), Some((1_000_000, 65536)));
        assert_eq!(parse_range(text, "alice"), Some((100_000, 65536)));
        assert_eq!(parse_range("", "root"), None);
        assert_eq!(
            parse_range("root:x:65536\nroot:4294967295:65536", "root"),
            None
        );
    }

    /// Needs root (it changes owners), as the agent does; CI runs tests as root.
    #[test]
    fn a_volume_written_by_a_privileged_container_is_shifted_once() {
        use std::os::unix::fs::{lchown, symlink};
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "this test changes file owners: run it as root (CI does)"
        );
        let m = IdMap {
            uid_start: 1_000_000,
            gid_start: 1_000_000,
            count: 65536,
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let volume = dir.path().join("data");
        fs::create_dir_all(volume.join("commitlog")).expect("mkdir");
        fs::write(volume.join("commitlog/seg-1"), b"x").expect("write");
        lchown(volume.join("commitlog"), Some(999), Some(999)).expect("chown");
        lchown(volume.join("commitlog/seg-1"), Some(999), Some(999)).expect("chown");
        // A symlink pointing out of the volume: its own owner shifts, its target is untouched.
        let outside = dir.path().join("outside");
        fs::write(&outside, b"board").expect("write");
        symlink(&outside, volume.join("link")).expect("symlink");

        m.adopt_volume(&volume).expect("adopt");
        let owner = |p: &Path| {
            let md = fs::symlink_metadata(p).expect("stat");
            (md.uid(), md.gid())
        };
        assert_eq!(
            owner(&volume),
            (1_000_000, 1_000_000),
            "root's dir -> container root"
        );
        assert_eq!(
            owner(&volume.join("commitlog/seg-1")),
            (1_000_999, 1_000_999)
        );
        assert_eq!(owner(&volume.join("link")), (1_000_000, 1_000_000));
        assert_eq!(
            owner(&outside),
            (0, 0),
            "a symlink's target is not followed"
        );

        // A file the container's user makes later (in range) stays as it is on the next start,
        // and a board-root file under an adopted top is not walked to.
        fs::write(volume.join("late"), b"y").expect("write");
        m.adopt_volume(&volume).expect("adopt again");
        assert_eq!(
            owner(&volume.join("late")),
            (0, 0),
            "no walk once the top is in range"
        );
    }

    #[test]
    fn maps_ids_inside_the_range_only() {
        let m = IdMap {
            uid_start: 1_000_000,
            gid_start: 2_000_000,
            count: 65536,
        };
        assert_eq!(m.uid(0), 1_000_000);
        assert_eq!(m.gid(33), 2_000_033);
        assert_eq!(m.uid(70000), 70000);
        assert_eq!(
            m.config_items().map(|(_, v)| v),
            [
                "u 0 1000000 65536".to_owned(),
                "g 0 2000000 65536".to_owned()
            ]
        );
    }
}
