//! Unit tests of path validation and file lookup.

use std::fs;

use super::*;

fn rel(segments: &[&str], dir: bool) -> Option<RelPath> {
    Some(RelPath {
        segments: segments.iter().map(|s| s.to_string()).collect(),
        dir,
    })
}

#[test]
fn parses_and_decodes_segments() {
    assert_eq!(RelPath::parse(""), rel(&[], false));
    assert_eq!(RelPath::parse("/"), rel(&[], true));
    assert_eq!(
        RelPath::parse("/css/app.css"),
        rel(&["css", "app.css"], false)
    );
    assert_eq!(RelPath::parse("/css/"), rel(&["css"], true));
    assert_eq!(RelPath::parse("/a%20b.txt"), rel(&["a b.txt"], false));
    assert_eq!(RelPath::parse("/caf%C3%A9.css"), rel(&["café.css"], false));
    assert_eq!(RelPath::parse("/a.b/c..d"), rel(&["a.b", "c..d"], false));
}

#[test]
fn refuses_what_could_leave_the_root_or_show_hidden_files() {
    for bad in [
        "x",
        "//etc/passwd",
        "/a//b",
        "/..",
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/a%2Fb",
        "/a%5Cb",
        "/a\\b",
        "/a%00b",
        "/a%0Ab",
        "/.env",
        "/css/.git",
        "/%2eenv",
        "/.",
        "/a%zz",
        "/a%4",
        "/%FF%FE",
    ] {
        assert_eq!(RelPath::parse(bad), None, "{bad}");
    }
}

fn lookup(root: &Path) -> Lookup {
    Lookup {
        root: root.to_path_buf(),
        index: vec!["index.html".into()],
        precompressed: vec![Encoding::Br, Encoding::Gzip],
        max_in_memory: 16,
        sendfile: true,
    }
}

fn parse(p: &str) -> RelPath {
    RelPath::parse(p).unwrap()
}

fn memory(v: &FileVariant) -> &[u8] {
    match &v.body {
        Body::Memory(b, _) => b,
        Body::File(_) => panic!("expected an in-memory body"),
    }
}

#[test]
fn finds_files_siblings_and_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("static");
    fs::create_dir_all(root.join("docs")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::write(root.join("app.css"), "body{}").unwrap();
    fs::write(root.join("app.css.gz"), "GZ").unwrap();
    fs::write(root.join("docs/index.html"), "<h1>").unwrap();
    fs::write(root.join("big.bin"), [7u8; 100]).unwrap();
    let l = lookup(&root);

    let Found::File(f) = l.run(&parse("/app.css"), None) else {
        panic!("app.css not found")
    };
    assert_eq!(f.name, "app.css");
    let encodings: Vec<Encoding> = f.variants.iter().map(|v| v.encoding).collect();
    assert_eq!(encodings, [Encoding::Identity, Encoding::Gzip]);
    assert_eq!(memory(&f.variants[0]), b"body{}");
    assert_eq!(memory(&f.variants[1]), b"GZ");
    assert_eq!(f.variants[0].stamp.len, 6);

    // Unchanged stamps are recognised without reading again.
    let stamps = f.stamps();
    assert!(matches!(
        l.run(&parse("/app.css"), Some(&stamps)),
        Found::Unchanged
    ));
    fs::write(root.join("app.css"), "body{color:red}").unwrap();
    assert!(matches!(
        l.run(&parse("/app.css"), Some(&stamps)),
        Found::File(_)
    ));

    let Found::File(f) = l.run(&parse("/docs/"), None) else {
        panic!("index not found")
    };
    assert_eq!(
        (f.name.as_str(), memory(&f.variants[0])),
        ("index.html", &b"<h1>"[..])
    );
    assert!(matches!(l.run(&parse("/docs"), None), Found::Redirect));
    assert!(matches!(l.run(&parse("/empty/"), None), Found::Missing));
    assert!(matches!(l.run(&parse("/empty"), None), Found::Missing));
    assert!(matches!(l.run(&parse("/app.css/"), None), Found::Missing));
    assert!(matches!(l.run(&parse("/nope.css"), None), Found::Missing));
    assert!(matches!(l.run(&parse(""), None), Found::Missing));

    let Found::File(f) = l.run(&parse("/big.bin"), None) else {
        panic!("big.bin not found")
    };
    assert!(matches!(f.variants[0].body, Body::File(_)));
    assert_eq!(f.variants[0].stamp.len, 100);
}

#[cfg(unix)]
#[test]
fn symlinks_are_followed_only_inside_the_root() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("static");
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::write(dir.path().join("secret.txt"), "TOP SECRET").unwrap();
    fs::write(root.join("sub/real.txt"), "ok").unwrap();
    symlink(dir.path().join("secret.txt"), root.join("leak.txt")).unwrap();
    symlink(dir.path(), root.join("up")).unwrap();
    symlink(root.join("sub/real.txt"), root.join("alias.txt")).unwrap();
    symlink(dir.path().join("secret.txt"), root.join("alias.txt.gz")).unwrap();
    let l = lookup(&root);

    assert!(matches!(l.run(&parse("/leak.txt"), None), Found::Missing));
    assert!(matches!(
        l.run(&parse("/up/secret.txt"), None),
        Found::Missing
    ));
    let Found::File(f) = l.run(&parse("/alias.txt"), None) else {
        panic!("inside symlink not followed")
    };
    // The sibling pointing outside is never offered.
    assert_eq!(f.variants.len(), 1);
    assert_eq!(memory(&f.variants[0]), b"ok");

    // A root that is itself a symlink (a deploy's `current`) works.
    let current = dir.path().join("current");
    symlink(&root, &current).unwrap();
    assert!(matches!(
        lookup(&current).run(&parse("/sub/real.txt"), None),
        Found::File(_)
    ));
}

/// The window between the checks and the open: `inside` approved a path, then a component
/// of it is swapped for a symlink leading out before `open` runs.
#[cfg(unix)]
#[test]
fn an_open_that_follows_a_swapped_in_symlink_is_refused() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("static");
    let outside = dir.path().join("outside");
    fs::create_dir_all(root.join("css")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("app.css"), "TOP SECRET").unwrap();
    fs::write(root.join("app.css"), "ok").unwrap();
    fs::write(root.join("css/app.css"), "ok").unwrap();
    let l = lookup(&root);
    let canonical_root = fs::canonicalize(&root).unwrap();
    let checked = |rel: &str| {
        let (c, m) = inside(&canonical_root, &root.join(rel)).unwrap().unwrap();
        assert!(m.is_file());
        c
    };
    let file = checked("app.css");
    let in_dir = checked("css/app.css");
    // Untouched, both open.
    assert!(l.open(&canonical_root, &file).is_ok());
    assert!(l.open(&canonical_root, &in_dir).is_ok());

    // The file itself becomes a symlink to the secret.
    fs::remove_file(root.join("app.css")).unwrap();
    symlink(outside.join("app.css"), root.join("app.css")).unwrap();
    assert!(l.open(&canonical_root, &file).is_err());
    // A folder on the way becomes a symlink to an outside folder with the same names.
    fs::remove_dir_all(root.join("css")).unwrap();
    symlink(&outside, root.join("css")).unwrap();
    assert!(l.open(&canonical_root, &in_dir).is_err());
    // The fallback check (no /proc) refuses both as well.
    let secret = fs::metadata(outside.join("app.css")).unwrap();
    assert!(!same_file_inside(&canonical_root, &file, &secret));
    assert!(!same_file_inside(&canonical_root, &in_dir, &secret));
    // And a whole lookup is a miss.
    assert!(matches!(l.run(&parse("/app.css"), None), Found::Missing));
    assert!(matches!(
        l.run(&parse("/css/app.css"), None),
        Found::Missing
    ));
}

/// The same race for real: one thread keeps swapping a file for an outside-pointing symlink
/// while lookups run; no lookup may ever return the secret.
#[cfg(unix)]
#[test]
fn lookups_racing_a_symlink_swap_never_read_outside() {
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("static");
    fs::create_dir_all(&root).unwrap();
    fs::write(dir.path().join("secret.txt"), "TOP SECRET").unwrap();
    fs::write(root.join("f.txt"), "public").unwrap();
    // Prepared side by side, renamed over `f.txt` in turn (rename is atomic).
    fs::write(root.join("plain.tmp"), "public").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (root, secret, stop) = (root.clone(), dir.path().join("secret.txt"), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = symlink(&secret, root.join("link.tmp"));
                let _ = fs::rename(root.join("link.tmp"), root.join("f.txt"));
                let _ = fs::write(root.join("plain.tmp"), "public");
                let _ = fs::rename(root.join("plain.tmp"), root.join("f.txt"));
            }
        })
    };
    let l = lookup(&root);
    let started = std::time::Instant::now();
    let mut served = 0;
    for _ in 0..3000 {
        if let Found::File(f) = l.run(&parse("/f.txt"), None) {
            assert_eq!(memory(&f.variants[0]), b"public", "read outside the root");
            served += 1;
        }
        if started.elapsed() > std::time::Duration::from_secs(10) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(served > 0, "the file was never served at all");
}

/// Runs `f` on its own thread and waits at most five seconds for it; `unblock` is called if
/// it has not finished by then (so the thread can end), and the test fails.
#[cfg(unix)]
fn within_seconds<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
    unblock: impl FnOnce(),
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(5)) {
        Ok(value) => value,
        Err(_) => {
            unblock();
            panic!("{what} blocked for more than 5 s");
        }
    }
}

#[cfg(unix)]
fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// A FIFO is never a regular file: asked for directly, or swapped in over a file between the
/// checks and the open, it is a quick miss. A plain open would wait for a writer forever,
/// holding a blocking-pool thread.
#[cfg(unix)]
#[test]
fn a_fifo_is_a_quick_miss_and_never_blocks_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("static");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("app.css"), "ok").unwrap();
    mkfifo(&root.join("pipe"));
    mkfifo(&root.join("pipe.tmp"));
    let canonical_root = fs::canonicalize(&root).unwrap();
    let (checked, meta) = inside(&canonical_root, &root.join("app.css"))
        .unwrap()
        .unwrap();
    assert!(meta.is_file());
    // Writers that release a blocked open, should one happen.
    let release = |path: PathBuf| {
        move || {
            let _ = std::fs::OpenOptions::new().write(true).open(path);
        }
    };

    let l = lookup(&root);
    let found = within_seconds(
        "a lookup of a FIFO",
        move || l.run(&parse("/pipe"), None),
        release(root.join("pipe")),
    );
    assert!(matches!(found, Found::Missing));

    // Checked as a regular file, then a FIFO is renamed over it before the open.
    fs::rename(root.join("pipe.tmp"), root.join("app.css")).unwrap();
    let l = lookup(&root);
    let (c_root, c_file) = (canonical_root.clone(), checked.clone());
    let opened = within_seconds(
        "opening a FIFO swapped in after the check",
        move || l.open(&c_root, &c_file).map(|_| ()),
        release(checked),
    );
    let err = opened.expect_err("a FIFO was opened as a file");
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
}

/// The canonical path has no symlink in it; its last component turning into one after
/// canonicalisation means it was swapped, and the open fails (`O_NOFOLLOW`) even when the
/// link stays inside the root. A symlink present at lookup time is still followed.
#[cfg(unix)]
#[test]
fn a_final_component_swapped_for_a_symlink_after_canonicalisation_is_refused() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("static");
    fs::create_dir_all(&root).unwrap();
    fs::write(dir.path().join("secret.txt"), "TOP SECRET").unwrap();
    fs::write(root.join("app.css"), "ok").unwrap();
    fs::write(root.join("other.css"), "other").unwrap();
    fs::write(root.join("main.css"), "main").unwrap();
    let l = lookup(&root);
    let canonical_root = fs::canonicalize(&root).unwrap();
    let checked = |rel: &str| inside(&canonical_root, &root.join(rel)).unwrap().unwrap().0;
    let app = checked("app.css");
    let main = checked("main.css");

    // Swapped for a link to another file inside the root.
    fs::remove_file(root.join("app.css")).unwrap();
    symlink(root.join("other.css"), root.join("app.css")).unwrap();
    let err = l
        .open(&canonical_root, &app)
        .expect_err("followed a swapped-in symlink");
    #[cfg(target_os = "linux")]
    assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
    // Swapped for a link leading out: refused by the open itself, before any later check.
    fs::remove_file(root.join("main.css")).unwrap();
    symlink(dir.path().join("secret.txt"), root.join("main.css")).unwrap();
    let err = l
        .open(&canonical_root, &main)
        .expect_err("followed a swapped-in symlink");
    #[cfg(target_os = "linux")]
    assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");

    // A fresh lookup canonicalises again: the in-root link is served, the outside one not.
    let Found::File(f) = l.run(&parse("/app.css"), None) else {
        panic!("in-root symlink not followed")
    };
    assert_eq!(memory(&f.variants[0]), b"other");
    assert!(matches!(l.run(&parse("/main.css"), None), Found::Missing));
}
