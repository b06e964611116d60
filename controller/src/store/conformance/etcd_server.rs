//! A throwaway etcd on loopback for tests and benchmarks, removed when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where scripts/setup.sh installs etcd (Debian's etcd-server).
pub const ETCD_BINARY: &str = "/usr/bin/etcd";
/// How long [`EtcdServer::start`] waits for etcd to report healthy.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running single-member etcd with its own data directory; dropping it kills the process,
/// reaps it and removes the directory.
pub struct EtcdServer {
    child: Child,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
}

impl EtcdServer {
    /// Starts etcd on free loopback ports and waits until it is healthy; panics if it cannot.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts etcd on free loopback ports and waits until it is healthy.
    pub fn try_start() -> Result<Self, String> {
        if !Path::new(ETCD_BINARY).exists() {
            return Err(format!(
                "{ETCD_BINARY} is missing: run scripts/setup.sh (it installs etcd-server)"
            ));
        }
        // Free ports are found by binding port 0 and letting go, so another process can take
        // one in between; a fresh pair on the next attempt gets past that.
        let mut last = String::new();
        for _ in 0..3 {
            match Self::launch() {
                Ok(server) => return Ok(server),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn launch() -> Result<Self, String> {
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let dir = unique_dir()?;
        let child = match spawn(&dir, client_port, peer_port) {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        // From here on, Drop cleans up whatever happens.
        let mut server = Self {
            child,
            dir,
            client_port,
            peer_port,
        };
        server.wait_healthy()?;
        Ok(server)
    }

    /// Kills etcd (SIGKILL) and reaps it, keeping its data; [`Self::restart`] brings it back.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops etcd if it runs, then starts it again on the same ports and data, and waits
    /// until it is healthy.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.child = spawn(&self.dir, self.client_port, self.peer_port)?;
        self.wait_healthy()
    }

    fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("etcd exited with {status}:\n{}", self.log()));
            }
            if health(self.client_port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "etcd not healthy within {START_TIMEOUT:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The client endpoint, `127.0.0.1:PORT`, as [`super::super::etcd::EtcdStore::connect`]
    /// takes it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.endpoint())
    }

    /// The directory holding etcd's data and its log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What etcd has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn(dir: &Path, client_port: u16, peer_port: u16) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("etcd.log"))
        .map_err(|e| format!("open etcd log in {}: {e}", dir.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("etcd log handle: {e}"))?;
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let mut cmd = Command::new(ETCD_BINARY);
    cmd.arg("--name=default")
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=default={peer}"))
        .arg("--initial-cluster-state=new")
        .arg("--logger=zap")
        .arg("--log-outputs=stderr")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    if cfg!(target_arch = "aarch64") {
        // etcd 3.4 refuses to start on arm64 unless told this is on purpose.
        cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
    }
    cmd.spawn().map_err(|e| format!("start {ETCD_BINARY}: {e}"))
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("find a free port: {e}"))
}

fn unique_dir() -> Result<PathBuf, String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("texu-etcd-{}-{nanos}-{n}", std::process::id());
    let dir = std::env::temp_dir().join(name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Asks etcd's `/health` endpoint over plain HTTP/1.0.
fn health(port: u16) -> bool {
    let ask = || -> std::io::Result<String> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        conn.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply)?;
        Ok(reply)
    };
    ask().is_ok_and(|reply| reply.contains("\"health\":\"true\""))
}
