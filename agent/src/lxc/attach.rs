//! Running a command inside a running container through liblxc's `attach`, with its output
//! captured through pipes and a deadline after which it is killed.
//!
//! liblxc creates the attached process with `CLONE_PARENT`, so it is our child: we poll its
//! pipes and `waitpid` it ourselves, which is what lets a probe kill a command that hangs
//! (`attach_run_wait` would block until the command exits).

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::raw::c_int;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::ptr;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe2, read, Pid};

use super::{lxc_fn, CStringArray, LxcContainer, LxcError, LxcOp, Result};

/// A command to run in a container.
#[derive(Debug, Clone)]
pub struct AttachRequest<'a> {
    /// Program and arguments; the program is looked up in the container's `PATH`.
    pub argv: &'a [String],
    /// The command's whole environment, as `KEY=VALUE` (the agent's own is never passed).
    pub env: &'a [String],
    /// Kill the command (SIGKILL) if it has not exited by then.
    pub timeout: Duration,
    /// Bytes kept of each of stdout and stderr; the rest is read and dropped.
    pub output_limit: usize,
}

/// How an attached command ended and what it printed.
#[derive(Debug, Clone)]
pub struct AttachOutput {
    /// Exit status (127 when the program does not exist in the container).
    pub status: ExitStatus,
    /// Captured standard output (at most `output_limit` bytes).
    pub stdout: Vec<u8>,
    /// Captured standard error (at most `output_limit` bytes).
    pub stderr: Vec<u8>,
    /// Whether some output was dropped because of `output_limit`.
    pub truncated: bool,
}

struct Capture {
    fd: Option<OwnedFd>,
    data: Vec<u8>,
    limit: usize,
    truncated: bool,
}

impl Capture {
    /// Takes a pipe's read end and makes it non-blocking.
    fn new(fd: OwnedFd, limit: usize) -> nix::Result<Self> {
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        Ok(Self {
            fd: Some(fd),
            data: Vec::new(),
            limit,
            truncated: false,
        })
    }

    /// Reads once; closes the pipe at EOF. Returns whether anything was read.
    fn read_once(&mut self) -> nix::Result<bool> {
        let Some(fd) = &self.fd else {
            return Ok(false);
        };
        let mut buf = [0u8; 8192];
        match read(fd.as_raw_fd(), &mut buf) {
            Ok(0) => {
                self.fd = None;
                Ok(false)
            }
            Ok(n) => {
                let room = self.limit.saturating_sub(self.data.len());
                let keep = n.min(room);
                self.data.extend_from_slice(&buf[..keep]);
                self.truncated |= keep < n;
                Ok(true)
            }
            Err(Errno::EAGAIN | Errno::EINTR) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads what is buffered now without blocking (bounded, in case a leftover background
    /// process keeps writing).
    fn drain(&mut self) -> nix::Result<()> {
        for _ in 0..256 {
            if !self.read_once()? {
                break;
            }
        }
        Ok(())
    }
}

fn wait_status(status: WaitStatus) -> Option<ExitStatus> {
    match status {
        WaitStatus::Exited(_, code) => Some(ExitStatus::from_raw((code & 0xff) << 8)),
        WaitStatus::Signaled(_, sig, core) => Some(ExitStatus::from_raw(
            sig as i32 | if core { 0x80 } else { 0 },
        )),
        _ => None,
    }
}

impl LxcContainer {
    fn attach_io(&self, what: &'static str) -> impl FnOnce(nix::Error) -> LxcError + '_ {
        move |source| LxcError::AttachIo {
            name: self.name.clone(),
            what,
            source,
        }
    }

    /// Runs `req.argv` inside the running container (in all its namespaces and its cgroup,
    /// as root, in `/`), waits for it, and returns its status and output.
    pub fn attach_run(&self, req: &AttachRequest<'_>) -> Result<AttachOutput> {
        let f = lxc_fn!(self, attach);
        let Some(program) = req.argv.first() else {
            return Err(LxcError::NoCommand {
                name: self.name.clone(),
            });
        };
        let nul = |what| LxcError::Nul {
            name: self.name.clone(),
            what,
        };
        let mut argv = CStringArray::new(req.argv).ok_or_else(|| nul("command argument"))?;
        let mut env = CStringArray::new(req.env).ok_or_else(|| nul("environment variable"))?;
        let mut cwd = CStringArray::new(&["/"]).ok_or_else(|| nul("working directory"))?;

        let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).map_err(self.attach_io("creating a pipe"))?;
        let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).map_err(self.attach_io("creating a pipe"))?;
        let mut out =
            Capture::new(out_r, req.output_limit).map_err(self.attach_io("setting up a pipe"))?;
        let mut err =
            Capture::new(err_r, req.output_limit).map_err(self.attach_io("setting up a pipe"))?;
        let null = open(
            "/dev/null",
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(self.attach_io("opening /dev/null"))?;
        // SAFETY: `open` just returned this descriptor and nothing else owns it.
        let null = unsafe { OwnedFd::from_raw_fd(null) };

        // SAFETY (for the pointer reads): each array has at least one entry plus the NULL.
        let program_ptr = unsafe { *argv.as_mut_ptr() };
        let mut command = lxc_sys::lxc_attach_command_t {
            program: program_ptr,
            argv: argv.as_mut_ptr(),
        };
        let mut options = lxc_sys::lxc_attach_options_t {
            attach_flags: lxc_sys::LXC_ATTACH_DEFAULT as c_int,
            namespaces: -1,
            personality: -1,
            // SAFETY: as above.
            initial_cwd: unsafe { *cwd.as_mut_ptr() },
            uid: libc::uid_t::MAX,
            gid: libc::gid_t::MAX,
            env_policy: lxc_sys::lxc_attach_env_policy_t_LXC_ATTACH_CLEAR_ENV,
            extra_env_vars: if req.env.is_empty() {
                ptr::null_mut()
            } else {
                env.as_mut_ptr()
            },
            extra_keep_env: ptr::null_mut(),
            stdin_fd: null.as_raw_fd(),
            stdout_fd: out_w.as_raw_fd(),
            stderr_fd: err_w.as_raw_fd(),
            log_fd: -libc::EBADF,
            lsm_label: ptr::null_mut(),
            groups: lxc_sys::lxc_groups_t {
                size: 0,
                list: ptr::null_mut(),
            },
        };
        let mut pid: libc::pid_t = 0;
        // SAFETY: live container; `command`, `options` and every string and array they point
        // to outlive the call; `lxc_attach_run_command` is liblxc's own exec function for an
        // `lxc_attach_command_t` payload.
        let ret = unsafe {
            f(
                self.raw(),
                Some(lxc_sys::lxc_attach_run_command),
                ptr::from_mut(&mut command).cast(),
                &mut options,
                &mut pid,
            )
        };
        // Our copies of the child's ends: closing them lets the pipes reach EOF.
        drop((out_w, err_w, null));
        if ret < 0 || pid <= 0 {
            return Err(self.failed(LxcOp::Attach));
        }
        let pid = Pid::from_raw(pid);

        let deadline = Instant::now() + req.timeout;
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {}
                Ok(status) => {
                    if let Some(status) = wait_status(status) {
                        out.drain().map_err(self.attach_io("reading its output"))?;
                        err.drain().map_err(self.attach_io("reading its output"))?;
                        return Ok(AttachOutput {
                            status,
                            truncated: out.truncated || err.truncated,
                            stdout: out.data,
                            stderr: err.data,
                        });
                    }
                }
                Err(e) => return Err(self.attach_io("waiting for the command")(e)),
            }
            let now = Instant::now();
            if now >= deadline {
                // Best effort: it may have exited just now; reap it either way.
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                return Err(LxcError::AttachTimeout {
                    name: self.name.clone(),
                    command: program.clone(),
                    timeout: req.timeout,
                });
            }
            let slice = (deadline - now).min(Duration::from_millis(20));
            let timeout = PollTimeout::try_from(slice).unwrap_or(PollTimeout::ZERO);
            let open: Vec<&OwnedFd> = [&out.fd, &err.fd].into_iter().flatten().collect();
            if open.is_empty() {
                std::thread::sleep(slice);
                continue;
            }
            let mut fds: Vec<PollFd<'_>> = open
                .iter()
                .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
                .collect();
            match poll(&mut fds, timeout) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(self.attach_io("waiting for its output")(e)),
            }
            drop(fds);
            out.read_once()
                .map_err(self.attach_io("reading its output"))?;
            err.read_once()
                .map_err(self.attach_io("reading its output"))?;
        }
    }
}
