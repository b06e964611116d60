//! [`ContainerSpec`]: what the runtime is asked to create, and its validation.
//!
//! Every string in a spec ends up in an LXC config line, a mount entry or a file name, so the
//! checks here are strict: no NUL, no newline, no whitespace in paths, names as DNS-1123 labels.

use std::net::Ipv4Addr;
use std::path::{Component, Path, PathBuf};

use crate::lxc::{validate_name, NameError};

/// `PATH` a container gets when its spec's environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Smallest memory limit accepted (the kernel and LXC's init need some room).
pub const MIN_MEMORY_BYTES: u64 = 4 * 1024 * 1024;

/// Smallest CPU limit accepted: the kernel's shortest CFS quota (1 ms per 100 ms period).
pub const MIN_CPU_MILLIS: u32 = 10;

/// Where a container's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    /// The board's own /usr, /lib, /lib64, /bin, /sbin and /etc, bind-mounted read-only, with
    /// its own tmpfs /var, /run, /tmp and a writable /home.
    Host,
    /// An LXC template available on the board, such as `busybox` (run at each create).
    Template(String),
    /// A root filesystem directory prepared for this container alone. The runtime takes it
    /// over: `destroy` deletes it (liblxc deletes a container's rootfs wherever it is).
    Rootfs(PathBuf),
}

/// A host directory bind-mounted read-write into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Absolute path of an existing directory on the board.
    pub host_path: PathBuf,
    /// Absolute path inside the container (created if missing).
    pub container_path: PathBuf,
}

/// A file of the board bind-mounted read-only into the container (a rendered template).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMount {
    /// Absolute path of an existing regular file on the board.
    pub host_path: PathBuf,
    /// Absolute path inside the container. A file already there is covered; a missing one is
    /// created (with its parent directories) as the mount point, which needs the nearest
    /// existing parent to be writable: not on a read-only bind such as a host image's /etc.
    pub container_path: PathBuf,
}

/// A network interface (`eth0`) on a host bridge with a fixed IPv4 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Name of an existing bridge on the board.
    pub bridge: String,
    /// The container's address.
    pub address: Ipv4Addr,
    /// Prefix length of the bridge's subnet.
    pub prefix_len: u8,
    /// Default gateway, if any.
    pub gateway: Option<Ipv4Addr>,
}

/// What to create: one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Container name (a DNS-1123 label).
    pub name: String,
    /// Root filesystem.
    pub image: Image,
    /// Program and arguments, run under LXC's init (which is PID 1). Empty boots the image's
    /// own `/sbin/init` (not allowed for the host image).
    pub command: Vec<String>,
    /// Environment of the command (and of `exec`), in order. `PATH` defaults to
    /// [`DEFAULT_PATH`].
    pub env: Vec<(String, String)>,
    /// Host directories mounted read-write.
    pub volumes: Vec<Volume>,
    /// Board files mounted read-only, after the volumes.
    pub files: Vec<FileMount>,
    /// Memory limit in bytes; the kernel OOM-kills beyond it.
    pub memory_limit_bytes: Option<u64>,
    /// CPU limit in thousandths of a CPU (`500` = half a CPU).
    pub cpu_millis: Option<u32>,
    /// Network; `None` gives the container only a loopback interface.
    pub network: Option<NetConfig>,
    /// Hostname; defaults to the container name.
    pub hostname: Option<String>,
    /// Run with the board's own ids and capabilities (root inside is root on the board). By
    /// default containers are unprivileged: their ids map onto root's subordinate range.
    pub privileged: bool,
}

/// What is wrong with a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Bad container name.
    #[error("bad name")]
    Name(#[source] NameError),
    /// Bad hostname.
    #[error("bad hostname")]
    Hostname(#[source] NameError),
    /// The host image has no init of its own to boot.
    #[error("a container on the host image needs a command")]
    CommandRequired,
    /// A command argument holds a NUL byte or the program is empty.
    #[error("command argument {index} is empty or holds a NUL byte")]
    BadArgument {
        /// Position in the command.
        index: usize,
    },
    /// Template names are plain names (looked up in LXC's template directory).
    #[error("template name {0:?} must be letters, digits, '-' or '_'")]
    BadTemplate(String),
    /// Environment variable name.
    #[error("environment variable name {0:?} must be letters, digits and '_', not starting with a digit")]
    BadEnvKey(String),
    /// Environment variable value.
    #[error("environment variable {0} holds a newline or NUL byte")]
    BadEnvValue(String),
    /// A path that will be written into the LXC config.
    #[error(
        "{what} {path:?} must be absolute and hold no whitespace, '..', NUL or control characters"
    )]
    BadPath {
        /// Which path.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// Volume mounted over the container's root.
    #[error("a volume cannot be mounted on /")]
    VolumeOnRoot,
    /// File mounted over the container's root.
    #[error("a file cannot be mounted on /")]
    FileOnRoot,
    /// Too little memory.
    #[error("memory limit {0} bytes is below the minimum of {MIN_MEMORY_BYTES}")]
    MemoryTooSmall(u64),
    /// Too little CPU.
    #[error("CPU limit {0}m is below the minimum of {MIN_CPU_MILLIS}m")]
    CpuTooSmall(u32),
    /// Bridge names are Linux interface names.
    #[error("bridge name {0:?} must be 1-15 letters, digits, '-', '_' or '.'")]
    BadBridge(String),
    /// Prefix length above 32.
    #[error("prefix length /{0} is not an IPv4 prefix")]
    BadPrefix(u8),
}

impl ContainerSpec {
    /// A spec with no command, environment, volumes, limits or network.
    pub fn new(name: impl Into<String>, image: Image) -> Self {
        Self {
            name: name.into(),
            image,
            command: Vec::new(),
            env: Vec::new(),
            volumes: Vec::new(),
            files: Vec::new(),
            memory_limit_bytes: None,
            cpu_millis: None,
            network: None,
            hostname: None,
            privileged: false,
        }
    }

    /// The hostname the container gets.
    pub fn hostname(&self) -> &str {
        self.hostname.as_deref().unwrap_or(&self.name)
    }

    /// The command's environment as `KEY=VALUE`, with `PATH` added when missing.
    pub fn env_strings(&self) -> Vec<String> {
        let mut out: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !self.env.iter().any(|(k, _)| k == "PATH") {
            out.insert(0, format!("PATH={DEFAULT_PATH}"));
        }
        out
    }

    /// The `PATH` the command is looked up in.
    pub fn path_env(&self) -> &str {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map_or(DEFAULT_PATH, |(_, v)| v.as_str())
    }

    /// Checks everything that can be checked without touching the board.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name(&self.name).map_err(SpecError::Name)?;
        if let Some(h) = &self.hostname {
            validate_name(h).map_err(SpecError::Hostname)?;
        }
        match &self.image {
            Image::Host if self.command.is_empty() => return Err(SpecError::CommandRequired),
            Image::Template(t) if !is_plain_name(t) => {
                return Err(SpecError::BadTemplate(t.clone()))
            }
            Image::Rootfs(p) => check_path("rootfs", p)?,
            _ => {}
        }
        for (index, arg) in self.command.iter().enumerate() {
            if arg.contains('\0') || (index == 0 && arg.is_empty()) {
                return Err(SpecError::BadArgument { index });
            }
        }
        for (k, v) in &self.env {
            let mut chars = k.chars();
            let first_ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(SpecError::BadEnvKey(k.clone()));
            }
            if v.contains(['\n', '\r', '\0']) {
                return Err(SpecError::BadEnvValue(k.clone()));
            }
        }
        for v in &self.volumes {
            check_path("volume host path", &v.host_path)?;
            check_path("volume container path", &v.container_path)?;
            if is_root(&v.container_path) {
                return Err(SpecError::VolumeOnRoot);
            }
        }
        for f in &self.files {
            check_path("file host path", &f.host_path)?;
            check_path("file container path", &f.container_path)?;
            if is_root(&f.container_path) {
                return Err(SpecError::FileOnRoot);
            }
        }
        if let Some(m) = self.memory_limit_bytes {
            if m < MIN_MEMORY_BYTES {
                return Err(SpecError::MemoryTooSmall(m));
            }
        }
        if let Some(c) = self.cpu_millis {
            if c < MIN_CPU_MILLIS {
                return Err(SpecError::CpuTooSmall(c));
            }
        }
        if let Some(n) = &self.network {
            let ok = (1..=15).contains(&n.bridge.len())
                && n.bridge
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return Err(SpecError::BadBridge(n.bridge.clone()));
            }
            if n.prefix_len > 32 {
                return Err(SpecError::BadPrefix(n.prefix_len));
            }
        }
        Ok(())
    }
}

fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Whether `path` can go into an LXC config line or mount entry as is.
pub(crate) fn is_config_safe_path(path: &Path) -> bool {
    let Some(s) = path.to_str() else {
        return false;
    };
    path.is_absolute()
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && !path.components().any(|c| c == Component::ParentDir)
}

fn is_root(path: &Path) -> bool {
    path.components().all(|c| c == Component::RootDir)
}

fn check_path(what: &'static str, path: &Path) -> Result<(), SpecError> {
    if is_config_safe_path(path) {
        Ok(())
    } else {
        Err(SpecError::BadPath {
            what,
            path: path.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(cmd: &[&str]) -> ContainerSpec {
        let mut s = ContainerSpec::new("web-0", Image::Host);
        s.command = cmd.iter().map(|s| s.to_string()).collect();
        s
    }

    #[test]
    fn a_plain_spec_is_valid() {
        assert_eq!(host(&["/bin/sleep", "10"]).validate(), Ok(()));
        let t = ContainerSpec::new("bb", Image::Template("busybox".into()));
        assert_eq!(t.validate(), Ok(()));
    }

    #[test]
    fn rejects_what_could_break_a_config_line() {
        let mut s = host(&["/bin/sleep"]);
        s.name = "../x".into();
        assert!(matches!(s.validate(), Err(SpecError::Name(_))));

        let mut s = host(&["/bin/sleep"]);
        s.env = vec![("A".into(), "x\nlxc.mount.entry = / x none bind".into())];
        assert_eq!(s.validate(), Err(SpecError::BadEnvValue("A".into())));

        let mut s = host(&["/bin/sleep"]);
        s.env = vec![("A=B".into(), "x".into())];
        assert!(matches!(s.validate(), Err(SpecError::BadEnvKey(_))));

        let mut s = host(&["/bin/sleep"]);
        s.volumes = vec![Volume {
            host_path: "/srv/my data".into(),
            container_path: "/data".into(),
        }];
        assert!(matches!(s.validate(), Err(SpecError::BadPath { .. })));

        let mut s = host(&["/bin/sleep"]);
        s.volumes = vec![Volume {
            host_path: "/srv/data".into(),
            container_path: "/data/../../etc".into(),
        }];
        assert!(matches!(s.validate(), Err(SpecError::BadPath { .. })));

        let mut s = host(&["/bin/sleep"]);
        s.volumes = vec![Volume {
            host_path: "/srv/data".into(),
            container_path: "/".into(),
        }];
        assert_eq!(s.validate(), Err(SpecError::VolumeOnRoot));

        let mut s = host(&["/bin/sleep"]);
        s.files = vec![FileMount {
            host_path: "/var/lib/texu/files/web-0/etc/a b".into(),
            container_path: "/etc/a b".into(),
        }];
        assert!(matches!(s.validate(), Err(SpecError::BadPath { .. })));
        s.files = vec![FileMount {
            host_path: "/var/lib/texu/files/web-0/x".into(),
            container_path: "/".into(),
        }];
        assert_eq!(s.validate(), Err(SpecError::FileOnRoot));

        let t = ContainerSpec::new("bb", Image::Template("../../bin/evil".into()));
        assert!(matches!(t.validate(), Err(SpecError::BadTemplate(_))));

        let mut s = host(&["/bin/sleep"]);
        s.hostname = Some("Bad_Host".into());
        assert!(matches!(s.validate(), Err(SpecError::Hostname(_))));
    }

    #[test]
    fn host_image_needs_a_command() {
        assert_eq!(host(&[]).validate(), Err(SpecError::CommandRequired));
        assert!(matches!(
            host(&[""]).validate(),
            Err(SpecError::BadArgument { index: 0 })
        ));
    }

    #[test]
    fn limits_have_floors() {
        let mut s = host(&["/bin/sleep"]);
        s.memory_limit_bytes = Some(1024);
        assert_eq!(s.validate(), Err(SpecError::MemoryTooSmall(1024)));
        s.memory_limit_bytes = Some(32 << 20);
        s.cpu_millis = Some(5);
        assert_eq!(s.validate(), Err(SpecError::CpuTooSmall(5)));
    }

    #[test]
    fn network_names_are_checked() {
        let mut s = host(&["/bin/sleep"]);
        s.network = Some(NetConfig {
            bridge: "a-very-long-bridge-name".into(),
            address: Ipv4Addr::new(198, 18, 0, 2),
            prefix_len: 24,
            gateway: None,
        });
        assert!(matches!(s.validate(), Err(SpecError::BadBridge(_))));
    }

    #[test]
    fn path_defaults_and_overrides() {
        let mut s = host(&["/bin/sleep"]);
        assert_eq!(s.path_env(), DEFAULT_PATH);
        assert_eq!(s.env_strings(), vec![format!("PATH={DEFAULT_PATH}")]);
        s.env = vec![("PATH".into(), "/opt/bin".into()), ("A".into(), "1".into())];
        assert_eq!(s.path_env(), "/opt/bin");
        assert_eq!(s.env_strings(), vec!["PATH=/opt/bin", "A=1"]);
        assert_eq!(s.hostname(), "web-0");
    }
}
