//! API errors: a status code and a JSON body `{ "error": ..., "details": [...] }`.

use serde::Serialize;
use warp::http::{header, StatusCode};
use warp::reply::Response;

use crate::objects::ObjectError;
use crate::store::StoreError;

/// An error answered to an API client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub details: Vec<String>,
    /// For 405: the methods the route accepts.
    pub allow: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    details: &'a [String],
}

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            details: Vec::new(),
            allow: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    pub fn method_not_allowed(allow: &str) -> Self {
        ApiError {
            allow: Some(allow.to_string()),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method not allowed here; allowed: {allow}"),
            )
        }
    }
    /// A well-formed object that fails validation: 422 with one detail per field error.
    pub fn unprocessable(message: impl Into<String>, details: Vec<String>) -> Self {
        ApiError {
            details,
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
        }
    }

    /// The HTTP response for this error.
    pub fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Body {
            error: &self.message,
            details: &self.details,
        })
        .unwrap_or_else(|_| b"{\"error\":\"internal error\"}".to_vec());
        let mut response = Response::new(body.into());
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"texu\""),
            );
        }
        if let Some(allow) = self
            .allow
            .and_then(|a| header::HeaderValue::from_str(&a).ok())
        {
            headers.insert(header::ALLOW, allow);
        }
        response
    }
}

impl From<ObjectError> for ApiError {
    fn from(e: ObjectError) -> Self {
        match e {
            ObjectError::Conflict { .. } | ObjectError::Stale { .. } => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
            }
            ObjectError::NotFound { .. } => ApiError::not_found(e.to_string()),
            ObjectError::Exhausted { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            ObjectError::Store(StoreError::Compacted { .. }) => ApiError {
                details: vec![super::watch::RESYNC_HINT.to_string()],
                ..ApiError::new(StatusCode::GONE, e.to_string())
            },
            ObjectError::Store(StoreError::Closed) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the controller is shutting down",
            ),
            ObjectError::Store(StoreError::NotLeader) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            ObjectError::Store(_) => {
                tracing::error!(error = %e, "store request failed");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            ObjectError::Corrupt { .. } | ObjectError::Encode { .. } => {
                tracing::error!(error = %e, "object encoding");
                ApiError::internal(e.to_string())
            }
        }
    }
}
