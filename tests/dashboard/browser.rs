//! A headless Chromium driven through chromedriver over WebDriver (plain HTTP and JSON on
//! loopback), for the dashboard test: open a page, run a script, type, click, read the rows of
//! a table, open more tabs.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use texu::cluster::{wait_until, with_cmdline_containing};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How WebDriver names an element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Fails with what to install when the browser or its driver is missing.
pub fn require_chromium() -> Result<()> {
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
pub struct Browser {
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
    pub fn start(host: &str, ca_spki: [u8; 32]) -> Result<Browser> {
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

    pub fn open(&self, url: &str) -> Result<()> {
        self.in_session("POST", "/url", Some(json!({ "url": url })))?;
        Ok(())
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    pub fn run(&self, script: &str) -> Result<Value> {
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
    pub fn type_into(&self, css: &str, text: &str) -> Result<()> {
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

    pub fn click(&self, css: &str) -> Result<()> {
        let element = self.element(css)?;
        self.in_session(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        )?;
        Ok(())
    }

    /// Opens a new tab and makes it the current one; its handle.
    pub fn new_tab(&self) -> Result<String> {
        let opened = self.in_session("POST", "/window/new", Some(json!({ "type": "tab" })))?;
        let handle = opened["handle"]
            .as_str()
            .with_context(|| format!("no window handle in {opened}"))?
            .to_string();
        self.switch_to(&handle)?;
        Ok(handle)
    }

    /// The current tab's handle.
    pub fn current_tab(&self) -> Result<String> {
        let handle = self.in_session("GET", "/window", None)?;
        handle
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no window handle in {handle}"))
    }

    /// Makes tab `handle` the current one.
    pub fn switch_to(&self, handle: &str) -> Result<()> {
        self.in_session("POST", "/window", Some(json!({ "handle": handle })))?;
        Ok(())
    }

    /// Closes the current tab (switch to another one afterwards).
    pub fn close_tab(&self) -> Result<()> {
        self.in_session("DELETE", "/window", None)?;
        Ok(())
    }

    /// The rows of the table `id` as the page shows them.
    pub fn rows(&self, id: &str) -> Result<Vec<Row>> {
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
    pub fn close(mut self) -> Result<()> {
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
pub struct Row {
    pub cells: Vec<String>,
    pub red: bool,
    pub status_color: String,
}

impl Row {
    pub fn cell(&self, i: usize) -> &str {
        self.cells.get(i).map_or("", |s| s.trim())
    }
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
