//! The ledger's data layer: the [`Ledger`] trait the HTTP API uses, and its backends.
//!
//! # Backends
//!
//! - `file:PATH` (default) and `etcd://HOST:PORT,...` share one implementation, [`kv::KvLedger`],
//!   over Texu's key-value store (an embedded redb file with group commit, or a real etcd). A
//!   transfer is **one** guarded transaction: it compares the mod revisions of both accounts and
//!   of the transfer's own key (absent), then writes both accounts, both statement entries and
//!   the transfer at one revision. A conflict (another transfer touched an account in between)
//!   re-reads and retries. Nothing is ever half-done, so these backends have nothing in flight.
//!
//! # Designed for Cassandra: two partitions per transfer
//!
//! Cassandra has no multi-partition transaction; lightweight transactions (LWT, Paxos) are
//! linearizable per partition only. The trait is therefore shaped around *operations* (submit a
//! transfer, decide a payment request, recover) rather than around reads and writes, so a
//! backend can run each operation as a small saga:
//!
//! 1. **Journal first.** An index row in `journal`, then `INSERT INTO transfers ... IF NOT
//!    EXISTS` with state `journaled` and the request's fingerprint. The transfer id is the
//!    idempotency key: a retry finds the row and answers from it (same fingerprint), or is
//!    refused as a conflict (different one). A retry of a transfer still in flight drives it on.
//! 2. **Reserve both sides.** Each account is one partition of `account_log`: static columns
//!    hold the balance, the entry count, `held` (reserved debits), `incoming` (reserved credits)
//!    and a `version`; clustering rows hold statement entries and one marker row per transfer
//!    attempt. One conditional batch `IF version = v` changes the statics and writes the marker
//!    (and the entry) together. The payer's reservation checks
//!    `balance - held - amount >= creditLimit`, the payee's
//!    `balance + incoming + amount <= maximumBalance`; a lost race re-reads and retries.
//! 3. **Decide once.** An LWT on the transfer row moves it `journaled -> applying` (both
//!    reserved) or `journaled -> cancelling` (a limit refused one side). Whichever driver wins,
//!    every other one follows the row's state.
//! 4. **Apply or release.** In `applying`, each side's reservation becomes a statement entry
//!    (marker `reserved -> applied`); in `cancelling` it is released (`reserved -> released`;
//!    a missing marker is written `released`, which fences a slow driver that has not reserved
//!    yet). Then `applying -> committed` or `cancelling -> refused` (an accepted payment request
//!    goes back to `pending`), and the journal row is deleted.
//!
//! A crash between steps leaves a non-final row in `journal`. The **recovery pass** (at start
//! and every few seconds, on every replica) drives each one older than a grace period through
//! the same steps. Every step is conditional on the marker of that transfer attempt, so running
//! it twice, or on two replicas at once, changes nothing more: no transfer is lost, doubled or
//! left in flight. `in_flight` lists the non-final journal rows for `/v1/audit`. Reads and
//! writes use QUORUM, conditions SERIAL.

pub mod cassandra;
pub mod kv;

use async_trait::async_trait;

use crate::model::{Account, AccountState, Entry, Listing, Member, Refusal, Transfer};

/// A ledger result.
pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

/// What can go wrong in the data layer.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{what} {id} does not exist")]
    NotFound { what: &'static str, id: String },
    #[error("{what} {id} already exists")]
    Exists { what: &'static str, id: String },
    /// The transfer id (or Idempotency-Key) was used before for a different request.
    #[error("transfer {id} already exists with a different request")]
    IdReused { id: String },
    /// Accepting or rejecting a transfer that is not a pending payment request.
    #[error("transfer {id} is {state:?}, not pending")]
    NotPending {
        id: String,
        state: crate::model::TransferState,
    },
    /// A limit change the account's current balance would violate.
    #[error(transparent)]
    Refused(Refusal),
    /// Too many concurrent writers kept winning over this one.
    #[error("gave up after {attempts} conflicting attempts on {what}")]
    Contention { what: String, attempts: u32 },
    /// The backing store failed or could not be reached.
    #[error("the data layer failed")]
    Store(#[source] texu_controller::store::StoreError),
    /// Cassandra refused a request or could not be reached.
    #[error("cassandra ({op}) failed")]
    Cassandra {
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Stored records contradict each other (a bug, never a user's mistake).
    #[error("inconsistent ledger: {what}")]
    Inconsistent { what: String },
    /// A stored record could not be decoded.
    #[error("stored record {key} is unreadable")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

impl LedgerError {
    /// `what` `id` does not exist.
    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        LedgerError::NotFound {
            what,
            id: id.into(),
        }
    }
    /// `what` `id` exists already.
    pub fn exists(what: &'static str, id: impl Into<String>) -> Self {
        LedgerError::Exists {
            what,
            id: id.into(),
        }
    }
    /// Gave up on `what` after `attempts` lost races.
    pub fn contention(what: impl Into<String>, attempts: u32) -> Self {
        LedgerError::Contention {
            what: what.into(),
            attempts,
        }
    }
}

impl From<texu_controller::store::StoreError> for LedgerError {
    fn from(e: texu_controller::store::StoreError) -> Self {
        LedgerError::Store(e)
    }
}

/// What submitting a transfer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Stored now, in its final state for this request (committed, pending or refused).
    New(Transfer),
    /// The same request was made before; this is what it produced (possibly decided since).
    Repeated(Transfer),
}

/// A change to an account's limits or state (admin).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountChange {
    pub credit_limit: Option<i64>,
    /// `Some(None)` removes the maximum.
    pub maximum_balance: Option<Option<i64>>,
    pub state: Option<AccountState>,
}

/// `account` with `change` applied, or the limit its current balance would break.
pub fn changed(account: &Account, change: &AccountChange) -> Result<Account> {
    let mut next = account.clone();
    if let Some(limit) = change.credit_limit {
        next.credit_limit = limit;
    }
    if let Some(max) = change.maximum_balance {
        next.maximum_balance = max;
    }
    if let Some(state) = change.state {
        next.state = state;
    }
    if next.balance < next.credit_limit {
        return Err(LedgerError::Refused(Refusal::CreditLimit {
            account: next.code.clone(),
            balance: next.balance,
            limit: next.credit_limit,
        }));
    }
    if let Some(max) = next.maximum_balance.filter(|m| next.balance > *m) {
        return Err(LedgerError::Refused(Refusal::MaximumBalance {
            account: next.code.clone(),
            balance: next.balance,
            limit: max,
        }));
    }
    Ok(next)
}

/// The data layer behind the API. Every method is safe to call concurrently from many
/// requests and many replicas of the app.
#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Succeeds when the data layer answers.
    async fn ping(&self) -> Result<()>;

    async fn create_member(&self, member: &Member) -> Result<()>;
    async fn member(&self, id: &str) -> Result<Option<Member>>;
    /// The member whose token has this sha256 hash.
    async fn member_by_token(&self, token_hash: &str) -> Result<Option<Member>>;

    async fn create_account(&self, account: &Account) -> Result<()>;
    async fn account(&self, code: &str) -> Result<Option<Account>>;
    async fn accounts(&self) -> Result<Vec<Account>>;
    /// Applies a limit or state change; refused when the current balance would break a limit.
    async fn update_account(&self, code: &str, change: &AccountChange) -> Result<Account>;

    /// Stores a new transfer: `Committed` moves the credit now (or is stored `Refused` with the
    /// reason), `Pending` records a payment request. Idempotent by `transfer.id` and
    /// `transfer.fingerprint`.
    async fn submit(&self, transfer: Transfer) -> Result<Submitted>;
    /// Accepts (commits, or refuses with the limit and stays pending) or rejects a pending
    /// payment request. Deciding again the way it was decided answers the transfer as it is.
    async fn decide(&self, id: &str, accept: bool) -> Result<Transfer>;
    async fn transfer(&self, id: &str) -> Result<Option<Transfer>>;
    /// Every transfer (for the audit).
    async fn transfers(&self) -> Result<Vec<Transfer>>;
    /// Statement entries with `seq > after`, at most `limit`, oldest first.
    async fn statement(&self, code: &str, after: u64, limit: usize) -> Result<Vec<Entry>>;

    /// Transfers started but neither finished nor cancelled (backends with multi-step
    /// transfers); `/v1/audit` reports them.
    async fn in_flight(&self) -> Result<Vec<String>>;
    /// Completes or cancels half-done transfers; returns how many it settled.
    async fn recover(&self) -> Result<usize>;

    async fn put_listing(&self, listing: &Listing) -> Result<()>;
    async fn listing(&self, id: &str) -> Result<Option<Listing>>;
    async fn listings(&self) -> Result<Vec<Listing>>;
    /// Removes a listing; false when it did not exist.
    async fn delete_listing(&self, id: &str) -> Result<bool>;
}
