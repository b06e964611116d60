//! One probe attempt against one container: an HTTP GET, a TCP connect or a command run inside
//! the container, each bounded by the probe's timeout and ending in a [`CheckResult`] that says
//! in a few words what happened.

use async_trait::async_trait;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use texu_api::{Port, PortRef, Probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes of an HTTP response read while looking for the status line.
const STATUS_LINE_LIMIT: usize = 1024;

/// Runs a command inside a container; the container runtime implements it.
///
/// A probe drops the returned future when its timeout passes, which may not end the command:
/// an implementation should bound the command's run time itself.
#[async_trait]
pub trait Exec: Send + Sync {
    /// Runs `argv` (no shell) inside `container` and returns its exit code, or why it could not
    /// be run.
    async fn exec(&self, container: &str, argv: &[String]) -> Result<i32, String>;
}

/// How one probe attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Whether the attempt succeeded.
    pub success: bool,
    /// What happened, for people: `HTTP 503 from 198.19.1.2:8000/health`, `exit code 2`.
    pub reason: String,
}

impl CheckResult {
    /// A successful attempt.
    pub fn success(reason: impl Into<String>) -> CheckResult {
        CheckResult {
            success: true,
            reason: reason.into(),
        }
    }

    /// A failed attempt.
    pub fn failure(reason: impl Into<String>) -> CheckResult {
        CheckResult {
            success: false,
            reason: reason.into(),
        }
    }
}

/// Why a probe definition cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The probe has none of `http`, `tcp` and `exec`.
    #[error("the probe needs one of http, tcp or exec")]
    NoAction,
    /// The probe has more than one of `http`, `tcp` and `exec`.
    #[error("the probe must have exactly one of http, tcp or exec")]
    SeveralActions,
    /// The probe names a port the role does not have.
    #[error("the probe's port {name:?} is not one of the role's ports")]
    UnknownPort {
        /// The name as given.
        name: String,
    },
    /// The probe's port is not a TCP port number.
    #[error("the probe's port {port} is not between 1 and 65535")]
    PortOutOfRange {
        /// The number as given or looked up.
        port: i64,
    },
    /// The HTTP path could not be put in a request line.
    #[error("the probe's HTTP path {path:?} must start with '/' and hold no spaces or control characters")]
    InvalidPath {
        /// The path as given.
        path: String,
    },
    /// The exec probe has no command.
    #[error("the probe's command is empty")]
    EmptyCommand,
}

/// A probe's action with its port looked up: what one attempt does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// GET `path` on `port`; 200-399 is a success.
    Http {
        /// The container's port.
        port: u16,
        /// The request path, starting with `/`.
        path: String,
    },
    /// Connect to `port`.
    Tcp {
        /// The container's port.
        port: u16,
    },
    /// Run `argv` inside the container; exit code 0 is a success.
    Exec {
        /// The command, as an argument vector.
        argv: Vec<String>,
    },
}

impl Check {
    /// The action of `probe`, with port names looked up in the role's `ports`.
    pub fn from_probe(probe: &Probe, ports: &[Port]) -> Result<Check, CheckError> {
        let mut checks = Vec::with_capacity(1);
        if let Some(http) = &probe.http {
            if !valid_path(&http.path) {
                return Err(CheckError::InvalidPath {
                    path: http.path.clone(),
                });
            }
            checks.push(Check::Http {
                port: resolve_port(&http.port, ports)?,
                path: http.path.clone(),
            });
        }
        if let Some(tcp) = &probe.tcp {
            checks.push(Check::Tcp {
                port: resolve_port(&tcp.port, ports)?,
            });
        }
        if let Some(exec) = &probe.exec {
            if exec.command.is_empty() {
                return Err(CheckError::EmptyCommand);
            }
            checks.push(Check::Exec {
                argv: exec.command.clone(),
            });
        }
        match checks.len() {
            0 => Err(CheckError::NoAction),
            1 => Ok(checks.remove(0)),
            _ => Err(CheckError::SeveralActions),
        }
    }

    /// Makes one attempt against `container` at `address`, bounded by `timeout`.
    pub async fn run(
        &self,
        container: &str,
        address: IpAddr,
        timeout: Duration,
        exec: &dyn Exec,
    ) -> CheckResult {
        match self {
            Check::Http { port, path } => {
                http_check(SocketAddr::new(address, *port), path, timeout).await
            }
            Check::Tcp { port } => tcp_check(SocketAddr::new(address, *port), timeout).await,
            Check::Exec { argv } => exec_check(exec, container, argv, timeout).await,
        }
    }
}

fn resolve_port(port: &PortRef, ports: &[Port]) -> Result<u16, CheckError> {
    let number = port.resolve(ports).ok_or_else(|| CheckError::UnknownPort {
        name: port.to_string(),
    })?;
    match u16::try_from(number) {
        Ok(n) if n != 0 => Ok(n),
        _ => Err(CheckError::PortOutOfRange { port: number }),
    }
}

fn valid_path(path: &str) -> bool {
    path.starts_with('/') && !path.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// An HTTP/1.1 GET of `path` at `addr`: a success when the status is 200-399.
pub async fn http_check(addr: SocketAddr, path: &str, timeout: Duration) -> CheckResult {
    bounded(timeout, async {
        let mut stream = match TcpStream::connect(addr).await {
            Ok(stream) => stream,
            Err(e) => return connect_failure(addr, &e),
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: texu-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        if let Err(e) = stream.write_all(request.as_bytes()).await {
            return CheckResult::failure(format!("could not send the request to {addr}: {e}"));
        }
        let line = match read_status_line(&mut stream).await {
            Ok(Some(line)) => line,
            Ok(None) => {
                return CheckResult::failure(format!(
                    "{addr} closed the connection without an HTTP response"
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return CheckResult::failure(format!("invalid HTTP response from {addr}: {e}"))
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return CheckResult::failure(format!("connection reset by {addr}"))
            }
            Err(e) => {
                return CheckResult::failure(format!("could not read the response of {addr}: {e}"))
            }
        };
        match parse_status(&line) {
            Some(status) if (200..400).contains(&status) => {
                CheckResult::success(format!("HTTP {status} from {addr}{path}"))
            }
            Some(status) => CheckResult::failure(format!("HTTP {status} from {addr}{path}")),
            None => CheckResult::failure(format!(
                "invalid HTTP status line from {addr}: {:?}",
                shorten(&line, 60)
            )),
        }
    })
    .await
}

/// A TCP connect to `addr`: a success when the connection is accepted.
pub async fn tcp_check(addr: SocketAddr, timeout: Duration) -> CheckResult {
    bounded(timeout, async {
        match TcpStream::connect(addr).await {
            Ok(_) => CheckResult::success(format!("connected to {addr}")),
            Err(e) => connect_failure(addr, &e),
        }
    })
    .await
}

/// Runs `argv` inside `container` through `exec`: a success when it exits with code 0.
pub async fn exec_check(
    exec: &dyn Exec,
    container: &str,
    argv: &[String],
    timeout: Duration,
) -> CheckResult {
    bounded(timeout, async {
        match exec.exec(container, argv).await {
            Ok(0) => CheckResult::success("exit code 0"),
            Ok(code) => CheckResult::failure(format!("exit code {code}")),
            Err(e) => CheckResult::failure(format!("could not run the probe's command: {e}")),
        }
    })
    .await
}

async fn bounded(timeout: Duration, attempt: impl Future<Output = CheckResult>) -> CheckResult {
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        // Duration's Debug form is the short one people read: `1s`, `1.5s`, `200ms`.
        Err(_) => CheckResult::failure(format!("timed out after {timeout:?}")),
    }
}

fn connect_failure(addr: SocketAddr, e: &io::Error) -> CheckResult {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => {
            CheckResult::failure(format!("connection refused by {addr}"))
        }
        _ => CheckResult::failure(format!("could not connect to {addr}: {e}")),
    }
}

/// Reads up to the end of the first line; `None` if the peer closed before sending anything.
async fn read_status_line(stream: &mut TcpStream) -> io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.contains(&b'\n') {
            break;
        }
        if buf.len() > STATUS_LINE_LIMIT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no status line in its first {STATUS_LINE_LIMIT} bytes"),
            ));
        }
    }
    let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = String::from_utf8_lossy(&buf[..end]);
    Ok(Some(line.trim_end_matches('\r').to_string()))
}

/// The status code of `HTTP/1.x NNN reason`.
fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/") || code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    code.parse().ok()
}

fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use texu_api::{ExecProbe, HttpProbe, Protocol, TcpProbe};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const TIMEOUT: Duration = Duration::from_secs(5);

    /// A server on 127.0.0.1 that answers every connection with `response` once it has read
    /// the request head, then closes.
    async fn http_server(response: &'static str) -> (SocketAddr, JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut chunk = [0u8; 512];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                let n = conn.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&chunk[..n]);
            }
            conn.write_all(response.as_bytes()).await.unwrap();
            let _ = conn.shutdown().await;
            String::from_utf8(head)
                .unwrap()
                .split("\r\n")
                .map(str::to_string)
                .collect()
        });
        (addr, task)
    }

    /// A port on 127.0.0.1 that nothing listens on.
    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        addr
    }

    #[tokio::test]
    async fn http_200_is_a_success_and_the_request_is_well_formed() {
        let (addr, server) = http_server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let result = http_check(addr, "/health?full=1", TIMEOUT).await;
        assert_eq!(
            result,
            CheckResult::success(format!("HTTP 200 from {addr}/health?full=1"))
        );
        let head = server.await.unwrap();
        assert_eq!(head[0], "GET /health?full=1 HTTP/1.1");
        assert!(head.contains(&format!("Host: {addr}")), "{head:?}");
        assert!(head.contains(&"Connection: close".to_string()), "{head:?}");
    }

    #[tokio::test]
    async fn http_redirect_is_a_success() {
        let (addr, _server) = http_server("HTTP/1.0 302 Found\r\nLocation: /login\r\n\r\n").await;
        let result = http_check(addr, "/", TIMEOUT).await;
        assert!(result.success, "{result:?}");
        assert_eq!(result.reason, format!("HTTP 302 from {addr}/"));
    }

    #[tokio::test]
    async fn http_503_is_a_failure_that_names_the_status() {
        let (addr, _server) =
            http_server("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await;
        let result = http_check(addr, "/health", TIMEOUT).await;
        assert_eq!(
            result,
            CheckResult::failure(format!("HTTP 503 from {addr}/health"))
        );
    }

    #[tokio::test]
    async fn http_garbage_is_a_failure() {
        let (addr, _server) = http_server("SSH-2.0-OpenSSH_9.6\r\n").await;
        let result = http_check(addr, "/", TIMEOUT).await;
        assert!(!result.success);
        assert_eq!(
            result.reason,
            format!("invalid HTTP status line from {addr}: \"SSH-2.0-OpenSSH_9.6\"")
        );
    }

    #[tokio::test]
    async fn http_close_without_answer_is_a_failure() {
        let (addr, _server) = http_server("").await;
        let result = http_check(addr, "/", TIMEOUT).await;
        assert_eq!(
            result,
            CheckResult::failure(format!(
                "{addr} closed the connection without an HTTP response"
            ))
        );
    }

    #[tokio::test]
    async fn http_server_that_never_answers_times_out() {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            // Accept and hold the connection without a word until the test ends.
            let (conn, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(conn);
        });
        let result = http_check(addr, "/", Duration::from_millis(200)).await;
        assert_eq!(result, CheckResult::failure("timed out after 200ms"));
        server.abort();
    }

    #[tokio::test]
    async fn http_closed_port_is_refused() {
        let addr = closed_port().await;
        let result = http_check(addr, "/", TIMEOUT).await;
        assert_eq!(
            result,
            CheckResult::failure(format!("connection refused by {addr}"))
        );
    }

    #[tokio::test]
    async fn tcp_listening_port_is_a_success() {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let result = tcp_check(addr, TIMEOUT).await;
        assert_eq!(result, CheckResult::success(format!("connected to {addr}")));
    }

    #[tokio::test]
    async fn tcp_closed_port_is_refused() {
        let addr = closed_port().await;
        let result = tcp_check(addr, TIMEOUT).await;
        assert_eq!(
            result,
            CheckResult::failure(format!("connection refused by {addr}"))
        );
    }

    struct Scripted(Result<i32, String>);

    #[async_trait]
    impl Exec for Scripted {
        async fn exec(&self, container: &str, argv: &[String]) -> Result<i32, String> {
            assert_eq!(container, "app-0");
            assert_eq!(argv, ["cat", "/tmp/healthy"]);
            self.0.clone()
        }
    }

    struct Hangs;

    #[async_trait]
    impl Exec for Hangs {
        async fn exec(&self, _: &str, _: &[String]) -> Result<i32, String> {
            std::future::pending().await
        }
    }

    fn argv() -> Vec<String> {
        vec!["cat".to_string(), "/tmp/healthy".to_string()]
    }

    #[tokio::test]
    async fn exec_exit_codes() {
        let ok = exec_check(&Scripted(Ok(0)), "app-0", &argv(), TIMEOUT).await;
        assert_eq!(ok, CheckResult::success("exit code 0"));
        let failed = exec_check(&Scripted(Ok(2)), "app-0", &argv(), TIMEOUT).await;
        assert_eq!(failed, CheckResult::failure("exit code 2"));
        let broken = exec_check(
            &Scripted(Err("container app-0 is not running".into())),
            "app-0",
            &argv(),
            TIMEOUT,
        )
        .await;
        assert_eq!(
            broken,
            CheckResult::failure(
                "could not run the probe's command: container app-0 is not running"
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn exec_that_hangs_times_out() {
        let result = exec_check(&Hangs, "app-0", &argv(), Duration::from_secs(1)).await;
        assert_eq!(result, CheckResult::failure("timed out after 1s"));
    }

    #[tokio::test]
    async fn run_dispatches_on_the_action() {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tcp = Check::Tcp { port };
        let result = tcp.run("app-0", LOOPBACK, TIMEOUT, &Hangs).await;
        assert!(result.success, "{result:?}");
        let exec = Check::Exec { argv: argv() };
        let result = exec.run("app-0", LOOPBACK, TIMEOUT, &Scripted(Ok(1))).await;
        assert_eq!(result, CheckResult::failure("exit code 1"));
    }

    fn ports() -> Vec<Port> {
        vec![Port {
            name: "web".to_string(),
            port: 8000,
            host_port: None,
            protocol: Protocol::Tcp,
        }]
    }

    #[test]
    fn from_probe_resolves_named_ports() {
        let probe = Probe {
            http: Some(HttpProbe {
                path: "/health".to_string(),
                port: PortRef::Name("web".to_string()),
            }),
            ..Probe::default()
        };
        assert_eq!(
            Check::from_probe(&probe, &ports()),
            Ok(Check::Http {
                port: 8000,
                path: "/health".to_string()
            })
        );
        let probe = Probe {
            tcp: Some(TcpProbe {
                port: PortRef::Number(5432),
            }),
            ..Probe::default()
        };
        assert_eq!(
            Check::from_probe(&probe, &ports()),
            Ok(Check::Tcp { port: 5432 })
        );
    }

    #[test]
    fn from_probe_rejects_what_cannot_run() {
        let none = Probe::default();
        assert_eq!(
            Check::from_probe(&none, &ports()),
            Err(CheckError::NoAction)
        );

        let two = Probe {
            tcp: Some(TcpProbe {
                port: PortRef::Number(80),
            }),
            exec: Some(ExecProbe { command: argv() }),
            ..Probe::default()
        };
        assert_eq!(
            Check::from_probe(&two, &ports()),
            Err(CheckError::SeveralActions)
        );

        let unknown = Probe {
            tcp: Some(TcpProbe {
                port: PortRef::Name("db".to_string()),
            }),
            ..Probe::default()
        };
        assert_eq!(
            Check::from_probe(&unknown, &ports()),
            Err(CheckError::UnknownPort {
                name: "db".to_string()
            })
        );

        for port in [0, -1, 65536] {
            let out_of_range = Probe {
                tcp: Some(TcpProbe {
                    port: PortRef::Number(port),
                }),
                ..Probe::default()
            };
            assert_eq!(
                Check::from_probe(&out_of_range, &ports()),
                Err(CheckError::PortOutOfRange { port })
            );
        }

        for path in ["health", "/a b", "/x\r\nHost: evil"] {
            let bad_path = Probe {
                http: Some(HttpProbe {
                    path: path.to_string(),
                    port: PortRef::Number(80),
                }),
                ..Probe::default()
            };
            assert_eq!(
                Check::from_probe(&bad_path, &ports()),
                Err(CheckError::InvalidPath {
                    path: path.to_string()
                })
            );
        }

        let empty = Probe {
            exec: Some(ExecProbe { command: vec![] }),
            ..Probe::default()
        };
        assert_eq!(
            Check::from_probe(&empty, &ports()),
            Err(CheckError::EmptyCommand)
        );
    }

    #[test]
    fn status_line_parsing() {
        assert_eq!(parse_status("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status("HTTP/1.0 404"), Some(404));
        assert_eq!(parse_status("HTTP/1.1 20 OK"), None);
        assert_eq!(parse_status("HTTP/1.1 +20 OK"), None);
        assert_eq!(parse_status("ICY 200 OK"), None);
        assert_eq!(parse_status(""), None);
    }
}
