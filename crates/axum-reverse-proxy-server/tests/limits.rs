//! Server limits from `[server]`: header bytes, body bytes, header-read timeout, idle
//! timeout, max connections. Timeouts are awaited (the server closes the socket), not
//! slept through.

mod common;

use std::time::{Duration, Instant};

use common::{Proxy, TempDir, client, echo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn limited(upstream: std::net::SocketAddr, server: &str) -> String {
    common::simple_config(upstream, "")
        .replace("[admin]", &format!("[server]\n{server}\n\n[admin]"))
}

/// Read one response with a Content-Length body; returns the head and body as text.
async fn read_response(tcp: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return text;
            }
        }
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed mid-response: {text}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Wait until the server closes the connection (EOF or reset); returns how long it took.
async fn closed_after(tcp: &mut TcpStream) -> Duration {
    let start = Instant::now();
    let mut chunk = [0u8; 1024];
    let waited = tokio::time::timeout(common::PATIENCE, async {
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "the server never closed the connection");
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_body_limits() {
    let upstream = echo("l").await;
    let dir = TempDir::new("limits");
    let path = dir.write(
        "proxy.toml",
        &limited(upstream, "max_header_bytes = \"8KiB\"\nmax_body_bytes = 16"),
    );
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");

    let resp = client()
        .get(format!("{front}/"))
        .header("x-big", "a".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);

    let resp = client()
        .post(format!("{front}/"))
        .body("x".repeat(100))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    let resp = client()
        .post(format!("{front}/"))
        .body("small")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_and_idle_connections_are_closed() {
    let upstream = echo("t").await;
    let dir = TempDir::new("timeouts");
    let path = dir.write(
        "proxy.toml",
        &limited(
            upstream,
            "header_read_timeout = \"1s\"\nidle_timeout = \"1s\"",
        ),
    );
    let proxy = Proxy::with_config(&path);
    let addr = proxy.listener_url("web").replace("http://", "");

    // Half a request head, then nothing: closed after the header-read timeout.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let took = closed_after(&mut slow).await;
    assert!(
        took >= Duration::from_millis(500),
        "closed too early: {took:?}"
    );

    // A keep-alive connection with nothing in flight: closed after the idle timeout.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut idle).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let took = closed_after(&mut idle).await;
    assert!(
        took >= Duration::from_millis(500),
        "closed too early: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused() {
    let upstream = echo("c").await;
    let dir = TempDir::new("maxconn");
    let path = dir.write("proxy.toml", &limited(upstream, "max_connections = 1"));
    let proxy = Proxy::with_config(&path);
    let addr = proxy.listener_url("web").replace("http://", "");

    let mut first = TcpStream::connect(&addr).await.unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut first).await.starts_with("HTTP/1.1 200"));

    // The first connection is still open: a second one is closed unanswered.
    let mut second = TcpStream::connect(&addr).await.unwrap();
    let _ = second.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    closed_after(&mut second).await;

    let metrics = client()
        .get(format!("{}/metrics", proxy.admin_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("proxy_connections_refused_total{listener=\"web\"} 1"),
        "{metrics}"
    );
    drop(first);
}
