//! `texu-agent`: the board agent alone, the same code as `texu agent` in a binary that leaves
//! out the controller, the CLI verbs and the simulation, so a board maps less of it.

use std::process::ExitCode;

use clap::Parser;

/// Texu's board agent: joins the cluster, then runs the containers the controller assigns to
/// this board.
#[derive(Parser)]
#[command(name = "texu-agent", version, about)]
struct Cli {
    /// Controller URL(s), comma separated.
    #[arg(long, env = "TEXU_SERVER")]
    server: Option<String>,
    #[command(flatten)]
    args: texu_agent::cli::Args,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    texu_agent::cli::main(&cli.args, cli.server)
}
