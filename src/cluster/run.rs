//! Bringing a cluster up: the network, the controller in the host namespace, and one agent
//! inside each board's namespace.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use texu_api::NodePhase;

use super::plan::BOARD_BRIDGE;
use super::{net, procs};
use super::{Cluster, ClusterError, Result};

/// Run by `sh -c` in the agent's own mount namespace inside its board's network namespace:
/// `$1` is a spare directory, the rest is the agent's command. It keeps the cgroup tree aside,
/// mounts the board's sysfs, puts the cgroup tree back on it, and runs the agent.
const BOARD_SYSFS: &str = "set -e; keep=$1; shift; \
    mount --rbind /sys/fs/cgroup \"$keep\"; \
    mount -t sysfs sysfs /sys; \
    mount --move \"$keep\" /sys/fs/cgroup; \
    exec \"$@\"";

impl Cluster {
    /// Makes the network, starts the controller and the agents, waits for every board to be
    /// ready, and applies the configured manifests.
    pub(super) fn build(&mut self) -> Result<()> {
        net::create_overlay(&self.plan)?;
        for board in self.plan.board_numbers() {
            net::create_board(&self.plan, board)?;
            if self.config.host_routes {
                net::add_host_route(&self.plan, board)?;
            }
        }
        self.start_controller()?;
        self.start_more_controllers()?;
        for board in self.plan.board_numbers() {
            self.start_agent(board)?;
        }
        self.wait_boards_ready()?;
        if let Some(manifests) = self.config.manifests.clone() {
            self.apply(&manifests)?;
        }
        Ok(())
    }

    fn start_controller(&mut self) -> Result<()> {
        let dir = self.plan.controller_dir();
        // A restarted controller listens where the first one did: the agents know that address.
        let listen = match self.server.strip_prefix("https://") {
            Some(addr) if !addr.is_empty() => addr.to_string(),
            _ => format!("{}:0", self.plan.controller_address()),
        };
        let _ = std::fs::remove_file(dir.join("controller.addr"));
        let mut cmd = Command::new(&self.config.texu_bin);
        cmd.arg("controller")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--listen", &listen])
            .args(["--cluster-cidr", &self.plan.container_range()])
            .env("TEXU_CONFIG", self.plan.client_config())
            .env("RUST_LOG", &self.config.log_filter);
        if let Some(grace) = self.config.node_grace {
            cmd.args(["--node-grace", &format!("{}ms", grace.as_millis())]);
        }
        cmd.args(&self.config.controller_args);
        let log = self.plan.log_path("controller");
        self.controller = Some(procs::spawn_logged(&mut cmd, "the controller", &log)?);

        let addr_file = dir.join("controller.addr");
        let addr = self.wait_alive(
            "the controller to write its address",
            |c| c.controller.as_mut(),
            || {
                std::fs::read_to_string(&addr_file)
                    .ok()
                    .filter(|s| s.ends_with('\n'))
            },
        )?;
        self.server = format!("https://{}", addr.trim());
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .map_err(|source| ClusterError::Io {
                    what: format!("read the controller's {file}"),
                    path,
                    source,
                })
        };
        self.token = read("admin.token")?;
        let api = self.api();
        self.wait_alive(
            "the controller to answer /healthz",
            |c| c.controller.as_mut(),
            || api.healthy().then_some(()),
        )
    }

    /// Starts board `board`'s agent inside its namespace (again, after a power-off).
    pub(super) fn start_agent(&mut self, board: usize) -> Result<()> {
        let plan = &self.plan;
        // The agent needs the board's own /sys (liblxc looks its bridge up in /sys/class/net)
        // and the machine's cgroup hierarchies (liblxc sets each container's cgroups up there).
        // `ip netns exec` gives it the first but hides the second under a fresh /sys, so the
        // agent gets a private mount namespace where the cgroup tree is moved onto the board's
        // sysfs.
        let keep = plan.board_dir(board).join(".cgroup");
        std::fs::create_dir_all(&keep).map_err(|source| ClusterError::Io {
            what: "make the agent's cgroup mount point".into(),
            path: keep.clone(),
            source,
        })?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", plan.netns(board)))
            .args(["--", "unshare", "--mount", "--propagation", "private", "--"])
            .args(["sh", "-c", BOARD_SYSFS, "sh"])
            .arg(&keep)
            .arg(&self.config.texu_bin)
            .args(["--server", &self.servers().join(","), "agent"])
            .args(["--name", &plan.node_name(board)])
            .arg("--data-dir")
            .arg(plan.board_dir(board))
            // By file, never on the command line (where `ps` shows it to every user).
            .arg("--join-token-file")
            .arg(plan.controller_dir().join("join.token"))
            .args(["--address", &plan.board_address(board).to_string()])
            .args(["--bridge", BOARD_BRIDGE])
            .args(["--subnet", &plan.board_subnet(board)])
            .args(self.config.agent_args.get(&board).into_iter().flatten())
            .env("RUST_LOG", &self.config.log_filter);
        let what = format!("the agent of {}", plan.node_name(board));
        let log = plan.log_path(&plan.node_name(board));
        let child = procs::spawn_logged(&mut cmd, &what, &log)?;
        self.agents[board - 1] = Some(child);
        Ok(())
    }

    /// SIGKILLs the controller, as a power cut of its machine would (its store is on disk).
    pub fn kill_controller(&mut self) {
        if let Some(mut controller) = self.controller.take() {
            procs::kill_child(&mut controller);
        }
    }

    /// Starts the controller again on the same address and data dir, after
    /// [`Cluster::kill_controller`].
    pub fn restart_controller(&mut self) -> Result<()> {
        if self.controller.is_some() {
            return Ok(());
        }
        self.start_controller()
    }

    /// Whether board `board`'s agent process runs.
    pub fn agent_running(&mut self, board: usize) -> bool {
        self.agents
            .get_mut(board.wrapping_sub(1))
            .and_then(Option::as_mut)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn wait_boards_ready(&mut self) -> Result<()> {
        let api = self.api();
        let boards = self.plan.boards();
        let deadline = Instant::now() + self.config.start_timeout;
        loop {
            for board in self.plan.board_numbers() {
                self.check_running(
                    &format!("the agent of {}", self.plan.node_name(board)),
                    |c| c.agents[board - 1].as_mut(),
                )?;
            }
            let ready = api.nodes().map(|nodes| {
                nodes
                    .iter()
                    .filter(|n| n.status.as_ref().map(|s| s.phase) == Some(NodePhase::Ready))
                    .count()
            });
            if ready.as_ref().is_ok_and(|r| *r == boards) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: format!("{boards} boards to join and be ready"),
                    after: self.config.start_timeout,
                    details: format!("\n{}", self.diagnostics()),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `probe` until it gives a value, failing early when the process `child` picks out
    /// exits, and after the start timeout.
    pub(super) fn wait_alive<T>(
        &mut self,
        what: &str,
        child: impl Fn(&mut Cluster) -> Option<&mut Child>,
        mut probe: impl FnMut() -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + self.config.start_timeout;
        loop {
            if let Some(v) = probe() {
                return Ok(v);
            }
            self.check_running(what, &child)?;
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: what.to_string(),
                    after: self.config.start_timeout,
                    details: format!("\n{}", self.diagnostics()),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn check_running(
        &mut self,
        what: &str,
        child: impl Fn(&mut Cluster) -> Option<&mut Child>,
    ) -> Result<()> {
        let status = match child(self).map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => status,
            _ => return Ok(()),
        };
        let logs: Vec<String> = std::iter::once("controller".to_string())
            .chain(self.plan.board_numbers().map(|b| self.plan.node_name(b)))
            .map(|name| {
                let path = self.plan.log_path(&name);
                format!("{}:\n{}", path.display(), procs::tail(&path, 10))
            })
            .collect();
        Err(ClusterError::Exited {
            what: what.to_string(),
            status: status.to_string(),
            log: logs.join("\n"),
        })
    }
}
