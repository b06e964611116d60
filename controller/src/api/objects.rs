//! Object routes: lists (and watches), reads, role applies and deletes.

use bytes::Buf;
use futures::Stream;
use serde::Serialize;
use texu_api::{Kind, RoleBodyError};
use warp::http::{Method, StatusCode};

use super::{json, only, read_body, valid_name, watch, Answer, ApiError, ApiState, Request};
use crate::objects::Object;

/// A list of objects with the revision it was read at, so a client can resume a watch.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct List<T> {
    pub(super) api_version: &'static str,
    pub(super) kind: String,
    pub(super) revision: i64,
    pub(super) items: Vec<T>,
}

pub(super) async fn list<T: Object>(state: &ApiState, req: &Request) -> Answer {
    only(req, &[Method::GET])?;
    let (role_filter, node_filter) = (req.query.get("role"), req.query.get("node"));
    for (param, value) in [("role", role_filter), ("node", node_filter)] {
        if let Some(v) = value {
            texu_api::validate_name(v)
                .map_err(|why| ApiError::bad_request(format!("query parameter {param}: {why}")))?;
        }
    }
    if req.query.get("watch").map(String::as_str) == Some("true") {
        let after = match req.query.get("revision") {
            None => 0,
            Some(r) => r.parse::<i64>().ok().filter(|r| *r >= 0).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "revision must be a non-negative integer, got {r:?}"
                ))
            })?,
        };
        return watch::serve(state, req, T::KIND, after, role_filter, node_filter).await;
    }
    let (mut items, revision) = if T::KIND == Kind::Container {
        // A board's list of its own containers reads and decodes only those that may be its.
        let needles = watch::filter_needles(role_filter, node_filter);
        state.objects.list_containing::<T>(&needles).await?
    } else {
        state.objects.list::<T>().await?
    };
    if T::KIND == Kind::Container {
        items.retain(|item| {
            let value = serde_json::to_value(item).unwrap_or_default();
            watch::matches_filters(&value, role_filter, node_filter)
        });
    }
    Ok(json(
        StatusCode::OK,
        &List {
            api_version: texu_api::API_VERSION,
            kind: format!("{}List", T::KIND.as_str()),
            revision,
            items,
        },
    ))
}

pub(super) async fn read_one<T: Object>(state: &ApiState, req: &Request, name: &str) -> Answer {
    only(req, &[Method::GET])?;
    get::<T>(state, name).await
}

pub(super) async fn get<T: Object>(state: &ApiState, name: &str) -> Answer {
    valid_name(name)?;
    match state.objects.get::<T>(name).await? {
        Some(obj) => Ok(json(StatusCode::OK, &obj)),
        None => Err(ApiError::not_found(format!(
            "{} {name} not found",
            T::KIND.as_str().to_lowercase()
        ))),
    }
}

/// The answer to an apply: what happened and the object as stored.
#[derive(Serialize)]
pub(super) struct Applied<T> {
    result: &'static str,
    #[serde(rename = "dryRun", skip_serializing_if = "std::ops::Not::not")]
    dry_run: bool,
    object: T,
}

pub(super) async fn put_role<S, B>(state: &ApiState, req: &Request, name: &str, body: S) -> Answer
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin + Send,
    B: Buf,
{
    valid_name(name)?;
    let bytes = read_body(req, body).await?;
    let role = texu_api::parse_json_role(&bytes).map_err(|e| match e {
        RoleBodyError::Invalid(errors) => ApiError::unprocessable(
            format!("role {name} is invalid"),
            errors.iter().map(ToString::to_string).collect(),
        ),
        RoleBodyError::TooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
        RoleBodyError::Json { .. } => ApiError::bad_request(e.to_string()),
    })?;
    if role.metadata.name != name {
        return Err(ApiError::bad_request(format!(
            "metadata.name {:?} does not match the name in the path {name:?}",
            role.metadata.name
        )));
    }
    let dry_run = req.query.get("dryRun").map(String::as_str) == Some("true");
    let (outcome, stored) = state.objects.apply_role(role, dry_run).await?;
    let status = match outcome {
        crate::objects::ApplyOutcome::Created if !dry_run => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    if !dry_run {
        tracing::info!(
            role = name,
            result = outcome.as_str(),
            generation = stored.meta().generation,
            "role applied"
        );
    }
    Ok(json(
        status,
        &Applied {
            result: outcome.as_str(),
            dry_run,
            object: stored,
        },
    ))
}

pub(super) async fn delete(state: &ApiState, kind: Kind, name: &str) -> Answer {
    valid_name(name)?;
    if state.objects.delete(kind, name).await? {
        tracing::info!(kind = kind.as_str(), name, "deleted");
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "result": "deleted", "kind": kind.as_str(), "name": name }),
        ))
    } else {
        Err(ApiError::not_found(format!(
            "{} {name} not found",
            kind.as_str().to_lowercase()
        )))
    }
}
