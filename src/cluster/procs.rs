//! Processes of a local cluster: spawning with a log file, killing and reaping, finding strays
//! by command line, and running short commands with a deadline.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{ClusterError, Result};

/// Spawns `cmd` with stdin closed and stdout and stderr appended to `log`. The child gets its own
/// process group, so a Ctrl-C meant for `texu demo` reaches the demo (which tears down in order),
/// not every process of the cluster at once.
pub fn spawn_logged(cmd: &mut Command, what: &str, log: &Path) -> Result<Child> {
    use std::os::unix::process::CommandExt;
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| ClusterError::Io {
                what: format!("open the log of {what}"),
                path: log.to_path_buf(),
                source,
            })
    };
    let (out, err) = (open()?, open()?);
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env("NO_COLOR", "1")
        .process_group(0)
        .spawn()
        .map_err(|source| ClusterError::Spawn {
            what: what.to_string(),
            source,
        })
}

/// SIGKILLs a child and reaps it.
pub fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends `signal` to `pid`; false when it does not exist.
pub fn signal(pid: u32, signal: Signal) -> bool {
    kill(Pid::from_raw(pid as i32), signal).is_ok()
}

/// The parent and start time (clock ticks after boot) of a live, non-zombie process.
pub fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state), so field N is rest[N - 3].
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

/// Whether `pid` runs (a zombie does not count).
pub fn alive(pid: u32) -> bool {
    stat(pid).is_some()
}

/// The command line of `pid`, arguments joined by spaces.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&raw)
            .split('\0')
            .filter(|a| !a.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Every process but this one whose command line contains `needle`, with its command line.
pub fn with_cmdline_containing(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| Some((pid, cmdline(pid)?)))
        .filter(|(_, line)| line.contains(needle))
        .collect()
}

/// Waits up to `timeout` for every pid to be gone; the ones still running.
pub fn wait_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to completion, killing it after `timeout`; stdin is closed.
pub fn output_with_timeout(cmd: &mut Command, what: &str, timeout: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ClusterError::Spawn {
            what: what.to_string(),
            source,
        })?;
    // Drain both pipes on threads, or a chatty child blocks on a full pipe and never exits.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                kill_child(&mut child);
                return Err(ClusterError::Timeout {
                    what: what.to_string(),
                    after: timeout,
                    details: String::new(),
                });
            }
        }
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Runs a short command and fails with its stderr unless it succeeds; its stdout.
pub fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = output_with_timeout(cmd, what, Duration::from_secs(30))?;
    check(&out, what)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails with the command's stderr unless it exited 0.
pub fn check(out: &Output, what: &str) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(ClusterError::Command {
        command: what.to_string(),
        message: failure_message(out.status, &out.stderr),
    })
}

fn failure_message(status: ExitStatus, stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr).trim().to_string();
    if text.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {text}")
    }
}

/// The last `lines` lines of a log file (empty when there is none).
pub fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_stat_and_a_cmdline() {
        let me = std::process::id();
        let (ppid, start) = stat(me).expect("own stat");
        assert!(ppid > 0 && start > 0);
        assert!(cmdline(me).is_some_and(|c| !c.is_empty()));
        assert!(with_cmdline_containing("texu-no-such-process-xyz").is_empty());
    }

    #[test]
    fn commands_time_out_and_report_stderr() {
        let started = Instant::now();
        let err = output_with_timeout(
            Command::new("sleep").arg("5"),
            "sleep",
            Duration::from_millis(100),
        )
        .unwrap_err();
        assert!(matches!(err, ClusterError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        let err = run(
            Command::new("sh").args(["-c", "echo nope >&2; exit 3"]),
            "sh",
        )
        .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
