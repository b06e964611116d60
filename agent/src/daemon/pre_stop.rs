//! The `preStop` hook: a command run inside a container before its agent stops it for a
//! scale-down or its role's deletion (`nodetool decommission` on a Cassandra member). It runs
//! in a task of its own, so a decommission that takes minutes never holds up the reconciler's
//! passes; the reconciler looks at [`HookRun::stage`] and takes the [`HookResult`] when it is
//! done, then stops the container and reports what the hook printed and how it ended.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use texu_api::PreStop;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::runtime::{ExecOutput, Runtime, RuntimeError};

/// Characters of the hook's output kept for the status message and the event.
const OUTPUT_TAIL: usize = 600;

/// Where a slot's hook is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HookStage {
    /// No hook runs.
    #[default]
    Idle,
    /// It runs.
    Running,
    /// It ended; its result waits to be taken.
    Finished,
}

/// How the hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// The command ended with this exit status (or was killed by a signal: `None`).
    Exited(Option<i32>),
    /// It ran past its timeout and was killed.
    TimedOut(Duration),
    /// It could not be run at all.
    NotRun(String),
}

/// What the hook did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookResult {
    /// The command as written.
    pub command: Vec<String>,
    /// How it ended.
    pub outcome: HookOutcome,
    /// How long it ran.
    pub elapsed: Duration,
    /// The end of what it printed (stdout, then stderr).
    pub output: String,
}

impl HookResult {
    /// Whether it exited 0.
    pub fn succeeded(&self) -> bool {
        self.outcome == HookOutcome::Exited(Some(0))
    }

    /// One line for people: the command, how it ended, how long it ran, the end of its output.
    pub fn message(&self) -> String {
        let how = match &self.outcome {
            HookOutcome::Exited(Some(code)) => format!("exited {code}"),
            HookOutcome::Exited(None) => "was killed by a signal".to_owned(),
            HookOutcome::TimedOut(limit) => format!("timed out after {}s", limit.as_secs()),
            HookOutcome::NotRun(why) => format!("could not run: {why}"),
        };
        let mut line = format!(
            "preStop {:?} {how} after {:.1}s",
            self.command.join(" "),
            self.elapsed.as_secs_f64()
        );
        if !self.output.is_empty() {
            line.push_str("; output: ");
            line.push_str(&self.output);
        }
        line
    }
}

/// A hook started in a task of its own.
pub struct HookRun {
    result: Arc<Mutex<Option<HookResult>>>,
    task: JoinHandle<()>,
    started: Instant,
}

impl HookRun {
    /// Starts `hook` inside container `name`; `done` is told when it ends.
    pub fn start(
        runtime: Arc<dyn Runtime>,
        name: &str,
        hook: &PreStop,
        done: Arc<Notify>,
    ) -> HookRun {
        let result = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&result);
        let (name, command, timeout) = (name.to_owned(), hook.command.clone(), hook.timeout());
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let ran = runtime.exec(&name, &command, timeout).await;
            let elapsed = started.elapsed();
            let r = result_of(command, ran, elapsed);
            tracing::info!(container = %name, message = %r.message(), "preStop hook ended");
            if let Ok(mut s) = slot.lock() {
                *s = Some(r);
            }
            done.notify_one();
        });
        HookRun {
            result,
            task,
            started,
        }
    }

    /// Whether it still runs.
    pub fn stage(&self) -> HookStage {
        match self.result.lock() {
            Ok(r) if r.is_some() => HookStage::Finished,
            Ok(_) => HookStage::Running,
            // A poisoned lock means the task panicked: it will never report.
            Err(_) => HookStage::Finished,
        }
    }

    /// How long it has run.
    pub fn running_for(&self) -> Duration {
        self.started.elapsed()
    }

    /// Its result, once finished.
    pub fn take(&self) -> Option<HookResult> {
        match self.result.lock() {
            Ok(mut r) => r.take(),
            Err(_) => Some(HookResult {
                command: Vec::new(),
                outcome: HookOutcome::NotRun("the hook's task failed".into()),
                elapsed: self.running_for(),
                output: String::new(),
            }),
        }
    }
}

impl Drop for HookRun {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn result_of(
    command: Vec<String>,
    ran: Result<ExecOutput, RuntimeError>,
    elapsed: Duration,
) -> HookResult {
    let (outcome, output) = match ran {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            (HookOutcome::Exited(out.status.code()), tail(&text))
        }
        Err(RuntimeError::ExecTimeout { timeout, .. }) => {
            (HookOutcome::TimedOut(timeout), String::new())
        }
        Err(e) => (HookOutcome::NotRun(e.to_string()), String::new()),
    };
    HookResult {
        command,
        outcome,
        elapsed,
        output,
    }
}

/// The last [`OUTPUT_TAIL`] characters of `text`, on one line.
fn tail(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let skip = line.chars().count().saturating_sub(OUTPUT_TAIL);
    let kept: String = line.chars().skip(skip).collect();
    if skip > 0 {
        format!("...{kept}")
    } else {
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::FakeRuntime;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn messages_say_how_it_ended() {
        let out = ExecOutput {
            status: std::process::ExitStatus::from_raw(2 << 8),
            stdout: b"Decommissioning\n".to_vec(),
            stderr: b"error: no\n".to_vec(),
            truncated: false,
        };
        let cmd = vec!["nodetool".to_string(), "decommission".to_string()];
        let r = result_of(cmd.clone(), Ok(out), Duration::from_millis(1500));
        assert!(!r.succeeded());
        assert_eq!(
            r.message(),
            "preStop \"nodetool decommission\" exited 2 after 1.5s; output: Decommissioning error: no"
        );
        let timeout = RuntimeError::ExecTimeout {
            name: "c".into(),
            command: "nodetool".into(),
            timeout: Duration::from_secs(60),
        };
        let r = result_of(cmd, Err(timeout), Duration::from_secs(60));
        assert_eq!(r.outcome, HookOutcome::TimedOut(Duration::from_secs(60)));
        assert!(
            r.message().contains("timed out after 60s"),
            "{}",
            r.message()
        );
        let long = "x".repeat(OUTPUT_TAIL + 10);
        assert_eq!(tail(&long).len(), OUTPUT_TAIL + 3);
    }

    #[tokio::test]
    async fn a_hook_runs_in_its_container_and_reports_once() {
        let fake = Arc::new(FakeRuntime::new());
        let image = crate::runtime::Image::Template("busybox".into());
        fake.insert_running(crate::runtime::ContainerSpec::new("db-0", image));
        let done = Arc::new(Notify::new());
        let hook = PreStop {
            command: vec!["/bin/true".into()],
            timeout: None,
        };
        let run = HookRun::start(fake.clone(), "db-0", &hook, done.clone());
        done.notified().await;
        assert_eq!(run.stage(), HookStage::Finished);
        let r = run.take().unwrap();
        assert!(r.succeeded(), "{r:?}");
        assert!(run.take().is_none());
        assert!(fake
            .calls()
            .contains(&crate::runtime::FakeCall::Exec("db-0".into(), hook.command)));
    }
}
