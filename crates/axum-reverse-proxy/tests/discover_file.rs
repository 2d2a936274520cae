//! FileDiscovery against real files in a temporary directory, polled every 20 ms.

use std::path::Path;
use std::time::Duration;

use axum_reverse_proxy::discover::{FileDiscovery, WeightedUrl};
use futures_util::StreamExt;
use tower::discover::Change;

type Item = Result<Change<String, WeightedUrl>, Box<dyn std::error::Error + Send + Sync>>;

const POLL: Duration = Duration::from_millis(20);

/// Replaces the file atomically, as the docs recommend.
fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn describe(item: &Item) -> String {
    match item {
        Ok(Change::Insert(key, endpoint)) => {
            assert_eq!(key, endpoint.url());
            format!("+{key} w{}", endpoint.weight())
        }
        Ok(Change::Remove(key)) => format!("-{key}"),
        Err(e) => format!("err {e}"),
    }
}

async fn take(discovery: &mut FileDiscovery, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let item = tokio::time::timeout(Duration::from_secs(10), discovery.next())
            .await
            .expect("no item within 10 s")
            .expect("the stream ended");
        out.push(describe(&item));
    }
    out
}

async fn quiet(discovery: &mut FileDiscovery) -> bool {
    tokio::time::timeout(Duration::from_millis(150), discovery.next())
        .await
        .is_err()
}

#[tokio::test]
async fn the_file_is_read_then_its_changes_are_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.txt");
    write(
        &path,
        "# pool\nhttp://10.0.0.1:8080\nhttp://10.0.0.2:8080 weight=2\n",
    );
    let mut discovery = FileDiscovery::with_poll_interval(&path, POLL).unwrap();
    assert_eq!(
        take(&mut discovery, 2).await,
        ["+http://10.0.0.1:8080 w1", "+http://10.0.0.2:8080 w2"]
    );
    assert!(
        quiet(&mut discovery).await,
        "an unchanged file yields nothing"
    );

    // One endpoint goes, one comes, one changes weight.
    write(
        &path,
        "http://10.0.0.2:8080 weight=5\nhttps://[2001:db8::3]:8443\n",
    );
    assert_eq!(
        take(&mut discovery, 3).await,
        [
            "-http://10.0.0.1:8080",
            "+http://10.0.0.2:8080 w5",
            "+https://[2001:db8::3]:8443 w1",
        ]
    );

    // A clone replays the current endpoints.
    let mut clone = discovery.clone();
    assert_eq!(
        take(&mut clone, 2).await,
        ["+http://10.0.0.2:8080 w5", "+https://[2001:db8::3]:8443 w1"]
    );
}

#[tokio::test]
async fn an_invalid_file_is_one_error_and_the_endpoints_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.txt");
    write(&path, "http://10.0.0.1:8080\n");
    let mut discovery = FileDiscovery::with_poll_interval(&path, POLL).unwrap();
    assert_eq!(take(&mut discovery, 1).await, ["+http://10.0.0.1:8080 w1"]);

    write(
        &path,
        "http://10.0.0.1:8080\nhttp://10.0.0.2:8080 weight=many\n",
    );
    let got = take(&mut discovery, 1).await;
    assert!(
        got[0].starts_with("err ") && got[0].contains("line 2"),
        "{got:?}"
    );
    assert!(
        quiet(&mut discovery).await,
        "the same broken file is reported once"
    );

    write(&path, "http://10.0.0.3:8080\n");
    assert_eq!(
        take(&mut discovery, 2).await,
        ["-http://10.0.0.1:8080", "+http://10.0.0.3:8080 w1"]
    );

    // A deleted file is an error too, and empties nothing.
    std::fs::remove_file(&path).unwrap();
    let got = take(&mut discovery, 1).await;
    assert!(got[0].starts_with("err cannot read"), "{got:?}");
    write(&path, "http://10.0.0.3:8080\n");
    assert!(
        quiet(&mut discovery).await,
        "the same endpoints again: no change"
    );
}

#[tokio::test]
async fn a_missing_file_is_an_error_until_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("later.txt");
    let mut discovery = FileDiscovery::with_poll_interval(&path, POLL).unwrap();
    let got = take(&mut discovery, 1).await;
    assert!(got[0].contains("later.txt"), "{got:?}");
    write(&path, "http://10.0.0.1:8080 # first\n");
    assert_eq!(take(&mut discovery, 1).await, ["+http://10.0.0.1:8080 w1"]);
}

#[test]
fn file_discovery_outside_a_runtime_is_an_error_not_a_panic() {
    let error = FileDiscovery::new("/nonexistent").expect_err("an error");
    assert!(error.to_string().contains("Tokio runtime"), "{error}");
}

// ===== through the proxy =====

/// Three upstreams answering `a`, `b`, `c`, in the order their URLs sort (the order the
/// file source yields them, and so the order the balancer lists them).
async fn three_upstreams() -> Vec<String> {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let url = |l: &tokio::net::TcpListener| format!("http://{}", l.local_addr().unwrap());
    listeners.sort_by_key(url);
    let mut urls = Vec::new();
    for (listener, name) in listeners.into_iter().zip(["a", "b", "c"]) {
        urls.push(url(&listener));
        let app = axum::Router::new().fallback(move || async move { name });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    }
    urls
}

async fn hit(
    proxy: &axum_reverse_proxy::DiscoverableBalancedProxy<
        axum_reverse_proxy::ProxyConnector,
        FileDiscovery,
    >,
) -> String {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let request = http::Request::new(axum::body::Body::empty());
    let response = proxy.clone().oneshot(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn file_weights_give_the_smooth_weighted_order() {
    use axum_reverse_proxy::{DiscoverableBalancedProxy, LoadBalancingStrategy};

    let urls = three_upstreams().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.txt");
    write(
        &path,
        &format!("{} weight=5\n{}\n{} weight=1\n", urls[0], urls[1], urls[2]),
    );
    let discovery = FileDiscovery::with_poll_interval(&path, POLL).unwrap();
    let proxy = DiscoverableBalancedProxy::new("/", discovery)
        .with_strategy(LoadBalancingStrategy::WeightedRoundRobin);
    proxy.start_discovery().await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while proxy.endpoints().len() < 3 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("three endpoints");
    let weights: Vec<u32> = proxy.endpoints().iter().map(|s| s.weight).collect();
    assert_eq!(weights, [5, 1, 1]);
    let mut order = String::new();
    for _ in 0..7 {
        order += &hit(&proxy).await;
    }
    assert_eq!(order, "aabacaa");

    // A new weight reaches the balancer: b now weighs 5 too.
    write(
        &path,
        &format!("{} weight=5\n{} weight=5\n{}\n", urls[0], urls[1], urls[2]),
    );
    tokio::time::timeout(Duration::from_secs(10), async {
        while proxy.endpoints().iter().map(|s| s.weight).sum::<u32>() != 11 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the new weight");
    let mut counts = std::collections::HashMap::new();
    for _ in 0..11 {
        *counts.entry(hit(&proxy).await).or_insert(0) += 1;
    }
    assert_eq!(counts["a"], 5);
    assert_eq!(counts["b"], 5);
    assert_eq!(counts["c"], 1);
}
