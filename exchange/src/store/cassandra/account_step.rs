//! One account's partition of `account_log`: reading its static columns, and the conditional
//! batch that moves one side of a transfer (reserve, apply, release) together with that
//! attempt's marker row and, when applied, the statement entry.

use scylla::statement::batch::{Batch, BatchType};

use super::cql::{applied, bigint, fail, json, read, serial, text, to_json, Read};
use super::{CassandraLedger, MAX_ATTEMPTS};
use crate::model::{now_ms, Account, AccountState, Entry, Refusal, Transfer};
use crate::store::{LedgerError, Result};

/// One side of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Payer,
    Payee,
}

/// What a step does to one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Goal {
    Reserve,
    Apply,
    Release,
}

/// How a step ended.
#[derive(Debug)]
pub(super) enum Step {
    Done,
    /// A limit stops the reservation.
    Refused(Refusal),
    /// Another driver released this side: the transfer is being cancelled.
    Fenced,
}

/// An account partition's static columns.
pub(super) struct Statics {
    pub account: Account,
    held: i64,
    incoming: i64,
    pub version: i64,
}

const MARK_RESERVED: &str = "reserved";
const MARK_APPLIED: &str = "applied";
const MARK_RELEASED: &str = "released";

const UPDATE_STATICS: &str = "UPDATE account_log SET balance = ?, entry_count = ?, held = ?, \
                              incoming = ?, version = ? WHERE code = ? IF version = ?";
const INSERT_ROW: &str = "INSERT INTO account_log (code, kind, key, data) VALUES (?, ?, ?, ?)";

impl CassandraLedger {
    /// The static columns of account `code`, if it exists, read as `how` says.
    pub(super) async fn statics(&self, code: &str, how: Read) -> Result<Option<Statics>> {
        let found = self
            .select(
                "read account",
                read(
                    "SELECT account, balance, entry_count, held, incoming, version FROM account_log \
                     WHERE code = ? LIMIT 1",
                    how,
                ),
                (code,),
            )
            .await?;
        let Some(row) = found.first() else {
            return Ok(None);
        };
        let Some(data) = text(row, 0) else {
            return Ok(None);
        };
        let mut account: Account = json(code, &data)?;
        account.balance = bigint(row, 1);
        account.entries = bigint(row, 2) as u64;
        Ok(Some(Statics {
            account,
            held: bigint(row, 3),
            incoming: bigint(row, 4),
            version: bigint(row, 5),
        }))
    }

    /// The static columns of account `code`, which must exist, read as `how` says.
    pub(super) async fn existing(&self, code: &str, how: Read) -> Result<Statics> {
        self.statics(code, how)
            .await?
            .ok_or_else(|| LedgerError::not_found("account", code))
    }

    async fn marker(&self, code: &str, key: &str) -> Result<Option<String>> {
        let found = self
            .select(
                "read marker",
                serial("SELECT data FROM account_log WHERE code = ? AND kind = 'm' AND key = ?"),
                (code, key),
            )
            .await?;
        Ok(found.first().and_then(|r| text(r, 0)))
    }

    /// Brings one side of transfer `t` (attempt `attempt`) to `goal`. Each try reads the
    /// account, then the marker, both at SERIAL and in that order, then writes a batch
    /// conditional on the version it read. The order and SERIAL are what make the batch's
    /// condition enough: the marker read is never older than the version read, so a marker
    /// another driver moved meanwhile shows in the version. (Reading the two at QUORUM and at
    /// once let a driver pair a new version with an old `reserved` marker and apply a side
    /// twice when the request and a recovery pass drove the same transfer: the power-cut test
    /// caught it.)
    pub(super) async fn step(
        &self,
        t: &Transfer,
        attempt: i32,
        side: Side,
        goal: Goal,
    ) -> Result<Step> {
        let code = if side == Side::Payer {
            &t.payer
        } else {
            &t.payee
        };
        let mark_key = format!("{}#{attempt}", t.id);
        for _ in 0..MAX_ATTEMPTS {
            let s = self.existing(code, Read::Serial).await?;
            let mark = self.marker(code, &mark_key).await?;
            let a = &s.account;
            let (mut balance, mut held, mut incoming, mut entries) =
                (a.balance, s.held, s.incoming, a.entries as i64);
            let mut entry = None;
            let next_mark = match (goal, mark.as_deref()) {
                (Goal::Reserve, Some(MARK_RESERVED | MARK_APPLIED)) => return Ok(Step::Done),
                (Goal::Reserve, Some(_)) => return Ok(Step::Fenced),
                (Goal::Reserve, None) => {
                    if a.state == AccountState::Locked {
                        return Ok(Step::Refused(Refusal::Locked {
                            account: code.clone(),
                        }));
                    }
                    if side == Side::Payer {
                        let after = balance - held - t.amount;
                        if after < a.credit_limit {
                            return Ok(Step::Refused(Refusal::CreditLimit {
                                account: code.clone(),
                                balance: balance - t.amount,
                                limit: a.credit_limit,
                            }));
                        }
                        held += t.amount;
                    } else {
                        let after = balance + incoming + t.amount;
                        if let Some(max) = a.maximum_balance.filter(|m| after > *m) {
                            return Ok(Step::Refused(Refusal::MaximumBalance {
                                account: code.clone(),
                                balance: balance + t.amount,
                                limit: max,
                            }));
                        }
                        incoming += t.amount;
                    }
                    MARK_RESERVED
                }
                (Goal::Apply, Some(MARK_APPLIED)) | (Goal::Release, Some(MARK_RELEASED)) => {
                    return Ok(Step::Done)
                }
                (Goal::Apply, Some(MARK_RESERVED)) => {
                    let (amount, counterparty) = if side == Side::Payer {
                        held -= t.amount;
                        (-t.amount, &t.payee)
                    } else {
                        incoming -= t.amount;
                        (t.amount, &t.payer)
                    };
                    balance += amount;
                    entries += 1;
                    entry = Some(Entry {
                        seq: entries as u64,
                        transfer: t.id.clone(),
                        counterparty: counterparty.clone(),
                        amount,
                        balance,
                        time: now_ms(),
                        description: t.description.clone(),
                    });
                    MARK_APPLIED
                }
                (Goal::Release, Some(MARK_RESERVED)) => {
                    if side == Side::Payer {
                        held -= t.amount;
                    } else {
                        incoming -= t.amount;
                    }
                    MARK_RELEASED
                }
                (Goal::Release, None) => MARK_RELEASED,
                (goal, mark) => {
                    return Err(LedgerError::Inconsistent {
                        what: format!(
                            "transfer {} on {code}: cannot {goal:?} from marker {mark:?}",
                            t.id
                        ),
                    })
                }
            };
            let statics = (
                balance,
                entries,
                held,
                incoming,
                s.version + 1,
                code,
                s.version,
            );
            let mark_row = (code, "m", &mark_key, next_mark);
            let mut batch = Batch::new(BatchType::Logged);
            // Conditional on the version it read: a second run does not apply.
            batch.set_is_idempotent(true);
            batch.append_statement(UPDATE_STATICS);
            batch.append_statement(INSERT_ROW);
            let result = match &entry {
                Some(e) => {
                    batch.append_statement(INSERT_ROW);
                    let seq = format!("{:020}", e.seq);
                    self.session
                        .batch(&batch, (statics, mark_row, (code, "e", &seq, to_json(e))))
                        .await
                }
                None => self.session.batch(&batch, (statics, mark_row)).await,
            }
            .map_err(|e| fail("account step", e))?;
            if applied(result)? {
                return Ok(Step::Done);
            }
        }
        Err(LedgerError::contention(
            format!("account {code}"),
            MAX_ATTEMPTS,
        ))
    }
}
