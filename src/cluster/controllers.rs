//! Several controllers on one etcd: controllers 2 and up (the first is started by `run.rs`),
//! each with its own data dir holding copies of the first one's admin and join tokens, on the
//! overlay bridge's address with a port of its own; and the faults the tests inject into them
//! (SIGKILL, SIGSTOP and SIGCONT).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::process::{Child, Command};

use nix::sys::signal::Signal;

use super::{procs, Cluster, ClusterError, Result};

impl Cluster {
    /// Starts controllers 2 to `config.controllers`, each waited for until it answers.
    pub(super) fn start_more_controllers(&mut self) -> Result<()> {
        for n in 2..=self.config.controllers {
            self.start_more_controller(n)?;
        }
        Ok(())
    }

    fn start_more_controller(&mut self, n: usize) -> Result<()> {
        let dir = self.plan.dir().join(format!("controller-{n}"));
        let io = |what: &str, path: &std::path::Path, source| ClusterError::Io {
            what: what.to_string(),
            path: path.to_path_buf(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io("make a controller's data dir", &dir, e))?;
        // Every controller of one cluster accepts the same admin and join tokens and holds the
        // same CA (agents pinned it from the join token; they move between controllers).
        for token in ["admin.token", "join.token", "ca.pem", "ca.key"] {
            let to = dir.join(token);
            std::fs::copy(self.plan.controller_dir().join(token), &to)
                .map_err(|e| io("copy a token", &to, e))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| io("protect a token", &to, e))?;
        }
        let _ = std::fs::remove_file(dir.join("controller.addr"));
        let mut cmd = Command::new(&self.config.texu_bin);
        cmd.arg("controller")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--listen", &format!("{}:0", self.plan.controller_address())])
            .args(["--cluster-cidr", &self.plan.container_range()])
            .arg("--no-client-config")
            .env("RUST_LOG", &self.config.log_filter);
        if let Some(grace) = self.config.node_grace {
            cmd.args(["--node-grace", &format!("{}ms", grace.as_millis())]);
        }
        cmd.args(&self.config.controller_args);
        let what = format!("controller {n}");
        let log = self.plan.log_path(&format!("controller-{n}"));
        let child = procs::spawn_logged(&mut cmd, &what, &log)?;
        let index = n - 2;
        if index < self.more_controllers.len() {
            self.more_controllers[index].0 = Some(child);
        } else {
            self.more_controllers.push((Some(child), String::new()));
        }
        let addr_file = dir.join("controller.addr");
        let addr = self.wait_alive(
            &format!("{what} to write its address"),
            |c| c.more_controllers[index].0.as_mut(),
            || {
                std::fs::read_to_string(&addr_file)
                    .ok()
                    .filter(|s| s.ends_with('\n'))
            },
        )?;
        let url = format!("https://{}", addr.trim());
        self.more_controllers[index].1 = url.clone();
        let api = self.api_at(&url);
        self.wait_alive(
            &format!("{what} to answer /healthz"),
            |c| c.more_controllers[index].0.as_mut(),
            || api.healthy().then_some(()),
        )
    }

    /// Every controller's URL, the first one's first.
    pub fn servers(&self) -> Vec<String> {
        std::iter::once(self.server.clone())
            .chain(self.more_controllers.iter().map(|(_, url)| url.clone()))
            .collect()
    }

    fn controller_child(&mut self, n: usize) -> Option<&mut Child> {
        match n {
            1 => self.controller.as_mut(),
            n => self
                .more_controllers
                .get_mut(n.checked_sub(2)?)
                .and_then(|(c, _)| c.as_mut()),
        }
    }

    /// The process id of controller `n` (from 1), while it runs.
    pub fn controller_pid(&mut self, n: usize) -> Option<u32> {
        self.controller_child(n).map(|c| c.id())
    }

    /// SIGKILLs controller `n` (from 1) and reaps it, as a power cut of its board would.
    pub fn kill_controller_n(&mut self, n: usize) {
        if n == 1 {
            return self.kill_controller();
        }
        if let Some((child, _)) = n
            .checked_sub(2)
            .and_then(|i| self.more_controllers.get_mut(i))
        {
            if let Some(mut c) = child.take() {
                procs::kill_child(&mut c);
            }
        }
    }

    /// Starts controller `n` again on the same data dir after [`Cluster::kill_controller_n`]
    /// (controllers 2 and up get a new port; agents learn it from heartbeat answers).
    pub fn restart_controller_n(&mut self, n: usize) -> Result<()> {
        if n == 1 {
            return self.restart_controller();
        }
        if self.controller_pid(n).is_some() {
            return Ok(());
        }
        self.start_more_controller(n)
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) to controller `n`; false when it does not run.
    pub fn signal_controller(&mut self, n: usize, signal: Signal) -> bool {
        match self.controller_pid(n) {
            Some(pid) => procs::signal(pid, signal),
            None => false,
        }
    }

    pub(super) fn kill_more_controllers(&mut self) {
        for (child, _) in &mut self.more_controllers {
            if let Some(mut c) = child.take() {
                // A stopped process must run again to die of anything but SIGKILL; SIGKILL works.
                procs::kill_child(&mut c);
            }
        }
    }
}
