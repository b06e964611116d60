//! Events for live files: when a board reports that a running container's file failed to
//! render, check or reload (a new `lastError` in its status), the controller records one
//! `FileFailed` event naming the container, the node and what failed (file and line).

use texu_api::{ContainerStatus, EventKind};

use crate::events::Events;

/// Records a `FileFailed` event for each file whose last error in `after` is new since
/// `before`.
pub fn record_failures(
    events: &Events,
    object: &str,
    node: &str,
    before: Option<&ContainerStatus>,
    after: &ContainerStatus,
) {
    for file in &after.files {
        let Some(error) = file.last_error.as_deref() else {
            continue;
        };
        let known = before
            .and_then(|b| b.files.iter().find(|f| f.path == file.path))
            .and_then(|f| f.last_error.as_deref());
        if known != Some(error) {
            events.record(
                EventKind::FileFailed,
                object,
                Some(node),
                format!("{}: {error}", file.path),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use texu_api::FileStatus;

    fn status(error: Option<&str>) -> ContainerStatus {
        ContainerStatus {
            files: vec![FileStatus {
                path: "/run/texu/httpd.conf".into(),
                last_error: error.map(String::from),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_new_file_error_is_one_event() {
        let events = Events::new();
        let bad = status(Some("check failed: Syntax error on line 3"));
        record_failures(
            &events,
            "container/proxy-0",
            "b1",
            Some(&status(None)),
            &bad,
        );
        record_failures(&events, "container/proxy-0", "b1", Some(&bad), &bad);
        let list = events.list(0);
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0].kind, EventKind::FileFailed);
        assert_eq!(
            list[0].message,
            "/run/texu/httpd.conf: check failed: Syntax error on line 3"
        );
        assert_eq!(list[0].node.as_deref(), Some("b1"));
    }
}
