//! The `pgcloak` command line: parses arguments and calls the library. Errors are printed as one
//! sentence on stderr with a non-zero exit; never a panic or a backtrace.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use pgcloak::config::{Config, DEFAULT_CONFIG_FILE};

#[derive(Parser)]
#[command(
    name = "pgcloak",
    version,
    about = "Transparent encrypting proxy for PostgreSQL"
)]
struct Cli {
    /// Config file (TOML).
    #[arg(long, global = true, value_name = "FILE", env = "PGCLOAK_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve,
    /// Validate the config and the policy.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE));
    let result = match cli.command {
        Command::Serve => serve(&config_path),
        Command::Check => check(&config_path),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgcloak: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config> {
    Ok(Config::load(path)?)
}

fn serve(path: &std::path::Path) -> Result<ExitCode> {
    let config = Arc::new(load(path)?);
    pgcloak::logging::init(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shared = pgcloak::server::Shared::new(config.clone())?;
        let listener = pgcloak::server::bind(&config)
            .await
            .with_context(|| format!("cannot listen on {} (config key `listen`)", config.listen))?;
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            signal.cancel();
        });
        pgcloak::server::run(listener, shared, shutdown).await;
        Ok(ExitCode::SUCCESS)
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn check(path: &std::path::Path) -> Result<ExitCode> {
    let config = load(path)?;
    println!("{}: ok", config.source.display());
    Ok(ExitCode::SUCCESS)
}
