//! The exchange's HTTP/JSON API under `/v1`, plus `/healthz`, `/readyz` and `/metrics`.
//!
//! One warp filter hands every request to [`handle`], which authenticates, routes by path
//! segments and answers JSON, so every `/v1` route sits behind one authentication check and one
//! place turns errors into `{ "error": ..., "details": ... }`.

mod audit;
mod error;
mod ledger;
mod listings;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Buf;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
/// A JSON response with a status (the controller's: the same shape on both servers).
pub(crate) use texu_controller::api::json;
use texu_controller::auth::Token;
use warp::http::{header, Method, StatusCode};
use warp::reply::Response;
use warp::Filter;

pub use error::ApiError;

use crate::metrics::Metrics;
use crate::model::{sha256_hex, Member};
use crate::store::Ledger;

/// Request bodies above this size are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Member tokens remembered in memory (they never change), before the cache starts over.
const TOKEN_CACHE: usize = 10_000;

/// Every route as (method, pattern).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/v1/members"),
    ("GET", "/v1/members/{id}"),
    ("POST", "/v1/accounts"),
    ("GET", "/v1/accounts"),
    ("GET", "/v1/accounts/{code}"),
    ("PATCH", "/v1/accounts/{code}"),
    ("GET", "/v1/accounts/{code}/statement"),
    ("POST", "/v1/transfers"),
    ("GET", "/v1/transfers/{id}"),
    ("POST", "/v1/transfers/{id}/accept"),
    ("POST", "/v1/transfers/{id}/reject"),
    ("POST", "/v1/listings"),
    ("GET", "/v1/listings"),
    ("GET", "/v1/listings/{id}"),
    ("PATCH", "/v1/listings/{id}"),
    ("DELETE", "/v1/listings/{id}"),
    ("GET", "/v1/audit"),
];

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The operator holding the admin token: everything.
    Admin,
    /// A member: its own accounts, transfers and listings.
    Member(Member),
}

impl Principal {
    /// The member id, or `admin`.
    pub fn id(&self) -> &str {
        match self {
            Principal::Admin => "admin",
            Principal::Member(m) => &m.id,
        }
    }
    /// True for the admin and for member `id`.
    pub fn may_act_for(&self, id: &str) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Member(m) => m.id == id,
        }
    }
}

/// What every request handler shares.
pub struct ApiState {
    pub ledger: Arc<dyn Ledger>,
    pub admin_token: Token,
    pub metrics: Arc<Metrics>,
    tokens: Mutex<HashMap<String, Member>>,
}

impl ApiState {
    /// State for an API over `ledger`.
    pub fn new(ledger: Arc<dyn Ledger>, admin_token: Token, metrics: Arc<Metrics>) -> Self {
        Self {
            ledger,
            admin_token,
            metrics,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Runs one data-layer call, recording its latency under `op`.
    pub async fn db<T, F: Future<Output = T>>(&self, op: &str, call: F) -> T {
        let started = Instant::now();
        let out = call.await;
        self.metrics
            .observe_store(op, started.elapsed().as_secs_f64());
        out
    }
}

/// The warp filter serving the whole API.
pub fn routes(
    state: Arc<ApiState>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            move |method, path: warp::path::FullPath, query: String, headers, body| {
                let state = state.clone();
                async move {
                    let request = Request {
                        method,
                        path: path.as_str().to_string(),
                        query: parse_query(&query),
                        headers,
                    };
                    handle(state, request, Box::pin(body)).await
                }
            },
        )
}

/// The parts of a request the handlers look at.
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
    pub headers: warp::http::HeaderMap,
}

impl Request {
    /// A header's value as text, if present and readable.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A request body, read on demand.
pub type Body<'a> = std::pin::Pin<
    Box<dyn Stream<Item = Result<Box<dyn Buf + Send + 'a>, warp::Error>> + Send + 'a>,
>;

/// Answers one request and records it in the metrics.
pub async fn handle<S, B>(state: Arc<ApiState>, req: Request, body: S) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin + Send,
    B: Buf + Send,
{
    let started = Instant::now();
    let body: Body<'_> = Box::pin(body.map(|c| c.map(|b| Box::new(b) as Box<dyn Buf + Send>)));
    let (route, result) = dispatch(&state, &req, body).await;
    let response = result.unwrap_or_else(|e| e.into_response());
    let status = response.status().as_u16();
    if status >= 500 {
        tracing::warn!(method = %req.method, path = %req.path, status, "request failed");
    } else {
        tracing::debug!(method = %req.method, path = %req.path, status, "request");
    }
    state.metrics.observe_request(
        route,
        req.method.as_str(),
        status,
        started.elapsed().as_secs_f64(),
    );
    response
}

/// A handler's answer.
pub type Answer = Result<Response, ApiError>;

async fn dispatch(state: &ApiState, req: &Request, body: Body<'_>) -> (&'static str, Answer) {
    let segments: Vec<&str> = req
        .path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .collect();
    match segments.as_slice() {
        ["healthz"] => ("/healthz", only(req, Method::GET).map(|_| text("ok\n"))),
        ["readyz"] => ("/readyz", readyz(state, req).await),
        ["metrics"] => (
            "/metrics",
            only(req, Method::GET).map(|_| {
                let mut r = text(state.metrics.render());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }),
        ),
        ["v1", rest @ ..] => match authenticate(state, req).await {
            Err(e) => ("/v1", Err(e)),
            Ok(who) => v1(state, req, &who, rest, body).await,
        },
        _ => (
            "other",
            Err(ApiError::not_found(format!("no route {}", req.path))),
        ),
    }
}

async fn v1(
    state: &ApiState,
    req: &Request,
    who: &Principal,
    rest: &[&str],
    body: Body<'_>,
) -> (&'static str, Answer) {
    let m = &req.method;
    match rest {
        ["members"] => ("/v1/members", {
            match only(req, Method::POST) {
                Ok(()) => ledger::create_member(state, who, body).await,
                Err(e) => Err(e),
            }
        }),
        ["members", id] => (
            "/v1/members/{id}",
            match only(req, Method::GET) {
                Ok(()) => ledger::get_member(state, who, id).await,
                Err(e) => Err(e),
            },
        ),
        ["accounts"] => (
            "/v1/accounts",
            match *m {
                Method::POST => ledger::create_account(state, who, body).await,
                Method::GET => ledger::list_accounts(state, who).await,
                _ => Err(ApiError::method_not_allowed("GET, POST")),
            },
        ),
        ["accounts", code] => (
            "/v1/accounts/{code}",
            match *m {
                Method::GET => ledger::get_account(state, who, code).await,
                Method::PATCH => ledger::patch_account(state, who, code, body).await,
                _ => Err(ApiError::method_not_allowed("GET, PATCH")),
            },
        ),
        ["accounts", code, "statement"] => (
            "/v1/accounts/{code}/statement",
            match only(req, Method::GET) {
                Ok(()) => ledger::statement(state, req, who, code).await,
                Err(e) => Err(e),
            },
        ),
        ["transfers"] => (
            "/v1/transfers",
            match only(req, Method::POST) {
                Ok(()) => ledger::create_transfer(state, req, who, body).await,
                Err(e) => Err(e),
            },
        ),
        ["transfers", id] => (
            "/v1/transfers/{id}",
            match only(req, Method::GET) {
                Ok(()) => ledger::get_transfer(state, who, id).await,
                Err(e) => Err(e),
            },
        ),
        ["transfers", id, verb @ ("accept" | "reject")] => {
            let route = if *verb == "accept" {
                "/v1/transfers/{id}/accept"
            } else {
                "/v1/transfers/{id}/reject"
            };
            (
                route,
                match only(req, Method::POST) {
                    Ok(()) => ledger::decide(state, who, id, *verb == "accept").await,
                    Err(e) => Err(e),
                },
            )
        }
        ["listings"] => (
            "/v1/listings",
            match *m {
                Method::POST => listings::create(state, who, body).await,
                Method::GET => listings::search(state, req).await,
                _ => Err(ApiError::method_not_allowed("GET, POST")),
            },
        ),
        ["listings", id] => (
            "/v1/listings/{id}",
            match *m {
                Method::GET => listings::get(state, id).await,
                Method::PATCH => listings::patch(state, who, id, body).await,
                Method::DELETE => listings::delete(state, who, id).await,
                _ => Err(ApiError::method_not_allowed("GET, PATCH, DELETE")),
            },
        ),
        ["audit"] => (
            "/v1/audit",
            match only(req, Method::GET) {
                Ok(()) => audit::audit(state, who).await,
                Err(e) => Err(e),
            },
        ),
        _ => (
            "other",
            Err(ApiError::not_found(format!("no route {}", req.path))),
        ),
    }
}

async fn readyz(state: &ApiState, req: &Request) -> Answer {
    only(req, Method::GET)?;
    match state.db("ping", state.ledger.ping()).await {
        Ok(()) => Ok(text("ready\n")),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("data layer not ready: {e}"),
        )),
    }
}

async fn authenticate(state: &ApiState, req: &Request) -> Result<Principal, ApiError> {
    let token = req
        .header(header::AUTHORIZATION.as_str())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer TOKEN"))?;
    if state.admin_token.matches(token) {
        return Ok(Principal::Admin);
    }
    let hash = sha256_hex(token.as_bytes());
    let cached = state
        .tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&hash)
        .cloned();
    if let Some(member) = cached {
        return Ok(Principal::Member(member));
    }
    match state
        .db("member_by_token", state.ledger.member_by_token(&hash))
        .await?
    {
        Some(member) => {
            let mut cache = state.tokens.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= TOKEN_CACHE {
                cache.clear();
            }
            cache.insert(hash, member.clone());
            Ok(Principal::Member(member))
        }
        None => Err(ApiError::unauthorized("invalid token")),
    }
}

/// Refuses anything but `method`.
fn only(req: &Request, method: Method) -> Result<(), ApiError> {
    if req.method == method {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed(method.as_str()))
    }
}

/// Refuses non-admins.
fn admin_only(who: &Principal) -> Result<(), ApiError> {
    match who {
        Principal::Admin => Ok(()),
        Principal::Member(_) => Err(ApiError::forbidden("only the admin may do this")),
    }
}

/// Reads a request body, refusing more than [`MAX_BODY_BYTES`] whether or not a length is sent.
async fn read_body(mut body: Body<'_>) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {MAX_BODY_BYTES} bytes"),
        )
    };
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("cannot read request body: {e}")))?;
        if out.len() + chunk.remaining() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            out.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(out)
}

/// Reads and parses a JSON body (unknown fields refused by the target type).
async fn read_json<T: DeserializeOwned>(body: Body<'_>) -> Result<T, ApiError> {
    let bytes = read_body(body).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn parse_query(raw: &str) -> HashMap<String, String> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` (space) in a query component.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2]))
            {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn text(body: impl Into<String>) -> Response {
    let mut r = Response::new(body.into().into());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_components_are_decoded() {
        let q = parse_query("q=bread+%26+cake&kind=offer&x");
        assert_eq!(q["q"], "bread & cake");
        assert_eq!(q["kind"], "offer");
        assert_eq!(q["x"], "");
        assert_eq!(percent_decode("50%"), "50%");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
