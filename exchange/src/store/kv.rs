//! The ledger over Texu's key-value store (embedded redb file or etcd): every transfer is one
//! guarded transaction over both accounts, both statement entries and the transfer record.
//!
//! Keys: `m/{id}` member, `tok/{sha256}` member id by token hash, `a/{code}` account,
//! `e/{code}/{seq:020}` statement entry, `t/{id}` transfer, `l/{id}` listing.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use texu_controller::store::{KeyValue, Store, Txn};

use super::{AccountChange, Ledger, LedgerError, Result, Submitted};
use crate::model::{now_ms, Account, Entry, Listing, Member, Refusal, Transfer, TransferState};

/// Attempts before a transaction that keeps losing to concurrent ones gives up.
const MAX_ATTEMPTS: u32 = 200;

/// A [`Ledger`] on a [`Store`].
pub struct KvLedger {
    store: Arc<dyn Store>,
}

fn member_key(id: &str) -> String {
    format!("m/{id}")
}
fn token_key(hash: &str) -> String {
    format!("tok/{hash}")
}
fn account_key(code: &str) -> String {
    format!("a/{code}")
}
fn entry_key(code: &str, seq: u64) -> String {
    format!("e/{code}/{seq:020}")
}
fn transfer_key(id: &str) -> String {
    format!("t/{id}")
}
fn listing_key(id: &str) -> String {
    format!("l/{id}")
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail (no maps with non-string keys).
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(&kv.value).map_err(|source| LedgerError::Corrupt {
        key: kv.key.clone(),
        source,
    })
}

/// A record and the mod revision it was read at.
struct Read<T> {
    value: T,
    revision: i64,
}

impl KvLedger {
    /// A ledger keeping its records in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    async fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Read<T>>> {
        match self.store.get(key).await? {
            Some(kv) => Ok(Some(Read {
                value: decode(&kv)?,
                revision: kv.mod_revision,
            })),
            None => Ok(None),
        }
    }

    async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        Ok(self.read(key).await?.map(|r| r.value))
    }

    async fn list<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        self.store
            .range(prefix)
            .await?
            .kvs
            .iter()
            .map(decode)
            .collect()
    }

    async fn account_read(&self, code: &str) -> Result<Read<Account>> {
        self.read(&account_key(code))
            .await?
            .ok_or_else(|| LedgerError::not_found("account", code))
    }

    /// Runs `txn`; false when a compare failed.
    async fn commit(&self, txn: Txn) -> Result<bool> {
        Ok(self.store.txn(txn).await?.succeeded)
    }

    /// Drops history the ledger never watches, up to the store's current revision.
    pub async fn compact(&self) -> Result<()> {
        let revision = self.store.revision().await?;
        if revision > 1 {
            self.store.compact(revision).await?;
        }
        Ok(())
    }

    /// Adds the writes that move `t.amount` from payer to payee to `txn`; `Err` says which
    /// limit stops it.
    fn move_credit(
        txn: Txn,
        t: &Transfer,
        payer: &Read<Account>,
        payee: &Read<Account>,
        now: u64,
    ) -> std::result::Result<Txn, Refusal> {
        let (debited, credited) = Account::apply(&payer.value, &payee.value, t.amount)?;
        let mut txn = txn
            .when_mod_revision(account_key(&t.payer), payer.revision)
            .when_mod_revision(account_key(&t.payee), payee.revision);
        for (account, counterparty, amount, balance) in [
            (&payer.value, &t.payee, -t.amount, debited),
            (&payee.value, &t.payer, t.amount, credited),
        ] {
            let seq = account.entries + 1;
            let entry = Entry {
                seq,
                transfer: t.id.clone(),
                counterparty: counterparty.clone(),
                amount,
                balance,
                time: now,
                description: t.description.clone(),
            };
            let updated = Account {
                balance,
                entries: seq,
                ..account.clone()
            };
            txn = txn
                .put(entry_key(&account.code, seq), encode(&entry))
                .put(account_key(&account.code), encode(&updated));
        }
        Ok(txn)
    }

    async fn backoff(attempt: u32) {
        let cap = 1u64 << attempt.min(6);
        let ms = rand::thread_rng().gen_range(0..=cap);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

#[async_trait]
impl Ledger for KvLedger {
    async fn ping(&self) -> Result<()> {
        self.store.revision().await?;
        Ok(())
    }

    async fn create_member(&self, member: &Member) -> Result<()> {
        let txn = Txn::new()
            .when_mod_revision(member_key(&member.id), 0)
            .when_mod_revision(token_key(&member.token_hash), 0)
            .put(member_key(&member.id), encode(member))
            .put(
                token_key(&member.token_hash),
                member.id.clone().into_bytes(),
            );
        if self.commit(txn).await? {
            Ok(())
        } else {
            Err(LedgerError::exists("member", &member.id))
        }
    }

    async fn member(&self, id: &str) -> Result<Option<Member>> {
        self.get(&member_key(id)).await
    }

    async fn member_by_token(&self, token_hash: &str) -> Result<Option<Member>> {
        match self.store.get(&token_key(token_hash)).await? {
            Some(kv) => self.member(&String::from_utf8_lossy(&kv.value)).await,
            None => Ok(None),
        }
    }

    async fn create_account(&self, account: &Account) -> Result<()> {
        let key = account_key(&account.code);
        if self
            .commit(
                Txn::new()
                    .when_mod_revision(&key, 0)
                    .put(&key, encode(account)),
            )
            .await?
        {
            Ok(())
        } else {
            Err(LedgerError::exists("account", &account.code))
        }
    }

    async fn account(&self, code: &str) -> Result<Option<Account>> {
        self.get(&account_key(code)).await
    }

    async fn accounts(&self) -> Result<Vec<Account>> {
        self.list("a/").await
    }

    async fn update_account(&self, code: &str, change: &AccountChange) -> Result<Account> {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.account_read(code).await?;
            let next = super::changed(&current.value, change)?;
            let key = account_key(code);
            let txn = Txn::new()
                .when_mod_revision(&key, current.revision)
                .put(&key, encode(&next));
            if self.commit(txn).await? {
                return Ok(next);
            }
        }
        Err(LedgerError::contention(
            format!("account {code}"),
            MAX_ATTEMPTS,
        ))
    }

    async fn submit(&self, transfer: Transfer) -> Result<Submitted> {
        let key = transfer_key(&transfer.id);
        for attempt in 0..MAX_ATTEMPTS {
            if let Some(existing) = self.get::<Transfer>(&key).await? {
                return if existing.fingerprint == transfer.fingerprint {
                    Ok(Submitted::Repeated(existing))
                } else {
                    Err(LedgerError::IdReused {
                        id: transfer.id.clone(),
                    })
                };
            }
            let payer = self.account_read(&transfer.payer).await?;
            let payee = self.account_read(&transfer.payee).await?;
            let now = now_ms();
            let mut stored = transfer.clone();
            let guard = Txn::new().when_mod_revision(&key, 0);
            let txn = if transfer.state == TransferState::Pending {
                guard
            } else {
                match Self::move_credit(guard.clone(), &transfer, &payer, &payee, now) {
                    Ok(txn) => {
                        stored.state = TransferState::Committed;
                        stored.decided = Some(now);
                        txn
                    }
                    Err(refusal) => {
                        // The refusal was judged on these account revisions: guard on them too.
                        stored.state = TransferState::Refused;
                        stored.refusal = Some(refusal);
                        guard
                            .when_mod_revision(account_key(&transfer.payer), payer.revision)
                            .when_mod_revision(account_key(&transfer.payee), payee.revision)
                    }
                }
            };
            if self.commit(txn.put(&key, encode(&stored))).await? {
                return Ok(Submitted::New(stored));
            }
            Self::backoff(attempt).await;
        }
        Err(LedgerError::contention(
            format!("transfer {}", transfer.id),
            MAX_ATTEMPTS,
        ))
    }

    async fn decide(&self, id: &str, accept: bool) -> Result<Transfer> {
        let key = transfer_key(id);
        for attempt in 0..MAX_ATTEMPTS {
            let current = self
                .read::<Transfer>(&key)
                .await?
                .ok_or_else(|| LedgerError::not_found("transfer", id))?;
            let t = current.value;
            match (t.state, accept) {
                (TransferState::Pending, _) => {}
                (TransferState::Committed, true) | (TransferState::Rejected, false) => {
                    return Ok(t)
                }
                (state, _) => {
                    return Err(LedgerError::NotPending {
                        id: id.to_string(),
                        state,
                    })
                }
            }
            let now = now_ms();
            let guard = Txn::new().when_mod_revision(&key, current.revision);
            let mut decided = t.clone();
            decided.decided = Some(now);
            let txn = if accept {
                let payer = self.account_read(&t.payer).await?;
                let payee = self.account_read(&t.payee).await?;
                let txn = Self::move_credit(guard, &t, &payer, &payee, now)
                    .map_err(LedgerError::Refused)?;
                decided.state = TransferState::Committed;
                txn
            } else {
                decided.state = TransferState::Rejected;
                guard
            };
            if self.commit(txn.put(&key, encode(&decided))).await? {
                return Ok(decided);
            }
            Self::backoff(attempt).await;
        }
        Err(LedgerError::contention(
            format!("transfer {id}"),
            MAX_ATTEMPTS,
        ))
    }

    async fn transfer(&self, id: &str) -> Result<Option<Transfer>> {
        self.get(&transfer_key(id)).await
    }

    async fn transfers(&self) -> Result<Vec<Transfer>> {
        self.list("t/").await
    }

    async fn statement(&self, code: &str, after: u64, limit: usize) -> Result<Vec<Entry>> {
        let account = self.account_read(code).await?.value;
        let last = account.entries.min(after.saturating_add(limit as u64));
        let keys: Vec<String> = ((after + 1)..=last)
            .map(|seq| entry_key(code, seq))
            .collect();
        let reads = keys.iter().map(|key| self.get::<Entry>(key));
        let entries = futures::future::try_join_all(reads).await?;
        Ok(entries.into_iter().flatten().collect())
    }

    async fn in_flight(&self) -> Result<Vec<String>> {
        // One transaction per transfer: never anything half-done.
        Ok(Vec::new())
    }

    async fn recover(&self) -> Result<usize> {
        Ok(0)
    }

    async fn put_listing(&self, listing: &Listing) -> Result<()> {
        self.store
            .put(&listing_key(&listing.id), encode(listing))
            .await?;
        Ok(())
    }

    async fn listing(&self, id: &str) -> Result<Option<Listing>> {
        self.get(&listing_key(id)).await
    }

    async fn listings(&self) -> Result<Vec<Listing>> {
        self.list("l/").await
    }

    async fn delete_listing(&self, id: &str) -> Result<bool> {
        let key = listing_key(id);
        let Some(current) = self.store.get(&key).await? else {
            return Ok(false);
        };
        self.commit(
            Txn::new()
                .when_mod_revision(&key, current.mod_revision)
                .delete(&key),
        )
        .await
    }
}
