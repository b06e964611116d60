//! Delivering rendered files at create: written under the board's data dir, one directory per
//! container, and bind-mounted read-only into the container.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use texu_api::{Container, RoleEndpoints, RoleSpec};

use super::{render, FileContext, FilesError, RenderedFile, REPLACES_ENV};
use crate::runtime::lxc::files::write_atomic;
use crate::runtime::{ContainerSpec, FileMount};

/// Where container `name`'s rendered files live on the board.
pub fn dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("files").join(name)
}

/// Replaces everything in `dir` with `files` (each at its container path below `dir`) and
/// returns their mounts.
pub fn write(dir: &Path, files: &[RenderedFile]) -> Result<Vec<FileMount>, FilesError> {
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| FilesError::Write { path, source }
    };
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(write_err(dir)(e)),
        _ => {}
    }
    let mut mounts = Vec::with_capacity(files.len());
    for f in files {
        let host = dir.join(relative(&f.path)?);
        if let Some(parent) = host.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(write_err(parent))?;
        }
        write_atomic(&host, f.text.as_bytes(), 0o644).map_err(write_err(&host))?;
        mounts.push(FileMount {
            host_path: host,
            container_path: PathBuf::from(&f.path),
        });
    }
    Ok(mounts)
}

/// An absolute container path as a relative one, refusing anything but plain names.
pub(super) fn relative(path: &str) -> Result<PathBuf, FilesError> {
    let p = Path::new(path);
    let plain = p.is_absolute()
        && p.components().all(|c| {
            matches!(
                c,
                Component::RootDir | Component::Normal(_) | Component::CurDir
            )
        });
    let rel: PathBuf = p
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    if !plain || rel.as_os_str().is_empty() {
        return Err(FilesError::BadPath {
            path: path.to_owned(),
        });
    }
    Ok(rel)
}

/// For a container being created: renders its role's files, writes them under `data_dir`,
/// and adds their read-only mounts to `spec`, with [`REPLACES_ENV`] when it replaces a member.
/// The context's address is the spec's network address.
pub fn prepare(
    data_dir: &Path,
    node: &str,
    c: &Container,
    template: &RoleSpec,
    spec: &mut ContainerSpec,
) -> Result<(), FilesError> {
    prepare_with(data_dir, node, c, template, spec, &BTreeMap::new())
}

/// [`prepare`] with every role's `endpoints` in the context.
pub fn prepare_with(
    data_dir: &Path,
    node: &str,
    c: &Container,
    template: &RoleSpec,
    spec: &mut ContainerSpec,
    endpoints: &BTreeMap<String, RoleEndpoints>,
) -> Result<(), FilesError> {
    let address = spec.network.as_ref().map(|n| n.address);
    let ctx = FileContext::for_container(c, template, node, address).with_endpoints(endpoints);
    if let Some(old) = &ctx.replaces {
        spec.env.push((REPLACES_ENV.to_owned(), old.clone()));
    }
    let rendered = render(&template.files, &ctx)?;
    spec.files = write(&dir(data_dir, &c.metadata.name), &rendered)?;
    Ok(())
}
