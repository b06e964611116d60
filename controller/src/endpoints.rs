//! Endpoints: per role and named port, the Ready containers that serve it, kept from the
//! store's containers and followed as a stream of changes. Templates on the boards (the
//! proxy's balancer members) render from them.

use std::collections::BTreeMap;

use futures::{Stream, StreamExt};
use texu_api::{endpoints_of, Container, Kind, RoleEndpoints};

use crate::objects::{ObjectError, Objects};

/// Every role's endpoints now, and the store revision they were read at.
pub async fn current(
    objects: &Objects,
) -> Result<(BTreeMap<String, RoleEndpoints>, i64), ObjectError> {
    let (containers, revision) = objects.list::<Container>().await?;
    Ok((endpoints_of(&containers), revision))
}

/// One change of a role's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// `MODIFIED` (also for a role's first endpoints) or `DELETED` (the role has no containers).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The store revision the change was seen at.
    pub revision: i64,
    /// The role's endpoints after the change (empty ports for `DELETED`).
    pub object: RoleEndpoints,
}

/// The changes from `before` to `after`, for `role` only when given.
pub fn changes(
    before: &BTreeMap<String, RoleEndpoints>,
    after: &BTreeMap<String, RoleEndpoints>,
    role: Option<&str>,
    revision: i64,
) -> Vec<Change> {
    let wanted = |name: &str| role.is_none_or(|r| r == name);
    let mut out = Vec::new();
    for (name, now) in after.iter().filter(|(n, _)| wanted(n)) {
        if before.get(name) != Some(now) {
            out.push(Change {
                kind: "MODIFIED",
                revision,
                object: now.clone(),
            });
        }
    }
    for name in before
        .keys()
        .filter(|n| wanted(n) && !after.contains_key(*n))
    {
        out.push(Change {
            kind: "DELETED",
            revision,
            object: RoleEndpoints {
                role: name.clone(),
                ports: BTreeMap::new(),
            },
        });
    }
    out
}

/// Follows endpoint changes (of `role` only, when given). The first batch holds every role's
/// endpoints as of now when the store moved past `after` since (the client missed changes),
/// and is empty otherwise; then one batch per container change, with the roles it moved
/// (often none: a heartbeat that changes no Ready state moves nothing).
pub async fn follow(
    objects: Objects,
    role: Option<String>,
    after: i64,
) -> Result<impl Stream<Item = Result<Vec<Change>, ObjectError>> + Send + 'static, ObjectError> {
    let (known, revision) = current(&objects).await?;
    let events = Box::pin(objects.watch(Kind::Container, revision).await?);
    let first = if after > 0 && revision > after {
        changes(&BTreeMap::new(), &known, role.as_deref(), revision)
    } else {
        Vec::new()
    };
    let rest = futures::stream::unfold(
        (events, known, objects, role),
        |(mut events, known, objects, role)| async move {
            let batch = match events.next().await? {
                Ok(batch) => batch,
                Err(e) => return Some((Err(e), (events, known, objects, role))),
            };
            let (now, listed) = match current(&objects).await {
                Ok(now) => now,
                Err(e) => return Some((Err(e), (events, known, objects, role))),
            };
            let revision = batch.last().map_or(listed, |e| e.revision);
            let moved = changes(&known, &now, role.as_deref(), revision);
            Some((Ok(moved), (events, now, objects, role)))
        },
    );
    Ok(futures::stream::once(async move { Ok(first) }).chain(rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use texu_api::Endpoint;

    fn role(name: &str, members: &[&str]) -> (String, RoleEndpoints) {
        let list = members
            .iter()
            .enumerate()
            .map(|(i, m)| Endpoint {
                ordinal: i as i64,
                name: m.to_string(),
                node: "board1".into(),
                address: format!("198.19.1.{}", i + 2),
                port: 8080,
            })
            .collect();
        (
            name.to_string(),
            RoleEndpoints {
                role: name.into(),
                ports: BTreeMap::from([("http".to_string(), list)]),
            },
        )
    }

    #[test]
    fn only_roles_whose_endpoints_moved_are_told() {
        let before = BTreeMap::from([role("app", &["app-0"]), role("proxy", &["proxy-0"])]);
        let after = BTreeMap::from([
            role("app", &["app-0", "app-1"]),
            role("proxy", &["proxy-0"]),
        ]);
        let all = changes(&before, &after, None, 7);
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].kind, all[0].revision), ("MODIFIED", 7));
        assert_eq!(all[0].object, after["app"]);
        assert!(changes(&before, &after, Some("proxy"), 7).is_empty());
        let gone = changes(&after, &BTreeMap::from([role("app", &["app-0"])]), None, 8);
        let kinds: Vec<(&str, &str)> = gone
            .iter()
            .map(|c| (c.kind, c.object.role.as_str()))
            .collect();
        assert_eq!(kinds, [("MODIFIED", "app"), ("DELETED", "proxy")]);
    }
}
