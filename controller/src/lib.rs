//! Texu's controller: keeps desired and observed state in a store and serves it over HTTP.

pub mod api;
pub mod auth;
pub mod clock;
pub mod connections;
pub mod detector;
pub mod endpoints;
pub mod events;
pub mod failover;
pub mod file_events;
pub mod images;
pub mod join_token;
pub mod leader;
pub mod leading;
pub mod metrics;
pub mod nodes;
pub mod objects;
pub mod scheduler;
pub mod scheduling;
pub mod server;
pub mod stateful;
pub mod store;
pub mod supervise;
pub mod tls;
pub mod ui;
