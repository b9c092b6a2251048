//! `gateway demo` smoke test: the binary starts, every curl command it prints works as
//! printed (run through `sh`, as a newcomer would paste them), and SIGTERM stops it with
//! exit 0 and its temporary folder removed.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The last line of the demo's banner.
const BANNER_END: &str = "Stop with Ctrl-C";

/// Kills the demo if the test fails half-way, so no process outlives it.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One printed `curl` command, run in `sh` after the printed `TOKEN=...` assignment.
struct Ran {
    command: String,
    status: u16,
    output: String,
}

fn run_printed(prelude: &str, command: &str) -> Ran {
    let script = format!("{prelude}\n{command}");
    let out: Output = Command::new("timeout")
        .args(["30", "sh", "-c", &script])
        .output()
        .expect("running sh");
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{command}\nexit {:?}\nstdout: {output}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // `curl -i` prints the status line first: `HTTP/2 200` or `HTTP/1.1 200 OK`.
    let status = output
        .lines()
        .find(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{command}: no status line in\n{output}"));
    Ran {
        command: command.to_string(),
        status,
        output,
    }
}

fn header<'a>(ran: &'a Ran, name: &str) -> Option<&'a str> {
    ran.output.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn demo_prints_commands_that_work_and_stops_on_sigterm() {
    assert!(
        Command::new("curl").arg("--version").output().is_ok(),
        "this test runs the printed curl commands: install curl (apt-get install -y curl)"
    );
    let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["demo", "--port", "0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning gateway demo");
    let mut demo = Demo(child);
    let stdout = demo.0.stdout.take().expect("stdout");
    let mut stderr = demo.0.stderr.take().expect("stderr");
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // Read the banner.
    let mut banner = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with(BANNER_END) => break,
            Ok(line) => banner.push(line),
            Err(e) => panic!("no banner ({e}); got {banner:#?}"),
        }
    }
    let folder = banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("demo folder"))
        .and_then(|rest| rest.split_whitespace().next())
        .map(std::path::PathBuf::from)
        .expect("the banner names the demo folder");
    assert!(folder.is_dir(), "{}", folder.display());

    // Run every printed command, exactly as printed.
    let prelude: Vec<&str> = banner
        .iter()
        .filter(|l| l.starts_with("TOKEN="))
        .map(String::as_str)
        .collect();
    assert_eq!(prelude.len(), 1, "one TOKEN= line: {banner:#?}");
    let ran: Vec<Ran> = banner
        .iter()
        .filter(|l| l.starts_with("curl "))
        .map(|c| run_printed(prelude[0], c))
        .collect();
    assert!(ran.len() >= 8, "{banner:#?}");

    // 1. The open route: 200 from three different workers.
    let open: Vec<&Ran> = ran
        .iter()
        .filter(|r| r.command.ends_with("/hello") && !r.command.contains("/api/"))
        .collect();
    assert_eq!(open.len(), 3, "three open-route commands");
    let mut workers: Vec<&str> = Vec::new();
    for r in &open {
        assert_eq!(r.status, 200, "{}\n{}", r.command, r.output);
        let worker = r
            .output
            .split("\"worker\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no worker named in\n{}", r.output));
        workers.push(worker);
    }
    workers.sort_unstable();
    workers.dedup();
    assert_eq!(
        workers.len(),
        3,
        "round-robin over three workers: {workers:?}"
    );

    // 2. and 3. The JWT route: 401 with a Bearer challenge without the token, 200 with it.
    let api = |with_token: bool| {
        ran.iter()
            .find(|r| r.command.contains("/api/") && r.command.contains("$TOKEN") == with_token)
            .unwrap_or_else(|| panic!("an /api/ command (token: {with_token})"))
    };
    let denied = api(false);
    assert_eq!(denied.status, 401, "{}", denied.output);
    assert!(
        header(denied, "www-authenticate").is_some_and(|v| v.starts_with("Bearer")),
        "{}",
        denied.output
    );
    assert!(
        !denied.output.contains("\"worker\""),
        "upstream never contacted"
    );
    let allowed = api(true);
    assert_eq!(allowed.status, 200, "{}", allowed.output);
    assert!(
        allowed.output.contains(r#""x_user_id":"42""#),
        "{}",
        allowed.output
    );

    // 4. The hashed static file: its gzip sibling, cached for a year.
    let css = ran
        .iter()
        .find(|r| r.command.contains("/static/app."))
        .expect("a hashed static file command");
    assert_eq!(css.status, 200, "{}", css.output);
    let cache = header(css, "cache-control").unwrap_or_default();
    assert!(
        cache.contains("immutable") && cache.contains("max-age=31536000"),
        "{}",
        css.output
    );
    assert_eq!(
        header(css, "content-encoding"),
        Some("gzip"),
        "{}",
        css.output
    );
    assert!(
        css.output.contains("font-family"),
        "curl --compressed decoded it: {}",
        css.output
    );
    for r in ran.iter().filter(|r| r.command.ends_with("/static/")) {
        assert_eq!(r.status, 200, "{}", r.output);
    }

    // 5. The admin listener on loopback: the requests above in the metrics, and every demo
    // worker in /upstreams.
    let admin = |path: &str| {
        ran.iter()
            .find(|r| r.command.contains(path) && r.command.contains("http://127.0.0.1:"))
            .unwrap_or_else(|| panic!("an admin {path} command in {banner:#?}"))
    };
    let metrics = admin("/metrics");
    assert_eq!(metrics.status, 200, "{}", metrics.output);
    assert!(
        metrics
            .output
            .lines()
            .any(|l| l.starts_with("gateway_requests_total{") && l.contains("route=\"open\"")),
        "{}",
        metrics.output
    );
    let upstreams = admin("/upstreams");
    assert_eq!(upstreams.status, 200, "{}", upstreams.output);
    let json = upstreams
        .output
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b);
    let doc: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {}", upstreams.output));
    let servers = doc["upstreams"]["demo"]["servers"].as_array().cloned();
    assert_eq!(servers.map(|s| s.len()), Some(3), "{}", upstreams.output);

    // SIGTERM: drains, exits 0, removes its folder.
    let pid = demo.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = demo.0.try_wait().expect("waiting for the demo") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "demo still running 10s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let logs = logs.join().unwrap_or_default();
    assert!(status.success(), "exit {status:?}; stderr:\n{logs}");
    assert!(!folder.exists(), "{} removed on exit", folder.display());
}
