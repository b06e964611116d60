//! The web dashboard at `/ui` in a real headless Chromium against a real cluster from the
//! harness (boards as network namespaces, real agents and LXC containers).
//!
//! The browser is Debian's `chromium`, driven through `chromedriver` (package
//! `chromium-driver`) over WebDriver on loopback, with plain HTTP and JSON. The test types the
//! admin token into the page like a person, then reads what the page shows. It needs root, LXC
//! and both packages (scripts/setup.sh installs them) and fails, never skips, without them. The
//! browser runs with a fresh profile in a temp dir, is told to make no traffic of its own, and is
//! killed with its whole process group at the end; the test checks that nothing of it is left.

#[path = "dashboard/browser.rs"]
mod browser;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use browser::{require_chromium, Browser, Row};
use serde_json::{json, Value};
use texu::cluster::fixtures::responder_role;
use texu::cluster::{wait_until, Cluster, ClusterConfig};
use texu_api::ContainerPhase;

fn texu_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_texu"))
}

/// Opens the dashboard in the current tab and gives it the admin token as a person would.
fn log_in(browser: &Browser, page: &str, token: &str) -> Result<()> {
    open_login(browser, page)?;
    browser.type_into("#token", token)?;
    browser.click("#login-button")
}

/// Opens the dashboard in the current tab and waits for it to ask for the token.
fn open_login(browser: &Browser, page: &str) -> Result<()> {
    browser.open(page)?;
    wait_until(
        Duration::from_secs(20),
        "the page to ask for the token",
        || {
            let shown = browser
                .run("return !document.getElementById('login').hidden;")
                .ok()?;
            (shown == true).then_some(())
        },
    )?;
    Ok(())
}

/// (name, board, phase) of each container as the page's Containers table shows it, by name.
fn shown_containers(browser: &Browser) -> Result<Vec<(String, String, String)>> {
    let mut shown: Vec<(String, String, String)> = browser
        .rows("containers")?
        .iter()
        .map(|r| (r.cell(0).into(), r.cell(2).into(), r.cell(3).into()))
        .collect();
    shown.sort();
    Ok(shown)
}

/// (name, node, phase) of each container as the API lists it, by name.
fn api_containers(c: &Cluster) -> Result<Vec<(String, String, String)>> {
    let mut listed: Vec<(String, String, String)> = c
        .api()
        .containers()?
        .into_iter()
        .map(|k| {
            let phase = k.status.map_or(ContainerPhase::Pending, |s| s.phase);
            let node = k.spec.node.unwrap_or_default();
            (k.metadata.name, node, phase.as_str().to_string())
        })
        .collect();
    listed.sort();
    Ok(listed)
}

#[test]
fn the_dashboard_lists_the_boards_and_shows_a_powered_off_board_not_ready_and_its_containers_elsewhere(
) -> Result<()> {
    require_chromium()?;
    let mut c = Cluster::start(ClusterConfig::new(3, texu_bin()))
        .context("cannot start a 3-board cluster")?;
    // A busybox HTTP responder, one per board (at most two on one).
    c.apply_yaml(&responder_role("echo", 3, 2))?;
    c.wait_ready(Duration::from_secs(90))?;
    let boards: Vec<String> = (1..=3).map(|b| c.plan().node_name(b)).collect();
    let page = format!("{}/ui", c.server());
    let host = c
        .server()
        .trim_start_matches("https://")
        .rsplit_once(':')
        .map_or(c.server(), |(host, _)| host)
        .to_string();
    let ca_spki = texu_controller::tls::ca_spki_sha256(&c.plan().controller_dir())
        .context("the controller's CA key")?;
    let browser = Browser::start(&host, ca_spki)?;

    // Without the token the page asks for it and shows nothing of the cluster.
    open_login(&browser, &page)?;
    ensure!(
        browser.rows("nodes")?.is_empty(),
        "the page shows boards before it has a token"
    );
    browser.type_into("#token", "not-the-token")?;
    browser.click("#login-button")?;
    let refused = wait_until(
        Duration::from_secs(20),
        "the page to refuse a bad token",
        || {
            let text = browser
                .run("return document.getElementById('login-error').textContent;")
                .ok()?;
            text.as_str().filter(|t| !t.is_empty()).map(str::to_string)
        },
    )?;
    ensure!(refused.contains("refused"), "the error says {refused:?}");
    ensure!(
        browser.rows("nodes")?.is_empty(),
        "a bad token shows boards"
    );

    // With the admin token: every board Ready, every container on its board.
    browser.type_into("#token", c.token())?;
    browser.click("#login-button")?;
    wait_until(
        Duration::from_secs(30),
        "the page to list 3 Ready boards",
        || {
            let rows = browser.rows("nodes").ok()?;
            let ready: Vec<&str> = rows
                .iter()
                .filter(|r| r.cell(1) == "Ready" && !r.red)
                .map(|r| r.cell(0))
                .collect();
            (ready == boards).then_some(())
        },
    )?;
    let placed = api_containers(&c)?;
    ensure!(
        placed.len() == 3 && placed.iter().all(|(_, _, phase)| phase == "Ready"),
        "the API lists {placed:?}"
    );
    wait_until(
        Duration::from_secs(30),
        "the page to show every container Ready on its board",
        || (shown_containers(&browser).ok()? == placed).then_some(()),
    )?;
    let node_rows = browser.rows("nodes")?;
    for row in &node_rows {
        ensure!(
            row.cell(2) == "amd64",
            "arch of {}: {:?}",
            row.cell(0),
            row.cells
        );
        ensure!(
            row.cell(3).starts_with("198.18."),
            "address of {}: {:?}",
            row.cell(0),
            row.cells
        );
        ensure!(
            row.cell(4).ends_with("ago"),
            "last heartbeat of {}: {:?}",
            row.cell(0),
            row.cells
        );
    }
    let roles = browser.rows("roles")?;
    ensure!(
        roles.len() == 1
            && roles[0].cell(0) == "echo"
            && roles[0].cell(1) == "3"
            && roles[0].cell(2) == "3",
        "roles: {roles:?}"
    );
    let endpoints = wait_until(
        Duration::from_secs(20),
        "the page to show echo's endpoints",
        || {
            let rows = browser.rows("endpoints").ok()?;
            rows.into_iter().find(|r| {
                r.cell(0) == "echo"
                    && r.cell(1) == "http"
                    && r.cell(2).matches(":8080").count() == 3
            })
        },
    )?;
    let token_kept = browser.run(
        "window.texuTestSamePage = true; \
         return [sessionStorage.getItem('texu.adminToken'), localStorage.length];",
    )?;
    ensure!(
        token_kept == json!([c.token(), 0]),
        "the token is kept in sessionStorage only: {token_kept}"
    );
    println!("endpoints shown: {:?}", endpoints.cells);
    let protocol =
        browser.run("return performance.getEntriesByType('navigation')[0].nextHopProtocol;")?;
    ensure!(
        protocol == "h2",
        "the page came over {protocol}, not HTTP/2"
    );

    // Two more tabs of the same browser, each logged in: ten more watch streams. Over HTTP/1.1
    // the third tab would wait for one of the six connections a browser opens to one host;
    // over HTTP/2 every stream shares one connection and every tab is live.
    let first_tab = browser.current_tab()?;
    let mut tabs = Vec::new();
    for _ in 0..2 {
        tabs.push(browser.new_tab()?);
        log_in(&browser, &page, c.token())?;
        wait_until(
            Duration::from_secs(30),
            "another tab to list 3 Ready boards",
            || {
                let rows = browser.rows("nodes").ok()?;
                (rows.iter().filter(|r| r.cell(1) == "Ready").count() == 3).then_some(())
            },
        )?;
    }
    browser.switch_to(&first_tab)?;

    // Power board 2 off: the page turns it red and shows its containers on the other boards,
    // by itself (the same page, never reloaded).
    let lost: Vec<String> = placed
        .iter()
        .filter(|(_, node, _)| *node == boards[1])
        .map(|(name, _, _)| name.clone())
        .collect();
    ensure!(!lost.is_empty(), "board 2 runs none of {placed:?}");
    let off = Instant::now();
    c.power_off(2)?;
    let board2 = wait_until(
        Duration::from_secs(30),
        "the page to show board 2 NotReady",
        || {
            let rows = browser.rows("nodes").ok()?;
            rows.into_iter()
                .find(|r| r.cell(0) == boards[1] && r.cell(1) == "NotReady")
        },
    )?;
    println!("power-off to NotReady on the page: {:?}", off.elapsed());
    ensure!(board2.red, "board 2's row is not marked red: {board2:?}");
    for tab in &tabs {
        browser.switch_to(tab)?;
        wait_until(
            Duration::from_secs(30),
            "every other tab to show board 2 NotReady",
            || {
                let rows = browser.rows("nodes").ok()?;
                rows.iter()
                    .any(|r| r.cell(0) == boards[1] && r.cell(1) == "NotReady")
                    .then_some(())
            },
        )?;
        browser.close_tab()?;
    }
    browser.switch_to(&first_tab)?;
    // The row's text and its colour come from one render, but the computed style may be read
    // a frame before it is applied: read the row again until it is drawn.
    let drawn = wait_until(Duration::from_secs(5), "board 2's status drawn", || {
        browser
            .rows("nodes")
            .ok()?
            .into_iter()
            .find(|r| r.cell(0) == boards[1] && r.status_color == "rgb(197, 48, 48)")
    });
    ensure!(
        drawn.is_ok(),
        "board 2's status is drawn in {}, not red",
        board2.status_color
    );
    let moved = wait_until(
        Duration::from_secs(60),
        "the page to show board 2's containers Ready on boards 1 and 3",
        || {
            let shown = shown_containers(&browser).ok()?;
            let all_ready_elsewhere = lost.iter().all(|name| {
                shown.iter().any(|(n, board, phase)| {
                    n == name && board != &boards[1] && !board.is_empty() && phase == "Ready"
                })
            });
            all_ready_elsewhere.then_some(shown)
        },
    )?;
    println!(
        "power-off to containers Ready elsewhere on the page: {:?}",
        off.elapsed()
    );
    // What the page shows is what the controller says (read both until they agree: the page
    // follows the controller a moment later).
    let mut api = Vec::new();
    let agreed = wait_until(
        Duration::from_secs(10),
        "the page to agree with the API",
        || {
            api = api_containers(&c).ok()?;
            (shown_containers(&browser).ok()? == api).then_some(())
        },
    );
    ensure!(
        agreed.is_ok(),
        "the page shows {moved:?}, the API says {api:?}"
    );
    let others: Vec<Row> = browser.rows("nodes")?;
    for row in others.iter().filter(|r| r.cell(0) != boards[1]) {
        ensure!(
            row.cell(1) == "Ready" && !row.red,
            "a board that stayed up: {row:?}"
        );
    }
    wait_until(
        Duration::from_secs(20),
        "a NodeNotReady event for board 2 in the feed",
        || {
            let events = browser
            .run("return Array.from(document.querySelectorAll('#events li')).map(li => li.textContent);")
            .ok()?;
            events
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .any(|e| e.contains("NodeNotReady") && e.contains(&boards[1]))
                .then_some(())
        },
    )?;
    let same_page = browser.run("return window.texuTestSamePage === true;")?;
    ensure!(same_page == true, "the page was reloaded");

    browser.close()?;
    c.teardown()?;
    Ok(())
}
