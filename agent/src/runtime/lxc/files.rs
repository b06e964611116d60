//! The runtime's own files in a container directory, and small file helpers.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::runtime::RuntimeError;

pub(super) const COMMAND_FILE: &str = "texu.command";
pub(super) const ENV_FILE: &str = "texu.env";
pub(super) const INIT_FILE: &str = "texu.init";
pub(super) const STOPPED_FILE: &str = "texu.stopped";

/// Bytes of LXC log quoted in an error.
const LOG_TAIL: u64 = 2048;

/// A process, told apart from a later one with the same pid by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProcId {
    pub(super) pid: u32,
    pub(super) start_time: u64,
}

impl ProcId {
    /// The live process `pid`, with its parent's pid.
    fn of(pid: u32) -> Option<(Self, u32)> {
        let (ppid, start_time) = proc_stat(pid)?;
        Some((Self { pid, start_time }, ppid))
    }

    /// Whether it still runs (and is not a zombie).
    pub(super) fn alive(self) -> bool {
        self.pid > 0 && proc_stat(self.pid).map(|(_, t)| t) == Some(self.start_time)
    }
}

/// The container's init and its LXC monitor (init's parent), recorded at start. A live init
/// means the container runs even when liblxc cannot reach the monitor; a live monitor after
/// init died means LXC is still cleaning up (running the stop hook, removing cgroups).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct InitRecord {
    pub(super) init: Option<ProcId>,
    pub(super) monitor: Option<ProcId>,
}

impl InitRecord {
    /// Records init `pid` (if known and alive) and its parent.
    pub(super) fn capture(pid: Option<u32>) -> Self {
        let Some((init, ppid)) = pid.and_then(ProcId::of) else {
            return Self::default();
        };
        Self {
            init: Some(init),
            monitor: ProcId::of(ppid).map(|(m, _)| m),
        }
    }

    pub(super) fn to_text(self) -> String {
        let mut s = String::new();
        for (key, p) in [("init", self.init), ("monitor", self.monitor)] {
            if let Some(p) = p {
                s.push_str(&format!("{key} {} {}\n", p.pid, p.start_time));
            }
        }
        s
    }

    pub(super) fn parse(text: &str) -> Self {
        let mut r = Self::default();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(key), Some(pid), Some(start)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let (Ok(pid), Ok(start_time)) = (pid.parse(), start.parse()) else {
                continue;
            };
            let p = Some(ProcId { pid, start_time });
            match key {
                "init" => r.init = p,
                "monitor" => r.monitor = p,
                _ => {}
            }
        }
        r
    }
}

/// Parent pid and start time (clock ticks since boot) of a live, non-zombie process, from
/// `/proc/PID/stat`.
pub(super) fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z" | &"X")) {
        return None;
    }
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

pub(super) fn io_err(
    name: &str,
    what: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> RuntimeError {
    let name = name.to_owned();
    let path = path.to_owned();
    move |source| RuntimeError::Io {
        name,
        what,
        path,
        source,
    }
}

/// Writes `data` to `path` through a temporary file and a rename. Neither step follows a
/// symlink planted at `path` or at the temporary name (they may sit in an image's rootfs).
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".texu-tmp");
    let tmp = PathBuf::from(tmp);
    remove_file_if_exists(&tmp)?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path)
}

pub(super) fn nul_join(items: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for i in items {
        out.extend_from_slice(i.as_bytes());
        out.push(0);
    }
    out
}

pub(super) fn nul_split(data: &[u8]) -> Vec<String> {
    data.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

pub(crate) fn remove_file_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The text appended to a log file after byte `from`, at most the last `LOG_TAIL` bytes.
pub(super) fn log_since(path: &Path, from: u64) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(LOG_TAIL));
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(LOG_TAIL).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().to_owned()
}

pub(super) fn log_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_files_round_trip_with_spaces() {
        let argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), "echo a b".to_owned()];
        assert_eq!(nul_split(&nul_join(&argv)), argv);
        assert!(nul_split(&[]).is_empty());
    }

    #[test]
    fn records_this_process_and_its_parent() {
        let r = InitRecord::capture(Some(std::process::id()));
        let init = r.init.expect("this process");
        assert!(init.alive());
        assert!(r.monitor.expect("parent").alive());
        assert_eq!(InitRecord::parse(&r.to_text()), r);
        assert!(!ProcId {
            start_time: init.start_time + 1,
            ..init
        }
        .alive());
        assert_eq!(InitRecord::capture(None), InitRecord::default());
        assert_eq!(
            InitRecord::parse("garbage\ninit x 1\n"),
            InitRecord::default()
        );
    }

    #[test]
    fn log_since_reads_only_new_text() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("log");
        fs::write(&p, "old line\n").unwrap();
        let from = log_len(&p);
        fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"new line\n")
            .unwrap();
        assert_eq!(log_since(&p, from), "new line");
        assert_eq!(log_since(&t.path().join("missing"), 0), "");
    }
}
