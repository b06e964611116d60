//! A throwaway three-member etcd cluster on loopback for the tests and benchmarks of several
//! controllers: distinct free ports, one data directory each, every member killed, reaped and
//! removed on drop. Members can be stopped (SIGSTOP) and resumed to cut a controller off.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::conformance::etcd_server::{ETCD_BINARY, START_TIMEOUT};

/// One member: its process and ports.
struct Member {
    name: String,
    child: Child,
    client_port: u16,
    peer_port: u16,
}

/// A running etcd cluster.
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: PathBuf,
}

impl EtcdCluster {
    /// Starts `size` members on free loopback ports and waits until every one is healthy;
    /// the error says what is missing or what etcd logged.
    pub fn start(size: usize) -> Result<Self, String> {
        if !Path::new(ETCD_BINARY).exists() {
            return Err(format!(
                "{ETCD_BINARY} is missing: run scripts/setup.sh (it installs etcd-server)"
            ));
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("texu-etcd-cluster-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let mut ports = Vec::new();
        // Held until every port is chosen, so two members never get the same one.
        let mut held = Vec::new();
        for _ in 0..size * 2 {
            let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
            ports.push(l.local_addr().map_err(|e| e.to_string())?.port());
            held.push(l);
        }
        drop(held);
        let names: Vec<String> = (1..=size).map(|i| format!("m{i}")).collect();
        let initial: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{n}=http://127.0.0.1:{}", ports[2 * i + 1]))
            .collect();
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            dir,
        };
        for (i, name) in names.iter().enumerate() {
            let (client_port, peer_port) = (ports[2 * i], ports[2 * i + 1]);
            let child = cluster.spawn(name, client_port, peer_port, &initial.join(","))?;
            cluster.members.push(Member {
                name: name.clone(),
                child,
                client_port,
                peer_port,
            });
        }
        cluster.wait_healthy()?;
        Ok(cluster)
    }

    fn spawn(
        &self,
        name: &str,
        client_port: u16,
        peer_port: u16,
        initial: &str,
    ) -> Result<Child, String> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))
            .map_err(|e| format!("etcd log: {e}"))?;
        let log_err = log.try_clone().map_err(|e| format!("etcd log: {e}"))?;
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(ETCD_BINARY);
        cmd.arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", self.dir.join(name).display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={initial}"))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=texu-test")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if cfg!(target_arch = "aarch64") {
            cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
        }
        cmd.spawn().map_err(|e| format!("start {ETCD_BINARY}: {e}"))
    }

    fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            for m in &mut self.members {
                if let Ok(Some(status)) = m.child.try_wait() {
                    return Err(format!("etcd member {} exited with {status}", m.name));
                }
            }
            if self.members.iter().all(|m| health(m.client_port)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the etcd cluster was not healthy within {START_TIMEOUT:?}; logs in {}",
                    self.dir.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `etcd://127.0.0.1:P1,127.0.0.1:P2,...`, as `texu controller --store` takes it.
    pub fn store_url(&self) -> String {
        let list: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect();
        format!("etcd://{}", list.join(","))
    }

    /// Every member's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The peer port of member `i` (from 0), for logs.
    pub fn peer_port(&self, i: usize) -> Option<u16> {
        self.members.get(i).map(|m| m.peer_port)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.child.kill();
            let _ = m.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Asks a member's `/health` over plain HTTP/1.0.
fn health(port: u16) -> bool {
    use std::io::{Read, Write};
    let ask = || -> std::io::Result<String> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        conn.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply)?;
        Ok(reply)
    };
    ask().is_ok_and(|reply| reply.contains("\"health\":\"true\""))
}
