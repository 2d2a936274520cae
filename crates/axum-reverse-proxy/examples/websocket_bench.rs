//! WebSocket echo through the proxy versus direct: messages per second and MB/s.
//!
//! ```text
//! cargo run --release -p axum-reverse-proxy --example websocket_bench
//! ```
//!
//! An axum WebSocket echo server, a `ReverseProxy` in front of it and the client all run
//! in this process on loopback, so the numbers compare the paths on one machine; they
//! are not absolute capacities. The proxy is measured twice: served with `TCP_NODELAY`
//! on accepted sockets (recommended: a splice re-segments the byte stream, and Nagle's
//! algorithm then holds the tail of a message until the client's delayed ACK), and with
//! `axum::serve`'s defaults; and with 64 KiB tunnel buffers instead of the default 8 KiB
//! (`ProxyPolicy::with_upgrade_buffer_size`). Two patterns per message size:
//! - **round trip**: one message in flight (latency-bound);
//! - **pipelined**: a writer and a reader on the same socket, up to `WINDOW` messages
//!   in flight (throughput-bound). MB/s counts echoed payload bytes (one direction).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::routing::any;
use axum::serve::ListenerExt;
use axum_reverse_proxy::{ProxyPolicy, ReverseProxy};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Messages allowed in flight in the pipelined pattern.
const WINDOW: usize = 64;

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Like [`serve`], with `TCP_NODELAY` on every accepted socket.
async fn serve_nodelay(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn echo(ws: WebSocketUpgrade) -> axum::response::Response {
    ws.on_upgrade(|mut socket: WebSocket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            if socket.send(message).await.is_err() {
                return;
            }
        }
    })
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Ws {
    let config = WebSocketConfig::default().max_message_size(Some(1 << 20));
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .unwrap();
    ws
}

struct Result {
    messages: usize,
    bytes: usize,
    elapsed: Duration,
}

impl Result {
    fn per_second(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    fn mb_per_second(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

async fn round_trip(url: &str, size: usize, messages: usize) -> Result {
    let mut ws = connect(url).await;
    let payload = vec![0x5au8; size];
    let started = Instant::now();
    for _ in 0..messages {
        ws.send(Message::binary(payload.clone())).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.len(), size);
    }
    let elapsed = started.elapsed();
    ws.close(None).await.unwrap();
    Result {
        messages,
        bytes: messages * size,
        elapsed,
    }
}

async fn pipelined(url: &str, size: usize, messages: usize) -> Result {
    let ws = connect(url).await;
    let (mut sink, mut stream) = ws.split();
    let window = std::sync::Arc::new(Semaphore::new(WINDOW));
    let payload = bytes::Bytes::from(vec![0xa5u8; size]);
    let started = Instant::now();
    let writer = {
        let window = window.clone();
        tokio::spawn(async move {
            for _ in 0..messages {
                window.acquire().await.unwrap().forget();
                sink.send(Message::Binary(payload.clone())).await.unwrap();
            }
            sink
        })
    };
    let mut bytes = 0;
    for _ in 0..messages {
        let echoed = stream.next().await.unwrap().unwrap();
        bytes += echoed.len();
        window.add_permits(1);
    }
    let elapsed = started.elapsed();
    let sink = writer.await.unwrap();
    let mut ws = sink.reunite(stream).unwrap();
    ws.close(None).await.unwrap();
    Result {
        messages,
        bytes,
        elapsed,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let upstream = serve(Router::new().route("/echo", any(echo))).await;
    let proxy = |buffer: usize| {
        let policy = ProxyPolicy::new().with_upgrade_buffer_size(buffer);
        ReverseProxy::new("/", format!("http://{upstream}"))
            .with_policy(policy)
            .into()
    };
    let paths = [
        ("direct", format!("ws://{upstream}/echo")),
        (
            "proxy, nodelay",
            format!("ws://{}/echo", serve_nodelay(proxy(8 * 1024)).await),
        ),
        (
            "proxy, nodelay, 64 KiB buffers",
            format!("ws://{}/echo", serve_nodelay(proxy(64 * 1024)).await),
        ),
        (
            "proxy, defaults",
            format!("ws://{}/echo", serve(proxy(8 * 1024)).await),
        ),
    ];

    // (pattern, message size, messages)
    let cases: [(&str, usize, usize); 4] = [
        ("round trip", 32, 20_000),
        ("pipelined", 32, 200_000),
        ("round trip", 64 * 1024, 2_000),
        ("pipelined", 64 * 1024, 20_000),
    ];
    // Warm up every path (connection setup, allocator, page cache).
    for (_, url) in &paths {
        round_trip(url, 32, 2_000).await;
    }

    println!("| pattern | size | path | msg/s | MB/s | vs direct |");
    println!("|---|---|---|---|---|---|");
    for (pattern, size, messages) in cases {
        let label = if size >= 1024 {
            format!("{} KiB", size / 1024)
        } else {
            format!("{size} B")
        };
        let mut direct = None;
        for (path, url) in &paths {
            let result = match pattern {
                "round trip" => round_trip(url, size, messages).await,
                _ => pipelined(url, size, messages).await,
            };
            let base = *direct.get_or_insert(result.per_second());
            println!(
                "| {pattern} | {label} | {path} | {:.0} | {:.1} | {:.2} |",
                result.per_second(),
                result.mb_per_second(),
                result.per_second() / base,
            );
        }
    }
}
