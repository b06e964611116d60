//! Handlers for listings: members' offers and wants, searchable, hidden once expired.

use serde::Deserialize;
use warp::http::StatusCode;

use super::ledger::present;
use super::{json, read_json, Answer, ApiError, ApiState, Body, Principal, Request};
use crate::model::{new_id, now_ms, Listing, ListingKind, MAX_AMOUNT, MAX_LONG_TEXT, MAX_TEXT};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewListing {
    kind: ListingKind,
    title: String,
    #[serde(default)]
    description: String,
    category: String,
    #[serde(default)]
    price: Option<i64>,
    /// Milliseconds since the epoch.
    #[serde(default)]
    expires: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListingPatch {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default, deserialize_with = "present")]
    price: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    expires: Option<Option<u64>>,
}

fn validate(l: &Listing) -> Result<(), ApiError> {
    for (field, value, max) in [
        ("title", &l.title, MAX_TEXT),
        ("category", &l.category, MAX_TEXT),
    ] {
        if value.trim().is_empty() || value.chars().count() > max {
            return Err(ApiError::unprocessable(format!(
                "{field} must be 1 to {max} characters"
            )));
        }
    }
    if l.description.chars().count() > MAX_LONG_TEXT {
        return Err(ApiError::unprocessable(format!(
            "description is longer than {MAX_LONG_TEXT} characters"
        )));
    }
    if l.price.is_some_and(|p| !(0..=MAX_AMOUNT).contains(&p)) {
        return Err(ApiError::unprocessable(format!(
            "price must be between 0 and {MAX_AMOUNT}"
        )));
    }
    Ok(())
}

pub(super) async fn create(state: &ApiState, who: &Principal, body: Body<'_>) -> Answer {
    let Principal::Member(member) = who else {
        return Err(ApiError::forbidden(
            "listings belong to members: post with a member's token",
        ));
    };
    let new: NewListing = read_json(body).await?;
    let now = now_ms();
    let listing = Listing {
        id: new_id("l-"),
        member: member.id.clone(),
        kind: new.kind,
        title: new.title,
        description: new.description,
        category: new.category,
        price: new.price,
        expires: new.expires,
        created: now,
    };
    validate(&listing)?;
    if !listing.visible(now) {
        return Err(ApiError::unprocessable("expires lies in the past"));
    }
    state
        .db("put_listing", state.ledger.put_listing(&listing))
        .await?;
    Ok(json(StatusCode::CREATED, &listing))
}

pub(super) async fn search(state: &ApiState, req: &Request) -> Answer {
    let kind = match req.query.get("kind").map(String::as_str) {
        None | Some("") => None,
        Some("offer") => Some(ListingKind::Offer),
        Some("want") => Some(ListingKind::Want),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "kind must be offer or want, not {other}"
            )))
        }
    };
    let q = req.query.get("q").map(|q| q.to_lowercase());
    let category = req.query.get("category").map(|c| c.to_lowercase());
    let now = now_ms();
    let mut found: Vec<Listing> = state
        .db("listings", state.ledger.listings())
        .await?
        .into_iter()
        .filter(|l| l.visible(now))
        .filter(|l| kind.is_none_or(|k| l.kind == k))
        .filter(|l| {
            category
                .as_ref()
                .is_none_or(|c| l.category.to_lowercase() == *c)
        })
        .filter(|l| q.as_ref().is_none_or(|q| l.matches(q)))
        .collect();
    found.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "listings": found }),
    ))
}

async fn visible(state: &ApiState, id: &str) -> Result<Listing, ApiError> {
    match state.db("listing", state.ledger.listing(id)).await? {
        Some(l) if l.visible(now_ms()) => Ok(l),
        _ => Err(ApiError::not_found(format!("listing {id} does not exist"))),
    }
}

/// The listing, if `who` owns it (the admin may act on any).
async fn owned(state: &ApiState, who: &Principal, id: &str) -> Result<Listing, ApiError> {
    let listing = state
        .db("listing", state.ledger.listing(id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("listing {id} does not exist")))?;
    if who.may_act_for(&listing.member) {
        Ok(listing)
    } else {
        Err(ApiError::forbidden(format!(
            "listing {id} belongs to another member"
        )))
    }
}

pub(super) async fn get(state: &ApiState, id: &str) -> Answer {
    Ok(json(StatusCode::OK, &visible(state, id).await?))
}

pub(super) async fn patch(state: &ApiState, who: &Principal, id: &str, body: Body<'_>) -> Answer {
    let patch: ListingPatch = read_json(body).await?;
    let mut listing = owned(state, who, id).await?;
    if let Some(v) = patch.title {
        listing.title = v;
    }
    if let Some(v) = patch.description {
        listing.description = v;
    }
    if let Some(v) = patch.category {
        listing.category = v;
    }
    if let Some(v) = patch.price {
        listing.price = v;
    }
    if let Some(v) = patch.expires {
        listing.expires = v;
    }
    validate(&listing)?;
    state
        .db("put_listing", state.ledger.put_listing(&listing))
        .await?;
    Ok(json(StatusCode::OK, &listing))
}

pub(super) async fn delete(state: &ApiState, who: &Principal, id: &str) -> Answer {
    owned(state, who, id).await?;
    if state
        .db("delete_listing", state.ledger.delete_listing(id))
        .await?
    {
        Ok(json(StatusCode::OK, &serde_json::json!({ "deleted": id })))
    } else {
        Err(ApiError::not_found(format!("listing {id} does not exist")))
    }
}
