//! Failures: what the client gets when the upstream is down, slow, broken or closes
//! early, when a body is too large, and when the input is odd. Every synthesised answer
//! has a generic body (never the upstream's address) and a `ProxyError` extension.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum_reverse_proxy::{ProxyError, ProxyPolicy, ReverseProxy};
use bytes::Bytes;
use common::{RawClient, RawEvent, RawResponse, RawUpstream, Upstream, raw_get, raw_request};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::{Notify, mpsc};
use tower::ServiceExt;

// ===== Harness =====

async fn spawn(proxy: ReverseProxy) -> SocketAddr {
    common::spawn_proxy(Router::from(proxy)).await
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// The proxy's own answer: `status`, a generic body that does not name `upstream`.
fn assert_generic(res: &RawResponse, status: u16, upstream: SocketAddr) {
    assert_eq!(res.status, status, "{}", res.body_text());
    let body = res.body_text();
    assert!(!body.is_empty());
    assert!(
        !body.contains(&upstream.ip().to_string()) && !body.contains(&upstream.port().to_string()),
        "the error body names the upstream: {body}"
    );
}

/// Call the proxy in-process and return the `ProxyError` on its answer.
async fn proxy_error(proxy: &ReverseProxy, req: Request<Body>) -> (StatusCode, ProxyError) {
    let res = proxy.clone().oneshot(req).await.unwrap();
    let err = res
        .extensions()
        .get::<ProxyError>()
        .cloned()
        .unwrap_or_else(|| panic!("no ProxyError on a {} answer", res.status()));
    assert_eq!(err.status(), res.status());
    (res.status(), err)
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

// ===== Upstream unreachable, broken or slow =====

#[tokio::test]
async fn connection_refused_is_502() {
    let dead = closed_port().await;
    let proxy = ReverseProxy::new("/", format!("http://{dead}"));
    let addr = spawn(proxy.clone()).await;
    let res = raw_get(addr, "/x").await;
    assert_generic(&res, 502, dead);

    let (status, err) = proxy_error(&proxy, get("/x")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(err.is_connect() && !err.is_upstream() && !err.is_timeout());
}

#[tokio::test]
async fn malformed_upstream_response_is_502() {
    for reply in [
        &b"garbage\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"",
    ] {
        let origin = RawUpstream::start(move |_| (reply.to_vec(), true)).await;
        let proxy = ReverseProxy::new("/", origin.url(""));
        let addr = spawn(proxy.clone()).await;
        let res = raw_get(addr, "/").await;
        assert_generic(&res, 502, origin.addr);

        let (_, err) = proxy_error(&proxy, get("/")).await;
        assert!(err.is_upstream() && !err.is_connect(), "{reply:?}: {err:?}");
    }
}

#[tokio::test]
async fn upstream_closing_mid_body_truncates_the_response() {
    let origin = RawUpstream::start(|_| {
        let mut reply = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
        reply.extend_from_slice(&[b'x'; 10]);
        (reply, true)
    })
    .await;
    let proxy = ReverseProxy::new("/", origin.url(""));
    let addr = spawn(proxy.clone()).await;

    let mut client = RawClient::connect(addr).await;
    client.send(b"GET / HTTP/1.1\r\nHost: p\r\n\r\n").await;
    let head = client.read_head().await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length").as_deref(), Some("1000"));
    // The proxy aborts the connection instead of pretending the body was complete,
    // or of waiting for bytes that will never come.
    let rest = client.read_to_end().await;
    assert!(rest.len() < 1000, "got {} bytes", rest.len());
    assert!(rest.iter().all(|&b| b == b'x'));

    let res = common::http_client()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap();
    assert!(res.bytes().await.is_err(), "reqwest sees the body fail");

    let res = proxy.oneshot(get("/")).await.unwrap();
    assert!(res.into_body().collect().await.is_err());
}

#[tokio::test]
async fn slow_upstream_is_504() {
    // The origin waits for a notification that the test never sends.
    let never = Arc::new(Notify::new());
    let hold = Arc::clone(&never);
    let mut origin = Upstream::start_with(move |_| {
        let hold = Arc::clone(&hold);
        async move {
            hold.notified().await;
            common::status(StatusCode::OK)
        }
    })
    .await;
    let proxy = ReverseProxy::new("/", origin.url(""))
        .with_policy(ProxyPolicy::new().with_upstream_timeout(Duration::from_millis(200)));
    let addr = spawn(proxy.clone()).await;
    let start = Instant::now();
    let res = raw_get(addr, "/slow").await;
    assert_generic(&res, 504, origin.addr);
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(
        origin.next().await.target,
        "/slow",
        "the request did reach it"
    );

    let (_, err) = proxy_error(&proxy, get("/slow")).await;
    assert!(err.is_timeout() && !err.is_connect());
    drop(never);
}

#[tokio::test]
async fn timeout_does_not_cover_the_response_body() {
    let (tx, body) = common::channel_body();
    let body = std::sync::Mutex::new(Some(body));
    let origin = Upstream::start_with(move |_| {
        let body = body.lock().unwrap().take().unwrap();
        async move { Response::new(body) }
    })
    .await;
    let timeout = Duration::from_millis(500);
    let proxy = ReverseProxy::new("/", origin.url(""))
        .with_policy(ProxyPolicy::new().with_upstream_timeout(timeout));
    let addr = spawn(proxy).await;

    let mut client = RawClient::connect(addr).await;
    client.send(b"GET / HTTP/1.1\r\nHost: p\r\n\r\n").await;
    assert_eq!(client.read_head().await.status, 200);
    // The deadline is for the response head; time must really pass for this check.
    tokio::time::sleep(timeout * 2).await;
    tx.send(hyper::body::Frame::data(Bytes::from_static(b"late")))
        .unwrap();
    drop(tx);
    assert_eq!(client.read_chunk().await.as_deref(), Some(&b"late"[..]));
    assert_eq!(client.read_chunk().await, None);
}

// ===== Request body limits =====

#[tokio::test]
async fn declared_body_over_the_limit_is_413_without_contacting_upstream() {
    let mut origin = Upstream::start().await;
    let proxy = ReverseProxy::new("/", origin.url(""))
        .with_policy(ProxyPolicy::new().with_max_request_body_bytes(16));
    let addr = spawn(proxy.clone()).await;

    // Only the head is sent: the proxy must answer without waiting for the body.
    let mut client = RawClient::connect(addr).await;
    client
        .send(b"POST /big HTTP/1.1\r\nHost: p\r\nContent-Length: 17\r\n\r\n")
        .await;
    let res = client.read_response(false).await;
    assert_generic(&res, 413, origin.addr);

    let req = Request::post("/big")
        .header("content-length", "100")
        .body(Body::from(vec![0u8; 100]))
        .unwrap();
    let (_, err) = proxy_error(&proxy, req).await;
    assert!(err.is_body_too_large());
    assert_eq!(origin.connections(), 0, "the upstream was never contacted");

    // Exactly at the limit is fine.
    let res = raw_request(
        addr,
        b"POST /ok HTTP/1.1\r\nHost: p\r\nContent-Length: 16\r\n\r\n0123456789abcdef",
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(origin.next().await.body, b"0123456789abcdef");
}

#[tokio::test]
async fn streamed_body_over_the_limit_is_413() {
    let mut origin = Upstream::start().await;
    let proxy = ReverseProxy::new("/", origin.url(""))
        .with_policy(ProxyPolicy::new().with_max_request_body_bytes(16));
    let addr = spawn(proxy.clone()).await;

    let chunks = ["0123456789", "0123456789", "0123456789"].map(Ok::<_, std::io::Error>);
    let res = common::http_client()
        .post(format!("http://{addr}/stream"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = res.text().await.unwrap();
    assert!(!body.contains(&origin.addr.port().to_string()));
    // The upstream may have seen the start, never a complete 30-byte body.
    if let Some(seen) = origin.try_next() {
        assert!(seen.body_error.is_some() && seen.body_len <= 16, "{seen:?}");
    }

    let (tx, rx) = mpsc::unbounded_channel::<Result<Bytes, std::io::Error>>();
    for _ in 0..3 {
        tx.send(Ok(Bytes::from_static(b"0123456789"))).unwrap();
    }
    drop(tx);
    let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    let req = Request::post("/stream")
        .body(Body::from_stream(stream))
        .unwrap();
    let (_, err) = proxy_error(&proxy, req).await;
    assert!(err.is_body_too_large());
}

// ===== Odd requests =====

#[tokio::test]
async fn connect_is_501() {
    let origin = Upstream::start().await;
    let proxy = ReverseProxy::new("/", origin.url(""));
    let addr = spawn(proxy.clone()).await;
    let res = raw_request(
        addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert_generic(&res, 501, origin.addr);

    let req = Request::builder()
        .method(Method::CONNECT)
        .uri("example.com:443")
        .body(Body::empty())
        .unwrap();
    let (_, err) = proxy_error(&proxy, req).await;
    assert!(err.is_not_implemented());
    assert_eq!(origin.connections(), 0);
}

#[tokio::test]
async fn odd_inputs_get_an_answer_and_the_proxy_stays_up() {
    let mut origin = Upstream::start().await;
    let proxy = ReverseProxy::new("/", origin.url(""))
        .with_policy(ProxyPolicy::new().with_forwarded(true).with_via("edge"));
    let addr = spawn(proxy).await;

    // Absolute-form: the path and query are forwarded, the client's authority is not.
    let res = raw_request(
        addr,
        b"GET http://evil.example/x?y=1 HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 200);
    let seen = origin.next().await;
    assert_eq!(seen.target, "/x?y=1");
    assert_eq!(seen.header("host"), Some(origin.addr.to_string().as_str()));

    let long = format!("/{}", "a".repeat(8 * 1024));
    let res = raw_get(addr, &long).await;
    assert_eq!(res.status, 200);
    assert_eq!(origin.next().await.target, long);

    let mut odd: Vec<Vec<u8>> = vec![
        format!(
            "GET /{} HTTP/1.1\r\nHost: p\r\n\r\n",
            "b".repeat(200 * 1024)
        )
        .into_bytes(),
        b"GET / HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: p\r\nVia: \xff garbage, ,,\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: p\r\nX-Forwarded-For: not an ip\r\nForwarded: ;;==\r\n\r\n"
            .to_vec(),
        b"GET / HTTP/1.1\r\nHost: p\r\nConnection: \xff, ,bad name\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: p\r\nContent-Length: abc\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: p\r\nTE: \xff\r\n\r\n".to_vec(),
        b"GET /%zz%%/\xc3\x28 HTTP/1.1\r\nHost: p\r\n\r\n".to_vec(),
        b"GET * HTTP/1.1\r\nHost: p\r\n\r\n".to_vec(),
        b"OPTIONS * HTTP/1.1\r\nHost: p\r\n\r\n".to_vec(),
    ];
    let mut ok_bytes = b"GET /".to_vec();
    ok_bytes.extend_from_slice(&[b'c'; 100]);
    ok_bytes.extend_from_slice(b" HTTP/1.1\r\nHost: p\r\nX-Bin: \x80\x81\r\n\r\n");
    odd.push(ok_bytes);
    for request in odd {
        let mut client = RawClient::connect(addr).await;
        client.send(&request).await;
        let bytes = client.read_head_bytes().await;
        let shown = String::from_utf8_lossy(&request[..request.len().min(60)]).into_owned();
        assert!(
            bytes.starts_with(b"HTTP/1.1 "),
            "no answer to {shown:?}: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        // Still serving.
        let res = raw_get(addr, "/alive").await;
        assert_eq!(res.status, 200, "after {shown:?}");
    }
}

// ===== Pooled connections closed by the upstream =====

#[tokio::test]
async fn connection_close_from_upstream_is_handled() {
    let mut origin = Upstream::start_with(|_| async {
        Response::builder()
            .header("connection", "close")
            .body(common::full("bye"))
            .unwrap()
    })
    .await;
    let addr = spawn(ReverseProxy::new("/", origin.url(""))).await;
    let mut client = RawClient::connect(addr).await;
    for i in 0..5 {
        let request = format!("GET /{i} HTTP/1.1\r\nHost: p\r\n\r\n");
        client.send(request.as_bytes()).await;
        let res = client.read_response(false).await;
        assert_eq!(
            (res.status, res.body_text().as_str()),
            (200, "bye"),
            "request {i}"
        );
        assert!(
            res.header("connection").is_none(),
            "the upstream's close is not ours"
        );
        assert_eq!(
            origin.next().await.conn,
            i,
            "one upstream connection per request"
        );
    }
}

#[tokio::test]
async fn idle_connection_closed_by_upstream_is_not_reused() {
    // Answers keep-alive style, then closes the socket once idle.
    let mut origin = RawUpstream::start(|_| {
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            true,
        )
    })
    .await;
    let addr = spawn(ReverseProxy::new("/", origin.url(""))).await;
    let mut client = RawClient::connect(addr).await;
    for i in 0..20 {
        let request = format!("POST /{i} HTTP/1.1\r\nHost: p\r\nContent-Length: 1\r\n\r\nx");
        client.send(request.as_bytes()).await;
        let res = client.read_response(false).await;
        assert_eq!(
            (res.status, res.body_text().as_str()),
            (200, "ok"),
            "request {i}"
        );
        assert!(matches!(origin.next_event().await, RawEvent::Request(_)));
        // The upstream has closed its end before the next request is sent.
        assert!(matches!(origin.next_event().await, RawEvent::Closed));
    }
}
