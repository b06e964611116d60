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

use std::time::Duration;

use async_trait::async_trait;
use scylla::client::caching_session::CachingSession;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session_builder::SessionBuilder;
use scylla::response::query_result::QueryResult;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::unprepared::Statement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};

use super::{AccountChange, Ledger, LedgerError, Result, Submitted};
use crate::model::{now_ms, Account, Entry, Listing, Member, Refusal, Transfer, TransferState};

/// Journaled transfers younger than this are left to the request driving them.
pub const RECOVERY_GRACE: Duration = Duration::from_secs(5);
/// Attempts before a step that keeps losing its LWT gives up.
const MAX_ATTEMPTS: u32 = 100;
/// Default CQL port when a host names none.
const CQL_PORT: u16 = 9042;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn fail(op: &'static str) -> impl FnOnce(BoxError) -> LedgerError {
    move |source| LedgerError::Cassandra { op, source }
}

/// A [`Ledger`] on a Cassandra cluster.
pub struct CassandraLedger {
    session: CachingSession,
}

/// One side of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Payer,
    Payee,
}

/// What a step does to one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    Reserve,
    Apply,
    Release,
}

/// How a step ended.
#[derive(Debug)]
enum Step {
    Done,
    /// A limit stops the reservation.
    Refused(Refusal),
    /// Another driver released this side: the transfer is being cancelled.
    Fenced,
}

/// An account partition's static columns.
struct Statics {
    account: Account,
    held: i64,
    incoming: i64,
    version: i64,
}

const MARK_RESERVED: &str = "reserved";
const MARK_APPLIED: &str = "applied";
const MARK_RELEASED: &str = "released";

fn text(row: &Row, i: usize) -> Option<String> {
    row.columns.get(i)?.as_ref()?.as_text().cloned()
}
fn bigint(row: &Row, i: usize) -> i64 {
    row.columns
        .get(i)
        .and_then(|c| c.as_ref())
        .and_then(CqlValue::as_bigint)
        .unwrap_or(0)
}

fn rows(result: QueryResult) -> Result<Vec<Row>> {
    let rows = result
        .into_rows_result()
        .map_err(|e| fail("read rows")(Box::new(e)))?;
    rows.rows::<Row>()
        .map_err(|e| fail("read rows")(Box::new(e)))?
        .map(|r| r.map_err(|e| fail("read rows")(Box::new(e))))
        .collect()
}

/// Whether a conditional statement applied (`[applied]` is its first column).
fn applied(result: QueryResult) -> Result<bool> {
    Ok(rows(result)?
        .first()
        .and_then(|r| r.columns.first()?.as_ref()?.as_boolean())
        .unwrap_or(false))
}

fn json<T: serde::de::DeserializeOwned>(key: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|source| LedgerError::Corrupt {
        key: key.to_string(),
        source,
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn serial(cql: &str) -> Statement {
    let mut s = Statement::new(cql);
    s.set_consistency(Consistency::Serial);
    s
}

/// The API state a row's state column stands for (saga states are still pending).
fn state_of(column: &str) -> TransferState {
    match column {
        "committed" => TransferState::Committed,
        "rejected" => TransferState::Rejected,
        "refused" => TransferState::Refused,
        _ => TransferState::Pending,
    }
}

/// A transfer row: its state column (which may be a saga state) and its data.
struct TransferRow {
    state: String,
    attempt: i32,
    transfer: Transfer,
}

impl CassandraLedger {
    /// Connects to `hosts`, creates the keyspace (SimpleStrategy, `replication` copies) and the
    /// tables if needed, and uses QUORUM (SERIAL for conditions) from then on.
    pub async fn connect(hosts: &[String], keyspace: &str, replication: u32) -> Result<Self> {
        let nodes: Vec<String> = hosts
            .iter()
            .map(|h| {
                if h.contains(':') {
                    h.clone()
                } else {
                    format!("{h}:{CQL_PORT}")
                }
            })
            .collect();
        let profile = ExecutionProfile::builder()
            .consistency(Consistency::Quorum)
            .serial_consistency(Some(SerialConsistency::Serial))
            .request_timeout(Some(Duration::from_secs(10)))
            .build();
        let session = SessionBuilder::new()
            .known_nodes(&nodes)
            .connection_timeout(Duration::from_secs(5))
            .default_execution_profile_handle(profile.into_handle())
            .build()
            .await
            .map_err(|e| fail("connect")(Box::new(e)))?;
        let ddl = [
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': {replication}}}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.account_log (code text, kind text, \
                 key text, data text, account text static, balance bigint static, entry_count \
                 bigint static, held bigint static, incoming bigint static, version bigint \
                 static, PRIMARY KEY (code, kind, key))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.transfers (id text PRIMARY KEY, \
                 state text, attempt int, data text)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.journal (bucket int, id text, \
                 since bigint, PRIMARY KEY (bucket, id))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.members (id text PRIMARY KEY, data text)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.tokens (hash text PRIMARY KEY, id text)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.listings (id text PRIMARY KEY, data text)"
            ),
        ];
        for cql in ddl {
            session
                .query_unpaged(cql, ())
                .await
                .map_err(|e| fail("create schema")(Box::new(e)))?;
        }
        session
            .use_keyspace(keyspace, false)
            .await
            .map_err(|e| fail("use keyspace")(Box::new(e)))?;
        Ok(Self {
            session: CachingSession::from(session, 64),
        })
    }

    async fn exec(
        &self,
        op: &'static str,
        cql: impl Into<Statement>,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<QueryResult> {
        self.session
            .execute_unpaged(cql, values)
            .await
            .map_err(|e| fail(op)(Box::new(e)))
    }

    async fn statics(&self, code: &str) -> Result<Option<Statics>> {
        let found = rows(
            self.exec(
                "read account",
                serial(
                    "SELECT account, balance, entry_count, held, incoming, version FROM account_log \
                     WHERE code = ? LIMIT 1",
                ),
                (code,),
            )
            .await?,
        )?;
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

    async fn marker(&self, code: &str, key: &str) -> Result<Option<String>> {
        let found = rows(
            self.exec(
                "read marker",
                serial("SELECT data FROM account_log WHERE code = ? AND kind = 'm' AND key = ?"),
                (code, key),
            )
            .await?,
        )?;
        Ok(found.first().and_then(|r| text(r, 0)))
    }

    async fn transfer_row(&self, id: &str) -> Result<Option<TransferRow>> {
        let found = rows(
            self.exec(
                "read transfer",
                serial("SELECT state, attempt, data FROM transfers WHERE id = ?"),
                (id,),
            )
            .await?,
        )?;
        let Some(row) = found.first() else {
            return Ok(None);
        };
        let state = text(row, 0).unwrap_or_default();
        let attempt = row
            .columns
            .get(1)
            .and_then(|c| c.as_ref())
            .and_then(CqlValue::as_int)
            .unwrap_or(0);
        let mut transfer: Transfer = json(id, &text(row, 2).unwrap_or_default())?;
        transfer.state = state_of(&state);
        Ok(Some(TransferRow {
            state,
            attempt,
            transfer,
        }))
    }

    /// Moves the transfer row from `from` to `to` (LWT); false when another driver moved it.
    async fn move_row(&self, t: &Transfer, from: &str, to: &str, attempt: i32) -> Result<bool> {
        applied(
            self.exec(
                "move transfer",
                "UPDATE transfers SET state = ?, attempt = ?, data = ? WHERE id = ? IF state = ?",
                (to, attempt, to_json(t), &t.id, from),
            )
            .await?,
        )
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

    /// Brings one side of transfer `t` (attempt `attempt`) to `goal`.
    async fn step(&self, t: &Transfer, attempt: i32, side: Side, goal: Goal) -> Result<Step> {
        let code = if side == Side::Payer {
            &t.payer
        } else {
            &t.payee
        };
        let mark_key = format!("{}#{attempt}", t.id);
        for _ in 0..MAX_ATTEMPTS {
            let s = self
                .statics(code)
                .await?
                .ok_or_else(|| LedgerError::NotFound {
                    what: "account",
                    id: code.clone(),
                })?;
            let mark = self.marker(code, &mark_key).await?;
            let a = &s.account;
            let (mut balance, mut held, mut incoming, mut entries) =
                (a.balance, s.held, s.incoming, a.entries as i64);
            let mut entry = None;
            let next_mark = match (goal, mark.as_deref()) {
                (Goal::Reserve, Some(MARK_RESERVED | MARK_APPLIED)) => return Ok(Step::Done),
                (Goal::Reserve, Some(_)) => return Ok(Step::Fenced),
                (Goal::Reserve, None) => {
                    if a.state == crate::model::AccountState::Locked {
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
            let update =
                "UPDATE account_log SET balance = ?, entry_count = ?, held = ?, incoming = ?, \
                          version = ? WHERE code = ? IF version = ?";
            let insert = "INSERT INTO account_log (code, kind, key, data) VALUES (?, ?, ?, ?)";
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
            batch.append_statement(update);
            batch.append_statement(insert);
            let result = match &entry {
                Some(e) => {
                    batch.append_statement(insert);
                    let seq = format!("{:020}", e.seq);
                    self.session
                        .batch(&batch, (statics, mark_row, (code, "e", &seq, to_json(e))))
                        .await
                }
                None => self.session.batch(&batch, (statics, mark_row)).await,
            }
            .map_err(|e| fail("account step")(Box::new(e)))?;
            if applied(result)? {
                return Ok(Step::Done);
            }
        }
        Err(LedgerError::Contention {
            what: format!("account {code}"),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Drives transfer `id` to a final state (or back to pending) and returns it.
    async fn drive(&self, id: &str) -> Result<Transfer> {
        for _ in 0..MAX_ATTEMPTS {
            let row = self
                .transfer_row(id)
                .await?
                .ok_or_else(|| LedgerError::NotFound {
                    what: "transfer",
                    id: id.to_string(),
                })?;
            let (t, attempt) = (row.transfer, row.attempt);
            match row.state.as_str() {
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
                    self.move_row(&next, "journaled", to, attempt).await?;
                }
                "applying" => {
                    self.step(&t, attempt, Side::Payer, Goal::Apply).await?;
                    self.step(&t, attempt, Side::Payee, Goal::Apply).await?;
                    let mut done = t.clone();
                    done.decided = Some(now_ms());
                    done.refusal = None;
                    done.state = TransferState::Committed;
                    self.move_row(&done, "applying", "committed", attempt)
                        .await?;
                }
                "cancelling" => {
                    self.step(&t, attempt, Side::Payer, Goal::Release).await?;
                    self.step(&t, attempt, Side::Payee, Goal::Release).await?;
                    // An accepted payment request the payer cannot afford stays pending.
                    let to = if attempt > 0 { "pending" } else { "refused" };
                    self.move_row(&t, "cancelling", to, attempt).await?;
                }
                _ => {
                    self.unjournal(id).await?;
                    return Ok(t);
                }
            }
        }
        Err(LedgerError::Contention {
            what: format!("transfer {id}"),
            attempts: MAX_ATTEMPTS,
        })
    }
}

#[async_trait]
impl Ledger for CassandraLedger {
    async fn ping(&self) -> Result<()> {
        self.exec("ping", "SELECT release_version FROM system.local", ())
            .await?;
        Ok(())
    }

    async fn create_member(&self, member: &Member) -> Result<()> {
        let ok = applied(
            self.exec(
                "create member",
                "INSERT INTO tokens (hash, id) VALUES (?, ?) IF NOT EXISTS",
                (&member.token_hash, &member.id),
            )
            .await?,
        )?;
        if !ok {
            return Err(LedgerError::Exists {
                what: "member",
                id: member.id.clone(),
            });
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
        let found = rows(
            self.exec(
                "read member",
                "SELECT data FROM members WHERE id = ?",
                (id,),
            )
            .await?,
        )?;
        found
            .first()
            .and_then(|r| text(r, 0))
            .map(|d| json(id, &d))
            .transpose()
    }

    async fn member_by_token(&self, token_hash: &str) -> Result<Option<Member>> {
        let found = rows(
            self.exec(
                "read token",
                "SELECT id FROM tokens WHERE hash = ?",
                (token_hash,),
            )
            .await?,
        )?;
        match found.first().and_then(|r| text(r, 0)) {
            Some(id) => self.member(&id).await,
            None => Ok(None),
        }
    }

    async fn create_account(&self, account: &Account) -> Result<()> {
        let ok = applied(
            self.exec(
                "create account",
                "INSERT INTO account_log (code, account, balance, entry_count, held, incoming, \
                 version) VALUES (?, ?, 0, 0, 0, 0, 1) IF NOT EXISTS",
                (&account.code, to_json(account)),
            )
            .await?,
        )?;
        if ok {
            Ok(())
        } else {
            Err(LedgerError::Exists {
                what: "account",
                id: account.code.clone(),
            })
        }
    }

    async fn account(&self, code: &str) -> Result<Option<Account>> {
        Ok(self.statics(code).await?.map(|s| s.account))
    }

    async fn accounts(&self) -> Result<Vec<Account>> {
        let found = rows(
            self.exec(
                "list accounts",
                "SELECT DISTINCT code, account, balance, entry_count FROM account_log",
                (),
            )
            .await?,
        )?;
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
        for _ in 0..MAX_ATTEMPTS {
            let s = self
                .statics(code)
                .await?
                .ok_or_else(|| LedgerError::NotFound {
                    what: "account",
                    id: code.to_string(),
                })?;
            let next = super::changed(&s.account, change)?;
            let ok = applied(
                self.exec(
                    "update account",
                    "UPDATE account_log SET account = ?, version = ? WHERE code = ? IF version = ?",
                    (to_json(&next), s.version + 1, code, s.version),
                )
                .await?,
            )?;
            if ok {
                return Ok(next);
            }
        }
        Err(LedgerError::Contention {
            what: format!("account {code}"),
            attempts: MAX_ATTEMPTS,
        })
    }

    async fn submit(&self, transfer: Transfer) -> Result<Submitted> {
        for code in [&transfer.payer, &transfer.payee] {
            if self.statics(code).await?.is_none() {
                return Err(LedgerError::NotFound {
                    what: "account",
                    id: code.clone(),
                });
            }
        }
        let pending = transfer.state == TransferState::Pending;
        if !pending {
            self.journal(&transfer.id).await?;
        }
        let state = if pending { "pending" } else { "journaled" };
        let inserted = applied(
            self.exec(
                "submit transfer",
                "INSERT INTO transfers (id, state, attempt, data) VALUES (?, ?, 0, ?) \
                 IF NOT EXISTS",
                (&transfer.id, state, to_json(&transfer)),
            )
            .await?,
        )?;
        if inserted {
            return if pending {
                Ok(Submitted::New(transfer))
            } else {
                Ok(Submitted::New(self.drive(&transfer.id).await?))
            };
        }
        let existing =
            self.transfer_row(&transfer.id)
                .await?
                .ok_or_else(|| LedgerError::NotFound {
                    what: "transfer",
                    id: transfer.id.clone(),
                })?;
        if existing.transfer.fingerprint != transfer.fingerprint {
            return Err(LedgerError::IdReused {
                id: transfer.id.clone(),
            });
        }
        // A retry of a transfer still in flight finishes it.
        Ok(Submitted::Repeated(self.drive(&transfer.id).await?))
    }

    async fn decide(&self, id: &str, accept: bool) -> Result<Transfer> {
        for _ in 0..MAX_ATTEMPTS {
            let row = self
                .transfer_row(id)
                .await?
                .ok_or_else(|| LedgerError::NotFound {
                    what: "transfer",
                    id: id.to_string(),
                })?;
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
                ("journaled" | "applying" | "cancelling", true) => return self.drive(id).await,
                _ => {
                    return Err(LedgerError::NotPending {
                        id: id.to_string(),
                        state: t.state,
                    })
                }
            }
        }
        Err(LedgerError::Contention {
            what: format!("transfer {id}"),
            attempts: MAX_ATTEMPTS,
        })
    }

    async fn transfer(&self, id: &str) -> Result<Option<Transfer>> {
        Ok(self.transfer_row(id).await?.map(|r| r.transfer))
    }

    async fn transfers(&self) -> Result<Vec<Transfer>> {
        let found = rows(
            self.exec(
                "list transfers",
                "SELECT id, state, data FROM transfers",
                (),
            )
            .await?,
        )?;
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

    async fn statement(&self, code: &str, after: u64, limit: usize) -> Result<Vec<Entry>> {
        if self.statics(code).await?.is_none() {
            return Err(LedgerError::NotFound {
                what: "account",
                id: code.to_string(),
            });
        }
        let found = rows(
            self.exec(
                "statement",
                "SELECT data FROM account_log WHERE code = ? AND kind = 'e' AND key > ? LIMIT ?",
                (code, format!("{after:020}"), limit.min(10_000) as i32),
            )
            .await?,
        )?;
        found
            .iter()
            .filter_map(|r| text(r, 0))
            .map(|d| json(code, &d))
            .collect()
    }

    async fn in_flight(&self) -> Result<Vec<String>> {
        let found = rows(
            self.exec("journal", "SELECT id FROM journal WHERE bucket = 0", ())
                .await?,
        )?;
        let mut out = Vec::new();
        for id in found.iter().filter_map(|r| text(r, 0)) {
            if let Some(row) = self.transfer_row(&id).await? {
                if matches!(row.state.as_str(), "journaled" | "applying" | "cancelling") {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    async fn recover(&self) -> Result<usize> {
        let found = rows(
            self.exec(
                "journal",
                "SELECT id, since FROM journal WHERE bucket = 0",
                (),
            )
            .await?,
        )?;
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
        let found = rows(
            self.exec(
                "read listing",
                "SELECT data FROM listings WHERE id = ?",
                (id,),
            )
            .await?,
        )?;
        found
            .first()
            .and_then(|r| text(r, 0))
            .map(|d| json(id, &d))
            .transpose()
    }

    async fn listings(&self) -> Result<Vec<Listing>> {
        let found = rows(
            self.exec("list listings", "SELECT id, data FROM listings", ())
                .await?,
        )?;
        found
            .iter()
            .filter_map(|r| Some((text(r, 0)?, text(r, 1)?)))
            .map(|(id, d)| json(&id, &d))
            .collect()
    }

    async fn delete_listing(&self, id: &str) -> Result<bool> {
        applied(
            self.exec(
                "delete listing",
                "DELETE FROM listings WHERE id = ? IF EXISTS",
                (id,),
            )
            .await?,
        )
    }
}
