//! Reading a cluster's state from its controller: nodes, roles, containers, and how far the
//! stack is from ready.

use std::time::Duration;

use serde::de::DeserializeOwned;
use texu_api::{Container, ContainerPhase, DesiredState, Node, NodePhase, Role};

use super::{ClusterError, Result};

/// An admin's view of one controller.
#[derive(Clone)]
pub struct Api {
    server: String,
    token: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct List<T> {
    items: Vec<T>,
}

impl Api {
    /// A client for `server` (`https://HOST:PORT`) with an admin token, trusting ureq's public
    /// roots; [`Api::with_ca`] for a cluster's own CA.
    pub fn new(server: &str, token: &str) -> Api {
        Self::with_ca(server, token, None)
    }

    /// A client for `server` trusting only the CA certificates in `ca_pem` (when given).
    pub fn with_ca(server: &str, token: &str, ca_pem: Option<&str>) -> Api {
        let mut agent = ureq::AgentBuilder::new();
        if let Some(tls) = ca_pem.and_then(texu_controller::tls::client_config) {
            agent = agent.tls_config(tls);
        }
        Api {
            server: server.trim_end_matches('/').to_string(),
            token: token.to_string(),
            agent: agent.build(),
        }
    }

    /// Whether the controller answers `/healthz`.
    pub fn healthy(&self) -> bool {
        self.agent
            .get(&format!("{}/healthz", self.server))
            .timeout(Duration::from_secs(2))
            .call()
            .is_ok()
    }

    /// Every node.
    pub fn nodes(&self) -> Result<Vec<Node>> {
        self.list("/v1/nodes")
    }

    /// Every role.
    pub fn roles(&self) -> Result<Vec<Role>> {
        self.list("/v1/roles")
    }

    /// Every container.
    pub fn containers(&self) -> Result<Vec<Container>> {
        self.list("/v1/containers")
    }

    /// One container by name, if it exists.
    pub fn container(&self, name: &str) -> Result<Option<Container>> {
        Ok(self
            .containers()?
            .into_iter()
            .find(|c| c.metadata.name == name))
    }

    /// How far the cluster is from ready.
    pub fn progress(&self) -> Result<Progress> {
        Ok(Progress::of(
            &self.nodes()?,
            &self.roles()?,
            &self.containers()?,
        ))
    }

    fn list<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>> {
        let url = format!("{}{path}", self.server);
        let http = |message: String| ClusterError::Http {
            url: url.clone(),
            message,
        };
        let body = self
            .agent
            .get(&url)
            .set("Authorization", &format!("Bearer {}", self.token))
            .timeout(Duration::from_secs(5))
            .call()
            .map_err(|e| http(e.to_string()))?
            .into_string()
            .map_err(|e| http(e.to_string()))?;
        serde_json::from_str::<List<T>>(&body)
            .map(|l| l.items)
            .map_err(|e| http(format!("unexpected answer: {e}")))
    }
}

/// Ready boards and ready containers against what is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Nodes whose heartbeats arrive.
    pub nodes_ready: usize,
    /// Nodes known.
    pub nodes: usize,
    /// Ready containers, counting at most `replicas` per role.
    pub ready: usize,
    /// The sum of every role's replicas.
    pub desired: usize,
    /// Containers whose agent gave up on them for now (phase `Failed`).
    pub failed: usize,
}

impl Progress {
    /// Counts from lists of nodes, roles and containers.
    pub fn of(nodes: &[Node], roles: &[Role], containers: &[Container]) -> Progress {
        let nodes_ready = nodes
            .iter()
            .filter(|n| n.status.as_ref().map(|s| s.phase) == Some(NodePhase::Ready))
            .count();
        let mut ready = 0;
        let mut desired = 0;
        for role in roles {
            let wanted = role.spec.replicas.max(0) as usize;
            let have = containers
                .iter()
                .filter(|c| c.spec.role == role.metadata.name)
                .filter(|c| c.spec.desired == DesiredState::Running)
                .filter(|c| c.status.as_ref().map(|s| s.phase) == Some(ContainerPhase::Ready))
                .count();
            desired += wanted;
            ready += have.min(wanted);
        }
        let failed = containers
            .iter()
            .filter(|c| c.status.as_ref().map(|s| s.phase) == Some(ContainerPhase::Failed))
            .count();
        Progress {
            nodes_ready,
            nodes: nodes.len(),
            ready,
            desired,
            failed,
        }
    }

    /// Every node and every wanted container ready.
    pub fn done(&self) -> bool {
        self.nodes > 0 && self.nodes_ready == self.nodes && self.ready == self.desired
    }
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "boards {}/{} ready, containers {}/{} ready",
            self.nodes_ready, self.nodes, self.ready, self.desired
        )?;
        if self.failed > 0 {
            write!(f, " ({} failed)", self.failed)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from<T: DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn progress_counts_ready_boards_and_at_most_replicas_per_role() {
        let node = |name: &str, phase: &str| -> Node {
            from(
                json!({"apiVersion": "texu.io/v1", "kind": "Node", "metadata": {"name": name},
                "spec": {"address": "198.18.0.2", "arch": "amd64", "cpus": 1, "memoryBytes": 1},
                "status": {"phase": phase}}),
            )
        };
        let role = |name: &str, replicas: i64| -> Role {
            from(
                json!({"apiVersion": "texu.io/v1", "kind": "Role", "metadata": {"name": name},
                "spec": {"replicas": replicas, "image": "template:busybox"}}),
            )
        };
        let container = |name: &str, role: &str, phase: &str| -> Container {
            from(json!({"apiVersion": "texu.io/v1", "kind": "Container",
                "metadata": {"name": name}, "spec": {"role": role, "ordinal": 0},
                "status": {"phase": phase}}))
        };
        let nodes = [node("board1", "Ready"), node("board2", "NotReady")];
        let roles = [role("web", 2), role("api", 1)];
        let containers = [
            container("web-0", "web", "Ready"),
            container("web-1", "web", "Ready"),
            container("web-2", "web", "Ready"),
            container("api-0", "api", "Failed"),
        ];
        let p = Progress::of(&nodes, &roles, &containers);
        assert_eq!(
            p,
            Progress {
                nodes_ready: 1,
                nodes: 2,
                ready: 2,
                desired: 3,
                failed: 1
            }
        );
        assert!(!p.done());
        assert_eq!(
            p.to_string(),
            "boards 1/2 ready, containers 2/3 ready (1 failed)"
        );
        let all_ready = Progress::of(&nodes[..1], &roles[..1], &containers[..2]);
        assert!(all_ready.done(), "{all_ready}");
    }
}
