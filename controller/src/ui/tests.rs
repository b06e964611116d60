//! The dashboard's files: what is served where, with which headers, and what the files avoid.

use std::collections::HashMap;

use warp::http::{header, HeaderMap, Method, StatusCode};

use super::*;

fn request(method: Method, path: &str) -> Request {
    Request {
        method,
        path: path.to_string(),
        query: HashMap::new(),
        headers: HeaderMap::new(),
        remote: None,
    }
}

fn get(rest: &[&str]) -> Response {
    let path = format!("/ui/{}", rest.join("/"));
    serve(&request(Method::GET, &path), rest).unwrap_or_else(|e| e.into_response())
}

/// The length of a response's body, which is always whole (a file built into the binary).
fn body_len(response: &Response) -> Option<u64> {
    use warp::hyper::body::Body as _;
    response.body().size_hint().exact()
}

#[test]
fn the_page_script_and_style_are_served_with_a_strict_policy() {
    for (rest, content_type) in [
        (&[][..], "text/html"),
        (&["app.js"][..], "text/javascript"),
        (&["style.css"][..], "text/css"),
        (&["icon.svg"][..], "image/svg+xml"),
    ] {
        let response = get(rest);
        assert_eq!(response.status(), StatusCode::OK, "/ui/{rest:?}");
        let headers = response.headers();
        let value = |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        assert!(
            value(header::CONTENT_TYPE).starts_with(content_type),
            "{rest:?}"
        );
        assert_eq!(
            value(header::CONTENT_SECURITY_POLICY),
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(value(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(value(header::X_FRAME_OPTIONS), "DENY");
        assert!(body_len(&response).is_some_and(|n| n > 0), "{rest:?}");
    }
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
    ] {
        assert!(CONTENT_SECURITY_POLICY.contains(directive), "{directive}");
    }
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
}

#[test]
fn other_paths_and_methods_are_refused() {
    assert_eq!(get(&["nope.js"]).status(), StatusCode::NOT_FOUND);
    assert_eq!(get(&["app.js", "x"]).status(), StatusCode::NOT_FOUND);
    let post = serve(&request(Method::POST, "/ui"), &[]).expect_err("POST /ui");
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    let head = serve(&request(Method::HEAD, "/ui/app.js"), &["app.js"]).expect("HEAD");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(body_len(&head), Some(0));
}

/// The policy forbids inline script and style, so the page must hold none: everything it runs
/// comes from app.js.
#[test]
fn the_page_holds_no_inline_script_or_style() {
    let page = include_str!("static/index.html").to_lowercase();
    let scripts: Vec<&str> = page.split("<script").skip(1).collect();
    assert_eq!(scripts.len(), 1, "one script tag, for app.js");
    assert!(scripts[0].trim_start().starts_with("src=\"/ui/app.js\""));
    assert!(scripts[0].contains("></script>"), "the script tag is empty");
    assert!(!page.contains("<style"), "no inline style sheet");
    assert!(!page.contains(" style="), "no style attributes");
    assert!(!page.contains("javascript:"));
    for tag in page.split('<').skip(1) {
        let head = tag.split('>').next().unwrap_or_default();
        for attribute in head.split_whitespace().skip(1) {
            assert!(!attribute.starts_with("on"), "inline handler in <{head}>");
        }
    }
}

/// Strings from the API (a board names things) reach the page as text only.
#[test]
fn the_script_never_writes_markup() {
    let script = include_str!("static/app.js");
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "createContextualFragment",
        "localStorage",
    ] {
        assert!(!script.contains(sink), "app.js uses {sink}");
    }
    assert!(
        script.contains("sessionStorage"),
        "the token is kept per tab"
    );
}
