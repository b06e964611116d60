//! What an admin does to nodes and containers: cordon, drain, uncordon, delete a node, `texu replace`.

use texu_api::{Container, Node, Role};
use warp::http::{Method, StatusCode};

use super::{json, only, valid_name, Answer, ApiError, ApiState, Request};

/// What `cordon` does to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cordon {
    /// No new containers.
    Only,
    /// No new containers, and the ones there move off, make-before-break.
    Drain,
    /// Schedulable again (ends a drain too).
    Uncordon,
}

/// Marks a node unschedulable (no new containers), draining, or schedulable again.
pub(super) async fn cordon(state: &ApiState, req: &Request, name: &str, mode: Cordon) -> Answer {
    only(req, &[Method::POST])?;
    valid_name(name)?;
    let (unschedulable, draining, result) = match mode {
        Cordon::Only => (true, None, "cordoned"),
        Cordon::Drain => (true, Some(true), "draining"),
        Cordon::Uncordon => (false, Some(false), "uncordoned"),
    };
    for _ in 0..8 {
        let Some(mut node) = state.objects.get::<Node>(name).await? else {
            return Err(ApiError::not_found(format!("node {name} not found")));
        };
        let draining = draining.unwrap_or(node.spec.draining);
        if node.spec.unschedulable == unschedulable && node.spec.draining == draining {
            return Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "result": format!("already {result}"), "name": name }),
            ));
        }
        node.spec.unschedulable = unschedulable;
        node.spec.draining = draining;
        match state.objects.replace(&node).await {
            Ok(_) => {
                tracing::info!(node = name, result, "node");
                return Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "result": result, "name": name }),
                ));
            }
            Err(crate::objects::ObjectError::Stale { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        format!("node {name} kept changing; try again"),
    ))
}

/// `texu replace ROLE-N --node NODE`: moves one member (a stateful one, whose board is gone)
/// to another board, where it starts with `replaces` set to its old address.
pub(super) async fn replace(state: &ApiState, req: &Request, name: &str) -> Answer {
    only(req, &[Method::POST])?;
    valid_name(name)?;
    let Some(target) = req.query.get("node") else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "say where: ?node=NODE".to_string(),
        ));
    };
    valid_name(target)?;
    for _ in 0..8 {
        let Some(current) = state.objects.get::<Container>(name).await? else {
            return Err(ApiError::not_found(format!("container {name} not found")));
        };
        let Some(role) = state.objects.get::<Role>(&current.spec.role).await? else {
            return Err(ApiError::not_found(format!(
                "role {} not found",
                current.spec.role
            )));
        };
        let (nodes, _) = state.objects.list::<Node>().await?;
        let (containers, _) = state.objects.list::<Container>().await?;
        let catalog = crate::scheduling::catalog(&state.objects).await?;
        let next = crate::scheduler::replace(&role, &nodes, &containers, &catalog, name, target)
            .map_err(|why| ApiError::new(StatusCode::CONFLICT, why))?;
        match state.objects.replace(&next).await {
            Ok(_) => {
                let from = current.spec.node.as_deref().unwrap_or("no node");
                let message = format!(
                    "{name} moves from {from} to {target}{}",
                    next.spec
                        .replaces
                        .map(|a| format!(", replacing {a}"))
                        .unwrap_or_default()
                );
                state.objects.events().record(
                    texu_api::EventKind::Replacing,
                    format!("container/{name}"),
                    Some(target),
                    message.clone(),
                );
                return Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "result": "replacing",
                        "name": name,
                        "node": target,
                        "replaces": next.spec.replaces,
                        "message": message,
                    }),
                ));
            }
            Err(crate::objects::ObjectError::Stale { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        format!("container {name} kept changing; try again"),
    ))
}

pub(super) async fn remove_node(state: &ApiState, name: &str) -> Answer {
    valid_name(name)?;
    if state.nodes.remove(name).await? {
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "result": "deleted", "kind": "Node", "name": name }),
        ))
    } else {
        Err(ApiError::not_found(format!("node {name} not found")))
    }
}
