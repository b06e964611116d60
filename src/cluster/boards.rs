//! Reaching into boards (commands in a board's namespace or in a container, HTTP from there)
//! and breaking them: a power cut, a cut link, a crashed agent, and putting things back.

use std::process::{Command, Output};
use std::time::Duration;

use super::{containers, net, procs};
use super::{Cluster, ClusterError, Result};

/// How long a command in a board or container may run.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

impl Cluster {
    /// Runs `argv` inside board `board`'s network namespace.
    pub fn exec_in_board(&self, board: usize, argv: &[&str]) -> Result<Output> {
        self.check_board(board)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.plan.netns(board)])
            .args(argv);
        procs::output_with_timeout(
            &mut cmd,
            &format!("{} in {}", argv.join(" "), self.plan.netns(board)),
            EXEC_TIMEOUT,
        )
    }

    /// Runs `argv` inside container `container` on board `board` (`lxc-attach`, from the
    /// board's namespace where LXC's command socket lives).
    pub fn exec_in_container(
        &self,
        board: usize,
        container: &str,
        argv: &[&str],
    ) -> Result<Output> {
        self.check_board(board)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.plan.netns(board), "lxc-attach", "-P"])
            .arg(self.plan.lxc_path(board))
            .args(["-n", container, "--"])
            .args(argv);
        procs::output_with_timeout(
            &mut cmd,
            &format!("{} in container {container}", argv.join(" ")),
            EXEC_TIMEOUT,
        )
    }

    /// GETs `url` from board `board`'s namespace (as a process on the board would); the body
    /// of a 2xx answer.
    pub fn http_get_from_board(&self, board: usize, url: &str) -> Result<String> {
        self.check_board(board)?;
        let target = url.to_string();
        net::in_netns(&self.plan.netns(board), move || {
            ureq::get(&target)
                .timeout(Duration::from_secs(2))
                .call()
                .map_err(|e| e.to_string())
                .and_then(|r| r.into_string().map_err(|e| e.to_string()))
        })?
        .map_err(|message| ClusterError::Http {
            url: url.to_string(),
            message,
        })
    }

    /// GETs `http://ADDRESS:PORT/PATH` from inside container `container` on board `board`, with
    /// the container's own `sh` and `nc` (busybox has both); the body of a 2xx answer.
    pub fn http_get_from_container(
        &self,
        board: usize,
        container: &str,
        address: &str,
        port: u16,
        path: &str,
    ) -> Result<String> {
        // Arguments go in as positional parameters: nothing reaches the shell unquoted.
        let script =
            r#"printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" "$2" | nc -w 2 "$2" "$3""#;
        let port = port.to_string();
        let out = self.exec_in_container(
            board,
            container,
            &["/bin/sh", "-c", script, "sh", path, address, &port],
        )?;
        let url = format!("http://{address}:{port}{path} from {container}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let http = |message: String| ClusterError::Http {
            url: url.clone(),
            message,
        };
        let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
            http(format!(
                "no HTTP answer ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        })?;
        let status = head.split_whitespace().nth(1).unwrap_or_default();
        if status.starts_with('2') {
            Ok(body.to_string())
        } else {
            Err(http(format!(
                "answered {}",
                head.lines().next().unwrap_or_default()
            )))
        }
    }

    /// The live init pid of container `container` on board `board`.
    pub fn container_init_pid(&self, board: usize, container: &str) -> Option<u32> {
        containers::init_pid(&self.plan.lxc_path(board), container)
    }

    /// The containers defined in board `board`'s LXC path.
    pub fn lxc_containers(&self, board: usize) -> Vec<String> {
        containers::defined(&self.plan.lxc_path(board))
    }

    /// Cuts power to board `board`: its overlay link goes down (packets to and from it are
    /// lost), its agent is SIGKILLed and every process of its containers is killed. Its files
    /// stay, as on a board's disk; [`Cluster::restore`] powers it on again.
    pub fn power_off(&mut self, board: usize) -> Result<()> {
        self.check_board(board)?;
        net::set_link(&self.plan.host_link(board), false)?;
        if let Some(mut agent) = self.agents[board - 1].take() {
            procs::kill_child(&mut agent);
        }
        containers::kill_all(&self.plan.lxc_path(board));
        // A power cut empties a board's cgroups; here they are the machine's, so the killed
        // containers' cgroup directories go too (a start would find them and fail).
        if let Ok(runtime) = texu_agent::runtime::LxcRuntime::new(self.plan.lxc_path(board)) {
            runtime.remove_cgroup_dirs();
        }
        Ok(())
    }

    /// SIGKILLs board `board`'s agent alone, as a crash of it would: its containers keep
    /// running. [`Cluster::restore`] starts it again.
    pub fn kill_agent(&mut self, board: usize) -> Result<()> {
        self.check_board(board)?;
        if let Some(mut agent) = self.agents[board - 1].take() {
            procs::kill_child(&mut agent);
        }
        Ok(())
    }

    /// Cuts board `board`'s overlay link: packets to and from it are lost, while its agent and
    /// containers keep running.
    pub fn partition(&mut self, board: usize) -> Result<()> {
        self.check_board(board)?;
        net::set_link(&self.plan.host_link(board), false)
    }

    /// Brings board `board` back: its link up, and its agent started again if it was powered
    /// off (the agent then finds its containers as a rebooted board would).
    pub fn restore(&mut self, board: usize) -> Result<()> {
        self.check_board(board)?;
        net::set_link(&self.plan.host_link(board), true)?;
        if !self.agent_running(board) {
            self.start_agent(board)?;
        }
        Ok(())
    }

    fn check_board(&self, board: usize) -> Result<()> {
        if (1..=self.plan.boards()).contains(&board) {
            Ok(())
        } else {
            Err(ClusterError::Config(format!(
                "board {board}: this cluster has boards 1 to {}",
                self.plan.boards()
            )))
        }
    }
}
