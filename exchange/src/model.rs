//! The exchange's domain: members, accounts, transfers, statement entries and listings, with the
//! bounds every amount and name must respect.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The largest amount one transfer may move (in the currency's smallest unit).
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;
/// The largest magnitude a credit limit or maximum balance may have, so that no balance
/// arithmetic can overflow an i64.
pub const MAX_LIMIT: i64 = 1_000_000_000_000_000;
/// Longest member name, listing title, category or transfer description, in characters.
pub const MAX_TEXT: usize = 200;
/// Longest listing description, in characters.
pub const MAX_LONG_TEXT: usize = 4000;
/// Longest client-chosen transfer id or Idempotency-Key.
pub const MAX_ID: usize = 64;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A new random identifier: `prefix` and 16 random bytes in hex.
pub fn new_id(prefix: &str) -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// The sha256 of `text`, in hex: how member tokens and request bodies are kept.
pub fn sha256_hex(text: &[u8]) -> String {
    hex::encode(Sha256::digest(text))
}

/// True for ids clients may choose: 1 to [`MAX_ID`] of `A-Z a-z 0-9 - _ .`.
pub fn valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A member of the exchange: a person or group owning accounts and listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// sha256 of the member's API token; the token itself is never stored.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub token_hash: String,
}

/// Whether an account may take part in transfers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountState {
    Active,
    Locked,
}

/// A member's account: its balance and the limits that balance must stay within.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    pub code: String,
    pub member: String,
    pub balance: i64,
    /// The lowest balance allowed: 0 or negative.
    pub credit_limit: i64,
    /// The highest balance allowed, if any.
    pub maximum_balance: Option<i64>,
    pub state: AccountState,
    /// How many statement entries the account has; the last one's sequence number.
    pub entries: u64,
}

/// Why a transfer was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase", tag = "reason")]
pub enum Refusal {
    #[error("account {account} would go to {balance}, below its credit limit {limit}")]
    CreditLimit {
        account: String,
        balance: i64,
        limit: i64,
    },
    #[error("account {account} would go to {balance}, above its maximum balance {limit}")]
    MaximumBalance {
        account: String,
        balance: i64,
        limit: i64,
    },
    #[error("account {account} is locked")]
    Locked { account: String },
}

impl Account {
    /// The two accounts after moving `amount` from `payer` to `payee`, or why that is refused.
    pub fn apply(payer: &Account, payee: &Account, amount: i64) -> Result<(i64, i64), Refusal> {
        for a in [payer, payee] {
            if a.state == AccountState::Locked {
                return Err(Refusal::Locked {
                    account: a.code.clone(),
                });
            }
        }
        // Limits are bounded by MAX_LIMIT and amounts by MAX_AMOUNT, so a balance that stayed
        // within limits cannot overflow here; saturating keeps that true for any stored value.
        let debited = payer.balance.saturating_sub(amount);
        if debited < payer.credit_limit {
            return Err(Refusal::CreditLimit {
                account: payer.code.clone(),
                balance: debited,
                limit: payer.credit_limit,
            });
        }
        let credited = payee.balance.saturating_add(amount);
        if let Some(max) = payee.maximum_balance {
            if credited > max {
                return Err(Refusal::MaximumBalance {
                    account: payee.code.clone(),
                    balance: credited,
                    limit: max,
                });
            }
        }
        Ok((debited, credited))
    }

    /// True when the balance lies within the account's limits.
    pub fn within_limits(&self, balance: i64) -> bool {
        balance >= self.credit_limit && self.maximum_balance.is_none_or(|m| balance <= m)
    }
}

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferState {
    /// A payment request made by the payee, waiting for the payer's member.
    Pending,
    /// Moved: on both accounts' statements. Never changed again.
    Committed,
    /// The payer's member declined the payment request.
    Rejected,
    /// A limit or a locked account stopped it; no balance changed.
    Refused,
}

/// A movement of credit from one account to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transfer {
    pub id: String,
    pub payer: String,
    pub payee: String,
    pub amount: i64,
    pub description: String,
    pub state: TransferState,
    /// The member who made it.
    pub requested_by: String,
    pub created: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
    /// sha256 of what the request asked for, to tell a retry from a different request.
    #[serde(default)]
    pub fingerprint: String,
}

impl Transfer {
    /// The fingerprint of a request: who asked to move what from where to where.
    pub fn fingerprint_of(
        requested_by: &str,
        payer: &str,
        payee: &str,
        amount: i64,
        description: &str,
    ) -> String {
        let canonical = serde_json::json!([requested_by, payer, payee, amount, description]);
        sha256_hex(canonical.to_string().as_bytes())
    }
}

/// One line of an account's statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Position in the account's statement, from 1; also the paging cursor.
    pub seq: u64,
    pub transfer: String,
    pub counterparty: String,
    /// Positive when credit came in, negative when it went out.
    pub amount: i64,
    /// The balance after this entry.
    pub balance: i64,
    pub time: u64,
    #[serde(default)]
    pub description: String,
}

/// Whether a listing offers something or asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListingKind {
    Offer,
    Want,
}

/// An offer or a want posted by a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listing {
    pub id: String,
    pub member: String,
    pub kind: ListingKind,
    pub title: String,
    pub description: String,
    pub category: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<i64>,
    /// Milliseconds since the epoch after which the listing is hidden.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    pub created: u64,
}

impl Listing {
    /// True when the listing is still shown at `now` (ms since the epoch).
    pub fn visible(&self, now: u64) -> bool {
        self.expires.is_none_or(|e| e > now)
    }

    /// True when `query` (lowercase) occurs in the title, description or category.
    pub fn matches(&self, query: &str) -> bool {
        [&self.title, &self.description, &self.category]
            .iter()
            .any(|f| f.to_lowercase().contains(query))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(code: &str, balance: i64, limit: i64, max: Option<i64>) -> Account {
        Account {
            code: code.into(),
            member: "m".into(),
            balance,
            credit_limit: limit,
            maximum_balance: max,
            state: AccountState::Active,
            entries: 0,
        }
    }

    #[test]
    fn apply_names_the_limit_that_stops_a_transfer() {
        let a = account("a", 0, -10, None);
        let b = account("b", 0, 0, Some(5));
        assert_eq!(Account::apply(&a, &b, 5), Ok((-5, 5)));
        assert!(matches!(
            Account::apply(&a, &b, 6),
            Err(Refusal::MaximumBalance { .. })
        ));
        let b = account("b", 0, 0, None);
        assert!(matches!(
            Account::apply(&a, &b, 11),
            Err(Refusal::CreditLimit { balance: -11, .. })
        ));
    }

    #[test]
    fn client_ids_are_short_and_plain() {
        assert!(valid_client_id("tx-1.a_B"));
        assert!(!valid_client_id(""));
        assert!(!valid_client_id("a/b"));
        assert!(!valid_client_id(&"x".repeat(MAX_ID + 1)));
    }
}
