//! `create`: a container's directory, root filesystem, config and files, checked before it
//! is kept (a command that does not exist, a template that fails: nothing stays).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use tracing::warn;

use super::files::{io_err, nul_join, write_atomic, COMMAND_FILE, ENV_FILE};
use super::templates::copy_rootfs;
use super::Inner;
use crate::lxc::LxcContainer;
use crate::runtime::config::{
    bind_entry, config_items, hook_script, hostname_file, hosts_file, ConfigContext, ConfigItem,
    HostEntry, FILE_OPTIONS, HOOK_FILE, VOLUME_OPTIONS,
};
use crate::runtime::idmap::IdMap;
use crate::runtime::resolve::{parse_mount_entry, ContainerView, TargetBase};
use crate::runtime::targets::{make_target, TargetError, TargetKind};
use crate::runtime::{ContainerSpec, Image, Result, RuntimeError};

/// Directories every host-image rootfs has, besides the board's.
const ROOTFS_DIRS: [&str; 9] = [
    "proc", "sys", "dev", "run", "tmp", "var", "home", "root", "mnt",
];

impl Inner {
    pub(super) fn create(&self, spec: &ContainerSpec) -> Result<()> {
        let name = spec.name.as_str();
        spec.validate()
            .map_err(|source| RuntimeError::InvalidSpec {
                name: name.to_owned(),
                source,
            })?;
        if (spec.memory_limit_bytes.is_some() || spec.cpu_millis.is_some())
            && self.host.cgroup.is_none()
        {
            return Err(RuntimeError::NoCgroups {
                name: name.to_owned(),
            });
        }
        for v in &spec.volumes {
            if !v.host_path.is_dir() {
                return Err(RuntimeError::VolumeSource {
                    name: name.to_owned(),
                    path: v.host_path.clone(),
                });
            }
        }
        for f in &spec.files {
            if !f.host_path.is_file() {
                return Err(RuntimeError::FileSource {
                    name: name.to_owned(),
                    path: f.host_path.clone(),
                });
            }
        }
        if let Image::Rootfs(p) = &spec.image {
            if !p.is_dir() {
                return Err(RuntimeError::RootfsMissing {
                    name: name.to_owned(),
                    path: p.clone(),
                });
            }
        }
        let _claim = self.claim(name)?;
        let c = self.open(name)?;
        if c.is_defined()? {
            return Err(RuntimeError::AlreadyExists {
                name: name.to_owned(),
            });
        }
        let dir = self.dir(name);
        if dir.exists() {
            // A directory without a config: what a crashed create leaves. It never ran.
            warn!(
                container = name,
                "removing a half-created container directory"
            );
            fs::remove_dir_all(&dir).map_err(io_err(name, "remove leftover", &dir))?;
        }
        let result = self.build(&c, spec);
        if result.is_err() {
            drop(c);
            if let Err(e) = fs::remove_dir_all(&dir) {
                if e.kind() != io::ErrorKind::NotFound {
                    warn!(container = name, error = %e, "could not clean up after a failed create");
                }
            }
        }
        result
    }

    fn build(&self, c: &LxcContainer, spec: &ContainerSpec) -> Result<()> {
        let name = spec.name.as_str();
        let dir = self.dir(name);
        let idmap = self.idmap_for(spec.privileged);
        // Searchable, not listable: an unprivileged container's root walks through it to its
        // rootfs, home, hostname and hosts; texu.env and the config stay private.
        fs::DirBuilder::new()
            .mode(0o711)
            .create(&dir)
            .map_err(io_err(name, "create", &dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o711)).map_err(io_err(
            name,
            "set the mode of",
            &dir,
        ))?;
        match &spec.image {
            Image::Template(template) => {
                // The template ran once into a base; this container gets a copy of it, its
                // owners shifted into the container's id range.
                let base = self.template_base(name, template)?;
                let rootfs = dir.join("rootfs");
                copy_rootfs(name, &base.rootfs, &rootfs, idmap)?;
                for (key, value) in &base.items {
                    c.set_config_item(key, value)?;
                }
                c.set_config_item("lxc.rootfs.path", &format!("dir:{}", rootfs.display()))?;
            }
            Image::Host => self.host_rootfs(name, &dir, idmap)?,
            Image::Rootfs(path) => {
                if let Some(map) = idmap {
                    map.shift_tree(path).map_err(io_err(
                        name,
                        "shift the owners of the rootfs",
                        path,
                    ))?;
                }
            }
        }
        if let Some(map) = idmap {
            for v in &spec.volumes {
                map.adopt_volume(&v.host_path).map_err(io_err(
                    name,
                    "give the container the volume",
                    &v.host_path,
                ))?;
            }
        }

        let write = |file: &str, data: &[u8], mode: u32| {
            let path = dir.join(file);
            write_atomic(&path, data, mode).map_err(io_err(name, "write", &path))
        };
        write(
            HOOK_FILE,
            hook_script(self.host.cgroup.as_ref()).as_bytes(),
            0o755,
        )?;
        write(COMMAND_FILE, &nul_join(&spec.command), 0o600)?;
        write(ENV_FILE, &nul_join(&spec.env_strings()), 0o600)?;
        write("hostname", hostname_file(spec).as_bytes(), 0o644)?;
        write("hosts", hosts_file(spec).as_bytes(), 0o644)?;

        let ctx = ConfigContext {
            container_dir: &dir,
            cgroup_prefix: &self.cgroup_prefix,
            host: &self.host,
        };
        let mut items = config_items(spec, &ctx);
        // The container's filesystem as it will be: the template's mounts, then ours.
        let rootfs = match &spec.image {
            Image::Rootfs(path) => path.clone(),
            Image::Template(_) | Image::Host => dir.join("rootfs"),
        };
        let template_mounts = c.get_config_item("lxc.mount.entry")?.unwrap_or_default();
        let mounts = template_mounts
            .lines()
            .chain(
                items
                    .iter()
                    .filter(|(k, _)| *k == "lxc.mount.entry")
                    .map(|(_, v)| v.as_str()),
            )
            .filter_map(parse_mount_entry)
            .collect();
        let view = ContainerView::new(rootfs, mounts);
        for f in &spec.files {
            view.check_file_target(&f.container_path)
                .map_err(|source| RuntimeError::FileTarget {
                    name: name.to_owned(),
                    path: f.container_path.clone(),
                    source,
                })?;
        }
        make_mount_targets(name, &view, spec, idmap, &mut items)?;
        c.define(&items)?;

        if !matches!(spec.image, Image::Host) {
            // The container's own /etc in its rootfs (not a bind-mounted host directory).
            let etc = view
                .resolve("/etc")
                .filter(|e| e.starts_with(view.rootfs()));
            if let Some(etc) = etc {
                if etc.is_dir() {
                    for (file, data) in [
                        ("hostname", hostname_file(spec)),
                        ("hosts", hosts_file(spec)),
                    ] {
                        let path = etc.join(file);
                        write_atomic(&path, data.as_bytes(), 0o644)
                            .map_err(io_err(name, "write", &path))?;
                        if let Some(map) = idmap {
                            map.give_to_root(&path).map_err(io_err(
                                name,
                                "give the container",
                                &path,
                            ))?;
                        }
                    }
                }
            }
        }
        if let Some(program) = spec.command.first() {
            if view.find_command(program, spec.path_env()).is_none() {
                return Err(RuntimeError::CommandNotFound {
                    name: name.to_owned(),
                    command: program.clone(),
                });
            }
        }
        Ok(())
    }

    /// An empty root with the board's directories as mount points (or the same symlinks),
    /// and a home that belongs to the container's root.
    fn host_rootfs(&self, name: &str, dir: &Path, idmap: Option<&IdMap>) -> Result<()> {
        let rootfs = dir.join("rootfs");
        let mkdir = |path: &Path, mode: u32| {
            fs::DirBuilder::new()
                .mode(mode)
                .create(path)
                .map_err(io_err(name, "create", path))
        };
        mkdir(&rootfs, 0o755)?;
        let home = dir.join("home");
        mkdir(&home, 0o755)?;
        if let Some(map) = idmap {
            map.give_to_root(&home)
                .map_err(io_err(name, "give the container", &home))?;
        }
        for (d, entry) in &self.host.dirs {
            let path = rootfs.join(d);
            match entry {
                HostEntry::Dir => mkdir(&path, 0o755)?,
                HostEntry::Symlink(target) => std::os::unix::fs::symlink(target, &path)
                    .map_err(io_err(name, "create symlink", &path))?,
                HostEntry::Missing => {}
            }
        }
        for d in ROOTFS_DIRS {
            let path = rootfs.join(d);
            if fs::symlink_metadata(&path).is_err() {
                mkdir(&path, if d == "tmp" { 0o1777 } else { 0o755 })?;
            }
        }
        Ok(())
    }
}

/// Makes the mount points of the spec's volumes and files in the rootfs (or in the writable
/// bind they fall under) without following the image's symlinks out of it, and drops LXC's
/// `create=` from their entries. Mount points on a filesystem mounted fresh at start keep
/// `create=`: only LXC can make those, in an empty filesystem.
fn make_mount_targets(
    name: &str,
    view: &ContainerView,
    spec: &ContainerSpec,
    idmap: Option<&IdMap>,
    items: &mut [ConfigItem],
) -> Result<()> {
    let owner = idmap.map(|m| (m.uid_start, m.gid_start));
    let volumes = spec.volumes.iter().map(|v| {
        (
            &v.host_path,
            &v.container_path,
            TargetKind::Dir,
            VOLUME_OPTIONS,
        )
    });
    let files = spec.files.iter().map(|f| {
        (
            &f.host_path,
            &f.container_path,
            TargetKind::File,
            FILE_OPTIONS,
        )
    });
    for (host, target, kind, options) in volumes.chain(files) {
        let fail = |source| RuntimeError::MountTarget {
            name: name.to_owned(),
            path: target.clone(),
            source,
        };
        match view.target_base(target) {
            TargetBase::Fresh => continue,
            // A board file to cover: `check_file_target` found it there.
            TargetBase::ReadOnly { .. } if kind == TargetKind::File => {}
            TargetBase::ReadOnly { mount } => return Err(fail(TargetError::ReadOnly { mount })),
            TargetBase::Under { root, rel } => {
                make_target(&root, &rel, kind, owner).map_err(fail)?;
            }
        }
        let (_, entry) = bind_entry(host, target, options);
        let (_, made) = bind_entry(host, target, strip_create(options));
        if let Some(item) = items
            .iter_mut()
            .find(|(k, v)| *k == "lxc.mount.entry" && *v == entry)
        {
            item.1 = made;
        }
    }
    Ok(())
}

/// Mount options without `create=...`.
fn strip_create(options: &str) -> &str {
    options
        .split_once(",create=")
        .map_or(options, |(kept, _)| kept)
}
