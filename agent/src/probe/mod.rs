//! Health probes of containers: whether a container should receive traffic (readiness) and
//! whether it should be restarted (liveness), and how long to wait before restarting it.
//!
//! Three rooms: [`check`] makes one attempt (`http`, `tcp` or `exec`), [`state`] turns attempts
//! into a verdict with thresholds and keeps the restart backoff (pure, no clock inside), and
//! [`runner`] is the task that runs a container's probes on their periods and publishes a
//! [`ProbeReport`] through a `watch` channel.

pub mod check;
pub mod runner;
pub mod state;

pub use check::{exec_check, http_check, tcp_check, Check, CheckError, CheckResult, Exec};
pub use runner::{ProbeKind, ProbeReport, ProbeRunner, ProbeTarget, RunnerError};
pub use state::{
    BackoffPolicy, ProbeState, ProbeStatus, ProbeTiming, RestartBackoff, RestartPhase,
};
