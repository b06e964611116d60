//! Names from the wire: the whole agent (`daemon::run`, over the fake runtime) against a
//! controller on loopback that sends containers named `../x` and `a/b`. The agent refuses
//! them before they touch a path: nothing is created for them in the runtime or on disk, and
//! the valid containers of the same list and watch run as usual.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::eventually;
use texu_agent::daemon::{self, Config};
use texu_agent::runtime::{FakeCall, FakeRuntime};
use texu_api::{Container, RoleSpec, Volume};

/// A container of `board1` with a volume (a volume is a directory named after the container).
fn container(name: &str, ordinal: i64) -> Container {
    let mut role = RoleSpec::with_image("template:busybox");
    role.command = vec!["/bin/sleep".into(), "1000".into()];
    role.volumes = vec![Volume {
        name: "data".into(),
        path: "/data".into(),
    }];
    common::container(name, ordinal, role)
}

fn event(kind: &str, c: &Container) -> String {
    serde_json::json!({"type": kind, "revision": 2, "object": c}).to_string()
}

/// TLS settings for a fake controller on 127.0.0.1, with its CA pinned in `data_dir` as a
/// board that joined would have it.
fn tls(data_dir: &Path) -> Arc<rustls::ServerConfig> {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(data_dir.join(daemon::trust::CA_FILE), ca.der()).unwrap();
    let private = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], private)
    .unwrap();
    Arc::new(config)
}

/// A controller that answers heartbeats, lists `list` and streams `watch` lines, then closes.
fn fake_controller(
    list: Vec<Container>,
    watch: Vec<String>,
    data_dir: &Path,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let server = format!("https://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let config = tls(data_dir);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (list, watch, log) = (list.clone(), watch.clone(), log.clone());
            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                continue;
            };
            std::thread::spawn(move || {
                serve(rustls::StreamOwned::new(conn, stream), &list, &watch, &log)
            });
        }
    });
    (server, seen)
}

type Tls = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

fn serve(mut stream: Tls, list: &[Container], watch: &[String], log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(&mut stream);
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    drop(reader);
    let path = request
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    log.lock().unwrap().push(path.clone());
    let answer = if path.contains("watch=true") {
        watch.join("\n") + "\n"
    } else if path.starts_with("/v1/containers") {
        serde_json::json!({"revision": 1, "items": list}).to_string()
    } else {
        "{}".to_string()
    };
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = stream.flush();
    stream.conn.send_close_notify();
    let _ = stream.flush();
}

fn all_paths(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            out.push(entry.path());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(all_paths(&entry.path()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_with_path_names_from_the_wire_are_refused_and_create_nothing() {
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("agent");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(data_dir.join(daemon::CREDENTIAL_FILE), "credential").unwrap();

    let mut escaping_role = container("bad-role-0", 3);
    escaping_role.spec.role = "../../r".into();
    let list = vec![
        container("ok-0", 0),
        container("../x", 1),
        container("a/b", 2),
        escaping_role,
    ];
    let watch = vec![
        event("ADDED", &container("../../y", 4)),
        event("DELETED", &container("../victim", 5)),
        event("ADDED", &container("ok-1", 1)),
    ];
    // A file a DELETED `../victim` would reach if the name were used as a path.
    std::fs::create_dir_all(root.path().join("victim")).unwrap();
    std::fs::write(root.path().join("victim/keep"), "keep").unwrap();
    let (server, seen) = fake_controller(list, watch, &data_dir);

    let config = Config {
        server,
        join_token: None,
        name: "board1".into(),
        data_dir: data_dir.clone(),
        labels: Default::default(),
        address: "127.0.0.1".into(),
        network: None,
        heartbeat: Duration::from_millis(200),
        heartbeat_jitter: Duration::ZERO,
        image_limits: Default::default(),
        reserved_ports: Vec::new(),
    };
    let rt = Arc::new(FakeRuntime::new());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let agent = tokio::spawn(daemon::run(config, rt.clone(), stop, None));

    // The valid containers of the list and of the watch (after the bad events) are made.
    eventually("ok-0 and ok-1 created", || {
        rt.spec("ok-0").is_some() && rt.spec("ok-1").is_some()
    })
    .await;
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|p| p.contains("watch=true")),
        "the agent watched"
    );
    // Let a few more passes run: a refused name must stay refused.
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop_tx.send(true).unwrap();
    agent.await.unwrap().expect("agent ran");

    let named: Vec<String> = rt
        .calls()
        .iter()
        .filter_map(|c| match c {
            FakeCall::Create(name) => Some(name.clone()),
            _ => None,
        })
        .collect();
    assert!(
        named.iter().all(|n| n == "ok-0" || n == "ok-1"),
        "the runtime was asked to create {named:?}"
    );
    for bad in ["../x", "a/b", "../../y", "bad-role-0"] {
        assert!(rt.spec(bad).is_none(), "{bad} reached the runtime");
    }
    // Nothing outside the data dir, nothing inside named after the bad containers.
    let outside: Vec<PathBuf> = all_paths(root.path())
        .into_iter()
        .filter(|p| !p.starts_with(&data_dir))
        .collect();
    assert_eq!(
        outside,
        vec![root.path().join("victim"), root.path().join("victim/keep")],
        "paths outside the data dir"
    );
    let inside: Vec<PathBuf> = all_paths(&data_dir)
        .into_iter()
        .filter(|p| {
            p.strip_prefix(&data_dir).unwrap().components().any(|c| {
                let c = c.as_os_str().to_string_lossy();
                ["x", "a", "b", "y", "r", "x.json", "b.json", "y.json"].contains(&c.as_ref())
                    || c.starts_with("bad-role")
            })
        })
        .collect();
    assert!(
        inside.is_empty(),
        "paths made for refused containers: {inside:?}"
    );
}
