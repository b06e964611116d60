//! Attacks on a board's edges, tried on a real cluster (boards as network namespaces, real
//! agents, real LXC and real nftables, through the harness in `texu::cluster`): traffic routed
//! through a board must not be caught by its `hostPort` rules, a role cannot publish the
//! board's own service ports, and an imported image cannot bring device nodes, setuid files or
//! a decompression bomb onto a board.
//!
//! Needs root, iproute2, nftables and LXC (scripts/setup.sh); fails, never skips, without them.
//! Traffic stays in the cluster's own 198.18.K.0/24 overlay.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use texu::cluster::{Cluster, ClusterConfig};
use texu_api::{Container, ContainerPhase, ContainerStatus};

const HOST_PORT: u16 = 8088;

fn start(boards: usize) -> Result<Cluster> {
    Cluster::start(ClusterConfig::new(
        boards,
        PathBuf::from(env!("CARGO_BIN_EXE_texu")),
    ))
    .with_context(|| format!("cannot start a {boards}-board cluster"))
}

/// A busybox web server answering `GET /hostname` with its container's name, published on
/// `host_port` of its board.
fn published(name: &str, host_port: u16) -> String {
    format!(
        "apiVersion: texu.io/v1\nkind: Role\nmetadata:\n  name: {name}\nspec:\n  \
         image: template:busybox\n  command: [/bin/httpd, -f, -p, \"80\", -h, /etc]\n  \
         ports:\n  - {{name: http, port: 80, hostPort: {host_port}}}\n  health:\n    \
         readiness:\n      http: {{path: /hostname, port: http}}\n      periodSeconds: 0.2\n"
    )
}

fn container(c: &Cluster, name: &str) -> Result<Container> {
    c.api()
        .container(name)?
        .with_context(|| format!("no container {name}"))
}

fn board_of(c: &Cluster, container: &Container) -> Result<usize> {
    let node = container.spec.node.clone().context("placed")?;
    c.plan()
        .board_numbers()
        .find(|b| c.plan().node_name(*b) == node)
        .with_context(|| format!("no board is {node}"))
}

/// An HTTP server on `address:port` in the host namespace that answers every request with
/// `answer`, until the returned flag is set (or a minute has passed).
fn serve(address: Ipv4Addr, port: u16, answer: &'static str) -> Result<Arc<AtomicBool>> {
    let listener = TcpListener::bind((address, port))
        .with_context(|| format!("cannot listen on {address}:{port}"))?;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(60);
        while !stopped.load(Ordering::Relaxed) && Instant::now() < until {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = write!(
                &stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    Ok(stop)
}

fn exec_ok(c: &Cluster, board: usize, argv: &[&str]) -> Result<()> {
    let out = c.exec_in_board(board, argv)?;
    ensure!(
        out.status.success(),
        "{} in board {board}: {}",
        argv.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A client on one board sends to a third address (the host's overlay address) on the
/// published port, routed through the board that publishes it: the packets must go on to the
/// third address, not to the container. A request to the publishing board itself still
/// reaches the container.
#[test]
fn transit_traffic_to_a_published_port_is_not_redirected() -> Result<()> {
    let c = start(2)?;
    c.apply_yaml(&published("front", HOST_PORT))?;
    c.wait_ready(Duration::from_secs(60))?;
    let front = board_of(&c, &container(&c, "front-0")?)?;
    let client = if front == 1 { 2 } else { 1 };
    let (via, third) = (c.plan().board_address(front), c.plan().controller_address());

    let own = format!("http://{via}:{HOST_PORT}/hostname");
    let body = c.wait_until(Duration::from_secs(10), "the hostPort to answer", || {
        c.http_get_from_board(client, &own).ok()
    })?;
    assert_eq!(body.trim(), "front-0", "{own} from board {client}");

    let stop = serve(third, HOST_PORT, "the third address\n")?;
    // The client board routes the third address through the publishing board, which must
    // forward it (and not redirect the client around itself, which would hide the test).
    exec_ok(
        &c,
        front,
        &["sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0"],
    )?;
    exec_ok(
        &c,
        front,
        &["sysctl", "-qw", "net.ipv4.conf.ov0.send_redirects=0"],
    )?;
    let route = format!("{third}/32");
    exec_ok(
        &c,
        client,
        &["ip", "route", "replace", &route, "via", &via.to_string()],
    )?;
    let transit = format!("http://{third}:{HOST_PORT}/hostname");
    let answers: Vec<String> = (0..5)
        .map(|_| {
            c.http_get_from_board(client, &transit)
                .map_err(anyhow::Error::from)
        })
        .collect::<Result<_>>()?;
    stop.store(true, Ordering::Relaxed);
    exec_ok(&c, client, &["ip", "route", "del", &route])?;
    for answer in &answers {
        assert_eq!(
            answer, "the third address\n",
            "{transit} from board {client} through board {front} was redirected"
        );
    }
    // The container still answers on the board's own address.
    assert_eq!(c.http_get_from_board(client, &own)?.trim(), "front-0");
    Ok(())
}

/// Roles asking for ssh's port or the controller's port as a hostPort are refused by the
/// agent with a reason and a message naming the port and the flag.
#[test]
fn a_role_asking_a_reserved_port_is_refused() -> Result<()> {
    let c = start(1)?;
    let controller_port: u16 = c
        .server()
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .context("the controller's port")?;
    c.apply_yaml(&format!(
        "{}---\n{}",
        published("sshd", 22),
        published("mitm", controller_port)
    ))?;
    for (name, port) in [("sshd-0", 22), ("mitm-0", controller_port)] {
        let status = c.wait_until(
            Duration::from_secs(30),
            &format!("{name} to be refused"),
            || {
                container(&c, name)
                    .ok()?
                    .status
                    .filter(|s| s.phase == ContainerPhase::Failed)
            },
        )?;
        assert_eq!(
            status.reason.as_deref(),
            Some("ReservedHostPort"),
            "{status:?}"
        );
        let message = status.message.unwrap_or_default();
        assert!(
            message.starts_with(&format!("hostPort {port}/tcp is reserved"))
                && message.contains("--reserved-ports"),
            "{message}"
        );
    }
    // Nothing is published: the board's nftables table holds no DNAT for either port.
    let table = format!("texu_{}", c.plan().node_name(1));
    let out = c.exec_in_board(1, &["nft", "list", "table", "ip", &table])?;
    let rules = String::from_utf8_lossy(&out.stdout);
    assert!(!rules.contains("dport 22 "), "{rules}");
    assert!(
        !rules.contains(&format!("dport {controller_port} ")),
        "{rules}"
    );
    // `texu get containers` shows why.
    let table = c.texu_ok(&["describe", "container", "sshd-0"])?;
    assert!(table.contains("ReservedHostPort"), "{table}");
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Packs `root` with GNU tar and zstd into `to`, as a user making an image would.
fn tar_zst(root: &Path, to: &Path) -> Result<()> {
    run(Command::new("tar")
        .arg("--zstd")
        .arg("-cf")
        .arg(to)
        .arg("-C")
        .arg(root)
        .arg("."))
}

/// A busybox root filesystem with a device node, a fifo and a setuid copy of busybox.
fn hostile_image(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("rootfs");
    for d in ["bin", "dev", "etc", "proc", "sys", "tmp"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("busybox-static is installed (scripts/setup.sh)")?;
    for applet in ["sh", "httpd", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/su"))?;
    std::fs::set_permissions(root.join("bin/su"), std::fs::Permissions::from_mode(0o4755))?;
    run(Command::new("mknod")
        .arg(root.join("dev/mem"))
        .args(["c", "1", "1"]))?;
    run(Command::new("mknod")
        .arg(root.join("dev/sda"))
        .args(["b", "8", "0"]))?;
    run(Command::new("mkfifo").arg(root.join("dev/initctl")))?;
    std::fs::write(root.join("etc/hostname"), "hostile\n")?;
    let tarball = dir.join("hostile.tar.zst");
    tar_zst(&root, &tarball)?;
    Ok(tarball)
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        "arm" => "armhf",
        _ => "amd64",
    }
}

fn image_role(name: &str, image: &str) -> String {
    format!(
        "apiVersion: texu.io/v1\nkind: Role\nmetadata:\n  name: {name}\nspec:\n  image: {image}\n  \
         command: [/bin/httpd, -f, -p, \"8080\", -h, /etc]\n  ports:\n  - {{name: http, port: 8080}}\n  \
         health:\n    readiness:\n      http: {{path: /hostname, port: http}}\n      periodSeconds: 0.2\n"
    )
}

/// The status of container `name` once `done` holds for it.
fn wait_status(
    c: &common::ControllerProcess,
    name: &str,
    what: &str,
    done: impl Fn(&ContainerStatus) -> bool,
) -> ContainerStatus {
    common::wait_for(Duration::from_secs(60), what, || {
        // Not found until the scheduler has made it.
        let out = c.texu(&["get", "container", name, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        serde_json::from_value::<ContainerStatus>(v["status"].clone())
            .ok()
            .filter(&done)
    })
}

/// Imported through the CLI and run by a real agent (real LXC, on a bridge of its own): the
/// container runs, its root filesystem on the board holds no device node or fifo, and the
/// setuid file lost its bit; a 100 MB zstd bomb fails at the agent's `--image-max-bytes` with
/// `ImageTooLarge` and leaves no directory.
#[test]
fn hostile_images_unpack_without_devices_or_setuid_and_a_bomb_stops_at_the_cap() -> Result<()> {
    common::require_root_and_lxc();
    let c = common::ControllerProcess::start();
    let agent = common::AgentProcess::start_with(&c, "board-g", 247, &["--image-max-bytes", "50M"]);
    let tmp = tempfile::tempdir()?;
    let hostile = hostile_image(tmp.path())?;
    let bomb_root = tmp.path().join("bomb");
    std::fs::create_dir_all(&bomb_root)?;
    std::fs::File::create(bomb_root.join("zeros"))?.set_len(100 << 20)?;
    let bomb = tmp.path().join("bomb.tar.zst");
    tar_zst(&bomb_root, &bomb)?;
    ensure!(
        std::fs::metadata(&bomb)?.len() < 1 << 20,
        "the bomb is small"
    );
    for (image, file) in [("hostile:1", &hostile), ("bomb:1", &bomb)] {
        let path = file.to_str().context("utf-8 path")?;
        c.texu_ok(&["image", "import", image, "--arch", arch(), path]);
    }
    let manifest = format!(
        "{}---\n{}",
        image_role("hostile", "hostile:1"),
        image_role("bomb", "bomb:1")
    );
    let out = c.texu_stdin(&["apply", "-f", "-"], manifest.as_bytes());
    ensure!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    wait_status(&c, "hostile-0", "hostile-0 to be Ready", |s| {
        s.phase == ContainerPhase::Ready
    });
    let rootfs = agent.data_dir.join("rootfs/hostile-0");
    for gone in ["dev/mem", "dev/sda", "dev/initctl"] {
        assert!(
            std::fs::symlink_metadata(rootfs.join(gone)).is_err(),
            "{gone} was unpacked onto the board"
        );
    }
    let specials: Vec<String> = std::fs::read_dir(rootfs.join("dev"))?
        .flatten()
        .filter(|e| {
            e.file_type().is_ok_and(|t| {
                t.is_char_device() || t.is_block_device() || t.is_fifo() || t.is_socket()
            })
        })
        .map(|e| e.path().display().to_string())
        .collect();
    assert!(specials.is_empty(), "{specials:?}");
    let mode = std::fs::metadata(rootfs.join("bin/su"))?
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o755, "bin/su keeps its setuid bit");

    let status = wait_status(&c, "bomb-0", "bomb-0 to fail", |s| {
        s.phase == ContainerPhase::Failed
    });
    assert_eq!(
        status.reason.as_deref(),
        Some("ImageTooLarge"),
        "{status:?}"
    );
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("more than 52428800 bytes") && message.contains("--image-max-bytes"),
        "{message}"
    );
    let partial = agent.data_dir.join("rootfs/bomb-0");
    assert!(!partial.exists(), "{} is left behind", partial.display());
    Ok(())
}
