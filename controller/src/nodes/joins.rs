//! Joins and leaving: who may take a node name, which subnet it gets, and revoking a board's
//! credential when an admin removes it.
//!
//! The join token admits new names only. A name that exists belongs to its board: a join under
//! it must carry that board's current credential or the admin token (an explicit re-join), so a
//! holder of the join token cannot become another board. A re-join keeps the node's subnet,
//! cordon, drain and admin labels.

use std::collections::BTreeMap;

use texu_api::{Cidr, Container, Kind, Node, NodeStatus};

use super::{hash, JoinRequest, JoinResponse, Nodes, CREDENTIAL_PREFIX, SUBNET_PREFIX};
use crate::auth::Token;
use crate::clock;
use crate::objects::{object_key, ObjectError};
use crate::store::Txn;

/// Who is asking to join, as the API authenticated them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joiner {
    /// The cluster join token: new names only.
    JoinToken,
    /// The admin token: any name, an explicit re-join for one that exists.
    Admin,
    /// A board with its current credential: a re-join under its own name.
    Node(String),
}

/// Why a join, a heartbeat or a label change is refused.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error(
        "node {name} already exists: a re-join needs that node's credential or the admin token; \
         to reuse the name, remove the old board first (texu delete node {name})"
    )]
    NameTaken { name: String },
    #[error("node {presenter} may not join as {name}")]
    OtherNode { presenter: String, name: String },
    #[error("subnet {subnet} is not inside the cluster's container range {cluster}")]
    SubnetOutside { subnet: String, cluster: Cidr },
    #[error("the join request for {name} is invalid")]
    Invalid { name: String, errors: Vec<String> },
    /// Heartbeats go to the leader; `leader` says where it is, when one is known.
    #[error("this controller is not the leader{}", leader.as_ref().map(|l| format!("; the leader is {l}")).unwrap_or_else(|| ": no leader is elected yet".into()))]
    NotLeader { leader: Option<String> },
}

impl From<crate::store::StoreError> for NodeError {
    fn from(e: crate::store::StoreError) -> Self {
        NodeError::Object(e.into())
    }
}

impl Nodes {
    /// Admits a board: stores its Node and returns a fresh credential that replaces any earlier
    /// one. An existing name is taken only by an explicit re-join (see [`Joiner`]), which keeps
    /// the node's subnet, cordon, drain and admin labels.
    pub async fn join(&self, req: JoinRequest, who: Joiner) -> Result<JoinResponse, NodeError> {
        let errors = texu_api::validate_node_facts(&req.spec, &req.labels);
        if !errors.is_empty() {
            return Err(NodeError::Invalid {
                name: req.name.clone(),
                errors,
            });
        }
        if let Joiner::Node(presenter) = &who {
            if *presenter != req.name {
                return Err(NodeError::OtherNode {
                    presenter: presenter.clone(),
                    name: req.name.clone(),
                });
            }
        }
        let wanted = match req.spec.subnet.as_deref().map(Cidr::parse) {
            None => None,
            Some(Ok(w)) if self.inside_cluster(&w) => Some(w),
            Some(_) => {
                return Err(NodeError::SubnetOutside {
                    subnet: req.spec.subnet.clone().unwrap_or_default(),
                    cluster: self.cluster_cidr,
                })
            }
        };
        for _ in 0..64 {
            if let Some(answer) = self.try_join(&req, &who, wanted).await? {
                tracing::info!(node = %req.name, subnet = ?answer.subnet, joiner = ?who, "node joined");
                return Ok(answer);
            }
        }
        Err(ObjectError::Conflict {
            kind: "node",
            name: req.name.clone(),
        }
        .into())
    }

    /// True when `subnet` lies wholly inside the cluster's container range.
    fn inside_cluster(&self, subnet: &Cidr) -> bool {
        subnet.prefix_len >= self.cluster_cidr.prefix_len
            && self.cluster_cidr.contains(subnet.network)
    }

    /// One attempt: `None` when another writer got in the way.
    async fn try_join(
        &self,
        req: &JoinRequest,
        who: &Joiner,
        wanted: Option<Cidr>,
    ) -> Result<Option<JoinResponse>, NodeError> {
        let store = self.objects.store();
        let credential = Token::generate(&format!("texu-node-{}-", req.name));
        let key = object_key(Kind::Node, &req.name);
        let existing = store.get(&key).await?;
        if existing.is_some() && *who == Joiner::JoinToken {
            return Err(NodeError::NameTaken {
                name: req.name.clone(),
            });
        }
        let old: Option<Node> = match &existing {
            Some(kv) => serde_json::from_slice(&kv.value).ok(),
            None => None,
        };
        let mut node = Node::new(req.name.clone(), req.spec.clone());
        let mut txn = Txn::new().when_mod_revision(
            key.clone(),
            existing.as_ref().map_or(0, |kv| kv.mod_revision),
        );
        // The same subnet back on rejoin; otherwise the one asked for if free, else the lowest free.
        let kept = old.as_ref().and_then(|o| o.spec.subnet.clone());
        let subnet = match kept {
            Some(s) => s,
            None => {
                let claims = store.range(SUBNET_PREFIX).await?;
                let taken: Vec<Cidr> = claims
                    .kvs
                    .iter()
                    .filter_map(|kv| kv.key.strip_prefix(SUBNET_PREFIX))
                    .filter_map(|k| Cidr::parse(&k.replace('_', "/")).ok())
                    .collect();
                let free = |c: &Cidr| !taken.iter().any(|t| t.overlaps(c));
                let chosen = match wanted {
                    Some(w) if free(&w) => w,
                    _ => self
                        .cluster_cidr
                        .subnets(24.max(self.cluster_cidr.prefix_len))
                        .find(|c| free(c))
                        .ok_or_else(|| ObjectError::Exhausted {
                            what: format!("container subnets in {}", self.cluster_cidr),
                        })?,
                };
                let claim = format!("{SUBNET_PREFIX}{}", chosen.to_string().replace('/', "_"));
                txn = txn
                    .when_mod_revision(claim.clone(), 0)
                    .put(claim, req.name.clone());
                chosen.to_string()
            }
        };
        node.spec.subnet = Some(subnet.clone());
        match old {
            Some(old) => {
                // Placement labels stay the admin's; what the board says now is a request.
                node.metadata.labels = old.metadata.labels;
                node.metadata.created = old.metadata.created;
                node.spec.unschedulable = old.spec.unschedulable;
                node.spec.draining = old.spec.draining;
                node.status = old.status;
            }
            None => {
                // A fresh name: the holder of the join token introduces the board, and the
                // labels it gives now are accepted once (as kubelet's --node-labels are).
                node.metadata.labels = req.labels.clone();
                node.metadata.created = Some(clock::now_rfc3339());
            }
        }
        node.status
            .get_or_insert_with(NodeStatus::default)
            .requested_labels = req.labels.clone();
        node.metadata.revision = 0;
        let value = serde_json::to_vec(&node).map_err(|source| ObjectError::Encode {
            name: req.name.clone(),
            source,
        })?;
        let txn = txn.put(key, value).put(
            format!("{CREDENTIAL_PREFIX}{}", req.name),
            hash(credential.secret()),
        );
        if !store.txn(txn).await?.succeeded {
            return Ok(None);
        }
        Ok(Some(JoinResponse {
            name: req.name.clone(),
            credential: credential.secret().to_string(),
            subnet: Some(subnet),
            cluster_cidr: Some(self.cluster_cidr.to_string()),
            controllers: self.controllers(),
        }))
    }

    /// Removes a board from the cluster: its node, credential (revoked at once: the old
    /// credential gets 401) and subnet claim. Its containers lose their node and are placed
    /// elsewhere; other boards drop their routes to it.
    pub async fn remove(&self, name: &str) -> Result<bool, ObjectError> {
        let store = self.objects.store();
        let Some(node) = self.objects.get::<Node>(name).await? else {
            return Ok(false);
        };
        let mut txn = Txn::new()
            .when_mod_revision(object_key(Kind::Node, name), node.metadata.revision)
            .delete(object_key(Kind::Node, name))
            .delete(format!("{CREDENTIAL_PREFIX}{name}"));
        if let Some(subnet) = &node.spec.subnet {
            txn = txn.delete(format!("{SUBNET_PREFIX}{}", subnet.replace('/', "_")));
        }
        if !store.txn(txn).await?.succeeded {
            return Err(ObjectError::Stale {
                kind: "node",
                name: name.to_string(),
            });
        }
        self.detectors.lock().await.remove(name);
        self.written.lock().await.remove(name);
        let (containers, _) = self.objects.list::<Container>().await?;
        for mut c in containers
            .into_iter()
            .filter(|c| c.spec.node.as_deref() == Some(name))
        {
            c.spec.node = None;
            c.status = None;
            let _ = self.objects.replace(&c).await;
        }
        tracing::info!(
            node = name,
            "node removed from the cluster; its credential is revoked"
        );
        Ok(true)
    }

    /// The node a credential belongs to, if any. Credentials look like `texu-node-NAME-HEX`.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<String>, ObjectError> {
        let Some(rest) = presented.strip_prefix("texu-node-") else {
            return Ok(None);
        };
        let Some((name, _)) = rest.rsplit_once('-') else {
            return Ok(None);
        };
        if texu_api::validate_name(name).is_err() {
            return Ok(None);
        }
        let stored = self
            .objects
            .store()
            .get(&format!("{CREDENTIAL_PREFIX}{name}"))
            .await?;
        let ok = stored.is_some_and(|kv| {
            Token::from_secret(hash(presented)).matches(&String::from_utf8_lossy(&kv.value))
        });
        Ok(ok.then(|| name.to_string()))
    }

    /// `texu label node`: sets (`Some`) and removes (`None`) admin labels, the ones placement
    /// uses. Returns the node as stored.
    pub async fn label(
        &self,
        name: &str,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<Node, NodeError> {
        for _ in 0..8 {
            let Some(mut node) = self.objects.get::<Node>(name).await? else {
                return Err(ObjectError::NotFound {
                    kind: "node",
                    name: name.to_string(),
                }
                .into());
            };
            for (key, value) in changes {
                match value {
                    Some(v) => node.metadata.labels.insert(key.clone(), v.clone()),
                    None => node.metadata.labels.remove(key),
                };
            }
            let errors = texu_api::validate_node_labels(&node.metadata.labels);
            if !errors.is_empty() {
                return Err(NodeError::Invalid {
                    name: name.to_string(),
                    errors,
                });
            }
            match self.objects.replace(&node).await {
                Ok(revision) => {
                    node.metadata.revision = revision;
                    tracing::info!(node = name, labels = ?node.metadata.labels, "node labelled");
                    return Ok(node);
                }
                Err(ObjectError::Stale { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ObjectError::Conflict {
            kind: "node",
            name: name.to_string(),
        }
        .into())
    }
}
