//! Helpers for the admin tests: a gateway started from a real `gateway.yaml` (so `POST /reload`
//! has a file to re-read), a scrape parsed by `prometheus-parse`, and sample lookups.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use gateway::server::Gateway;
use prometheus_parse::{Sample, Scrape, Value};

/// A gateway whose config lives in `dir/gateway.yaml`.
pub struct AdminGateway {
    pub gateway: Gateway,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

impl AdminGateway {
    pub async fn start(yaml: &str) -> AdminGateway {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, yaml).unwrap();
        let settings = match gateway::config::load(&path) {
            Ok(s) => s,
            Err(e) => panic!("test config is invalid:\n{e}\n---\n{yaml}"),
        };
        let gateway = Gateway::start(settings).await.unwrap();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        AdminGateway {
            gateway,
            dir,
            client,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.yaml")
    }

    pub fn admin(&self) -> SocketAddr {
        self.gateway.admin_addr().expect("admin listener")
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin())
    }

    pub fn url(&self, listener: &str, path: &str) -> String {
        let addr = self.gateway.local_addr(listener).expect("listener");
        format!("http://{addr}{path}")
    }

    /// GET `path` on listener `http`; returns the status.
    pub async fn get(&self, path: &str) -> u16 {
        let response = self
            .client
            .get(self.url("http", path))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let _ = response.bytes().await;
        status
    }

    /// `GET /metrics` in the classic text format, checked strictly, then parsed.
    pub async fn scrape(&self) -> Metrics {
        let response = self
            .client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let text = response.text().await.unwrap();
        check_exposition(&text);
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        Metrics {
            scrape: Scrape::parse(lines).unwrap(),
            text,
        }
    }
}

/// Every sample belongs to a family declared by `# TYPE` before it, with the suffixes the
/// type allows; every line is a comment or `name{labels} value`.
fn check_exposition(text: &str) {
    let mut families: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            families.push((name.to_owned(), kind.to_owned()));
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).expect("sample name");
        let name = &line[..name_end];
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line}");
        let declared = families.iter().any(|(family, kind)| match kind.as_str() {
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.strip_suffix(s) == Some(family)),
            _ => name == family,
        });
        assert!(declared, "sample without a matching # TYPE: {line}");
    }
}

pub struct Metrics {
    pub scrape: Scrape,
    pub text: String,
}

impl Metrics {
    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.scrape.samples.iter().filter(move |s| {
            s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }

    /// The value of the one counter or gauge sample `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        assert!(found.len() <= 1, "{name}{labels:?} is ambiguous: {found:?}");
        found.first().map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is not a scalar: {other:?}"),
        })
    }

    /// Like [`Metrics::value`], failing the test when the series is missing.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?} in\n{}", self.text))
    }

    /// The `+Inf` bucket (the observation count) of histogram `name` with `labels`.
    pub fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let sample = self
            .matching(name, labels)
            .next()
            .unwrap_or_else(|| panic!("no histogram {name}{labels:?} in\n{}", self.text));
        let Value::Histogram(buckets) = &sample.value else {
            panic!("{name} is not a histogram: {sample:?}");
        };
        let inf = buckets
            .iter()
            .find(|b| b.less_than.is_infinite())
            .expect("+Inf bucket");
        let count_sample = format!("{name}_count");
        assert_eq!(Some(inf.count), self.value(&count_sample, labels));
        inf.count
    }

    /// The sum of every sample named `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.matching(name, &[])
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                _ => 0.0,
            })
            .sum()
    }

    /// Whether a family with this name is declared (`# TYPE`).
    pub fn declares(&self, name: &str) -> bool {
        self.text.contains(&format!("# TYPE {name} "))
    }
}

/// Polls `cond` until it holds (or fails the test after `timeout`).
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
