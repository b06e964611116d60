//! A reconciler over the fake runtime, with no controller: what the reconciler tests share.

#![allow(dead_code)] // each test file uses its own part

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use texu_agent::daemon::client::{Client, Reported};
use texu_agent::daemon::contact::Contact;
use texu_agent::daemon::{Config, Desired, Reconciler};
use texu_agent::runtime::{FakeRuntime, Phase, Runtime};
use texu_api::{Container, RoleSpec};
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;

/// A running reconciler for board `board1`, its inputs and what it reports.
pub struct Harness {
    pub rt: Arc<FakeRuntime>,
    pub contact: Arc<Contact>,
    pub tx: mpsc::Sender<Desired>,
    pub statuses: Arc<Mutex<Vec<Reported>>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Harness {
    /// Starts a reconciler with its data in `data_dir`, judging contact through `contact`.
    pub fn start(data_dir: &Path, contact: Arc<Contact>) -> Self {
        let config = Config {
            server: "http://127.0.0.1:9".into(),
            join_token: None,
            name: "board1".into(),
            data_dir: data_dir.to_owned(),
            labels: Default::default(),
            address: "10.0.0.1".into(),
            network: None,
            heartbeat: Duration::from_millis(500),
            heartbeat_jitter: Duration::ZERO,
            image_limits: Default::default(),
            reserved_ports: Vec::new(),
        };
        let rt = Arc::new(FakeRuntime::new());
        let mut reconciler = Reconciler::new(
            &config,
            None,
            rt.clone(),
            Client::new(&config.server),
            "credential".into(),
            contact.clone(),
        )
        .expect("reconciler");
        let (tx, rx) = mpsc::channel(8);
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = watch::channel(false);
        let task = {
            let statuses = statuses.clone();
            tokio::spawn(async move { reconciler.run(rx, statuses, stopped).await })
        };
        Harness {
            rt,
            contact,
            tx,
            statuses,
            stop,
            task,
        }
    }

    pub async fn send(&self, desired: Desired) {
        self.tx.send(desired).await.expect("reconciler running");
    }

    /// The last status reported for `name`.
    pub async fn status(&self, name: &str) -> Option<Reported> {
        status(&self.statuses, name).await
    }

    pub async fn stop(self) {
        self.stop.send(true).expect("reconciler running");
        self.task.await.expect("reconciler task");
    }
}

/// A container of role `app` bound to `board1`, running `role`.
pub fn container(name: &str, ordinal: i64, role: RoleSpec) -> Container {
    Container::new(
        name,
        texu_api::ContainerSpec {
            role: "app".into(),
            ordinal,
            node: Some("board1".into()),
            generation: 1,
            template: Some(role),
            ..Default::default()
        },
    )
}

/// Waits until `done` holds, or panics after about 5 s.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

pub async fn status(statuses: &Mutex<Vec<Reported>>, name: &str) -> Option<Reported> {
    statuses
        .lock()
        .await
        .iter()
        .find(|r| r.name == name)
        .cloned()
}

/// The fake runtime's phase and init pid of `name` (`None`: not defined).
pub async fn runtime_state(rt: &FakeRuntime, name: &str) -> Option<(Phase, Option<u32>)> {
    rt.state(name)
        .await
        .expect("fake state")
        .map(|s| (s.phase, s.init_pid))
}

/// Waits until the fake runtime has `name` in `phase`, or panics after about 5 s.
pub async fn wait_phase(rt: &FakeRuntime, name: &str, phase: Phase) -> Option<u32> {
    for _ in 0..200 {
        if let Some((p, pid)) = runtime_state(rt, name).await {
            if p == phase {
                return pid;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "timed out waiting for {name} to be {phase:?}: {:?}",
        runtime_state(rt, name).await
    );
}

/// Like [`eventually`], for a condition that has to await.
pub async fn eventually_async<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}
