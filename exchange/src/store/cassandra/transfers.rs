//! Transfers on Cassandra: the transfer row's state machine, the journal of transfers not yet
//! final, the driver that takes one transfer through its steps, and the operations built on
//! it (submit, accept or reject a payment request, recover, list what is in flight).

use super::account_step::{Goal, Side, Step};
use super::cql::{bigint, int, json, serial, text, to_json, Read};
use super::{CassandraLedger, MAX_ATTEMPTS, RECOVERY_GRACE};
use crate::model::{now_ms, Transfer, TransferState};
use crate::store::{LedgerError, Result, Submitted};

/// The API state a row's state column stands for (saga states are still pending).
fn state_of(column: &str) -> TransferState {
    match column {
        "committed" => TransferState::Committed,
        "rejected" => TransferState::Rejected,
        "refused" => TransferState::Refused,
        _ => TransferState::Pending,
    }
}

/// Saga states: the transfer is being driven.
const IN_FLIGHT: [&str; 3] = ["journaled", "applying", "cancelling"];

/// A transfer row: its state column (which may be a saga state) and its data.
struct TransferRow {
    state: String,
    attempt: i32,
    transfer: Transfer,
}

impl CassandraLedger {
    async fn transfer_row(&self, id: &str) -> Result<Option<TransferRow>> {
        let found = self
            .select(
                "read transfer",
                serial("SELECT state, attempt, data FROM transfers WHERE id = ?"),
                (id,),
            )
            .await?;
        let Some(row) = found.first() else {
            return Ok(None);
        };
        let state = text(row, 0).unwrap_or_default();
        let mut transfer: Transfer = json(id, &text(row, 2).unwrap_or_default())?;
        transfer.state = state_of(&state);
        Ok(Some(TransferRow {
            state,
            attempt: int(row, 1),
            transfer,
        }))
    }

    /// The row of transfer `id`, which must exist.
    async fn existing_row(&self, id: &str) -> Result<TransferRow> {
        self.transfer_row(id)
            .await?
            .ok_or_else(|| LedgerError::not_found("transfer", id))
    }

    /// Moves the transfer row from `from` to `to` (LWT); false when another driver moved it.
    async fn move_row(&self, t: &Transfer, from: &str, to: &str, attempt: i32) -> Result<bool> {
        self.applies(
            "move transfer",
            "UPDATE transfers SET state = ?, attempt = ?, data = ? WHERE id = ? IF state = ?",
            (to, attempt, to_json(t), &t.id, from),
        )
        .await
    }

    async fn journal(&self, id: &str) -> Result<()> {
        self.exec(
            "journal",
            "INSERT INTO journal (bucket, id, since) VALUES (0, ?, ?)",
            (id, now_ms() as i64),
        )
        .await?;
        Ok(())
    }

    async fn unjournal(&self, id: &str) -> Result<()> {
        self.exec(
            "journal",
            "DELETE FROM journal WHERE bucket = 0 AND id = ?",
            (id,),
        )
        .await?;
        Ok(())
    }

    /// Drives transfer `id` to a final state (or back to pending) and returns it.
    async fn drive(&self, id: &str) -> Result<Transfer> {
        self.drive_from(id, None).await
    }

    /// [`drive`](Self::drive), starting from `known`, the row as this driver just wrote it
    /// (none: read it). After each move this driver wins it knows the row without reading it
    /// again; after a lost move it reads the row (at SERIAL) to see what the winner did. The
    /// two sides of an apply or a release go together (no limit can refuse them); a
    /// reservation goes payer first, so a payer that cannot pay reserves nothing on the payee.
    async fn drive_from(&self, id: &str, mut known: Option<TransferRow>) -> Result<Transfer> {
        for _ in 0..MAX_ATTEMPTS {
            let row = match known.take() {
                Some(row) => row,
                None => self.existing_row(id).await?,
            };
            let (t, attempt) = (row.transfer, row.attempt);
            let (mut next, from, to) = match row.state.as_str() {
                "journaled" => {
                    let mut refusal = None;
                    let mut fenced = false;
                    for side in [Side::Payer, Side::Payee] {
                        match self.step(&t, attempt, side, Goal::Reserve).await? {
                            Step::Done => {}
                            Step::Refused(r) => {
                                refusal = Some(r);
                                break;
                            }
                            Step::Fenced => {
                                fenced = true;
                                break;
                            }
                        }
                    }
                    if fenced {
                        continue;
                    }
                    let mut next = t.clone();
                    let to = match refusal {
                        Some(r) => {
                            next.refusal = Some(r);
                            "cancelling"
                        }
                        None => "applying",
                    };
                    (next, "journaled", to)
                }
                "applying" => {
                    tokio::try_join!(
                        self.step(&t, attempt, Side::Payer, Goal::Apply),
                        self.step(&t, attempt, Side::Payee, Goal::Apply)
                    )?;
                    let mut done = t.clone();
                    done.decided = Some(now_ms());
                    done.refusal = None;
                    (done, "applying", "committed")
                }
                "cancelling" => {
                    tokio::try_join!(
                        self.step(&t, attempt, Side::Payer, Goal::Release),
                        self.step(&t, attempt, Side::Payee, Goal::Release)
                    )?;
                    // An accepted payment request the payer cannot afford stays pending.
                    let to = if attempt > 0 { "pending" } else { "refused" };
                    (t.clone(), "cancelling", to)
                }
                _ => {
                    self.unjournal(id).await?;
                    return Ok(t);
                }
            };
            next.state = state_of(to);
            if self.move_row(&next, from, to, attempt).await? {
                known = Some(TransferRow {
                    state: to.to_string(),
                    attempt,
                    transfer: next,
                });
            }
        }
        Err(LedgerError::contention(
            format!("transfer {id}"),
            MAX_ATTEMPTS,
        ))
    }

    /// [`Ledger::submit`](crate::store::Ledger::submit): journal, insert the row, drive it.
    /// `again`: a try after a cluster error, whose insert may have applied unseen, so a row
    /// with the same fingerprint is this request's own (answered as new, not as a replay).
    pub(super) async fn submit_transfer(
        &self,
        transfer: Transfer,
        again: bool,
    ) -> Result<Submitted> {
        // Accounts are never deleted: QUORUM tells whether they exist.
        tokio::try_join!(
            self.existing(&transfer.payer, Read::Quorum),
            self.existing(&transfer.payee, Read::Quorum)
        )?;
        let pending = transfer.state == TransferState::Pending;
        if !pending {
            self.journal(&transfer.id).await?;
        }
        let state = if pending { "pending" } else { "journaled" };
        let inserted = self
            .applies(
                "submit transfer",
                "INSERT INTO transfers (id, state, attempt, data) VALUES (?, ?, 0, ?) \
                 IF NOT EXISTS",
                (&transfer.id, state, to_json(&transfer)),
            )
            .await?;
        if inserted {
            return if pending {
                Ok(Submitted::New(transfer))
            } else {
                let id = transfer.id.clone();
                let mut transfer = transfer;
                transfer.state = state_of(state);
                let row = TransferRow {
                    state: state.to_string(),
                    attempt: 0,
                    transfer,
                };
                Ok(Submitted::New(self.drive_from(&id, Some(row)).await?))
            };
        }
        let existing = self.existing_row(&transfer.id).await?;
        if existing.transfer.fingerprint != transfer.fingerprint {
            return Err(LedgerError::IdReused {
                id: transfer.id.clone(),
            });
        }
        // A retry of a transfer still in flight finishes it.
        let driven = self.drive(&transfer.id).await?;
        Ok(if again {
            Submitted::New(driven)
        } else {
            Submitted::Repeated(driven)
        })
    }

    /// [`Ledger::decide`](crate::store::Ledger::decide): accept (a new attempt, journaled and
    /// driven) or reject a pending payment request.
    pub(super) async fn decide_transfer(&self, id: &str, accept: bool) -> Result<Transfer> {
        for _ in 0..MAX_ATTEMPTS {
            let row = self.existing_row(id).await?;
            let t = row.transfer;
            match (row.state.as_str(), accept) {
                ("pending", false) => {
                    let mut done = t.clone();
                    done.state = TransferState::Rejected;
                    done.decided = Some(now_ms());
                    if self
                        .move_row(&done, "pending", "rejected", row.attempt)
                        .await?
                    {
                        return Ok(done);
                    }
                }
                ("pending", true) => {
                    let mut next = t.clone();
                    next.refusal = None;
                    self.journal(id).await?;
                    let attempt = row.attempt + 1;
                    if self
                        .move_row(&next, "pending", "journaled", attempt)
                        .await?
                    {
                        let after = self.drive(id).await?;
                        return match (after.state, &after.refusal) {
                            (TransferState::Pending, Some(r)) => {
                                Err(LedgerError::Refused(r.clone()))
                            }
                            _ => Ok(after),
                        };
                    }
                }
                ("committed", true) | ("rejected", false) => return Ok(t),
                (state, true) if IN_FLIGHT.contains(&state) => return self.drive(id).await,
                _ => {
                    return Err(LedgerError::NotPending {
                        id: id.to_string(),
                        state: t.state,
                    })
                }
            }
        }
        Err(LedgerError::contention(
            format!("transfer {id}"),
            MAX_ATTEMPTS,
        ))
    }

    /// Transfer `id` as the API shows it.
    pub(super) async fn find_transfer(&self, id: &str) -> Result<Option<Transfer>> {
        Ok(self.transfer_row(id).await?.map(|r| r.transfer))
    }

    /// Every transfer (for the audit).
    pub(super) async fn all_transfers(&self) -> Result<Vec<Transfer>> {
        let found = self
            .select(
                "list transfers",
                "SELECT id, state, data FROM transfers",
                (),
            )
            .await?;
        let mut out = Vec::new();
        for row in found {
            let (Some(id), Some(state), Some(data)) = (text(&row, 0), text(&row, 1), text(&row, 2))
            else {
                continue;
            };
            let mut t: Transfer = json(&id, &data)?;
            t.state = state_of(&state);
            out.push(t);
        }
        Ok(out)
    }

    /// Journaled transfers whose row is still in a saga state.
    pub(super) async fn journaled_in_flight(&self) -> Result<Vec<String>> {
        let found = self
            .select("journal", "SELECT id FROM journal WHERE bucket = 0", ())
            .await?;
        let mut out = Vec::new();
        for id in found.iter().filter_map(|r| text(r, 0)) {
            if let Some(row) = self.transfer_row(&id).await? {
                if IN_FLIGHT.contains(&row.state.as_str()) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    /// The recovery pass: drives every journaled transfer older than [`RECOVERY_GRACE`].
    pub(super) async fn recover_journal(&self) -> Result<usize> {
        let found = self
            .select(
                "journal",
                "SELECT id, since FROM journal WHERE bucket = 0",
                (),
            )
            .await?;
        let cutoff = now_ms().saturating_sub(RECOVERY_GRACE.as_millis() as u64) as i64;
        let mut settled = 0;
        for row in found {
            let Some(id) = text(&row, 0) else { continue };
            if bigint(&row, 1) > cutoff {
                continue;
            }
            match self.drive(&id).await {
                Ok(_) => settled += 1,
                Err(LedgerError::NotFound { .. }) => self.unjournal(&id).await?,
                Err(e) => return Err(e),
            }
        }
        Ok(settled)
    }
}
