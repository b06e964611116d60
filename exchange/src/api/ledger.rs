//! Handlers for members, accounts, statements and transfers.

use serde::{Deserialize, Deserializer, Serialize};
use warp::http::{header, StatusCode};

use super::{admin_only, json, read_json, Answer, ApiError, ApiState, Body, Principal, Request};
use crate::model::{
    new_id, now_ms, sha256_hex, valid_client_id, Account, AccountState, Entry, Member, Transfer,
    TransferState, MAX_AMOUNT, MAX_LIMIT, MAX_TEXT,
};
use crate::store::{AccountChange, LedgerError, Submitted};

/// Default and largest page of a statement.
const PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMember {
    name: String,
    #[serde(default)]
    email: Option<String>,
}

#[derive(Serialize)]
struct CreatedMember<'a> {
    id: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: &'a Option<String>,
    /// Shown once; only its hash is kept.
    token: &'a str,
}

fn check_text(field: &str, value: &str, max: usize, required: bool) -> Result<(), ApiError> {
    if required && value.trim().is_empty() {
        return Err(ApiError::unprocessable(format!(
            "{field} must not be empty"
        )));
    }
    if value.chars().count() > max {
        return Err(ApiError::unprocessable(format!(
            "{field} is longer than {max} characters"
        )));
    }
    Ok(())
}

pub(super) async fn create_member(state: &ApiState, who: &Principal, body: Body<'_>) -> Answer {
    admin_only(who)?;
    let new: NewMember = read_json(body).await?;
    check_text("name", &new.name, MAX_TEXT, true)?;
    if let Some(email) = &new.email {
        check_text("email", email, MAX_TEXT, true)?;
        if !email.contains('@') {
            return Err(ApiError::unprocessable("email must contain @"));
        }
    }
    let token = texu_controller::auth::Token::generate("texu-member-");
    let member = Member {
        id: new_id("m-"),
        name: new.name,
        email: new.email,
        token_hash: sha256_hex(token.secret().as_bytes()),
    };
    state
        .db("create_member", state.ledger.create_member(&member))
        .await?;
    Ok(json(
        StatusCode::CREATED,
        &CreatedMember {
            id: &member.id,
            name: &member.name,
            email: &member.email,
            token: token.secret(),
        },
    ))
}

pub(super) async fn get_member(state: &ApiState, who: &Principal, id: &str) -> Answer {
    if !who.may_act_for(id) {
        return Err(ApiError::forbidden("a member may read only itself"));
    }
    let mut member = state
        .db("member", state.ledger.member(id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("member {id} does not exist")))?;
    member.token_hash.clear();
    Ok(json(StatusCode::OK, &member))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewAccount {
    member: String,
    credit_limit: i64,
    #[serde(default)]
    maximum_balance: Option<i64>,
    /// A code of the admin's choosing; generated when absent.
    #[serde(default)]
    code: Option<String>,
}

/// `Some(x)` for a present field (also `null`), so `Option<Option<T>>` tells absent from null.
pub(super) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AccountPatch {
    #[serde(default)]
    credit_limit: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    maximum_balance: Option<Option<i64>>,
    #[serde(default)]
    state: Option<AccountState>,
}

fn check_limits(credit_limit: i64, maximum_balance: Option<i64>) -> Result<(), ApiError> {
    if !(-MAX_LIMIT..=0).contains(&credit_limit) {
        return Err(ApiError::unprocessable(format!(
            "creditLimit must be between -{MAX_LIMIT} and 0"
        )));
    }
    if let Some(max) = maximum_balance {
        if !(0..=MAX_LIMIT).contains(&max) {
            return Err(ApiError::unprocessable(format!(
                "maximumBalance must be between 0 and {MAX_LIMIT}"
            )));
        }
    }
    Ok(())
}

pub(super) async fn create_account(state: &ApiState, who: &Principal, body: Body<'_>) -> Answer {
    admin_only(who)?;
    let new: NewAccount = read_json(body).await?;
    check_limits(new.credit_limit, new.maximum_balance)?;
    if let Some(code) = &new.code {
        if !valid_client_id(code) {
            return Err(ApiError::unprocessable(
                "code must be 1-64 of A-Z a-z 0-9 - _ .",
            ));
        }
    }
    if state
        .db("member", state.ledger.member(&new.member))
        .await?
        .is_none()
    {
        return Err(ApiError::unprocessable(format!(
            "member {} does not exist",
            new.member
        )));
    }
    let account = Account {
        code: new.code.unwrap_or_else(|| new_id("A")[..13].to_uppercase()),
        member: new.member,
        balance: 0,
        credit_limit: new.credit_limit,
        maximum_balance: new.maximum_balance,
        state: AccountState::Active,
        entries: 0,
    };
    state
        .db("create_account", state.ledger.create_account(&account))
        .await?;
    Ok(json(StatusCode::CREATED, &account))
}

/// The account, if `who` may see it (404 otherwise, so codes cannot be probed).
async fn visible_account(
    state: &ApiState,
    who: &Principal,
    code: &str,
) -> Result<Account, ApiError> {
    match state.db("account", state.ledger.account(code)).await? {
        Some(a) if who.may_act_for(&a.member) => Ok(a),
        Some(_) => Err(ApiError::forbidden(format!(
            "account {code} belongs to another member"
        ))),
        None => Err(ApiError::not_found(format!(
            "account {code} does not exist"
        ))),
    }
}

pub(super) async fn list_accounts(state: &ApiState, who: &Principal) -> Answer {
    let mut accounts = state.db("accounts", state.ledger.accounts()).await?;
    accounts.retain(|a| who.may_act_for(&a.member));
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "accounts": accounts }),
    ))
}

pub(super) async fn get_account(state: &ApiState, who: &Principal, code: &str) -> Answer {
    Ok(json(
        StatusCode::OK,
        &visible_account(state, who, code).await?,
    ))
}

pub(super) async fn patch_account(
    state: &ApiState,
    who: &Principal,
    code: &str,
    body: Body<'_>,
) -> Answer {
    admin_only(who)?;
    let patch: AccountPatch = read_json(body).await?;
    let current = visible_account(state, who, code).await?;
    check_limits(
        patch.credit_limit.unwrap_or(current.credit_limit),
        patch.maximum_balance.unwrap_or(current.maximum_balance),
    )?;
    let change = AccountChange {
        credit_limit: patch.credit_limit,
        maximum_balance: patch.maximum_balance,
        state: patch.state,
    };
    let account = state
        .db("update_account", state.ledger.update_account(code, &change))
        .await?;
    Ok(json(StatusCode::OK, &account))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Statement<'a> {
    account: &'a str,
    balance: i64,
    entries: &'a [Entry],
    /// The cursor for the next page (`?after=`), absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<u64>,
}

pub(super) async fn statement(
    state: &ApiState,
    req: &Request,
    who: &Principal,
    code: &str,
) -> Answer {
    let number = |name: &str, default: u64| -> Result<u64, ApiError> {
        match req.query.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| ApiError::bad_request(format!("{name} must be a whole number"))),
        }
    };
    let after = number("after", 0)?;
    let limit = number("limit", PAGE as u64)?;
    if limit == 0 || limit > MAX_PAGE as u64 {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let csv = match req.query.get("format").map(String::as_str) {
        Some("csv") => true,
        Some("json") => false,
        Some(other) => return Err(ApiError::bad_request(format!("unknown format {other}"))),
        None => req
            .header(header::ACCEPT.as_str())
            .is_some_and(|a| a.contains("text/csv")),
    };
    let account = visible_account(state, who, code).await?;
    let entries = state
        .db(
            "statement",
            state.ledger.statement(code, after, limit as usize),
        )
        .await?;
    let next = entries
        .last()
        .map(|e| e.seq)
        .filter(|seq| *seq < account.entries);
    if csv {
        let mut r = warp::reply::Response::new(to_csv(&entries).into());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        if let Some(next) = next.and_then(|n| header::HeaderValue::from_str(&n.to_string()).ok()) {
            r.headers_mut().insert("x-next-cursor", next);
        }
        return Ok(r);
    }
    Ok(json(
        StatusCode::OK,
        &Statement {
            account: code,
            balance: account.balance,
            entries: &entries,
            next,
        },
    ))
}

/// The CSV header of a statement export.
pub const CSV_HEADER: &str = "seq,time,transfer,counterparty,amount,balance,description";

fn to_csv(entries: &[Entry]) -> String {
    let mut out = format!("{CSV_HEADER}\n");
    for e in entries {
        let description = e.description.replace('"', "\"\"");
        out.push_str(&format!(
            "{},{},{},{},{},{},\"{}\"\n",
            e.seq, e.time, e.transfer, e.counterparty, e.amount, e.balance, description
        ));
    }
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTransfer {
    #[serde(default)]
    id: Option<String>,
    payer: String,
    payee: String,
    amount: i64,
    #[serde(default)]
    description: String,
}

/// The response for a transfer in its current state.
fn transfer_answer(t: &Transfer, created: bool) -> Answer {
    match (t.state, &t.refusal) {
        (TransferState::Refused, Some(refusal)) => Err(ApiError::unprocessable(format!(
            "transfer refused: {refusal}"
        ))
        .with_details(serde_json::json!({ "transfer": t, "refusal": refusal }))),
        (TransferState::Pending, _) if created => Ok(json(StatusCode::ACCEPTED, t)),
        (TransferState::Committed, _) if created => Ok(json(StatusCode::CREATED, t)),
        _ => Ok(json(StatusCode::OK, t)),
    }
}

pub(super) async fn create_transfer(
    state: &ApiState,
    req: &Request,
    who: &Principal,
    body: Body<'_>,
) -> Answer {
    let new: NewTransfer = read_json(body).await?;
    let key = req.header("idempotency-key");
    if let Some(key) = key {
        if !valid_client_id(key) {
            return Err(ApiError::bad_request(
                "Idempotency-Key must be 1-64 of A-Z a-z 0-9 - _ .",
            ));
        }
    }
    if let Some(id) = &new.id {
        if !valid_client_id(id) {
            return Err(ApiError::unprocessable(
                "id must be 1-64 of A-Z a-z 0-9 - _ .",
            ));
        }
    }
    if new.amount <= 0 || new.amount > MAX_AMOUNT {
        return Err(ApiError::unprocessable(format!(
            "amount must be between 1 and {MAX_AMOUNT}"
        )));
    }
    if new.payer == new.payee {
        return Err(ApiError::unprocessable(
            "payer and payee are the same account",
        ));
    }
    check_text("description", &new.description, MAX_TEXT, false)?;
    let mut accounts = Vec::new();
    for code in [&new.payer, &new.payee] {
        match state.db("account", state.ledger.account(code)).await? {
            Some(a) => accounts.push(a),
            None => {
                return Err(ApiError::unprocessable(format!(
                    "account {code} does not exist"
                )))
            }
        }
    }
    let (payer, payee) = (&accounts[0], &accounts[1]);
    let initial = if who.may_act_for(&payer.member) {
        TransferState::Committed
    } else if who.may_act_for(&payee.member) {
        TransferState::Pending
    } else {
        return Err(ApiError::forbidden(format!(
            "neither {} nor {} is your account",
            new.payer, new.payee
        )));
    };
    let id = match (&new.id, key) {
        (Some(id), _) => id.clone(),
        (None, Some(key)) => format!(
            "k-{}",
            &sha256_hex(format!("{}\n{key}", who.id()).as_bytes())[..32]
        ),
        (None, None) => new_id("t-"),
    };
    let transfer = Transfer {
        fingerprint: Transfer::fingerprint_of(
            who.id(),
            &new.payer,
            &new.payee,
            new.amount,
            &new.description,
        ),
        id,
        payer: new.payer,
        payee: new.payee,
        amount: new.amount,
        description: new.description,
        state: initial,
        requested_by: who.id().to_string(),
        created: now_ms(),
        decided: None,
        refusal: None,
    };
    match state.db("submit", state.ledger.submit(transfer)).await {
        Ok(Submitted::New(t)) => {
            state.metrics.transfer(outcome(t.state));
            transfer_answer(&t, true)
        }
        Ok(Submitted::Repeated(t)) => {
            state.metrics.transfer("repeated");
            // The original answer: the transfer as it was made (or as it has been decided since).
            let mut answer = transfer_answer(&t, true);
            if let Ok(r) = &mut answer {
                r.headers_mut().insert(
                    "idempotent-replayed",
                    header::HeaderValue::from_static("true"),
                );
            }
            answer
        }
        Err(e @ LedgerError::IdReused { .. }) => {
            state.metrics.transfer("conflict");
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

fn outcome(state: TransferState) -> &'static str {
    match state {
        TransferState::Pending => "pending",
        TransferState::Committed => "committed",
        TransferState::Rejected => "rejected",
        TransferState::Refused => "refused",
    }
}

/// The transfer, if `who` is the admin or owns one of its accounts.
async fn visible_transfer(
    state: &ApiState,
    who: &Principal,
    id: &str,
) -> Result<(Transfer, Option<Account>), ApiError> {
    let t = state
        .db("transfer", state.ledger.transfer(id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("transfer {id} does not exist")))?;
    if *who == Principal::Admin {
        return Ok((t, None));
    }
    let payer = state.db("account", state.ledger.account(&t.payer)).await?;
    let payee = state.db("account", state.ledger.account(&t.payee)).await?;
    let owns = |a: &Option<Account>| a.as_ref().is_some_and(|a| who.may_act_for(&a.member));
    if owns(&payer) || owns(&payee) {
        Ok((t, payer))
    } else {
        Err(ApiError::forbidden(format!(
            "transfer {id} is not between your accounts"
        )))
    }
}

pub(super) async fn get_transfer(state: &ApiState, who: &Principal, id: &str) -> Answer {
    let (t, _) = visible_transfer(state, who, id).await?;
    Ok(json(StatusCode::OK, &t))
}

pub(super) async fn decide(state: &ApiState, who: &Principal, id: &str, accept: bool) -> Answer {
    let (t, payer) = visible_transfer(state, who, id).await?;
    let payer_member = payer.map(|a| a.member);
    if *who != Principal::Admin && payer_member.as_deref() != Some(who.id()) {
        return Err(ApiError::forbidden(format!(
            "only the payer's member may answer the payment request {}",
            t.id
        )));
    }
    let decided = state
        .db("decide", state.ledger.decide(id, accept))
        .await
        .inspect_err(|e| {
            if matches!(e, LedgerError::Refused(_)) {
                state.metrics.transfer("refused");
            }
        })?;
    state.metrics.transfer(outcome(decided.state));
    Ok(json(StatusCode::OK, &decided))
}
