//! Running CQL statements and reading their rows: the helpers every room of the Cassandra
//! ledger uses, so that a query is one call naming its operation (for errors) and its values.
//! The session prepares each statement text once and caches it.

use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::unprepared::Statement;
use scylla::statement::Consistency;
use scylla::value::{CqlValue, Row};

use super::CassandraLedger;
use crate::store::{LedgerError, Result};

/// The error of Cassandra operation `op`.
pub(super) fn fail(
    op: &'static str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> LedgerError {
    LedgerError::Cassandra {
        op,
        source: Box::new(source),
    }
}

fn column(row: &Row, i: usize) -> Option<&CqlValue> {
    row.columns.get(i)?.as_ref()
}

/// Column `i` as text (none when null).
pub(super) fn text(row: &Row, i: usize) -> Option<String> {
    column(row, i)?.as_text().cloned()
}

/// Column `i` as a bigint (0 when null).
pub(super) fn bigint(row: &Row, i: usize) -> i64 {
    column(row, i).and_then(CqlValue::as_bigint).unwrap_or(0)
}

/// Column `i` as an int (0 when null).
pub(super) fn int(row: &Row, i: usize) -> i32 {
    column(row, i).and_then(CqlValue::as_int).unwrap_or(0)
}

fn rows(result: QueryResult) -> Result<Vec<Row>> {
    let rows = result
        .into_rows_result()
        .map_err(|e| fail("read rows", e))?;
    rows.rows::<Row>()
        .map_err(|e| fail("read rows", e))?
        .map(|r| r.map_err(|e| fail("read rows", e)))
        .collect()
}

/// Whether a conditional statement or batch applied (`[applied]` is its first column).
pub(super) fn applied(result: QueryResult) -> Result<bool> {
    Ok(rows(result)?
        .first()
        .and_then(|r| column(r, 0)?.as_boolean())
        .unwrap_or(false))
}

/// Decodes the JSON record stored for `key`.
pub(super) fn json<T: serde::de::DeserializeOwned>(key: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|source| LedgerError::Corrupt {
        key: key.to_string(),
        source,
    })
}

/// A record as the JSON text it is stored as.
pub(super) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// `statement`, marked safe to run twice. True of every statement the ledger runs: reads;
/// upserts of the same values under the same key (members, listings, journal, account rows);
/// and conditional writes (`IF state = ?`, `IF version = ?`, `IF NOT EXISTS`), which a second
/// run finds not applying, and whose callers then read the row again, as they do when another
/// driver of the same transfer got there first. No counter, no append, no `USING TIMESTAMP`.
pub(super) fn idempotent(mut statement: Statement) -> Statement {
    statement.set_is_idempotent(true);
    statement
}

/// A read at SERIAL: it sees every lightweight transaction accepted so far, finished or not.
pub(super) fn serial(cql: &str) -> Statement {
    read(cql, Read::Serial)
}

/// How a read of a row that lightweight transactions change sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// SERIAL: a Paxos round that also finishes a transaction in progress; what an answer to a
    /// client and a retry after a lost condition read.
    Serial,
    /// QUORUM: one round trip that sees every committed transaction (they commit at QUORUM),
    /// not one still in progress. Enough for a first try whose conditional write checks what
    /// it read (`IF version = ?`): a stale read only loses the condition, and the retry reads
    /// at SERIAL.
    Quorum,
}

/// Statement `cql` read as `how` says.
pub(super) fn read(cql: &str, how: Read) -> Statement {
    let mut s = Statement::new(cql);
    s.set_consistency(match how {
        Read::Serial => Consistency::Serial,
        Read::Quorum => Consistency::Quorum,
    });
    s
}

impl CassandraLedger {
    /// Runs one statement (prepared once, then from the session's cache). Every statement of
    /// the ledger is idempotent (see [`idempotent`]), so the driver may send it again to
    /// another member when the first one's connection breaks.
    pub(super) async fn exec(
        &self,
        op: &'static str,
        cql: impl Into<Statement>,
        values: impl SerializeRow,
    ) -> Result<QueryResult> {
        self.session
            .execute_unpaged(idempotent(cql.into()), values)
            .await
            .map_err(|e| fail(op, e))
    }

    /// The rows a query returns.
    pub(super) async fn select(
        &self,
        op: &'static str,
        cql: impl Into<Statement>,
        values: impl SerializeRow,
    ) -> Result<Vec<Row>> {
        rows(self.exec(op, cql, values).await?)
    }

    /// Runs a conditional statement; whether it applied.
    pub(super) async fn applies(
        &self,
        op: &'static str,
        cql: impl Into<Statement>,
        values: impl SerializeRow,
    ) -> Result<bool> {
        applied(self.exec(op, cql, values).await?)
    }

    /// The JSON record `key` that `cql` (`SELECT data ... WHERE id = ?`) finds, decoded.
    pub(super) async fn record<T: serde::de::DeserializeOwned>(
        &self,
        op: &'static str,
        cql: &str,
        key: &str,
    ) -> Result<Option<T>> {
        let found = self.select(op, cql, (key,)).await?;
        found
            .first()
            .and_then(|r| text(r, 0))
            .map(|d| json(key, &d))
            .transpose()
    }
}
