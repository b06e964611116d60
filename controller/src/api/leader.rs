//! `GET /v1/leader` (which controller leads, every controller's address) and the answer a
//! follower gives to a heartbeat: 503 with where the leader is, so the agent moves there.

use serde::Serialize;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::{json, only, Answer, ApiState, Request};

/// What `GET /v1/leader` answers.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderAnswer {
    /// The leader's API URL, when one is elected.
    pub leader: Option<String>,
    /// This controller's API URL.
    pub this: String,
    /// True when this controller leads.
    pub leading: bool,
    /// The revision of the leader key while this controller leads (its fencing token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub term: Option<i64>,
    /// Every controller's API URL.
    pub controllers: Vec<String>,
}

/// `GET /v1/leader`.
pub(super) fn serve(state: &ApiState, req: &Request) -> Answer {
    only(req, &[Method::GET])?;
    let answer = match state.nodes.leadership() {
        None => LeaderAnswer {
            leader: None,
            this: String::new(),
            leading: true,
            term: None,
            controllers: Vec::new(),
        },
        Some(l) => {
            let view = l.view();
            LeaderAnswer {
                leader: view.leader.map(|m| m.address),
                this: l.me().address.clone(),
                leading: view.term.is_some(),
                term: view.term,
                controllers: view.controllers,
            }
        }
    };
    Ok(json(StatusCode::OK, &answer))
}

/// 503 `{"error": ..., "leader": URL}`: heartbeats go to the leader.
pub fn not_leader(leader: Option<String>) -> Response {
    let message = match &leader {
        Some(l) => format!("this controller is not the leader; the leader is {l}"),
        None => "this controller is not the leader and no leader is elected yet".to_string(),
    };
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::json!({ "error": message, "leader": leader }),
    )
}
