//! Endpoints: per role and named port, the Ready containers that serve it, in a stable order
//! (ordinal, then name) so that a config rendered from them changes only when they do.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Container, ContainerPhase};

/// One Ready container serving one named port of its role.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct Endpoint {
    /// Its ordinal in the role (first in the order).
    pub ordinal: i64,
    /// The container's name.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its address on that node's container subnet.
    pub address: String,
    /// The port inside the container.
    pub port: i64,
}

/// A role's endpoints, by port name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RoleEndpoints {
    /// The role.
    pub role: String,
    /// Port name -> its Ready endpoints, sorted by ordinal then name.
    pub ports: BTreeMap<String, Vec<Endpoint>>,
}

/// The endpoints of every role in `containers` (roles without a Ready container have none;
/// a role's named ports all appear, empty while nothing is Ready).
pub fn endpoints_of(containers: &[Container]) -> BTreeMap<String, RoleEndpoints> {
    let mut out: BTreeMap<String, RoleEndpoints> = BTreeMap::new();
    for c in containers {
        let Some(template) = c.spec.template.as_ref() else {
            continue;
        };
        let role = out
            .entry(c.spec.role.clone())
            .or_insert_with(|| RoleEndpoints {
                role: c.spec.role.clone(),
                ports: BTreeMap::new(),
            });
        for p in &template.ports {
            role.ports.entry(p.name.clone()).or_default();
        }
        let (Some(status), Some(node)) = (c.status.as_ref(), c.spec.node.as_ref()) else {
            continue;
        };
        let Some(address) = status.address.as_ref() else {
            continue;
        };
        if status.phase != ContainerPhase::Ready {
            continue;
        }
        for p in &template.ports {
            if let Some(list) = role.ports.get_mut(&p.name) {
                list.push(Endpoint {
                    ordinal: c.spec.ordinal,
                    name: c.metadata.name.clone(),
                    node: node.clone(),
                    address: address.clone(),
                    port: p.port,
                });
            }
        }
    }
    for role in out.values_mut() {
        for list in role.ports.values_mut() {
            list.sort();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ContainerSpec, ContainerStatus, Port, RoleSpec};

    fn container(name: &str, ordinal: i64, phase: ContainerPhase, address: &str) -> Container {
        let mut role = RoleSpec::with_image("host");
        role.ports = vec![Port {
            name: "http".into(),
            port: 8080,
            host_port: None,
            protocol: Default::default(),
        }];
        let mut c = Container::new(
            name,
            ContainerSpec {
                role: "app".into(),
                ordinal,
                node: Some(format!("board{ordinal}")),
                generation: 1,
                template: Some(role),
                ..Default::default()
            },
        );
        c.status = Some(ContainerStatus {
            phase,
            address: Some(address.into()),
            ..Default::default()
        });
        c
    }

    #[test]
    fn only_ready_containers_in_ordinal_then_name_order() {
        let all = endpoints_of(&[
            container("app-2", 2, ContainerPhase::Ready, "198.19.2.2"),
            container("app-1", 1, ContainerPhase::Running, "198.19.1.2"),
            container("app-0", 0, ContainerPhase::Ready, "198.19.0.2"),
        ]);
        let http = &all["app"].ports["http"];
        let names: Vec<&str> = http.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["app-0", "app-2"]);
        assert_eq!(
            http[0],
            Endpoint {
                ordinal: 0,
                name: "app-0".into(),
                node: "board0".into(),
                address: "198.19.0.2".into(),
                port: 8080,
            }
        );
        let none = endpoints_of(&[container("app-1", 1, ContainerPhase::Lost, "198.19.1.2")]);
        assert_eq!(none["app"].ports["http"], Vec::<Endpoint>::new());
    }
}
