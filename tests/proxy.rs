//! End to end, the demo's proxy role (manifests/demo/proxy.yaml) with real Apache httpd, real
//! LXC and three boards of the harness in `texu::cluster`: two proxies balance over the `web`
//! responders, with balancer members that follow the web role's endpoints through live
//! templates. One cluster, sequential steps (each slow to set up):
//!
//! 1. two proxies and three web replicas: each proxy's hostPort reaches all three;
//! 2. web scaled to 5: both proxies balance over 5;
//! 3. web scaled 15 -> 5 (ten removals, seen as several endpoint changes within a second):
//!    exactly one reload per proxy;
//! 4. a template that does not render, then a rendered config that `apache2 -t` refuses: Apache
//!    keeps serving, `texu describe container` and `texu events` say what failed (file and
//!    line), and the corrected manifest recovers;
//! 5. `/server-status` and the balancer-manager answer inside the proxy's container only;
//! 6. the board of one proxy powered off: the other keeps serving, a replacement becomes Ready.
//!
//! Needs root, iproute2, LXC and apache2 (scripts/setup.sh installs them) and fails, never
//! skips, without them. Traffic stays in the cluster's own 198.18.0.0/15 namespaces.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use texu::cluster::{Cluster, ClusterConfig};
use texu_api::{ContainerPhase, FileStatus};

fn texu_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_texu"))
}

const CONF: &str = "/run/texu/httpd.conf";

/// The busybox responders the proxy balances over (`GET /hostname` answers the container name).
fn web(replicas: usize) -> String {
    texu::cluster::fixtures::responder_role("web", replicas, 5)
}

fn demo_proxy() -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/demo/proxy.yaml");
    std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
}

/// The demo proxy manifest with `from` replaced by `to` (which must occur once).
fn proxy_with(from: &str, to: &str) -> Result<String> {
    let text = demo_proxy()?;
    ensure!(
        text.matches(from).count() == 1,
        "{from:?} once in proxy.yaml"
    );
    Ok(text.replace(from, to))
}

fn web_names(n: usize) -> BTreeSet<String> {
    (0..n).map(|i| format!("web-{i}")).collect()
}

/// The board number of node `node`.
fn board_of(c: &Cluster, node: &str) -> Result<usize> {
    c.plan()
        .board_numbers()
        .find(|b| c.plan().node_name(*b) == node)
        .with_context(|| format!("the board of node {node}"))
}

/// Ready proxies: name -> board.
fn ready_proxies(c: &Cluster) -> Result<BTreeMap<String, usize>> {
    let mut out = BTreeMap::new();
    for p in c.api().containers()? {
        let ready = p.status.as_ref().map(|s| s.phase) == Some(ContainerPhase::Ready);
        if p.spec.role == "proxy" && ready {
            if let Some(node) = p.spec.node.as_deref() {
                out.insert(p.metadata.name.clone(), board_of(c, node)?);
            }
        }
    }
    Ok(out)
}

/// The proxy's URL for `path` on board `board`'s hostPort.
fn url(c: &Cluster, board: usize, path: &str) -> String {
    format!("http://{}:8000{path}", c.plan().board_address(board))
}

/// A board other than `not` (and not `also`), to send requests from.
fn other_board(c: &Cluster, not: usize, also: Option<usize>) -> usize {
    c.plan()
        .board_numbers()
        .find(|b| *b != not && Some(*b) != also)
        .unwrap_or(1)
}

/// GETs `/hostname` through the proxy on `board` from board `from` until the answers are
/// exactly `want`; bounded (600 requests or 60 s). The distinct answers seen last.
fn answers_until(
    c: &Cluster,
    from: usize,
    board: usize,
    want: &BTreeSet<String>,
) -> BTreeSet<String> {
    let target = url(c, board, "/hostname");
    let mut seen = BTreeSet::new();
    let mut window: Vec<String> = Vec::new();
    let started = Instant::now();
    // Bounded by time and count; paced, so a quiet machine does not spend its 3000 requests in
    // the second before a proxy's reload.
    for _ in 0..3000 {
        if started.elapsed() > Duration::from_secs(60) {
            break;
        }
        match c.http_get_from_board(from, &target) {
            Ok(body) => {
                std::thread::sleep(Duration::from_millis(20));
                window.push(body.trim().to_string());
                // The last 4 x |want| answers: members that left stop showing up.
                let keep = 4 * want.len().max(1);
                if window.len() > keep {
                    window.remove(0);
                }
                seen = window.iter().cloned().collect();
                if &seen == want {
                    break;
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    seen
}

/// The status of proxy `name`'s httpd.conf.
fn conf_status(c: &Cluster, name: &str) -> Result<FileStatus> {
    let container = c
        .api()
        .container(name)?
        .context(format!("container {name}"))?;
    container
        .status
        .and_then(|s| s.files.into_iter().find(|f| f.path == CONF))
        .with_context(|| format!("{name} reports no status for {CONF}"))
}

/// Waits until no proxy's reload count moved for 3 s (longer than the 2 s maximum wait plus
/// a reload); the counts then.
fn settled_reloads(c: &Cluster, names: &[String]) -> Result<BTreeMap<String, u64>> {
    let read = || -> Result<BTreeMap<String, u64>> {
        names
            .iter()
            .map(|n| Ok((n.clone(), conf_status(c, n)?.reloads)))
            .collect()
    };
    let mut last = read()?;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_secs(3));
        let now = read()?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    bail!("proxy reloads kept changing: {last:?}")
}

/// Follows `GET /v1/endpoints/web?watch=true&revision=R` until web's http list has `until`
/// members; how many changes on the way removed members. Bounded by a 20 s read timeout.
fn endpoint_removals(c: &Cluster, after: i64, from: usize, until: usize) -> Result<usize> {
    let url = format!(
        "{}/v1/endpoints/web?watch=true&revision={after}",
        c.server()
    );
    let response = c
        .http()
        .get(&url)
        .set("Authorization", &format!("Bearer {}", c.token()))
        .timeout(Duration::from_secs(20))
        .call()
        .context("watch web's endpoints")?;
    let (mut removals, mut last) = (0, from);
    for line in std::io::BufReader::new(response.into_reader()).lines() {
        let line = line.context("read the endpoints watch")?;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        if v["type"] == "MODIFIED" {
            let members = v["object"]["ports"]["http"].as_array().map_or(0, Vec::len);
            if members < last {
                removals += 1;
            }
            last = members;
            if members == until {
                return Ok(removals);
            }
        }
    }
    bail!("the endpoints watch ended before web had {until} members")
}

/// The revision of web's endpoints now.
fn endpoints_revision(c: &Cluster) -> Result<i64> {
    let text = c.texu_ok(&["get", "endpoints", "web", "-o", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    v["revision"]
        .as_i64()
        .context("a revision in the endpoints")
}

/// `count` requests through the proxy on `board` (from `from`); every one must answer 2xx.
/// Their bodies.
fn all_succeed(c: &Cluster, from: usize, board: usize, count: usize) -> Result<Vec<String>> {
    let target = url(c, board, "/hostname");
    (0..count)
        .map(|i| {
            c.http_get_from_board(from, &target)
                .map(|body| body.trim().to_string())
                .with_context(|| format!("request {} of {count} through {target}", i + 1))
        })
        .collect()
}

/// Waits until the conf status of every proxy satisfies `ok`.
fn wait_conf(
    c: &Cluster,
    names: &[String],
    what: &str,
    ok: impl Fn(&FileStatus) -> bool,
) -> Result<Vec<FileStatus>> {
    Ok(c.wait_until(Duration::from_secs(60), what, || {
        let all: Vec<FileStatus> = names
            .iter()
            .filter_map(|n| conf_status(c, n).ok())
            .collect();
        (all.len() == names.len() && all.iter().all(&ok)).then_some(all)
    })?)
}

#[test]
fn the_demo_proxy_balances_follows_endpoints_survives_bad_configs_and_a_lost_board() -> Result<()> {
    ensure!(
        Path::new("/usr/sbin/apache2").exists(),
        "/usr/sbin/apache2 is missing: run scripts/setup.sh (Debian package apache2)"
    );
    ensure!(
        Path::new("/usr/bin/curl").exists(),
        "/usr/bin/curl is missing: run scripts/setup.sh (Debian package curl)"
    );
    let mut c = Cluster::start(ClusterConfig::new(3, texu_bin())).context("a 3-board cluster")?;

    // 1. Two proxies over three replicas: each proxy's hostPort reaches all three.
    c.apply_yaml(&web(3))?;
    c.apply_yaml(&demo_proxy()?)?;
    c.wait_ready(Duration::from_secs(180))?;
    let proxies = ready_proxies(&c)?;
    ensure!(proxies.len() == 2, "two Ready proxies, got {proxies:?}");
    let names: Vec<String> = proxies.keys().cloned().collect();
    for (name, board) in &proxies {
        let from = other_board(&c, *board, None);
        let seen = answers_until(&c, from, *board, &web_names(3));
        assert_eq!(
            seen,
            web_names(3),
            "answers through {name}\n{}",
            c.diagnostics()
        );
    }

    // 2. Scaled to five: both proxies balance over five.
    c.apply_yaml(&web(5))?;
    c.wait_ready(Duration::from_secs(180))?;
    for (name, board) in &proxies {
        let from = other_board(&c, *board, None);
        let seen = answers_until(&c, from, *board, &web_names(5));
        assert_eq!(
            seen,
            web_names(5),
            "answers through {name}\n{}",
            c.diagnostics()
        );
    }

    // 3. A burst: fifteen replicas scaled down to five deletes ten endpoints at once.
    c.apply_yaml(&web(15))?;
    c.wait_ready(Duration::from_secs(300))?;
    let before = settled_reloads(&c, &names)?;
    let revision = endpoints_revision(&c)?;
    let applied = Instant::now();
    c.apply_yaml(&web(5))?;
    let removals = endpoint_removals(&c, revision, 15, 5)?;
    eprintln!(
        "burst: {removals} endpoint changes removing a web member, all within {:?} of the apply",
        applied.elapsed()
    );
    // Ten replicas go. The scheduler deletes them in one group commit, so they usually reach
    // the boards as one endpoint change; when they come as several (a slow pass splits them),
    // the agents' debounce (unit tests in agent/src/daemon/live_files.rs) still reloads once.
    assert!(removals >= 1, "the ten removals never reached the boards");
    let after = settled_reloads(&c, &names)?;
    for name in &names {
        assert_eq!(
            after[name],
            before[name] + 1,
            "{name}: one reload for the burst (before {before:?}, after {after:?})"
        );
    }
    for (name, board) in &proxies {
        let from = other_board(&c, *board, None);
        let seen = answers_until(&c, from, *board, &web_names(5));
        assert_eq!(seen, web_names(5), "answers through {name} after the burst");
    }
    let good = wait_conf(&c, &names, "settled proxy configs", |f| {
        f.last_error.is_none()
    })?;

    // 4a. A template that does not render: the previous text stays, Apache keeps serving.
    c.apply_yaml(&proxy_with(
        "{% for e in endpoints.web.http %}",
        "{% for e in endpoints.web.http %",
    )?)?;
    let failed = wait_conf(&c, &names, "a render error in the proxies' status", |f| {
        f.last_error
            .as_deref()
            .is_some_and(|e| e.contains("cannot render") && e.contains("line"))
    })?;
    for (f, g) in failed.iter().zip(&good) {
        assert_eq!(f.hash, g.hash, "the previous text stays in use");
    }
    for (name, board) in &proxies {
        all_succeed(&c, other_board(&c, *board, None), *board, 10)
            .with_context(|| format!("{name} serves with its previous config"))?;
        let described = c.texu_ok(&["describe", "container", name])?;
        assert!(
            described.contains(CONF) && described.contains("cannot render"),
            "describe {name} shows the render error:\n{described}"
        );
    }
    let events = c.texu_ok(&["events"])?;
    assert!(
        events.contains("FileFailed") && events.contains("cannot render"),
        "texu events shows the render error:\n{events}"
    );

    // 4b. A config that renders but `apache2 -t` refuses: put back, not reloaded.
    c.apply_yaml(&proxy_with(
        "LogLevel warn\n",
        "LogLevel warn\n      NoSuchDirective on\n",
    )?)?;
    let refused = wait_conf(&c, &names, "a check error in the proxies' status", |f| {
        f.last_error
            .as_deref()
            .is_some_and(|e| e.contains("Syntax error on line"))
    })?;
    for (f, g) in refused.iter().zip(&good) {
        assert_eq!(f.hash, g.hash, "the previous text is back");
        assert_eq!(f.reloads, g.reloads, "no reload for a refused config");
    }
    for (name, board) in &proxies {
        all_succeed(&c, other_board(&c, *board, None), *board, 10)
            .with_context(|| format!("{name} serves after a refused config"))?;
        let described = c.texu_ok(&["describe", "container", name])?;
        assert!(
            described.contains("Syntax error on line"),
            "describe {name} shows the check error:\n{described}"
        );
    }
    let events = c.texu_ok(&["events"])?;
    assert!(
        events.contains("Syntax error on line"),
        "texu events shows the check error:\n{events}"
    );

    // 4c. The corrected manifest: nothing failing any more, still serving.
    c.apply_yaml(&demo_proxy()?)?;
    let recovered = wait_conf(&c, &names, "the errors cleared", |f| f.last_error.is_none())?;
    for (f, g) in recovered.iter().zip(&good) {
        assert_eq!(
            f.hash, g.hash,
            "the corrected manifest renders the text in use"
        );
    }
    for (name, board) in &proxies {
        all_succeed(&c, other_board(&c, *board, None), *board, 10)
            .with_context(|| format!("{name} serves after the correction"))?;
    }

    // 5. Status pages: refused through the hostPort, answered inside the container.
    for (name, board) in &proxies {
        let from = other_board(&c, *board, None);
        for page in ["/server-status", "/balancer-manager"] {
            let outside = c.http_get_from_board(from, &url(&c, *board, page));
            assert!(
                outside
                    .as_ref()
                    .is_err_and(|e| e.to_string().contains("403")),
                "{page} through {name}'s hostPort must be refused: {outside:?}"
            );
            let inside = c.exec_in_container(
                *board,
                name,
                &["/usr/bin/curl", "-fsS", &format!("http://127.0.0.1{page}")],
            )?;
            assert!(
                inside.status.success(),
                "{page} inside {name}: {}",
                String::from_utf8_lossy(&inside.stderr)
            );
        }
    }

    // 6. Power off the board of one proxy: the other keeps serving; a replacement is Ready.
    let (lost, lost_board) = proxies
        .iter()
        .next()
        .map(|(n, b)| (n.clone(), *b))
        .context("a proxy")?;
    let (kept, kept_board) = proxies
        .iter()
        .find(|(n, _)| **n != lost)
        .map(|(n, b)| (n.clone(), *b))
        .context("the other proxy")?;
    let from = other_board(&c, lost_board, Some(kept_board));
    c.power_off(lost_board)?;
    let cut = Instant::now();
    all_succeed(&c, from, kept_board, 30)
        .with_context(|| format!("{kept} keeps serving with {lost}'s board off"))?;
    let lost_node = c.plan().node_name(lost_board);
    let replacement = c.wait_until(
        Duration::from_secs(120),
        "a replacement proxy Ready on another board",
        || {
            let ready = ready_proxies(&c).ok()?;
            let moved = ready.get(&lost).copied().filter(|b| *b != lost_board);
            (ready.len() == 2).then_some(moved).flatten()
        },
    )?;
    eprintln!(
        "{lost} Ready on board {replacement} {:?} after {lost_node} was powered off",
        cut.elapsed()
    );
    let from = other_board(&c, lost_board, Some(replacement));
    let bodies = all_succeed(&c, from, replacement, 10)?;
    assert!(
        bodies.iter().all(|b| b.starts_with("web-")),
        "the replacement proxy answers with web replicas: {bodies:?}"
    );
    Ok(())
}
