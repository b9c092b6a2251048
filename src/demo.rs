//! `gateway demo`: the first-run experience. One process runs three demo upstream workers,
//! writes a throwaway folder (a generated `gateway.yaml`, a self-signed certificate, a small
//! static site), starts the gateway on it exactly as `gateway run` does (one single-threaded
//! runtime per core), mints a token, and prints `curl` commands that show balancing, JWT,
//! static files and the loopback admin listener (`/metrics`, `/upstreams`, on the next port).
//! It then runs until SIGTERM/SIGINT and drains like `run`; SIGHUP re-reads the generated
//! `gateway.yaml`, so the demo config can be edited live. The folder is removed on exit.

mod workers;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;

use gateway::config;
use gateway::server::{Gateway, StartError};

/// The port the demo asks for first; when it is taken (and `--port` was not given) the demo
/// falls back to a free one. The admin listener takes the next port (or a free one when
/// that is taken, or when the demo's port is chosen by the system).
const DEFAULT_PORT: u16 = 8443;
const WORKERS: usize = 3;
const POLICY: &str = "demo";
const DEMO_USER: &str = "42";
const TOKEN_TTL: Duration = Duration::from_secs(3600);
const CSS_NAME: &str = "app.3f2a9c1b7e4d.css";

/// Runs the demo; `port` is `--port` (0 = any free port).
pub fn run(port: Option<u16>) -> anyhow::Result<ExitCode> {
    gateway::observability::init(&config::LoggingSettings {
        level: "info".into(),
        format: config::LogFormat::Text,
        access_log: true,
    });
    // The same shape as `gateway run`: one single-threaded runtime per core.
    let workers = gateway::workers::Workers::start(gateway::workers::count(0))
        .context("starting worker threads")?;
    workers.run(|handles| async move { demo(port, &handles).await })
}

async fn demo(port: Option<u16>, handles: &[tokio::runtime::Handle]) -> anyhow::Result<ExitCode> {
    // Installed before anything is printed, so a SIGTERM right after the banner drains.
    let signals = super::Signals::install()?;

    let dir = tempfile::Builder::new()
        .prefix("gateway-demo-")
        .tempdir()
        .context("creating the demo folder")?;
    write_site(&dir.path().join("static")).await?;
    let upstreams = workers::start(WORKERS)
        .await
        .context("starting the demo workers")?;
    let secret = random_secret()?;
    let config_path = dir.path().join("gateway.yaml");

    let wanted = port.unwrap_or(DEFAULT_PORT);
    let ports = Ports {
        https: wanted,
        admin: admin_port(wanted),
    };
    let first = start(&config_path, ports, &upstreams, &secret, handles);
    let gateway = match first.await {
        Err(e) if port.is_none() && port_busy(&e) => {
            tracing::info!("port {DEFAULT_PORT} is busy; the demo uses a free port instead");
            let free = Ports { https: 0, admin: 0 };
            start(&config_path, free, &upstreams, &secret, handles).await?
        }
        Err(e) if admin_port_busy(&e) => {
            tracing::info!(
                "admin port {} is busy; the demo's admin listener uses a free port instead",
                ports.admin
            );
            let free_admin = Ports { admin: 0, ..ports };
            start(&config_path, free_admin, &upstreams, &secret, handles).await?
        }
        other => other?,
    };
    let addr = gateway
        .local_addr("https")
        .context("the demo's https listener did not start")?;
    let admin = gateway
        .admin_addr()
        .context("the demo's admin listener did not start")?;
    let settings = gateway.settings();
    let policy = settings
        .jwt_policies
        .iter()
        .find(|p| p.name == POLICY)
        .context("the demo config lost its JWT policy")?;
    let claims = [("user_id".to_string(), DEMO_USER.to_string())];
    let token = gateway::auth::mint(policy, &claims, TOKEN_TTL, None)
        .map_err(|e| anyhow::anyhow!("minting the demo token: {e}"))?;
    let cert = dir.path().join("certs").join("localhost.crt");
    print!(
        "{}",
        banner(addr, admin, &upstreams, dir.path(), &cert, &token)
    );

    Ok(signals.serve_until_stopped(&gateway, &config_path).await)
}

/// The ports the demo binds on 127.0.0.1 (0 = any free one).
#[derive(Debug, Clone, Copy)]
struct Ports {
    https: u16,
    admin: u16,
}

/// The admin listener's port for the demo's `https` port: the next one, or any free one.
fn admin_port(https: u16) -> u16 {
    match https {
        0 => 0,
        port => port.checked_add(1).unwrap_or(0),
    }
}

/// Writes the demo config for `ports`, validates it (which generates the self-signed
/// certificate on first use) and starts the gateway on every worker runtime.
async fn start(
    path: &Path,
    ports: Ports,
    upstreams: &[SocketAddr],
    secret: &str,
    handles: &[tokio::runtime::Handle],
) -> anyhow::Result<Gateway> {
    std::fs::write(path, config_yaml(ports, upstreams, secret))
        .with_context(|| format!("writing {}", path.display()))?;
    let settings = config::load(path).map_err(|errors| {
        let all: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("the generated demo config is invalid: {}", all.join("; "))
    })?;
    Ok(Gateway::start_on(settings, handles).await?)
}

/// Whether starting failed only because the listener's port is taken.
fn port_busy(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<StartError>(),
        Some(StartError::Bind { source, .. }) if source.kind() == std::io::ErrorKind::AddrInUse
    )
}

/// Whether starting failed only because the admin listener's port is taken.
fn admin_port_busy(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<StartError>(),
        Some(StartError::AdminBind { source, .. }) if source.kind() == std::io::ErrorKind::AddrInUse
    )
}

/// The demo's `gateway.yaml`: https on 127.0.0.1 with a self-signed certificate, `/static/`
/// from the folder, `/api/` behind an HS256 policy, everything else open; the admin
/// listener on loopback.
fn config_yaml(ports: Ports, upstreams: &[SocketAddr], secret: &str) -> String {
    let servers: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"# Generated by `gateway demo`; removed when the demo stops. Edit it and send SIGHUP
# (kill -HUP <pid>) to reload routes, upstreams and the JWT policy live.
server:
  worker_threads: 0
  shutdown_grace: 5s

listeners:
  - name: https
    bind: "127.0.0.1:{https}"
    tls:
      certificates:
        - cert: certs/localhost.crt
          key: certs/localhost.key
          self_signed_if_missing: true    # a development certificate for this demo only

upstreams:
  demo:                                   # the three built-in demo workers
    servers: [{servers}]
    balance: round_robin

jwt_policies:
  {POLICY}:
    algorithms: [HS256]
    key: {{ secret: "{secret}" }}          # random for each demo run
    claims: {{ token_type: access }}
    forward_claims: {{ user_id: X-User-Id }}

routes:
  - name: static
    match: {{ path_prefix: /static/ }}
    static: {{ root: static, precompressed: [gzip], immutable_hashed: true, max_age: 60s }}
  - name: api
    match: {{ path_prefix: /api/ }}
    jwt: {POLICY}
    upstream: demo
  - name: open
    match: {{ path_prefix: / }}
    upstream: demo

admin:                                    # loopback only: /metrics, /healthz, /ready, /upstreams
  bind: "127.0.0.1:{admin}"

logging:
  level: info
  format: text
  access_log: true
"#,
        servers = servers.join(", "),
        https = ports.https,
        admin = ports.admin,
    )
}

/// What the demo prints on stdout: where things are and commands to paste. Each command is
/// one line; the comment above it says what to expect.
fn banner(
    addr: SocketAddr,
    admin: SocketAddr,
    upstreams: &[SocketAddr],
    dir: &Path,
    cert: &Path,
    token: &str,
) -> String {
    let base = format!("https://{addr}");
    let curl = format!("curl -i --cacert {}", shell_quote(cert));
    let workers: Vec<String> = upstreams.iter().map(ToString::to_string).collect();
    let mut out = String::new();
    let _ = writeln!(out, "\ngateway demo is running on {base}\n");
    let _ = writeln!(
        out,
        "  admin         http://{admin} (loopback: /metrics, /healthz, /ready, /upstreams)"
    );
    let _ = writeln!(out, "  demo workers  {}", workers.join(", "));
    let _ = writeln!(
        out,
        "  demo folder   {} (gateway.yaml, static/, certs/)",
        dir.display()
    );
    let _ = writeln!(
        out,
        "  certificate   {} (self-signed, for this demo only)\n",
        cert.display()
    );
    let _ = writeln!(out, "Paste these into another terminal:\n");
    let _ = writeln!(
        out,
        "# 1. The open route, balanced round-robin: three requests, three workers (200)"
    );
    for _ in 0..WORKERS {
        let _ = writeln!(out, "{curl} {base}/hello");
    }
    let _ = writeln!(
        out,
        "\n# 2. The JWT-protected route without a token (401, WWW-Authenticate: Bearer)"
    );
    let _ = writeln!(out, "{curl} {base}/api/hello");
    let _ = writeln!(
        out,
        "\n# 3. With a demo token (HS256, user_id {DEMO_USER}, valid 1h): 200, the worker sees X-User-Id: {DEMO_USER}"
    );
    let _ = writeln!(out, "TOKEN={token}");
    let _ = writeln!(
        out,
        "{curl} -H \"Authorization: Bearer $TOKEN\" {base}/api/hello"
    );
    let _ = writeln!(
        out,
        "\n# 4. A hashed static file from its .gz sibling (200, Cache-Control: max-age=31536000, immutable)"
    );
    let _ = writeln!(out, "{curl} --compressed {base}/static/{CSS_NAME}");
    let _ = writeln!(out, "\n# The static site's index page (200)");
    let _ = writeln!(out, "{curl} {base}/static/");
    let _ = writeln!(
        out,
        "\n# 5. The admin listener: Prometheus metrics (the requests above, by route and status)"
    );
    let _ = writeln!(
        out,
        "curl -si http://{admin}/metrics | grep -E '^(HTTP|gateway_requests_total)'"
    );
    let _ = writeln!(
        out,
        "\n# Each upstream server's health, ejection and request counts (JSON)"
    );
    let _ = writeln!(out, "curl -i http://{admin}/upstreams");
    let _ = writeln!(
        out,
        "\nStop with Ctrl-C (SIGINT) or SIGTERM: the gateway drains, then exits."
    );
    out
}

/// Single-quotes `path` for a POSIX shell when it holds anything unusual.
fn shell_quote(path: &Path) -> String {
    let text = path.to_string_lossy();
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@%".contains(c))
    {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// A 256-bit HS256 secret from the operating system's CSPRNG, hex-encoded.
fn random_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("no system randomness"))?;
    Ok(bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// The static site: an index page and a content-hashed stylesheet with its gzip sibling.
async fn write_site(root: &Path) -> anyhow::Result<()> {
    let css = "body { font-family: system-ui, sans-serif; margin: 3rem; color: #1d2733; }\n\
               h1 { color: #0b6e4f; }\n\
               code { background: #eef2f5; padding: 0.1rem 0.3rem; border-radius: 3px; }\n";
    let index = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n  <meta charset=\"utf-8\">\n  \
         <title>gateway demo</title>\n  <link rel=\"stylesheet\" href=\"/static/{CSS_NAME}\">\n\
         </head>\n<body>\n  <h1>gateway demo</h1>\n  <p>This page is served by the \
         <code>static</code> route; <code>/api/</code> needs a token and everything else is \
         balanced over three demo workers.</p>\n</body>\n</html>\n"
    );
    let mut gz = async_compression::tokio::write::GzipEncoder::new(Vec::new());
    gz.write_all(css.as_bytes()).await?;
    gz.shutdown().await?;
    tokio::fs::create_dir_all(root)
        .await
        .with_context(|| format!("creating {}", root.display()))?;
    for (name, contents) in [
        ("index.html", index.into_bytes()),
        (CSS_NAME, css.as_bytes().to_vec()),
        (&format!("{CSS_NAME}.gz"), gz.into_inner()),
    ] {
        let path = root.join(name);
        tokio::fs::write(&path, contents)
            .await
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
