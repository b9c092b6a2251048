//! The Django test app (tests/django_app): where it lives, and whether its Python stack is
//! installed. Tests that need it skip without it, except under CI (`CI` set), where a missing
//! stack is a failure: `.ci/run` installs it.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// tests/django_app, the Django + DRF + simplejwt + WhiteNoise project the tests run.
pub fn django_app_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/django_app")
}

/// True when `python3` can import every module in `modules`. When it can't: under CI this
/// panics (the stack must be there); elsewhere it prints why the test is skipped and returns
/// false, and the test returns early.
pub fn django_stack(modules: &[&str]) -> bool {
    let imports = format!("import {}", modules.join(", "));
    let found = Command::new("python3")
        .args(["-c", &imports])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let hint = "pip install -r tests/django_app/requirements.txt";
        assert!(
            std::env::var_os("CI").is_none(),
            "{modules:?} missing in CI: {hint}"
        );
        eprintln!("SKIPPED: Python modules {modules:?} not installed ({hint})");
    }
    found
}

/// One Gunicorn instance of the test app (master + workers) in its own process group, bound
/// to `addr`, its database at `db`; `options` go before the app (worker count, class, logs).
/// Dropped, it is killed with its whole group.
pub struct Gunicorn {
    child: Child,
    pub addr: SocketAddr,
}

impl Gunicorn {
    pub fn spawn(addr: SocketAddr, db: &Path, options: &[&str]) -> Gunicorn {
        let db = db.display().to_string();
        Gunicorn::spawn_with(addr, &[("DEMO_DB", db.as_str())], options)
    }

    /// As [`Gunicorn::spawn`], with the app's whole environment given (`DEMO_DB`,
    /// `DJANGO_SECRET_KEY`, `ACCESS_TOKEN_SECONDS`, ...).
    pub fn spawn_with(addr: SocketAddr, envs: &[(&str, &str)], options: &[&str]) -> Gunicorn {
        let child = Command::new("python3")
            .args(["-m", "gunicorn", "-b", &addr.to_string()])
            .args(options)
            .arg("demo.wsgi:application")
            .current_dir(django_app_dir())
            .envs(envs.iter().copied())
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gunicorn starts");
        Gunicorn { child, addr }
    }

    /// SIGKILL to the whole group: the master cannot reap or replace its workers.
    pub fn kill_group(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }

    /// Waits until the instance's workers answer `GET /healthz` directly.
    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let res = client
                .get(format!("http://{}/healthz", self.addr))
                .send()
                .await;
            if res.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gunicorn did not answer on {}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Gunicorn {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill_group();
        }
    }
}
