//! The `texu` package's library: what the binary and the end-to-end tests share.

pub mod cluster;
