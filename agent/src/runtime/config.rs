//! From a [`ContainerSpec`] to LXC configuration: the config items, the hook script, and the
//! `/etc/hostname` and `/etc/hosts` files. Pure functions of the spec and of what the board
//! looks like ([`HostLayout`]), so they are tested without LXC.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use super::cgroup::CgroupLayout;
use super::idmap::IdMap;
use super::{ContainerSpec, Image};

/// The board's directories a host-image container sees, read-only, in mount order.
pub const HOST_DIRS: [&str; 6] = ["usr", "lib", "lib64", "bin", "sbin", "etc"];

/// LXC's stock security settings (capabilities, devices cgroup, seccomp), if installed.
const COMMON_CONF: &str = "/usr/share/lxc/config/common.conf";

/// Capabilities an unprivileged container does without: LXC's own list (common.conf), the
/// rest that only matter to the board's kernel, clock, firmware or audit log, and `sys_admin`:
/// inside a user namespace it reaches only the container's own mounts, but among those are
/// its read-only binds of the board's /usr, /lib and /etc, which it could remount read-write.
pub const DROPPED_CAPS: &str = "audit_control audit_read block_suspend mac_admin mac_override \
                                sys_admin sys_boot sys_module sys_pacct sys_rawio sys_time \
                                syslog wake_alarm";

/// What an unprivileged container mounts for itself: /proc with its /proc/sys read-only,
/// /sys read-only, its own cgroup read-write.
pub const UNPRIVILEGED_MOUNT_AUTO: &str = "proc:mixed sys:ro cgroup:mixed";

/// Name of the hook script in a container's directory.
pub const HOOK_FILE: &str = "texu-hook";
/// Where the stop hook saves the memory cgroup's OOM record.
pub const OOM_RECORD_FILE: &str = "texu.oom";
/// LXC's log for the container.
pub const LOG_FILE: &str = "lxc.log";

/// What one of the board's top-level directories is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEntry {
    /// A real directory: bind-mounted read-only.
    Dir,
    /// A symlink (merged /usr: `/bin -> usr/bin`): the same symlink goes into the rootfs.
    Symlink(PathBuf),
    /// Absent on this board.
    Missing,
}

/// What the board looks like, as far as container configs depend on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLayout {
    /// Cgroups, if a memory controller is mounted.
    pub cgroup: Option<CgroupLayout>,
    /// Each of [`HOST_DIRS`] with what it is on the board.
    pub dirs: Vec<(&'static str, HostEntry)>,
    /// LXC's common.conf, included by host and rootfs images.
    pub common_conf: Option<PathBuf>,
    /// Whether the board has /etc/hostname and /etc/hosts to mount the container's own over.
    pub etc_files: bool,
    /// Root's subordinate ids, which unprivileged containers' ids map onto.
    pub idmap: Option<IdMap>,
}

impl HostLayout {
    /// Looks at this board.
    pub fn detect() -> Self {
        let dirs = HOST_DIRS
            .iter()
            .map(|d| {
                let path = Path::new("/").join(d);
                let entry = match fs::symlink_metadata(&path) {
                    Ok(m) if m.file_type().is_symlink() => match fs::read_link(&path) {
                        Ok(t) => HostEntry::Symlink(t),
                        Err(_) => HostEntry::Missing,
                    },
                    Ok(m) if m.is_dir() => HostEntry::Dir,
                    _ => HostEntry::Missing,
                };
                (*d, entry)
            })
            .collect();
        Self {
            cgroup: CgroupLayout::detect(),
            dirs,
            common_conf: Some(PathBuf::from(COMMON_CONF)).filter(|p| p.is_file()),
            etc_files: Path::new("/etc/hostname").is_file() && Path::new("/etc/hosts").is_file(),
            idmap: IdMap::detect().ok(),
        }
    }
}

/// Where one container's config points.
#[derive(Debug, Clone, Copy)]
pub struct ConfigContext<'a> {
    /// `<lxcpath>/<name>`.
    pub container_dir: &'a Path,
    /// The runtime's cgroup directory (one per LXC path), e.g. `texu-1a2b...`.
    pub cgroup_prefix: &'a str,
    /// The board.
    pub host: &'a HostLayout,
}

/// One `key = value` line of an LXC config.
pub type ConfigItem = (&'static str, String);

/// The config items for `spec`, in the order they must be set. For a template image these
/// come after the template's own config, once its networks are cleared (`lxc.net`).
pub fn config_items(spec: &ContainerSpec, ctx: &ConfigContext<'_>) -> Vec<ConfigItem> {
    let dir = ctx.container_dir.display();
    let mut items: Vec<ConfigItem> = Vec::new();

    match &spec.image {
        Image::Host => {
            base_system_items(&mut items, ctx, &format!("dir:{dir}/rootfs"));
            for (d, entry) in &ctx.host.dirs {
                if *entry == HostEntry::Dir {
                    items.push((
                        "lxc.mount.entry",
                        format!("/{d} {d} none ro,bind,nodev,create=dir 0 0"),
                    ));
                }
            }
            if ctx.host.etc_files {
                for f in ["hostname", "hosts"] {
                    items.push((
                        "lxc.mount.entry",
                        format!("{dir}/{f} etc/{f} none ro,bind 0 0"),
                    ));
                }
            }
            // dev/shm: POSIX shared memory (Apache's slotmem, for one), absent from autodev.
            for (target, mode) in [
                ("run", "755"),
                ("tmp", "1777"),
                ("var", "755"),
                ("dev/shm", "1777"),
            ] {
                items.push((
                    "lxc.mount.entry",
                    format!("tmpfs {target} tmpfs rw,nosuid,nodev,mode={mode},create=dir 0 0"),
                ));
            }
            items.push((
                "lxc.mount.entry",
                format!("{dir}/home home none rw,bind,create=dir 0 0"),
            ));
        }
        Image::Rootfs(path) => {
            base_system_items(&mut items, ctx, &format!("dir:{}", path.display()));
        }
        Image::Template(_) => {}
    }

    items.push(("lxc.uts.name", spec.hostname().to_owned()));
    if !spec.privileged {
        security_items(&mut items, ctx.host.idmap.as_ref());
    }

    match &spec.network {
        None => {
            // Only a loopback interface; "up" is what brings it up for this type.
            items.push(("lxc.net.0.type", "empty".to_owned()));
            items.push(("lxc.net.0.flags", "up".to_owned()));
        }
        Some(n) => {
            items.push(("lxc.net.0.type", "veth".to_owned()));
            items.push(("lxc.net.0.link", n.bridge.clone()));
            items.push(("lxc.net.0.name", "eth0".to_owned()));
            // A MAC derived from the address: the same after every restart, so neighbours'
            // ARP caches stay right and a restarted container answers at once.
            let [a, b, c, d] = n.address.octets();
            items.push((
                "lxc.net.0.hwaddr",
                format!("02:54:{a:02x}:{b:02x}:{c:02x}:{d:02x}"),
            ));
            items.push(("lxc.net.0.flags", "up".to_owned()));
            items.push((
                "lxc.net.0.ipv4.address",
                format!("{}/{}", n.address, n.prefix_len),
            ));
            if let Some(gw) = n.gateway {
                items.push(("lxc.net.0.ipv4.gateway", gw.to_string()));
            }
        }
    }

    // The cgroup path is ours, not LXC's default `lxc.payload.<name>` (which two LXC paths on
    // one board would share), and the stop hook finds the container's cgroup from the
    // monitor's by dropping the `.monitor` suffix.
    let cg = format!("{}/{}", ctx.cgroup_prefix, spec.name);
    items.push(("lxc.cgroup.dir.monitor", format!("{cg}.monitor")));
    items.push(("lxc.cgroup.dir.container", cg));
    items.extend(limit_items(spec, ctx.host.cgroup.as_ref()));

    for env in spec.env_strings() {
        items.push(("lxc.environment", env));
    }
    for v in &spec.volumes {
        items.push(bind_entry(&v.host_path, &v.container_path, VOLUME_OPTIONS));
    }
    // After the volumes: a file may sit in a volume's directory.
    for f in &spec.files {
        items.push(bind_entry(&f.host_path, &f.container_path, FILE_OPTIONS));
    }

    items.push(("lxc.log.file", format!("{dir}/{LOG_FILE}")));
    items.push(("lxc.log.level", "WARN".to_owned()));
    items.push(("lxc.hook.version", "1".to_owned()));
    items.push(("lxc.hook.stop", format!("{dir}/{HOOK_FILE}")));
    if spec.image == Image::Host {
        items.push(("lxc.hook.mount", format!("{dir}/{HOOK_FILE}")));
    }
    items
}

/// Mount options of a volume. `create=dir` stays only where the agent cannot make the mount
/// point itself (in a filesystem mounted fresh at start; see `targets`).
pub const VOLUME_OPTIONS: &str = "rw,bind,create=dir";
/// Mount options of a rendered file (see [`VOLUME_OPTIONS`]).
pub const FILE_OPTIONS: &str = "ro,bind,create=file";

/// A mount entry binding `host` at the container path `target`.
pub fn bind_entry(host: &Path, target: &Path, options: &str) -> ConfigItem {
    let target = target.display().to_string();
    let target = target.trim_start_matches('/');
    (
        "lxc.mount.entry",
        format!("{} {target} none {options} 0 0", host.display()),
    )
}

/// What makes a container unprivileged: its ids mapped onto root's subordinate range, the
/// capabilities it does without dropped, no gaining privileges through setuid files, and only
/// read-only views of the board's /proc/sys and /sys (after a template's or common.conf's
/// `lxc.mount.auto`, which the empty value clears).
fn security_items(items: &mut Vec<ConfigItem>, idmap: Option<&IdMap>) {
    if let Some(map) = idmap {
        items.extend(map.config_items());
    }
    items.push(("lxc.cap.drop", DROPPED_CAPS.to_owned()));
    items.push(("lxc.no_new_privs", "1".to_owned()));
    items.push(("lxc.mount.auto", String::new()));
    items.push(("lxc.mount.auto", UNPRIVILEGED_MOUNT_AUTO.to_owned()));
}

/// Items every container that is not built by a template needs.
fn base_system_items(items: &mut Vec<ConfigItem>, ctx: &ConfigContext<'_>, rootfs: &str) {
    match &ctx.host.common_conf {
        Some(conf) => items.push(("lxc.include", conf.display().to_string())),
        None => items.push((
            "lxc.mount.auto",
            "proc:mixed sys:ro cgroup:mixed".to_owned(),
        )),
    }
    items.push(("lxc.rootfs.path", rootfs.to_owned()));
    items.push(("lxc.autodev", "1".to_owned()));
    items.push(("lxc.tty.max", "0".to_owned()));
    items.push(("lxc.pty.max", "16".to_owned()));
}

/// Memory and CPU limit items for the board's cgroup hierarchy (none without cgroups).
pub fn limit_items(spec: &ContainerSpec, cgroup: Option<&CgroupLayout>) -> Vec<ConfigItem> {
    let mut items = Vec::new();
    let Some(cgroup) = cgroup else {
        return items;
    };
    const PERIOD_US: u64 = 100_000;
    let quota = spec.cpu_millis.map(|m| u64::from(m) * PERIOD_US / 1000);
    match cgroup {
        CgroupLayout::V1 { memsw, .. } => {
            if let Some(m) = spec.memory_limit_bytes {
                items.push(("lxc.cgroup.memory.limit_in_bytes", m.to_string()));
                if *memsw {
                    // Equal to the limit: no swapping past it, the OOM killer acts instead.
                    items.push(("lxc.cgroup.memory.memsw.limit_in_bytes", m.to_string()));
                }
            }
            if let Some(q) = quota {
                items.push(("lxc.cgroup.cpu.cfs_period_us", PERIOD_US.to_string()));
                items.push(("lxc.cgroup.cpu.cfs_quota_us", q.to_string()));
            }
        }
        CgroupLayout::V2 { swap, .. } => {
            if let Some(m) = spec.memory_limit_bytes {
                items.push(("lxc.cgroup2.memory.max", m.to_string()));
                if *swap {
                    items.push(("lxc.cgroup2.memory.swap.max", "0".to_owned()));
                }
            }
            if let Some(q) = quota {
                items.push(("lxc.cgroup2.cpu.max", format!("{q} {PERIOD_US}")));
            }
        }
    }
    items
}

/// The container's `/etc/hosts`.
pub fn hosts_file(spec: &ContainerSpec) -> String {
    let h = spec.hostname();
    let mut s = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{h}\n"
    );
    if let Some(n) = &spec.network {
        let _ = writeln!(s, "{}\t{h}", n.address);
    }
    s
}

/// The container's `/etc/hostname`.
pub fn hostname_file(spec: &ContainerSpec) -> String {
    format!("{}\n", spec.hostname())
}

/// Quotes `s` for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The script LXC runs as the container's hooks (`lxc.hook.version = 1`: facts come in
/// `LXC_*` environment variables).
///
/// - stop: LXC deletes the container's cgroup right after this hook, so it copies the memory
///   cgroup's OOM record into the container directory first. It runs in the monitor, whose
///   cgroup is the container's with a `.monitor` suffix (see [`config_items`]).
/// - mount (host image): the /var skeleton on the container's fresh tmpfs /var.
pub fn hook_script(cgroup: Option<&CgroupLayout>) -> String {
    let mut s = String::from(
        "#!/bin/sh\n\
         # Written by texu. LXC runs it as the container's hooks (lxc.hook.version = 1).\n\
         dir=$(dirname \"$LXC_CONFIG_FILE\")\n\
         case \"$LXC_HOOK_TYPE\" in\n\
         mount)\n\
         \tr=$LXC_ROOTFS_MOUNT\n\
         \tmkdir -p \"$r/var/log\" \"$r/var/lib\" \"$r/var/cache\" \"$r/var/tmp\" \"$r/var/spool\" \"$r/run/lock\" || exit 1\n\
         \tchmod 1777 \"$r/var/tmp\" \"$r/run/lock\" || exit 1\n\
         \tln -sfn /run \"$r/var/run\" && ln -sfn /run/lock \"$r/var/lock\" || exit 1\n\
         \t;;\n\
         stop)\n",
    );
    if let Some(layout) = cgroup {
        let (mount, file) = layout.oom_file();
        let pattern = if layout.is_v2() { "\"\"" } else { "*,memory,*" };
        let ctrl = if layout.is_v2() { "$c" } else { ",$c," };
        let _ = write!(
            s,
            "\tcg=\n\
             \twhile IFS=: read -r _ c p; do\n\
             \t\tcase \"{ctrl}\" in {pattern}) cg=$p ;; esac\n\
             \tdone < /proc/self/cgroup\n\
             \tcase \"$cg\" in *.monitor) ;; *) exit 0 ;; esac\n\
             \tcg=${{cg%.monitor}}\n\
             \troot={root}\n\
             \tmroot={mroot}\n\
             \tcase \"$cg\" in \"$mroot\"/*) cg=${{cg#\"$mroot\"}} ;; esac\n\
             \tcat \"$root$cg/{file}\" > \"$dir/{OOM_RECORD_FILE}.tmp\" 2>/dev/null &&\n\
             \t\tmv -f \"$dir/{OOM_RECORD_FILE}.tmp\" \"$dir/{OOM_RECORD_FILE}\"\n",
            root = sh_quote(&mount.mount_point.display().to_string()),
            mroot = sh_quote(mount.root.trim_end_matches('/')),
        );
    }
    s.push_str("\t;;\nesac\nexit 0\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::cgroup::CgroupMount;
    use crate::runtime::{FileMount, NetConfig, Volume};
    use std::net::Ipv4Addr;

    fn v1() -> CgroupLayout {
        CgroupLayout::V1 {
            memory: CgroupMount {
                mount_point: "/sys/fs/cgroup/memory".into(),
                root: "/".into(),
            },
            cpuacct: None,
            memsw: true,
        }
    }

    fn v2() -> CgroupLayout {
        CgroupLayout::V2 {
            unified: CgroupMount {
                mount_point: "/sys/fs/cgroup".into(),
                root: "/".into(),
            },
            swap: true,
        }
    }

    fn layout(cgroup: Option<CgroupLayout>) -> HostLayout {
        HostLayout {
            cgroup,
            dirs: vec![
                ("usr", HostEntry::Dir),
                ("lib", HostEntry::Dir),
                ("lib64", HostEntry::Missing),
                ("bin", HostEntry::Symlink("usr/bin".into())),
                ("sbin", HostEntry::Symlink("usr/sbin".into())),
                ("etc", HostEntry::Dir),
            ],
            common_conf: Some(COMMON_CONF.into()),
            etc_files: true,
            idmap: Some(IdMap {
                uid_start: 1_000_000,
                gid_start: 1_000_000,
                count: 65536,
            }),
        }
    }

    fn items_for(spec: &ContainerSpec, host: &HostLayout) -> Vec<(String, String)> {
        let ctx = ConfigContext {
            container_dir: Path::new("/var/lib/texu/lxc/web-0"),
            cgroup_prefix: "texu-00ff",
            host,
        };
        config_items(spec, &ctx)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }

    fn values<'a>(items: &'a [(String, String)], key: &str) -> Vec<&'a str> {
        items
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn host_spec() -> ContainerSpec {
        let mut s = ContainerSpec::new("web-0", Image::Host);
        s.command = vec!["/usr/sbin/apache2ctl".into(), "-DFOREGROUND".into()];
        s
    }

    #[test]
    fn host_image_binds_the_board_read_only_and_gets_its_own_writable_dirs() {
        let items = items_for(&host_spec(), &layout(Some(v1())));
        let mounts = values(&items, "lxc.mount.entry");
        assert_eq!(
            mounts,
            vec![
                "/usr usr none ro,bind,nodev,create=dir 0 0",
                "/lib lib none ro,bind,nodev,create=dir 0 0",
                "/etc etc none ro,bind,nodev,create=dir 0 0",
                "/var/lib/texu/lxc/web-0/hostname etc/hostname none ro,bind 0 0",
                "/var/lib/texu/lxc/web-0/hosts etc/hosts none ro,bind 0 0",
                "tmpfs run tmpfs rw,nosuid,nodev,mode=755,create=dir 0 0",
                "tmpfs tmp tmpfs rw,nosuid,nodev,mode=1777,create=dir 0 0",
                "tmpfs var tmpfs rw,nosuid,nodev,mode=755,create=dir 0 0",
                "tmpfs dev/shm tmpfs rw,nosuid,nodev,mode=1777,create=dir 0 0",
                "/var/lib/texu/lxc/web-0/home home none rw,bind,create=dir 0 0",
            ]
        );
        assert_eq!(
            values(&items, "lxc.rootfs.path"),
            vec!["dir:/var/lib/texu/lxc/web-0/rootfs"]
        );
        assert_eq!(values(&items, "lxc.include"), vec![COMMON_CONF]);
        assert_eq!(
            values(&items, "lxc.hook.mount"),
            vec!["/var/lib/texu/lxc/web-0/texu-hook"]
        );
        assert_eq!(values(&items, "lxc.uts.name"), vec!["web-0"]);
    }

    #[test]
    fn no_network_means_an_empty_network() {
        let items = items_for(&host_spec(), &layout(None));
        assert_eq!(values(&items, "lxc.net.0.type"), vec!["empty"]);
        assert!(values(&items, "lxc.net.0.hwaddr").is_empty());
        assert_eq!(values(&items, "lxc.net.0.flags"), vec!["up"]);
        assert!(values(&items, "lxc.net.0.link").is_empty());
    }

    #[test]
    fn a_network_is_a_veth_on_the_bridge_with_a_fixed_address() {
        let mut spec = host_spec();
        spec.network = Some(NetConfig {
            bridge: "texu0".into(),
            address: Ipv4Addr::new(198, 19, 1, 5),
            prefix_len: 24,
            gateway: Some(Ipv4Addr::new(198, 19, 1, 1)),
        });
        let items = items_for(&spec, &layout(None));
        assert_eq!(values(&items, "lxc.net.0.type"), vec!["veth"]);
        assert_eq!(values(&items, "lxc.net.0.link"), vec!["texu0"]);
        assert_eq!(
            values(&items, "lxc.net.0.ipv4.address"),
            vec!["198.19.1.5/24"]
        );
        assert_eq!(values(&items, "lxc.net.0.ipv4.gateway"), vec!["198.19.1.1"]);
        assert_eq!(
            values(&items, "lxc.net.0.hwaddr"),
            vec!["02:54:c6:13:01:05"],
            "a MAC that stays the same across restarts"
        );
        assert!(hosts_file(&spec).contains("198.19.1.5\tweb-0\n"));
    }

    #[test]
    fn limits_follow_the_cgroup_hierarchy() {
        let mut spec = host_spec();
        spec.memory_limit_bytes = Some(32 << 20);
        spec.cpu_millis = Some(500);

        let i1 = items_for(&spec, &layout(Some(v1())));
        assert_eq!(
            values(&i1, "lxc.cgroup.memory.limit_in_bytes"),
            vec!["33554432"]
        );
        assert_eq!(
            values(&i1, "lxc.cgroup.memory.memsw.limit_in_bytes"),
            vec!["33554432"]
        );
        assert_eq!(values(&i1, "lxc.cgroup.cpu.cfs_quota_us"), vec!["50000"]);
        assert_eq!(values(&i1, "lxc.cgroup.cpu.cfs_period_us"), vec!["100000"]);
        assert!(values(&i1, "lxc.cgroup2.memory.max").is_empty());
        // The memsw limit must come after the memory limit (the kernel wants memsw >= limit).
        let pos = |k: &str| i1.iter().position(|(x, _)| x == k);
        assert!(
            pos("lxc.cgroup.memory.limit_in_bytes") < pos("lxc.cgroup.memory.memsw.limit_in_bytes")
        );

        let i2 = items_for(&spec, &layout(Some(v2())));
        assert_eq!(values(&i2, "lxc.cgroup2.memory.max"), vec!["33554432"]);
        assert_eq!(values(&i2, "lxc.cgroup2.memory.swap.max"), vec!["0"]);
        assert_eq!(values(&i2, "lxc.cgroup2.cpu.max"), vec!["50000 100000"]);
        assert!(values(&i2, "lxc.cgroup.memory.limit_in_bytes").is_empty());
    }

    #[test]
    fn cgroups_live_under_the_runtime_prefix() {
        let items = items_for(&host_spec(), &layout(Some(v1())));
        assert_eq!(
            values(&items, "lxc.cgroup.dir.container"),
            vec!["texu-00ff/web-0"]
        );
        assert_eq!(
            values(&items, "lxc.cgroup.dir.monitor"),
            vec!["texu-00ff/web-0.monitor"]
        );
    }

    #[test]
    fn environment_and_volumes() {
        let mut spec = host_spec();
        spec.env = vec![("MODE".into(), "prod x=1".into())];
        spec.volumes = vec![Volume {
            host_path: "/var/lib/texu/volumes/web-0/data".into(),
            container_path: "/srv/data".into(),
        }];
        let items = items_for(&spec, &layout(None));
        assert_eq!(
            values(&items, "lxc.environment"),
            vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "MODE=prod x=1"
            ]
        );
        assert!(values(&items, "lxc.mount.entry")
            .contains(&"/var/lib/texu/volumes/web-0/data srv/data none rw,bind,create=dir 0 0"));
    }

    #[test]
    fn files_are_read_only_binds_after_everything_else() {
        for image in [
            Image::Host,
            Image::Template("busybox".into()),
            Image::Rootfs("/var/lib/texu/rootfs/web-0".into()),
        ] {
            let mut spec = host_spec();
            spec.image = image;
            spec.volumes = vec![Volume {
                host_path: "/var/lib/texu/volumes/web-0/data".into(),
                container_path: "/srv/data".into(),
            }];
            spec.files = vec![FileMount {
                host_path: "/var/lib/texu/files/web-0/etc/texu/identity".into(),
                container_path: "/etc/texu/identity".into(),
            }];
            let items = items_for(&spec, &layout(None));
            let mounts = values(&items, "lxc.mount.entry");
            assert_eq!(
                mounts.last(),
                Some(&"/var/lib/texu/files/web-0/etc/texu/identity etc/texu/identity none ro,bind,create=file 0 0"),
                "{:?}",
                spec.image
            );
        }
    }

    #[test]
    fn template_images_get_no_rootfs_or_mount_items_of_ours() {
        let spec = ContainerSpec::new("bb", Image::Template("busybox".into()));
        let items = items_for(&spec, &layout(None));
        assert!(values(&items, "lxc.rootfs.path").is_empty());
        assert!(values(&items, "lxc.mount.entry").is_empty());
        assert!(values(&items, "lxc.hook.mount").is_empty());
        assert_eq!(values(&items, "lxc.hook.stop").len(), 1);
    }

    #[test]
    fn no_item_value_spans_lines() {
        let mut spec = host_spec();
        spec.memory_limit_bytes = Some(64 << 20);
        for (k, v) in items_for(&spec, &layout(Some(v1()))) {
            assert!(!v.contains('\n'), "{k} = {v:?}");
            assert!(!v.is_empty() || k == "lxc.mount.auto", "{k} is empty");
        }
    }

    #[test]
    fn containers_are_unprivileged_unless_asked() {
        for image in [Image::Host, Image::Template("busybox".into())] {
            let mut spec = host_spec();
            spec.image = image;
            let items = items_for(&spec, &layout(None));
            assert_eq!(
                values(&items, "lxc.idmap"),
                vec!["u 0 1000000 65536", "g 0 1000000 65536"]
            );
            assert_eq!(values(&items, "lxc.no_new_privs"), vec!["1"]);
            let dropped = values(&items, "lxc.cap.drop").join(" ");
            for cap in [
                "sys_module",
                "sys_time",
                "sys_rawio",
                "sys_boot",
                "mac_admin",
            ] {
                assert!(dropped.split(' ').any(|c| c == cap), "{cap} in {dropped}");
            }
            // Whatever a template or common.conf mounted, the last word is read-only /sys.
            let auto = values(&items, "lxc.mount.auto");
            assert_eq!(auto[auto.len() - 2..], ["", UNPRIVILEGED_MOUNT_AUTO]);

            spec.privileged = true;
            let items = items_for(&spec, &layout(None));
            assert!(values(&items, "lxc.idmap").is_empty());
            assert!(values(&items, "lxc.no_new_privs").is_empty());
        }
    }

    #[test]
    fn hook_reads_the_right_oom_file() {
        let s1 = hook_script(Some(&v1()));
        assert!(s1.contains("*,memory,*"));
        assert!(s1.contains("memory.oom_control"));
        assert!(s1.contains("root='/sys/fs/cgroup/memory'"));
        let s2 = hook_script(Some(&v2()));
        assert!(s2.contains("memory.events"));
        let s0 = hook_script(None);
        assert!(!s0.contains("oom"));
        assert!(s0.starts_with("#!/bin/sh\n"));
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    }
}
