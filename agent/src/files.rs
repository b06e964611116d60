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
//! Not here yet (the proxy work): endpoints of other roles in the context, re-rendering when
//! they change, and the `check` and `reload` commands. Files are rendered once per create. A
//! bind-mounted file pins its inode, so a later re-render must rewrite the file in place; a
//! rename would leave the container reading the old text.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value};
use texu_api::{Container, FileTemplate, Reason, RoleEndpoints, RoleSpec};

use crate::runtime::lxc::files::write_atomic;
use crate::runtime::{ContainerSpec, FileMount};

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

/// Where container `name`'s rendered files live on the board.
pub fn dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("files").join(name)
}

/// Replaces everything in `dir` with `files` (each at its container path below `dir`) and
/// returns their mounts.
pub fn write(dir: &Path, files: &[RenderedFile]) -> Result<Vec<FileMount>, FilesError> {
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| FilesError::Write { path, source }
    };
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(write_err(dir)(e)),
        _ => {}
    }
    let mut mounts = Vec::with_capacity(files.len());
    for f in files {
        let host = dir.join(relative(&f.path)?);
        if let Some(parent) = host.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(write_err(parent))?;
        }
        write_atomic(&host, f.text.as_bytes(), 0o644).map_err(write_err(&host))?;
        mounts.push(FileMount {
            host_path: host,
            container_path: PathBuf::from(&f.path),
        });
    }
    Ok(mounts)
}

/// An absolute container path as a relative one, refusing anything but plain names.
fn relative(path: &str) -> Result<PathBuf, FilesError> {
    let p = Path::new(path);
    let plain = p.is_absolute()
        && p.components().all(|c| {
            matches!(
                c,
                Component::RootDir | Component::Normal(_) | Component::CurDir
            )
        });
    let rel: PathBuf = p
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    if !plain || rel.as_os_str().is_empty() {
        return Err(FilesError::BadPath {
            path: path.to_owned(),
        });
    }
    Ok(rel)
}

/// For a container being created: renders its role's files, writes them under `data_dir`,
/// and adds their read-only mounts to `spec`, with [`REPLACES_ENV`] when it replaces a member.
/// The context's address is the spec's network address.
pub fn prepare(
    data_dir: &Path,
    node: &str,
    c: &Container,
    template: &RoleSpec,
    spec: &mut ContainerSpec,
) -> Result<(), FilesError> {
    prepare_with(data_dir, node, c, template, spec, &BTreeMap::new())
}

/// [`prepare`] with every role's `endpoints` in the context.
pub fn prepare_with(
    data_dir: &Path,
    node: &str,
    c: &Container,
    template: &RoleSpec,
    spec: &mut ContainerSpec,
    endpoints: &BTreeMap<String, RoleEndpoints>,
) -> Result<(), FilesError> {
    let address = spec.network.as_ref().map(|n| n.address);
    let ctx = FileContext::for_container(c, template, node, address).with_endpoints(endpoints);
    if let Some(old) = &ctx.replaces {
        spec.env.push((REPLACES_ENV.to_owned(), old.clone()));
    }
    let rendered = render(&template.files, &ctx)?;
    spec.files = write(&dir(data_dir, &c.metadata.name), &rendered)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Image, NetConfig};
    use std::os::unix::fs::PermissionsExt;
    use texu_api::{ContainerSpec as ApiSpec, Quantity};

    fn file(path: &str, template: &str) -> FileTemplate {
        FileTemplate {
            path: path.into(),
            template: template.into(),
            ..Default::default()
        }
    }

    fn ctx() -> FileContext {
        FileContext {
            name: "cassandra-1".into(),
            role: "cassandra".into(),
            ordinal: 1,
            node: "board5".into(),
            address: Some("198.19.5.3".into()),
            replaces: None,
            memory_limit: Some(128 * MIB),
            cpu_limit_millis: Some(500),
            env: BTreeMap::from([("CLUSTER".into(), "ring".into())]),
            endpoints: BTreeMap::new(),
        }
    }

    #[test]
    fn endpoints_of_any_role_render_in_order() {
        let member = |ordinal: i64, name: &str| texu_api::Endpoint {
            ordinal,
            name: name.into(),
            node: "board1".into(),
            address: format!("198.19.1.{}", ordinal + 2),
            port: 8080,
        };
        let app = RoleEndpoints {
            role: "app".into(),
            ports: BTreeMap::from([("http".into(), vec![member(0, "app-0"), member(1, "app-1")])]),
        };
        let ctx = ctx().with_endpoints(&BTreeMap::from([("app".into(), app)]));
        let text = render_text(
            "{% for e in endpoints.app.http %}BalancerMember http://{{ e.address }}:{{ e.port }} route={{ e.name }}\n{% endfor %}",
            &ctx,
        )
        .unwrap();
        assert_eq!(
            text,
            "BalancerMember http://198.19.1.2:8080 route=app-0\nBalancerMember http://198.19.1.3:8080 route=app-1\n"
        );
    }

    fn render_text(template: &str, ctx: &FileContext) -> Result<String, FilesError> {
        let mut out = render(&[file("/etc/texu/x.conf", template)], ctx)?;
        Ok(out.remove(0).text)
    }

    #[test]
    fn files_render_the_containers_identity_and_limits() {
        let text = render_text(
            "{{ name }} {{ role }}#{{ ordinal }} on {{ node }} at {{ address }}\n\
             heap={{ memory_limit_mb // 2 }}m mem={{ memory_limit }} cpu={{ cpu_limit }}/{{ cpu_limit_millis }}\n\
             cluster={{ env.CLUSTER }}\n",
            &ctx(),
        )
        .unwrap();
        assert_eq!(
            text,
            "cassandra-1 cassandra#1 on board5 at 198.19.5.3\n\
             heap=64m mem=134217728 cpu=0.5/500\n\
             cluster=ring\n"
        );
        let whole = FileContext {
            cpu_limit_millis: Some(2000),
            ..ctx()
        };
        assert_eq!(render_text("{{ cpu_limit }}", &whole).unwrap(), "2");
    }

    #[test]
    fn replaces_is_none_unless_set() {
        let t = "{% if replaces %}\nreplace_address_first_boot: {{ replaces }}\n{% endif %}\nseeds: x\n";
        assert_eq!(render_text(t, &ctx()).unwrap(), "seeds: x\n");
        let replacing = FileContext {
            replaces: Some("198.19.2.7".into()),
            ..ctx()
        };
        assert_eq!(
            render_text(t, &replacing).unwrap(),
            "replace_address_first_boot: 198.19.2.7\nseeds: x\n"
        );
        let unlimited = FileContext {
            memory_limit: None,
            address: None,
            ..ctx()
        };
        assert_eq!(
            render_text(
                "{{ memory_limit_mb is none }} {{ address is none }}",
                &unlimited
            )
            .unwrap(),
            "True True"
        );
    }

    #[test]
    fn an_undefined_variable_is_an_error_naming_path_and_line() {
        let e = render_text("ok\nname: {{ nmae }}\n", &ctx()).unwrap_err();
        assert!(
            matches!(&e, FilesError::Render { path, line: Some(2), .. } if path == "/etc/texu/x.conf"),
            "{e:?}"
        );
        assert_eq!(e.reason(), Reason::TemplateFailed);
        let text = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(
            text.contains("/etc/texu/x.conf, line 2 (unknown: nmae)"),
            "{text}"
        );
        assert!(text.contains("undefined"), "{text}");
        let e = render_text(
            "{% for i in range(2) %}{{ i }}{{ cpu_limt }}{% endfor %}",
            &ctx(),
        )
        .unwrap_err();
        assert!(
            matches!(&e, FilesError::Render { unknown, .. } if unknown == &["cpu_limt"]),
            "{e:?}"
        );
        // A missing key of a map, and a syntax error, too.
        assert!(render_text("{{ env.NOPE }}", &ctx()).is_err());
        let e = render_text("a\nb\n{% if %}\n", &ctx()).unwrap_err();
        assert!(
            matches!(e, FilesError::Render { line: Some(3), .. }),
            "{e:?}"
        );
    }

    #[test]
    fn output_and_work_are_bounded() {
        let e = render_text(
            "{% for i in range(3000) %}{{ 'x' * 1000 }}{% endfor %}",
            &ctx(),
        )
        .unwrap_err();
        assert!(matches!(e, FilesError::TooLarge { .. }), "{e:?}");
        assert!(e.to_string().contains("more than 1048576 bytes"), "{e}");
        // Just under the limit is fine.
        let big = render_text("{{ 'x' * 1048576 }}", &ctx()).unwrap();
        assert_eq!(big.len(), MAX_FILE_BYTES);
        let t = std::time::Instant::now();
        let e = render_text(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            &ctx(),
        )
        .unwrap_err();
        assert!(matches!(e, FilesError::Render { .. }), "{e:?}");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn memory_limit_mb_comes_from_the_roles_quantity() {
        let mut role = RoleSpec::with_image("template:busybox");
        role.resources.memory = Some(Quantity::new("128Mi"));
        role.resources.cpu = Some(Quantity::new("250m"));
        let c = container(None);
        let ctx = FileContext::for_container(&c, &role, "board1", None);
        assert_eq!(ctx.memory_limit, Some(128 * MIB));
        assert_eq!(ctx.cpu_limit_millis, Some(250));
        assert_eq!(
            render_text("{{ memory_limit_mb }} {{ cpu_limit }}", &ctx).unwrap(),
            "128 0.25"
        );
    }

    fn container(replaces: Option<&str>) -> Container {
        Container::new(
            "app-2",
            ApiSpec {
                role: "app".into(),
                ordinal: 2,
                node: Some("board1".into()),
                generation: 1,
                replaces: replaces.map(|a| a.parse().unwrap()),
                ..Default::default()
            },
        )
    }

    #[test]
    fn prepare_writes_files_mounts_them_and_passes_replaces() {
        let t = tempfile::tempdir().unwrap();
        let mut role = RoleSpec::with_image("template:busybox");
        role.files = vec![
            file(
                "/etc/texu/identity",
                "{{ name }} {{ address }} {{ replaces }}\n",
            ),
            file("/run/app.conf", "role={{ role }}\n"),
        ];
        let mut spec = ContainerSpec::new("app-2", Image::Template("busybox".into()));
        spec.network = Some(NetConfig {
            bridge: "texu0".into(),
            address: Ipv4Addr::new(198, 19, 1, 4),
            prefix_len: 24,
            gateway: None,
        });
        prepare(
            t.path(),
            "board1",
            &container(Some("198.19.2.9")),
            &role,
            &mut spec,
        )
        .unwrap();

        let host = t.path().join("files/app-2/etc/texu/identity");
        assert_eq!(
            spec.files,
            vec![
                FileMount {
                    host_path: host.clone(),
                    container_path: "/etc/texu/identity".into(),
                },
                FileMount {
                    host_path: t.path().join("files/app-2/run/app.conf"),
                    container_path: "/run/app.conf".into(),
                },
            ]
        );
        assert_eq!(
            fs::read_to_string(&host).unwrap(),
            "app-2 198.19.1.4 198.19.2.9\n"
        );
        assert_eq!(
            fs::metadata(&host).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(
            spec.env,
            vec![(REPLACES_ENV.to_owned(), "198.19.2.9".to_owned())]
        );
        assert_eq!(spec.validate(), Ok(()));

        // The next create starts afresh: a file dropped from the role is gone.
        role.files.truncate(1);
        let mut again = ContainerSpec::new("app-2", Image::Template("busybox".into()));
        prepare(t.path(), "board1", &container(None), &role, &mut again).unwrap();
        assert_eq!(fs::read_to_string(&host).unwrap(), "app-2 None None\n");
        assert!(!t.path().join("files/app-2/run").exists());
        assert!(again.env.is_empty());
        assert!(fs::read_dir(host.parent().unwrap()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with("texu-tmp")));
    }

    #[test]
    fn paths_must_be_plain() {
        assert_eq!(relative("/etc/./a").unwrap(), PathBuf::from("etc/a"));
        for bad in ["etc/a", "/etc/../a", "/"] {
            assert!(
                matches!(relative(bad), Err(FilesError::BadPath { .. })),
                "{bad}"
            );
        }
    }
}
