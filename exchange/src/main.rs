//! `texu-exchange`: the community-exchange application server.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use texu_exchange::server::{self, StoreUrl};

/// The Rastru community exchange: a mutual-credit ledger over HTTP/JSON.
#[derive(Parser, Debug)]
#[command(name = "texu-exchange", version)]
struct Args {
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "TEXU_EXCHANGE_LISTEN")]
    listen: SocketAddr,
    /// Where the ledger lives: file:PATH, etcd://HOST:PORT,... or
    /// cassandra://HOST1,HOST2,HOST3/KEYSPACE?rf=N.
    #[arg(
        long,
        default_value = "file:exchange.redb",
        env = "TEXU_EXCHANGE_STORE"
    )]
    store: String,
    /// The admin token's file; created with a new token (mode 0600) when it does not exist.
    #[arg(long, default_value = "exchange-admin.token")]
    admin_token_file: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let url: StoreUrl = args.store.parse()?;
    let (admin, created) = server::admin_token(&args.admin_token_file)?;
    if created {
        tracing::info!(file = %args.admin_token_file.display(), "created a new admin token");
    }
    let opened = server::open(&url).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| server::StartError::Listen {
            addr: args.listen,
            source,
        })?;
    let addr = listener.local_addr().context("listening address")?;
    tracing::info!(%addr, store = %args.store, "exchange listening");
    server::serve(opened, admin, listener, shutdown()).await;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}
