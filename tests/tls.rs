//! TLS on every connection: each test talks to a real controller process (or to a fake TLS
//! server made with another CA) the way a user, a board or a man in the middle would.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{texu_bin, ControllerProcess};
use serde_json::{json, Value};

/// Writes raw bytes to `addr` over plain TCP and returns whatever comes back before the server
/// closes (or 5 s pass).
fn plain_exchange(addr: &str, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect to the API port");
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

#[test]
fn plain_http_to_the_api_port_gets_no_api_answer() {
    let c = ControllerProcess::start();
    let addr = c.addr();
    let request = format!(
        "GET /v1/roles HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
        c.token
    );
    let answer = plain_exchange(&addr, request.as_bytes());
    let text = String::from_utf8_lossy(&answer);
    assert!(
        !text.contains("HTTP/1.") && !text.contains("apiVersion") && !text.contains("items"),
        "plain HTTP got an HTTP answer: {text:?}"
    );
    let health = plain_exchange(&addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        !String::from_utf8_lossy(&health).contains("ok"),
        "plain /healthz answered"
    );
    // The CLI pointed at http:// says what to use instead.
    let out = common::texu_with(&format!("http://{addr}"), &c.token, &["get", "roles"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("https://{addr}")), "{err}");
    // Over TLS with the cluster CA the same request is answered.
    let roles: Value = c
        .http()
        .get(&format!("{}/v1/roles", c.server))
        .set("Authorization", &format!("Bearer {}", c.token))
        .call()
        .expect("roles over TLS")
        .into_string()
        .map(|t| serde_json::from_str(&t).expect("JSON"))
        .expect("a body");
    assert!(roles["items"].is_array(), "{roles}");
}

/// Another cluster's CA (and a server certificate for 127.0.0.1 signed by it).
fn other_ca(dir: &Path) -> Arc<texu_controller::tls::Tls> {
    std::fs::create_dir_all(dir).unwrap();
    texu_controller::tls::Tls::load_or_create(dir, "127.0.0.1:0".parse().unwrap())
        .expect("make another CA")
}

#[test]
fn a_client_trusting_another_ca_is_refused() {
    let c = ControllerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let other = other_ca(dir.path());
    let tls = texu_controller::tls::client_config(other.ca_pem()).unwrap();
    let agent = ureq::AgentBuilder::new().tls_config(tls).build();
    let result = agent.get(&format!("{}/healthz", c.server)).call();
    assert!(
        matches!(result, Err(ureq::Error::Transport(_))),
        "a client trusting another CA got an answer: {:?}",
        result.map(|r| r.status())
    );
    // The CLI with another CA file is refused too, and with the controller's own it works.
    let run = |ca: &Path| {
        Command::new(texu_bin())
            .args(["get", "roles"])
            .env("TEXU_SERVER", &c.server)
            .env("TEXU_TOKEN", &c.token)
            .env("TEXU_CA_FILE", ca)
            .env("TEXU_CONFIG", "/nonexistent/texu-test-config.yaml")
            .output()
            .expect("run texu")
    };
    let refused = run(&dir.path().join(texu_controller::tls::CA_CERT_FILE));
    assert!(!refused.status.success(), "the CLI trusted another CA");
    let accepted = run(&c.ca_file());
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    // Prometheus' view: /metrics over TLS with the CA file.
    let metrics = common::http()
        .get(&format!("{}/metrics", c.server))
        .call()
        .expect("/metrics over TLS")
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("texu_controller_http_requests_total"),
        "{metrics}"
    );
}

/// A TLS server that answers every request `200 ok` and records every byte it decrypts.
struct FakeServer {
    addr: String,
    received: Arc<Mutex<Vec<u8>>>,
    handshakes: Arc<Mutex<usize>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl FakeServer {
    fn start(tls: &Arc<texu_controller::tls::Tls>) -> FakeServer {
        let config = tls.server_config().expect("server config");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let received = Arc::new(Mutex::new(Vec::new()));
        let handshakes = Arc::new(Mutex::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (rec, hs, halt) = (received.clone(), handshakes.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !halt.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
                let Ok((tcp, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                *hs.lock().unwrap() += 1;
                tcp.set_nonblocking(false).ok();
                tcp.set_read_timeout(Some(Duration::from_secs(2))).ok();
                let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                    continue;
                };
                let mut stream = rustls::StreamOwned::new(conn, tcp);
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    rec.lock().unwrap().extend_from_slice(&buf[..n]);
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                        );
                        let _ = stream.flush();
                        break;
                    }
                }
            }
        });
        FakeServer {
            addr,
            received,
            handshakes,
            stop,
        }
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Runs `texu agent` against `server` with the join token in `token_file` until it exits or
/// `until` says enough; returns (exited on its own, stderr).
fn run_agent(
    server: &str,
    token_file: &Path,
    data_dir: &Path,
    until: impl Fn() -> bool,
) -> (bool, String) {
    let mut child = Command::new(texu_bin())
        .args(["--server", server, "agent", "--name", "mitm-board"])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--join-token-file")
        .arg(token_file)
        .args(["--address", "127.0.0.1", "--no-network"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run texu agent");
    let deadline = Instant::now() + Duration::from_secs(30);
    let exited = loop {
        if let Ok(Some(_)) = child.try_wait() {
            break true;
        }
        if until() || Instant::now() > deadline {
            let _ = child.kill();
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("agent output");
    (exited, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn an_agent_whose_token_names_another_ca_refuses_to_join_and_sends_no_secret() {
    common::require_root_and_lxc();
    let c = ControllerProcess::start();
    let token = c.join_token();
    let secret = texu_api::parse_join_token(&token).unwrap().secret;
    let work = tempfile::tempdir().unwrap();
    let token_file = work.path().join("join.token");
    std::fs::write(&token_file, &token).unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();

    // A man in the middle with a CA of its own.
    let mitm = FakeServer::start(&other_ca(&work.path().join("mitm")));
    let data = work.path().join("agent");
    let (exited, stderr) = run_agent(
        &format!("https://{}", mitm.addr),
        &token_file,
        &data,
        || false,
    );
    assert!(
        exited,
        "the agent kept going against a server with another CA"
    );
    assert!(stderr.contains("man in the middle"), "{stderr}");
    assert!(
        *mitm.handshakes.lock().unwrap() >= 1,
        "the agent never dialled"
    );
    let seen = mitm.received();
    assert!(
        !seen.contains(&secret),
        "the secret reached the fake server: {seen:?}"
    );
    assert!(
        seen.is_empty(),
        "the agent sent a request before trusting: {seen:?}"
    );
    assert!(
        !data.join("cluster-ca.der").exists(),
        "another CA was pinned"
    );
    assert!(!data.join("node.credential").exists());

    // The same recorder holding the cluster's real CA is trusted: it then sees the token, so
    // the empty record above means nothing was sent, not that nothing was recorded.
    let same_ca = work.path().join("same-ca");
    std::fs::create_dir(&same_ca).unwrap();
    for file in [
        texu_controller::tls::CA_CERT_FILE,
        texu_controller::tls::CA_KEY_FILE,
    ] {
        std::fs::copy(c.data_dir.join(file), same_ca.join(file)).unwrap();
    }
    let trusted = FakeServer::start(&other_ca(&same_ca));
    let data = work.path().join("agent2");
    let (_, stderr) = run_agent(
        &format!("https://{}", trusted.addr),
        &token_file,
        &data,
        || trusted.received().contains(&secret),
    );
    assert!(
        trusted.received().contains(&secret),
        "the agent trusting the CA never joined: {stderr}"
    );
    assert!(data.join("cluster-ca.der").exists(), "the CA was pinned");
}

#[test]
fn an_old_format_join_token_is_refused_with_a_clear_message() {
    common::require_root_and_lxc();
    let c = ControllerProcess::start();
    let work = tempfile::tempdir().unwrap();
    let token_file = work.path().join("join.token");
    std::fs::write(&token_file, "texu-join-00112233").unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let (exited, stderr) = run_agent(&c.server, &token_file, &work.path().join("a"), || false);
    assert!(exited, "the agent kept going with an old token");
    assert!(stderr.contains("old format"), "{stderr}");
}

fn call(method: &str, url: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let req = common::http()
        .request(method, url)
        .set("Authorization", &format!("Bearer {token}"));
    common::status_and_json(common::send(req, body.as_ref()))
}

#[test]
fn a_rotated_join_token_admits_new_boards_and_leaves_joined_ones_alone() {
    let c = ControllerProcess::start();
    let old = c.join_token();
    let spec =
        json!({ "address": "198.18.9.1", "arch": "amd64", "cpus": 2, "memoryBytes": 1u64 << 30 });
    let join = |token: &str, name: &str| {
        call(
            "POST",
            &format!("{}/v1/join", c.server),
            token,
            Some(json!({ "name": name, "spec": spec })),
        )
    };
    let (code, v) = join(&old, "before");
    assert_eq!(code, 200, "{v}");
    let credential = v["credential"].as_str().unwrap().to_string();

    let new = c.texu_ok(&["token", "rotate"]).trim().to_string();
    assert_ne!(new, old);
    assert!(new.starts_with("K10"), "{new}");
    assert_eq!(c.join_token(), new, "DATA_DIR/join.token holds the new one");
    assert_eq!(
        texu_api::parse_join_token(&new).unwrap().ca_hash,
        texu_api::parse_join_token(&old).unwrap().ca_hash,
        "same CA"
    );

    let (code, _) = join(&old, "after-old");
    assert_eq!(code, 401, "the old token still admits boards");
    let (code, v) = join(&new, "after-new");
    assert_eq!(code, 200, "{v}");
    let (code, v) = call(
        "PUT",
        &format!("{}/v1/nodes/before/status", c.server),
        &credential,
        Some(json!({ "spec": spec })),
    );
    assert_eq!(code, 200, "a board joined before the rotation: {v}");
}
