//! Streaming: bodies cross the proxy frame by frame without being re-chunked or
//! buffered, trailers survive, `Expect: 100-continue` works, and a 1 GiB transfer runs
//! in bounded memory.
//!
//! Pauses between chunks are awaited, never slept: the sender produces the next chunk
//! only after the other end has reported the previous one.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum_reverse_proxy::{ProxyPolicy, ReverseProxy};
use bytes::Bytes;
use common::{RawClient, UpBody, Upstream, channel_body, full, h2_client, within};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;

// ===== Harness =====

/// Distinct sizes, so a merged or split chunk cannot pass for the right one.
const CHUNKS: [&[u8]; 3] = [b"first", b"second!", b"and third.."];

async fn proxy_to(origin: &Upstream, policy: ProxyPolicy) -> std::net::SocketAddr {
    let proxy = ReverseProxy::new("/", origin.url("")).with_policy(policy);
    common::spawn_proxy(Router::from(proxy)).await
}

// ===== Chunk boundaries =====

#[tokio::test]
async fn request_chunks_arrive_one_by_one() {
    let mut origin = Upstream::start().await;
    let addr = proxy_to(&origin, ProxyPolicy::new()).await;

    let (tx, rx) = mpsc::unbounded_channel::<Result<Bytes, std::io::Error>>();
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
    let request = common::http_client()
        .post(format!("http://{addr}/upload"))
        .body(body)
        .send();
    let response = tokio::spawn(request);

    for chunk in CHUNKS {
        tx.send(Ok(Bytes::from_static(chunk))).unwrap();
        // The origin has this chunk before the client produces the next one.
        let size = within("a chunk at the origin", origin.frames.recv()).await;
        assert_eq!(size, Some(chunk.len()));
    }
    drop(tx);

    let response = within("the response", response).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = origin.next().await;
    assert_eq!(seen.frames, CHUNKS.map(<[u8]>::len));
    assert_eq!(seen.body, CHUNKS.concat());
    assert_eq!(seen.header("transfer-encoding"), Some("chunked"));
    assert!(!seen.has("content-length"));
}

#[tokio::test]
async fn response_chunks_arrive_one_by_one() {
    let (tx, body) = channel_body();
    let body = Arc::new(Mutex::new(Some(body)));
    let origin = Upstream::start_with(move |_| {
        let body = body.lock().unwrap().take().expect("one request");
        async move { Response::new(body) }
    })
    .await;
    let addr = proxy_to(&origin, ProxyPolicy::new()).await;

    let mut client = RawClient::connect(addr).await;
    client
        .send(b"GET /download HTTP/1.1\r\nHost: p\r\n\r\n")
        .await;
    let head = client.read_head().await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("transfer-encoding").as_deref(), Some("chunked"));
    for chunk in CHUNKS {
        tx.send(Frame::data(Bytes::from_static(chunk))).unwrap();
        let got = client.read_chunk().await;
        assert_eq!(
            got.as_deref(),
            Some(chunk),
            "one chunk on the wire per chunk sent"
        );
    }
    drop(tx);
    assert_eq!(client.read_chunk().await, None);
}

// ===== Trailers =====

/// An HTTP/2 client sends a body (with trailers when `request_trailers`) through the
/// proxy and gets one back with trailers; the origin echoes the request trailer.
async fn trailers_round_trip(policy: ProxyPolicy, request_trailers: bool) {
    let mut origin = Upstream::start_with(|req| async move {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-resp-trailer", HeaderValue::from_static("t1"));
        if let Some(theirs) = req.trailers.as_ref().and_then(|t| t.get("x-req-trailer")) {
            trailers.insert("x-echo-trailer", theirs.clone());
        }
        let frames = [
            Ok::<_, common::BoxError>(Frame::data(Bytes::from_static(b"resp-"))),
            Ok(Frame::data(Bytes::from_static(b"body"))),
            Ok(Frame::trailers(trailers)),
        ];
        let body: UpBody = BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)));
        // An HTTP/1 origin only sends declared trailers, and only to `TE: trailers`.
        Response::builder()
            .header("trailer", "x-resp-trailer, x-echo-trailer")
            .body(body)
            .unwrap()
    })
    .await;
    let addr = proxy_to(&origin, policy).await;

    let mut frames = vec![
        Ok::<_, common::BoxError>(Frame::data(Bytes::from_static(b"req-"))),
        Ok(Frame::data(Bytes::from_static(b"body"))),
    ];
    if request_trailers {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-req-trailer", HeaderValue::from_static("r1"));
        frames.push(Ok(Frame::trailers(trailers)));
    }
    let body: UpBody = BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)));
    let req = Request::post(format!("http://{addr}/t"))
        .header("te", "trailers")
        .header("trailer", "x-req-trailer")
        .body(body)
        .unwrap();
    let mut h2 = h2_client(addr).await;
    let res = within("the response", h2.send_request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let collected = within("the body", res.into_body().collect()).await.unwrap();
    let trailers = collected.trailers().cloned().expect("response trailers");
    assert_eq!(collected.to_bytes(), "resp-body");
    assert_eq!(trailers.get("x-resp-trailer").unwrap(), "t1");

    let seen = origin.next().await;
    assert_eq!(seen.body, b"req-body");
    assert_eq!(seen.header("te"), Some("trailers"));
    if request_trailers {
        let req_trailers = seen.trailers.expect("request trailers at the origin");
        assert_eq!(req_trailers.get("x-req-trailer").unwrap(), "r1");
        assert_eq!(trailers.get("x-echo-trailer").unwrap(), "r1");
    }
}

#[tokio::test]
async fn trailers_both_ways_over_http2_upstream() {
    trailers_round_trip(ProxyPolicy::new().with_h2c(true), true).await;
}

/// hyper's HTTP/1 client writes only the trailer fields that the request's `Trailer`
/// header declares, so this passes only because the proxy forwards `Trailer`.
#[tokio::test]
async fn trailers_both_ways_over_http1_upstream() {
    trailers_round_trip(ProxyPolicy::new(), true).await;
}

// ===== Expect: 100-continue =====

#[tokio::test]
async fn expect_100_continue() {
    let mut origin = Upstream::start().await;
    let addr = proxy_to(&origin, ProxyPolicy::new()).await;
    let mut client = RawClient::connect(addr).await;
    client
        .send(
            b"POST /e HTTP/1.1\r\nHost: p\r\nContent-Length: 11\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .await;
    // The body is held back until the proxy says to go on.
    let interim = client.read_head().await;
    assert_eq!(interim.status, 100, "{}", interim.status_line);
    assert!(origin.try_next().is_none());
    client.send(b"hello world").await;
    let res = client.read_response(false).await;
    assert_eq!((res.status, res.body_text().as_str()), (200, "ok"));
    let seen = origin.next().await;
    assert_eq!(seen.body, b"hello world");
}

// ===== 1 GiB in bounded memory =====

const GIB: u64 = 1 << 30;
const PIECE: usize = 256 * 1024;
/// Allowed growth of the test process's resident set during a transfer.
const RSS_BUDGET: u64 = 32 << 20;
/// Sample the resident set every this many bytes.
const SAMPLE_EVERY: u64 = 16 << 20;

/// The two big transfers measure one shared process: never at the same time.
static BIG: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The resident set of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Largest resident set seen, from any task.
struct Peak(AtomicU64);

impl Peak {
    fn sample(&self) {
        self.0.fetch_max(rss(), Ordering::Relaxed);
    }
}

/// 1 GiB of a repeated piece (the clones share one allocation), sampling RSS as it goes.
fn gib_stream(peak: Arc<Peak>) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let piece = Bytes::from(vec![0xa5u8; PIECE]);
    let count = GIB / PIECE as u64;
    futures_util::stream::iter(0..count).map(move |i| {
        if (i * PIECE as u64).is_multiple_of(SAMPLE_EVERY) {
            peak.sample();
        }
        Ok(piece.clone())
    })
}

async fn warm_up(addr: std::net::SocketAddr, origin: &mut Upstream) {
    let res = common::http_client()
        .post(format!("http://{addr}/warm"))
        .body(vec![1u8; 4 * PIECE])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.bytes().await.unwrap();
    origin.next().await;
}

fn report(what: &str, start: Instant, baseline: u64, peak: &Peak) {
    let peak = peak.0.load(Ordering::Relaxed);
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "{what}: 1 GiB in {:.1?}, RSS {} MiB → peak {} MiB (+{} KiB)",
        start.elapsed(),
        baseline >> 20,
        peak >> 20,
        growth >> 10
    );
    assert!(
        growth < RSS_BUDGET,
        "{what}: resident set grew by {} MiB (budget {} MiB); if another test in this \
         file panicked, its backtrace loaded debug info: look at that failure first",
        growth >> 20,
        RSS_BUDGET >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_in_bounded_memory() {
    let _serial = BIG.lock().await;
    let mut origin = Upstream::start().await;
    let addr = proxy_to(&origin, ProxyPolicy::new()).await;
    warm_up(addr, &mut origin).await;

    let baseline = rss();
    let peak = Arc::new(Peak(AtomicU64::new(baseline)));
    let start = Instant::now();
    let res = common::http_client()
        .post(format!("http://{addr}/upload"))
        .body(reqwest::Body::wrap_stream(gib_stream(Arc::clone(&peak))))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.bytes().await.unwrap();
    peak.sample();

    let seen = origin.next().await;
    assert_eq!(seen.body_len, GIB, "every byte arrived");
    assert!(seen.body_error.is_none());
    assert!(seen.body[..PIECE].iter().all(|&b| b == 0xa5));
    report("upload", start, baseline, &peak);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_download_in_bounded_memory() {
    let _serial = BIG.lock().await;
    let origin_peak = Arc::new(Peak(AtomicU64::new(0)));
    let for_origin = Arc::clone(&origin_peak);
    let mut origin = Upstream::start_with(move |req| {
        let peak = Arc::clone(&for_origin);
        async move {
            if req.target == "/warm" {
                return Response::new(full(vec![1u8; 4 * PIECE]));
            }
            let stream = gib_stream(peak).map(|piece| piece.map(Frame::data).map_err(Into::into));
            Response::builder()
                .header("content-length", GIB.to_string())
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap()
        }
    })
    .await;
    let addr = proxy_to(&origin, ProxyPolicy::new()).await;
    warm_up(addr, &mut origin).await;

    let baseline = rss();
    origin_peak.0.store(baseline, Ordering::Relaxed);
    let start = Instant::now();
    let res = common::http_client()
        .get(format!("http://{addr}/download"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.content_length(), Some(GIB));
    let mut stream = res.bytes_stream();
    let (mut total, mut next_sample) = (0u64, 0u64);
    while let Some(piece) = stream.next().await {
        total += piece.unwrap().len() as u64;
        if total >= next_sample {
            origin_peak.sample();
            next_sample += SAMPLE_EVERY;
        }
    }
    assert_eq!(total, GIB, "every byte arrived");
    origin_peak.sample();
    report("download", start, baseline, &origin_peak);
}
