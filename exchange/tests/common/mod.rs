//! Test harness: runs the real `texu-exchange` binary on a free loopback port over a real
//! backend (an embedded file in a temp dir, or a real etcd started on loopback), and talks to
//! it over HTTP.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use texu_controller::store::conformance::etcd_server::EtcdServer;

/// How long the app may take to answer /readyz after it starts.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a test Cassandra node may take to be ready (a loaded 2-core machine is slow).
pub const CASSANDRA_TIMEOUT: Duration = Duration::from_secs(240);

/// The data layer a test runs the app on.
pub enum Backend {
    File,
    Etcd(EtcdServer),
    Cassandra(CassandraNode),
}

impl Backend {
    /// A real etcd on loopback; fails naming what is missing.
    pub fn etcd() -> Backend {
        Backend::Etcd(EtcdServer::start())
    }
    /// A real single-node Apache Cassandra on loopback; fails naming what is missing.
    pub fn cassandra() -> Backend {
        Backend::Cassandra(CassandraNode::start())
    }
}

/// A single Cassandra node run by `texu-cassandra --fast` (scripts/cassandra, installed by
/// scripts/setup.sh) on free loopback ports with its own data dir; dropping it kills the node.
pub struct CassandraNode {
    child: Child,
    dir: tempfile::TempDir,
    pub native_port: u16,
    ports: [u16; 2],
}

impl CassandraNode {
    pub fn start() -> CassandraNode {
        for tool in ["texu-cassandra", "texu-cassandra-ready"] {
            let found = Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(
                found,
                "{tool} is missing: run scripts/setup.sh (it installs Cassandra)"
            );
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        // The storage port and the one after it, the native port and JMX must all be free.
        let storage = loop {
            let p = free_port();
            if p < 65000 && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break p;
            }
        };
        let (native_port, jmx) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("cassandra.log"))
            .unwrap_or_else(|e| panic!("cassandra log: {e}"));
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cassandra log: {e}"));
        let child = Command::new("texu-cassandra")
            .args(["--fast", "--die-with-parent", "--listen", "127.0.0.1"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--native-port", &native_port.to_string()])
            .args(["--storage-port", &storage.to_string()])
            .args(["--jmx-port", &jmx.to_string()])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start texu-cassandra: {e}"));
        let mut node = CassandraNode {
            child,
            dir,
            native_port,
            ports: [storage, jmx],
        };
        let deadline = Instant::now() + CASSANDRA_TIMEOUT;
        loop {
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!("texu-cassandra exited with {status}:\n{}", node.log());
            }
            let ready = Command::new("texu-cassandra-ready")
                .args(["--native-port", &native_port.to_string()])
                .args(["--storage-port", &node.ports[0].to_string()])
                .args(["--jmx-port", &node.ports[1].to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return node;
            }
            if Instant::now() > deadline {
                panic!(
                    "Cassandra not ready in {CASSANDRA_TIMEOUT:?}:\n{}",
                    node.log()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    pub fn log(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("cassandra.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for CassandraNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `texu-exchange` with its own temp dir; dropping it kills the process.
pub struct App {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub store: String,
    pub admin: String,
    backend: Backend,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

impl App {
    /// Starts the app over `backend` and waits until it is ready.
    pub fn start(backend: Backend) -> App {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let store = match &backend {
            Backend::File => format!("file:{}", dir.path().join("ledger.redb").display()),
            Backend::Etcd(etcd) => format!("etcd://{}", etcd.endpoint()),
            Backend::Cassandra(node) => {
                format!("cassandra://127.0.0.1:{}/exchange?rf=1", node.native_port)
            }
        };
        let mut app = App {
            child: None,
            dir,
            port: free_port(),
            store,
            admin: String::new(),
            backend,
        };
        app.spawn();
        app.admin = std::fs::read_to_string(app.token_file())
            .unwrap_or_else(|e| panic!("the app did not write its admin token: {e}"))
            .trim()
            .to_string();
        app
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path().join("admin.token")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("app.log"))
            .unwrap_or_else(|e| panic!("app log: {e}"));
        let err = log.try_clone().unwrap_or_else(|e| panic!("app log: {e}"));
        let child = Command::new(env!("CARGO_BIN_EXE_texu-exchange"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--store")
            .arg(&self.store)
            .arg("--admin-token-file")
            .arg(self.token_file())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start texu-exchange: {e}"));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("texu-exchange exited with {status}:\n{}", self.log());
            }
            if let Ok(r) = ureq::get(&self.url("/readyz")).call() {
                if r.status() == 200 {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "texu-exchange not ready in {READY_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the app (nothing is flushed or finished) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the app again on the same port, store and token, and waits until it is ready.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The app's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the app has logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("app.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A client acting with `token`.
    pub fn client(&self, token: &str) -> Client {
        Client {
            base: self.url(""),
            token: token.to_string(),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .build(),
        }
    }

    pub fn admin(&self) -> Client {
        self.client(&self.admin)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub content_type: String,
    pub replayed: bool,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {:?}", self.body))
    }
}

/// An HTTP client with a bearer token.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    /// Sends a request; transport errors (refused, reset) come back as `Err`.
    pub fn try_send(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let mut req = self.agent.request(method, &format!("{}{path}", self.base));
        if !self.token.is_empty() {
            req = req.set("Authorization", &format!("Bearer {}", self.token));
        }
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let result = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(b),
            None => req.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(e.to_string()),
        };
        let status = response.status();
        let content_type = response.header("content-type").unwrap_or("").to_string();
        let replayed = response.header("idempotent-replayed").is_some();
        let body = response.into_string().map_err(|e| e.to_string())?;
        Ok(Reply {
            status,
            body,
            content_type,
            replayed,
        })
    }

    /// Sends a request; a transport error fails the test.
    pub fn send(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        self.try_send(method, path, body, &[])
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Reply {
        self.send("POST", path, Some(&body.to_string()))
    }

    /// Sends and expects `status`, returning the JSON answer.
    pub fn expect(&self, status: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
        let text = body.map(Value::to_string);
        let r = self.send(method, path, text.as_deref());
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        r.json()
    }
}

/// A member and its token.
pub struct Member {
    pub id: String,
    pub token: String,
}

/// Creates a member (admin).
pub fn member(admin: &Client, name: &str) -> Member {
    let m = admin.expect(201, "POST", "/v1/members", Some(&json!({ "name": name })));
    Member {
        id: m["id"].as_str().unwrap_or_default().to_string(),
        token: m["token"].as_str().unwrap_or_default().to_string(),
    }
}

/// Creates account `code` for `member` (admin).
pub fn account(admin: &Client, member: &Member, code: &str, credit_limit: i64, max: Option<i64>) {
    admin.expect(
        201,
        "POST",
        "/v1/accounts",
        Some(&json!({
            "member": member.id, "code": code, "creditLimit": credit_limit, "maximumBalance": max
        })),
    );
}

/// Every statement entry of `code`, read page by page.
pub fn statement(client: &Client, code: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let page = client.expect(
            200,
            "GET",
            &format!("/v1/accounts/{code}/statement?after={after}&limit=1000"),
            None,
        );
        let got = page["entries"].as_array().cloned().unwrap_or_default();
        entries.extend(got);
        match page["next"].as_u64() {
            Some(next) => after = next,
            None => return entries,
        }
    }
}

/// The admin's audit.
pub fn audit(admin: &Client) -> Value {
    admin.expect(200, "GET", "/v1/audit", None)
}

/// Balances of `codes`, in order.
pub fn balances(admin: &Client, codes: &[String]) -> Vec<i64> {
    codes
        .iter()
        .map(|c| {
            admin.expect(200, "GET", &format!("/v1/accounts/{c}"), None)["balance"]
                .as_i64()
                .unwrap_or(i64::MIN)
        })
        .collect()
}
