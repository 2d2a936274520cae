//! RetryLayer in front of a real proxy and real upstreams: what is replayed and what never is.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum_reverse_proxy::{
    BalancedProxy, LoadBalancingStrategy, OutlierDetection, ProxyError, RetryLayer, ReverseProxy,
};
use http::{Method, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};

// ===== helpers =====

/// An upstream that records (method, body) of every request it gets.
async fn recording_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<(Method, Bytes)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new().fallback(move |req: Request| {
        let tx = tx.clone();
        async move {
            let method = req.method().clone();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            tx.send((method, body.clone())).unwrap();
            body
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, rx)
}

/// A connector whose first `fail` dials are refused, then dials for real.
#[derive(Clone)]
struct FlakyConnector {
    fail: usize,
    dials: Arc<AtomicUsize>,
    inner: HttpConnector,
}

impl Service<Uri> for FlakyConnector {
    type Response = TokioIo<TcpStream>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let n = self.dials.fetch_add(1, Ordering::SeqCst);
        let fail = n < self.fail;
        let mut inner = self.inner.clone();
        Box::pin(async move {
            if fail {
                return Err(
                    std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into(),
                );
            }
            inner.call(uri).await.map_err(Into::into)
        })
    }
}

fn flaky_proxy(upstream: SocketAddr, fail: usize) -> (Router, Arc<AtomicUsize>) {
    let dials = Arc::new(AtomicUsize::new(0));
    let connector = FlakyConnector {
        fail,
        dials: Arc::clone(&dials),
        inner: HttpConnector::new(),
    };
    let client = Client::builder(TokioExecutor::new()).build::<_, Body>(connector);
    let proxy = ReverseProxy::new_with_client("/", format!("http://{upstream}"), client);
    let app = Router::from(proxy)
        .layer(RetryLayer::with_delay(3, Duration::from_millis(1)).with_jitter(false));
    (app, dials)
}

// ===== replayed: the request never reached the upstream =====

#[tokio::test]
async fn a_balanced_retry_goes_to_an_endpoint_not_tried_yet() {
    let (upstream, _seen) = recording_upstream().await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    // Random picks and no ejection: without avoiding the endpoint that just failed, about
    // one request in four would spend both attempts on the dead one.
    let proxy = BalancedProxy::new(
        "/".to_owned(),
        vec![format!("http://{dead}"), format!("http://{upstream}")],
    )
    .with_strategy(LoadBalancingStrategy::Random)
    .with_outlier_detection(OutlierDetection::disabled());
    let app = Router::from(proxy).layer(RetryLayer::with_delay(2, Duration::ZERO));
    for i in 0..40 {
        let req = Request::get("/x").body(Body::empty()).unwrap();
        let response = app.clone().oneshot(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
    }
}

#[tokio::test]
async fn post_body_is_replayed_intact_after_connect_failures() {
    let (upstream, mut seen) = recording_upstream().await;
    let (app, dials) = flaky_proxy(upstream, 2);
    let payload = Bytes::from((0..40_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let req = Request::post("/submit")
        .header("content-length", payload.len())
        .body(Body::from(payload.clone()))
        .unwrap();
    let response = app.oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echoed = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(echoed, payload);
    assert_eq!(
        dials.load(Ordering::SeqCst),
        3,
        "two refused dials, then one that worked"
    );
    let (method, body) = seen.recv().await.unwrap();
    assert_eq!(method, Method::POST);
    assert_eq!(body, payload);
    assert!(
        seen.try_recv().is_err(),
        "the upstream saw exactly one request"
    );
}

#[tokio::test]
async fn gives_up_after_the_attempts_with_a_typed_502() {
    let (upstream, mut seen) = recording_upstream().await;
    let (app, dials) = flaky_proxy(upstream, 10);
    let response = app
        .oneshot(Request::post("/").body(Body::from("x")).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert!(
        response
            .extensions()
            .get::<ProxyError>()
            .unwrap()
            .is_connect()
    );
    assert_eq!(dials.load(Ordering::SeqCst), 3);
    assert!(seen.try_recv().is_err());
}

// ===== never replayed: the request reached the upstream =====

/// An upstream that reads a whole request, counts it, and drops the connection unanswered.
async fn hanging_up_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read until the end of the headers plus the 5-byte body.
                loop {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
                        && buf.len() >= end + 4 + 5
                    {
                        break;
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = socket.shutdown().await;
            });
        }
    });
    (addr, count)
}

async fn send_through_retry(upstream: SocketAddr, method: Method, idempotent: bool) -> StatusCode {
    let proxy = ReverseProxy::new("/", format!("http://{upstream}"));
    let app = Router::from(proxy).layer(
        RetryLayer::with_delay(3, Duration::from_millis(1))
            .with_jitter(false)
            .with_idempotent_retries(idempotent),
    );
    let req = Request::builder()
        .method(method)
        .uri("/")
        .header("content-length", "5")
        .body(Body::from("hello"))
        .unwrap();
    let response = app.oneshot(req).await.unwrap();
    if response.status() == StatusCode::BAD_GATEWAY {
        assert!(
            response
                .extensions()
                .get::<ProxyError>()
                .unwrap()
                .is_upstream()
        );
    }
    response.status()
}

#[tokio::test]
async fn post_that_reached_the_upstream_is_never_replayed() {
    let (upstream, count) = hanging_up_upstream().await;
    let status = send_through_retry(upstream, Method::POST, true).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn idempotent_request_is_retried_only_when_opted_in() {
    let (upstream, count) = hanging_up_upstream().await;
    assert_eq!(
        send_through_retry(upstream, Method::PUT, false).await,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(
        send_through_retry(upstream, Method::PUT, true).await,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(count.load(Ordering::SeqCst), 1 + 3);
}

#[tokio::test]
async fn upstream_made_502_is_passed_through_once() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let app = Router::new().fallback(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async { (StatusCode::BAD_GATEWAY, "from upstream") }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let proxy = ReverseProxy::new("/", format!("http://{upstream}"));
    let app = Router::from(proxy).layer(RetryLayer::new(3).with_idempotent_retries(true));
    let response = app
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert!(response.extensions().get::<ProxyError>().is_none());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"from upstream");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}
