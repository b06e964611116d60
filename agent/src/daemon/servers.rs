//! The controllers an agent knows and the one its requests go to now: the next when the
//! current one does not answer, the leader when a follower names it, and new ones as join and
//! heartbeat answers list them.

/// Every controller's URL and which one requests go to.
#[derive(Debug, Default)]
pub struct Servers {
    state: std::sync::Mutex<(Vec<String>, usize)>,
}

impl Servers {
    /// The list in `servers` (`http://HOST:PORT`, comma separated); the first is current.
    pub fn new(servers: &str) -> Servers {
        let list: Vec<String> = servers
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_string())
            .filter(|s| !s.is_empty())
            .collect();
        Servers {
            state: std::sync::Mutex::new((list, 0)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut (Vec<String>, usize)) -> T) -> T {
        match self.state.lock() {
            Ok(mut s) => f(&mut s),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// The controller requests go to now.
    pub fn current(&self) -> String {
        self.with(|(list, i)| list.get(*i).cloned().unwrap_or_default())
    }

    /// How many controllers it knows.
    pub fn len(&self) -> usize {
        self.with(|(list, _)| list.len())
    }

    /// True when it knows none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `failed` did not answer: the next one becomes current (unless another request moved
    /// on already).
    pub fn failed(&self, failed: &str) {
        self.with(|(list, i)| {
            if list.get(*i).map(String::as_str) == Some(failed) && !list.is_empty() {
                *i = (*i + 1) % list.len();
                tracing::warn!(from = failed, to = %list[*i], "controller does not answer; trying another");
            }
        });
    }

    /// Requests go to `server` from now on (added to the list if it is new).
    pub fn prefer(&self, server: &str) {
        let server = server.trim_end_matches('/').to_string();
        self.with(|(list, i)| {
            let at = match list.iter().position(|s| *s == server) {
                Some(at) => at,
                None => {
                    list.push(server.clone());
                    list.len() - 1
                }
            };
            if *i != at {
                tracing::info!(to = %server, "moving to the leading controller");
                *i = at;
            }
        });
    }

    /// Adds controllers a join or heartbeat answer named.
    pub fn learn(&self, servers: &[String]) {
        self.with(|(list, _)| {
            for s in servers {
                let s = s.trim_end_matches('/');
                if !s.is_empty() && !list.iter().any(|known| known == s) {
                    tracing::info!(controller = s, "learned of another controller");
                    list.push(s.to_string());
                }
            }
        });
    }
}

/// The controllers an answer names (`controllers`), if any.
pub(crate) fn named_controllers(v: &serde_json::Value) -> Vec<String> {
    v["controllers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .filter(|s| s.starts_with("http://") || s.starts_with("https://"))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_controller_is_skipped_and_a_named_leader_preferred() {
        let s = Servers::new("http://a:1, http://b:2/,");
        assert_eq!((s.current().as_str(), s.len()), ("http://a:1", 2));
        s.failed("http://a:1");
        assert_eq!(s.current(), "http://b:2");
        // A late failure report about a controller already left behind changes nothing.
        s.failed("http://a:1");
        assert_eq!(s.current(), "http://b:2");
        s.failed("http://b:2");
        assert_eq!(s.current(), "http://a:1", "round and round");
        s.prefer("http://c:3/");
        assert_eq!((s.current().as_str(), s.len()), ("http://c:3", 3));
        s.learn(&["http://a:1".into(), "http://d:4".into(), String::new()]);
        assert_eq!(s.len(), 4, "only new, non-empty addresses are added");
        assert_eq!(s.current(), "http://c:3", "learning does not move");
    }

    #[test]
    fn only_urls_count_as_controllers() {
        let v =
            serde_json::json!({ "controllers": ["http://a:1", "file:///etc", 7, "https://b:2"] });
        assert_eq!(named_controllers(&v), vec!["http://a:1", "https://b:2"]);
        assert!(named_controllers(&serde_json::json!({ "result": "ok" })).is_empty());
    }
}
