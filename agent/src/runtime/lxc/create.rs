//! `create`: a container's directory, root filesystem, config and files, checked before it
//! is kept (a command that does not exist, a template that fails: nothing stays).

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use tracing::warn;

use super::files::{io_err, nul_join, write_atomic, COMMAND_FILE, ENV_FILE};
use super::templates::copy_rootfs;
use super::Inner;
use crate::lxc::LxcContainer;
use crate::runtime::config::{
    config_items, hook_script, hostname_file, hosts_file, ConfigContext, HostEntry, HOOK_FILE,
};
use crate::runtime::resolve::ContainerView;
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
        match &spec.image {
            Image::Template(template) => {
                // The template ran once into a base; this container gets a copy of it.
                let base = self.template_base(name, template)?;
                fs::DirBuilder::new()
                    .mode(0o750)
                    .create(&dir)
                    .map_err(io_err(name, "create", &dir))?;
                let rootfs = dir.join("rootfs");
                copy_rootfs(name, &base.rootfs, &rootfs)?;
                for (key, value) in &base.items {
                    c.set_config_item(key, value)?;
                }
                c.set_config_item("lxc.rootfs.path", &format!("dir:{}", rootfs.display()))?;
            }
            Image::Host => {
                fs::DirBuilder::new()
                    .mode(0o750)
                    .create(&dir)
                    .map_err(io_err(name, "create", &dir))?;
                self.host_rootfs(name, &dir)?;
            }
            Image::Rootfs(_) => {
                fs::DirBuilder::new()
                    .mode(0o750)
                    .create(&dir)
                    .map_err(io_err(name, "create", &dir))?;
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
        c.define(&config_items(spec, &ctx))?;

        let rootfs = c.get_config_item("lxc.rootfs.path")?.unwrap_or_default();
        let mounts = c.get_config_item("lxc.mount.entry")?.unwrap_or_default();
        let view = ContainerView::from_config(&rootfs, &mounts);
        if !matches!(spec.image, Image::Host) {
            // The container's own /etc in its rootfs (not a bind-mounted host directory).
            let etc = view
                .as_ref()
                .and_then(|v| v.resolve("/etc").filter(|e| e.starts_with(v.rootfs())));
            if let Some(etc) = etc {
                if etc.is_dir() {
                    for (file, data) in [
                        ("hostname", hostname_file(spec)),
                        ("hosts", hosts_file(spec)),
                    ] {
                        let path = etc.join(file);
                        write_atomic(&path, data.as_bytes(), 0o644)
                            .map_err(io_err(name, "write", &path))?;
                    }
                }
            }
        }
        if let Some(view) = &view {
            for f in &spec.files {
                view.check_file_target(&f.container_path)
                    .map_err(|source| RuntimeError::FileTarget {
                        name: name.to_owned(),
                        path: f.container_path.clone(),
                        source,
                    })?;
            }
        }
        if let (Some(program), Some(view)) = (spec.command.first(), &view) {
            if view.find_command(program, spec.path_env()).is_none() {
                return Err(RuntimeError::CommandNotFound {
                    name: name.to_owned(),
                    command: program.clone(),
                });
            }
        }
        Ok(())
    }

    /// An empty root with the board's directories as mount points (or the same symlinks).
    fn host_rootfs(&self, name: &str, dir: &Path) -> Result<()> {
        let rootfs = dir.join("rootfs");
        let mkdir = |path: &Path, mode: u32| {
            fs::DirBuilder::new()
                .mode(mode)
                .create(path)
                .map_err(io_err(name, "create", path))
        };
        mkdir(&rootfs, 0o755)?;
        mkdir(&dir.join("home"), 0o755)?;
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
