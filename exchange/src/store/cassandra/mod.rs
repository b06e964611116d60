//! The ledger on Apache Cassandra (the `scylla` driver): the two-partition transfer saga the
//! [store module](super) describes, with reservations, a state machine on the transfer row and
//! a recovery pass.
//!
//! Tables (created on start): `account_log` (partition = account code; static columns `account`
//! (JSON: member, limits, state), `balance`, `entry_count`, `held`, `incoming`, `version`; clustering
//! rows `('e', seq)` statement entries and `('m', transfer#attempt)` step markers), `transfers`
//! (`state`, `attempt`, `data` JSON), `journal` (transfers not yet final), `members`, `tokens`,
//! `listings`. Every change to an account's statics bumps `version` and is one conditional
//! batch `IF version = v` inside that partition, so the marker, the entry and the balance change
//! together or not at all.
//!
//! A transfer's row moves `journaled -> applying -> committed` or `journaled -> cancelling ->
//! refused` (or back to `pending` for an accepted payment request the payer cannot afford);
//! each move is an LWT on the row, so concurrent drivers (the request, its retry, a recovery
//! pass on any replica) agree on one decision. In `journaled`, each side is *reserved*
//! (`held`/`incoming` grow, so the limits hold whatever else commits meanwhile); in `applying`
//! the reservations become entries; in `cancelling` they are released (a missing marker is
//! written `released`, fencing a slow driver that has not reserved yet).
//!
//! Paxos rounds are what a transfer's time is made of (each costs a few round trips to a
//! quorum). A driver that wins a move knows the row without reading it back, the two sides of
//! an apply or a release go at once, and the accounts' existence is read at QUORUM (they are
//! never deleted): a transfer that meets no contention is 12 rounds one after the other (the
//! insert; two reservations of three each, two SERIAL reads and the batch; a move; the applies;
//! a move), where it was 20. An account step's reads stay SERIAL ([`account_step`] says why).
//!
//! Rooms: [`schema`] (connecting, the keyspace and tables), [`cql`] (running a statement and
//! reading its rows), [`account_step`] (one side of a transfer on its account partition),
//! [`transfers`] (the transfer row, the journal, the driver and recovery); members, accounts
//! and listings are plain rows, read and written here.

mod account_step;
mod cql;
mod schema;
mod transfers;

use std::time::Duration;

use async_trait::async_trait;
use scylla::client::caching_session::CachingSession;

use self::cql::{bigint, json, text, to_json, Read};
use super::{AccountChange, Ledger, LedgerError, Result, Submitted};
use crate::model::{Account, Entry, Listing, Member, Transfer};

/// Journaled transfers younger than this are left to the request driving them.
pub const RECOVERY_GRACE: Duration = Duration::from_secs(5);
/// Attempts before a step that keeps losing its LWT gives up.
const MAX_ATTEMPTS: u32 = 100;
/// Waits before each new try of a transfer after a cluster error (a timeout, a member that
/// stopped answering): a board that loses power costs its Paxos rounds a timeout or a broken
/// connection until the driver and the other members give up on it, and a transfer resumes
/// from its row, so trying again a little later finishes it instead of answering 503.
const CLUSTER_RETRIES: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_millis(900),
];

/// Runs `op`, and again after each of [`CLUSTER_RETRIES`] while it fails with an error of the
/// cluster rather than of the request. Only for operations that resume from what is stored
/// (a transfer's saga, a decision on one), never for a create that would find itself.
async fn patiently<T, F, Fut>(mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    for wait in CLUSTER_RETRIES {
        match op().await {
            Err(e @ LedgerError::Cassandra { .. }) => {
                tracing::warn!(error = %e, ?wait, "cluster error; trying again");
                tokio::time::sleep(wait).await;
            }
            done => return done,
        }
    }
    op().await
}

/// A [`Ledger`] on a Cassandra cluster.
pub struct CassandraLedger {
    session: CachingSession,
}

#[async_trait]
impl Ledger for CassandraLedger {
    async fn ping(&self) -> Result<()> {
        self.exec("ping", "SELECT release_version FROM system.local", ())
            .await?;
        Ok(())
    }

    async fn create_member(&self, member: &Member) -> Result<()> {
        let new_token = self
            .applies(
                "create member",
                "INSERT INTO tokens (hash, id) VALUES (?, ?) IF NOT EXISTS",
                (&member.token_hash, &member.id),
            )
            .await?;
        if !new_token {
            return Err(LedgerError::exists("member", &member.id));
        }
        self.exec(
            "create member",
            "INSERT INTO members (id, data) VALUES (?, ?)",
            (&member.id, to_json(member)),
        )
        .await?;
        Ok(())
    }

    async fn member(&self, id: &str) -> Result<Option<Member>> {
        self.record("read member", "SELECT data FROM members WHERE id = ?", id)
            .await
    }

    async fn member_by_token(&self, token_hash: &str) -> Result<Option<Member>> {
        let found = self
            .select(
                "read token",
                "SELECT id FROM tokens WHERE hash = ?",
                (token_hash,),
            )
            .await?;
        match found.first().and_then(|r| text(r, 0)) {
            Some(id) => self.member(&id).await,
            None => Ok(None),
        }
    }

    async fn create_account(&self, account: &Account) -> Result<()> {
        let created = self
            .applies(
                "create account",
                "INSERT INTO account_log (code, account, balance, entry_count, held, incoming, \
                 version) VALUES (?, ?, 0, 0, 0, 0, 1) IF NOT EXISTS",
                (&account.code, to_json(account)),
            )
            .await?;
        if created {
            Ok(())
        } else {
            Err(LedgerError::exists("account", &account.code))
        }
    }

    async fn account(&self, code: &str) -> Result<Option<Account>> {
        Ok(self.statics(code, Read::Serial).await?.map(|s| s.account))
    }

    async fn accounts(&self) -> Result<Vec<Account>> {
        let found = self
            .select(
                "list accounts",
                "SELECT DISTINCT code, account, balance, entry_count FROM account_log",
                (),
            )
            .await?;
        let mut accounts = Vec::new();
        for row in found {
            let (Some(code), Some(data)) = (text(&row, 0), text(&row, 1)) else {
                continue;
            };
            let mut a: Account = json(&code, &data)?;
            a.balance = bigint(&row, 2);
            a.entries = bigint(&row, 3) as u64;
            accounts.push(a);
        }
        accounts.sort_by(|a, b| a.code.cmp(&b.code));
        Ok(accounts)
    }

    async fn update_account(&self, code: &str, change: &AccountChange) -> Result<Account> {
        // The first try reads at QUORUM (its write is conditional on the version), a retry
        // after a lost condition at SERIAL, as a transfer's step does.
        let mut how = Read::Quorum;
        for _ in 0..MAX_ATTEMPTS {
            let s = self.existing(code, how).await?;
            let next = super::changed(&s.account, change)?;
            let updated = self
                .applies(
                    "update account",
                    "UPDATE account_log SET account = ?, version = ? WHERE code = ? IF version = ?",
                    (to_json(&next), s.version + 1, code, s.version),
                )
                .await?;
            if updated {
                return Ok(next);
            }
            how = Read::Serial;
        }
        Err(LedgerError::contention(
            format!("account {code}"),
            MAX_ATTEMPTS,
        ))
    }

    async fn submit(&self, transfer: Transfer) -> Result<Submitted> {
        let mut retry = false;
        patiently(|| {
            let again = std::mem::replace(&mut retry, true);
            self.submit_transfer(transfer.clone(), again)
        })
        .await
    }

    async fn decide(&self, id: &str, accept: bool) -> Result<Transfer> {
        patiently(|| self.decide_transfer(id, accept)).await
    }

    async fn transfer(&self, id: &str) -> Result<Option<Transfer>> {
        self.find_transfer(id).await
    }

    async fn transfers(&self) -> Result<Vec<Transfer>> {
        self.all_transfers().await
    }

    async fn statement(&self, code: &str, after: u64, limit: usize) -> Result<Vec<Entry>> {
        self.existing(code, Read::Quorum).await?;
        let found = self
            .select(
                "statement",
                "SELECT data FROM account_log WHERE code = ? AND kind = 'e' AND key > ? LIMIT ?",
                (code, format!("{after:020}"), limit.min(10_000) as i32),
            )
            .await?;
        found
            .iter()
            .filter_map(|r| text(r, 0))
            .map(|d| json(code, &d))
            .collect()
    }

    async fn in_flight(&self) -> Result<Vec<String>> {
        self.journaled_in_flight().await
    }

    async fn recover(&self) -> Result<usize> {
        self.recover_journal().await
    }

    async fn put_listing(&self, listing: &Listing) -> Result<()> {
        self.exec(
            "put listing",
            "INSERT INTO listings (id, data) VALUES (?, ?)",
            (&listing.id, to_json(listing)),
        )
        .await?;
        Ok(())
    }

    async fn listing(&self, id: &str) -> Result<Option<Listing>> {
        self.record("read listing", "SELECT data FROM listings WHERE id = ?", id)
            .await
    }

    async fn listings(&self) -> Result<Vec<Listing>> {
        let found = self
            .select("list listings", "SELECT id, data FROM listings", ())
            .await?;
        found
            .iter()
            .filter_map(|r| Some((text(r, 0)?, text(r, 1)?)))
            .map(|(id, d)| json(&id, &d))
            .collect()
    }

    async fn delete_listing(&self, id: &str) -> Result<bool> {
        self.applies(
            "delete listing",
            "DELETE FROM listings WHERE id = ? IF EXISTS",
            (id,),
        )
        .await
    }
}
