//! Hot reload: SIGHUP and file changes swap routes without dropping a streaming
//! response; an invalid file keeps the old configuration serving.

mod common;

use std::net::SocketAddr;

use axum::body::Bytes;
use common::{Proxy, TempDir, client, echo};

fn config(stream: SocketAddr, root: SocketAddr) -> String {
    format!(
        r#"
[admin]
address = "127.0.0.1:0"

[access_log]
output = "off"

[listeners.web]
address = "127.0.0.1:0"

[pools.stream]
targets = ["http://{stream}"]

[pools.root]
targets = ["http://{root}"]

[[routes]]
prefix = "/stream"
pool = "stream"

[[routes]]
prefix = "/"
pool = "root"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_routes_and_keeps_streams() {
    let (stream_addr, chunks) = common::driven_stream("/stream").await;
    let a = echo("a").await;
    let b = echo("b").await;
    let dir = TempDir::new("reload");
    let path = dir.write("proxy.toml", &config(stream_addr, a));
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");
    assert_eq!(common::upstream_of(&format!("{front}/x")).await, "a");

    // A streaming response is in flight across the reloads below.
    let mut streaming = client()
        .get(format!("{front}/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(streaming.status(), 200);
    chunks.send(Bytes::from_static(b"one;")).await.unwrap();
    assert_eq!(streaming.chunk().await.unwrap().unwrap(), "one;");

    // SIGHUP after rewriting the file: `/` now goes to b.
    dir.write("proxy.toml", &config(stream_addr, b));
    proxy.signal("HUP");
    let (proxy, _) = proxy.wait_line_async(|l| l.starts_with("reloaded:")).await;
    assert_eq!(common::upstream_of(&format!("{front}/x")).await, "b");

    // An invalid file: the error is logged with its line, b keeps serving.
    dir.write(
        "proxy.toml",
        &config(stream_addr, a).replace("[access_log]", "[access_log]\nbogus = 1"),
    );
    proxy.signal("HUP");
    let (proxy, _) = proxy
        .wait_line_async(|l| l.starts_with("reload failed"))
        .await;
    assert_eq!(common::upstream_of(&format!("{front}/x")).await, "b");
    let stderr = proxy.stderr();
    assert!(
        stderr.contains("proxy.toml:6:1: `access_log.bogus`: unknown field"),
        "{stderr}"
    );

    // A change to the file alone (no signal) is noticed by polling.
    dir.write("proxy.toml", &config(stream_addr, a));
    let (proxy, _) = proxy.wait_line_async(|l| l.starts_with("reloaded:")).await;
    assert_eq!(common::upstream_of(&format!("{front}/x")).await, "a");

    // The stream started before all this is still up and ends normally.
    chunks.send(Bytes::from_static(b"two;")).await.unwrap();
    assert_eq!(streaming.chunk().await.unwrap().unwrap(), "two;");
    drop(chunks);
    assert!(streaming.chunk().await.unwrap().is_none());

    let metrics = common::metrics(&proxy).await;
    assert!(
        metrics.contains("proxy_config_reloads_total{result=\"error\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("proxy_config_reloads_total{result=\"ok\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_listeners() {
    let a = echo("a").await;
    let dir = TempDir::new("reload-listeners");
    let base = common::simple_config(a, "");
    let path = dir.write("proxy.toml", &base);
    let proxy = Proxy::with_config(&path);
    let web = proxy.listener_url("web");

    let with_second = base.replace(
        "[listeners.web]",
        "[listeners.second]\naddress = \"127.0.0.1:0\"\n\n[listeners.web]",
    );
    dir.write("proxy.toml", &with_second);
    proxy.signal("HUP");
    let (proxy, _) = proxy
        .wait_line_async(|l| l.starts_with("listener second on"))
        .await;
    let (proxy, _) = proxy.wait_line_async(|l| l.starts_with("reloaded:")).await;
    let second = proxy.listener_url("second");
    assert_eq!(common::upstream_of(&format!("{second}/")).await, "a");
    // The unchanged listener kept its socket.
    assert_eq!(common::upstream_of(&format!("{web}/")).await, "a");

    dir.write("proxy.toml", &base);
    proxy.signal("HUP");
    let (_proxy, _) = proxy.wait_line_async(|l| l.starts_with("reloaded:")).await;
    assert_eq!(common::upstream_of(&format!("{web}/")).await, "a");
    // The removed listener's port is free again. Tests run in parallel, and another one's
    // server may have been given that port meanwhile: whatever answers there must not be
    // this proxy, whose only route leads to upstream "a".
    if let Ok(response) = client().get(format!("{second}/")).send().await {
        let body = response.text().await.unwrap_or_default();
        assert!(
            !body.contains("\"upstream\":\"a\""),
            "the removed listener still accepts: {body}"
        );
    }
}
