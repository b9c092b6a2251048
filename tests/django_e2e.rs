//! End to end with the real stack: Django + DRF + djangorestframework-simplejwt served by
//! Gunicorn, behind the gateway over TLS. Tokens come from the app itself
//! (`POST /api/token/` through the gateway) and are verified by the gateway before the app
//! ever sees the request.
//!
//! Needs `pip install -r tests/django_app/requirements.txt` (`.ci/run` does it). Without
//! Django the test says so and passes, except under CI (`CI` set), where it fails.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn manage(envs: &[(&str, String)], args: &[&str]) {
    let status = Command::new("python3")
        .arg("manage.py")
        .args(args)
        .current_dir(django_app_dir())
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .status()
        .expect("python3 runs");
    assert!(status.success(), "manage.py {args:?} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simplejwt_tokens_through_the_gateway() {
    if !django_stack(&["django", "rest_framework_simplejwt", "gunicorn"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let secret = format!("test-secret-{}", std::process::id());
    let envs = [
        (
            "DEMO_DB",
            tmp.path().join("db.sqlite3").display().to_string(),
        ),
        ("DJANGO_SECRET_KEY", secret.clone()),
        ("ACCESS_TOKEN_SECONDS", "2".to_string()),
    ];
    manage(&envs, &["migrate", "-v0"]);
    manage(
        &envs,
        &[
            "shell",
            "-c",
            "from django.contrib.auth.models import User; User.objects.create_user('alice', password='wonderland-42')",
        ],
    );
    let app_addr = closed_port().await;
    let app_envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gunicorn = Gunicorn::spawn_with(app_addr, &app_envs, &["-w", "2"]);
    gunicorn.wait_ready().await;

    let ca = TestCa::new();
    let (cert, key, _) = ca.issue("api", &["api.test"]);
    let yaml = format!(
        r#"
listeners:
  - name: https
    bind: "127.0.0.1:0"
    tls:
      certificates: [{{ cert: "{cert}", key: "{key}" }}]
upstreams:
  app: {{ servers: ["{app_addr}"] }}
jwt_policies:
  django:
    algorithms: [HS256]
    key: {{ secret: "{secret}" }}
    leeway: 0s
    claims: {{ token_type: access }}
    forward_claims: {{ user_id: X-User-Id }}
routes:
  - match: {{ path_prefix: /api/token/ }}
    upstream: app
  - match: {{ path_prefix: /api/ }}
    jwt: django
    upstream: app
logging: {{ access_log: false }}
"#,
        cert = cert.display(),
        key = key.display(),
    );
    let gw = TestGateway::start(&yaml).await;
    let client = ca.client(&[("api.test", gw.addr("https"))], false);
    let base = format!("https://api.test:{}", gw.addr("https").port());

    // A token pair from the app itself, through the gateway.
    let pair: serde_json::Value = client
        .post(format!("{base}/api/token/"))
        .form(&[("username", "alice"), ("password", "wonderland-42")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = pair["access"].as_str().expect("access token").to_owned();
    let refresh = pair["refresh"].as_str().expect("refresh token").to_owned();

    // The access token passes the gateway and simplejwt; the app sees the forwarded claim.
    // Two Cookie fields (over HTTP/2 each cookie travels alone) reach Django as two cookies.
    let res = client
        .get(format!("{base}/api/me/"))
        .bearer_auth(&access)
        .header("X-User-Id", "999")
        .header("Cookie", "sessionid=abc")
        .header("Cookie", "csrftoken=xyz")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    let me: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        me["cookies"],
        serde_json::json!({"sessionid": "abc", "csrftoken": "xyz"})
    );
    assert_eq!(me["username"], "alice");
    assert_eq!(me["x_user_id"], me["user_id"].to_string().trim_matches('"'));
    assert_eq!(
        me["is_secure"], true,
        "X-Forwarded-Proto https reached Django"
    );

    // Refresh token, tampered token, no token: 401 from the gateway.
    let mut tampered = access.clone().into_bytes();
    let mid = access.find('.').unwrap() + 5;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for (what, token) in [
        ("refresh", Some(&refresh)),
        ("tampered", Some(&tampered)),
        ("none", None),
    ] {
        let mut req = client.get(format!("{base}/api/me/"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401, "{what} token");
        let challenge = res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
    }

    // After the 2 s lifetime the access token is refused by the gateway.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let res = client
        .get(format!("{base}/api/me/"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "expired access token");
    drop(gunicorn);
}
