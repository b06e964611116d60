//! The web dashboard at `/ui`: a page, a script and a style sheet built into the binary.
//!
//! The page itself needs no token and holds no cluster data: its script asks for the admin
//! token once, keeps it in `sessionStorage`, and reads everything from the `/v1` API with it
//! (lists, then `?watch=true` streams), so the page shows nothing to a visitor without the token.
//! Every answer carries a strict Content-Security-Policy: scripts and styles only from these
//! files (no inline script, no `eval`), requests only to this controller, no frames.

use warp::http::{header, HeaderValue, Method, StatusCode};
use warp::reply::Response;

use crate::api::{ApiError, Request};

/// The policy every `/ui` answer carries.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The dashboard's files: path under `/ui`, content type, contents.
const FILES: &[(&str, &str, &str)] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_str!("static/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("static/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("static/style.css"),
    ),
    ("icon.svg", "image/svg+xml", include_str!("static/icon.svg")),
];

/// Answers `GET /ui`, `/ui/app.js`, `/ui/style.css` and `/ui/icon.svg` (`rest` is the path
/// after `ui`, in segments). No token needed: the files hold no cluster data.
pub fn serve(req: &Request, rest: &[&str]) -> Result<Response, ApiError> {
    if req.method != Method::GET && req.method != Method::HEAD {
        return Err(ApiError::method_not_allowed("GET, HEAD"));
    }
    let name = match rest {
        [] => "",
        [name] => name,
        _ => return Err(ApiError::not_found(format!("no route {}", req.path))),
    };
    let (_, content_type, body) = FILES
        .iter()
        .find(|(path, _, _)| *path == name)
        .ok_or_else(|| ApiError::not_found(format!("no route {}", req.path)))?;
    let mut response = if req.method == Method::HEAD {
        Response::new(Default::default())
    } else {
        Response::new((*body).into())
    };
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, *content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        // A new controller binary brings new files: never run yesterday's script.
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    Ok(response)
}

#[cfg(test)]
mod tests;
