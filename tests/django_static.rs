//! End to end with Django's own `collectstatic` output: the test app (tests/django_app) uses
//! WhiteNoise's `CompressedManifestStaticFilesStorage`, which writes hashed names
//! (`app.39080e3f9408.css`) with `.gz`/`.br` siblings and a `staticfiles.json` manifest. The
//! gateway serves that folder: hashed names are immutable, compressed variants decode to the
//! originals, and the app is never involved.
//!
//! Needs `pip install -r tests/django_app/requirements.txt` (`.ci/run` does it). Without
//! Django the test says so and passes, except under CI (`CI` set), where it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder};
use common::*;
use tokio::io::AsyncReadExt;

fn app_dir() -> PathBuf {
    django_app_dir()
}

fn collectstatic(root: &Path) {
    let status = Command::new("python3")
        .args(["manage.py", "collectstatic", "--noinput", "-v0"])
        .current_dir(app_dir())
        .env("DEMO_STATIC_ROOT", root)
        .env("DEMO_DB", root.join("unused.sqlite3"))
        .status()
        .expect("python3 runs");
    assert!(status.success(), "collectstatic failed");
}

async fn decode(encoding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "br" => BrotliDecoder::new(body)
            .read_to_end(&mut out)
            .await
            .unwrap(),
        "gzip" => GzipDecoder::new(body).read_to_end(&mut out).await.unwrap(),
        other => panic!("unexpected encoding {other}"),
    };
    out
}

#[tokio::test]
async fn collectstatic_output_is_served_by_the_gateway() {
    if !django_stack(&["django", "rest_framework", "whitenoise", "brotli"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("static");
    collectstatic(&root);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("staticfiles.json")).unwrap()).unwrap();
    let hashed = |name: &str| -> String {
        manifest["paths"][name]
            .as_str()
            .unwrap_or_else(|| panic!("{name} not in the manifest"))
            .to_owned()
    };
    let app_css = hashed("demo/app.css");
    let drf_css = hashed("rest_framework/css/bootstrap.min.css");
    assert_ne!(app_css, "demo/app.css", "collectstatic hashed the name");

    let nobody = closed_port().await; // the app must never be contacted for static files
    let yaml = format!(
        r#"
listeners: [{{ name: http, bind: "127.0.0.1:0" }}]
upstreams:
  app: {{ servers: ["{nobody}"] }}
routes:
  - match: {{ path_prefix: /static/ }}
    static:
      root: "{root}"
      precompressed: [br, gzip]
      immutable_hashed: true
      max_age: 60s
  - match: {{ path_prefix: / }}
    upstream: app
logging: {{ access_log: false }}
"#,
        root = root.display()
    );
    let gw = TestGateway::start(&yaml).await;
    let client = reqwest::Client::new();

    for (name, encoding) in [(&app_css, "br"), (&app_css, "gzip"), (&drf_css, "gzip")] {
        let original = std::fs::read(root.join(name)).unwrap();
        let res = client
            .get(gw.url("http", &format!("/static/{name}")))
            .header("Accept-Encoding", encoding)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{name}");
        let h = res.headers().clone();
        assert_eq!(h["content-encoding"], encoding, "{name}");
        assert_eq!(h["vary"], "Accept-Encoding", "{name}");
        assert_eq!(
            h["cache-control"], "public, max-age=31536000, immutable",
            "{name} is a hashed name"
        );
        assert!(h["content-type"].to_str().unwrap().starts_with("text/css"));
        let body = res.bytes().await.unwrap();
        assert_eq!(
            decode(encoding, &body).await,
            original,
            "{name} as {encoding}"
        );
    }

    // The unhashed copy collectstatic also writes is not immutable.
    let res = client
        .get(gw.url("http", "/static/demo/app.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "public, max-age=60");
    assert_eq!(
        res.bytes().await.unwrap(),
        std::fs::read(root.join("demo/app.css")).unwrap()
    );

    // The manifest itself and a missing file.
    let res = client
        .get(gw.url("http", "/static/demo/missing.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}
