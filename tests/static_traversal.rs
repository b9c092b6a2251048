//! The traversal suite: a secret file sits beside the static root (and behind symlinks and
//! dotfiles inside it); no request, however spelled, may return its content.

mod common;
mod static_support;

use static_support::*;

/// Each target with the status it must get. Paths that normalise away from `/static/`
/// (`/static/../secret.txt` is `/secret.txt`) match no route here: 404 as well.
const ATTEMPTS: &[(&str, u16)] = &[
    ("/static/../secret.txt", 404),
    ("/static/%2e%2e/secret.txt", 404),
    ("/static/%2E%2E/secret.txt", 404),
    ("/static/.%2e/secret.txt", 404),
    ("/static/css/../../secret.txt", 404),
    ("/static/..%2fsecret.txt", 400),
    ("/static/%2e%2e%2fsecret.txt", 400),
    ("/static/..%2Fsecret.txt", 400),
    ("/static/..%5csecret.txt", 400),
    ("/static/..\\secret.txt", 400),
    ("/static/secret.txt%00.css", 400),
    ("/static/%00", 400),
    ("/static/%zz", 400),
    ("/static//etc/passwd", 404),
    ("/static//secret.txt", 404),
    ("/static/leak.txt", 404),
    ("/static/up/secret.txt", 404),
    // Through a symlink that leaves the root and comes back: the file is inside, so served.
    ("/static/up/static/css/app.css", 200),
    ("/static/.env", 404),
    ("/static/%2eenv", 404),
    ("/static/./.env", 404),
    ("/static/css/../.env", 404),
    ("/static/.env/", 404),
    ("/assets/.env", 404),
    ("/assets/leak.txt", 404),
    ("/static/%252e%252e/secret.txt", 404),
    ("/static/%C0%AE%C0%AE/secret.txt", 404),
];

#[tokio::test]
async fn nothing_outside_the_root_is_ever_served() {
    let site = Site::start().await;
    for (target, expected) in ATTEMPTS {
        for method in ["GET", "HEAD"] {
            let r = raw(site.addr(), method, target, &["Accept-Encoding: gzip, br"]).await;
            assert!(
                !r.text.contains(SECRET),
                "{method} {target} leaked the secret"
            );
            assert_eq!(r.status, *expected, "{method} {target}: {}", r.text);
        }
    }
    // Absolute-form targets are normalised the same way.
    let absolute = format!("http://{}/static/%2e%2e/secret.txt", site.addr());
    let r = raw(site.addr(), "GET", &absolute, &[]).await;
    assert!(!r.text.contains(SECRET));
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn a_sibling_symlinked_outside_is_never_offered() {
    let site = Site::start().await;
    for accept in ["gzip", "gzip, br", "*"] {
        let r = raw(
            site.addr(),
            "GET",
            "/static/alias.txt",
            &[&format!("Accept-Encoding: {accept}")],
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"alias");
        assert!(r.header("content-encoding").is_none());
        assert!(!r.text.contains(SECRET));
    }
    // Asked for by name, it resolves outside the root: 404.
    let r = raw(site.addr(), "GET", "/static/alias.txt.gz", &[]).await;
    assert_eq!(r.status, 404);
    assert!(!r.text.contains(SECRET));
}

#[tokio::test]
async fn the_fallback_route_reads_nothing_outside_either() {
    let site = Site::start().await;
    for target in [
        "/app/leak.txt",
        "/app/.env",
        "/app/up/secret.txt",
        "/app//secret.txt",
    ] {
        let r = raw(site.addr(), "GET", target, &[]).await;
        assert!(!r.text.contains(SECRET), "{target} leaked the secret");
        // The upstream (an echo) answered instead.
        assert_eq!(r.status, 200, "{target}");
    }
}

/// A served (and cached) file swapped for a symlink to the secret: once the cache looks at
/// the disk again the path is a 404, and the secret never appears. (The window between the
/// check and the open is covered by the unit tests in `src/static_files/resolve_tests.rs`.)
#[cfg(unix)]
#[tokio::test]
async fn a_file_swapped_for_an_outside_symlink_is_not_served() {
    let site = Site::start().await;
    let target = "/static/swap.txt";
    let path = site.root().join("swap.txt");
    std::fs::write(&path, "public").unwrap();
    let r = raw(site.addr(), "GET", target, &[]).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"public"[..]));
    let link = site.root().join("swap.tmp");
    std::os::unix::fs::symlink(site.root().parent().unwrap().join("secret.txt"), &link).unwrap();
    std::fs::rename(&link, &path).unwrap();
    let swapped = std::time::Instant::now();
    let mut gone = false;
    while swapped.elapsed() < std::time::Duration::from_secs(5) {
        for method in ["GET", "HEAD"] {
            let r = raw(site.addr(), method, target, &["Accept-Encoding: gzip, br"]).await;
            assert!(
                !r.text.contains(SECRET),
                "{method} {target} leaked the secret"
            );
            gone |= r.status == 404;
        }
        if gone {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone, "the swapped path is still served");
}
