//! The `gateway` binary: command line, tracing, runtime, signals. `anyhow` lives only here.

mod demo;

use std::path::{Path, PathBuf};
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
    Check {
        /// Do not fetch `jwks_url` key sets (their URLs are still parsed). For a check before
        /// a start or reload, which the running gateway survives with its identity provider
        /// down (see README, "JWKS outages").
        #[arg(long)]
        no_jwks_fetch: bool,
    },
    /// First run: the gateway with built-in demo workers, a static folder and a JWT route,
    /// printing ready-to-paste curl commands. Ignores `-c`.
    Demo {
        /// HTTPS port on 127.0.0.1 (default 8443, or a free port when that is busy; 0 = any free port).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Mint a token for a configured JWT policy; prints the token alone on stdout.
    Token {
        /// The `jwt_policies` entry the token is for.
        #[arg(long)]
        policy: String,
        /// A claim, NAME=VALUE (repeatable). A VALUE that parses as JSON (`42`, `true`,
        /// `["a"]`) is used as such, anything else as a string. The policy's `claims`
        /// (e.g. `token_type: access`) are added unless overridden.
        #[arg(long = "claim", value_name = "NAME=VALUE")]
        claim: Vec<String>,
        /// Lifetime (`exp` = now + TTL), e.g. `30s`, `5m`, `1h`.
        #[arg(long, default_value = "5m")]
        ttl: String,
        /// The private key (PEM) for a public-key policy (RS*/PS*/ES*/EdDSA).
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Check { no_jwks_fetch } => check(&cli.config, no_jwks_fetch),
        Command::Run => match run(&cli.config) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("gateway: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Demo { port } => match demo::run(port) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("gateway demo: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Token {
            policy,
            claim,
            ttl,
            key,
        } => match token(&cli.config, &policy, &claim, &ttl, key.as_deref()) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gateway: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check(path: &std::path::Path, no_jwks_fetch: bool) -> ExitCode {
    gateway::observability::init(&quiet_logging());
    let errors: Vec<String> = match config::load(path) {
        // Keys are loaded and each jwks_url fetched once (unless `--no-jwks-fetch`); unlike
        // at start, an unreachable jwks_url is an error: it would not work now.
        Ok(settings) => match check_policies(&settings, no_jwks_fetch) {
            Ok(()) => {
                println!("ok");
                return ExitCode::SUCCESS;
            }
            Err(errors) => errors,
        },
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    };
    for e in &errors {
        eprintln!("{}: {e}", path.display());
    }
    ExitCode::FAILURE
}

fn check_policies(settings: &config::Settings, no_jwks_fetch: bool) -> Result<(), Vec<String>> {
    if settings.jwt_policies.is_empty() {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| vec![format!("starting a runtime to load JWT keys: {e}")])?;
    let first_fetch = if no_jwks_fetch {
        gateway::auth::FirstFetch::Skip
    } else {
        gateway::auth::FirstFetch::Required
    };
    runtime
        .block_on(gateway::auth::build_all(
            &settings.jwt_policies,
            first_fetch,
        ))
        .map(drop)
}

/// `gateway token`: mints a token for `policy` of the config at `path`.
fn token(
    path: &std::path::Path,
    policy: &str,
    claims: &[String],
    ttl: &str,
    key: Option<&std::path::Path>,
) -> Result<String, String> {
    let settings = config::load(path).map_err(|errors| {
        let lines: Vec<String> = errors
            .0
            .iter()
            .map(|e| format!("{}: {e}", path.display()))
            .collect();
        lines.join("\n")
    })?;
    let names: Vec<&str> = settings
        .jwt_policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    let settings = settings
        .jwt_policies
        .iter()
        .find(|p| p.name == policy)
        .ok_or_else(|| match names.is_empty() {
            true => format!(
                "--policy {policy}: {} defines no jwt_policies",
                path.display()
            ),
            false => format!(
                "--policy {policy}: unknown policy (known: {})",
                names.join(", ")
            ),
        })?;
    let ttl = config::units::parse_duration(ttl).map_err(|e| format!("--ttl: {e}"))?;
    let claims = claims
        .iter()
        .map(|c| match c.split_once('=') {
            Some((name, value)) => Ok((name.trim().to_string(), value.to_string())),
            None => Err(format!("--claim {c:?}: expected NAME=VALUE")),
        })
        .collect::<Result<Vec<_>, String>>()?;
    gateway::auth::mint(settings, &claims, ttl, key)
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
    gateway::workers::raise_open_file_limit(settings.server.max_connections);
    let workers =
        gateway::workers::Workers::start(gateway::workers::count(settings.server.worker_threads))
            .context("starting worker threads")?;
    let path = path.to_owned();
    workers.run(|handles| async move { serve(path, settings, &handles).await })
}

async fn serve(
    path: PathBuf,
    settings: config::Settings,
    workers: &[tokio::runtime::Handle],
) -> anyhow::Result<ExitCode> {
    let gateway = Gateway::start_on(settings, workers).await?;
    let signals = Signals::install()?;
    tracing::info!(config = %path.display(), "gateway started");
    Ok(signals.serve_until_stopped(&gateway, &path).await)
}

/// The process signals `gateway run` and `gateway demo` answer.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
        })
    }

    /// SIGHUP reloads `config_path`; SIGTERM/SIGINT stop accepting and drain for up to
    /// `shutdown_grace`, then the process exits 0.
    async fn serve_until_stopped(mut self, gateway: &Gateway, config_path: &Path) -> ExitCode {
        'serve: loop {
            tokio::select! {
                _ = self.term.recv() => break,
                _ = self.int.recv() => break,
                _ = self.hup.recv() => {
                    // A reload stuck reading (a hung network mount) must not hold up a stop.
                    let reloading = reload(gateway, config_path);
                    tokio::pin!(reloading);
                    tokio::select! {
                        () = &mut reloading => {}
                        _ = self.term.recv() => break 'serve,
                        _ = self.int.recv() => break 'serve,
                    }
                }
            }
        }
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        gateway.shutdown();
        if gateway.drained().await {
            tracing::info!("drained, bye");
        } else {
            tracing::warn!("shutdown_grace passed with requests still in flight; exiting anyway");
        }
        ExitCode::SUCCESS
    }
}

/// SIGHUP: re-reads `path` along the same path as the admin `POST /reload`, which logs every
/// error, keeps the running config on failure, and counts `gateway_config_reloads_total`.
async fn reload(gateway: &Gateway, path: &Path) {
    gateway.set_config_path(path.to_owned());
    let _ = gateway.reload_from_file().await;
}
