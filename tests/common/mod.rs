//! Test harness: start real controller processes and run the real `texu` binary against them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every controller this test process started, by URL, with its CA file: the CLI and the
/// HTTP helpers trust exactly these.
static CONTROLLERS: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());

/// Makes [`http`] and [`texu_with`] trust the controller at `server` with the CA in `ca` (a
/// [`texu::cluster::Cluster`]'s, say; controllers started here are remembered by themselves).
pub fn remember(server: &str, ca: &Path) {
    let mut known = CONTROLLERS.lock().unwrap_or_else(|e| e.into_inner());
    known.retain(|(s, _)| s != server);
    known.push((server.to_string(), ca.to_path_buf()));
}

/// The CA file of the controller at `server`, if this process started it.
pub fn ca_file_of(server: &str) -> Option<PathBuf> {
    let known = CONTROLLERS.lock().unwrap_or_else(|e| e.into_inner());
    known
        .iter()
        .find(|(s, _)| server.starts_with(s.as_str()))
        .map(|(_, ca)| ca.clone())
}

/// A ureq agent builder trusting the CA of every controller this test process started (and
/// nothing else); plain `http://` URLs (containers) work as usual.
pub fn http_builder() -> ureq::AgentBuilder {
    let bundle: String = CONTROLLERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(|(_, ca)| std::fs::read_to_string(ca).ok())
        .collect();
    let builder = ureq::AgentBuilder::new();
    match texu_controller::tls::client_config(&bundle) {
        Some(tls) => builder.tls_config(tls),
        None => builder,
    }
}

/// [`http_builder`], built: for requests to controller URLs.
pub fn http() -> ureq::Agent {
    http_builder().build()
}

/// Opens a TLS connection to `addr` (`HOST:PORT`) trusting the controller CA in `ca`, for
/// tests that write raw HTTP bytes.
pub fn tls_stream(
    addr: &str,
    ca: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let pem = std::fs::read_to_string(ca).expect("read the controller's CA");
    let config = texu_controller::tls::client_config(&pem).expect("a CA certificate");
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).expect("server name");
    let conn = rustls::ClientConnection::new(config, name).expect("TLS client");
    let tcp = std::net::TcpStream::connect(addr).expect("connect to the controller");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
    rustls::StreamOwned::new(conn, tcp)
}

/// The `texu` binary cargo built for these tests.
pub fn texu_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_texu"))
}

/// A controller process with its own data dir; killed and reaped on drop.
pub struct ControllerProcess {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub server: String,
    pub token: String,
    store: Option<String>,
    extra_args: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
    /// Run under `prlimit --nofile=N:N` (a board whose service manager gives 1,024 files).
    pub file_limit: Option<u64>,
}

impl ControllerProcess {
    /// Starts a controller on the embedded store in a fresh temp dir.
    pub fn start() -> ControllerProcess {
        Self::start_with_store(None)
    }

    /// Starts a controller; `store` is `etcd://HOST:PORT` or `None` for the embedded store.
    pub fn start_with_store(store: Option<String>) -> ControllerProcess {
        Self::start_with(store, &[])
    }

    /// Starts a controller with extra `texu controller` arguments.
    pub fn start_with(store: Option<String>, extra_args: &[&str]) -> ControllerProcess {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data_dir = tmp.path().join("controller");
        let mut c = ControllerProcess {
            child: None,
            data_dir,
            server: String::new(),
            token: String::new(),
            store,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            _tmp: Some(tmp),
            file_limit: None,
        };
        c.spawn();
        c
    }

    /// Starts a controller on the embedded store whose open-file limit (soft and hard) is
    /// `limit`, as `prlimit` (util-linux) sets it.
    pub fn start_with_file_limit(limit: u64) -> ControllerProcess {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut c = ControllerProcess {
            child: None,
            data_dir: tmp.path().join("controller"),
            server: String::new(),
            token: String::new(),
            store: None,
            extra_args: Vec::new(),
            _tmp: Some(tmp),
            file_limit: Some(limit),
        };
        c.spawn();
        c
    }

    /// (Re)starts the process on the same data dir and waits until it answers /healthz.
    pub fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.data_dir.join("controller.addr"));
        let mut cmd = match self.file_limit {
            Some(n) => {
                let mut cmd = Command::new("prlimit");
                cmd.arg(format!("--nofile={n}:{n}")).arg(texu_bin());
                cmd
            }
            None => Command::new(texu_bin()),
        };
        cmd.arg("controller")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", "127.0.0.1:0", "--no-client-config"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(store) = &self.store {
            cmd.args(["--store", store]);
        }
        cmd.args(&self.extra_args);
        self.child = Some(cmd.spawn().expect("spawn texu controller"));
        let addr_file = self.data_dir.join("controller.addr");
        let addr = wait_for(
            Duration::from_secs(20),
            "the controller to write its address",
            || {
                std::fs::read_to_string(&addr_file)
                    .ok()
                    .filter(|s| s.ends_with('\n'))
            },
        );
        self.server = format!("https://{}", addr.trim());
        self.token = std::fs::read_to_string(self.data_dir.join("admin.token"))
            .expect("admin token")
            .trim()
            .to_string();
        remember(&self.server, &self.ca_file());
        let health = format!("{}/healthz", self.server);
        let agent = self.http();
        wait_for(
            Duration::from_secs(20),
            "the controller to answer /healthz",
            || agent.get(&health).call().ok().map(|_| ()),
        );
    }

    /// The controller's CA certificate (PEM) in its data dir.
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir.join(texu_controller::tls::CA_CERT_FILE)
    }

    /// A rustls client config trusting this controller's CA only.
    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        let pem = std::fs::read_to_string(self.ca_file()).expect("the controller's CA");
        texu_controller::tls::client_config(&pem).expect("a CA certificate")
    }

    /// A ureq agent trusting this controller's CA only.
    pub fn http(&self) -> ureq::Agent {
        ureq::AgentBuilder::new().tls_config(self.tls()).build()
    }

    /// The `HOST:PORT` the controller listens on.
    pub fn addr(&self) -> String {
        self.server.trim_start_matches("https://").to_string()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) with our own child's pid.
            unsafe { libc_kill(child.id() as i32, sig) };
        }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit on its own, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The cluster join token.
    pub fn join_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("join.token"))
            .expect("join token")
            .trim()
            .to_string()
    }

    /// Runs `texu ARGS...` against this controller.
    pub fn texu(&self, args: &[&str]) -> Output {
        texu_with(&self.server, &self.token, args, None)
    }

    /// Applies manifests given as YAML text, failing the test if `texu apply` fails.
    pub fn apply(&self, yaml: &str) {
        let out = self.texu_stdin(&["apply", "-f", "-"], yaml.as_bytes());
        assert!(
            out.status.success(),
            "apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `texu ARGS...` with `stdin` as standard input.
    pub fn texu_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        texu_with(&self.server, &self.token, args, Some(stdin))
    }

    /// Runs `texu ARGS...`, asserts success and returns stdout.
    pub fn texu_ok(&self, args: &[&str]) -> String {
        let out = self.texu(args);
        assert!(
            out.status.success(),
            "texu {args:?} failed: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Parses `texu get KIND -o json`.
    pub fn get_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.texu_ok(&all)).expect("get -o json prints JSON")
    }

    /// The admin's watch of roles from `revision`, ready to call (an NDJSON stream).
    pub fn watch_roles(&self, revision: i64) -> ureq::Request {
        http()
            .get(&format!(
                "{}/v1/roles?watch=true&revision={revision}",
                self.server
            ))
            .set("Authorization", &format!("Bearer {}", self.token))
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the `texu` binary with a server and token; never reads the user's own client config.
pub fn texu_with(server: &str, token: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(texu_bin());
    if let Some(ca) = ca_file_of(server) {
        cmd.env("TEXU_CA_FILE", ca);
    }
    cmd.args(args)
        .env("TEXU_SERVER", server)
        .env("TEXU_TOKEN", token)
        .env("TEXU_CONFIG", "/nonexistent/texu-test-config.yaml")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd.spawn().expect("spawn texu");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let _ = pipe.write_all(input);
    }
    child.wait_with_output().expect("texu output")
}

/// Polls `probe` every 20 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The test manifests folder.
pub fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests")
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub const SIGINT: i32 = 2;
pub const SIGTERM: i32 = 15;

/// Fails the test with a clear message unless it runs as root with LXC installed.
pub fn require_root_and_lxc() {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(u32::MAX);
    assert_eq!(
        uid, 0,
        "this test runs LXC containers and must run as root (CI runs it as root)"
    );
    assert!(
        Path::new("/usr/share/lxc/templates/lxc-busybox").exists(),
        "LXC's busybox template is missing: run scripts/setup.sh (packages lxc, lxc-templates, busybox-static)"
    );
}

/// A `texu agent` process on the host, with its own data dir, bridge and subnet. On drop the
/// agent is killed and its containers, bridge and data dir removed.
pub struct AgentProcess {
    child: Option<Child>,
    pub name: String,
    pub data_dir: PathBuf,
    pub bridge: String,
    pub subnet: String,
    /// Where the agent serves /metrics and /healthz.
    pub metrics_addr: String,
    server: String,
    join_token_file: PathBuf,
    extra_env: Vec<(String, String)>,
    /// More `texu agent` arguments.
    extra_args: Vec<String>,
    _tmp: tempfile::TempDir,
}

impl AgentProcess {
    /// Starts an agent named `name` for controller `c`; `net` picks its subnet 198.19.NET.0/24
    /// and bridge name, so tests running at once never share them.
    pub fn start(c: &ControllerProcess, name: &str, net: u8) -> AgentProcess {
        Self::start_with(c, name, net, &[])
    }

    /// [`AgentProcess::start`] with more `texu agent` arguments.
    pub fn start_with(c: &ControllerProcess, name: &str, net: u8, args: &[&str]) -> AgentProcess {
        Self::start_with_env(c, name, net, args, &[])
    }

    /// [`AgentProcess::start_with`] with more environment variables for the agent.
    pub fn start_with_env(
        c: &ControllerProcess,
        name: &str,
        net: u8,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> AgentProcess {
        require_root_and_lxc();
        let tmp = tempfile::tempdir().expect("temp dir");
        // Unprivileged containers' root walks through it to their rootfs (tempdir makes 0700).
        std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .expect("chmod the agent's temp dir");
        let mut agent = AgentProcess {
            child: None,
            name: name.to_string(),
            data_dir: tmp.path().join("agent"),
            bridge: format!("txtest{net}"),
            subnet: format!("198.19.{net}.0/24"),
            metrics_addr: format!("127.0.0.1:{}", 19000 + u16::from(net)),
            server: c.server.clone(),
            join_token_file: c.data_dir.join("join.token"),
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _tmp: tmp,
        };
        agent.spawn();
        agent.wait_ready(c);
        agent
    }

    /// (Re)starts the agent process on the same data dir.
    pub fn spawn(&mut self) {
        let child = Command::new(texu_bin())
            .args(["--server", &self.server, "agent", "--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--join-token-file")
            .arg(&self.join_token_file)
            .args(["--bridge", &self.bridge, "--subnet", &self.subnet])
            .args(["--metrics-listen", &self.metrics_addr])
            .args(&self.extra_args)
            .env("RUST_LOG", "warn")
            .envs(self.extra_env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn texu agent");
        self.child = Some(child);
    }

    /// Waits until the controller lists this agent's node as Ready.
    pub fn wait_ready(&self, c: &ControllerProcess) {
        wait_for(
            Duration::from_secs(20),
            "the agent's node to be Ready",
            || {
                let nodes = c.get_json(&["nodes"]);
                nodes["items"]
                    .as_array()?
                    .iter()
                    .any(|n| {
                        n["metadata"]["name"] == self.name.as_str()
                            && n["status"]["phase"] == "Ready"
                    })
                    .then_some(())
            },
        );
    }

    /// SIGKILLs the agent (its containers keep running).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The agent's LXC path.
    pub fn lxc_path(&self) -> PathBuf {
        self.data_dir.join("lxc")
    }

    /// Names of the containers defined in the agent's LXC path.
    pub fn lxc_containers(&self) -> Vec<String> {
        let out = Command::new("lxc-ls")
            .arg("-P")
            .arg(self.lxc_path())
            .arg("-1")
            .output()
            .expect("lxc-ls");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// The agent process's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A container's init PID as LXC reports it (None when not running).
    pub fn init_pid(&self, container: &str) -> Option<u32> {
        let out = Command::new("lxc-info")
            .arg("-P")
            .arg(self.lxc_path())
            .args(["-n", container, "-pH"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
        for name in self.lxc_containers() {
            let _ = Command::new("lxc-stop")
                .arg("-P")
                .arg(self.lxc_path())
                .args(["-n", &name, "-k"])
                .output();
            let _ = Command::new("lxc-destroy")
                .arg("-P")
                .arg(self.lxc_path())
                .args(["-n", &name, "-f"])
                .output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        texu_agent::lxc::remove_lock_dir(&self.lxc_path());
    }
}

/// An API call with a bearer token: (status, JSON body or null). Never panics on an HTTP
/// error status, only when no answer comes (10 s).
pub fn call_json(
    method: &str,
    url: &str,
    token: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let req = http()
        .request(method, url)
        .set("Authorization", &format!("Bearer {token}"))
        .timeout(Duration::from_secs(10));
    status_and_json(send(req, body))
}

/// Sends `req` with `body` as JSON (or with no body): the response, whatever its status.
/// Panics, naming the call, only when no answer comes.
pub fn send(req: ureq::Request, body: Option<&serde_json::Value>) -> ureq::Response {
    let call = format!("{} {}", req.method(), req.url());
    let result = match body {
        Some(b) => req
            .set("Content-Type", "application/json")
            .send_string(&b.to_string()),
        None => req.call(),
    };
    match result {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{call}: {e}"),
    }
}

/// A response's status and its body as JSON (null when it is not JSON).
pub fn status_and_json(response: ureq::Response) -> (u16, serde_json::Value) {
    let code = response.status();
    let text = response.into_string().unwrap_or_default();
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// GETs `url` with a short timeout; the body on 2xx.
pub fn http_get(url: &str) -> Option<String> {
    http()
        .get(url)
        .timeout(Duration::from_secs(2))
        .call()
        .ok()?
        .into_string()
        .ok()
}

/// Packs the directory `root` into the gzipped tarball `to` (an image to import).
pub fn tarball(root: &Path, to: &Path) -> PathBuf {
    let ok = Command::new("tar")
        .arg("-czf")
        .arg(to)
        .arg("-C")
        .arg(root)
        .arg(".")
        .status()
        .expect("run tar")
        .success();
    assert!(ok, "tar failed");
    to.to_owned()
}
