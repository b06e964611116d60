//! `texu sim`: many simulated boards in one process against a real controller, for scale
//! figures. Each board joins with the join token, heartbeats at the real rate, follows its own
//! containers through a watch and reports them Ready at once (no runtime: nothing starts). A
//! share of the boards can lose power at once and get it back later.
//!
//! What it prints, one line each (benches/scale.sh reads them): `joined`, `applied`, `ready`,
//! `power off` (with every board's name), `failover`, `power back`, a `heartbeats` line per
//! reporting period, and `total` at the end.

mod board;
mod http;
mod stats;
mod tls;

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hyper::Method;
use texu_api::{Arch, Cidr, NodeSpec};
use texu_controller::nodes::{JoinRequest, JoinResponse};
use tokio::sync::watch;

use board::Board;
use http::{Http, HttpError};
use stats::Stats;

/// The label every simulated board joins with (its value: the name prefix), which the
/// simulation's own role selects.
pub const SIM_LABEL: &str = "texu.io/sim";
/// Joins in flight at once.
const JOINS_AT_ONCE: usize = 8;
/// Overlay addresses of simulated boards start here (never contacted: nothing listens there).
const FIRST_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 4, 0);

/// Why the simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{range} has no {index}th /{prefix} subnet: give the controller (and --cluster-cidr) a larger range or a longer --subnet-prefix")]
    NoSubnet {
        range: Cidr,
        prefix: u8,
        index: usize,
    },
    #[error("board {name} cannot join")]
    Join {
        name: String,
        #[source]
        source: HttpError,
    },
    #[error("the join answer for {name} does not decode")]
    JoinAnswer {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("applying the simulation's role {name}: {message}")]
    Apply { name: String, message: String },
}

/// A share of the boards losing power at once.
#[derive(Debug, Clone, Copy)]
pub struct PowerCut {
    /// Percent of the boards (rounded up to whole boards).
    pub percent: f64,
    /// How long after every board has joined.
    pub after: Duration,
    /// How long until their power is back (never, if `None`).
    pub back_after: Option<Duration>,
}

/// What to simulate.
pub struct Options {
    pub server: String,
    pub join_token: String,
    pub boards: usize,
    /// Board names are `PREFIX-0000`, `PREFIX-0001`, ...
    pub prefix: String,
    /// The controller's container range: board `i` asks for its `i`th subnet.
    pub cluster_cidr: Cidr,
    pub subnet_prefix: u8,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub heartbeat: Duration,
    /// With an admin client: a role of `boards x this` replicas is applied onto the boards.
    pub containers_per_board: usize,
    pub admin: Option<crate::client::Client>,
    /// Trusts the cluster CA (from `--ca-file` or the CLI config's `ca`).
    pub tls: std::sync::Arc<rustls::ClientConfig>,
    pub power_cut: Option<PowerCut>,
    /// Stop after this long (else at `stop`).
    pub duration: Option<Duration>,
    pub report_every: Duration,
}

/// Runs the simulation until `stop` or `options.duration`.
pub async fn run(options: Options, mut stop: watch::Receiver<bool>) -> Result<(), SimError> {
    let http = Http::new(&options.server, options.tls.clone())?;
    let started = Instant::now();
    let boards = join_all(&http, &options).await?;
    println!(
        "joined {} boards in {:.1} s",
        boards.len(),
        started.elapsed().as_secs_f64()
    );
    let stats = Arc::new(Stats::default());
    let (halt_tx, halt) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let n = boards.len().max(1) as u32;
    for (i, b) in boards.iter().enumerate() {
        let offset = options.heartbeat * i as u32 / n;
        tasks.spawn(b.clone().beat(
            http.clone(),
            stats.clone(),
            options.heartbeat,
            offset,
            halt.clone(),
        ));
        tasks.spawn(b.clone().follow(http.clone(), halt.clone()));
    }
    // A board is Ready only once its first heartbeat arrived: apply before that and the
    // scheduler places everything on the few boards already heard.
    let heard = async {
        while !boards.iter().all(|b| b.heard()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), heard)
        .await
        .is_err()
    {
        let unheard = boards.iter().filter(|b| !b.heard()).count();
        println!("warning: {unheard} boards had no heartbeat answered within 60 s");
    }
    let joined = Instant::now();
    let expected = apply_role(&options).await?;
    let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
    let mut report = tokio::time::interval(options.report_every);
    report.tick().await;
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    // When every container was held (at once when there are none): the power cut counts
    // its `after` from here.
    let mut ready_at = (expected == 0).then(Instant::now);
    let mut cut: Option<(Vec<Arc<Board>>, Instant)> = None;
    let mut cut_done = options.power_cut.is_none();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = sleep_until(deadline) => break,
            _ = report.tick() => {
                let (period, failed) = stats.period();
                let on = boards.len() - cut.as_ref().map_or(0, |(c, _)| c.len());
                let held: usize = boards.iter().map(|b| b.containers().len()).sum();
                match period {
                    Some(s) => println!("heartbeats: {s}; {failed} failed in all; {on} boards on, {held} containers held"),
                    None => println!("heartbeats: none answered; {failed} failed in all; {on} boards on, {held} containers held"),
                }
                continue;
            }
            _ = poll.tick() => {}
        }
        if ready_at.is_none() {
            let held: usize = boards.iter().map(|b| b.containers().len()).sum();
            if held >= expected {
                println!(
                    "ready: {held} containers held (each reported Ready in its board's next beat) on {} boards, {:.1} s after the last join",
                    boards.len(),
                    joined.elapsed().as_secs_f64()
                );
                ready_at = Some(Instant::now());
            }
        }
        let (Some(plan), Some(ready_at)) = (options.power_cut, ready_at) else {
            continue;
        };
        match &cut {
            None if !cut_done && ready_at.elapsed() >= plan.after => {
                let chosen = pick(&boards, plan.percent);
                let held: HashSet<String> = chosen.iter().flat_map(|b| b.containers()).collect();
                for b in &chosen {
                    b.set_power(false);
                }
                let names: Vec<&str> = chosen.iter().map(|b| b.name.as_str()).collect();
                println!(
                    "power off: {} boards holding {} containers: {}",
                    chosen.len(),
                    held.len(),
                    names.join(",")
                );
                stats.power_cut(chosen.len(), held);
                cut = Some((chosen, Instant::now()));
                cut_done = true;
            }
            Some((chosen, at)) if plan.back_after.is_some_and(|d| at.elapsed() >= d) => {
                for b in chosen {
                    b.set_power(true);
                }
                println!("power back: {} boards", chosen.len());
                cut = None;
            }
            _ => {}
        }
    }
    let _ = halt_tx.send(true);
    while tasks.join_next().await.is_some() {}
    let moving = stats.still_moving();
    if moving > 0 {
        println!("failover: {moving} containers of the power cut still not Ready elsewhere");
    }
    match stats.total() {
        (Some(s), failed) => println!("total: heartbeats {s}; {failed} failed"),
        (None, failed) => println!("total: no heartbeat answered; {failed} failed"),
    }
    Ok(())
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// `percent` of the boards (at least one when above 0), spread evenly over the names.
fn pick(boards: &[Arc<Board>], percent: f64) -> Vec<Arc<Board>> {
    let n = boards.len();
    let count = ((n as f64 * percent / 100.0).ceil() as usize).min(n);
    (0..count).map(|k| boards[k * n / count].clone()).collect()
}

/// Joins every board, a few at a time.
async fn join_all(http: &Http, options: &Options) -> Result<Vec<Arc<Board>>, SimError> {
    let joins = futures::stream::iter(0..options.boards)
        .map(|i| join_one(http, options, i))
        .buffered(JOINS_AT_ONCE);
    futures::pin_mut!(joins);
    let mut boards = Vec::with_capacity(options.boards);
    while let Some(board) = joins.next().await {
        boards.push(Arc::new(board?));
    }
    Ok(boards)
}

async fn join_one(http: &Http, options: &Options, i: usize) -> Result<Board, SimError> {
    let name = format!("{}-{i:04}", options.prefix);
    let subnet = options
        .cluster_cidr
        .subnets(options.subnet_prefix)
        .nth(i)
        .ok_or(SimError::NoSubnet {
            range: options.cluster_cidr,
            prefix: options.subnet_prefix,
            index: i,
        })?;
    let spec = NodeSpec {
        address: Ipv4Addr::from(u32::from(FIRST_ADDRESS) + i as u32).to_string(),
        arch: Arch::Amd64,
        cpus: options.cpus,
        memory_bytes: options.memory_bytes,
        subnet: Some(subnet.to_string()),
        unschedulable: false,
        draining: false,
    };
    let request = JoinRequest {
        name: name.clone(),
        labels: BTreeMap::from([(SIM_LABEL.to_string(), options.prefix.clone())]),
        spec: spec.clone(),
    };
    let body = serde_json::to_vec(&request).map_err(|source| SimError::JoinAnswer {
        name: name.clone(),
        source,
    })?;
    let answer = http
        .send(
            Method::POST,
            "/v1/join",
            &options.join_token,
            Some(body),
            Duration::from_secs(30),
        )
        .await
        .map_err(|source| SimError::Join {
            name: name.clone(),
            source,
        })?;
    let answer: JoinResponse =
        serde_json::from_slice(&answer).map_err(|source| SimError::JoinAnswer {
            name: name.clone(),
            source,
        })?;
    // The controller may give another subnet than the one asked for (taken already).
    let subnet = answer
        .subnet
        .as_deref()
        .and_then(|s| Cidr::parse(s).ok())
        .unwrap_or(subnet);
    let spec = NodeSpec {
        subnet: Some(subnet.to_string()),
        ..spec
    };
    Ok(Board::new(
        name,
        spec,
        request.labels,
        subnet,
        answer.credential,
    ))
}

/// Applies the simulation's role (named after the prefix, on its boards only) when asked;
/// returns how many containers it wants.
async fn apply_role(options: &Options) -> Result<usize, SimError> {
    let replicas = options.boards * options.containers_per_board;
    let Some(admin) = options.admin.as_ref().filter(|_| replicas > 0) else {
        return Ok(0);
    };
    let name = options.prefix.clone();
    let role = serde_json::json!({
        "apiVersion": "texu.io/v1",
        "kind": "Role",
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "image": "template:busybox",
            "command": ["/bin/sleep", "1000000"],
            "resources": { "cpu": "10m", "memory": "16Mi" },
            "placement": { "nodeSelector": { SIM_LABEL: name }, "spread": "node" },
        },
    });
    let answer: serde_json::Value = tokio::task::block_in_place(|| {
        admin.put::<_, serde_json::Value>(&format!("/v1/roles/{name}"), &role)
    })
    .map_err(|e| SimError::Apply {
        name: name.clone(),
        message: format!("{e:#}"),
    })?;
    println!(
        "applied role/{name} with {replicas} replicas: {}",
        answer["result"].as_str().unwrap_or("done")
    );
    Ok(replicas)
}
