//! `texu agent`: runs a board's agent until SIGTERM or SIGINT; the same code as the agent-only
//! `texu-agent` binary ([`texu_agent::cli`]).

pub use texu_agent::cli::{read_token_file, run, Args};
