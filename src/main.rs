//! The `gateway` binary: command line, tracing, runtime, signals. `anyhow` lives only here.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use gateway::config;
use gateway::server::Gateway;

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "Reverse proxy and API gateway for Python web apps"
)]
struct Cli {
    /// Configuration file.
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        default_value = "gateway.yaml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the configuration like `nginx -t`: prints `ok`, or every error on stderr.
    Check,
    /// Start the gateway with built-in demo upstreams (not available yet).
    Demo,
    /// Mint a token for a configured JWT policy (not available yet).
    Token {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        rest: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => check(&cli.config),
        Command::Run => match run(&cli.config) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("gateway: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Demo => unavailable("demo"),
        Command::Token { .. } => unavailable("token"),
    }
}

fn unavailable(what: &str) -> ExitCode {
    eprintln!("gateway: `gateway {what}` is not available in this build yet");
    ExitCode::from(2)
}

fn check(path: &std::path::Path) -> ExitCode {
    gateway::observability::init(&quiet_logging());
    match config::load(path) {
        Ok(_) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{}: {e}", path.display());
            }
            ExitCode::FAILURE
        }
    }
}

fn quiet_logging() -> config::LoggingSettings {
    config::LoggingSettings {
        level: "warn".into(),
        format: config::LogFormat::Text,
        access_log: false,
    }
}

fn run(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let settings = match config::load(path) {
        Ok(settings) => settings,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{}: {e}", path.display());
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    gateway::observability::init(&settings.logging);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if settings.server.worker_threads > 0 {
        runtime.worker_threads(settings.server.worker_threads);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(path.to_owned(), settings))
}

async fn serve(path: PathBuf, settings: config::Settings) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};
    let gateway = Gateway::start(settings).await?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    tracing::info!(config = %path.display(), "gateway started");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&gateway, &path),
        }
    }
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    gateway.shutdown();
    if gateway.drained().await {
        tracing::info!("drained, bye");
    } else {
        tracing::warn!("shutdown_grace passed with requests still in flight; exiting anyway");
    }
    Ok(ExitCode::SUCCESS)
}

fn reload(gateway: &Gateway, path: &std::path::Path) {
    match config::load(path) {
        Ok(settings) => {
            gateway.reload(settings);
            tracing::info!(
                "configuration reloaded (routes and upstreams; listener changes need a restart)"
            );
        }
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!(error = %e, "reload failed; keeping the running configuration");
            }
        }
    }
}
