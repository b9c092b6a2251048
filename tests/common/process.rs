//! The `gateway` binary as a child process, free ports, and polling for a condition.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_gateway");

/// A port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Polls `cond` every 5 ms until it holds; panics naming `what` after `within`.
pub async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A running `gateway run -c CONFIG` process, stderr in `CONFIG.stderr.log`; killed on drop
/// so a failing test leaves nothing behind.
pub struct Running {
    pub child: Child,
    stderr_path: PathBuf,
}

impl Running {
    pub fn start(config: &Path) -> Running {
        let mut command = Command::new(BIN);
        command.args(["run", "-c"]).arg(config);
        Self::spawn(command, config)
    }

    /// As [`Running::start`], with the open-file limit (soft and hard) set to `open_files`.
    pub fn start_with_open_files(config: &Path, open_files: u32) -> Running {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "ulimit -n {open_files} && exec \"$0\" run -c \"$1\""
            ))
            .arg(BIN)
            .arg(config);
        Self::spawn(command, config)
    }

    fn spawn(mut command: Command, config: &Path) -> Running {
        let stderr_path = config.with_extension("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Running { child, stderr_path }
    }

    /// Sends `kill -SIG` (e.g. "HUP", "TERM").
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} failed");
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "gateway did not exit within {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (up to 10 s) until `cond` holds of the stderr log.
    pub async fn wait_log(&self, what: &str, cond: impl Fn(&str) -> bool) {
        let start = Instant::now();
        while !cond(&self.stderr()) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no {what} in the log:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
