//! Containers on a bridge of the test's own (198.18.128.0/17), and a container whose LXC
//! monitor is out of reach (its socket gone) that is still seen and stopped.

use super::*;

/// A bridge of the test's own in 198.18.128.0/17, deleted on drop.
struct Bridge {
    name: String,
}

impl Bridge {
    fn new(name: &str, address: &str) -> Self {
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = Command::new("ip").args(["link", "del", name]).output();
        ip(&["link", "add", name, "type", "bridge"]);
        let bridge = Self {
            name: name.to_owned(),
        };
        ip(&["addr", "add", address, "dev", name]);
        ip(&["link", "set", name, "up"]);
        bridge
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_on_a_bridge_serves_on_its_address() {
    let b = Board::new();
    let pid = std::process::id();
    let subnet = 128 + (pid % 100) as u8;
    let bridge = Bridge::new(
        &format!("txb{}", pid % 1_000_000),
        &format!("198.18.{subnet}.1/24"),
    );
    let addr = Ipv4Addr::new(198, 18, subnet, 2);

    let name = unique("net");
    let mut spec = busybox(&name, &["/bin/httpd", "-f", "-p", "8080", "-h", "/etc"]);
    spec.network = Some(NetConfig {
        bridge: bridge.name.clone(),
        address: addr,
        prefix_len: 24,
        gateway: Some(Ipv4Addr::new(198, 18, subnet, 1)),
    });
    b.rt.create(&spec).await.expect("create");
    b.rt.start(&name).await.expect("start");

    let target = SocketAddr::from((addr, 8080));
    let deadline = Instant::now() + Duration::from_secs(5);
    let body = loop {
        let attempt = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&target, Duration::from_millis(500))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET /hostname HTTP/1.0\r\n\r\n")?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)?;
            Ok(buf)
        })
        .await
        .unwrap();
        match attempt {
            Ok(body) => break body,
            Err(e) => {
                assert!(Instant::now() < deadline, "no answer from {target}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(
        body.starts_with("HTTP/1.") && body.contains(" 200 "),
        "{body}"
    );
    assert!(body.trim_end().ends_with(&name), "{body}");
    b.rt.destroy(&name).await.expect("destroy");
    drop(bridge);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_whose_monitor_is_out_of_reach_is_still_seen_and_stopped() {
    let b = Board::new();
    let name = unique("far");
    b.rt.create(&busybox(&name, &["/bin/sleep", "1000"]))
        .await
        .expect("create");

    // Start it from a thread in a network namespace of its own: LXC's command socket is an
    // abstract unix socket, which lives in the monitor's network namespace, so from here
    // liblxc cannot reach the monitor (as for an agent inside a board's namespace).
    let rt = b.rt.clone();
    let n = name.clone();
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare netns");
        let local = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        local.block_on(rt.start(&n))
    })
    .join()
    .expect("starter thread")
    .expect("start in another network namespace");

    let c = LxcContainer::new(&name, &b.lxcpath).unwrap();
    assert_eq!(
        c.state().unwrap(),
        LxcState::Stopped,
        "liblxc should not see it"
    );
    let st = b.rt.state(&name).await.unwrap().expect("defined");
    assert_eq!(st.phase, Phase::Running, "{st:?}");
    assert!(!st.monitor_reachable);
    let pid = st.init_pid.expect("init pid from the record");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert!(b.rt.usage(&name).await.expect("usage").memory_bytes > 0);
    b.rt.start(&name)
        .await
        .expect("start of a running container is a no-op");

    b.rt.stop(&name, Duration::from_secs(5))
        .await
        .expect("stop");
    let st = b.rt.state(&name).await.unwrap().expect("defined");
    assert_eq!(st.phase, Phase::Stopped, "{st:?}");
    assert_eq!(st.exit_reason, Some(ExitReason::StoppedByRuntime));
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    b.rt.destroy(&name).await.expect("destroy");
    assert!(!b.lxcpath.join(&name).exists());
}
