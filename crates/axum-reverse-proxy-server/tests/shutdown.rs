//! Graceful shutdown: SIGTERM stops accepting, lets the request in flight complete, then
//! the process exits 0; past the drain deadline it closes what is left.

mod common;

use axum::body::Bytes;
use common::{Proxy, TempDir, client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_request_in_flight_then_exits_0() {
    let (upstream, chunks) = common::driven_stream("/slow").await;
    let dir = TempDir::new("shutdown");
    let path = dir.write("proxy.toml", &common::simple_config(upstream, ""));
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");

    let mut resp = client().get(format!("{front}/slow")).send().await.unwrap();
    chunks.send(Bytes::from_static(b"first;")).await.unwrap();
    assert_eq!(resp.chunk().await.unwrap().unwrap(), "first;");

    proxy.signal("TERM");
    let (proxy, _) = proxy.wait_line_async(|l| l.contains("shutting down")).await;

    // The request in flight completes.
    chunks.send(Bytes::from_static(b"last")).await.unwrap();
    assert_eq!(resp.chunk().await.unwrap().unwrap(), "last");
    drop(chunks);
    assert!(resp.chunk().await.unwrap().is_none());

    let (proxy, status) = proxy.wait_exit_async().await;
    assert_eq!(status.code(), Some(0), "{}", proxy.stderr());
    assert!(
        proxy.seen.iter().any(|l| l == "shutdown complete"),
        "{:?}",
        proxy.seen
    );
    // Nothing listens any more.
    assert!(client().get(format!("{front}/")).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_bounds_shutdown() {
    let (upstream, chunks) = common::driven_stream("/slow").await;
    let dir = TempDir::new("shutdown-deadline");
    let config = common::simple_config(upstream, "")
        .replace("[admin]", "[server]\nshutdown_timeout = \"1s\"\n\n[admin]");
    let path = dir.write("proxy.toml", &config);
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");

    let mut resp = client().get(format!("{front}/slow")).send().await.unwrap();
    chunks.send(Bytes::from_static(b"first;")).await.unwrap();
    assert_eq!(resp.chunk().await.unwrap().unwrap(), "first;");

    // The upstream never finishes: the process still exits, after the deadline.
    proxy.signal("TERM");
    let (proxy, status) = proxy.wait_exit_async().await;
    assert_eq!(status.code(), Some(0), "{}", proxy.stderr());
    assert!(
        proxy
            .seen
            .iter()
            .any(|l| l.starts_with("drain deadline passed")),
        "{:?}",
        proxy.seen
    );
    // The unfinished response was cut, not completed.
    assert!(!matches!(resp.chunk().await, Ok(Some(_))));
    drop(chunks);
}
