//! HTTP/2 abuse, with hand-written frames (tests/common/h2.rs): more streams than
//! `http2_max_concurrent_streams`, rapid reset (CVE-2023-44487), CONTINUATION floods
//! (CVE-2024-27316 and kin). The proxy refuses, sends GOAWAY, closes; the upstream sees a
//! bounded number of requests; other clients keep being served.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::any;
use common::h2::{self, Conn};
use common::{PATIENCE, Proxy, TempDir, echo, serve};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// An upstream that holds every request until the gate opens, and counts them.
struct Gate {
    now: AtomicUsize,
    max: AtomicUsize,
    /// Requests received so far.
    seen: watch::Sender<usize>,
    open: watch::Sender<bool>,
}

impl Gate {
    async fn wait_seen(&self, n: usize) {
        let mut seen = self.seen.subscribe();
        tokio::time::timeout(PATIENCE, seen.wait_for(|s| *s >= n))
            .await
            .unwrap_or_else(|_| panic!("the upstream never saw {n} requests"))
            .unwrap();
    }

    fn seen(&self) -> usize {
        *self.seen.borrow()
    }
}

/// A request held at the gate; counted in `now` until dropped.
struct Held(Arc<Gate>);

impl Held {
    fn new(gate: Arc<Gate>) -> Held {
        let now = gate.now.fetch_add(1, Ordering::SeqCst) + 1;
        gate.max.fetch_max(now, Ordering::SeqCst);
        gate.seen.send_modify(|s| *s += 1);
        Held(gate)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn gated() -> (SocketAddr, Arc<Gate>) {
    let gate = Arc::new(Gate {
        now: AtomicUsize::new(0),
        max: AtomicUsize::new(0),
        seen: watch::channel(0).0,
        open: watch::channel(false).0,
    });
    let g = gate.clone();
    let addr = serve(Router::new().fallback(any(move || {
        let gate = g.clone();
        async move {
            let _held = Held::new(gate.clone());
            let mut open = gate.open.subscribe();
            let _ = open.wait_for(|o| *o).await;
            "released"
        }
    })))
    .await;
    (addr, gate)
}

/// `/gate…` goes to the gate, everything else to an echo upstream; h2c on the listener.
fn config(gate: SocketAddr, echo: SocketAddr, server: &str) -> String {
    format!(
        r#"
[server]
{server}

[admin]
address = "127.0.0.1:0"

[access_log]
output = "off"

[listeners.web]
address = "127.0.0.1:0"
h2c = true

[pools.gate]
targets = ["http://{gate}"]

[pools.echo]
targets = ["http://{echo}"]

[[routes]]
prefix = "/gate"
pool = "gate"

[[routes]]
prefix = "/"
pool = "echo"
"#
    )
}

async fn start(server: &str) -> (Proxy, String, Arc<Gate>, TempDir) {
    let (gate_addr, gate) = gated().await;
    let echo_addr = echo("echo").await;
    let dir = TempDir::new("h2-floods");
    let path = dir.write("proxy.toml", &config(gate_addr, echo_addr, server));
    let proxy = Proxy::with_config(&path);
    let addr = proxy.listener_url("web").replace("http://", "");
    (proxy, addr, gate, dir)
}

/// Read frames until HEADERS responses have come for `n` streams; returns them sorted
/// with their status. Only DATA, HEADERS and RST_STREAM(REFUSED_STREAM…) may come.
async fn responses(conn: &mut Conn<TcpStream>, n: usize) -> Vec<(u32, Option<u16>)> {
    let mut got = Vec::new();
    while got.len() < n {
        let f = conn
            .next_frame(PATIENCE)
            .await
            .expect("the connection closed before the responses");
        match f.kind {
            h2::HEADERS => got.push((f.stream, f.status())),
            h2::DATA => {}
            _ => panic!("unexpected frame {f:?}"),
        }
    }
    got.sort_unstable();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_limit_are_refused_and_the_upstream_sees_at_most_the_limit() {
    let (_proxy, addr, gate, _dir) = start("http2_max_concurrent_streams = 4").await;
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let (mut conn, settings) = Conn::handshake(tcp).await;
    assert!(
        settings.contains(&(h2::SETTINGS_MAX_CONCURRENT_STREAMS, 4)),
        "{settings:?}"
    );

    // Eight requests at once, ignoring the advertised limit as a hostile client would.
    let mut burst = Vec::new();
    for i in 0..8 {
        burst.extend(h2::get(1 + 2 * i, "/gate"));
    }
    conn.send(&burst).await.unwrap();

    // RFC 9113 §5.1.2: the four beyond the limit are refused (REFUSED_STREAM: the client
    // may retry them; nothing was processed).
    let mut refused = Vec::new();
    while refused.len() < 4 {
        let f = conn.next_frame(PATIENCE).await.expect("connection closed");
        assert_eq!(f.kind, h2::RST_STREAM, "{f:?}");
        assert_eq!(f.error_code(), Some(h2::REFUSED_STREAM), "{f:?}");
        refused.push(f.stream);
    }
    refused.sort_unstable();
    assert_eq!(refused, [9, 11, 13, 15]);
    gate.wait_seen(4).await;
    assert_eq!(gate.now.load(Ordering::SeqCst), 4);

    // Released, the four accepted ones complete; the upstream never had more than four.
    gate.open.send_replace(true);
    let done = responses(&mut conn, 4).await;
    assert_eq!(
        done,
        [
            (1, Some(200)),
            (3, Some(200)),
            (5, Some(200)),
            (7, Some(200))
        ]
    );
    assert_eq!(gate.max.load(Ordering::SeqCst), 4);
    assert_eq!(gate.seen(), 4);

    // The connection is fine: with the slots free again, a new stream is served.
    conn.send(&h2::get(17, "/gate")).await.unwrap();
    assert_eq!(responses(&mut conn, 1).await, [(17, Some(200))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_behaved_client_over_the_limit_is_queued_not_refused() {
    let (_proxy, addr, gate, _dir) = start("http2_max_concurrent_streams = 4").await;
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let get = |path: &str| {
        http::Request::get(format!("http://test{path}"))
            .body(axum::body::Body::empty())
            .unwrap()
    };
    // One request first, so that the client has the server's SETTINGS (and its limit).
    let mut first = sender.clone();
    let resp = first.send_request(get("/")).await.unwrap();
    assert_eq!(resp.status(), 200);

    let mut tasks = Vec::new();
    for _ in 0..12 {
        let mut s = sender.clone();
        let req = get("/gate");
        tasks.push(tokio::spawn(async move {
            s.ready().await?;
            s.send_request(req).await.map(|r| r.status())
        }));
    }
    // Four reach the upstream; the client keeps the other eight until a slot frees.
    gate.wait_seen(4).await;
    gate.open.send_replace(true);
    for task in tasks {
        let status = tokio::time::timeout(PATIENCE, task)
            .await
            .expect("a request never completed")
            .unwrap()
            .unwrap();
        assert_eq!(status, 200);
    }
    assert_eq!(gate.seen(), 12);
    assert!(gate.max.load(Ordering::SeqCst) <= 4);
}

/// Send `pairs` HEADERS + RST_STREAM pairs as fast as the socket takes them, while
/// reading what the server sends; returns the GOAWAY frames seen before it closed.
async fn rapid_reset(addr: &str, pairs: u32) -> Vec<h2::Frame> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (conn, _) = Conn::handshake(tcp).await;
    let (tcp, leftover) = conn.into_parts();
    let (read, mut write) = tcp.into_split();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut batch = Vec::new();
        for i in 0..pairs {
            let id = 1 + 2 * i;
            batch.extend(h2::get(id, "/gate"));
            batch.extend(h2::rst_stream(id, h2::CANCEL));
            if batch.len() > 16 * 1024 {
                if write.write_all(&batch).await.is_err() {
                    return;
                }
                batch.clear();
            }
        }
        let _ = write.write_all(&batch).await;
        // Keep the write half open: the server is the one to close.
        std::future::pending::<()>().await;
    });
    let mut reader = Conn::from_parts(read, leftover);
    let mut goaways = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while let Some(f) = reader.read_frame().await {
            if f.kind == h2::GOAWAY {
                goaways.push(f);
            }
        }
    })
    .await
    .expect("the server never closed the rapid-reset connection");
    writer.abort();
    goaways
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_floods_get_goaway_while_other_clients_are_served() {
    // Defaults: 128 concurrent streams, 100 early resets.
    const ROUNDS: usize = 20;
    let (proxy, addr, gate, _dir) = start("").await;
    let front = proxy.listener_url("web");

    let attack_addr = addr.clone();
    let attack = tokio::spawn(async move {
        let mut all = Vec::new();
        for _ in 0..ROUNDS {
            let goaways = rapid_reset(&attack_addr, 5000).await;
            assert!(!goaways.is_empty(), "closed without GOAWAY");
            all.extend(goaways);
        }
        all
    });

    // Meanwhile, another client on its own connections is served, and quickly.
    let good = common::client();
    let mut served = 0;
    while !attack.is_finished() {
        let start = Instant::now();
        let resp = good.get(format!("{front}/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap();
        let took = start.elapsed();
        assert!(took < Duration::from_secs(1), "a request took {took:?}");
        served += 1;
    }
    let goaways = attack.await.unwrap();
    assert!(served > 0);
    for g in &goaways {
        let code = g.error_code();
        assert!(
            code == Some(h2::ENHANCE_YOUR_CALM) || code == Some(h2::NO_ERROR),
            "{g:?}"
        );
    }
    // 100 000 streams opened and reset: the upstream saw a bounded number of them (per
    // connection at most http2_max_reset_streams + http2_max_concurrent_streams + 1).
    let seen = gate.seen();
    assert!(
        seen <= ROUNDS * (100 + 128 + 1),
        "the upstream saw {seen} requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_resets_that_evade_the_accept_queue_are_cut_off() {
    // A client that waits until each stream has reached the upstream before resetting
    // it: h2's pending-accept count never sees these. Ours does.
    let (_proxy, addr, gate, _dir) = start("http2_max_reset_streams = 10").await;
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let (mut conn, _) = Conn::handshake(tcp).await;
    let mut refused_by = None;
    for i in 0..1000u32 {
        let id = 1 + 2 * i;
        conn.send(&h2::get(id, "/gate")).await.unwrap();
        let wanted = i as usize + 1;
        let mut seen = gate.seen.subscribe();
        tokio::select! {
            reached = seen.wait_for(|s| *s >= wanted) => {
                reached.unwrap();
                conn.send(&h2::rst_stream(id, h2::CANCEL)).await.unwrap();
            }
            f = conn.next_frame(PATIENCE) => {
                refused_by = Some((i, f));
                break;
            }
        }
    }
    let (streams, frame) = refused_by.expect("1000 paced resets and still served");
    // The 11th reset trips the limit: the next stream is answered without the upstream
    // (503), or the GOAWAY comes first. The proxy notices a reset on the stream's own
    // task, so the stream sent right after it may still reach the upstream (and the
    // GOAWAY may come while it does): at most 11 + 2 requests reach it.
    assert!((11..=13).contains(&streams), "{streams} streams; {frame:?}");
    match &frame {
        Some(f) if f.kind == h2::HEADERS => assert_eq!(f.status(), Some(503), "{f:?}"),
        Some(f) if f.kind == h2::GOAWAY => {}
        other => panic!("unexpected {other:?}"),
    }
    // Then GOAWAY and the end of the connection, even without answering PINGs.
    let goaways = conn.until_closed(PATIENCE, false).await;
    assert!(
        frame.as_ref().is_some_and(|f| f.kind == h2::GOAWAY) || !goaways.is_empty(),
        "closed without GOAWAY"
    );
    let seen = gate.seen();
    assert!(
        seen == streams as usize || seen == streams as usize + 1,
        "{seen} requests reached the upstream for {streams} streams"
    );
    assert!(seen <= 13, "{seen} requests reached the upstream");
}

/// The proxy's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// `first` (HEADERS without END_HEADERS), then `continuation` again and again until the
/// socket fails or `cap` bytes are written. Returns the GOAWAY frames and bytes written.
async fn continuation_flood(
    addr: &str,
    first: Vec<u8>,
    continuation: Vec<u8>,
    cap: usize,
) -> (Vec<h2::Frame>, usize) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (conn, _) = Conn::handshake(tcp).await;
    let (tcp, leftover) = conn.into_parts();
    let (read, mut write) = tcp.into_split();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut written = 0;
        if write.write_all(&first).await.is_err() {
            return written;
        }
        written += first.len();
        let batch: Vec<u8> = continuation
            .iter()
            .copied()
            .cycle()
            .take(continuation.len() * (64 * 1024 / continuation.len()).max(1))
            .collect();
        while written < cap {
            if write.write_all(&batch).await.is_err() {
                break;
            }
            written += batch.len();
        }
        written
    });
    let mut reader = Conn::from_parts(read, leftover);
    let mut goaways = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while let Some(f) = reader.read_frame().await {
            if f.kind == h2::GOAWAY {
                goaways.push(f);
            }
        }
    })
    .await
    .expect("the server never closed the flooding connection");
    let written = tokio::time::timeout(PATIENCE, writer)
        .await
        .expect("the writer never stopped")
        .unwrap();
    (goaways, written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_floods_are_cut_off_with_bounded_memory() {
    let (proxy, addr, gate, _dir) = start("").await;
    let cap = 256 * 1024 * 1024;
    let before = rss_kib(proxy.pid());

    // 1. Empty CONTINUATION frames, forever.
    let first = h2::frame(
        h2::HEADERS,
        h2::END_STREAM,
        1,
        &h2::request_block("GET", "/gate", &[]),
    );
    let empty = h2::frame(h2::CONTINUATION, 0, 1, &[]);
    let (goaways, written) = continuation_flood(&addr, first, empty, cap).await;
    assert!(!goaways.is_empty(), "closed without GOAWAY");
    assert!(written < cap, "the server read {written} bytes of flood");

    // 2. One header value announced as 100 MB, sent in full-size CONTINUATION frames.
    let mut block = h2::request_block("GET", "/gate", &[]);
    block.push(0x00);
    block.extend(h2::hpack_str(b"x-flood"));
    block.extend(h2::hpack_int(7, 0x00, 100_000_000));
    let first = h2::frame(h2::HEADERS, h2::END_STREAM, 1, &block);
    let full = h2::frame(h2::CONTINUATION, 0, 1, &[b'a'; 16 * 1024]);
    let (goaways, written) = continuation_flood(&addr, first, full, cap).await;
    assert!(!goaways.is_empty(), "closed without GOAWAY");
    assert!(written < cap, "the server read {written} bytes of flood");
    for g in &goaways {
        let code = g.error_code();
        assert!(
            matches!(
                code,
                Some(h2::ENHANCE_YOUR_CALM | h2::COMPRESSION_ERROR | h2::PROTOCOL_ERROR)
            ),
            "{g:?}"
        );
    }

    // Nothing reached the upstream, and the proxy did not keep the flood.
    assert_eq!(gate.seen(), 0);
    let after = rss_kib(proxy.pid());
    assert!(
        after < before + 32 * 1024,
        "resident memory grew from {before} KiB to {after} KiB"
    );
}
