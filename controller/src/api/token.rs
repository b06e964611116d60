//! `POST /v1/token/rotate` (admins): a new join token, without touching joined boards.

use warp::http::{Method, StatusCode};

use super::{json, only, ApiError, ApiState, Request};

/// Rotates the join token and answers the new one.
pub(super) fn rotate(state: &ApiState, req: &Request) -> Result<warp::reply::Response, ApiError> {
    only(req, &[Method::POST])?;
    let token = state.join_token.rotate().map_err(|e| {
        tracing::error!(error = %e, "cannot rotate the join token");
        ApiError::internal(format!("cannot rotate the join token: {e}"))
    })?;
    tracing::info!("join token rotated");
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "joinToken": token.secret() }),
    ))
}
