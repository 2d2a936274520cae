//! Server limits from `[server]`: head bytes, header count, URI length, body bytes (also
//! chunked, over the limit mid-stream), the header-read deadline against tricklers,
//! keep-alive and idle timeouts (HTTP/1.1 and HTTP/2), max connections, and the same
//! limits through TLS; idle HTTP/1.1 connections giving back their buffers
//! (`release_idle_buffers_after`) and serving on afterwards. Timeouts are awaited (the server closes the socket), not slept
//! through; sleeps only pace a client whose slowness is the point.
//! HTTP/2 floods (streams, rapid reset, CONTINUATION) are in `h2_floods.rs`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::routing::any;
use common::h2::{self, Conn};
use common::{PATIENCE, Proxy, TempDir, client, echo, serve};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

fn limited(upstream: std::net::SocketAddr, server: &str) -> String {
    common::simple_config(upstream, "")
        .replace("[admin]", &format!("[server]\n{server}\n\n[admin]"))
}

/// `limited`, plus a second listener `mixed` that also takes HTTP/2 by prior knowledge
/// (its connections start by telling the two versions apart).
fn limited_mixed(upstream: std::net::SocketAddr, server: &str) -> String {
    limited(upstream, server) + "\n[listeners.mixed]\naddress = \"127.0.0.1:0\"\nh2c = true\n"
}

fn addr_of(proxy: &Proxy, listener: &str) -> String {
    proxy.listener_url(listener).replace("http://", "")
}

/// Read one response with a Content-Length body; returns the head and body as text.
async fn read_response<S: AsyncRead + Unpin>(tcp: &mut S) -> String {
    read_responses(tcp, 1).await.remove(0)
}

/// Read `count` responses with Content-Length bodies (pipelined ones may arrive in one
/// read); returns each, head and body, as text.
async fn read_responses<S: AsyncRead + Unpin>(tcp: &mut S, count: usize) -> Vec<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut found = Vec::new();
        let mut at = 0;
        while found.len() < count {
            let rest = &buf[at..];
            let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
                break;
            };
            let head = String::from_utf8_lossy(&rest[..end]);
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            let Some(whole) = rest.get(..end + 4 + length) else {
                break;
            };
            found.push(String::from_utf8_lossy(whole).into_owned());
            at += whole.len();
        }
        if found.len() == count {
            return found;
        }
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "connection closed mid-response: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Wait until the server closes the connection (EOF or reset); returns how long it took.
async fn closed_after<S: AsyncRead + Unpin>(tcp: &mut S) -> Duration {
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

    // Nothing at all: closed after the header-read timeout too.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let took = closed_after(&mut silent).await;
    assert!(
        took >= Duration::from_millis(500),
        "closed too early: {took:?}"
    );

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

    let metrics = common::metrics(&proxy).await;
    assert!(
        metrics.contains("proxy_connections_refused_total{listener=\"web\"} 1"),
        "{metrics}"
    );
    drop(first);
}

// ===== head limits: exact, on both versions =====

/// A request head of exactly `size` bytes: `GET / HTTP/1.1`, Host, one padding header.
fn head_of_size(size: usize) -> Vec<u8> {
    let fixed = "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: \r\n\r\n".len();
    let pad = "a".repeat(size - fixed);
    format!("GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\n\r\n").into_bytes()
}

/// A request with Host and `count - 1` more header fields.
fn head_with_headers(count: usize) -> Vec<u8> {
    let mut head = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 1..count {
        head.push_str(&format!("X-H{i}: v\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// The status of the answer to one request, each on its own connection.
async fn status_of(addr: &str, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let response = read_response(&mut tcp).await;
    response.lines().next().unwrap_or_default().to_owned()
}

/// Send one request on `stream` and read its response status (HTTP/2).
async fn h2_status<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    stream: u32,
    path: &str,
    headers: &[(&str, &str)],
) -> u16 {
    let block = h2::request_block("GET", path, headers);
    conn.send(&h2::frame(
        h2::HEADERS,
        h2::END_STREAM | h2::END_HEADERS,
        stream,
        &block,
    ))
    .await
    .unwrap();
    loop {
        let f = conn
            .next_frame(PATIENCE)
            .await
            .expect("the connection closed");
        match f.kind {
            h2::HEADERS if f.stream == stream => {
                return f
                    .status()
                    .unwrap_or_else(|| panic!("no readable :status in {f:?}"));
            }
            h2::DATA | h2::HEADERS | h2::RST_STREAM if f.stream != stream => {}
            h2::DATA => {}
            _ => panic!("unexpected frame {f:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_bytes_header_count_and_uri_length_are_exact() {
    let upstream = echo("h").await;
    let dir = TempDir::new("head-limits");
    let path = dir.write(
        "proxy.toml",
        &limited_mixed(
            upstream,
            "max_header_bytes = 8192\nmax_header_count = 10\nmax_uri_bytes = 300",
        ),
    );
    let proxy = Proxy::with_config(&path);

    // HTTP/1.1, on the plain listener and on the one that also speaks h2c.
    for listener in ["web", "mixed"] {
        let addr = addr_of(&proxy, listener);
        let ctx = format!("listener {listener}");
        assert_eq!(
            status_of(&addr, &head_of_size(8192)).await,
            "HTTP/1.1 200 OK",
            "{ctx}"
        );
        assert!(
            status_of(&addr, &head_of_size(8193))
                .await
                .starts_with("HTTP/1.1 431"),
            "{ctx}"
        );
        assert_eq!(
            status_of(&addr, &head_with_headers(10)).await,
            "HTTP/1.1 200 OK",
            "{ctx}"
        );
        assert!(
            status_of(&addr, &head_with_headers(11))
                .await
                .starts_with("HTTP/1.1 431"),
            "{ctx}"
        );
        let target = format!("/{}", "u".repeat(299));
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let response = read_response(&mut tcp).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{ctx}: {response}");
        assert!(response.contains(&format!("\"uri\":\"{target}\"")), "{ctx}");
        let long = format!("GET {target}u HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            status_of(&addr, long.as_bytes()).await,
            "HTTP/1.1 414 URI Too Long",
            "{ctx}"
        );
    }

    // HTTP/2: the same count and URI limits (pseudo-headers are not header fields).
    let tcp = TcpStream::connect(addr_of(&proxy, "mixed")).await.unwrap();
    let (mut conn, settings) = Conn::handshake(tcp).await;
    assert!(
        settings.contains(&(h2::SETTINGS_MAX_HEADER_LIST_SIZE, 8192)),
        "{settings:?}"
    );
    let names: Vec<String> = (0..11).map(|i| format!("x-h{i}")).collect();
    let fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    assert_eq!(h2_status(&mut conn, 1, "/", &fields[..10]).await, 200);
    assert_eq!(h2_status(&mut conn, 3, "/", &fields).await, 431);
    let target = format!("/{}", "u".repeat(299));
    assert_eq!(h2_status(&mut conn, 5, &target, &[]).await, 200);
    assert_eq!(
        h2_status(&mut conn, 7, &format!("{target}u"), &[]).await,
        414
    );
    // The connection survives all of it.
    assert_eq!(h2_status(&mut conn, 9, "/", &[]).await, 200);
    // A header list over max_header_bytes (as RFC 9113 counts it): 431 from h2 itself.
    // (On a new connection: this client cannot read a status the server sends as a
    // reference to its HPACK table, as it does for a status it sent before.)
    let tcp = TcpStream::connect(addr_of(&proxy, "mixed")).await.unwrap();
    let (mut conn, _) = Conn::handshake(tcp).await;
    let big = "b".repeat(9000);
    assert_eq!(h2_status(&mut conn, 1, "/", &[("x-big", &big)]).await, 431);
}

// ===== the head deadline against tricklers; keep-alive; idle =====

/// Connect, then send `pieces` one by one, `every` apart, until the server closes the
/// connection; returns how long after starting to connect it did. (An HTTP/2 server
/// answers SETTINGS with its own before the request is complete: reads that do not
/// close the connection are ignored, it is the request that must not be answered.)
async fn trickle(addr: String, pieces: Vec<Vec<u8>>, every: Duration) -> Duration {
    let start = Instant::now();
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    let mut chunk = [0u8; 1024];
    for piece in pieces {
        if tcp.write_all(&piece).await.is_err() {
            return start.elapsed();
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            read = tcp.read(&mut chunk) => match read {
                Ok(0) | Err(_) => return start.elapsed(),
                Ok(n) => assert!(
                    !String::from_utf8_lossy(&chunk[..n]).starts_with("HTTP/1.1"),
                    "a trickled head was answered"
                ),
            },
        }
    }
    panic!("the server never closed the trickling connection");
}

/// Header lines of a never-ending request head.
fn head_lines(n: usize) -> Vec<Vec<u8>> {
    let mut lines = vec![b"GET / HTTP/1.1\r\n".to_vec(), b"Host: x\r\n".to_vec()];
    lines.extend((0..n).map(|i| format!("X-Slow-{i}: y\r\n").into_bytes()));
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_is_cut_at_the_deadline_while_others_are_served() {
    let upstream = echo("s").await;
    let dir = TempDir::new("trickle");
    let path = dir.write(
        "proxy.toml",
        &limited_mixed(
            upstream,
            "header_read_timeout = \"3s\"\nidle_timeout = \"60s\"",
        ),
    );
    let proxy = Proxy::with_config(&path);
    let (web, mixed) = (addr_of(&proxy, "web"), addr_of(&proxy, "mixed"));

    // One header line every 2 s: each read comes well within 3 s of the last, so only a
    // total deadline for the head closes these. And an HTTP/2 client sending its
    // preface, SETTINGS and first request one byte every 500 ms.
    let lines = head_lines(20);
    let mut h2_start = h2::PREFACE.to_vec();
    h2_start.extend(h2::settings(&[]));
    h2_start.extend(h2::get(1, "/"));
    let bytes: Vec<Vec<u8>> = h2_start.into_iter().map(|b| vec![b]).collect();
    let tricklers = tokio::spawn(async move {
        tokio::join!(
            trickle(web, lines.clone(), Duration::from_secs(2)),
            trickle(mixed.clone(), lines, Duration::from_secs(2)),
            trickle(mixed, bytes, Duration::from_millis(500)),
        )
    });

    // Meanwhile other clients, each on a new connection, are served at once.
    let other = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut served = 0;
    while !tricklers.is_finished() {
        for listener in ["web", "mixed"] {
            let start = Instant::now();
            let resp = other
                .get(format!("{}/", proxy.listener_url(listener)))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.text().await.unwrap();
            let took = start.elapsed();
            assert!(took < Duration::from_secs(1), "a request took {took:?}");
            served += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (lines_web, lines_mixed, bytes_mixed) = tricklers.await.unwrap();
    for (what, took) in [
        ("lines, plain listener", lines_web),
        ("lines, h2c listener", lines_mixed),
        ("HTTP/2 bytes, h2c listener", bytes_mixed),
    ] {
        assert!(
            took >= Duration::from_millis(2900) && took < Duration::from_millis(4500),
            "{what}: closed after {took:?}, not at the 3 s deadline"
        );
    }
    assert!(served >= 10, "only {served} requests served meanwhile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_outlive_the_header_read_timeout() {
    let upstream = echo("k").await;
    let dir = TempDir::new("keepalive");
    let path = dir.write(
        "proxy.toml",
        &limited_mixed(
            upstream,
            "header_read_timeout = \"1s\"\nidle_timeout = \"10s\"",
        ),
    );
    let proxy = Proxy::with_config(&path);
    let reuse = |addr: String| async move {
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let first = read_response(&mut tcp).await;
        // Longer than header_read_timeout, shorter than idle_timeout: the connection
        // waits for the next request.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        tcp.write_all(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let second = read_response(&mut tcp).await;
        (first, second)
    };
    let (web, mixed) = tokio::join!(
        reuse(addr_of(&proxy, "web")),
        reuse(addr_of(&proxy, "mixed"))
    );
    for (first, second) in [web, mixed] {
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(second.starts_with("HTTP/1.1 200"), "{second}");
        assert!(second.contains("\"uri\":\"/2\""), "{second}");
    }
}

/// Read frames until stream `id` ends; returns its status.
async fn h2_complete<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut Conn<S>, id: u32) -> u16 {
    let mut status = None;
    loop {
        let f = conn
            .next_frame(PATIENCE)
            .await
            .expect("closed mid-response");
        if f.stream != id {
            continue;
        }
        if f.kind == h2::HEADERS && status.is_none() {
            status = f.status();
        }
        if matches!(f.kind, h2::HEADERS | h2::DATA) && f.flags & h2::END_STREAM != 0 {
            return status.expect("a status");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_idle_out_and_must_send_a_request_in_time() {
    let upstream = echo("i2").await;
    let dir = TempDir::new("h2-idle");
    let path = dir.write(
        "proxy.toml",
        &limited_mixed(
            upstream,
            "header_read_timeout = \"1s\"\nidle_timeout = \"3s\"",
        ),
    );
    let proxy = Proxy::with_config(&path);
    let addr = addr_of(&proxy, "mixed");

    // No request at all: closed at header_read_timeout.
    let silent = {
        let addr = addr.clone();
        async move {
            let start = Instant::now();
            let tcp = TcpStream::connect(&addr).await.unwrap();
            let (mut conn, _) = Conn::handshake(tcp).await;
            conn.until_closed(PATIENCE, true).await;
            start.elapsed()
        }
    };
    // One request, then nothing: GOAWAY and closed at idle_timeout (not at the head
    // deadline), whether the client answers the GOAWAY's PING or not.
    let idle = |answer_pings: bool| {
        let addr = addr.clone();
        async move {
            let tcp = TcpStream::connect(&addr).await.unwrap();
            let (mut conn, _) = Conn::handshake(tcp).await;
            conn.send(&h2::get(1, "/")).await.unwrap();
            assert_eq!(h2_complete(&mut conn, 1).await, 200);
            let start = Instant::now();
            let goaways = conn.until_closed(PATIENCE, answer_pings).await;
            (start.elapsed(), goaways)
        }
    };
    let (silent, (acked, acked_goaways), (ignored, ignored_goaways)) =
        tokio::join!(silent, idle(true), idle(false));
    assert!(
        silent >= Duration::from_millis(900) && silent < Duration::from_millis(2500),
        "a silent HTTP/2 connection closed after {silent:?}"
    );
    for (took, goaways) in [(acked, acked_goaways), (ignored, ignored_goaways)] {
        assert!(took >= Duration::from_millis(2500), "closed after {took:?}");
        assert!(
            goaways.iter().any(|g| g.error_code() == Some(h2::NO_ERROR)),
            "{goaways:?}"
        );
    }
}

// ===== body limit, chunked, exceeded mid-stream =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_never_reaches_the_upstream_whole() {
    // The upstream reports when a request starts and what reading its body gave.
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let (outcome_tx, mut outcome) = mpsc::unbounded_channel::<Result<usize, String>>();
    let upstream = serve(Router::new().fallback(any(move |req: Request| {
        let started_tx = started_tx.clone();
        let outcome_tx = outcome_tx.clone();
        async move {
            let _ = started_tx.send(());
            let read = axum::body::to_bytes(req.into_body(), usize::MAX)
                .await
                .map(|b| b.len())
                .map_err(|e| e.to_string());
            let _ = outcome_tx.send(read);
            "read"
        }
    })))
    .await;
    let dir = TempDir::new("chunked");
    let config = format!(
        r#"
[server]
max_body_bytes = 1000

[listeners.web]
address = "127.0.0.1:0"

[pools.one]
targets = ["http://{upstream}"]

[pools.two]
targets = ["http://{upstream}"]
h2c = true

[[routes]]
prefix = "/h1"
pool = "one"

[[routes]]
prefix = "/h2"
pool = "two"
"#
    );
    let path = dir.write("proxy.toml", &config);
    let proxy = Proxy::with_config(&path);
    let addr = addr_of(&proxy, "web");
    let chunk = format!("12c\r\n{}\r\n", "c".repeat(300));

    for upstream_version in ["/h1", "/h2"] {
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST {upstream_version}/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        tcp.write_all(format!("{head}{chunk}").as_bytes())
            .await
            .unwrap();
        // The request is on its way upstream before the body is over the limit.
        tokio::time::timeout(PATIENCE, started.recv())
            .await
            .expect("the request never reached the upstream");
        // Three more chunks (1200 bytes in all) and the end: over the limit mid-stream.
        let rest = format!("{chunk}{chunk}{chunk}0\r\n\r\n");
        let _ = tcp.write_all(rest.as_bytes()).await;
        // The upstream saw its body end in an error, never a complete request.
        let read = tokio::time::timeout(PATIENCE, outcome.recv())
            .await
            .expect("the upstream never finished reading")
            .unwrap();
        assert!(
            read.is_err(),
            "{upstream_version}: the upstream read {read:?}"
        );
        let response = read_response(&mut tcp).await;
        assert!(
            response.starts_with("HTTP/1.1 413"),
            "{upstream_version}: {response}"
        );
    }
}

// ===== TLS =====

struct TlsClient {
    connector: tokio_rustls::TlsConnector,
}

impl TlsClient {
    /// A certificate for `limits.test` in `dir` (limits.pem, limits.key) and a client
    /// trusting it, offering `alpn`.
    fn new(
        dir: &TempDir,
        alpn: &[&[u8]],
    ) -> (TlsClient, rustls::pki_types::CertificateDer<'static>) {
        let generated = rcgen::generate_simple_self_signed(vec!["limits.test".to_owned()]).unwrap();
        std::fs::write(dir.path("limits.pem"), generated.cert.pem()).unwrap();
        std::fs::write(dir.path("limits.key"), generated.key_pair.serialize_pem()).unwrap();
        let der = generated.cert.der().clone();
        let client = TlsClient::trusting(&der, alpn);
        (client, der)
    }

    fn trusting(der: &rustls::pki_types::CertificateDer<'static>, alpn: &[&[u8]]) -> TlsClient {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsClient {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    async fn connect(&self, addr: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        self.connector
            .connect(ServerName::try_from("limits.test").unwrap(), tcp)
            .await
            .unwrap()
    }
}

/// A TLS listener `secure` (the certificate of [`TlsClient::new`]) with `server` lines in
/// `[server]`, an admin listener, and every request routed to `upstream`.
fn tls_config(upstream: std::net::SocketAddr, server: &str) -> String {
    let head = format!("[server]\n{server}\n\n[admin]\naddress = \"127.0.0.1:0\"");
    common::tls_config(&head, "limits.test", "limits", upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limits_hold_on_tls_listeners() {
    let upstream = echo("tls").await;
    let dir = TempDir::new("tls-limits");
    let (h1, der) = TlsClient::new(&dir, &[b"http/1.1"]);
    let h2c = TlsClient::trusting(&der, &[b"h2"]);
    let config = tls_config(
        upstream,
        "header_read_timeout = \"2s\"\nmax_header_count = 10",
    );
    let path = dir.write("proxy.toml", &config);
    let proxy = Proxy::with_config(&path);
    let addr = proxy.listener_url("secure").replace("https://", "");

    // A trickled head over TLS: closed at the deadline, counted from the TCP accept.
    let trickler = async {
        let start = Instant::now();
        let mut tls = h1.connect(&addr).await;
        let mut chunk = [0u8; 256];
        for line in head_lines(20) {
            if tls.write_all(&line).await.is_err() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(700)) => {}
                read = tls.read(&mut chunk) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => panic!("a trickled head was answered"),
                },
            }
        }
        start.elapsed()
    };
    // Header count, HTTP/1.1 and HTTP/2 (by ALPN).
    let counts = async {
        let mut tls = h1.connect(&addr).await;
        tls.write_all(&head_with_headers(10)).await.unwrap();
        assert!(read_response(&mut tls).await.starts_with("HTTP/1.1 200"));
        let mut tls = h1.connect(&addr).await;
        tls.write_all(&head_with_headers(11)).await.unwrap();
        assert!(read_response(&mut tls).await.starts_with("HTTP/1.1 431"));

        let tls = h2c.connect(&addr).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut conn, _) = Conn::handshake(tls).await;
        let names: Vec<String> = (0..11).map(|i| format!("x-h{i}")).collect();
        let fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        assert_eq!(h2_status(&mut conn, 1, "/", &fields[..10]).await, 200);
        assert_eq!(h2_status(&mut conn, 3, "/", &fields).await, 431);
    };
    let (took, ()) = tokio::join!(trickler, counts);
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_millis(3500),
        "closed after {took:?}, not at the 2 s deadline"
    );
}

// ===== idle buffer release =====

/// The per-listener metric `name` for `listener`, from the admin API (0 if absent).
async fn listener_metric(proxy: &Proxy, name: &str, listener: &str) -> i64 {
    let text = common::metrics(proxy).await;
    let key = format!("{name}{{listener=\"{listener}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// `proxy_idle_buffer_releases_total` for `listener`.
async fn releases(proxy: &Proxy, listener: &str) -> u64 {
    let count = listener_metric(proxy, "proxy_idle_buffer_releases_total", listener).await;
    u64::try_from(count).unwrap()
}

/// `listener`'s connections parked now (idle, with no task and no buffer).
async fn parked_now(proxy: &Proxy, listener: &str) -> i64 {
    listener_metric(proxy, "proxy_parked_connections", listener).await
}

/// Wait until `count` of `listener`'s connections are parked (polled, like `released`).
async fn parked(proxy: &Proxy, listener: &str, count: i64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = parked_now(proxy, listener).await;
        if seen == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{listener}: {seen} parked, expected {count}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until `listener`'s connections have released their buffers `count` times in all
/// (the counter is the only outside sign of it, so it is polled).
async fn released(proxy: &Proxy, listener: &str, count: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = releases(proxy, listener).await;
        if seen >= count {
            assert_eq!(seen, count, "more releases than connections went idle");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{listener}: {seen} releases, expected {count}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The proxy (release delay 100 ms) in front of `routes`, whose other paths answer
/// `{"uri":"PATH"}` as `get_ok` expects; and its configuration's directory, to keep.
async fn releasing_proxy(routes: Router, tag: &str) -> (Proxy, TempDir) {
    let app = routes.fallback(any(|req: Request| async move {
        format!("{{\"uri\":\"{}\"}}", req.uri())
    }));
    let upstream = serve(app).await;
    let dir = TempDir::new(tag);
    let path = dir.write(
        "proxy.toml",
        &limited(upstream, "release_idle_buffers_after = \"100ms\""),
    );
    (Proxy::with_config(&path), dir)
}

/// Send one GET on `conn` and check that it is answered by the echo upstream.
async fn get_ok<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut S, path: &str) {
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let response = read_response(conn).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains(&format!("\"uri\":\"{path}\"")),
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_release_their_buffers_and_serve_on() {
    let upstream = echo("r").await;
    let dir = TempDir::new("release");
    let path = dir.write(
        "proxy.toml",
        &limited_mixed(upstream, "release_idle_buffers_after = \"100ms\""),
    );
    let proxy = Proxy::with_config(&path);
    // `mixed` first tells HTTP/1.1 from HTTP/2: released connections skip that later.
    for listener in ["web", "mixed"] {
        let mut tcp = TcpStream::connect(addr_of(&proxy, listener)).await.unwrap();
        get_ok(&mut tcp, "/first").await;
        released(&proxy, listener, 1).await;
        // Plain TCP: it waits in the parking lot.
        parked(&proxy, listener, 1).await;
        // The same socket, never closed: the next request goes to a new hyper connection.
        get_ok(&mut tcp, "/second").await;
        released(&proxy, listener, 2).await;
        parked(&proxy, listener, 1).await;

        // Half a head, then a pause longer than the release delay (the slowness is the
        // point): no release while a head is being read, and the head is served whole.
        tcp.write_all(b"GET /third HTTP/1.1\r\nHo").await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(releases(&proxy, listener).await, 2, "{listener}");
        tcp.write_all(b"st: x\r\n\r\n").await.unwrap();
        let response = read_response(&mut tcp).await;
        assert!(response.contains("\"uri\":\"/third\""), "{response}");
        released(&proxy, listener, 3).await;

        // Two pipelined requests on a released connection: both answered, in order.
        tcp.write_all(b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p2 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let both = read_responses(&mut tcp, 2).await;
        assert!(both[0].contains("\"uri\":\"/p1\""), "{both:?}");
        assert!(both[1].contains("\"uri\":\"/p2\""), "{both:?}");
        released(&proxy, listener, 4).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_waiting_for_a_slow_reader_is_never_cut_by_a_release() {
    // Bodies from one that the socket buffers absorb to one that keeps the upstream
    // waiting: in between, the upstream's answer is over while part of it still waits
    // in the proxy for the client, which is when a release must not happen.
    const SIZES: [usize; 5] = [64 << 10, 160 << 10, 320 << 10, 640 << 10, 4 << 20];
    let app = Router::new().route(
        "/big/{size}",
        any(
            |axum::extract::Path(size): axum::extract::Path<usize>| async move { vec![b'x'; size] },
        ),
    );
    let (proxy, _dir) = releasing_proxy(app, "release-slow").await;
    let addr: std::net::SocketAddr = addr_of(&proxy, "web").parse().unwrap();
    let mut expected_releases = 0;
    for size in SIZES {
        // A small receive buffer, so that little of the body fits on the client's side.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut tcp = socket.connect(addr).await.unwrap();
        tcp.write_all(format!("GET /big/{size} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        // Read the head, then stop reading for longer than a release and the second
        // the proxy gives a closing connection (the slowness is the point).
        let mut got = vec![0u8; 4096];
        let mut n = 0;
        let head_end = loop {
            let more = tcp.read(&mut got[n..]).await.unwrap();
            assert!(more > 0, "{size}: closed before the head");
            n += more;
            if let Some(end) = got[..n].windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
        };
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut body = got[head_end..n].to_vec();
        let mut chunk = vec![0u8; 64 * 1024];
        while body.len() < size {
            let more = tokio::time::timeout(PATIENCE, tcp.read(&mut chunk))
                .await
                .expect("the body stalled")
                .unwrap();
            assert!(more > 0, "closed after {} of {size} bytes", body.len());
            body.extend_from_slice(&chunk[..more]);
        }
        assert_eq!(body.len(), size);
        assert!(body.iter().all(|&b| b == b'x'));
        // The connection carries on, and is released once idle.
        get_ok(&mut tcp, "/after").await;
        expected_releases = releases(&proxy, "web").await + 1;
        released(&proxy, "web", expected_releases).await;
    }
    assert!(expected_releases >= SIZES.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_connections_still_idle_out_and_close_on_shutdown() {
    let upstream = echo("i").await;
    let dir = TempDir::new("release-idle");
    let path = dir.write(
        "proxy.toml",
        &limited(
            upstream,
            "release_idle_buffers_after = \"100ms\"\nidle_timeout = \"1s\"",
        ),
    );
    let proxy = Proxy::with_config(&path);
    let addr = addr_of(&proxy, "web");

    let mut idle = TcpStream::connect(&addr).await.unwrap();
    let start = Instant::now();
    get_ok(&mut idle, "/").await;
    released(&proxy, "web", 1).await;
    closed_after(&mut idle).await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );

    // Released and waiting when shutdown starts.
    shut_down_while_released(proxy, &addr, 2).await;
}

/// Many parked connections: each resumes when its client sends a request (and only
/// then), leaves the lot when its client closes, and is closed at its idle timeout.
#[tokio::test]
async fn parked_connections_resume_leave_and_idle_out() {
    const N: usize = 20;
    let upstream = echo("parked").await;
    let dir = TempDir::new("parked");
    let path = dir.write(
        "proxy.toml",
        &limited(
            upstream,
            "release_idle_buffers_after = \"100ms\"\nidle_timeout = \"3s\"",
        ),
    );
    let proxy = Proxy::with_config(&path);
    let addr = addr_of(&proxy, "web");
    let mut clients = Vec::new();
    for _ in 0..N {
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        get_ok(&mut tcp, "/first").await;
        clients.push(tcp);
    }
    parked(&proxy, "web", N as i64).await;

    // Every other client asks again; the others stay parked meanwhile.
    for tcp in clients.iter_mut().step_by(2) {
        get_ok(tcp, "/again").await;
    }
    let asked_again = Instant::now();
    released(&proxy, "web", (N + N / 2) as u64).await;
    parked(&proxy, "web", N as i64).await;

    // Five clients leave: their connections leave the lot (and close).
    let open_before = open_connections(&proxy, "web").await;
    for tcp in clients.drain(..5) {
        drop(tcp);
    }
    parked(&proxy, "web", (N - 5) as i64).await;
    assert_eq!(open_connections(&proxy, "web").await, open_before - 5);

    // The rest are closed at their idle timeout (3 s after their last request).
    for tcp in &mut clients {
        closed_after(tcp).await;
    }
    let waited = asked_again.elapsed();
    assert!(
        waited >= Duration::from_millis(2900),
        "closed early: {waited:?}"
    );
    parked(&proxy, "web", 0).await;
}

/// `listener`'s open client connections (scrapes go to the admin listener).
async fn open_connections(proxy: &Proxy, listener: &str) -> i64 {
    listener_metric(proxy, "proxy_open_connections", listener).await
}

/// Release a new connection on `proxy`'s `web` listener (its `released_count`-th release),
/// then shut the proxy down: the connection is closed at once, and the server exits
/// without waiting out its shutdown timeout (30 s).
async fn shut_down_while_released(proxy: Proxy, addr: &str, released_count: u64) {
    let mut waiting = TcpStream::connect(addr).await.unwrap();
    get_ok(&mut waiting, "/").await;
    released(&proxy, "web", released_count).await;
    let start = Instant::now();
    proxy.signal("TERM");
    closed_after(&mut waiting).await;
    let (_proxy, status) = proxy.wait_exit_async().await;
    assert!(status.success(), "{status:?}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

/// Shutdown reaches a released connection that waits for its next request by itself,
/// not by its idle timeout (a minute here) or the shutdown timeout (30 s).
#[tokio::test]
async fn a_released_connection_closes_at_once_on_shutdown() {
    let upstream = echo("s").await;
    let dir = TempDir::new("release-shutdown");
    let path = dir.write(
        "proxy.toml",
        &limited(
            upstream,
            "release_idle_buffers_after = \"100ms\"\nidle_timeout = \"60s\"",
        ),
    );
    let proxy = Proxy::with_config(&path);
    let addr = addr_of(&proxy, "web");
    shut_down_while_released(proxy, &addr, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_connection_upgrades_to_a_websocket() {
    use axum::extract::ws::{Message, WebSocketUpgrade};
    use futures_util::{SinkExt, StreamExt};
    let app = Router::new().route(
        "/ws",
        any(|ws: WebSocketUpgrade| async move {
            ws.on_upgrade(|mut socket| async move {
                while let Some(Ok(Message::Text(text))) = socket.recv().await {
                    if socket.send(Message::Text(text)).await.is_err() {
                        break;
                    }
                }
            })
        }),
    );
    let (proxy, _dir) = releasing_proxy(app, "release-ws").await;
    let mut tcp = TcpStream::connect(addr_of(&proxy, "web")).await.unwrap();
    get_ok(&mut tcp, "/plain").await;
    released(&proxy, "web", 1).await;
    let (mut ws, response) = tokio_tungstenite::client_async("ws://x/ws", tcp)
        .await
        .expect("the upgrade on a released connection");
    assert_eq!(response.status(), 101);
    ws.send(tokio_tungstenite::tungstenite::Message::text("hello"))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("no echo")
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "hello");
    // The tunnel is not an idle HTTP/1.1 connection: never released while it is open.
    assert_eq!(releases(&proxy, "web").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_release_their_buffers_and_serve_on() {
    let upstream = echo("tls-release").await;
    let dir = TempDir::new("tls-release");
    let (h1, _) = TlsClient::new(&dir, &[b"http/1.1"]);
    let config = tls_config(upstream, "release_idle_buffers_after = \"100ms\"");
    let path = dir.write("proxy.toml", &config);
    let proxy = Proxy::with_config(&path);
    let addr = proxy.listener_url("secure").replace("https://", "");
    let mut tls = h1.connect(&addr).await;
    get_ok(&mut tls, "/one").await;
    released(&proxy, "secure", 1).await;
    // TLS connections wait in their tasks, not in the parking lot.
    assert_eq!(parked_now(&proxy, "secure").await, 0);
    get_ok(&mut tls, "/two").await;
    released(&proxy, "secure", 2).await;
}
