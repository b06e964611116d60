//! The tests' board: a temporary LXC path with a runtime that destroys what a test leaves,
//! what the board must have, container specs and small waits.

use super::*;

/// Fails (never skips) when the board cannot run these tests.
pub(crate) fn require_lxc() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests start real LXC containers and must run as root"
    );
    assert!(
        !lxc::version().is_empty(),
        "liblxc did not report a version: is liblxc (package lxc) installed?"
    );
    for (path, what) in [
        (
            "/usr/share/lxc/templates/lxc-busybox",
            "the LXC busybox template (lxc-templates)",
        ),
        ("/bin/busybox", "busybox (busybox-static)"),
        ("/sbin/init.lxc.static", "LXC's static init (package lxc)"),
    ] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: install {what}"
        );
    }
}

/// A temporary LXC path with a runtime; stops and destroys every container in it on drop.
pub(crate) struct Board {
    pub(crate) rt: LxcRuntime,
    pub(crate) lxcpath: PathBuf,
    _dir: TempDir,
}

impl Board {
    pub(crate) fn new() -> Self {
        require_lxc();
        let dir = tempfile::Builder::new()
            .prefix("texu-lxc-test-")
            .tempdir()
            .expect("temporary directory");
        // Unprivileged containers' root walks through it (tempdir makes it 0700).
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .expect("chmod the temporary directory");
        let lxcpath = dir.path().join("lxc");
        let rt = LxcRuntime::new(&lxcpath).expect("LXC runtime");
        let lxcpath = rt.lxcpath().to_owned();
        Self {
            rt,
            lxcpath,
            _dir: dir,
        }
    }

    /// A directory for volumes, outside the LXC path.
    pub(crate) fn volume_dir(&self, name: &str) -> PathBuf {
        let p = self._dir.path().join("volumes").join(name);
        std::fs::create_dir_all(&p).expect("volume directory");
        p
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        // Straight liblxc calls: this runs inside the test's runtime, so no async here.
        for name in lxc::list_defined(&self.lxcpath).unwrap_or_default() {
            if let Ok(c) = LxcContainer::new(&name, &self.lxcpath) {
                if c.is_running().unwrap_or(false) {
                    let _ = c.stop();
                    let _ = c.wait(LxcState::Stopped, Duration::from_secs(10));
                }
                // A container whose monitor liblxc cannot reach: kill its recorded init.
                if let Some(pid) = recorded_init(&self.lxcpath.join(&name)) {
                    if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
                if let Err(e) = c.destroy() {
                    eprintln!("cleanup: could not destroy {name}: {e}");
                }
            }
        }
        self.rt.remove_cgroup_dirs();
        lxc::remove_lock_dir(&self.lxcpath);
    }
}

/// The init pid the runtime recorded in a container directory, if any.
pub(crate) fn recorded_init(dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(dir.join("texu.init")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("init "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A container name unique to this test process.
pub(crate) fn unique(base: &str) -> String {
    format!("{base}-{}", std::process::id())
}

pub(crate) fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

pub(crate) fn busybox(name: &str, command: &[&str]) -> ContainerSpec {
    let mut s = ContainerSpec::new(name, Image::Template("busybox".into()));
    s.command = argv(command);
    s
}

pub(crate) fn host(name: &str, command: &[&str]) -> ContainerSpec {
    let mut s = ContainerSpec::new(name, Image::Host);
    s.command = argv(command);
    s
}

/// Polls the runtime until `done` holds for the container's phase, or panics after `limit`.
pub(crate) async fn wait_for_phase(rt: &LxcRuntime, name: &str, phase: Phase, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let st = rt.state(name).await.expect("state");
        if st.as_ref().map(|s| s.phase) == Some(phase) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not reach {phase:?} within {limit:?}: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn exec_ok(rt: &LxcRuntime, name: &str, args: &[&str]) -> String {
    let out = rt
        .exec(name, &argv(args), Duration::from_secs(10))
        .await
        .expect("exec");
    assert!(
        out.status.success(),
        "{args:?} in {name}: {:?}, stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// This process's cgroups once no start is moving it: other tests in this process start
/// containers at the same time, and each start puts the whole process in its container's
/// monitor cgroup until it moves it back.
pub(crate) fn settled_cgroups() -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        if !now.contains(".monitor") || Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
