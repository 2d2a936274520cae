//! EtcdDiscovery against a real etcd (`/usr/bin/etcd` from Debian's `etcd-server`) that
//! each test starts on 127.0.0.1 with free ports and a temporary data directory.
#![cfg(feature = "etcd")]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum_reverse_proxy::discover::{EtcdDiscovery, EtcdDiscoveryConfig, WeightedUrl};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tower::discover::Change;

type Item = Result<Change<String, WeightedUrl>, Box<dyn std::error::Error + Send + Sync>>;

// ===== a real etcd =====

fn etcd_binary() -> PathBuf {
    let found = std::env::var_os("ETCD_BIN").map(PathBuf::from).or_else(|| {
        ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    });
    match found {
        Some(path) if path.exists() => path,
        _ => panic!(
            "the etcd tests need an etcd binary: install it with `apt-get install -y etcd-server` \
             (or point ETCD_BIN at one)"
        ),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Etcd {
    child: Option<Child>,
    client_url: String,
    peer_url: String,
    data_dir: tempfile::TempDir,
}

impl Etcd {
    async fn start() -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let mut etcd = Self {
            child: None,
            client_url: format!("http://127.0.0.1:{}", free_port()),
            peer_url: format!("http://127.0.0.1:{}", free_port()),
            data_dir,
        };
        etcd.spawn().await;
        etcd
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.log_path()).unwrap();
        let child = Command::new(etcd_binary())
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.data_dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={}", self.client_url))
            .arg(format!("--advertise-client-urls={}", self.client_url))
            .arg(format!("--listen-peer-urls={}", self.peer_url))
            .arg(format!("--initial-advertise-peer-urls={}", self.peer_url))
            .arg(format!("--initial-cluster=test={}", self.peer_url))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start etcd");
        self.child = Some(child);
        self.wait_healthy().await;
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.path().join("etcd.log")
    }

    /// Polls `/health` with short bounded attempts.
    async fn wait_healthy(&mut self) {
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("etcd exited ({status}): {}", read_log(&self.log_path()));
            }
            let health = client
                .get(format!("{}/health", self.client_url))
                .timeout(Duration::from_millis(500))
                .send()
                .await;
            if let Ok(response) = health
                && let Ok(body) = response.json::<Value>().await
                && body["health"] == "true"
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "etcd did not become healthy in 20 s: {}",
            read_log(&self.log_path())
        );
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn call(&self, path: &str, body: Value) -> Value {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.client_url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    async fn put(&self, key: &str, value: &str) {
        self.call(
            "/v3/kv/put",
            json!({ "key": BASE64.encode(key), "value": BASE64.encode(value) }),
        )
        .await;
    }

    async fn delete(&self, key: &str) {
        self.call("/v3/kv/deleterange", json!({ "key": BASE64.encode(key) }))
            .await;
    }

    fn discovery(&self, prefix: &str) -> EtcdDiscovery {
        let config = EtcdDiscoveryConfig::new([self.client_url.clone()], prefix)
            .with_backoff(Duration::from_millis(50), Duration::from_millis(400))
            .with_request_timeout(Duration::from_secs(2));
        EtcdDiscovery::new(config).unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_log(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let start = log.len().saturating_sub(2000);
    log.get(start..).unwrap_or_default().to_owned()
}

// ===== helpers =====

fn describe(item: &Item) -> String {
    match item {
        Ok(Change::Insert(key, endpoint)) => {
            format!("+{key}={} w{}", endpoint.url(), endpoint.weight())
        }
        Ok(Change::Remove(key)) => format!("-{key}"),
        Err(e) => format!("err {e}"),
    }
}

async fn take(discovery: &mut EtcdDiscovery, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let item = tokio::time::timeout(Duration::from_secs(15), discovery.next())
            .await
            .expect("no item within 15 s")
            .expect("the stream ended");
        out.push(describe(&item));
    }
    out
}

/// The next item that is not an error.
async fn next_change(discovery: &mut EtcdDiscovery) -> String {
    loop {
        let item = take(discovery, 1).await.remove(0);
        if !item.starts_with("err ") {
            return item;
        }
    }
}

async fn quiet(discovery: &mut EtcdDiscovery) -> bool {
    tokio::time::timeout(Duration::from_millis(300), discovery.next())
        .await
        .is_err()
}

// ===== tests =====

#[tokio::test]
async fn reads_the_prefix_then_streams_puts_and_deletes() {
    let etcd = Etcd::start().await;
    etcd.put("/svc/api/a", "http://10.0.0.1:8080").await;
    etcd.put(
        "/svc/api/b",
        r#"{"url": "http://10.0.0.2:8080", "weight": 3}"#,
    )
    .await;
    etcd.put("/svc/other/x", "http://10.9.9.9:80").await;

    let mut discovery = etcd.discovery("/svc/api/");
    assert_eq!(
        take(&mut discovery, 2).await,
        [
            "+/svc/api/a=http://10.0.0.1:8080 w1",
            "+/svc/api/b=http://10.0.0.2:8080 w3",
        ]
    );
    assert!(quiet(&mut discovery).await);

    etcd.put("/svc/api/c", "https://[2001:db8::3]:8443").await;
    assert_eq!(
        take(&mut discovery, 1).await,
        ["+/svc/api/c=https://[2001:db8::3]:8443 w1"]
    );
    // A put on an existing key replaces its endpoint.
    etcd.put("/svc/api/a", r#"{"url": "http://10.0.0.1:9090"}"#)
        .await;
    assert_eq!(
        take(&mut discovery, 1).await,
        ["+/svc/api/a=http://10.0.0.1:9090 w1"]
    );
    etcd.delete("/svc/api/b").await;
    assert_eq!(take(&mut discovery, 1).await, ["-/svc/api/b"]);
    // Keys outside the prefix are not ours.
    etcd.put("/svc/other/y", "http://10.9.9.8:80").await;
    etcd.put("/svc/apix", "http://10.9.9.7:80").await;
    assert!(quiet(&mut discovery).await);

    // A clone replays the current endpoints.
    let mut clone = discovery.clone();
    assert_eq!(
        take(&mut clone, 2).await,
        [
            "+/svc/api/a=http://10.0.0.1:9090 w1",
            "+/svc/api/c=https://[2001:db8::3]:8443 w1",
        ]
    );
}

#[tokio::test]
async fn an_invalid_value_is_an_error_and_its_key_is_absent() {
    let etcd = Etcd::start().await;
    etcd.put("/pool/a", "http://10.0.0.1:8080").await;
    let mut discovery = etcd.discovery("/pool/");
    assert_eq!(
        take(&mut discovery, 1).await,
        ["+/pool/a=http://10.0.0.1:8080 w1"]
    );

    etcd.put("/pool/a", "not a url").await;
    let got = take(&mut discovery, 2).await;
    assert_eq!(got[0], "-/pool/a");
    assert!(
        got[1].starts_with("err ") && got[1].contains("/pool/a"),
        "{got:?}"
    );
    etcd.put("/pool/b", r#"{"url": "http://10.0.0.2:1", "weight": 0}"#)
        .await;
    let got = take(&mut discovery, 1).await;
    assert!(got[0].contains("weight"), "{got:?}");
    etcd.put("/pool/a", "http://10.0.0.3:8080").await;
    assert_eq!(
        take(&mut discovery, 1).await,
        ["+/pool/a=http://10.0.0.3:8080 w1"]
    );
}

#[tokio::test]
async fn reconnects_after_etcd_restarts_and_catches_up() {
    let mut etcd = Etcd::start().await;
    etcd.put("/pool/a", "http://10.0.0.1:8080").await;
    etcd.put("/pool/b", "http://10.0.0.2:8080").await;
    let mut discovery = etcd.discovery("/pool/");
    take(&mut discovery, 2).await;

    etcd.stop();
    let got = take(&mut discovery, 1).await;
    assert!(
        got[0].starts_with("err "),
        "the lost watch is reported: {got:?}"
    );

    etcd.spawn().await;
    // Changed while nobody watched? Not possible with one member, so change it now: the
    // resumed watch (or the full re-read) delivers it.
    etcd.delete("/pool/a").await;
    etcd.put("/pool/c", "http://10.0.0.3:8080").await;
    assert_eq!(next_change(&mut discovery).await, "-/pool/a");
    assert_eq!(
        next_change(&mut discovery).await,
        "+/pool/c=http://10.0.0.3:8080 w1"
    );
}

#[tokio::test]
async fn an_unreachable_etcd_is_reported_with_backoff() {
    let port = free_port();
    let config = EtcdDiscoveryConfig::new([format!("http://127.0.0.1:{port}")], "/x/")
        .with_backoff(Duration::from_millis(100), Duration::from_millis(400))
        .with_request_timeout(Duration::from_secs(1));
    let mut discovery = EtcdDiscovery::new(config).unwrap();
    let started = tokio::time::Instant::now();
    let got = take(&mut discovery, 4).await;
    assert!(got.iter().all(|g| g.starts_with("err ")), "{got:?}");
    // 100 + 200 + 400 ms of backoff between the four failures.
    assert!(
        started.elapsed() >= Duration::from_millis(650),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn bad_configurations_are_errors() {
    assert!(EtcdDiscovery::new(EtcdDiscoveryConfig::new(Vec::<String>::new(), "/")).is_err());
    assert!(EtcdDiscovery::new(EtcdDiscoveryConfig::new(["127.0.0.1:2379"], "/")).is_err());
}

/// etcd's own count of open watchers.
async fn watchers(etcd: &Etcd) -> u64 {
    let text = reqwest::get(format!("{}/metrics", etcd.client_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .map(|n| n as u64)
        .expect("etcd reports etcd_debugging_mvcc_watcher_total")
}

async fn wait_for_watchers(etcd: &Etcd, expected: u64) {
    for _ in 0..100 {
        if watchers(etcd).await == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "etcd still has {} watchers, expected {expected}",
        watchers(etcd).await
    );
}

#[tokio::test]
async fn one_watch_for_all_clones_and_none_once_they_are_dropped() {
    let etcd = Etcd::start().await;
    etcd.put("/pool/a", "http://10.0.0.1:8080").await;
    let mut discovery = etcd.discovery("/pool/");
    take(&mut discovery, 1).await;
    let mut clone = discovery.clone();
    take(&mut clone, 1).await;
    wait_for_watchers(&etcd, 1).await;
    drop(discovery);
    etcd.put("/pool/b", "http://10.0.0.2:8080").await;
    assert_eq!(
        take(&mut clone, 1).await,
        ["+/pool/b=http://10.0.0.2:8080 w1"]
    );
    drop(clone);
    wait_for_watchers(&etcd, 0).await;
}

// ===== through the proxy =====

async fn named_upstream(name: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(move || async move { name });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test]
async fn etcd_weights_reach_the_balancer() {
    use axum_reverse_proxy::{DiscoverableBalancedProxy, LoadBalancingStrategy};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let etcd = Etcd::start().await;
    let (a, b, c) = (
        named_upstream("a").await,
        named_upstream("b").await,
        named_upstream("c").await,
    );
    etcd.put("/pool/a", &format!(r#"{{"url": "{a}", "weight": 5}}"#))
        .await;
    etcd.put("/pool/b", &b).await;
    etcd.put("/pool/c", &format!(r#"{{"url": "{c}", "weight": 1}}"#))
        .await;
    let proxy = DiscoverableBalancedProxy::new("/", etcd.discovery("/pool/"))
        .with_strategy(LoadBalancingStrategy::WeightedRoundRobin);
    proxy.start_discovery().await;
    let wait_for_weights = async |expected: [u32; 3]| {
        tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                let mut weights: Vec<(String, u32)> = proxy
                    .endpoints()
                    .into_iter()
                    .map(|s| (s.url, s.weight))
                    .collect();
                weights.sort();
                let mut want = vec![(a.clone(), expected[0]), (b.clone(), expected[1])];
                want.push((c.clone(), expected[2]));
                want.sort();
                if weights == want {
                    return;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("weights never became {expected:?}: {:?}", proxy.endpoints()));
    };
    wait_for_weights([5, 1, 1]).await;
    let hit = async || {
        let response = proxy
            .clone()
            .oneshot(http::Request::new(axum::body::Body::empty()))
            .await
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    };
    let mut order = String::new();
    for _ in 0..7 {
        order += &hit().await;
    }
    assert_eq!(order, "aabacaa");

    // A put with a new weight reaches the balancer.
    etcd.put("/pool/c", &format!(r#"{{"url": "{c}", "weight": 5}}"#))
        .await;
    wait_for_weights([5, 1, 5]).await;
    let mut counts = std::collections::HashMap::new();
    for _ in 0..11 {
        *counts.entry(hit().await).or_insert(0) += 1;
    }
    assert_eq!((counts["a"], counts["b"], counts["c"]), (5, 1, 5));
}
