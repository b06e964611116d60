//! Monitoring: the scrape config and alerting rules in deploy/ pass promtool (and the rules
//! fire on made-up series as `deploy/alerts_test.yml` expects), and on a real
//! cluster (boards as network namespaces, real agents and LXC containers, through the harness
//! in `texu::cluster`) the controller's and an agent's `/metrics` pass `promtool check metrics`
//! and show what a person watching them needs: boards by phase, heartbeat age, store latency,
//! a container's memory and CPU next to its limits, and a failover when a board loses power.
//!
//! promtool comes from Debian's `prometheus` package (scripts/setup.sh); the cluster test needs
//! root, iproute2 and LXC, and fails, never skips, without them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use texu::cluster::{Cluster, ClusterConfig};
use texu_api::ContainerPhase;

/// Runs `promtool ARGS...` with `stdin`, failing with how to get it when it is missing.
fn promtool(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool is missing ({e}): install Debian's `prometheus` package (scripts/setup.sh)")
        });
    if let Some(mut pipe) = child.stdin.take() {
        let _ = pipe.write_all(stdin.as_bytes());
    }
    child.wait_with_output().expect("promtool output")
}

/// Fails with promtool's output unless it passed.
fn assert_passes(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "promtool {what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `promtool COMMAND... deploy/<file>` (such as `check rules`).
fn promtool_on(command: &[&str], file: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file);
    let path = path.to_string_lossy();
    let args: Vec<&str> = command.iter().copied().chain([path.as_ref()]).collect();
    let out = promtool(&args, "");
    assert_passes(&out, &format!("{} {file}", command.join(" ")));
}

#[test]
fn alerting_rules_pass_promtool() {
    promtool_on(&["check", "rules"], "alerts.yml");
}

#[test]
fn alerts_fire_on_board_down_crash_loop_unschedulable_and_slow_or_stuck_failover() {
    promtool_on(&["test", "rules"], "alerts_test.yml");
}

#[test]
fn scrape_config_passes_promtool() {
    promtool_on(&["check", "config"], "prometheus.yml");
}

fn texu_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_texu"))
}

/// Where each board's agent serves its metrics, inside the board's namespace.
const AGENT_METRICS: &str = "127.0.0.1:9101";

/// One busybox web server with a memory and CPU limit.
const ROLE: &str = r#"apiVersion: texu.io/v1
kind: Role
metadata:
  name: mon
spec:
  replicas: 1
  image: template:busybox
  command: [/bin/httpd, -f, -p, "8080", -h, /etc]
  resources:
    memory: 48Mi
    cpu: 250m
  ports:
  - name: http
    port: 8080
  health:
    readiness:
      http: {path: /hostname, port: http}
      periodSeconds: 0.5
"#;

/// The value of the sample `series` (name and labels exactly as exported) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// `sample`, or an error that shows the scrape.
fn value(text: &str, series: &str) -> Result<f64> {
    sample(text, series).with_context(|| format!("no sample {series} in\n{text}"))
}

/// Scrapes `url` and checks it with `promtool check metrics`.
fn scrape_checked(text: Result<String>, what: &str) -> Result<String> {
    let text = text.with_context(|| format!("scraping the {what}"))?;
    assert_passes(
        &promtool(&["check", "metrics"], &text),
        &format!("check metrics ({what})"),
    );
    Ok(text)
}

fn controller_metrics(c: &Cluster) -> Result<String> {
    let url = format!("{}/metrics", c.server());
    c.http()
        .get(&url)
        .timeout(Duration::from_secs(5))
        .call()
        .with_context(|| format!("GET {url}"))?
        .into_string()
        .context("reading the controller's metrics")
}

/// The board number and node name the container `name` is Ready on.
fn ready_on(c: &Cluster, name: &str) -> Option<(usize, String)> {
    let container = c.api().container(name).ok()??;
    let status = container.status.as_ref()?;
    let node = container.spec.node.clone()?;
    let board = c
        .plan()
        .board_numbers()
        .find(|b| c.plan().node_name(*b) == node)?;
    (status.phase == ContainerPhase::Ready).then_some((board, node))
}

#[test]
fn controller_and_agent_metrics_pass_promtool_and_show_boards_usage_limits_and_a_failover(
) -> Result<()> {
    // Fail at once, before a cluster is built, when promtool is not there.
    assert_passes(&promtool(&["--version"], ""), "--version");
    let mut config = ClusterConfig::new(2, texu_bin());
    for board in 1..=2 {
        config.agent_args.insert(
            board,
            vec!["--metrics-listen".to_string(), AGENT_METRICS.to_string()],
        );
    }
    let mut c = Cluster::start(config).context("cannot start a 2-board cluster")?;
    c.apply_yaml(ROLE)?;
    c.wait_ready(Duration::from_secs(90))?;
    let (board, node) = c.wait_until(Duration::from_secs(30), "mon-0 Ready", || {
        ready_on(&c, "mon-0")
    })?;
    let other = 3 - board;

    let text = scrape_checked(controller_metrics(&c), "controller")?;
    ensure!(value(&text, "texu_controller_nodes{phase=\"Ready\"}")? == 2.0);
    ensure!(value(&text, "texu_controller_nodes{phase=\"NotReady\"}")? == 0.0);
    for b in 1..=2 {
        let age = value(
            &text,
            &format!(
                "texu_controller_node_heartbeat_age_seconds{{node=\"{}\"}}",
                c.plan().node_name(b)
            ),
        )?;
        ensure!(
            (0.0..60.0).contains(&age),
            "a live board's heartbeat age is {age}s"
        );
    }
    for op in ["get", "range", "txn"] {
        let series =
            format!("texu_controller_store_operation_duration_seconds_count{{op=\"{op}\"}}");
        ensure!(value(&text, &series)? > 0.0, "no store {op} timed");
    }
    ensure!(
        value(
            &text,
            "texu_controller_scheduling_pass_duration_seconds_count"
        )? > 0.0
    );
    ensure!(
        value(
            &text,
            "texu_controller_failovers_total{outcome=\"completed\"}"
        )? == 0.0
    );

    let url = format!("http://{AGENT_METRICS}/metrics");
    let agent = scrape_checked(
        c.http_get_from_board(board, &url).map_err(Into::into),
        "agent",
    )?;
    let labels = "{container=\"mon-0\",role=\"mon\"}";
    let memory = value(
        &agent,
        &format!("texu_agent_container_memory_bytes{labels}"),
    )?;
    ensure!(memory > 0.0, "mon-0 uses {memory} bytes");
    ensure!(
        memory < f64::from(48u32 << 20),
        "mon-0 uses {memory} bytes, over its limit"
    );
    let limit = value(
        &agent,
        &format!("texu_agent_container_memory_limit_bytes{labels}"),
    )?;
    ensure!(limit == f64::from(48u32 << 20), "memory limit {limit}");
    let cores = value(
        &agent,
        &format!("texu_agent_container_cpu_limit_cores{labels}"),
    )?;
    ensure!(cores == 0.25, "cpu limit {cores}");
    let cpu = value(
        &agent,
        &format!("texu_agent_container_cpu_seconds_total{labels}"),
    )?;
    ensure!(cpu > 0.0, "mon-0 used {cpu} s of CPU");
    ensure!(value(&agent, "texu_agent_containers{phase=\"Ready\"}")? == 1.0);

    // The board holding mon-0 loses power: the failover shows once mon-0 is Ready elsewhere.
    c.power_off(board)?;
    c.wait_until(
        Duration::from_secs(60),
        "mon-0 Ready on the other board",
        || ready_on(&c, "mon-0").filter(|(b, _)| *b == other),
    )?;
    let text = c.wait_until(
        Duration::from_secs(30),
        "the controller to count the failover",
        || {
            let text = controller_metrics(&c).ok()?;
            (sample(
                &text,
                "texu_controller_failovers_total{outcome=\"completed\"}",
            )? == 1.0)
                .then_some(text)
        },
    )?;
    let text = scrape_checked(Ok(text), "controller after the failover")?;
    ensure!(value(&text, "texu_controller_failover_duration_seconds_count")? == 1.0);
    let took = value(&text, "texu_controller_failover_duration_seconds_sum")?;
    ensure!(took > 0.0, "the failover took {took}s");
    println!("failover of {node} measured by the controller: {took:.2}s");
    ensure!(value(&text, "texu_controller_failovers_open")? == 0.0);
    ensure!(value(&text, "texu_controller_nodes{phase=\"NotReady\"}")? == 1.0);
    let age = |node: &str| {
        value(
            &text,
            &format!("texu_controller_node_heartbeat_age_seconds{{node=\"{node}\"}}"),
        )
    };
    let (dead, alive) = (age(&node)?, age(&c.plan().node_name(other))?);
    ensure!(
        dead > alive,
        "the powered-off board's heartbeat age ({dead}s) should pass the live one's ({alive}s)"
    );
    Ok(())
}
