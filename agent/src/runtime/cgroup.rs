//! Cgroups on the board: which hierarchy holds the memory controller (v1 or v2), and reading a
//! container's CPU use, memory use and OOM kills from its cgroup.
//!
//! A running container's cgroup is found from `/proc/<init pid>/cgroup`, so nothing here
//! assumes where LXC put it. LXC removes the cgroup when the container stops; the stop hook
//! (see [`super::config::hook_script`]) keeps a copy of the OOM record first.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::Usage;

/// Where a cgroup hierarchy is mounted: the mount point and which cgroup path it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// Mount point, e.g. `/sys/fs/cgroup/memory`.
    pub mount_point: PathBuf,
    /// The cgroup path at the mount point (`/` unless the mount shows a sub-tree).
    pub root: String,
}

impl CgroupMount {
    /// The directory of cgroup `path` (as written in `/proc/PID/cgroup`).
    pub fn dir(&self, path: &str) -> PathBuf {
        let rel = path.strip_prefix(self.root.as_str()).unwrap_or(path);
        self.mount_point.join(rel.trim_start_matches('/'))
    }
}

/// The board's cgroup layout, as far as the runtime needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Legacy or hybrid: one hierarchy per controller.
    V1 {
        /// The memory controller's hierarchy.
        memory: CgroupMount,
        /// The cpuacct controller's hierarchy, for CPU use.
        cpuacct: Option<CgroupMount>,
        /// Whether swap accounting (`memory.memsw.*`) exists, so swap can be limited too.
        memsw: bool,
    },
    /// Unified hierarchy with the memory controller.
    V2 {
        /// The unified hierarchy.
        unified: CgroupMount,
        /// Whether `memory.swap.max` exists, so swap can be turned off for containers.
        swap: bool,
    },
}

impl CgroupLayout {
    /// Detects the layout from `/proc/self/mountinfo`. `None` when no memory controller is
    /// mounted (limits then cannot be enforced).
    pub fn detect() -> Option<Self> {
        let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mounts = parse_mountinfo(&text);
        if let Some(memory) = mounts.v1_with("memory") {
            let memsw = memory
                .mount_point
                .join("memory.memsw.limit_in_bytes")
                .exists();
            return Some(Self::V1 {
                memory: memory.clone(),
                cpuacct: mounts.v1_with("cpuacct").cloned(),
                memsw,
            });
        }
        let unified = mounts.v2.clone()?;
        let controllers =
            fs::read_to_string(unified.mount_point.join("cgroup.controllers")).ok()?;
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return None;
        }
        let swap = has_swap_control(&unified.mount_point);
        Some(Self::V2 { unified, swap })
    }

    /// Whether this is the unified (v2) hierarchy.
    pub const fn is_v2(&self) -> bool {
        matches!(self, Self::V2 { .. })
    }

    /// The memory hierarchy's mount and the file holding the OOM kill count.
    pub fn oom_file(&self) -> (&CgroupMount, &'static str) {
        match self {
            Self::V1 { memory, .. } => (memory, "memory.oom_control"),
            Self::V2 { unified, .. } => (unified, "memory.events"),
        }
    }

    /// The cgroup path of `pid` in the memory hierarchy.
    fn memory_path(&self, proc_cgroup: &str) -> Option<String> {
        match self {
            Self::V1 { .. } => proc_cgroup_path(proc_cgroup, Some("memory")),
            Self::V2 { .. } => proc_cgroup_path(proc_cgroup, None),
        }
    }

    /// Reads the CPU and memory use of the cgroup that process `pid` is in.
    pub fn usage_of(&self, pid: u32) -> io::Result<Usage> {
        let proc_cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let mem_path = self.memory_path(&proc_cgroup).ok_or_else(not_found)?;
        match self {
            Self::V1 {
                memory, cpuacct, ..
            } => {
                let memory_bytes = read_u64(&memory.dir(&mem_path).join("memory.usage_in_bytes"))?;
                let cpu_nanos = match cpuacct {
                    Some(m) => {
                        let p = proc_cgroup_path(&proc_cgroup, Some("cpuacct"))
                            .ok_or_else(not_found)?;
                        read_u64(&m.dir(&p).join("cpuacct.usage"))?
                    }
                    None => 0,
                };
                Ok(Usage {
                    cpu_nanos,
                    memory_bytes,
                })
            }
            Self::V2 { unified, .. } => {
                let dir = unified.dir(&mem_path);
                let memory_bytes = read_u64(&dir.join("memory.current"))?;
                let stat = fs::read_to_string(dir.join("cpu.stat"))?;
                let usec = keyed_value(&stat, "usage_usec").ok_or_else(not_found)?;
                Ok(Usage {
                    cpu_nanos: usec.saturating_mul(1000),
                    memory_bytes,
                })
            }
        }
    }

    /// OOM kills recorded by the memory cgroup that process `pid` is in.
    pub fn oom_kills_of(&self, pid: u32) -> io::Result<u64> {
        let proc_cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let path = self.memory_path(&proc_cgroup).ok_or_else(not_found)?;
        let (mount, file) = self.oom_file();
        let text = fs::read_to_string(mount.dir(&path).join(file))?;
        Ok(keyed_value(&text, "oom_kill").unwrap_or(0))
    }

    /// Every mount point the runtime's containers have cgroups under (for cleanup).
    pub fn all_mount_points() -> Vec<PathBuf> {
        let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
            return Vec::new();
        };
        let mounts = parse_mountinfo(&text);
        mounts
            .v1
            .into_iter()
            .map(|(m, _)| m.mount_point)
            .chain(mounts.v2.map(|m| m.mount_point))
            .collect()
    }
}

fn not_found() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "cgroup entry not found")
}

fn read_u64(path: &Path) -> io::Result<u64> {
    let text = fs::read_to_string(path)?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not a number"))
}

fn has_swap_control(unified_root: &Path) -> bool {
    // The root cgroup has no memory.swap.max; look one level down.
    let Ok(entries) = fs::read_dir(unified_root) else {
        return false;
    };
    entries
        .flatten()
        .any(|e| e.path().join("memory.swap.max").exists())
}

/// Cgroup mounts found in a mountinfo text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupMounts {
    /// v1 hierarchies with their mount options (controllers, `name=...`, flags).
    pub v1: Vec<(CgroupMount, Vec<String>)>,
    /// The unified hierarchy, if mounted.
    pub v2: Option<CgroupMount>,
}

impl CgroupMounts {
    /// The v1 hierarchy that has `controller`.
    pub fn v1_with(&self, controller: &str) -> Option<&CgroupMount> {
        self.v1
            .iter()
            .find(|(_, ctrls)| ctrls.iter().any(|c| c == controller))
            .map(|(m, _)| m)
    }
}

/// The cgroups a process is in, as the `cgroup.procs` files to write its pid into to return.
///
/// liblxc's daemonized `start` records the calling process as a "transient" process and the
/// new container's monitor moves it into the monitor's cgroup (meant for `lxc-start`, which
/// exits). A long-lived caller such as the agent must move itself back after each start, or
/// it would live in a container's cgroup and keep LXC from deleting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessCgroups {
    procs_files: Vec<PathBuf>,
}

impl ProcessCgroups {
    /// The cgroups this process is in now.
    pub fn current() -> Option<Self> {
        let proc_cgroup = fs::read_to_string("/proc/self/cgroup").ok()?;
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
        Some(Self::from_texts(&proc_cgroup, &mountinfo))
    }

    /// Maps each line of a `/proc/PID/cgroup` text to its hierarchy's mount.
    pub fn from_texts(proc_cgroup: &str, mountinfo: &str) -> Self {
        let mounts = parse_mountinfo(mountinfo);
        let procs_files = proc_cgroup
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, ':');
                let _id = parts.next()?;
                let ctrls = parts.next()?;
                let path = parts.next()?;
                let mount = if ctrls.is_empty() {
                    mounts.v2.as_ref()?
                } else {
                    mounts
                        .v1
                        .iter()
                        .find(|(_, opts)| ctrls.split(',').all(|c| opts.iter().any(|o| o == c)))
                        .map(|(m, _)| m)?
                };
                Some(mount.dir(path).join("cgroup.procs"))
            })
            .collect();
        Self { procs_files }
    }

    /// The `cgroup.procs` files.
    pub fn procs_files(&self) -> &[PathBuf] {
        &self.procs_files
    }

    /// Moves this process (all its threads) back into these cgroups. Tries every hierarchy;
    /// returns the first error.
    pub fn rejoin(&self) -> io::Result<()> {
        let pid = std::process::id().to_string();
        let mut first_err = None;
        for file in &self.procs_files {
            if let Err(e) = fs::write(file, &pid) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Parses `/proc/self/mountinfo` for cgroup mounts.
pub fn parse_mountinfo(text: &str) -> CgroupMounts {
    let mut out = CgroupMounts::default();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(mount_point), Some(fstype)) =
            (left.get(3), left.get(4), right.first())
        else {
            continue;
        };
        let mount = CgroupMount {
            mount_point: PathBuf::from(unescape_octal(mount_point)),
            root: unescape_octal(root),
        };
        match *fstype {
            "cgroup" => {
                // Controllers, `name=...` of named hierarchies, and other options.
                let ctrls = right
                    .get(2)
                    .map(|opts| {
                        opts.split(',')
                            .filter(|o| !matches!(*o, "rw" | "ro"))
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                out.v1.push((mount, ctrls));
            }
            "cgroup2" if out.v2.is_none() => out.v2 = Some(mount),
            _ => {}
        }
    }
    out
}

/// Decodes the `\040`-style escapes of mountinfo and fstab fields.
pub fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let (b'\\', Some(digits)) = (bytes[i], bytes.get(i + 1..i + 4)) {
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup path in `/proc/PID/cgroup` text for a v1 `controller`, or the unified (`0::`)
/// entry when `controller` is `None`.
pub fn proc_cgroup_path(text: &str, controller: Option<&str>) -> Option<String> {
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let _id = parts.next()?;
        let ctrls = parts.next()?;
        let path = parts.next()?;
        let hit = match controller {
            Some(c) => ctrls.split(',').any(|x| x == c),
            None => ctrls.is_empty(),
        };
        hit.then(|| path.to_owned())
    })
}

/// The value of `key` in a flat-keyed cgroup file (`key value` lines, as in
/// `memory.oom_control`, `memory.events` and `cpu.stat`).
pub fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
31 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn finds_v1_controllers_in_a_hybrid_layout() {
        let m = parse_mountinfo(HYBRID);
        assert_eq!(
            m.v1_with("memory").map(|m| m.mount_point.clone()),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            m.v1_with("cpuacct").map(|m| m.mount_point.clone()),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(
            m.v1_with("name=systemd").map(|m| m.mount_point.clone()),
            Some(PathBuf::from("/sys/fs/cgroup/systemd"))
        );
        assert_eq!(
            m.v2.map(|m| m.mount_point),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn maps_own_cgroups_to_procs_files() {
        let own =
            "11:name=systemd:/system.slice/texu.service\n4:memory:/system.slice/texu.service\n\
                   2:cpu,cpuacct:/system.slice/texu.service\n0::/system.slice/texu.service\n";
        let pc = ProcessCgroups::from_texts(own, HYBRID);
        let files: Vec<String> = pc
            .procs_files()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            files,
            vec![
                "/sys/fs/cgroup/systemd/system.slice/texu.service/cgroup.procs",
                "/sys/fs/cgroup/memory/system.slice/texu.service/cgroup.procs",
                "/sys/fs/cgroup/cpu,cpuacct/system.slice/texu.service/cgroup.procs",
                "/sys/fs/cgroup/unified/system.slice/texu.service/cgroup.procs",
            ]
        );
    }

    #[test]
    fn finds_a_pure_v2_layout() {
        let m = parse_mountinfo(
            "30 25 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        assert!(m.v1.is_empty());
        assert_eq!(
            m.v2.map(|m| m.mount_point),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn mounts_of_a_subtree_map_paths() {
        let m = CgroupMount {
            mount_point: "/sys/fs/cgroup/memory".into(),
            root: "/outer".into(),
        };
        assert_eq!(
            m.dir("/outer/texu-1/web"),
            PathBuf::from("/sys/fs/cgroup/memory/texu-1/web")
        );
    }

    #[test]
    fn reads_proc_cgroup_lines() {
        let text = "4:memory:/texu-ab/web\n2:cpu,cpuacct:/texu-ab/web\n0::/texu-ab/web2\n";
        assert_eq!(
            proc_cgroup_path(text, Some("memory")).as_deref(),
            Some("/texu-ab/web")
        );
        assert_eq!(
            proc_cgroup_path(text, Some("cpuacct")).as_deref(),
            Some("/texu-ab/web")
        );
        assert_eq!(
            proc_cgroup_path(text, None).as_deref(),
            Some("/texu-ab/web2")
        );
        assert_eq!(proc_cgroup_path(text, Some("pids")), None);
    }

    #[test]
    fn reads_oom_kills_from_v1_and_v2_files() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_value(v1, "oom_kill"), Some(3));
        assert_eq!(keyed_value(v2, "oom_kill"), Some(1));
        assert_eq!(
            keyed_value("usage_usec 1500\nuser_usec 1000\n", "usage_usec"),
            Some(1500)
        );
        assert_eq!(keyed_value("", "oom_kill"), None);
    }

    #[test]
    fn unescapes_mount_fields() {
        assert_eq!(unescape_octal("/mnt/my\\040disk"), "/mnt/my disk");
        assert_eq!(unescape_octal("/plain"), "/plain");
        assert_eq!(unescape_octal("/trailing\\04"), "/trailing\\04");
    }
}
