//! A small safe layer over liblxc's C API (`lxc-sys`).
//!
//! [`LxcContainer`] owns one `struct lxc_container *` and releases it with
//! `lxc_container_put` when dropped. Every C string handed to liblxc is a Rust `CString` that
//! lives for the call; every string liblxc allocates for us is freed with `free`. Names are
//! checked ([`validate_name`]) before they reach liblxc, so no name can point outside the LXC
//! path. All calls block (liblxc forks, waits on sockets and runs templates): async code runs them
//! on `spawn_blocking`.

mod attach;
mod name;

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::raw::{c_char, c_int};
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};
use std::time::Duration;

pub use attach::{AttachOutput, AttachRequest};
pub use name::{validate_name, NameError, MAX_NAME_LEN};

/// What a liblxc call was asked to do, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LxcOp {
    /// `create` (runs a template).
    Create,
    /// `start`.
    Start,
    /// `stop` (SIGKILL to the container's init).
    Stop,
    /// `shutdown` (the halt signal, then wait).
    Shutdown,
    /// `destroy`.
    Destroy,
    /// `save_config`.
    SaveConfig,
    /// `load_config`.
    LoadConfig,
    /// `clear_config_item`.
    ClearConfigItem,
    /// `attach`.
    Attach,
    /// `want_daemonize`.
    Daemonize,
}

impl fmt::Display for LxcOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Create => "create",
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Shutdown => "shut down",
            Self::Destroy => "destroy",
            Self::SaveConfig => "save the config of",
            Self::LoadConfig => "load the config of",
            Self::ClearConfigItem => "clear a config item of",
            Self::Attach => "attach to",
            Self::Daemonize => "set daemonize on",
        })
    }
}

/// Errors of the liblxc layer. Each names the container and what failed.
#[derive(Debug, thiserror::Error)]
pub enum LxcError {
    /// The name is not a DNS-1123 label.
    #[error("invalid container name")]
    InvalidName(#[from] NameError),
    /// A string for liblxc holds a NUL byte, which C cannot carry.
    #[error("{what} for container {name} contains a NUL byte")]
    Nul {
        /// Container name.
        name: String,
        /// Which argument.
        what: &'static str,
    },
    /// The LXC path is not valid UTF-8 or holds a NUL byte.
    #[error("LXC path {lxcpath:?} cannot be passed to liblxc")]
    BadLxcPath {
        /// The path.
        lxcpath: PathBuf,
    },
    /// `lxc_container_new` returned NULL.
    #[error("liblxc could not set up container {name} in {lxcpath:?}")]
    New {
        /// Container name.
        name: String,
        /// LXC path.
        lxcpath: PathBuf,
    },
    /// liblxc's struct lacks a function this layer needs (an incompatible liblxc).
    #[error("liblxc has no {function} function (incompatible liblxc version)")]
    MissingFunction {
        /// The struct member.
        function: &'static str,
    },
    /// A liblxc call returned failure.
    #[error("liblxc failed to {op} container {name}{}", detail_suffix(.detail))]
    Failed {
        /// Container name.
        name: String,
        /// What was asked.
        op: LxcOp,
        /// liblxc's own error string or number, when it set one.
        detail: Option<String>,
    },
    /// liblxc rejected a configuration item.
    #[error("liblxc rejected config item {key} = {value:?} for container {name}")]
    ConfigItem {
        /// Container name.
        name: String,
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// `list_defined_containers` failed.
    #[error("liblxc could not list the containers in {lxcpath:?}")]
    List {
        /// LXC path.
        lxcpath: PathBuf,
    },
    /// `start(useinit = 1)` needs a command.
    #[error("container {name} cannot start under LXC's init without a command")]
    NoCommand {
        /// Container name.
        name: String,
    },
    /// A system call around an attach failed (pipes, poll, waitpid).
    #[error("{what} while running a command in container {name}")]
    AttachIo {
        /// Container name.
        name: String,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// The attached command did not finish in time and was killed.
    #[error("command {command:?} in container {name} did not finish within {timeout:?}")]
    AttachTimeout {
        /// Container name.
        name: String,
        /// The program.
        command: String,
        /// The limit.
        timeout: Duration,
    },
}

fn detail_suffix(detail: &Option<String>) -> String {
    match detail {
        Some(d) => format!(": {d}"),
        None => String::new(),
    }
}

/// Result of this module.
pub type Result<T, E = LxcError> = std::result::Result<T, E>;

/// liblxc's container states (`lxc_state2str`), typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LxcState {
    /// Not running (or, beware, the monitor could not be reached).
    Stopped,
    /// Being started.
    Starting,
    /// Running.
    Running,
    /// Being stopped.
    Stopping,
    /// A start is being aborted.
    Aborting,
    /// Being frozen.
    Freezing,
    /// Frozen.
    Frozen,
    /// Thawed (running again after a freeze).
    Thawed,
    /// liblxc answered nothing or a state this layer does not know.
    Unknown,
}

impl LxcState {
    /// Parses liblxc's state name.
    pub fn from_lxc(s: &str) -> Self {
        match s {
            "STOPPED" => Self::Stopped,
            "STARTING" => Self::Starting,
            "RUNNING" => Self::Running,
            "STOPPING" => Self::Stopping,
            "ABORTING" => Self::Aborting,
            "FREEZING" => Self::Freezing,
            "FROZEN" => Self::Frozen,
            "THAWED" => Self::Thawed,
            _ => Self::Unknown,
        }
    }

    /// The name liblxc uses (for `wait`).
    pub const fn as_lxc(self) -> &'static str {
        match self {
            Self::Stopped => "STOPPED",
            Self::Starting => "STARTING",
            Self::Running => "RUNNING",
            Self::Stopping => "STOPPING",
            Self::Aborting => "ABORTING",
            Self::Freezing => "FREEZING",
            Self::Frozen => "FROZEN",
            Self::Thawed => "THAWED",
            Self::Unknown => "UNKNOWN",
        }
    }
}

impl fmt::Display for LxcState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_lxc())
    }
}

/// A null-terminated `char *[]` whose strings live as long as the value.
pub(crate) struct CStringArray {
    _strings: Vec<CString>,
    ptrs: Vec<*mut c_char>,
}

impl CStringArray {
    pub(crate) fn new<S: AsRef<str>>(items: &[S]) -> Option<Self> {
        let strings = items
            .iter()
            .map(|s| CString::new(s.as_ref()).ok())
            .collect::<Option<Vec<_>>>()?;
        // liblxc takes `char * const[]` but never writes through these pointers.
        let mut ptrs: Vec<*mut c_char> = strings.iter().map(|s| s.as_ptr().cast_mut()).collect();
        ptrs.push(ptr::null_mut());
        Some(Self {
            _strings: strings,
            ptrs,
        })
    }

    pub(crate) fn as_ptr(&self) -> *const *mut c_char {
        self.ptrs.as_ptr()
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut *mut c_char {
        self.ptrs.as_mut_ptr()
    }
}

/// Fetches a function pointer from the container struct, or fails with `MissingFunction`.
macro_rules! lxc_fn {
    ($self:ident, $field:ident) => {
        // SAFETY: `self.ptr` came from `lxc_container_new` and is released only in `Drop`.
        unsafe { (*$self.ptr.as_ptr()).$field }.ok_or(LxcError::MissingFunction {
            function: stringify!($field),
        })?
    };
}
pub(crate) use lxc_fn;

/// One liblxc container handle: a name in an LXC path, defined or not.
///
/// Not `Send`: make one per blocking task (it is cheap: liblxc reads the config file).
pub struct LxcContainer {
    ptr: NonNull<lxc_sys::lxc_container>,
    name: String,
    lxcpath: PathBuf,
}

impl fmt::Debug for LxcContainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LxcContainer")
            .field("name", &self.name)
            .field("lxcpath", &self.lxcpath)
            .finish()
    }
}

impl Drop for LxcContainer {
    fn drop(&mut self) {
        // SAFETY: we own one reference, taken by `lxc_container_new`.
        unsafe {
            lxc_sys::lxc_container_put(self.ptr.as_ptr());
        }
    }
}

impl LxcContainer {
    /// Opens container `name` in `lxcpath` (liblxc loads its config if it is defined).
    pub fn new(name: &str, lxcpath: &Path) -> Result<Self> {
        validate_name(name)?;
        let c_name = CString::new(name).map_err(|_| LxcError::Nul {
            name: name.to_owned(),
            what: "name",
        })?;
        let c_path = path_cstring(lxcpath)?;
        // SAFETY: both are valid C strings for the duration of the call; liblxc copies them.
        let raw = unsafe { lxc_sys::lxc_container_new(c_name.as_ptr(), c_path.as_ptr()) };
        let ptr = NonNull::new(raw).ok_or_else(|| LxcError::New {
            name: name.to_owned(),
            lxcpath: lxcpath.to_owned(),
        })?;
        Ok(Self {
            ptr,
            name: name.to_owned(),
            lxcpath: lxcpath.to_owned(),
        })
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The LXC path the container lives in.
    pub fn lxcpath(&self) -> &Path {
        &self.lxcpath
    }

    /// The container's directory, `<lxcpath>/<name>`.
    pub fn dir(&self) -> PathBuf {
        self.lxcpath.join(&self.name)
    }

    pub(crate) fn raw(&self) -> *mut lxc_sys::lxc_container {
        self.ptr.as_ptr()
    }

    fn cstr(&self, s: &str, what: &'static str) -> Result<CString> {
        CString::new(s).map_err(|_| LxcError::Nul {
            name: self.name.clone(),
            what,
        })
    }

    pub(crate) fn failed(&self, op: LxcOp) -> LxcError {
        // SAFETY: the struct is live; `error_string` is either NULL or a C string owned by it.
        let (num, string) = unsafe {
            let c = self.ptr.as_ptr();
            let s = (*c).error_string;
            let s = (!s.is_null()).then(|| CStr::from_ptr(s).to_string_lossy().into_owned());
            ((*c).error_num, s)
        };
        let detail = match (string, num) {
            (Some(s), _) if !s.is_empty() => Some(s),
            (_, 0) => None,
            (_, n) => Some(format!("liblxc error {n}")),
        };
        LxcError::Failed {
            name: self.name.clone(),
            op,
            detail,
        }
    }

    /// Whether the container's config file exists.
    pub fn is_defined(&self) -> Result<bool> {
        let f = lxc_fn!(self, is_defined);
        // SAFETY: live container pointer.
        Ok(unsafe { f(self.raw()) })
    }

    /// Whether liblxc says the container runs (false when the monitor cannot be reached).
    pub fn is_running(&self) -> Result<bool> {
        let f = lxc_fn!(self, is_running);
        // SAFETY: live container pointer.
        Ok(unsafe { f(self.raw()) })
    }

    /// liblxc's state of the container. `Stopped` also when the monitor's socket is not
    /// reachable (for instance from another network namespace): cross-check with the init pid.
    pub fn state(&self) -> Result<LxcState> {
        let f = lxc_fn!(self, state);
        // SAFETY: live container pointer; the result is a static string (lxc_state2str) or NULL.
        let s = unsafe { f(self.raw()) };
        if s.is_null() {
            return Ok(LxcState::Unknown);
        }
        // SAFETY: non-NULL static C string; not freed.
        let s = unsafe { CStr::from_ptr(s) };
        Ok(LxcState::from_lxc(&s.to_string_lossy()))
    }

    /// The host pid of the container's init, if liblxc's monitor answers.
    pub fn init_pid(&self) -> Result<Option<u32>> {
        let f = lxc_fn!(self, init_pid);
        // SAFETY: live container pointer.
        let pid = unsafe { f(self.raw()) };
        Ok(u32::try_from(pid).ok().filter(|&p| p > 0))
    }

    /// Creates the container by running LXC template `template` (e.g. `busybox`) with `args`.
    pub fn create(&self, template: &str, args: &[&str]) -> Result<()> {
        let f = lxc_fn!(self, create);
        let t = self.cstr(template, "template")?;
        let argv = CStringArray::new(args).ok_or_else(|| LxcError::Nul {
            name: self.name.clone(),
            what: "template argument",
        })?;
        // SAFETY: live container; C strings and the NULL-terminated argv outlive the call;
        // NULL bdevtype/specs mean the "dir" backing store.
        let ok = unsafe {
            f(
                self.raw(),
                t.as_ptr(),
                ptr::null(),
                ptr::null_mut(),
                lxc_sys::LXC_CREATE_QUIET as c_int,
                argv.as_ptr(),
            )
        };
        if ok {
            Ok(())
        } else {
            Err(self.failed(LxcOp::Create))
        }
    }

    /// Sets one configuration item in memory (see [`LxcContainer::save_config`]).
    pub fn set_config_item(&self, key: &str, value: &str) -> Result<()> {
        let f = lxc_fn!(self, set_config_item);
        let k = self.cstr(key, "config key")?;
        let v = self.cstr(value, "config value")?;
        // SAFETY: live container; both strings outlive the call and liblxc copies them.
        if unsafe { f(self.raw(), k.as_ptr(), v.as_ptr()) } {
            Ok(())
        } else {
            Err(LxcError::ConfigItem {
                name: self.name.clone(),
                key: key.to_owned(),
                value: value.to_owned(),
            })
        }
    }

    /// Clears a configuration item (e.g. `lxc.net` clears every network).
    pub fn clear_config_item(&self, key: &str) -> Result<()> {
        let f = lxc_fn!(self, clear_config_item);
        let k = self.cstr(key, "config key")?;
        // SAFETY: live container; the key outlives the call.
        if unsafe { f(self.raw(), k.as_ptr()) } {
            Ok(())
        } else {
            Err(self.failed(LxcOp::ClearConfigItem))
        }
    }

    /// Reads a configuration item; `None` when liblxc does not know the key or it is unset.
    pub fn get_config_item(&self, key: &str) -> Result<Option<String>> {
        let f = lxc_fn!(self, get_config_item);
        let k = self.cstr(key, "config key")?;
        // SAFETY: live container; NULL buffer asks for the length only.
        let len = unsafe { f(self.raw(), k.as_ptr(), ptr::null_mut(), 0) };
        let Ok(len) = usize::try_from(len) else {
            return Ok(None);
        };
        if len == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; len + 1];
        let inlen = c_int::try_from(buf.len()).unwrap_or(c_int::MAX);
        // SAFETY: `buf` has `inlen` writable bytes; liblxc writes at most that and a NUL.
        let got = unsafe { f(self.raw(), k.as_ptr(), buf.as_mut_ptr().cast(), inlen) };
        let Ok(got) = usize::try_from(got) else {
            return Ok(None);
        };
        buf.truncate(got.min(len));
        Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
    }

    /// Defines the container from config items: sets each in order, then saves the config.
    pub fn define<K: AsRef<str>, V: AsRef<str>>(&self, items: &[(K, V)]) -> Result<()> {
        for (key, value) in items {
            self.set_config_item(key.as_ref(), value.as_ref())?;
        }
        self.save_config()
    }

    /// Writes the in-memory configuration to the container's config file.
    pub fn save_config(&self) -> Result<()> {
        let f = lxc_fn!(self, save_config);
        // SAFETY: live container; NULL means the container's own config file.
        if unsafe { f(self.raw(), ptr::null()) } {
            Ok(())
        } else {
            Err(self.failed(LxcOp::SaveConfig))
        }
    }

    /// Re-reads the container's config file.
    pub fn load_config(&self) -> Result<()> {
        let f = lxc_fn!(self, load_config);
        // SAFETY: live container; NULL means the container's own config file.
        if unsafe { f(self.raw(), ptr::null()) } {
            Ok(())
        } else {
            Err(self.failed(LxcOp::LoadConfig))
        }
    }

    /// Whether `start` forks a monitor and returns (true, the only mode a threaded program may
    /// use: liblxc refuses a foreground start from a threaded process).
    pub fn want_daemonize(&self, daemonize: bool) -> Result<()> {
        let f = lxc_fn!(self, want_daemonize);
        // SAFETY: live container pointer.
        if unsafe { f(self.raw(), daemonize) } {
            Ok(())
        } else {
            Err(self.failed(LxcOp::Daemonize))
        }
    }

    /// Starts the container. With `use_init`, LXC's own init (`init.lxc`) is PID 1 and runs
    /// `argv` as PID 2 (like `lxc-execute`); without it, `argv` (or `/sbin/init` when empty) is
    /// PID 1. `argv[0]` is a path or a name looked up in `PATH`, never a shell line.
    pub fn start(&self, use_init: bool, argv: &[&str]) -> Result<()> {
        let f = lxc_fn!(self, start);
        if use_init && argv.is_empty() {
            return Err(LxcError::NoCommand {
                name: self.name.clone(),
            });
        }
        let array = CStringArray::new(argv).ok_or_else(|| LxcError::Nul {
            name: self.name.clone(),
            what: "command argument",
        })?;
        let argv_ptr = if argv.is_empty() {
            ptr::null()
        } else {
            array.as_ptr()
        };
        // SAFETY: live container; argv is NULL or a NULL-terminated array that outlives the call.
        if unsafe { f(self.raw(), c_int::from(use_init), argv_ptr) } {
            Ok(())
        } else {
            Err(self.failed(LxcOp::Start))
        }
    }

    /// Sends the container's halt signal and waits up to `timeout` (whole seconds, at least 1)
    /// for it to stop. Returns whether it stopped in time.
    pub fn shutdown(&self, timeout: Duration) -> Result<bool> {
        let f = lxc_fn!(self, shutdown);
        let secs = c_int::try_from(timeout.as_secs().max(1)).unwrap_or(c_int::MAX);
        // SAFETY: live container pointer.
        Ok(unsafe { f(self.raw(), secs) })
    }

    /// Kills the container (SIGKILL to its init, which ends its pid namespace).
    pub fn stop(&self) -> Result<()> {
        let f = lxc_fn!(self, stop);
        // SAFETY: live container pointer.
        if unsafe { f(self.raw()) } {
            Ok(())
        } else {
            Err(self.failed(LxcOp::Stop))
        }
    }

    /// Waits up to `timeout` (whole seconds; zero means do not wait) for `state`.
    pub fn wait(&self, state: LxcState, timeout: Duration) -> Result<bool> {
        let f = lxc_fn!(self, wait);
        let s = self.cstr(state.as_lxc(), "state")?;
        let secs = c_int::try_from(timeout.as_secs()).unwrap_or(c_int::MAX);
        // SAFETY: live container; the state string outlives the call.
        Ok(unsafe { f(self.raw(), s.as_ptr(), secs) })
    }

    /// Deletes the container: its config, its directory and its rootfs (the rootfs is deleted
    /// even when it lives outside the container directory). The container must be stopped.
    pub fn destroy(&self) -> Result<()> {
        let f = lxc_fn!(self, destroy);
        // SAFETY: live container pointer.
        if unsafe { f(self.raw()) } {
            Ok(())
        } else {
            Err(self.failed(LxcOp::Destroy))
        }
    }
}

fn path_cstring(path: &Path) -> Result<CString> {
    path.to_str()
        .and_then(|s| CString::new(s).ok())
        .ok_or_else(|| LxcError::BadLxcPath {
            lxcpath: path.to_owned(),
        })
}

/// Names of the containers defined in `lxcpath` (those with a config file), sorted.
pub fn list_defined(lxcpath: &Path) -> Result<Vec<String>> {
    let c_path = path_cstring(lxcpath)?;
    let mut names: *mut *mut c_char = ptr::null_mut();
    // SAFETY: valid C string; liblxc allocates `names` (an array of malloc'd strings) for us,
    // and we pass NULL for the container array so none are opened for us.
    let n =
        unsafe { lxc_sys::list_defined_containers(c_path.as_ptr(), &mut names, ptr::null_mut()) };
    let Ok(n) = usize::try_from(n) else {
        return Err(LxcError::List {
            lxcpath: lxcpath.to_owned(),
        });
    };
    let mut out = Vec::with_capacity(n);
    if !names.is_null() {
        for i in 0..n {
            // SAFETY: liblxc returned `n` malloc'd C strings in a malloc'd array; each is freed
            // once here, then the array.
            unsafe {
                let s = *names.add(i);
                if !s.is_null() {
                    out.push(CStr::from_ptr(s).to_string_lossy().into_owned());
                    libc::free(s.cast());
                }
            }
        }
        // SAFETY: the array itself was malloc'd by liblxc.
        unsafe { libc::free(names.cast()) };
    }
    out.sort();
    Ok(out)
}

/// Removes liblxc's lock files for an LXC path that is going away: liblxc makes one under
/// `/run/lxc/lock/<lxcpath>/` (as root) for every container it touches and never removes them.
/// Best effort; does nothing for a relative path or `/`.
pub fn remove_lock_dir(lxcpath: &Path) {
    let Ok(relative) = lxcpath.strip_prefix("/") else {
        return;
    };
    if relative.as_os_str().is_empty()
        || relative
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return;
    }
    let dir = Path::new("/run/lxc/lock").join(relative);
    let _ = std::fs::remove_dir_all(&dir);
    // And the parents liblxc made for it, while empty (`remove_dir` leaves a non-empty one).
    let mut parent = dir.parent();
    while let Some(p) = parent.filter(|p| *p != Path::new("/run/lxc/lock")) {
        if std::fs::remove_dir(p).is_err() {
            break;
        }
        parent = p.parent();
    }
}

/// liblxc's version string (e.g. "5.0.2").
pub fn version() -> String {
    // SAFETY: returns a static C string.
    let v = unsafe { lxc_sys::lxc_get_version() };
    if v.is_null() {
        return String::new();
    }
    // SAFETY: non-NULL static string, not freed.
    unsafe { CStr::from_ptr(v) }.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for s in [
            LxcState::Stopped,
            LxcState::Starting,
            LxcState::Running,
            LxcState::Stopping,
            LxcState::Aborting,
            LxcState::Freezing,
            LxcState::Frozen,
            LxcState::Thawed,
        ] {
            assert_eq!(LxcState::from_lxc(s.as_lxc()), s);
        }
        assert_eq!(LxcState::from_lxc("BOGUS"), LxcState::Unknown);
    }

    #[test]
    fn new_rejects_bad_names_before_liblxc() {
        let err = LxcContainer::new("../x", Path::new("/tmp")).unwrap_err();
        assert!(matches!(err, LxcError::InvalidName(_)));
    }

    #[test]
    fn c_string_array_is_null_terminated() {
        let a = CStringArray::new(&["a", "b"]).unwrap();
        // SAFETY: the array has three entries, the last NULL.
        unsafe {
            assert!(!(*a.as_ptr()).is_null());
            assert!((*a.as_ptr().add(2)).is_null());
        }
        assert!(CStringArray::new(&["a\0b"]).is_none());
    }
}
