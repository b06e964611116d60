//! The task that probes one container: runs its readiness and liveness probes, each on its own
//! period so a slow one never delays the other, and publishes a [`ProbeReport`] through a
//! `watch` channel until it is cancelled.
//!
//! One runner serves one run of a container: when the agent restarts the container (for
//! instance because `liveness_failed` turned true), it cancels the runner and starts a new one,
//! which waits for the initial delays again and starts from a clean slate.

use super::check::{Check, CheckError, CheckResult, Exec};
use super::state::{ProbeState, ProbeStatus, ProbeTiming};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use texu_api::{Health, Port, Probe};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Which of a container's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// Decides whether the container receives traffic.
    Readiness,
    /// Decides whether the container is restarted.
    Liveness,
}

impl ProbeKind {
    /// The word shown to people.
    pub const fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Readiness => "readiness",
            ProbeKind::Liveness => "liveness",
        }
    }
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a container's probes found, as published by its runner.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProbeReport {
    /// The readiness probe passed (always true without a readiness probe).
    pub ready: bool,
    /// The liveness probe failed: the container should be restarted.
    pub liveness_failed: bool,
    /// The last probe result, for people (empty before the first attempt). A failing probe's
    /// result wins over a passing one's, liveness over readiness, so the line does not flicker:
    /// `liveness failed (2 in a row): connection refused by 198.19.1.2:8000`.
    pub last_probe: String,
}

/// The container a runner probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// Its name, for `exec` probes.
    pub container: String,
    /// Its address, for `http` and `tcp` probes.
    pub address: IpAddr,
}

/// Why a runner cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunnerError {
    /// One of the probes cannot run.
    #[error("the {kind} probe of container {container} cannot run")]
    InvalidProbe {
        /// The container.
        container: String,
        /// Which probe.
        kind: ProbeKind,
        /// What is wrong with it.
        #[source]
        source: CheckError,
    },
}

/// A container's probes, ready to run; [`spawn`](Self::spawn) or [`run`](Self::run) it.
pub struct ProbeRunner {
    target: ProbeTarget,
    readiness: Option<(Check, ProbeTiming)>,
    liveness: Option<(Check, ProbeTiming)>,
    exec: Arc<dyn Exec>,
    report: watch::Sender<ProbeReport>,
}

impl ProbeRunner {
    /// The runner of `health`'s probes against `target`, with port names looked up in the
    /// role's `ports` and `exec` probes run through `exec`.
    pub fn new(
        target: ProbeTarget,
        health: &Health,
        ports: &[Port],
        exec: Arc<dyn Exec>,
    ) -> Result<ProbeRunner, RunnerError> {
        let prepare = |kind: ProbeKind, probe: &Option<Probe>| {
            probe
                .as_ref()
                .map(|probe| {
                    Check::from_probe(probe, ports)
                        .map(|check| (check, ProbeTiming::from_probe(probe)))
                        .map_err(|source| RunnerError::InvalidProbe {
                            container: target.container.clone(),
                            kind,
                            source,
                        })
                })
                .transpose()
        };
        let readiness = prepare(ProbeKind::Readiness, &health.readiness)?;
        let liveness = prepare(ProbeKind::Liveness, &health.liveness)?;
        let (report, _) = watch::channel(ProbeReport {
            ready: readiness.is_none(),
            liveness_failed: false,
            last_probe: String::new(),
        });
        Ok(ProbeRunner {
            target,
            readiness,
            liveness,
            exec,
            report,
        })
    }

    /// A receiver of the runner's reports; it sees the current one at once.
    pub fn subscribe(&self) -> watch::Receiver<ProbeReport> {
        self.report.subscribe()
    }

    /// Runs [`run`](Self::run) on a new task.
    pub fn spawn(self, cancel: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.run(cancel))
    }

    /// Probes until `cancel` is cancelled (an attempt in flight is abandoned). Initial delays
    /// count from the call, so call it when the container starts.
    pub async fn run(self, cancel: CancellationToken) {
        let started = Instant::now();
        let last = Mutex::new(LastResults::default());
        let readiness = self.probe_loop(ProbeKind::Readiness, &self.readiness, started, &last);
        let liveness = self.probe_loop(ProbeKind::Liveness, &self.liveness, started, &last);
        tokio::select! {
            _ = cancel.cancelled() => {}
            // Neither loop ends: only the cancellation does.
            _ = async { tokio::join!(readiness, liveness) } => {}
        }
    }

    async fn probe_loop(
        &self,
        kind: ProbeKind,
        probe: &Option<(Check, ProbeTiming)>,
        started: Instant,
        last: &Mutex<LastResults>,
    ) {
        let Some((check, timing)) = probe else {
            return std::future::pending().await;
        };
        let container = &self.target.container;
        let mut state = ProbeState::new(*timing, started);
        loop {
            tokio::time::sleep_until(state.next_due()).await;
            let result = check
                .run(
                    container,
                    self.target.address,
                    timing.timeout,
                    self.exec.as_ref(),
                )
                .await;
            match state.record(Instant::now(), result.clone()) {
                Some(ProbeStatus::Failed) => {
                    tracing::warn!(%container, probe = %kind, reason = %result.reason, "probe failed")
                }
                Some(status) => {
                    tracing::info!(%container, probe = %kind, %status, reason = %result.reason, "probe verdict changed")
                }
                None => {}
            }
            let summary = {
                let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
                last.set(kind, summarize(kind, &result, state.consecutive_failures()));
                last.summary()
            };
            self.report.send_if_modified(|report| {
                let before = report.clone();
                match kind {
                    ProbeKind::Readiness => report.ready = state.is_ready(),
                    ProbeKind::Liveness => report.liveness_failed = state.should_restart(),
                }
                report.last_probe = summary;
                *report != before
            });
        }
    }
}

/// Each probe's last result line and whether it failed.
#[derive(Default)]
struct LastResults {
    readiness: Option<(bool, String)>,
    liveness: Option<(bool, String)>,
}

impl LastResults {
    fn set(&mut self, kind: ProbeKind, line: (bool, String)) {
        match kind {
            ProbeKind::Readiness => self.readiness = Some(line),
            ProbeKind::Liveness => self.liveness = Some(line),
        }
    }

    /// A failing liveness line, else a failing readiness line, else readiness, else liveness.
    fn summary(&self) -> String {
        let failing = |line: &Option<(bool, String)>| {
            line.as_ref()
                .filter(|(failed, _)| *failed)
                .map(|(_, text)| text.clone())
        };
        failing(&self.liveness)
            .or_else(|| failing(&self.readiness))
            .or_else(|| self.readiness.as_ref().map(|(_, text)| text.clone()))
            .or_else(|| self.liveness.as_ref().map(|(_, text)| text.clone()))
            .unwrap_or_default()
    }
}

fn summarize(kind: ProbeKind, result: &CheckResult, failures: u32) -> (bool, String) {
    if result.success {
        (false, format!("{kind} ok: {}", result.reason))
    } else {
        (
            true,
            format!("{kind} failed ({failures} in a row): {}", result.reason),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::collections::{HashMap, VecDeque};
    use std::net::Ipv4Addr;
    use std::time::Duration;
    use texu_api::{ExecProbe, HttpProbe, PortRef, Protocol};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const S: Duration = Duration::from_secs(1);
    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[derive(Clone, Copy, Debug)]
    enum Step {
        Exit(i32),
        Hang,
    }

    /// Answers `exec` from a script per program (the last step repeats) and records when each
    /// program was called.
    #[derive(Default)]
    struct FakeExec {
        script: Mutex<HashMap<String, VecDeque<Step>>>,
        calls: Mutex<Vec<(String, Instant)>>,
    }

    impl FakeExec {
        fn new(script: &[(&str, &[Step])]) -> Arc<FakeExec> {
            let script = script
                .iter()
                .map(|(program, steps)| (program.to_string(), steps.iter().copied().collect()))
                .collect();
            Arc::new(FakeExec {
                script: Mutex::new(script),
                calls: Mutex::default(),
            })
        }

        /// Seconds since `t0` of each call of `program`.
        fn calls(&self, program: &str, t0: Instant) -> Vec<f64> {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .filter(|(p, _)| p == program)
                .map(|(_, at)| (*at - t0).as_secs_f64())
                .collect()
        }
    }

    #[async_trait]
    impl Exec for FakeExec {
        async fn exec(&self, container: &str, argv: &[String]) -> Result<i32, String> {
            assert_eq!(container, "app-0");
            let program = argv[0].clone();
            self.calls
                .lock()
                .unwrap()
                .push((program.clone(), Instant::now()));
            let step = {
                let mut script = self.script.lock().unwrap();
                let steps = script.get_mut(&program).expect("a scripted program");
                if steps.len() > 1 {
                    steps.pop_front().unwrap()
                } else {
                    steps[0]
                }
            };
            match step {
                Step::Exit(code) => Ok(code),
                Step::Hang => std::future::pending().await,
            }
        }
    }

    fn target() -> ProbeTarget {
        ProbeTarget {
            container: "app-0".to_string(),
            address: LOOPBACK,
        }
    }

    fn exec_probe(program: &str, timing: Probe) -> Option<Probe> {
        Some(Probe {
            exec: Some(ExecProbe {
                command: vec![program.to_string()],
            }),
            ..timing
        })
    }

    fn start(
        health: Health,
        exec: Arc<FakeExec>,
    ) -> (
        watch::Receiver<ProbeReport>,
        CancellationToken,
        JoinHandle<()>,
    ) {
        let runner = ProbeRunner::new(target(), &health, &[], exec).unwrap();
        let rx = runner.subscribe();
        let cancel = CancellationToken::new();
        let task = runner.spawn(cancel.clone());
        (rx, cancel, task)
    }

    async fn at(t0: Instant, seconds: f64) {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(seconds)).await;
    }

    async fn stop(cancel: CancellationToken, task: JoinHandle<()>) {
        cancel.cancel();
        tokio::time::timeout(S, task)
            .await
            .expect("the runner ends on cancel")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn without_probes_ready_at_once_until_cancelled() {
        let (rx, cancel, task) = start(Health::default(), FakeExec::new(&[]));
        tokio::time::sleep(3600 * S).await;
        assert_eq!(
            *rx.borrow(),
            ProbeReport {
                ready: true,
                liveness_failed: false,
                last_probe: String::new()
            }
        );
        assert!(!task.is_finished());
        stop(cancel, task).await;
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_waits_for_the_initial_delay_and_the_success_threshold() {
        let t0 = Instant::now();
        let exec = FakeExec::new(&[("ready", &[Step::Exit(0)])]);
        let health = Health {
            readiness: exec_probe(
                "ready",
                Probe {
                    initial_delay_seconds: 5.0,
                    period_seconds: 2.0,
                    success_threshold: 2,
                    ..Probe::default()
                },
            ),
            liveness: None,
        };
        let (rx, cancel, task) = start(health, exec.clone());
        assert!(!rx.borrow().ready);

        at(t0, 4.9).await;
        assert_eq!(rx.borrow().last_probe, "");
        at(t0, 5.5).await;
        assert!(!rx.borrow().ready);
        assert_eq!(rx.borrow().last_probe, "readiness ok: exit code 0");
        at(t0, 7.5).await;
        assert!(rx.borrow().ready);
        at(t0, 11.5).await;
        assert_eq!(exec.calls("ready", t0), [5.0, 7.0, 9.0, 11.0]);
        stop(cancel, task).await;
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_fails_after_the_failure_threshold() {
        let t0 = Instant::now();
        let exec = FakeExec::new(&[(
            "alive",
            &[
                Step::Exit(0),
                Step::Exit(0),
                Step::Exit(1),
                Step::Exit(1),
                Step::Exit(2),
            ],
        )]);
        let health = Health {
            readiness: None,
            liveness: exec_probe("alive", Probe::default()),
        };
        let (rx, cancel, task) = start(health, exec.clone());
        let mut seen = Vec::new();
        for t in 0..5 {
            at(t0, t as f64 + 0.5).await;
            let report = rx.borrow().clone();
            assert!(report.ready, "no readiness probe means ready");
            seen.push((report.liveness_failed, report.last_probe));
        }
        let expected = [
            (false, "liveness ok: exit code 0"),
            (false, "liveness ok: exit code 0"),
            (false, "liveness failed (1 in a row): exit code 1"),
            (false, "liveness failed (2 in a row): exit code 1"),
            (true, "liveness failed (3 in a row): exit code 2"),
        ];
        let expected: Vec<(bool, String)> =
            expected.iter().map(|(f, s)| (*f, s.to_string())).collect();
        assert_eq!(seen, expected);
        stop(cancel, task).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_probe_times_out_without_delaying_the_other() {
        let t0 = Instant::now();
        let exec = FakeExec::new(&[("ready", &[Step::Hang]), ("alive", &[Step::Exit(0)])]);
        let health = Health {
            readiness: exec_probe(
                "ready",
                Probe {
                    timeout_seconds: 3.0,
                    period_seconds: 10.0,
                    failure_threshold: 1,
                    ..Probe::default()
                },
            ),
            liveness: exec_probe("alive", Probe::default()),
        };
        let (rx, cancel, task) = start(health, exec.clone());
        at(t0, 2.5).await;
        assert_eq!(exec.calls("alive", t0), [0.0, 1.0, 2.0]);
        assert_eq!(rx.borrow().last_probe, "liveness ok: exit code 0");
        at(t0, 3.5).await;
        let report = rx.borrow().clone();
        assert!(!report.ready);
        assert!(!report.liveness_failed);
        // The failing readiness line wins over the passing liveness line.
        assert_eq!(
            report.last_probe,
            "readiness failed (1 in a row): timed out after 3s"
        );
        stop(cancel, task).await;
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_abandons_an_attempt_in_flight() {
        let exec = FakeExec::new(&[("alive", &[Step::Hang])]);
        let health = Health {
            readiness: None,
            liveness: exec_probe(
                "alive",
                Probe {
                    timeout_seconds: 3600.0,
                    ..Probe::default()
                },
            ),
        };
        let (_rx, cancel, task) = start(health, exec.clone());
        tokio::time::sleep(S).await;
        assert_eq!(exec.calls.lock().unwrap().len(), 1);
        stop(cancel, task).await;
    }

    #[test]
    fn a_probe_that_cannot_run_is_rejected() {
        let health = Health {
            readiness: None,
            liveness: Some(Probe::default()),
        };
        let err = ProbeRunner::new(target(), &health, &[], FakeExec::new(&[]))
            .err()
            .expect("an error");
        assert_eq!(
            err,
            RunnerError::InvalidProbe {
                container: "app-0".to_string(),
                kind: ProbeKind::Liveness,
                source: CheckError::NoAction,
            }
        );
        assert_eq!(
            err.to_string(),
            "the liveness probe of container app-0 cannot run"
        );
    }

    /// Real sockets and the real clock: a readiness probe against an HTTP server on 127.0.0.1
    /// that answers 503 first and 200 after.
    #[tokio::test]
    async fn http_readiness_against_a_real_server() {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for n in 0.. {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let status = if n == 0 {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let response = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                let _ = conn.write_all(response.as_bytes()).await;
            }
        });
        let health = Health {
            readiness: Some(Probe {
                http: Some(HttpProbe {
                    path: "/ready".to_string(),
                    port: PortRef::Name("web".to_string()),
                }),
                period_seconds: 0.05,
                ..Probe::default()
            }),
            liveness: None,
        };
        let ports = [Port {
            name: "web".to_string(),
            port: i64::from(port),
            host_port: None,
            protocol: Protocol::Tcp,
        }];
        let runner = ProbeRunner::new(target(), &health, &ports, FakeExec::new(&[])).unwrap();
        let mut rx = runner.subscribe();
        let cancel = CancellationToken::new();
        let task = runner.spawn(cancel.clone());

        let first = tokio::time::timeout(5 * S, rx.wait_for(|r| !r.last_probe.is_empty()))
            .await
            .expect("a first attempt within 5s")
            .unwrap()
            .clone();
        assert!(!first.ready);
        assert_eq!(
            first.last_probe,
            format!("readiness failed (1 in a row): HTTP 503 from 127.0.0.1:{port}/ready")
        );
        let ready = tokio::time::timeout(5 * S, rx.wait_for(|r| r.ready))
            .await
            .expect("ready within 5s")
            .unwrap()
            .clone();
        assert_eq!(
            ready.last_probe,
            format!("readiness ok: HTTP 200 from 127.0.0.1:{port}/ready")
        );
        stop(cancel, task).await;
        server.abort();
    }
}
