//! WebSockets through the server binary: echo of text, binary and close frames, the
//! upgrade metrics, reloads that leave open sockets alone, and graceful shutdown that
//! waits for open sockets up to the drain deadline.
//!
//! Upstreams are axum WebSocket apps on 127.0.0.1:0; clients are tokio-tungstenite.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::any;
use common::{PATIENCE, Proxy, TempDir, client, echo};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Bound any single step, so that a broken proxy fails the test instead of hanging it.
async fn step<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

// ===== The WebSocket upstream =====

/// What the upstream saw: the close frame a client sent.
type Closes = mpsc::UnboundedSender<Option<(u16, String)>>;

#[derive(Clone)]
struct Upstream {
    name: &'static str,
    closes: Closes,
}

/// A WebSocket upstream: `/ws` echoes text and binary messages (and answers the text
/// `who` with its name); `/close-me` closes with 4002 "server bye".
async fn ws_upstream(
    name: &'static str,
) -> (SocketAddr, mpsc::UnboundedReceiver<Option<(u16, String)>>) {
    let (closes, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route("/ws", any(ws_echo))
        .route("/ws/{*rest}", any(ws_echo))
        .route("/close-me", any(close_me))
        .with_state(Upstream { name, closes });
    (common::serve(app).await, rx)
}

async fn ws_echo(State(up): State<Upstream>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| echo_socket(socket, up))
}

async fn echo_socket(mut socket: WebSocket, up: Upstream) {
    while let Some(Ok(message)) = socket.recv().await {
        let reply = match message {
            ws::Message::Text(t) if t.as_str() == "who" => ws::Message::Text(up.name.into()),
            ws::Message::Text(_) | ws::Message::Binary(_) => message,
            ws::Message::Close(frame) => {
                let _ = up
                    .closes
                    .send(frame.map(|f| (f.code, f.reason.as_str().to_owned())));
                return;
            }
            ws::Message::Ping(_) | ws::Message::Pong(_) => continue,
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    }
}

async fn close_me(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(|mut socket| async move {
        let frame = ws::CloseFrame {
            code: 4002,
            reason: "server bye".into(),
        };
        let _ = socket.send(ws::Message::Close(Some(frame))).await;
        while let Some(Ok(_)) = socket.recv().await {}
    })
}

// ===== Client helpers =====

fn ws_url(front: &str, path: &str) -> String {
    format!("{}{path}", front.replacen("http://", "ws://", 1))
}

async fn connect(url: &str) -> Ws {
    let (ws, response) = step("WebSocket handshake", tokio_tungstenite::connect_async(url))
        .await
        .unwrap_or_else(|err| panic!("connect {url}: {err}"));
    assert_eq!(response.status(), 101);
    ws
}

async fn next(ws: &mut Ws) -> Message {
    step("next WebSocket message", ws.next())
        .await
        .expect("the WebSocket ended")
        .expect("reading the WebSocket failed")
}

/// Send `text` and expect it back.
async fn round_trip(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.unwrap();
    match next(ws).await {
        Message::Text(t) => t.as_str().to_owned(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Close from the client side and read until the stream ends.
async fn close(mut ws: Ws) {
    ws.close(None).await.unwrap();
    step("the close handshake", async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// True once the stream ends (a close frame, EOF or reset).
async fn ended(ws: &mut Ws) -> bool {
    loop {
        match ws.next().await {
            None | Some(Err(_)) => return true,
            Some(Ok(_)) => {}
        }
    }
}

/// The value of an unlabelled metric in the admin listener's `/metrics`.
async fn metric(admin: &str, name: &str) -> Option<f64> {
    let text = client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Wait until an unlabelled metric reads `want`. A tunnel closes shortly after its
/// peers' sockets do, with nothing to await from outside the process: look again
/// every few milliseconds, for at most PATIENCE.
async fn metric_becomes(admin: &str, name: &str, want: f64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = metric(admin, name).await;
        if seen == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed at {seen:?}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ws_config(upstream: SocketAddr, server: &str) -> String {
    common::simple_config(upstream, "").replace("[admin]", &format!("{server}\n[admin]"))
}

// ===== Tests =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_binary() {
    let (upstream, mut closes) = ws_upstream("a").await;
    let dir = TempDir::new("ws-echo");
    let path = dir.write("proxy.toml", &ws_config(upstream, ""));
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");

    let mut ws = connect(&ws_url(&front, "/ws")).await;
    assert_eq!(round_trip(&mut ws, "hello").await, "hello");
    let blob: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    ws.send(Message::binary(blob.clone())).await.unwrap();
    match next(&mut ws).await {
        Message::Binary(b) => assert_eq!(&b[..], &blob[..]),
        other => panic!("expected binary, got {other:?}"),
    }
    // A client close reaches the upstream with its code and reason.
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4001),
        reason: "client bye".into(),
    }))
    .await
    .unwrap();
    assert_eq!(
        step("the close at the upstream", closes.recv()).await,
        Some(Some((4001, "client bye".to_owned())))
    );
    assert!(step("the end of the socket", ended(&mut ws)).await);

    // A server close reaches the client with its code and reason.
    let mut ws = connect(&ws_url(&front, "/close-me")).await;
    match next(&mut ws).await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4002);
            assert_eq!(frame.reason.as_str(), "server bye");
        }
        other => panic!("expected the server's close, got {other:?}"),
    }
    assert!(step("the end of the socket", ended(&mut ws)).await);

    // Plain requests on the same route still work.
    let resp = client().get(format!("{front}/ws")).send().await.unwrap();
    assert_ne!(resp.status(), 101);

    // The handshakes are in the access log, as 101s.
    let (_proxy, line) = proxy
        .wait_line_async(|l| l.contains("\"status\":101"))
        .await;
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["path"], "/ws");
    assert_eq!(entry["route"], "main");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_open_and_total_upgrades() {
    let (upstream, _closes) = ws_upstream("a").await;
    let dir = TempDir::new("ws-metrics");
    let path = dir.write("proxy.toml", &ws_config(upstream, ""));
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");
    let admin = proxy.admin_url();

    assert_eq!(metric(&admin, "proxy_upgrades_open").await, Some(0.0));
    assert_eq!(metric(&admin, "proxy_upgrades_total").await, Some(0.0));

    let mut ws = connect(&ws_url(&front, "/ws")).await;
    assert_eq!(round_trip(&mut ws, "ping").await, "ping");
    // Counted from before the 101 reached us.
    assert_eq!(metric(&admin, "proxy_upgrades_open").await, Some(1.0));
    assert_eq!(metric(&admin, "proxy_upgrades_total").await, Some(1.0));
    close(ws).await;
    metric_becomes(&admin, "proxy_upgrades_open", 0.0).await;
    assert_eq!(metric(&admin, "proxy_upgrades_total").await, Some(1.0));

    let mut ws = connect(&ws_url(&front, "/ws")).await;
    assert_eq!(round_trip(&mut ws, "again").await, "again");
    assert_eq!(metric(&admin, "proxy_upgrades_open").await, Some(1.0));
    assert_eq!(metric(&admin, "proxy_upgrades_total").await, Some(2.0));
    close(ws).await;
    metric_becomes(&admin, "proxy_upgrades_open", 0.0).await;

    let text = client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // "ping" and "again" each way, framed: some bytes in both directions.
    for direction in ["to_upstream", "to_client"] {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "proxy_upgrade_bytes_total{{direction=\"{direction}\"}}"
                ))
            })
            .unwrap_or_else(|| panic!("no {direction} bytes in {text}"));
        let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n >= 9, "{line}");
    }
}

fn reload_config(ws: SocketAddr, stream: SocketAddr, root: SocketAddr) -> String {
    format!(
        r#"
[admin]
address = "127.0.0.1:0"

[access_log]
output = "off"

[listeners.web]
address = "127.0.0.1:0"

[pools.ws]
targets = ["http://{ws}"]
upgrade_idle_timeout = "10m"

[pools.stream]
targets = ["http://{stream}"]

[pools.root]
targets = ["http://{root}"]

[[routes]]
prefix = "/ws"
pool = "ws"

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
async fn reload_keeps_open_websockets_and_streams() {
    let (ws_a, _closes_a) = ws_upstream("ws-a").await;
    let (ws_b, _closes_b) = ws_upstream("ws-b").await;
    let (stream, chunks) = common::driven_stream("/stream").await;
    let root_a = echo("a").await;
    let root_b = echo("b").await;
    let dir = TempDir::new("ws-reload");
    let path = dir.write("proxy.toml", &reload_config(ws_a, stream, root_a));
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");
    let admin = proxy.admin_url();

    let mut old = connect(&ws_url(&front, "/ws")).await;
    assert_eq!(round_trip(&mut old, "who").await, "ws-a");
    let mut body = client()
        .get(format!("{front}/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(body.status(), 200);
    chunks.send(Bytes::from_static(b"one;")).await.unwrap();
    assert_eq!(body.chunk().await.unwrap().unwrap(), "one;");

    // The WebSocket pool and the root route both move to other upstreams.
    dir.write("proxy.toml", &reload_config(ws_b, stream, root_b));
    proxy.signal("HUP");
    let (proxy, _) = proxy.wait_line_async(|l| l.starts_with("reloaded:")).await;

    // New requests and new sockets follow the new routes...
    assert_eq!(common::upstream_of(&format!("{front}/x")).await, "b");
    let mut new = connect(&ws_url(&front, "/ws")).await;
    assert_eq!(round_trip(&mut new, "who").await, "ws-b");
    // ...while the socket and the stream opened before keep working where they were.
    assert_eq!(round_trip(&mut old, "who").await, "ws-a");
    assert_eq!(round_trip(&mut old, "still here").await, "still here");
    assert_eq!(metric(&admin, "proxy_upgrades_open").await, Some(2.0));
    chunks.send(Bytes::from_static(b"two;")).await.unwrap();
    assert_eq!(body.chunk().await.unwrap().unwrap(), "two;");
    drop(chunks);
    assert!(body.chunk().await.unwrap().is_none());

    close(old).await;
    close(new).await;
    metric_becomes(&admin, "proxy_upgrades_open", 0.0).await;
    assert_eq!(metric(&admin, "proxy_upgrades_total").await, Some(2.0));
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_an_open_websocket_then_exits_0() {
    let (upstream, mut closes) = ws_upstream("a").await;
    let dir = TempDir::new("ws-term");
    let path = dir.write("proxy.toml", &ws_config(upstream, ""));
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");

    let mut ws = connect(&ws_url(&front, "/ws")).await;
    assert_eq!(round_trip(&mut ws, "before").await, "before");

    proxy.signal("TERM");
    let (proxy, _) = proxy
        .wait_line_async(|l| l.starts_with("waiting for 1 upgraded connection"))
        .await;
    // Draining: no new connections, but the open socket keeps working.
    assert!(client().get(format!("{front}/")).send().await.is_err());
    assert_eq!(round_trip(&mut ws, "during").await, "during");
    assert_eq!(round_trip(&mut ws, "still").await, "still");

    // The client closes: the process finishes draining and exits 0.
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .unwrap();
    assert_eq!(
        step("the close at the upstream", closes.recv()).await,
        Some(Some((1000, "done".to_owned())))
    );
    assert!(step("the end of the socket", ended(&mut ws)).await);
    drop(ws);
    let (proxy, status) = proxy.wait_exit_async().await;
    assert_eq!(status.code(), Some(0), "{}", proxy.stderr());
    assert!(
        proxy.seen.iter().any(|l| l == "shutdown complete"),
        "{:?}",
        proxy.seen
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_websockets_at_the_drain_deadline() {
    let (upstream, _closes) = ws_upstream("a").await;
    let dir = TempDir::new("ws-term-deadline");
    let path = dir.write(
        "proxy.toml",
        &ws_config(upstream, "[server]\nshutdown_timeout = \"1s\"\n"),
    );
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");

    let mut ws = connect(&ws_url(&front, "/ws")).await;
    assert_eq!(round_trip(&mut ws, "before").await, "before");
    let started = Instant::now();
    proxy.signal("TERM");
    let (proxy, _) = proxy
        .wait_line_async(|l| l.starts_with("waiting for 1 upgraded connection"))
        .await;
    assert_eq!(round_trip(&mut ws, "during").await, "during");

    // Nobody closes it: the proxy does, at the deadline, and exits 0.
    assert!(step("the socket closed by the proxy", ended(&mut ws)).await);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let (proxy, status) = proxy.wait_exit_async().await;
    assert_eq!(status.code(), Some(0), "{}", proxy.stderr());
    assert!(
        proxy
            .seen
            .iter()
            .any(|l| l == "drain deadline passed: closing the remaining connections (1 upgraded)"),
        "{:?}",
        proxy.seen
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_idle_timeout_closes_a_silent_websocket() {
    let (upstream, _closes) = ws_upstream("a").await;
    let dir = TempDir::new("ws-idle");
    let config = ws_config(upstream, "").replace(
        "[[routes]]",
        "upgrade_idle_timeout = \"300ms\"\n\n[[routes]]",
    );
    let path = dir.write("proxy.toml", &config);
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");
    let admin = proxy.admin_url();

    let mut ws = connect(&ws_url(&front, "/ws")).await;
    // The last byte the proxy reads (the echo) comes after this instant.
    let sent = Instant::now();
    assert_eq!(round_trip(&mut ws, "busy").await, "busy");
    // Then silence both ways: the proxy closes the tunnel.
    assert!(step("the idle close", ended(&mut ws)).await);
    assert!(sent.elapsed() >= Duration::from_millis(300));
    metric_becomes(&admin, "proxy_upgrades_open", 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_from_an_http2_client_over_h2c() {
    use http::Method;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio_tungstenite::tungstenite::protocol::Role;

    let (upstream, _closes) = ws_upstream("a").await;
    let dir = TempDir::new("ws-h2c");
    let config = ws_config(upstream, "").replace(
        "[listeners.web]\naddress = \"127.0.0.1:0\"",
        "[listeners.web]\naddress = \"127.0.0.1:0\"\nh2c = true",
    );
    let path = dir.write("proxy.toml", &config);
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");
    let addr = front.trim_start_matches("http://").to_owned();

    let io = TokioIo::new(TcpStream::connect(&addr).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Body>(io)
        .await
        .unwrap();
    tokio::spawn(conn);
    // A first request makes sure the server's SETTINGS (ENABLE_CONNECT_PROTOCOL) are in.
    let warmup = http::Request::get(format!("http://{addr}/"))
        .body(Body::empty())
        .unwrap();
    step("warm-up", sender.send_request(warmup)).await.unwrap();

    let request = http::Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://{addr}/ws"))
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13")
        .body(Body::empty())
        .unwrap();
    let mut response = step("extended CONNECT", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let upgraded = step("the h2 upgrade", hyper::upgrade::on(&mut response))
        .await
        .unwrap();
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    ws.send(Message::text("over h2")).await.unwrap();
    let echoed = step("the h2 echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(echoed, Message::text("over h2"));
    assert_eq!(
        metric(&proxy.admin_url(), "proxy_upgrades_open").await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_counts_as_a_connection() {
    let (upstream, _closes) = ws_upstream("a").await;
    let dir = TempDir::new("ws-maxconn");
    let path = dir.write(
        "proxy.toml",
        &ws_config(upstream, "[server]\nmax_connections = 1\n"),
    );
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");
    let admin = proxy.admin_url();
    let open = "proxy_open_connections{listener=\"web\"}";

    let mut ws = connect(&ws_url(&front, "/ws")).await;
    assert_eq!(round_trip(&mut ws, "hi").await, "hi");
    // The socket left HTTP, but still holds its connection slot.
    assert_eq!(metric(&admin, open).await, Some(1.0));
    assert!(client().get(format!("{front}/")).send().await.is_err());

    close(ws).await;
    metric_becomes(&admin, "proxy_upgrades_open", 0.0).await;
    metric_becomes(&admin, open, 0.0).await;
    let resp = client().get(format!("{front}/ws")).send().await.unwrap();
    assert_ne!(resp.status(), 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_through_a_balanced_pool() {
    let (a, _closes_a) = ws_upstream("ws-a").await;
    let (b, _closes_b) = ws_upstream("ws-b").await;
    let dir = TempDir::new("ws-balanced");
    let config = ws_config(a, "").replace(
        &format!("targets = [\"http://{a}\"]"),
        &format!("targets = [\"http://{a}\", \"http://{b}\"]\nstrategy = \"round_robin\""),
    );
    let path = dir.write("proxy.toml", &config);
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");
    let admin = proxy.admin_url();

    let mut first = connect(&ws_url(&front, "/ws")).await;
    let mut second = connect(&ws_url(&front, "/ws")).await;
    let mut seen = vec![
        round_trip(&mut first, "who").await,
        round_trip(&mut second, "who").await,
    ];
    seen.sort();
    assert_eq!(seen, ["ws-a", "ws-b"]);
    assert_eq!(metric(&admin, "proxy_upgrades_open").await, Some(2.0));
    close(first).await;
    close(second).await;
    metric_becomes(&admin, "proxy_upgrades_open", 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_closes_websockets_at_once() {
    let (upstream, _closes) = ws_upstream("a").await;
    let dir = TempDir::new("ws-term-twice");
    let path = dir.write(
        "proxy.toml",
        &ws_config(upstream, "[server]\nshutdown_timeout = \"1h\"\n"),
    );
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");

    let mut ws = connect(&ws_url(&front, "/ws")).await;
    assert_eq!(round_trip(&mut ws, "before").await, "before");
    proxy.signal("TERM");
    let (proxy, _) = proxy
        .wait_line_async(|l| l.starts_with("waiting for 1 upgraded connection"))
        .await;
    assert_eq!(round_trip(&mut ws, "during").await, "during");
    proxy.signal("TERM");
    assert!(step("the socket closed by the proxy", ended(&mut ws)).await);
    let (proxy, status) = proxy.wait_exit_async().await;
    assert_eq!(status.code(), Some(0), "{}", proxy.stderr());
    assert!(
        proxy
            .seen
            .iter()
            .any(|l| l == "SIGTERM again: closing the remaining connections (1 upgraded)"),
        "{:?}",
        proxy.seen
    );
}
