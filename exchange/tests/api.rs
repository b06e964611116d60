//! The HTTP contract against the real binary on the embedded store: authentication and
//! ownership, Idempotency-Key retries, a corpus of bad requests that change nothing, payment
//! requests, statements and their CSV, listings, health and metrics.

mod common;

use common::{account, audit, balances, member, statement, App, Backend, Client};
use serde_json::{json, Value};

/// Two members with one account each: `A` (ana, may go to -100) and `B` (bo, at most 50).
fn two_accounts(app: &App) -> (Client, Client, Client) {
    let admin = app.admin();
    let ana = member(&admin, "ana");
    let bo = member(&admin, "bo");
    account(&admin, &ana, "A", -100, None);
    account(&admin, &bo, "B", 0, Some(50));
    (admin, app.client(&ana.token), app.client(&bo.token))
}

fn transfer(payer: &str, payee: &str, amount: i64) -> Value {
    json!({ "payer": payer, "payee": payee, "amount": amount, "description": "bread" })
}

#[test]
fn calls_without_a_valid_token_get_401_and_members_act_only_on_their_own() {
    let app = App::start(Backend::File);
    let (admin, ana, bo) = two_accounts(&app);
    for client in [app.client(""), app.client("texu-member-forged")] {
        let r = client.get("/v1/accounts/A");
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(r.json()["error"].is_string());
        assert_eq!(
            client.post("/v1/transfers", &transfer("A", "B", 1)).status,
            401
        );
    }
    // bo paying from ana's account, reading it, or acting as admin.
    let r = bo.post(
        "/v1/transfers",
        &json!({ "payer": "A", "payee": "B", "amount": 5 }),
    );
    assert_eq!(
        r.status, 202,
        "bo asking ana is a payment request: {}",
        r.body
    );
    let third = member(&admin, "cy");
    account(&admin, &third, "C", -10, None);
    let r = bo.post("/v1/transfers", &transfer("A", "C", 5));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.json()["error"].is_string());
    assert_eq!(bo.get("/v1/accounts/A").status, 403);
    assert_eq!(bo.get("/v1/accounts/A/statement").status, 403);
    assert_eq!(bo.post("/v1/members", &json!({ "name": "x" })).status, 403);
    assert_eq!(bo.get("/v1/audit").status, 403);
    assert_eq!(ana.get("/v1/accounts/A").status, 200);
    assert_eq!(
        balances(&admin, &["A".into(), "B".into(), "C".into()]),
        [0, 0, 0]
    );
}

#[test]
fn a_retry_with_the_same_idempotency_key_makes_one_transfer_and_gets_the_same_answer() {
    let app = App::start(Backend::File);
    let (admin, ana, _) = two_accounts(&app);
    let body = transfer("A", "B", 7).to_string();
    let send = |body: &str, key: &str| {
        ana.try_send(
            "POST",
            "/v1/transfers",
            Some(body),
            &[("Idempotency-Key", key)],
        )
        .unwrap_or_else(|e| panic!("POST: {e}"))
    };
    let first = send(&body, "pay-1");
    assert_eq!(first.status, 201, "{}", first.body);
    let again = send(&body, "pay-1");
    assert_eq!(
        (again.status, again.body.as_str()),
        (201, first.body.as_str())
    );
    assert!(again.replayed);
    let different = send(&transfer("A", "B", 8).to_string(), "pay-1");
    assert_eq!(different.status, 409, "{}", different.body);
    assert!(different.json()["error"].is_string());
    assert_eq!(balances(&admin, &["A".into(), "B".into()]), [-7, 7]);
    assert_eq!(statement(&admin, "A").len(), 1);

    // A refused transfer's retry is refused the same way, without a second try at the ledger.
    let too_much = transfer("A", "B", 60).to_string();
    let r1 = send(&too_much, "pay-2");
    let r2 = send(&too_much, "pay-2");
    assert_eq!(r1.status, 422, "{}", r1.body);
    assert_eq!(r1.json()["details"]["refusal"]["reason"], "maximumBalance");
    assert_eq!((r2.status, r2.body), (r1.status, r1.body));

    // A client-chosen id works the same way.
    let with_id = json!({ "id": "tx-9", "payer": "A", "payee": "B", "amount": 3 });
    let a = ana.post("/v1/transfers", &with_id);
    let b = ana.post("/v1/transfers", &with_id);
    assert_eq!((a.status, b.status), (201, 201));
    assert_eq!(a.body, b.body);
    let mut other = with_id.clone();
    other["amount"] = json!(4);
    assert_eq!(ana.post("/v1/transfers", &other).status, 409);
    assert_eq!(balances(&admin, &["A".into(), "B".into()]), [-10, 10]);
    assert_eq!(audit(&admin)["ok"], true);
}

/// A request that must get `status`, with a JSON message, and change nothing.
struct BadRequest {
    what: &'static str,
    method: &'static str,
    path: &'static str,
    body: String,
    status: u16,
}

/// `request` is `METHOD PATH`; an empty body sends none.
fn bad(what: &'static str, request: &'static str, body: &str, status: u16) -> BadRequest {
    let (method, path) = request.split_once(' ').unwrap_or((request, "/"));
    BadRequest {
        what,
        method,
        path,
        body: body.to_string(),
        status,
    }
}

/// A bad `POST /v1/transfers`.
fn pay(what: &'static str, body: &str, status: u16) -> BadRequest {
    bad(what, "POST /v1/transfers", body, status)
}

/// A transfer of `amount` (as JSON text) from A to B.
fn amount(what: &'static str, amount: &str, status: u16) -> BadRequest {
    let body = format!(r#"{{"payer":"A","payee":"B","amount":{amount}}}"#);
    pay(what, &body, status)
}

/// A transfer of 1 from `payer` to `payee`.
fn between(what: &'static str, payer: &str, payee: &str, status: u16) -> BadRequest {
    let body = format!(r#"{{"payer":"{payer}","payee":"{payee}","amount":1}}"#);
    pay(what, &body, status)
}

#[test]
fn bad_requests_get_their_4xx_with_a_json_message_and_change_nothing() {
    let app = App::start(Backend::File);
    let (admin, ana, _) = two_accounts(&app);
    assert_eq!(
        ana.post("/v1/transfers", &transfer("A", "B", 10)).status,
        201
    );
    let before = (
        balances(&admin, &["A".into(), "B".into()]),
        audit(&admin),
        statement(&admin, "A"),
    );
    let huge = format!(
        "{{\"payer\":\"A\",\"payee\":\"B\",\"amount\":1,\"description\":\"{}\"}}",
        "x".repeat(70_000)
    );
    let corpus = [
        pay("malformed JSON", "{\"payer\":", 400),
        pay("not an object", "[1,2]", 400),
        pay(
            "unknown field",
            r#"{"payer":"A","payee":"B","amount":1,"fee":2}"#,
            400,
        ),
        pay("missing amount", r#"{"payer":"A","payee":"B"}"#, 400),
        amount("amount as text", r#""5""#, 400),
        amount("fractional amount", "1.5", 400),
        amount("amount beyond i64", "99999999999999999999", 400),
        amount("negative amount", "-5", 422),
        amount("zero amount", "0", 422),
        amount("oversized amount", "1000000000001", 422),
        between("unknown payee", "A", "NOPE", 422),
        between("unknown payer", "NOPE", "B", 422),
        between("paying yourself", "A", "A", 422),
        pay(
            "bad transfer id",
            r#"{"id":"a/b","payer":"A","payee":"B","amount":1}"#,
            422,
        ),
        pay("body over the limit", &huge, 413),
        bad(
            "positive credit limit",
            "POST /v1/accounts",
            r#"{"member":"x","creditLimit":5}"#,
            422,
        ),
        bad(
            "account of nobody",
            "POST /v1/accounts",
            r#"{"member":"m-none","creditLimit":0}"#,
            422,
        ),
        bad(
            "empty member name",
            "POST /v1/members",
            r#"{"name":"  "}"#,
            422,
        ),
        bad(
            "limit excluding the balance",
            "PATCH /v1/accounts/A",
            r#"{"creditLimit":0}"#,
            422,
        ),
        bad(
            "unknown account state",
            "PATCH /v1/accounts/A",
            r#"{"state":"frozen"}"#,
            400,
        ),
        bad(
            "statement page of 0",
            "GET /v1/accounts/A/statement?limit=0",
            "",
            400,
        ),
        bad(
            "statement cursor not a number",
            "GET /v1/accounts/A/statement?after=x",
            "",
            400,
        ),
        bad("unknown account", "GET /v1/accounts/NOPE", "", 404),
        bad(
            "answering an unknown transfer",
            "POST /v1/transfers/NOPE/accept",
            "",
            404,
        ),
        bad("wrong method", "DELETE /v1/transfers", "", 405),
        bad("unknown route", "GET /v1/nothing", "", 404),
    ];
    assert!(corpus.len() >= 15);
    for BadRequest {
        what,
        method,
        path,
        body,
        status,
    } in &corpus
    {
        let body = (!body.is_empty()).then_some(body.as_str());
        for (client, is_member) in [(&admin, false), (&ana, true)] {
            let r = client.send(method, path, body);
            // Admin-only routes answer a member 403 before looking at the body.
            if is_member && r.status == 403 {
                continue;
            }
            assert_eq!(r.status, *status, "{what}: {}", r.body);
            assert!(
                r.json()["error"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}: no JSON message in {}",
                r.body
            );
        }
    }
    let after = (
        balances(&admin, &["A".into(), "B".into()]),
        audit(&admin),
        statement(&admin, "A"),
    );
    assert_eq!(before, after, "a bad request changed something");
}

#[test]
fn a_payment_request_waits_for_the_payer_and_statements_agree_with_balances() {
    let app = App::start(Backend::File);
    let (admin, ana, bo) = two_accounts(&app);
    let codes = ["A".to_string(), "B".to_string()];
    // bo (payee) asks ana (payer) for 20.
    let asked = bo.post("/v1/transfers", &transfer("A", "B", 20));
    assert_eq!(asked.status, 202, "{}", asked.body);
    let id = asked.json()["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(asked.json()["state"], "pending");
    assert_eq!(
        balances(&admin, &codes),
        [0, 0],
        "pending changes no balance"
    );
    assert!(statement(&admin, "A").is_empty());
    assert_eq!(audit(&admin)["pending"], 1);
    // Only the payer's member answers it.
    assert_eq!(
        bo.send("POST", &format!("/v1/transfers/{id}/accept"), None)
            .status,
        403
    );
    let accepted = ana.expect(200, "POST", &format!("/v1/transfers/{id}/accept"), None);
    assert_eq!(accepted["state"], "committed");
    assert_eq!(balances(&admin, &codes), [-20, 20]);
    // Accepting again answers the same; rejecting a committed one is a conflict.
    assert_eq!(
        ana.expect(200, "POST", &format!("/v1/transfers/{id}/accept"), None)["state"],
        "committed"
    );
    assert_eq!(
        ana.send("POST", &format!("/v1/transfers/{id}/reject"), None)
            .status,
        409
    );

    let second = bo.post("/v1/transfers", &transfer("A", "B", 5)).json();
    let id2 = second["id"].as_str().unwrap_or_default().to_string();
    let rejected = ana.expect(200, "POST", &format!("/v1/transfers/{id2}/reject"), None);
    assert_eq!(rejected["state"], "rejected");
    assert_eq!(balances(&admin, &codes), [-20, 20]);
    assert_eq!(
        ana.get(&format!("/v1/transfers/{id2}")).json()["state"],
        "rejected"
    );

    // A request the payer cannot afford stays pending when accepted: 422 names the limit.
    let big = bo.post("/v1/transfers", &transfer("A", "B", 40)).json();
    let id3 = big["id"].as_str().unwrap_or_default().to_string();
    let r = ana.send("POST", &format!("/v1/transfers/{id3}/accept"), None);
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["details"]["reason"], "maximumBalance");
    assert_eq!(
        ana.get(&format!("/v1/transfers/{id3}")).json()["state"],
        "pending"
    );

    for amount in [3, 4, 5] {
        assert_eq!(
            ana.post("/v1/transfers", &transfer("A", "B", amount))
                .status,
            201
        );
    }
    assert_eq!(bo.post("/v1/transfers", &transfer("B", "A", 2)).status, 201);
    let bal = balances(&admin, &codes);
    assert_eq!(bal, [-30, 30]);
    for (code, balance) in codes.iter().zip(bal) {
        let entries = statement(&admin, code);
        let last = entries.last().map(|e| e["balance"].as_i64().unwrap_or(0));
        assert_eq!(last, Some(balance));
        let sum: i64 = entries
            .iter()
            .map(|e| e["amount"].as_i64().unwrap_or(0))
            .sum();
        assert_eq!(sum, balance);
        // The CSV export says the same, line by line.
        let csv = admin.send(
            "GET",
            &format!("/v1/accounts/{code}/statement?format=csv"),
            None,
        );
        assert_eq!(csv.status, 200);
        assert!(
            csv.content_type.starts_with("text/csv"),
            "{}",
            csv.content_type
        );
        let lines: Vec<&str> = csv.body.lines().collect();
        assert_eq!(
            lines[0],
            "seq,time,transfer,counterparty,amount,balance,description"
        );
        assert_eq!(lines.len(), entries.len() + 1);
        for (line, e) in lines[1..].iter().zip(&entries) {
            let cols: Vec<&str> = line.split(',').collect();
            assert_eq!(cols[2], e["transfer"].as_str().unwrap_or_default());
            assert_eq!(cols[4], e["amount"].to_string());
            assert_eq!(cols[5], e["balance"].to_string());
        }
        let csv_by_accept = admin
            .try_send(
                "GET",
                &format!("/v1/accounts/{code}/statement"),
                None,
                &[("Accept", "text/csv")],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(csv_by_accept.body, csv.body);
    }
    // Paging: one entry at a time walks the same statement.
    let mut after = 0;
    let mut paged = Vec::new();
    loop {
        let page = ana.expect(
            200,
            "GET",
            &format!("/v1/accounts/A/statement?after={after}&limit=1"),
            None,
        );
        paged.extend(page["entries"].as_array().cloned().unwrap_or_default());
        match page["next"].as_u64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(paged, statement(&admin, "A"));
    assert_eq!(audit(&admin)["ok"], true);
}

#[test]
fn accounts_can_be_locked_and_limits_changed_by_the_admin() {
    let app = App::start(Backend::File);
    let (admin, ana, _) = two_accounts(&app);
    let locked = admin.expect(
        200,
        "PATCH",
        "/v1/accounts/A",
        Some(&json!({ "state": "locked" })),
    );
    assert_eq!(locked["state"], "locked");
    let r = ana.post("/v1/transfers", &transfer("A", "B", 1));
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["details"]["refusal"]["reason"], "locked");
    admin.expect(
        200,
        "PATCH",
        "/v1/accounts/A",
        Some(&json!({ "state": "active", "creditLimit": -5 })),
    );
    assert_eq!(
        ana.post("/v1/transfers", &transfer("A", "B", 5)).status,
        201
    );
    assert_eq!(
        ana.post("/v1/transfers", &transfer("A", "B", 1)).status,
        422
    );
    let patched = admin.expect(
        200,
        "PATCH",
        "/v1/accounts/B",
        Some(&json!({ "maximumBalance": null })),
    );
    assert_eq!(patched["maximumBalance"], Value::Null);
    assert_eq!(
        ana.send("PATCH", "/v1/accounts/A", Some("{\"creditLimit\":-9}"))
            .status,
        403
    );
}

#[test]
fn listings_are_searchable_owned_and_hidden_once_expired() {
    let app = App::start(Backend::File);
    let (admin, ana, bo) = two_accounts(&app);
    let bread = ana.expect(
        201,
        "POST",
        "/v1/listings",
        Some(&json!({
            "kind": "offer", "title": "Sourdough bread", "description": "baked on Fridays",
            "category": "Food", "price": 12
        })),
    );
    bo.expect(
        201,
        "POST",
        "/v1/listings",
        Some(&json!({
            "kind": "want", "title": "Bike repair", "category": "Repairs"
        })),
    );
    let soon = json!({ "kind": "offer", "title": "Old", "category": "Food", "expires": 1 });
    assert_eq!(
        ana.post("/v1/listings", &soon).status,
        422,
        "expiry in the past"
    );
    let id = bread["id"].as_str().unwrap_or_default();
    let found = |q: &str| -> Vec<String> {
        ana.expect(200, "GET", &format!("/v1/listings?{q}"), None)["listings"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|l| l["title"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(found("q=FRIDAY"), ["Sourdough bread"]);
    assert_eq!(found("q=repairs"), ["Bike repair"]);
    assert_eq!(found("kind=want"), ["Bike repair"]);
    assert_eq!(found("category=food&kind=offer"), ["Sourdough bread"]);
    assert_eq!(found("q=bread+bike").len(), 0);
    assert_eq!(
        bo.send(
            "PATCH",
            &format!("/v1/listings/{id}"),
            Some("{\"price\":1}")
        )
        .status,
        403
    );
    assert_eq!(
        bo.send("DELETE", &format!("/v1/listings/{id}"), None)
            .status,
        403
    );
    let patched = ana.expect(
        200,
        "PATCH",
        &format!("/v1/listings/{id}"),
        Some(&json!({ "expires": 2 })),
    );
    assert_eq!(patched["expires"], 2);
    assert_eq!(found("q=bread").len(), 0, "expired listings are hidden");
    assert_eq!(ana.get(&format!("/v1/listings/{id}")).status, 404);
    ana.expect(
        200,
        "PATCH",
        &format!("/v1/listings/{id}"),
        Some(&json!({ "expires": null })),
    );
    assert_eq!(ana.get(&format!("/v1/listings/{id}")).status, 200);
    assert_eq!(
        admin
            .send("DELETE", &format!("/v1/listings/{id}"), None)
            .status,
        200
    );
    assert_eq!(ana.get(&format!("/v1/listings/{id}")).status, 404);
}

#[test]
fn health_readiness_and_metrics_answer_without_a_token() {
    let app = App::start(Backend::File);
    let (_, ana, _) = two_accounts(&app);
    assert_eq!(
        ana.post("/v1/transfers", &transfer("A", "B", 1)).status,
        201
    );
    assert_eq!(
        ana.post("/v1/transfers", &transfer("A", "B", 500)).status,
        422
    );
    let anon = app.client("");
    assert_eq!(anon.get("/healthz").status, 200);
    assert_eq!(anon.get("/readyz").status, 200);
    let metrics = anon.get("/metrics").body;
    for needle in [
        "texu_exchange_http_requests_total{route=\"/v1/transfers\",method=\"POST\",status=\"201\"} 1",
        "texu_exchange_transfers_total{outcome=\"committed\"} 1",
        "texu_exchange_transfers_total{outcome=\"refused\"} 1",
        "texu_exchange_http_request_duration_seconds_bucket",
        "texu_exchange_store_duration_seconds_count{op=\"submit\"} 2",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from:\n{metrics}");
    }
}
