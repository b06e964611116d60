//! Failovers as monitoring sees them: from the moment a board is seen NotReady until every
//! stateless container it held is Ready on another board.
//!
//! The scheduling loop shows [`Failovers::observe`] each snapshot it plans from, so failovers
//! are timed where they are decided (on the leader). Only a board seen Ready and then NotReady
//! starts one: after a controller start, boards that are already NotReady are history, not a
//! failover. A failover ends `completed` (its duration is observed), or `returned` when the
//! board comes back first; a board that held nothing to replace starts none. Stateful members
//! never move by themselves (see `scheduler::lost`), so they are not waited for.
//!
//! Pure: times are passed in, so it is tested with plain values; [`observe`] is the process's
//! one tracker on the monotonic clock, feeding [`crate::metrics`].

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use texu_api::{Container, ContainerPhase, Node, NodePhase, Role};

/// How a failover ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Every replacement is Ready, `seconds` after the board was seen NotReady.
    Completed { seconds: f64 },
    /// The board was Ready again before every replacement was.
    Returned,
}

impl Outcome {
    /// The word the metrics use for it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Completed { .. } => "completed",
            Outcome::Returned => "returned",
        }
    }
}

/// The failovers under way, by board.
#[derive(Debug, Default)]
pub struct Failovers {
    /// When each board with a failover under way was seen NotReady.
    open: HashMap<String, f64>,
    /// Boards last seen Ready.
    ready: HashSet<String>,
}

impl Failovers {
    /// Takes one snapshot seen at `now` (seconds on a monotonic clock): opens a failover for
    /// each board that turned NotReady, and returns the failovers that ended, by board.
    pub fn observe(
        &mut self,
        roles: &[Role],
        nodes: &[Node],
        containers: &[Container],
        now: f64,
    ) -> Vec<(String, Outcome)> {
        let stateless: HashSet<&str> = roles
            .iter()
            .filter(|r| !r.spec.stateful)
            .map(|r| r.metadata.name.as_str())
            .collect();
        let mut ended = Vec::new();
        let mut ready = HashSet::new();
        let mut present = HashSet::new();
        for node in nodes {
            let name = node.metadata.name.as_str();
            present.insert(name);
            let phase = node.status.as_ref().map(|s| s.phase).unwrap_or_default();
            if phase == NodePhase::Ready {
                ready.insert(name.to_string());
                if self.open.remove(name).is_some() {
                    ended.push((name.to_string(), Outcome::Returned));
                }
            } else if self.ready.contains(name) {
                self.open.entry(name.to_string()).or_insert(now);
            }
        }
        self.ready = ready;
        // A board that was deleted has nothing left to fail over.
        self.open.retain(|name, _| present.contains(name.as_str()));
        let mut finished = Vec::new();
        for (board, started) in &self.open {
            let held = |c: &&Container| {
                c.spec.node.as_deref() == Some(board) && stateless.contains(c.spec.role.as_str())
            };
            let moved: Vec<&Container> = containers
                .iter()
                .filter(|c| c.spec.moved_from.as_deref() == Some(board))
                .collect();
            let waiting = containers.iter().filter(held).count()
                + moved.iter().filter(|c| !is_ready(c)).count();
            if waiting > 0 {
                continue;
            }
            let seconds = (now - started).max(0.0);
            finished.push((board.clone(), (!moved.is_empty()).then_some(seconds)));
        }
        for (board, seconds) in finished {
            self.open.remove(&board);
            if let Some(seconds) = seconds {
                ended.push((board, Outcome::Completed { seconds }));
            }
        }
        ended
    }

    /// How long each failover under way has lasted at `now`.
    pub fn open_for(&self, now: f64) -> Vec<f64> {
        self.open.values().map(|s| (now - s).max(0.0)).collect()
    }
}

fn is_ready(c: &Container) -> bool {
    c.status.as_ref().map(|s| s.phase) == Some(ContainerPhase::Ready)
}

/// The process's tracker and the clock it is read on.
fn tracker() -> &'static (Instant, Mutex<Failovers>) {
    static TRACKER: OnceLock<(Instant, Mutex<Failovers>)> = OnceLock::new();
    TRACKER.get_or_init(|| (Instant::now(), Mutex::new(Failovers::default())))
}

/// Shows the process's tracker a snapshot the scheduler planned from, and records every
/// failover that ended in the metrics.
pub fn observe(roles: &[Role], nodes: &[Node], containers: &[Container]) {
    let (epoch, failovers) = tracker();
    let now = epoch.elapsed().as_secs_f64();
    let ended = match failovers.lock() {
        Ok(mut f) => f.observe(roles, nodes, containers, now),
        Err(poisoned) => poisoned.into_inner().observe(roles, nodes, containers, now),
    };
    for (board, outcome) in ended {
        tracing::info!(node = %board, outcome = outcome.as_str(), ?outcome, "failover ended");
        crate::metrics::failover_ended(outcome);
    }
}

/// How long each failover under way in this process has lasted so far, in seconds.
pub fn open_now() -> Vec<f64> {
    let (epoch, failovers) = tracker();
    let now = epoch.elapsed().as_secs_f64();
    match failovers.lock() {
        Ok(f) => f.open_for(now),
        Err(poisoned) => poisoned.into_inner().open_for(now),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use texu_api::{Arch, ContainerSpec, ContainerStatus, NodeSpec, NodeStatus, RoleSpec};

    /// A board in `phase`, for tests.
    pub(crate) fn node(name: &str, phase: NodePhase) -> Node {
        let mut n = Node::new(
            name,
            NodeSpec {
                address: "198.18.0.2".into(),
                arch: Arch::Amd64,
                cpus: 2,
                memory_bytes: 1 << 30,
                subnet: None,
                unschedulable: false,
                draining: false,
            },
        );
        n.status = Some(NodeStatus {
            phase,
            ..Default::default()
        });
        n
    }

    fn role(name: &str, stateful: bool) -> Role {
        let mut spec = RoleSpec::with_image("host");
        spec.stateful = stateful;
        Role::new(name, spec)
    }

    fn container(name: &str, role: &str, node: &str, moved_from: Option<&str>) -> Container {
        let mut c = Container::new(
            name,
            ContainerSpec {
                role: role.into(),
                node: Some(node.into()),
                moved_from: moved_from.map(str::to_string),
                ..Default::default()
            },
        );
        c.status = Some(ContainerStatus {
            phase: ContainerPhase::Ready,
            ..Default::default()
        });
        c
    }

    fn phase(mut c: Container, phase: ContainerPhase) -> Container {
        c.status.get_or_insert_with(Default::default).phase = phase;
        c
    }

    #[test]
    fn a_failover_lasts_from_not_ready_until_every_replacement_is_ready() {
        let roles = [role("app", false), role("db", true)];
        let both = [node("a", NodePhase::Ready), node("b", NodePhase::Ready)];
        let a_down = [node("a", NodePhase::NotReady), node("b", NodePhase::Ready)];
        let before = [
            container("app-0", "app", "a", None),
            container("app-1", "app", "a", None),
            container("db-0", "db", "a", None),
        ];
        let mut f = Failovers::default();
        assert!(f.observe(&roles, &both, &before, 10.0).is_empty());
        // Seen NotReady at 11; nothing moved yet.
        assert!(f.observe(&roles, &a_down, &before, 11.0).is_empty());
        assert_eq!(f.open_for(12.0), [1.0]);
        // One replacement Ready on b, one still starting; the stateful member stays on a.
        let moving = [
            container("app-0", "app", "b", Some("a")),
            phase(
                container("app-1", "app", "b", Some("a")),
                ContainerPhase::Creating,
            ),
            phase(container("db-0", "db", "a", None), ContainerPhase::Lost),
        ];
        assert!(f.observe(&roles, &a_down, &moving, 12.0).is_empty());
        let moved = [
            container("app-0", "app", "b", Some("a")),
            container("app-1", "app", "b", Some("a")),
            moving[2].clone(),
        ];
        assert_eq!(
            f.observe(&roles, &a_down, &moved, 13.5),
            [("a".to_string(), Outcome::Completed { seconds: 2.5 })]
        );
        assert!(f.open_for(14.0).is_empty());
        // Counted once.
        assert!(f.observe(&roles, &a_down, &moved, 15.0).is_empty());
    }

    #[test]
    fn a_board_back_first_ends_it_returned_and_old_or_empty_outages_are_not_failovers() {
        let roles = [role("app", false)];
        let mut f = Failovers::default();
        // NotReady at the first look (the controller restarted): not a failover.
        let down = [node("a", NodePhase::NotReady), node("b", NodePhase::Ready)];
        let held = [phase(
            container("app-0", "app", "a", None),
            ContainerPhase::Lost,
        )];
        assert!(f.observe(&roles, &down, &held, 1.0).is_empty());
        assert!(f.open_for(2.0).is_empty());
        // Back, then down again with nowhere to go, then back: returned.
        let up = [node("a", NodePhase::Ready), node("b", NodePhase::Ready)];
        assert!(f.observe(&roles, &up, &held, 3.0).is_empty());
        assert!(f.observe(&roles, &down, &held, 4.0).is_empty());
        assert_eq!(
            f.observe(&roles, &up, &held, 6.0),
            [("a".to_string(), Outcome::Returned)]
        );
        // b dies holding nothing: no failover to count.
        let b_down = [node("a", NodePhase::Ready), node("b", NodePhase::NotReady)];
        assert!(f.observe(&roles, &b_down, &held, 7.0).is_empty());
        assert!(f.open_for(8.0).is_empty());
    }
}
