//! What a container is made from: its image prepared on the board (a stored image fetched
//! once, verified and unpacked), and the runtime's spec built from its role (command, env,
//! limits, volumes, its address on the bridge, its rendered files).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use texu_api::{Container, ImageRef, Reason, RoleEndpoints, RoleSpec};

use super::client::Client;
use super::images;
use super::network::{Addresses, Subnet};
use crate::runtime::{self, NetConfig, RuntimeError};

/// Why a container cannot be made: the reason its status shows, and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The one-word reason.
    pub reason: Reason,
    /// What went wrong.
    pub message: String,
}

impl Failure {
    fn new(reason: Reason, message: impl Into<String>) -> Failure {
        Failure {
            reason,
            message: message.into(),
        }
    }

    /// The failure the runtime's error `e` means for a create.
    pub fn of_runtime(e: &RuntimeError) -> Failure {
        let reason = match e {
            RuntimeError::CommandNotFound { .. } => Reason::CommandNotFound,
            RuntimeError::InvalidSpec { .. } | RuntimeError::FileTarget { .. } => {
                Reason::InvalidSpec
            }
            RuntimeError::Template { .. } => Reason::ImageFailed,
            _ => Reason::CreateFailed,
        };
        Failure::new(reason, error_chain(e))
    }
}

impl From<images::ImageFailure> for Failure {
    fn from((reason, message): images::ImageFailure) -> Failure {
        Failure::new(
            // Every word images.rs uses is a Reason (tests/agent.rs checks them end to end).
            Reason::parse(reason).unwrap_or(Reason::ImageFailed),
            message,
        )
    }
}

/// Where a board keeps its containers' root filesystems and volumes.
#[derive(Debug, Clone)]
pub struct Dirs {
    data_dir: PathBuf,
}

impl Dirs {
    /// The directories under `data_dir`.
    pub fn new(data_dir: &Path) -> Dirs {
        Dirs {
            data_dir: data_dir.to_owned(),
        }
    }

    /// The agent's data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The unpacked root filesystem of a container from a stored image.
    pub fn rootfs(&self, name: &str) -> PathBuf {
        self.data_dir.join("rootfs").join(name)
    }

    /// The container's volumes.
    pub fn volumes(&self, name: &str) -> PathBuf {
        self.data_dir.join("volumes").join(name)
    }

    /// Removes what the board kept for a container that is gone.
    pub fn remove(&self, name: &str) {
        let _ = std::fs::remove_dir_all(self.volumes(name));
        let _ = std::fs::remove_dir_all(self.rootfs(name));
        let _ = std::fs::remove_dir_all(crate::files::dir(&self.data_dir, name));
    }
}

/// For an image from the image store: downloads (once, verified) and unpacks a fresh root
/// filesystem for this container. `None` for host and template images.
pub async fn prepare_image(
    c: &Container,
    client: &Client,
    credential: &str,
    dirs: &Dirs,
) -> Result<Option<PathBuf>, Failure> {
    let Some(template) = c.spec.template.as_ref() else {
        return Ok(None);
    };
    let Ok(ImageRef::Stored { name, tag }) = template.image_ref() else {
        return Ok(None);
    };
    let digest = c.spec.image_digest.clone().ok_or_else(|| {
        Failure::new(
            Reason::ImageUnavailable,
            format!("image {name}:{tag} has no variant for this board's architecture"),
        )
    })?;
    let (client, credential) = (client.clone(), credential.to_owned());
    let cache = dirs.data_dir.join("images");
    let rootfs = dirs.rootfs(&c.metadata.name);
    tokio::task::spawn_blocking(move || {
        let tarball = images::fetch(&client, &credential, &cache, &digest)?;
        images::unpack(&tarball, &rootfs)?;
        Ok(Some(rootfs))
    })
    .await
    .unwrap_or_else(|e| Err(("ImageFailed", format!("image task failed: {e}"))))
    .map_err(Failure::from)
}

/// What the runtime spec needs of the board.
pub struct Board<'a> {
    /// The node's name.
    pub node: &'a str,
    /// Its directories.
    pub dirs: &'a Dirs,
    /// Its container bridge and subnet, when containers get a network.
    pub network: Option<&'a (String, Subnet)>,
    /// Addresses given on that subnet.
    pub addresses: Option<&'a mut Addresses>,
    /// Every role's endpoints, for the files.
    pub endpoints: &'a BTreeMap<String, RoleEndpoints>,
}

/// The runtime's spec for container `c` on `board`, with `rootfs` for a stored image.
pub fn runtime_spec(
    c: &Container,
    rootfs: Option<PathBuf>,
    board: Board<'_>,
) -> Result<runtime::ContainerSpec, Failure> {
    let name = &c.metadata.name;
    let template: &RoleSpec = c.spec.template.as_ref().ok_or_else(|| {
        Failure::new(
            Reason::NoTemplate,
            "the container has no template from its role",
        )
    })?;
    let image = match template.image_ref() {
        Ok(ImageRef::Host) => runtime::Image::Host,
        Ok(ImageRef::Template(t)) => runtime::Image::Template(t),
        Ok(ImageRef::Stored { name: image, tag }) => match rootfs {
            Some(path) => runtime::Image::Rootfs(path),
            None => {
                return Err(Failure::new(
                    Reason::ImageUnavailable,
                    format!("image {image}:{tag} was not prepared"),
                ))
            }
        },
        Err(e) => return Err(Failure::new(Reason::InvalidImage, e.to_string())),
    };
    let mut spec = runtime::ContainerSpec::new(name.clone(), image);
    spec.privileged = template.privileged;
    spec.command = template.command.clone();
    spec.env = template
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    spec.hostname = Some(name.clone());
    spec.memory_limit_bytes = template
        .resources
        .memory
        .as_ref()
        .and_then(|q| q.bytes().ok());
    spec.cpu_millis = template
        .resources
        .cpu
        .as_ref()
        .and_then(|q| q.cpu_millis().ok())
        .map(|m| m.min(u64::from(u32::MAX)) as u32);
    for volume in &template.volumes {
        let host = board.dirs.volumes(name).join(&volume.name);
        std::fs::create_dir_all(&host).map_err(|e| {
            Failure::new(
                Reason::VolumeFailed,
                format!("cannot create {}: {e}", host.display()),
            )
        })?;
        spec.volumes.push(runtime::Volume {
            host_path: host,
            container_path: PathBuf::from(&volume.path),
        });
    }
    if let (Some((bridge, subnet)), Some(addresses)) = (board.network, board.addresses) {
        let address = addresses
            .get_or_assign(name)
            .map_err(|e| Failure::new(Reason::NetworkFailed, e.to_string()))?;
        spec.network = Some(NetConfig {
            bridge: bridge.clone(),
            address,
            prefix_len: subnet.prefix_len,
            gateway: Some(subnet.gateway()),
        });
    }
    crate::files::prepare_with(
        &board.dirs.data_dir,
        board.node,
        c,
        template,
        &mut spec,
        board.endpoints,
    )
    .map_err(|e| Failure::new(e.reason(), error_chain(&e)))?;
    Ok(spec)
}

/// An error and its causes on one line: `a: b: c`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}
