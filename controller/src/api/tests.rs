//! Unit tests of the API handler, driven in process against an embedded store.

use std::sync::Arc;

use futures::{stream, StreamExt};
use texu_api::{Node, Role, RoleSpec};
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::*;
use crate::clock;
use crate::store::embedded::EmbeddedStore;

struct Fixture {
    state: Arc<ApiState>,
    stop: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("state.redb")).unwrap());
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let objects = Objects::new(store);
    let state = Arc::new(ApiState {
        nodes: Arc::new(Nodes::new(
            objects.clone(),
            std::time::Duration::from_secs(2),
            texu_api::Cidr::parse("198.19.0.0/16").unwrap(),
        )),
        images: crate::images::ImageStore::new(dir.path().join("images"), objects.clone()),
        objects,
        admin_token: Token::from_secret("secret"),
        join_token: crate::join_token::JoinToken::fixed("join"),
        metrics: Arc::new(Metrics::new()),
        shutdown,
        watches: Default::default(),
    });
    Fixture {
        state,
        stop,
        _dir: dir,
    }
}

async fn call(
    f: &Fixture,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (StatusCode, serde_json::Value) {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let mut headers = HeaderMap::new();
    if let Some(t) = token {
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
    }
    let req = Request {
        method,
        path: path.to_string(),
        query: parse_query(query),
        headers,
        remote: None,
    };
    let chunks: Vec<Result<bytes::Bytes, warp::Error>> =
        vec![Ok(bytes::Bytes::copy_from_slice(body))];
    let response = handle(f.state.clone(), req, stream::iter(chunks)).await;
    let status = response.status();
    let bytes = http_body_util_collect(response).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

async fn http_body_util_collect(response: Response) -> Vec<u8> {
    use warp::hyper::body::Body as _;
    let mut body = response.into_body();
    let mut out = Vec::new();
    let mut body = std::pin::Pin::new(&mut body);
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        if let Ok(data) = frame.unwrap().into_data() {
            out.extend_from_slice(&data);
        }
    }
    out
}

/// The facts of a small amd64 board, as it joins.
fn board_spec() -> texu_api::NodeSpec {
    texu_api::NodeSpec {
        address: "198.18.0.2".into(),
        arch: texu_api::Arch::Amd64,
        cpus: 1,
        memory_bytes: 1 << 30,
        subnet: None,
        unschedulable: false,
        draining: false,
    }
}

fn role_json(name: &str, replicas: i64) -> Vec<u8> {
    let mut spec = RoleSpec::with_image("host");
    spec.replicas = replicas;
    serde_json::to_vec(&Role::new(name, spec)).unwrap()
}

#[tokio::test]
async fn put_reports_created_unchanged_configured_and_bumps_generation() {
    let f = fixture();
    let t = Some("secret");
    let (s, v) = call(&f, Method::PUT, "/v1/roles/app", t, &role_json("app", 2)).await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::CREATED, Some("created"))
    );
    assert_eq!(v["object"]["metadata"]["generation"], 1);
    let (s, v) = call(&f, Method::PUT, "/v1/roles/app", t, &role_json("app", 2)).await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::OK, Some("unchanged"))
    );
    let (_, v) = call(
        &f,
        Method::PUT,
        "/v1/roles/app?dryRun=true",
        t,
        &role_json("app", 5),
    )
    .await;
    assert_eq!(
        (v["result"].as_str(), v["dryRun"].as_bool()),
        (Some("configured"), Some(true))
    );
    let (_, v) = call(&f, Method::GET, "/v1/roles/app", t, b"").await;
    assert_eq!(v["spec"]["replicas"], 2, "a dry run writes nothing");
    let (s, v) = call(&f, Method::PUT, "/v1/roles/app", t, &role_json("app", 3)).await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::OK, Some("configured"))
    );
    assert_eq!(v["object"]["metadata"]["generation"], 2);
}

#[tokio::test]
async fn v1_needs_the_token_and_health_does_not() {
    let f = fixture();
    let (s, v) = call(&f, Method::GET, "/v1/roles", None, b"").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v["error"].as_str().unwrap().contains("Bearer"));
    let (s, _) = call(&f, Method::GET, "/v1/roles", Some("secreT"), b"").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = call(&f, Method::GET, "/v1/roles", Some("secret"), b"").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["kind"], "RoleList");
    let (s, _) = call(&f, Method::GET, "/healthz", None, b"").await;
    assert_eq!(s, StatusCode::OK);
}

/// A client that sends a body a byte and then nothing (slowloris on the body) gets 408 after
/// [`BODY_TIMEOUT`] (a join with the join token as well as an admin's apply), and nothing is
/// stored. A body is read only after its credential was checked.
#[tokio::test(start_paused = true)]
async fn a_trickled_body_is_cut_off() {
    let f = fixture();
    for (method, path, token) in [
        (Method::POST, "/v1/join", "Bearer join"),
        (Method::PUT, "/v1/roles/app", "Bearer secret"),
    ] {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static(token));
        let req = Request {
            method,
            path: path.to_string(),
            query: Default::default(),
            headers,
            remote: None,
        };
        let first: Result<bytes::Bytes, warp::Error> = Ok(bytes::Bytes::from_static(b"{"));
        let trickle = stream::iter(vec![first]).chain(stream::pending());
        let started = tokio::time::Instant::now();
        let response = handle(f.state.clone(), req, Box::pin(trickle)).await;
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT, "{path}");
        assert!(
            started.elapsed() >= BODY_TIMEOUT,
            "{path}: cut off too early"
        );
        let body = String::from_utf8(http_body_util_collect(response).await).unwrap();
        assert!(
            body.contains("did not arrive within 30 s (1 bytes came)"),
            "{body}"
        );
    }
    let (s, _) = call(&f, Method::GET, "/v1/roles/app", Some("secret"), b"").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "nothing was stored");
}

#[tokio::test]
async fn oversize_and_invalid_bodies_are_refused() {
    let f = fixture();
    let t = Some("secret");
    let big = vec![b' '; MAX_BODY_BYTES + 1];
    let (s, _) = call(&f, Method::PUT, "/v1/roles/app", t, &big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, v) = call(&f, Method::PUT, "/v1/roles/app", t, &role_json("app", -1)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        v["details"][0]
            .as_str()
            .unwrap()
            .starts_with("spec.replicas"),
        "{v}"
    );
    let (s, _) = call(&f, Method::PUT, "/v1/roles/other", t, &role_json("app", 1)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call(&f, Method::DELETE, "/v1/roles/app", t, b"").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(&f, Method::PATCH, "/v1/roles/app", t, b"").await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
}

#[test]
fn query_strings_parse_into_pairs() {
    let q = parse_query("watch=true&revision=12&flag");
    assert_eq!(q.get("watch").map(String::as_str), Some("true"));
    assert_eq!(q.get("revision").map(String::as_str), Some("12"));
    assert_eq!(q.get("flag").map(String::as_str), Some("true"));
    assert!(parse_query("").is_empty());
}

fn record(f: &Fixture, n: usize) {
    for _ in 0..n {
        f.state.objects.events().record(
            texu_api::EventKind::Unschedulable,
            "container/app-0",
            None,
            "0/0 nodes: no node has joined",
        );
    }
}

#[tokio::test]
async fn events_list_after_a_seq_for_admins_only() {
    let f = fixture();
    record(&f, 3);
    let t = Some("secret");
    let (s, v) = call(&f, Method::GET, "/v1/events", t, b"").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (v["items"].as_array().unwrap().len(), &v["seq"]),
        (3, &3.into())
    );
    assert_eq!(v["items"][0]["kind"], "Unschedulable");
    assert_eq!(v["items"][0]["object"], "container/app-0");
    let (_, v) = call(&f, Method::GET, "/v1/events?after=2", t, b"").await;
    assert_eq!(v["items"][0]["seq"], 3);
    let (s, _) = call(&f, Method::GET, "/v1/events?after=-1", t, b"").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call(&f, Method::DELETE, "/v1/events", t, b"").await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (s, _) = call(&f, Method::GET, "/v1/events", None, b"").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let joined = f
        .state
        .nodes
        .join(
            crate::nodes::JoinRequest {
                name: "board1".into(),
                labels: Default::default(),
                spec: board_spec(),
            },
            crate::nodes::Joiner::JoinToken,
        )
        .await
        .unwrap();
    let (s, _) = call(&f, Method::GET, "/v1/events", Some(&joined.credential), b"").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

/// Reads event lines from a streaming body until `want` arrived; returns their seqs.
async fn read_seqs<B>(body: &mut B, text: &mut String, want: usize) -> Vec<u64>
where
    B: warp::hyper::body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut got = Vec::new();
    while got.len() < want {
        let frame = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut *body).poll_frame(cx)),
        )
        .await
        .expect("an event line within 5 s")
        .expect("the stream is open")
        .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
            while let Some((line, rest)) = text.split_once('\n') {
                let event: texu_api::Event = serde_json::from_str(line).unwrap();
                got.push(event.seq);
                *text = rest.to_string();
            }
        }
    }
    got
}

#[tokio::test]
async fn events_watch_sends_the_backlog_then_new_events_and_ends_on_shutdown() {
    use warp::hyper::body::Body as _;
    let f = fixture();
    record(&f, 3);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer secret"),
    );
    let req = Request {
        method: Method::GET,
        path: "/v1/events".into(),
        query: parse_query("watch=true&after=1"),
        headers,
        remote: None,
    };
    let empty: Vec<Result<bytes::Bytes, warp::Error>> = Vec::new();
    let response = handle(f.state.clone(), req, stream::iter(empty)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut text = String::new();
    assert_eq!(
        read_seqs(&mut body, &mut text, 2).await,
        [2, 3],
        "the backlog after seq 1"
    );
    record(&f, 2);
    assert_eq!(
        read_seqs(&mut body, &mut text, 2).await,
        [4, 5],
        "then new events"
    );
    // Many more than the live channel holds: the stream catches up from the ring.
    record(&f, 600);
    let seqs = read_seqs(&mut body, &mut text, 600).await;
    assert_eq!(seqs, (6..=605).collect::<Vec<u64>>());
    f.stop.send(true).unwrap();
    let end = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)),
    )
    .await
    .expect("the stream ends on shutdown");
    assert!(end.is_none());
}

/// `lastHeartbeat` is the last heartbeat received, though the store's copy is written only
/// when something else changes; a container gets its creation time when it is first written.
#[tokio::test]
async fn nodes_show_the_last_heartbeat_received_and_containers_their_creation() {
    let f = fixture();
    let spec = board_spec();
    let joined = f
        .state
        .nodes
        .join(
            crate::nodes::JoinRequest {
                name: "board1".into(),
                labels: Default::default(),
                spec: spec.clone(),
            },
            crate::nodes::Joiner::JoinToken,
        )
        .await
        .unwrap();
    let beat = serde_json::to_vec(&serde_json::json!({ "spec": spec })).unwrap();
    let cred = Some(joined.credential.as_str());
    let path = "/v1/nodes/board1/status";
    assert_eq!(
        call(&f, Method::PUT, path, cred, &beat).await.0,
        StatusCode::OK
    );
    let stored = |n: Option<Node>| n.and_then(|n| n.status?.last_heartbeat);
    let first = stored(f.state.objects.get::<Node>("board1").await.unwrap()).expect("stored");
    // Heartbeats that change nothing are not written, yet they are what the API shows.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(
        call(&f, Method::PUT, path, cred, &beat).await.0,
        StatusCode::OK
    );
    let now = clock::now_secs();
    let still = stored(f.state.objects.get::<Node>("board1").await.unwrap());
    assert_eq!(still.as_deref(), Some(first.as_str()), "no store write");
    let (s, one) = call(&f, Method::GET, "/v1/nodes/board1", Some("secret"), b"").await;
    assert_eq!(s, StatusCode::OK);
    let (_, all) = call(&f, Method::GET, "/v1/nodes", Some("secret"), b"").await;
    for shown in [&one["status"], &all["items"][0]["status"]] {
        let shown = shown["lastHeartbeat"].as_str().expect("lastHeartbeat");
        let at = clock::parse_rfc3339(shown).unwrap();
        assert!(
            at > clock::parse_rfc3339(&first).unwrap() && at >= now - 1,
            "shown {shown}, first beat {first}"
        );
    }

    let c = Container::new("app-0", texu_api::ContainerSpec::default());
    f.state.objects.replace(&c).await.unwrap();
    let mut c = f
        .state
        .objects
        .get::<Container>("app-0")
        .await
        .unwrap()
        .unwrap();
    let created = c.metadata.created.clone().expect("creation time");
    assert!(
        clock::parse_rfc3339(&created).unwrap() >= now - 1,
        "{created}"
    );
    c.spec.generation = 2;
    f.state.objects.replace(&c).await.unwrap();
    let c = f
        .state
        .objects
        .get::<Container>("app-0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.metadata.created, Some(created), "an update keeps it");
}

/// A container of role `app` on `board1` with port `http` 8080, in `phase` at `address`.
fn app_container(name: &str, ordinal: i64, phase: texu_api::ContainerPhase) -> texu_api::Container {
    let mut role = RoleSpec::with_image("host");
    role.ports = vec![texu_api::Port {
        name: "http".into(),
        port: 8080,
        host_port: None,
        protocol: Default::default(),
    }];
    let mut c = texu_api::Container::new(
        name,
        texu_api::ContainerSpec {
            role: "app".into(),
            ordinal,
            node: Some("board1".into()),
            generation: 1,
            template: Some(role),
            ..Default::default()
        },
    );
    c.status = Some(texu_api::ContainerStatus {
        phase,
        address: Some(format!("198.19.1.{}", ordinal + 2)),
        ..Default::default()
    });
    c
}

/// Reads NDJSON lines from a streaming body until one that is not a BOOKMARK arrives.
async fn next_change<B>(body: &mut B, text: &mut String) -> serde_json::Value
where
    B: warp::hyper::body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    loop {
        while let Some((line, rest)) = text.split_once('\n') {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            *text = rest.to_string();
            if value["type"] != "BOOKMARK" {
                return value;
            }
        }
        let frame = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut *body).poll_frame(cx)),
        )
        .await
        .expect("a line within 5 s")
        .expect("the stream is open")
        .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
}

#[tokio::test]
async fn endpoints_list_ready_containers_for_admins_and_boards_and_follow_changes() {
    use texu_api::ContainerPhase;
    let f = fixture();
    for c in [
        app_container("app-1", 1, ContainerPhase::Ready),
        app_container("app-0", 0, ContainerPhase::Ready),
        app_container("app-2", 2, ContainerPhase::Running),
    ] {
        f.state.objects.replace(&c).await.unwrap();
    }
    let (s, v) = call(&f, Method::GET, "/v1/endpoints", Some("secret"), b"").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["kind"], "EndpointsList");
    let http = &v["items"][0]["ports"]["http"];
    let names: Vec<&str> = http
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app-0", "app-1"], "Ready only, by ordinal");
    assert_eq!(http[0]["address"], "198.19.1.2");
    assert_eq!(
        (&http[0]["port"], &http[0]["node"]),
        (&8080.into(), &"board1".into())
    );

    // A board's credential may read them (its templates render from them).
    let joined = f
        .state
        .nodes
        .join(
            crate::nodes::JoinRequest {
                name: "board2".into(),
                labels: Default::default(),
                spec: texu_api::NodeSpec {
                    address: "198.18.0.3".into(),
                    arch: texu_api::Arch::Amd64,
                    cpus: 1,
                    memory_bytes: 1 << 30,
                    subnet: None,
                    unschedulable: false,
                    draining: false,
                },
            },
            crate::nodes::Joiner::JoinToken,
        )
        .await
        .unwrap();
    let (s, v) = call(
        &f,
        Method::GET,
        "/v1/endpoints/app",
        Some(&joined.credential),
        b"",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (&v["kind"], &v["role"]),
        (&"Endpoints".into(), &"app".into())
    );
    assert_eq!(v["ports"]["http"].as_array().unwrap().len(), 2);
    let (s, _) = call(&f, Method::GET, "/v1/endpoints/nosuch", Some("secret"), b"").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(&f, Method::GET, "/v1/endpoints", None, b"").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Watch: app-2 turning Ready is one MODIFIED line with three members.
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer secret"),
    );
    let req = Request {
        method: Method::GET,
        path: "/v1/endpoints/app".into(),
        query: parse_query("watch=true"),
        headers,
        remote: None,
    };
    let empty: Vec<Result<bytes::Bytes, warp::Error>> = Vec::new();
    let response = handle(f.state.clone(), req, stream::iter(empty)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut text = String::new();
    let mut c = f
        .state
        .objects
        .get::<texu_api::Container>("app-2")
        .await
        .unwrap()
        .unwrap();
    c.status.as_mut().unwrap().phase = ContainerPhase::Ready;
    f.state.objects.replace(&c).await.unwrap();
    let change = next_change(&mut body, &mut text).await;
    assert_eq!(change["type"], "MODIFIED");
    assert_eq!(
        change["object"]["ports"]["http"].as_array().unwrap().len(),
        3
    );
    f.stop.send(true).unwrap();
}
