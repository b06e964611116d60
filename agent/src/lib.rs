//! Texu's board agent: turns a board's assigned containers into running LXC containers.

pub mod cli;
pub mod daemon;
pub mod files;
pub mod lxc;
pub mod metrics;
pub mod probe;
pub mod runtime;
