//! Connecting to the cluster, and the keyspace and tables the ledger creates on start.

use std::time::Duration;

use scylla::client::caching_session::CachingSession;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::{Consistency, SerialConsistency};

use super::cql::fail;
use super::CassandraLedger;
use crate::store::Result;

/// Default CQL port when a host names none.
const CQL_PORT: u16 = 9042;
/// Prepared statements the session keeps (the ledger runs about 30 different ones).
const STATEMENT_CACHE: usize = 64;

/// Every table, as `CREATE TABLE IF NOT EXISTS KEYSPACE.` followed by this.
const TABLES: [&str; 6] = [
    "account_log (code text, kind text, key text, data text, account text static, \
     balance bigint static, entry_count bigint static, held bigint static, \
     incoming bigint static, version bigint static, PRIMARY KEY (code, kind, key))",
    "transfers (id text PRIMARY KEY, state text, attempt int, data text)",
    "journal (bucket int, id text, since bigint, PRIMARY KEY (bucket, id))",
    "members (id text PRIMARY KEY, data text)",
    "tokens (hash text PRIMARY KEY, id text)",
    "listings (id text PRIMARY KEY, data text)",
];

/// How often the driver asks each member's connections whether they are alive.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long an unanswered keepalive may wait before its connection counts as broken (longer
/// than a JVM's pause on a loaded board).
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

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
            // A member whose board lost power never closes its connections: without an answer
            // to a keepalive within KEEPALIVE_TIMEOUT the driver drops them (failing what is in
            // flight there over to the next member, every statement being idempotent) and
            // sends nothing more to it until it answers again. The driver's default, 30 s + 30 s,
            // sent a third of the requests to a dead coordinator for up to a minute.
            .keepalive_interval(KEEPALIVE_INTERVAL)
            .keepalive_timeout(KEEPALIVE_TIMEOUT)
            .default_execution_profile_handle(profile.into_handle())
            .build()
            .await
            .map_err(|e| fail("connect", e))?;
        let create_keyspace = format!(
            "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = \
             {{'class': 'SimpleStrategy', 'replication_factor': {replication}}}"
        );
        let create_tables = TABLES
            .iter()
            .map(|table| format!("CREATE TABLE IF NOT EXISTS {keyspace}.{table}"));
        for cql in std::iter::once(create_keyspace).chain(create_tables) {
            session
                .query_unpaged(cql, ())
                .await
                .map_err(|e| fail("create schema", e))?;
        }
        session
            .use_keyspace(keyspace, false)
            .await
            .map_err(|e| fail("use keyspace", e))?;
        Ok(Self {
            session: CachingSession::from(session, STATEMENT_CACHE),
        })
    }
}
