//! API errors: a status code and a JSON body `{ "error": ..., "details": ... }`.

use serde::Serialize;
use warp::http::{header, StatusCode};
use warp::reply::Response;

use crate::store::LedgerError;

/// An error answered to an API client.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Machine-readable context (e.g. which limit refused a transfer).
    pub details: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: &'a Option<serde_json::Value>,
}

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            details: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
    pub fn method_not_allowed(allow: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method not allowed here; allowed: {allow}"),
        )
    }
    /// Adds machine-readable details.
    pub fn with_details(mut self, details: impl Serialize) -> Self {
        self.details = serde_json::to_value(details).ok();
        self
    }

    /// The HTTP response for this error.
    pub fn into_response(self) -> Response {
        let mut response = super::json(
            self.status,
            &Body {
                error: &self.message,
                details: &self.details,
            },
        );
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        // The whole chain of causes, once each: the client and the log see what failed below.
        let mut message = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            message.push_str(&format!(": {c}"));
            cause = c.source();
        }
        match e {
            LedgerError::NotFound { .. } => Self::not_found(message),
            LedgerError::Exists { .. } | LedgerError::IdReused { .. } => {
                Self::new(StatusCode::CONFLICT, message)
            }
            LedgerError::NotPending { .. } => Self::new(StatusCode::CONFLICT, message),
            LedgerError::Refused(refusal) => Self::unprocessable(message).with_details(refusal),
            LedgerError::Contention { .. } => Self::new(StatusCode::SERVICE_UNAVAILABLE, message),
            LedgerError::Store(_)
            | LedgerError::Cassandra { .. }
            | LedgerError::Inconsistent { .. }
            | LedgerError::Corrupt { .. } => {
                tracing::error!(error = %message, "data layer failed");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
            }
        }
    }
}
