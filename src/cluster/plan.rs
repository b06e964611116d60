//! The names and addresses of one local cluster, derived from its name and network number.
//!
//! Everything a cluster creates on the machine is named after the cluster, so clusters side by
//! side never share a name, and `down` can find what a crashed run left behind:
//!
//! | what                         | name or address (cluster `NAME`, network `K`, board `I`) |
//! |------------------------------|-----------------------------------------------------------|
//! | state, logs, LXC paths       | `/tmp/texu-NAME/` (`controller/`, `boardI/lxc`, `logs/`)  |
//! | board network namespace      | `texu-NAME-bI`                                            |
//! | overlay bridge (host)        | `txNAMEov`, address `198.18.K.1/24` (the controller)      |
//! | board's overlay link         | `txNAMEvI` on the host, `ov0` in the board, `198.18.K.(I+1)` |
//! | board's container bridge     | `texu0` in the board (made by the agent)                  |
//! | cluster container range      | `198.19.(16K).0/20`                                       |
//! | board's container subnet     | `198.19.(16K+I).0/24`                                     |
//!
//! `K` is 0 to 15 and `I` is 1 to 15: sixteen clusters of up to fifteen boards fit in
//! 198.18.0.0/15 without overlapping. `texu demo` is cluster `demo` on network 0 (overlay
//! 198.18.0.0/24, boards 198.19.1.0/24, 198.19.2.0/24, ...); test clusters take networks 1 to 15.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::{ClusterError, Result};

/// The directory every cluster's state directory lives in (as `texu-NAME`).
pub const STATE_ROOT: &str = "/tmp";
/// The board's end of its overlay link, inside the board's namespace.
pub const BOARD_LINK: &str = "ov0";
/// The container bridge the agent makes inside the board's namespace.
pub const BOARD_BRIDGE: &str = "texu0";
/// The largest board number (its subnet is the last /24 of the cluster's /20).
pub const MAX_BOARDS: usize = 15;
/// The largest network number.
pub const MAX_NET: u8 = 15;
/// The longest cluster name: `tx` + name + `v15` must fit Linux's 15-byte interface names.
pub const MAX_NAME_LEN: usize = 8;

/// Names and addresses of one cluster. Boards are numbered from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    name: String,
    net: u8,
    boards: usize,
}

impl Plan {
    /// A plan for `boards` boards of cluster `name` on network `net`.
    pub fn new(name: &str, net: u8, boards: usize) -> Result<Plan> {
        validate_name(name)?;
        if net > MAX_NET {
            return Err(ClusterError::Config(format!(
                "network number {net} is out of range 0..={MAX_NET}"
            )));
        }
        if !(1..=MAX_BOARDS).contains(&boards) {
            return Err(ClusterError::Config(format!(
                "{boards} boards: a local cluster has 1 to {MAX_BOARDS}"
            )));
        }
        Ok(Plan {
            name: name.to_string(),
            net,
            boards,
        })
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster's network number (the third byte of its overlay).
    pub fn net(&self) -> u8 {
        self.net
    }

    /// How many boards.
    pub fn boards(&self) -> usize {
        self.boards
    }

    /// Board numbers, 1 to N.
    pub fn board_numbers(&self) -> impl Iterator<Item = usize> {
        1..=self.boards
    }

    /// The cluster's state directory.
    pub fn dir(&self) -> PathBuf {
        state_dir(&self.name)
    }

    /// The controller's data dir.
    pub fn controller_dir(&self) -> PathBuf {
        self.dir().join("controller")
    }

    /// A board's agent data dir.
    pub fn board_dir(&self, board: usize) -> PathBuf {
        self.dir().join(self.node_name(board))
    }

    /// A board's LXC path (the agent keeps its containers in `DATA_DIR/lxc`).
    pub fn lxc_path(&self, board: usize) -> PathBuf {
        self.board_dir(board).join("lxc")
    }

    /// Where a process's output goes (`controller`, `board1`, ...).
    pub fn log_path(&self, process: &str) -> PathBuf {
        self.dir().join("logs").join(format!("{process}.log"))
    }

    /// The client config the controller writes for this cluster.
    pub fn client_config(&self) -> PathBuf {
        self.dir().join("client.yaml")
    }

    /// A board's node name.
    pub fn node_name(&self, board: usize) -> String {
        format!("board{board}")
    }

    /// A board's network namespace.
    pub fn netns(&self, board: usize) -> String {
        format!("{}{board}", netns_prefix(&self.name))
    }

    /// The overlay bridge in the host namespace.
    pub fn overlay_bridge(&self) -> String {
        overlay_bridge(&self.name)
    }

    /// The host's end of a board's overlay link.
    pub fn host_link(&self, board: usize) -> String {
        host_link(&self.name, board)
    }

    /// The overlay network, e.g. `198.18.0.0/24`.
    pub fn overlay_network(&self) -> String {
        format!("198.18.{}.0/24", self.net)
    }

    /// The controller's (and the host's) overlay address.
    pub fn controller_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.net, 1)
    }

    /// A board's overlay address.
    pub fn board_address(&self, board: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.net, board as u8 + 1)
    }

    /// The range all the cluster's container subnets come from.
    pub fn container_range(&self) -> String {
        format!("198.19.{}.0/20", self.net * 16)
    }

    /// A board's container subnet.
    pub fn board_subnet(&self, board: usize) -> String {
        format!("198.19.{}.0/24", self.net as usize * 16 + board)
    }
}

/// The state directory of cluster `name`.
pub fn state_dir(name: &str) -> PathBuf {
    PathBuf::from(STATE_ROOT).join(format!("texu-{name}"))
}

/// What every board namespace of cluster `name` starts with.
pub fn netns_prefix(name: &str) -> String {
    format!("texu-{name}-b")
}

/// The overlay bridge of cluster `name`.
pub fn overlay_bridge(name: &str) -> String {
    format!("tx{name}ov")
}

/// The host end of board `board`'s overlay link in cluster `name`.
pub fn host_link(name: &str, board: usize) -> String {
    format!("tx{name}v{board}")
}

/// Whether `link` is one of cluster `name`'s host interfaces. Exact: cluster `t1` does not
/// claim `txt12v1` (cluster `t12`'s).
pub fn is_cluster_link(name: &str, link: &str) -> bool {
    link == overlay_bridge(name) || (1..=MAX_BOARDS).any(|board| link == host_link(name, board))
}

/// Checks a cluster name: 1 to 8 lowercase letters and digits, starting with a letter.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(ClusterError::Config(format!(
            "cluster name {name:?}: use 1 to {MAX_NAME_LEN} lowercase letters and digits, \
             starting with a letter (it goes into interface names)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_plan_uses_the_design_ranges() {
        let p = Plan::new("demo", 0, 3).unwrap();
        assert_eq!(p.overlay_network(), "198.18.0.0/24");
        assert_eq!(p.controller_address(), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(p.board_address(1), Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(p.board_subnet(1), "198.19.1.0/24");
        assert_eq!(p.board_subnet(3), "198.19.3.0/24");
        assert_eq!(p.container_range(), "198.19.0.0/20");
        assert_eq!(p.netns(2), "texu-demo-b2");
        assert_eq!(p.overlay_bridge(), "txdemoov");
        assert_eq!(p.host_link(3), "txdemov3");
        assert_eq!(p.lxc_path(1), PathBuf::from("/tmp/texu-demo/board1/lxc"));
    }

    #[test]
    fn clusters_on_different_networks_never_overlap() {
        let a = Plan::new("t1", 1, MAX_BOARDS).unwrap();
        let b = Plan::new("t2", 2, MAX_BOARDS).unwrap();
        let last = Plan::new("t15", MAX_NET, MAX_BOARDS).unwrap();
        assert_eq!(a.board_subnet(MAX_BOARDS), "198.19.31.0/24");
        assert_eq!(b.board_subnet(1), "198.19.33.0/24");
        assert_eq!(last.board_subnet(MAX_BOARDS), "198.19.255.0/24");
        assert_eq!(
            last.board_address(MAX_BOARDS),
            Ipv4Addr::new(198, 18, 15, 16)
        );
    }

    #[test]
    fn interface_names_fit_and_are_claimed_exactly() {
        let p = Plan::new("abcdefgh", 3, MAX_BOARDS).unwrap();
        assert!(p.host_link(MAX_BOARDS).len() <= 15);
        assert!(p.overlay_bridge().len() <= 15);
        assert!(is_cluster_link("t1", "txt1v1"));
        assert!(is_cluster_link("t1", "txt1ov"));
        assert!(!is_cluster_link("t1", "txt12v1"));
        assert!(!is_cluster_link("t1", "txt1v16"));
    }

    #[test]
    fn bad_names_and_sizes_are_refused() {
        for name in ["", "Demo", "1abc", "abcdefghi", "a-b"] {
            assert!(Plan::new(name, 0, 1).is_err(), "{name:?}");
        }
        assert!(Plan::new("demo", 16, 1).is_err());
        assert!(Plan::new("demo", 0, 0).is_err());
        assert!(Plan::new("demo", 0, 16).is_err());
    }
}
