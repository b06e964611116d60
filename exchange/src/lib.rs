//! Texu's community-exchange application server: a mutual-credit ledger (members, accounts,
//! transfers, payment requests, statements, listings) served over HTTP/JSON, on an embedded
//! file, etcd or Apache Cassandra.

pub mod api;
pub mod metrics;
pub mod model;
pub mod server;
pub mod store;
