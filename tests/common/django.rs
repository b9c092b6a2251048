//! The Django test app (tests/django_app): where it lives, and whether its Python stack is
//! installed. Tests that need it skip without it, except under CI (`CI` set), where a missing
//! stack is a failure: `.ci/run` installs it.

use std::path::PathBuf;
use std::process::{Command, Stdio};

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
