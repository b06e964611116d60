//! The web dashboard at `/ui` in a real headless Chromium against a real cluster from the
//! harness (boards as network namespaces, real agents and LXC containers).
//!
//! The browser is Debian's `chromium`, driven through `chromedriver` (package
//! `chromium-driver`) over WebDriver on loopback, with plain HTTP and JSON. The test types the
//! admin token into the page like a person, then reads what the page shows. It needs root, LXC
//! and both packages (scripts/setup.sh installs them) and fails, never skips, without them. The
//! browser runs with a fresh profile in a temp dir, is told to make no traffic of its own, and is
//! killed with its whole process group at the end; the test checks that nothing of it is left.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use texu::cluster::{wait_until, with_cmdline_containing, Cluster, ClusterConfig};
use texu_api::ContainerPhase;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How WebDriver names an element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

fn texu_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_texu"))
}

/// Fails with what to install when the browser or its driver is missing.
fn require_chromium() -> Result<()> {
    let missing: Vec<String> = [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")]
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(path, package)| format!("{path} (Debian package {package})"))
        .collect();
    ensure!(
        missing.is_empty(),
        "the dashboard test drives a headless Chromium and needs {}: run scripts/setup.sh as root",
        missing.join(" and ")
    );
    Ok(())
}

/// A headless Chromium behind chromedriver, with its own profile directory. Dropping it ends
/// the session and kills the driver's whole process group (the browser with it).
struct Browser {
    driver: Option<Child>,
    url: String,
    session: Option<String>,
    http: ureq::Agent,
    profile: Option<tempfile::TempDir>,
}

impl Browser {
    /// A browser that resolves no name, reaches only `host` (the controller) and loopback, and
    /// trusts the controller's certificate because its chain holds the CA whose public key
    /// hashes to `ca_spki` (Chromium's own pinning flag; nothing else is trusted that way).
    fn start(host: &str, ca_spki: [u8; 32]) -> Result<Browser> {
        require_chromium()?;
        let profile = tempfile::Builder::new()
            .prefix("texu-dashboard-chromium-")
            .tempdir()
            .context("a profile dir for Chromium")?;
        // A free loopback port for the driver (it cannot report one it picked itself).
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = profile.path().join("chromedriver.log");
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: the browser it starts is killed with it, whatever happens.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot run {CHROMEDRIVER}"))?;
        let mut browser = Browser {
            driver: Some(driver),
            url: format!("http://127.0.0.1:{port}"),
            session: None,
            http: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(60))
                .build(),
            profile: Some(profile),
        };
        let status = format!("{}/status", browser.url);
        wait_until(Duration::from_secs(20), "chromedriver to answer", || {
            let text = browser.http.get(&status).call().ok()?.into_string().ok()?;
            let body: Value = serde_json::from_str(&text).ok()?;
            (body["value"]["ready"] == true).then_some(())
        })?;
        let user_data = browser.profile_dir().join("profile");
        let args = vec![
            "--headless=new".to_string(),
            // As root Chromium refuses to start with its sandbox.
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            format!("--user-data-dir={}", user_data.display()),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--window-size=1280,1024".into(),
            // No traffic of its own: no updates, sync, safe browsing, metrics or DNS.
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-default-apps".into(),
            "--disable-extensions".into(),
            "--disable-client-side-phishing-detection".into(),
            "--disable-domain-reliability".into(),
            "--no-pings".into(),
            "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication"
                .into(),
            format!("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {host}"),
            format!("--ignore-certificate-errors-spki-list={}", base64(&ca_spki)),
        ];
        let answer = browser.post(
            "/session",
            json!({ "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
            }}}),
        )?;
        let session = answer["sessionId"]
            .as_str()
            .with_context(|| format!("no session id in {answer}"))?;
        browser.session = Some(session.to_string());
        Ok(browser)
    }

    fn profile_dir(&self) -> &Path {
        self.profile
            .as_ref()
            .map_or(Path::new("/nonexistent"), |p| p.path())
    }

    /// One WebDriver command; its `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{path}", self.url);
        let request = self.http.request(method, &url);
        let answer = match body {
            Some(body) => request
                .set("Content-Type", "application/json")
                .send_string(&body.to_string()),
            None => request.call(),
        };
        let (code, text) = match answer {
            Ok(r) => (200, r.into_string()?),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => bail!("WebDriver {method} {path}: {e}"),
        };
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("WebDriver {method} {path} answered {code}: {text}"))?;
        ensure!(
            code == 200,
            "WebDriver {method} {path} answered {code}: {}\n{}",
            value["value"]["message"],
            self.driver_log()
        );
        Ok(value["value"].clone())
    }

    fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.call("POST", path, Some(body))
    }

    fn in_session(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let session = self.session.as_deref().context("no browser session")?;
        self.call(method, &format!("/session/{session}{path}"), body)
    }

    fn open(&self, url: &str) -> Result<()> {
        self.in_session("POST", "/url", Some(json!({ "url": url })))?;
        Ok(())
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    fn run(&self, script: &str) -> Result<Value> {
        self.in_session(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    fn element(&self, css: &str) -> Result<String> {
        let found = self.in_session(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        )?;
        found[ELEMENT_KEY]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no element {css}: {found}"))
    }

    /// Types `text` into the element `css`, as a person would.
    fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let element = self.element(css)?;
        self.in_session(
            "POST",
            &format!("/element/{element}/clear"),
            Some(json!({})),
        )?;
        self.in_session(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )?;
        Ok(())
    }

    fn click(&self, css: &str) -> Result<()> {
        let element = self.element(css)?;
        self.in_session(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        )?;
        Ok(())
    }

    /// The rows of the table `id` as the page shows them.
    fn rows(&self, id: &str) -> Result<Vec<Row>> {
        let rows = self.run(&format!(
            "return Array.from(document.querySelectorAll('#{id} tbody tr')).map(r => ({{
                cells: Array.from(r.cells).map(c => c.textContent),
                red: r.classList.contains('bad'),
                statusColor: r.cells.length > 1 ? getComputedStyle(r.cells[1]).color : '',
            }}));"
        ))?;
        Ok(serde_json::from_value(rows)?)
    }

    fn driver_log(&self) -> String {
        let log = self.profile_dir().join("chromedriver.log");
        let lines: Vec<String> = std::fs::File::open(log)
            .map(|f| BufReader::new(f).lines().map_while(Result::ok).collect())
            .unwrap_or_default();
        let tail = lines.len().saturating_sub(20);
        format!(
            "chromedriver log (last lines):\n{}",
            lines[tail..].join("\n")
        )
    }

    /// Ends the session, kills the driver's process group and removes the profile; fails if
    /// a process of this browser is still running afterwards.
    fn close(mut self) -> Result<()> {
        let profile = self.profile_dir().to_path_buf();
        self.shut_down();
        let left = wait_until(
            Duration::from_secs(10),
            "the browser's processes to end",
            || {
                let left = with_cmdline_containing(&profile.to_string_lossy());
                left.is_empty().then_some(())
            },
        );
        ensure!(
            left.is_ok(),
            "browser processes left behind: {:?}",
            with_cmdline_containing(&profile.to_string_lossy())
        );
        ensure!(!profile.exists(), "{} is left behind", profile.display());
        Ok(())
    }

    fn shut_down(&mut self) {
        if self.session.is_some() {
            let _ = self.in_session("DELETE", "", None);
            self.session = None;
        }
        if let Some(mut driver) = self.driver.take() {
            // The group holds the driver and every browser process it started.
            let group = nix::unistd::Pid::from_raw(driver.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = driver.wait();
            let profile = self.profile_dir().to_string_lossy().into_owned();
            let _ = wait_until(Duration::from_secs(10), "the browser to end", || {
                with_cmdline_containing(&profile).is_empty().then_some(())
            });
        }
        if let Some(profile) = self.profile.take() {
            let _ = profile.close();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// One table row as the page shows it.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    cells: Vec<String>,
    red: bool,
    status_color: String,
}

impl Row {
    fn cell(&self, i: usize) -> &str {
        self.cells.get(i).map_or("", |s| s.trim())
    }
}

/// A busybox HTTP responder, one per board (at most two on one).
const ECHO: &str = r#"apiVersion: texu.io/v1
kind: Role
metadata:
  name: echo
spec:
  replicas: 3
  image: template:busybox
  command: [/bin/httpd, -f, -p, "8080", -h, /etc]
  ports:
  - name: http
    port: 8080
  health:
    readiness:
      http: {path: /hostname, port: http}
      periodSeconds: 0.5
  placement:
    spread: node
    maxPerNode: 2
"#;

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
    c.apply_yaml(ECHO)?;
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
    browser.open(&page)?;
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
    ensure!(
        board2.status_color == "rgb(197, 48, 48)",
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

/// Standard base64 with padding (Chromium's SPKI list format).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
