//! The network of a local cluster: the overlay bridge in the host, one namespace per board
//! joined to it by a veth pair, and the host's routes to the boards' container subnets.
//! Everything goes through `ip` (iproute2), which every board has.

use std::fs::File;
use std::path::Path;
use std::process::Command;

use nix::sched::{setns, CloneFlags};

use super::plan::{Plan, BOARD_LINK};
use super::procs;
use super::{ClusterError, Result};

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Runs `ip ARGS`; its stdout.
pub fn ip(args: &[&str]) -> Result<String> {
    procs::run(
        Command::new("ip").args(args),
        &format!("ip {}", args.join(" ")),
    )
}

/// Whether the host namespace has interface `name`.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The host namespace's interfaces.
pub fn links() -> Vec<String> {
    names_in("/sys/class/net")
}

/// The named network namespaces.
pub fn namespaces() -> Vec<String> {
    names_in(NETNS_DIR)
}

/// Whether namespace `ns` exists.
pub fn netns_exists(ns: &str) -> bool {
    Path::new(NETNS_DIR).join(ns).exists()
}

fn names_in(dir: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The host interface holding an IPv4 address inside `network` (`198.18.3.0/24`), if any.
pub fn holder_of(network: &str) -> Result<Option<String>> {
    let prefix = network.trim_end_matches("0/24");
    let shown = ip(&["-4", "-o", "addr", "show"])?;
    Ok(shown.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let (_, dev, _, addr) = (words.next()?, words.next()?, words.next()?, words.next()?);
        addr.starts_with(prefix).then(|| dev.to_string())
    }))
}

/// Creates the overlay bridge with the controller's address, up.
pub fn create_overlay(plan: &Plan) -> Result<()> {
    let bridge = plan.overlay_bridge();
    ip(&["link", "add", &bridge, "type", "bridge"])?;
    ip(&[
        "addr",
        "add",
        &format!("{}/24", plan.controller_address()),
        "dev",
        &bridge,
    ])?;
    ip(&["link", "set", &bridge, "up"])?;
    Ok(())
}

/// Creates board `board`: its namespace with loopback up and forwarding on, and its overlay
/// link (`txNAMEvI` on the overlay bridge, `ov0` inside) with a default route to the host.
pub fn create_board(plan: &Plan, board: usize) -> Result<()> {
    let ns = plan.netns(board);
    let host_end = plan.host_link(board);
    ip(&["netns", "add", &ns])?;
    ip(&[
        "link", "add", &host_end, "type", "veth", "peer", "name", BOARD_LINK, "netns", &ns,
    ])?;
    ip(&[
        "link",
        "set",
        &host_end,
        "master",
        &plan.overlay_bridge(),
        "up",
    ])?;
    let address = format!("{}/24", plan.board_address(board));
    ip(&["-n", &ns, "addr", "add", &address, "dev", BOARD_LINK])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    ip(&["-n", &ns, "link", "set", BOARD_LINK, "up"])?;
    let gateway = plan.controller_address().to_string();
    ip(&["-n", &ns, "route", "add", "default", "via", &gateway])?;
    // The board routes between its overlay link and its container bridge.
    let what = format!("enable forwarding in {ns}");
    in_netns(&ns, move || {
        let path = "/proc/sys/net/ipv4/ip_forward";
        std::fs::write(path, "1").map_err(|source| ClusterError::Io {
            what,
            path: path.into(),
            source,
        })
    })?
}

/// Routes board `board`'s container subnet from the host through the board's overlay address.
pub fn add_host_route(plan: &Plan, board: usize) -> Result<()> {
    let via = plan.board_address(board).to_string();
    let subnet = plan.board_subnet(board);
    ip(&[
        "route",
        "replace",
        &subnet,
        "via",
        &via,
        "dev",
        &plan.overlay_bridge(),
    ])
    .map(|_| ())
}

/// Removes the host's route to board `board`'s subnet, if it is there.
pub fn remove_host_route(plan: &Plan, board: usize) {
    let via = plan.board_address(board).to_string();
    let _ = ip(&["route", "del", &plan.board_subnet(board), "via", &via]);
}

/// Sets a host interface up or down.
pub fn set_link(link: &str, up: bool) -> Result<()> {
    ip(&["link", "set", link, if up { "up" } else { "down" }]).map(|_| ())
}

/// Deletes a host interface if it exists.
pub fn delete_link(link: &str) -> Result<()> {
    match ip(&["link", "del", link]) {
        // A veth goes by itself when its peer's namespace is deleted, which the kernel
        // finishes in the background: gone is as good as deleted.
        Err(_) if !link_exists(link) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// Kills every process left in namespace `ns`, then deletes it (with the board's end of its
/// overlay link, its container bridge and its routes).
pub fn delete_netns(ns: &str) -> Result<usize> {
    if !netns_exists(ns) {
        return Ok(0);
    }
    let pids: Vec<u32> = ip(&["netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    for pid in &pids {
        procs::signal(*pid, nix::sys::signal::Signal::SIGKILL);
    }
    procs::wait_gone(&pids, std::time::Duration::from_secs(5));
    ip(&["netns", "del", ns])?;
    Ok(pids.len())
}

/// Runs `f` on a new thread that has entered namespace `ns` (the network namespace is per
/// thread, so nothing else in this process moves).
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = Path::new(NETNS_DIR).join(ns);
    let file = File::open(&path).map_err(|source| ClusterError::Io {
        what: format!("open network namespace {ns}"),
        path: path.clone(),
        source,
    })?;
    let name = ns.to_string();
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET)
            .map_err(|source| ClusterError::Netns { ns: name, source })?;
        Ok(f())
    })
    .join()
    .unwrap_or_else(|_| {
        Err(ClusterError::Config(format!(
            "a thread working in {ns} panicked"
        )))
    })
}
