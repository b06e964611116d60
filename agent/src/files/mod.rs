//! A role's `files`: templates (minijinja syntax) that the agent renders when it creates a
//! container, writes under its data dir and bind-mounts read-only into the container.
//!
//! The template context ([`FileContext`]) is the container's identity and limits: `name`,
//! `role`, `ordinal`, `node`, `address` (none without a network), `replaces` (none unless
//! `texu replace` started this container), `memory_limit` (bytes) and `memory_limit_mb` (MiB,
//! rounded down), `cpu_limit` (CPUs: `2`, `0.5`) and `cpu_limit_millis`, and `env` (the role's
//! environment). Limits are none when the role sets none.
//!
//! Rendering is strict: an undefined variable is an error naming the file and the template
//! line, never an empty string (`{% if replaces %}` works, as `replaces` is always defined).
//! Config-file friendly settings: a block tag's newline is dropped (`trim_blocks`), the
//! template's last newline is kept, nothing is HTML-escaped. A file renders to at most
//! [`MAX_FILE_BYTES`] and a bounded amount of work (minijinja's fuel), or fails.
//!
//! Delivery: the text goes to `DATA_DIR/files/NAME/PATH` (mode 0644, written to a temporary
//! file and renamed), and the runtime bind-mounts it read-only at `PATH`
//! (`ro,bind,create=file`). The container's files directory is rebuilt at every create and
//! removed with the container. Where a file can go: over a file that exists in the container,
//! or at a missing path whose nearest existing parent is writable (LXC creates the mount point
//! and missing directories). On a host image the board's /usr, /lib, /bin, /sbin and /etc are
//! read-only binds, so a file there must already exist on the board (it is mounted over);
//! new files belong under /run, /var, /tmp, /home or a new top-level directory. A template or
//! stored image's own directories are writable; read-only binds an LXC template adds (busybox
//! binds the board's /lib) follow the host rule. The runtime checks this at create and fails
//! with a message that says so.
//!
//! `replaces` (and `TEXU_REPLACES` in the container's environment) is seen on the create only:
//! restarts of the same container reuse its rendered files as they are.
//!
//! `endpoints.ROLE.PORT` (every role's Ready containers) is in the context too; while the
//! container runs, `daemon::live_files` renders again when they change and installs the new
//! text in place (a bind-mounted file pins its inode: a rename would leave the container
//! reading the old text), checks it and reloads.
//!
//! Rooms: this file renders; [`deliver`] writes and mounts at create; `tests` tests both.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value};
use texu_api::{Container, FileTemplate, Reason, RoleEndpoints, RoleSpec};

mod deliver;
pub use deliver::{dir, prepare, prepare_with, write};

/// Largest rendered file.
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// Environment variable that carries `replaces` on the container's create.
pub const REPLACES_ENV: &str = "TEXU_REPLACES";
/// Template instructions one file may run: ample for config files, a stop for runaway loops.
const FUEL: u64 = 2_000_000;
const MIB: u64 = 1024 * 1024;

/// What a template sees: the container's identity and limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileContext {
    /// The container's name (`cassandra-1`).
    pub name: String,
    /// Its role.
    pub role: String,
    /// Its ordinal in the role.
    pub ordinal: i64,
    /// The node it runs on.
    pub node: String,
    /// Its address, when it has a network.
    pub address: Option<String>,
    /// The address of the member it replaces, on its first boot after `texu replace`.
    pub replaces: Option<String>,
    /// Memory limit in bytes.
    pub memory_limit: Option<u64>,
    /// CPU limit in thousandths of a CPU.
    pub cpu_limit_millis: Option<u64>,
    /// The role's environment.
    pub env: BTreeMap<String, String>,
    /// Every role's Ready endpoints: `endpoints.ROLE.PORT` is a list of `{name, ordinal, node,
    /// address, port}`, sorted by ordinal then name.
    pub endpoints: BTreeMap<String, RoleEndpoints>,
}

impl FileContext {
    /// The context of container `c` made from `template` on `node`, with `address`.
    pub fn for_container(
        c: &Container,
        template: &RoleSpec,
        node: &str,
        address: Option<Ipv4Addr>,
    ) -> Self {
        let resources = &template.resources;
        FileContext {
            name: c.metadata.name.clone(),
            role: c.spec.role.clone(),
            ordinal: c.spec.ordinal,
            node: node.to_owned(),
            address: address.map(|a| a.to_string()),
            replaces: c.spec.replaces.map(|a| a.to_string()),
            memory_limit: resources.memory.as_ref().and_then(|q| q.bytes().ok()),
            cpu_limit_millis: resources.cpu.as_ref().and_then(|q| q.cpu_millis().ok()),
            env: template.env.clone(),
            endpoints: BTreeMap::new(),
        }
    }

    /// The same context with every role's `endpoints`.
    pub fn with_endpoints(mut self, endpoints: &BTreeMap<String, RoleEndpoints>) -> Self {
        self.endpoints = endpoints.clone();
        self
    }

    /// The template context: one variable per field, plus derived ones.
    pub fn to_value(&self) -> Value {
        let cpus = self.cpu_limit_millis.map(|m| {
            if m % 1000 == 0 {
                Value::from(m / 1000)
            } else {
                Value::from(m as f64 / 1000.0)
            }
        });
        BTreeMap::from([
            ("name", Value::from(self.name.as_str())),
            ("role", Value::from(self.role.as_str())),
            ("ordinal", Value::from(self.ordinal)),
            ("node", Value::from(self.node.as_str())),
            ("address", Value::from(self.address.clone())),
            ("replaces", Value::from(self.replaces.clone())),
            ("memory_limit", Value::from(self.memory_limit)),
            (
                "memory_limit_mb",
                Value::from(self.memory_limit.map(|b| b / MIB)),
            ),
            ("cpu_limit", Value::from(cpus)),
            ("cpu_limit_millis", Value::from(self.cpu_limit_millis)),
            ("env", Value::from(self.env.clone())),
            (
                "endpoints",
                Value::from(
                    self.endpoints
                        .iter()
                        .map(|(role, e)| (role.clone(), ports_value(&e.ports)))
                        .collect::<BTreeMap<String, Value>>(),
                ),
            ),
        ])
        .into()
    }
}

/// A role's ports as the template sees them: port name -> list of endpoint maps.
fn ports_value(ports: &BTreeMap<String, Vec<texu_api::Endpoint>>) -> Value {
    let ports: BTreeMap<String, Value> = ports
        .iter()
        .map(|(port, list)| {
            let list: Vec<Value> = list
                .iter()
                .map(|e| {
                    Value::from(BTreeMap::from([
                        ("name", Value::from(e.name.as_str())),
                        ("ordinal", Value::from(e.ordinal)),
                        ("node", Value::from(e.node.as_str())),
                        ("address", Value::from(e.address.as_str())),
                        ("port", Value::from(e.port)),
                    ]))
                })
                .collect();
            (port.clone(), Value::from(list))
        })
        .collect();
    Value::from(ports)
}

/// One rendered file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Its absolute path inside the container.
    pub path: String,
    /// What it holds.
    pub text: String,
}

/// What went wrong with a container's files.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The template does not parse or does not render.
    #[error("cannot render the template of {path}{}{}", at_line(*.line), unknown_names(.unknown))]
    Render {
        /// The file's path inside the container.
        path: String,
        /// The template line, when known.
        line: Option<usize>,
        /// Variables the template uses that the context does not have.
        unknown: Vec<String>,
        /// minijinja's error.
        #[source]
        source: minijinja::Error,
    },
    /// The template renders more than [`MAX_FILE_BYTES`].
    #[error("the template of {path} renders more than {MAX_FILE_BYTES} bytes")]
    TooLarge {
        /// The file's path inside the container.
        path: String,
    },
    /// The path is not an absolute path without `..` (the API checks it too).
    #[error("file path {path:?} must be absolute and hold no '..'")]
    BadPath {
        /// The path as given.
        path: String,
    },
    /// A rendered file or its directory cannot be written on the board.
    #[error("cannot write {path:?}")]
    Write {
        /// The path on the board.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl FilesError {
    /// The container path of the file that failed, when one did.
    pub fn path(&self) -> Option<&str> {
        match self {
            FilesError::Render { path, .. }
            | FilesError::TooLarge { path }
            | FilesError::BadPath { path } => Some(path),
            FilesError::Write { .. } => None,
        }
    }

    /// The container status reason for this error.
    pub fn reason(&self) -> Reason {
        match self {
            FilesError::Write { .. } => Reason::FilesFailed,
            _ => Reason::TemplateFailed,
        }
    }
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(", line {l}")).unwrap_or_default()
}

fn unknown_names(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!(" (unknown: {})", names.join(", "))
    }
}

/// Renders `files` with `ctx`, in order.
pub fn render(files: &[FileTemplate], ctx: &FileContext) -> Result<Vec<RenderedFile>, FilesError> {
    let env = environment();
    let ctx = ctx.to_value();
    files.iter().map(|f| render_one(&env, f, &ctx)).collect()
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_fuel(Some(FUEL));
    // Building fails only for custom delimiters, which these are not.
    if let Ok(syntax) = SyntaxConfig::builder()
        .trim_blocks(true)
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env
}

fn render_one(
    env: &Environment<'_>,
    f: &FileTemplate,
    ctx: &Value,
) -> Result<RenderedFile, FilesError> {
    let failed = |source: minijinja::Error, unknown: Vec<String>| FilesError::Render {
        path: f.path.clone(),
        line: source.line(),
        unknown,
        source,
    };
    let template = env
        .template_from_named_str(&f.path, &f.template)
        .map_err(|e| failed(e, Vec::new()))?;
    let mut out = Bounded::default();
    if let Err(e) = template.render_captured_to(ctx.clone(), &mut out) {
        if out.over {
            return Err(FilesError::TooLarge {
                path: f.path.clone(),
            });
        }
        // minijinja says a value is undefined, not which: name the unknown variables.
        let mut unknown: Vec<String> = Vec::new();
        if e.kind() == ErrorKind::UndefinedError {
            unknown = template
                .undeclared_variables(false)
                .into_iter()
                .filter(|v| ctx.get_attr(v).is_ok_and(|x| x.is_undefined()))
                .filter(|v| !env.globals().any(|(g, _)| g == v))
                .collect();
            unknown.sort();
        }
        return Err(failed(e, unknown));
    }
    Ok(RenderedFile {
        path: f.path.clone(),
        // minijinja writes whole strs, so this is never lossy.
        text: String::from_utf8_lossy(&out.buf).into_owned(),
    })
}

/// A buffer that refuses to grow past [`MAX_FILE_BYTES`].
#[derive(Default)]
struct Bounded {
    buf: Vec<u8>,
    over: bool,
}

impl Write for Bounded {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > MAX_FILE_BYTES {
            self.over = true;
            return Err(io::Error::other("rendered file too large"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
