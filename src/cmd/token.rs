//! `texu token rotate`: a new join token; boards that joined keep their own credentials.

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::client::Client;

/// `texu token ...`.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Replace the join token with a new one (the old one stops admitting new boards at once)
    /// and print it.
    Rotate,
}

/// Runs a `texu token` verb.
pub fn run(client: &Client, command: &Command) -> Result<ExitCode> {
    match command {
        Command::Rotate => {
            let answer: serde_json::Value = client.post("/v1/token/rotate")?;
            let token = answer["joinToken"]
                .as_str()
                .context("the controller's answer has no joinToken")?;
            println!("{token}");
            eprintln!(
                "texu: join token rotated (also in the controller's DATA_DIR/join.token); \
                 joined boards are not affected"
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
