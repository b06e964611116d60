//! A fake [`Runtime`] for unit tests of the reconciler: containers are entries in a map, every
//! change is recorded as a [`FakeCall`], and a test can kill a container, OOM-kill it, set its
//! usage or exec results, or make the next call of an operation fail.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    ContainerSpec, ContainerState, ExecOutput, ExitReason, Phase, Result, Runtime, RuntimeError,
    Usage,
};
use crate::lxc::validate_name;

/// A call that changed something (or ran something), in the order made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    /// `create` with the spec's name.
    Create(String),
    /// `start`.
    Start(String),
    /// `stop` with its grace period.
    Stop(String, Duration),
    /// `destroy`.
    Destroy(String),
    /// `exec` with its command.
    Exec(String, Vec<String>),
}

/// An operation whose next call can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FakeOp {
    /// `create`.
    Create,
    /// `start`.
    Start,
    /// `stop`.
    Stop,
    /// `destroy`.
    Destroy,
    /// `state`.
    State,
    /// `exec`.
    Exec,
    /// `usage`.
    Usage,
}

#[derive(Debug, Clone)]
struct FakeContainer {
    spec: ContainerSpec,
    phase: Phase,
    init_pid: Option<u32>,
    exit_reason: Option<ExitReason>,
    oom_kills: u64,
    usage: Usage,
    exec_results: VecDeque<ExecOutput>,
}

#[derive(Debug, Default)]
struct FakeState {
    containers: BTreeMap<String, FakeContainer>,
    calls: Vec<FakeCall>,
    failures: HashMap<(FakeOp, String), VecDeque<String>>,
    next_pid: u32,
}

/// The fake runtime. Cheap to create; share it behind an `Arc`.
#[derive(Debug, Default)]
pub struct FakeRuntime {
    state: Mutex<FakeState>,
}

impl FakeRuntime {
    /// An empty fake.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // A test that panicked while holding the lock must not hide its own failure.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the next call of `op` on `name` fail with `message` (queue several for several).
    pub fn fail_next(&self, op: FakeOp, name: &str, message: &str) {
        self.lock()
            .failures
            .entry((op, name.to_owned()))
            .or_default()
            .push_back(message.to_owned());
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.lock().calls.clone()
    }

    /// Forgets the calls made so far.
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// The spec a container was created with.
    pub fn spec(&self, name: &str) -> Option<ContainerSpec> {
        self.lock().containers.get(name).map(|c| c.spec.clone())
    }

    /// Adds a running container without recording a call (as found by an agent that restarts).
    pub fn insert_running(&self, spec: ContainerSpec) -> u32 {
        let mut s = self.lock();
        s.next_pid += 1;
        let pid = 1000 + s.next_pid;
        s.containers.insert(
            spec.name.clone(),
            FakeContainer {
                spec,
                phase: Phase::Running,
                init_pid: Some(pid),
                exit_reason: None,
                oom_kills: 0,
                usage: Usage::default(),
                exec_results: VecDeque::new(),
            },
        );
        pid
    }

    /// Kills a running container's init from outside: it becomes `Stopped` / `Exited`.
    /// Returns whether it was running.
    pub fn kill(&self, name: &str) -> bool {
        self.end(name, ExitReason::Exited)
    }

    /// The kernel OOM-kills the container: `Stopped` / `OomKilled`, one more OOM kill.
    pub fn oom_kill(&self, name: &str) -> bool {
        self.end(name, ExitReason::OomKilled)
    }

    fn end(&self, name: &str, reason: ExitReason) -> bool {
        let mut s = self.lock();
        let Some(c) = s.containers.get_mut(name) else {
            return false;
        };
        if c.phase != Phase::Running {
            return false;
        }
        c.phase = Phase::Stopped;
        c.init_pid = None;
        c.exit_reason = Some(reason);
        if reason == ExitReason::OomKilled {
            c.oom_kills += 1;
        }
        true
    }

    /// Sets what `usage` reports for a container.
    pub fn set_usage(&self, name: &str, usage: Usage) {
        if let Some(c) = self.lock().containers.get_mut(name) {
            c.usage = usage;
        }
    }

    /// Queues the result of the next `exec` in a container (default: exit 0, no output).
    pub fn push_exec_result(&self, name: &str, exit_code: i32, stdout: &[u8]) {
        if let Some(c) = self.lock().containers.get_mut(name) {
            c.exec_results.push_back(ExecOutput {
                status: ExitStatus::from_raw((exit_code & 0xff) << 8),
                stdout: stdout.to_vec(),
                stderr: Vec::new(),
                truncated: false,
            });
        }
    }

    fn check(s: &mut FakeState, op: FakeOp, name: &str) -> Result<()> {
        validate_name(name).map_err(RuntimeError::InvalidName)?;
        if let Some(q) = s.failures.get_mut(&(op, name.to_owned())) {
            if let Some(message) = q.pop_front() {
                return Err(RuntimeError::Injected {
                    name: name.to_owned(),
                    message,
                });
            }
        }
        Ok(())
    }
}

fn not_found(name: &str) -> RuntimeError {
    RuntimeError::NotFound {
        name: name.to_owned(),
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn create(&self, spec: &ContainerSpec) -> Result<()> {
        let mut s = self.lock();
        s.calls.push(FakeCall::Create(spec.name.clone()));
        spec.validate()
            .map_err(|source| RuntimeError::InvalidSpec {
                name: spec.name.clone(),
                source,
            })?;
        Self::check(&mut s, FakeOp::Create, &spec.name)?;
        if s.containers.contains_key(&spec.name) {
            return Err(RuntimeError::AlreadyExists {
                name: spec.name.clone(),
            });
        }
        s.containers.insert(
            spec.name.clone(),
            FakeContainer {
                spec: spec.clone(),
                phase: Phase::Created,
                init_pid: None,
                exit_reason: None,
                oom_kills: 0,
                usage: Usage::default(),
                exec_results: VecDeque::new(),
            },
        );
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<()> {
        let mut s = self.lock();
        s.calls.push(FakeCall::Start(name.to_owned()));
        Self::check(&mut s, FakeOp::Start, name)?;
        s.next_pid += 1;
        let pid = 1000 + s.next_pid;
        let c = s.containers.get_mut(name).ok_or_else(|| not_found(name))?;
        if c.phase != Phase::Running {
            c.phase = Phase::Running;
            c.init_pid = Some(pid);
            c.exit_reason = None;
            c.oom_kills = 0;
        }
        Ok(())
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<()> {
        let mut s = self.lock();
        s.calls.push(FakeCall::Stop(name.to_owned(), grace));
        Self::check(&mut s, FakeOp::Stop, name)?;
        let c = s.containers.get_mut(name).ok_or_else(|| not_found(name))?;
        if c.phase == Phase::Running {
            c.phase = Phase::Stopped;
            c.init_pid = None;
            c.exit_reason = Some(ExitReason::StoppedByRuntime);
        }
        Ok(())
    }

    async fn destroy(&self, name: &str) -> Result<()> {
        let mut s = self.lock();
        s.calls.push(FakeCall::Destroy(name.to_owned()));
        Self::check(&mut s, FakeOp::Destroy, name)?;
        s.containers.remove(name);
        Ok(())
    }

    async fn state(&self, name: &str) -> Result<Option<ContainerState>> {
        let mut s = self.lock();
        Self::check(&mut s, FakeOp::State, name)?;
        Ok(s.containers.get(name).map(|c| ContainerState {
            phase: c.phase,
            init_pid: c.init_pid,
            exit_reason: c.exit_reason,
            oom_kills: c.oom_kills,
            monitor_reachable: true,
        }))
    }

    async fn list(&self) -> Result<Vec<String>> {
        Ok(self.lock().containers.keys().cloned().collect())
    }

    async fn exec(&self, name: &str, argv: &[String], _timeout: Duration) -> Result<ExecOutput> {
        let mut s = self.lock();
        s.calls.push(FakeCall::Exec(name.to_owned(), argv.to_vec()));
        Self::check(&mut s, FakeOp::Exec, name)?;
        let c = s.containers.get_mut(name).ok_or_else(|| not_found(name))?;
        if c.phase != Phase::Running {
            return Err(RuntimeError::NotRunning {
                name: name.to_owned(),
            });
        }
        Ok(c.exec_results.pop_front().unwrap_or(ExecOutput {
            status: ExitStatus::from_raw(0),
            stdout: Vec::new(),
            stderr: Vec::new(),
            truncated: false,
        }))
    }

    async fn usage(&self, name: &str) -> Result<Usage> {
        let mut s = self.lock();
        Self::check(&mut s, FakeOp::Usage, name)?;
        let c = s.containers.get(name).ok_or_else(|| not_found(name))?;
        if c.phase != Phase::Running {
            return Err(RuntimeError::NotRunning {
                name: name.to_owned(),
            });
        }
        Ok(c.usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Image;

    fn spec(name: &str) -> ContainerSpec {
        let mut s = ContainerSpec::new(name, Image::Template("busybox".into()));
        s.command = vec!["/bin/sleep".into(), "1000".into()];
        s
    }

    #[tokio::test]
    async fn records_a_lifecycle() {
        let rt = FakeRuntime::new();
        rt.create(&spec("a")).await.unwrap();
        assert_eq!(rt.state("a").await.unwrap().unwrap().phase, Phase::Created);
        rt.start("a").await.unwrap();
        let st = rt.state("a").await.unwrap().unwrap();
        assert_eq!(st.phase, Phase::Running);
        assert!(st.init_pid.is_some());
        rt.stop("a", Duration::from_secs(3)).await.unwrap();
        let st = rt.state("a").await.unwrap().unwrap();
        assert_eq!(st.exit_reason, Some(ExitReason::StoppedByRuntime));
        rt.destroy("a").await.unwrap();
        rt.destroy("a").await.unwrap();
        assert_eq!(rt.state("a").await.unwrap(), None);
        assert_eq!(
            rt.calls(),
            vec![
                FakeCall::Create("a".into()),
                FakeCall::Start("a".into()),
                FakeCall::Stop("a".into(), Duration::from_secs(3)),
                FakeCall::Destroy("a".into()),
                FakeCall::Destroy("a".into()),
            ]
        );
    }

    #[tokio::test]
    async fn injected_failures_and_kills() {
        let rt = FakeRuntime::new();
        rt.fail_next(FakeOp::Create, "a", "disk full");
        let err = rt.create(&spec("a")).await.unwrap_err();
        assert!(matches!(err, RuntimeError::Injected { .. }));
        rt.create(&spec("a")).await.unwrap();
        assert!(matches!(
            rt.create(&spec("a")).await,
            Err(RuntimeError::AlreadyExists { .. })
        ));
        rt.start("a").await.unwrap();
        assert!(rt.oom_kill("a"));
        let st = rt.state("a").await.unwrap().unwrap();
        assert_eq!(st.phase, Phase::Stopped);
        assert_eq!(st.exit_reason, Some(ExitReason::OomKilled));
        assert!(st.oom_killed());
        assert!(matches!(
            rt.usage("a").await,
            Err(RuntimeError::NotRunning { .. })
        ));
        rt.start("a").await.unwrap();
        assert!(rt.kill("a"));
        assert_eq!(
            rt.state("a").await.unwrap().unwrap().exit_reason,
            Some(ExitReason::Exited)
        );
    }

    #[tokio::test]
    async fn exec_results_are_queued() {
        let rt = FakeRuntime::new();
        rt.create(&spec("a")).await.unwrap();
        rt.start("a").await.unwrap();
        rt.push_exec_result("a", 3, b"out");
        let argv = vec!["true".to_owned()];
        let out = rt.exec("a", &argv, Duration::from_secs(1)).await.unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out");
        let out = rt.exec("a", &argv, Duration::from_secs(1)).await.unwrap();
        assert!(out.status.success());
    }
}
