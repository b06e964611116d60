//! `texu`: the one binary — controller, agent, demo, and the admin CLI.

mod client;
mod cmd;
mod config;
mod load;
mod output;
mod sim;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Texu: LXC containers on small boards joined by a VPN overlay.
#[derive(Parser)]
#[command(name = "texu", version, about, propagate_version = true)]
struct Cli {
    /// Controller URL (default: the client config, else https://127.0.0.1:7080).
    #[arg(long, global = true, env = "TEXU_SERVER")]
    server: Option<String>,
    /// Admin token (default: the client config).
    #[arg(long, global = true, env = "TEXU_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Client config file (default: ~/.config/texu/config.yaml).
    #[arg(long, global = true, env = "TEXU_CONFIG")]
    config: Option<PathBuf>,
    /// The cluster CA to trust, a PEM file (default: the client config's; the controller keeps
    /// it in DATA_DIR/ca.pem).
    #[arg(long, global = true, env = "TEXU_CA_FILE")]
    ca_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller: the store, the HTTP API, the scheduler and the node monitor.
    Controller(cmd::controller::Args),
    /// Run a board's agent: join, then run the containers the controller assigns here.
    Agent(cmd::agent::Args),
    /// Create or update objects from manifest files, directories or `-` (stdin).
    Apply(cmd::apply::Args),
    /// List objects, or show one, as a table, JSON or YAML.
    Get(cmd::get::Args),
    /// Show one object in detail.
    Describe(cmd::get::DescribeArgs),
    /// Delete objects by name or by manifest.
    Delete(cmd::delete::Args),
    /// Root filesystem images in the controller's image store.
    #[command(subcommand)]
    Image(cmd::image::Command),
    /// Stop placing new containers on a node (those on it stay).
    Cordon {
        /// The node's name.
        node: String,
    },
    /// Let the scheduler place containers on a node again.
    Uncordon {
        /// The node's name.
        node: String,
    },
    /// Cordon a node and move its containers away, each new copy Ready before the old stops.
    Drain(cmd::drain::DrainArgs),
    /// Move one member (e.g. of a stateful role whose board died) to another board.
    Replace(cmd::drain::ReplaceArgs),
    /// Set (k=v) or remove (k-) a node's labels, the ones placement uses (admins only).
    Label(cmd::label::Args),
    /// A one-screen summary of the cluster.
    Status,
    /// The controller's recent decisions: placed, unschedulable, lost, node not ready...
    Events(cmd::events::Args),
    /// Run a whole multi-board cluster on this machine (as root) until Ctrl-C.
    Demo(cmd::demo::Args),
    /// Print the JSON Schema of the manifest kinds (for editors).
    Schema,
    /// Simulate many boards (heartbeats, watches, containers Ready at once) against a real
    /// controller, for scale figures.
    Sim(cmd::sim::Args),
    /// The cluster join token.
    #[command(subcommand)]
    Token(cmd::token::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = matches!(cli.command, Command::Controller(_) | Command::Agent(_));
    init_logging(if daemon { "info" } else { "warn" });
    let client = || {
        config::resolve(
            cli.server.clone(),
            cli.token.clone(),
            cli.config.clone(),
            cli.ca_file.clone(),
        )
        .and_then(client::Client::new)
    };
    let result = match cli.command {
        Command::Controller(ref args) => cmd::controller::run(args, cli.config.clone()),
        Command::Agent(ref args) => cmd::agent::run(args, cli.server.clone()),
        Command::Apply(ref args) => client().and_then(|c| cmd::apply::run(&c, args)),
        Command::Get(ref args) => client().and_then(|c| cmd::get::run(&c, args)),
        Command::Describe(ref args) => client().and_then(|c| cmd::get::describe(&c, args)),
        Command::Delete(ref args) => client().and_then(|c| cmd::delete::run(&c, args)),
        Command::Image(ref command) => client().and_then(|c| cmd::image::run(&c, command)),
        Command::Cordon { ref node } => client().and_then(|c| cmd::cordon(&c, node, true)),
        Command::Uncordon { ref node } => client().and_then(|c| cmd::cordon(&c, node, false)),
        Command::Drain(ref args) => client().and_then(|c| cmd::drain::drain(&c, args)),
        Command::Replace(ref args) => client().and_then(|c| cmd::drain::replace(&c, args)),
        Command::Label(ref args) => client().and_then(|c| cmd::label::run(&c, args)),
        Command::Status => client().and_then(|c| cmd::status::run(&c)),
        Command::Events(ref args) => client().and_then(|c| cmd::events::run(&c, args)),
        Command::Demo(ref args) => cmd::demo::run(args),
        Command::Schema => cmd::schema(),
        Command::Sim(ref args) => config::ca(cli.config.clone(), cli.ca_file.clone())
            .and_then(|ca| cmd::sim::run(args, cli.server.clone(), ca, client)),
        Command::Token(ref command) => client().and_then(|c| cmd::token::run(&c, command)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", output::escape_text(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
