//! HTTP/2 towards clients: h2c by prior knowledge only where the listener allows it.

mod common;

use common::{Proxy, TempDir, echo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_only_where_enabled() {
    let upstream = echo("h2").await;
    let dir = TempDir::new("h2c");
    let config = common::simple_config(upstream, "").replace(
        "[listeners.web]",
        "[listeners.h2c]\naddress = \"127.0.0.1:0\"\nh2c = true\n\n[listeners.web]",
    );
    let path = dir.write("proxy.toml", &config);
    let proxy = Proxy::with_config(&path);
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();

    let resp = h2
        .get(format!("{}/x", proxy.listener_url("h2c")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["upstream"], "h2");

    // The plain listener speaks HTTP/1.1 only.
    assert!(
        h2.get(format!("{}/x", proxy.listener_url("web")))
            .send()
            .await
            .is_err()
    );
}
