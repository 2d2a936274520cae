use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::{Bytes, BytesMut};
use futures_util::stream;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, StreamBody};
use tower::{Layer, Service, ServiceExt};

use super::backoff::Backoff;
use super::body::Replay;
use super::budget::Budget;
use super::{Retry, RetryLayer};
use crate::error::{Kind, ProxyError};

// ===== mock upstream =====

/// How much of the request body the mock reads before answering.
#[derive(Clone, Copy, Debug)]
enum Read {
    Nothing,
    FirstFrame,
    All,
}

/// What the mock does with one attempt.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// A failure reported by the proxy, carrying a `ProxyError`.
    Fail(Read, Kind),
    /// A response the upstream itself sent, after reading the whole body.
    Status(StatusCode),
    /// 200, echoing the body.
    Echo,
}

use Read::{All, FirstFrame, Nothing};

fn connect() -> Step {
    Step::Fail(Nothing, Kind::Connect)
}

/// What the mock saw in one attempt.
#[derive(Debug)]
struct Seen {
    method: Method,
    headers: HeaderMap,
    /// The body's exact size hint when the attempt started.
    size_hint: Option<u64>,
    /// The body bytes read (`None` if the mock read nothing).
    body: Option<Bytes>,
    trailers: Option<HeaderMap>,
    body_error: bool,
}

/// An inner service that follows a script, one step per attempt, and records every attempt.
#[derive(Clone)]
struct Origin {
    script: Arc<Vec<Step>>,
    /// The step for attempts past the end of the script.
    then: Step,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Origin {
    fn new(script: &[Step]) -> Origin {
        Origin::with_default(script, Step::Echo)
    }

    fn with_default(script: &[Step], then: Step) -> Origin {
        Origin {
            script: Arc::new(script.to_vec()),
            then,
            seen: Arc::default(),
        }
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<Body>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    > + Clone
    + Send
    + 'static {
        let origin = self.clone();
        tower::service_fn(move |request: Request<Body>| {
            let origin = origin.clone();
            async move { Ok::<_, Infallible>(origin.handle(request).await) }
        })
    }

    fn attempts(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let attempt = self.attempts();
        let step = self.script.get(attempt).copied().unwrap_or(self.then);
        let (parts, mut body) = request.into_parts();
        let mut seen = Seen {
            method: parts.method,
            headers: parts.headers,
            size_hint: body.size_hint().exact(),
            body: None,
            trailers: None,
            body_error: false,
        };
        let read = match step {
            Step::Fail(read, _) => read,
            Step::Status(_) | Step::Echo => All,
        };
        if !matches!(read, Nothing) {
            let mut data = BytesMut::new();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => match frame.into_data() {
                        Ok(chunk) => data.extend_from_slice(&chunk),
                        Err(frame) => seen.trailers = frame.into_trailers().ok(),
                    },
                    Err(_) => {
                        seen.body_error = true;
                        break;
                    }
                }
                if matches!(read, FirstFrame) {
                    break;
                }
            }
            seen.body = Some(data.freeze());
        }
        let echo = seen.body.clone().unwrap_or_default();
        self.seen.lock().unwrap().push(seen);

        let mut response = match step {
            Step::Fail(_, kind) => ProxyError::new(kind).into_response(),
            Step::Status(status) => {
                let mut response = Response::new(Body::from("from the upstream"));
                *response.status_mut() = status;
                response
            }
            Step::Echo => Response::new(Body::from(echo)),
        };
        response
            .headers_mut()
            .insert("x-attempt", HeaderValue::from(attempt + 1));
        response
    }
}

// ===== helpers =====

/// A layer that retries at once, so tests need no clock.
fn immediate(attempts: usize) -> RetryLayer {
    RetryLayer::with_delay(attempts, Duration::ZERO)
}

async fn send(layer: &RetryLayer, origin: &Origin, request: Request<Body>) -> Response<Body> {
    let Ok(response) = layer.layer(origin.service()).oneshot(request).await;
    response
}

/// A request with a fully known body and its `Content-Length`.
fn request(method: Method, body: &[u8]) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri("http://proxy.test/upload")
        .header("x-test", "kept")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body.to_vec()))
        .unwrap()
}

/// A request whose body arrives in `chunks`, of unknown length, then `trailers`.
fn streamed(method: Method, chunks: &[Bytes], trailers: Option<HeaderMap>) -> Request<Body> {
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> =
        chunks.iter().cloned().map(|c| Ok(Frame::data(c))).collect();
    if let Some(trailers) = trailers {
        frames.push(Ok(Frame::trailers(trailers)));
    }
    Request::builder()
        .method(method)
        .uri("http://proxy.test/upload")
        .body(Body::new(StreamBody::new(stream::iter(frames))))
        .unwrap()
}

fn chunks(count: usize, size: usize) -> Vec<Bytes> {
    (0..count)
        .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; size]))
        .collect()
}

fn concat(chunks: &[Bytes]) -> Bytes {
    chunks.concat().into()
}

async fn body_of(response: Response<Body>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

fn attempt_header(response: &Response<Body>) -> &str {
    response.headers()["x-attempt"].to_str().unwrap()
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

// ===== what is retried =====

#[tokio::test]
async fn connect_failure_is_retried_with_the_body_replayed_for_any_method() {
    let body = b"{\"order\": 42}";
    for method in [Method::GET, Method::POST, Method::PATCH, Method::DELETE] {
        // Whether or not the failed attempt had started reading the body.
        for first in [connect(), Step::Fail(All, Kind::Connect)] {
            let origin = Origin::new(&[first]);
            let response = send(&immediate(3), &origin, request(method.clone(), body)).await;
            assert_eq!(response.status(), StatusCode::OK, "{method} {first:?}");
            assert_eq!(attempt_header(&response), "2");
            assert_eq!(body_of(response).await, &body[..]);

            let seen = origin.take();
            assert_eq!(seen.len(), 2, "{method} {first:?}");
            for attempt in &seen {
                assert_eq!(attempt.method, method);
                assert_eq!(attempt.headers["x-test"], "kept");
            }
            let retry = &seen[1];
            assert_eq!(retry.body.as_deref(), Some(&body[..]));
            assert_eq!(
                retry.headers[header::CONTENT_LENGTH],
                body.len().to_string()
            );
            assert_eq!(retry.size_hint, Some(body.len() as u64));
            assert!(!retry.body_error);
        }
    }
}

#[tokio::test]
async fn retry_continues_a_body_the_failed_attempt_read_only_in_part() {
    let parts = chunks(3, 1000);
    let origin = Origin::new(&[Step::Fail(FirstFrame, Kind::Connect)]);
    let response = send(&immediate(2), &origin, streamed(Method::PUT, &parts, None)).await;
    assert_eq!(response.status(), StatusCode::OK);

    let seen = origin.take();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body.as_ref(), Some(&parts[0]));
    assert_eq!(seen[1].body, Some(concat(&parts)));
}

#[tokio::test]
async fn chunked_body_and_trailers_are_replayed() {
    let parts = chunks(4, 100);
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
    for first in [Read::All, Read::FirstFrame, Read::Nothing] {
        let origin = Origin::new(&[Step::Fail(first, Kind::Connect)]);
        let request = streamed(Method::POST, &parts, Some(trailers.clone()));
        let response = send(&immediate(2), &origin, request).await;
        assert_eq!(response.status(), StatusCode::OK, "{first:?}");

        let seen = origin.take();
        assert_eq!(seen.len(), 2, "{first:?}");
        assert_eq!(seen[1].body, Some(concat(&parts)), "{first:?}");
        assert_eq!(seen[1].trailers.as_ref(), Some(&trailers), "{first:?}");
        assert!(!seen[1].headers.contains_key(header::CONTENT_LENGTH));
    }
}

#[tokio::test]
async fn empty_body_request_is_retried() {
    let origin = Origin::new(&[connect(), connect()]);
    let response = send(&immediate(3), &origin, request(Method::GET, b"")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen = origin.take();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].size_hint, Some(0));
    assert_eq!(seen[2].body.as_deref(), Some(&b""[..]));
}

#[tokio::test]
async fn upstream_502_and_503_are_never_retried() {
    for status in [StatusCode::BAD_GATEWAY, StatusCode::SERVICE_UNAVAILABLE] {
        let origin = Origin::new(&[Step::Status(status)]);
        let layer = immediate(3).with_idempotent_retries(true);
        let response = send(&layer, &origin, request(Method::GET, b"")).await;
        assert_eq!(response.status(), status);
        assert!(response.extensions().get::<ProxyError>().is_none());
        assert_eq!(body_of(response).await, "from the upstream");
        assert_eq!(origin.attempts(), 1);
    }
}

#[tokio::test]
async fn upstream_failure_on_post_is_never_retried() {
    for method in [Method::POST, Method::PATCH] {
        for kind in [Kind::Upstream, Kind::Timeout] {
            let origin = Origin::new(&[Step::Fail(All, kind)]);
            let layer = immediate(3).with_idempotent_retries(true);
            let response = send(&layer, &origin, request(method.clone(), b"pay")).await;
            assert_eq!(response.status(), ProxyError::new(kind).status());
            assert_eq!(origin.attempts(), 1, "{method} {kind:?}");
        }
    }
}

#[tokio::test]
async fn upstream_failure_on_idempotent_method_is_retried_only_when_enabled() {
    let idempotent = [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ];
    for method in idempotent {
        for kind in [Kind::Upstream, Kind::Timeout] {
            let origin = Origin::new(&[Step::Fail(All, kind)]);
            let response = send(&immediate(3), &origin, request(method.clone(), b"x")).await;
            assert_eq!(response.status(), ProxyError::new(kind).status());
            assert_eq!(origin.attempts(), 1, "default: {method} {kind:?}");

            let origin = Origin::new(&[Step::Fail(All, kind)]);
            let layer = immediate(3).with_idempotent_retries(true);
            let response = send(&layer, &origin, request(method.clone(), b"x")).await;
            assert_eq!(response.status(), StatusCode::OK, "{method} {kind:?}");
            let seen = origin.take();
            assert_eq!(seen.len(), 2, "opted in: {method} {kind:?}");
            assert_eq!(seen[1].body.as_deref(), Some(&b"x"[..]));
        }
    }
}

#[tokio::test]
async fn other_proxy_failures_are_not_retried() {
    for kind in [
        Kind::NoEndpoint,
        Kind::BodyTooLarge,
        Kind::Loop,
        Kind::NotImplemented,
        Kind::InvalidTarget,
        Kind::BadRequest,
    ] {
        let origin = Origin::new(&[Step::Fail(All, kind)]);
        let layer = immediate(3).with_idempotent_retries(true);
        let response = send(&layer, &origin, request(Method::GET, b"")).await;
        assert_eq!(response.status(), ProxyError::new(kind).status());
        assert_eq!(origin.attempts(), 1, "{kind:?}");
    }
}

// ===== attempts and the last response =====

#[tokio::test]
async fn attempts_are_clamped_to_at_least_one() {
    for attempts in [0, 1] {
        let origin = Origin::with_default(&[], connect());
        let response = send(&immediate(attempts), &origin, request(Method::GET, b"")).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(origin.attempts(), 1, "attempts = {attempts}");
    }
    let origin = Origin::with_default(&[], connect());
    let response = send(&RetryLayer::new(0), &origin, request(Method::GET, b"")).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(origin.attempts(), 1);
}

#[tokio::test]
async fn last_response_is_returned_when_every_attempt_fails() {
    let origin = Origin::with_default(&[], connect());
    let response = send(&immediate(3), &origin, request(Method::POST, b"abc")).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(attempt_header(&response), "3");
    let error = response.extensions().get::<ProxyError>().unwrap();
    assert!(error.is_connect());
    assert_eq!(origin.attempts(), 3);
}

// ===== body limits =====

#[tokio::test]
async fn body_larger_than_the_cap_is_sent_once_intact() {
    let parts = chunks(10, 10 * 1024); // 100 KiB, over the 64 KiB default
    let whole = concat(&parts);
    let with_length = Request::builder()
        .method(Method::POST)
        .header(header::CONTENT_LENGTH, whole.len())
        .body(Body::from(whole.clone()))
        .unwrap();
    let without_length = streamed(Method::POST, &parts, None);
    for request in [with_length, without_length] {
        let origin = Origin::new(&[Step::Fail(All, Kind::Connect)]);
        let response = send(&immediate(3), &origin, request).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let seen = origin.take();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].body.as_ref(), Some(&whole));
        assert!(!seen[0].body_error);
    }
}

#[tokio::test]
async fn replay_cap_is_configurable() {
    let parts = chunks(2, 600);
    for (cap, attempts) in [(1000, 1), (1200, 2)] {
        let origin = Origin::new(&[Step::Fail(All, Kind::Connect)]);
        let layer = immediate(3).with_max_replay_body_bytes(cap);
        let response = send(&layer, &origin, streamed(Method::POST, &parts, None)).await;
        assert_eq!(origin.attempts(), attempts, "cap {cap}");
        let expected = if attempts == 1 {
            StatusCode::BAD_GATEWAY
        } else {
            StatusCode::OK
        };
        assert_eq!(response.status(), expected);
    }
}

#[tokio::test]
async fn unread_body_larger_than_the_cap_is_still_retried() {
    let parts = chunks(10, 10 * 1024);
    let origin = Origin::new(&[connect()]);
    let response = send(&immediate(3), &origin, streamed(Method::POST, &parts, None)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen = origin.take();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, Some(concat(&parts)));
}

#[tokio::test]
async fn failing_request_body_is_not_replayed() {
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
        Ok(Frame::data(Bytes::from_static(b"partial"))),
        Err(std::io::Error::other("client went away")),
    ];
    let request = Request::post("/")
        .body(Body::new(StreamBody::new(stream::iter(frames))))
        .unwrap();
    let origin = Origin::new(&[Step::Fail(All, Kind::Connect)]);
    let response = send(&immediate(3), &origin, request).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let seen = origin.take();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].body_error);
}

#[tokio::test]
async fn body_of_a_superseded_attempt_stops_yielding() {
    let (replay, mut first) = Replay::new(Body::from("abc"), 1024);
    let second = replay.replay().unwrap();
    assert!(matches!(first.frame().await, Some(Err(_))));
    assert_eq!(second.collect().await.unwrap().to_bytes(), "abc");
}

// ===== readiness =====

/// Counts readiness and calls, and notes any call not preceded by `poll_ready`.
#[derive(Clone, Default)]
struct Strict {
    ready: bool,
    calls: Arc<AtomicUsize>,
    unready_calls: Arc<AtomicUsize>,
}

impl Service<Request<Body>> for Strict {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Body>) -> Self::Future {
        if !std::mem::replace(&mut self.ready, false) {
            self.unready_calls.fetch_add(1, Ordering::SeqCst);
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(ProxyError::new(Kind::Connect).into_response()))
    }
}

#[tokio::test]
async fn inner_service_is_ready_before_every_attempt() {
    let strict = Strict::default();
    let service: Retry<Strict> = immediate(4).layer(strict.clone());
    let Ok(response) = service.oneshot(request(Method::GET, b"")).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(strict.calls.load(Ordering::SeqCst), 4);
    assert_eq!(strict.unready_calls.load(Ordering::SeqCst), 0);
}

// ===== backoff =====

#[tokio::test]
async fn backoff_doubles_between_attempts() {
    tokio::time::pause();
    let origin = Origin::new(&[connect(), connect(), connect()]);
    let layer = RetryLayer::with_delay(4, Duration::from_millis(100)).with_jitter(false);
    let task = tokio::spawn(
        layer
            .layer(origin.service())
            .oneshot(request(Method::GET, b"")),
    );

    // (advance by, attempts made afterwards). Timers have a granularity of 1 ms, so each
    // check stays 2 ms clear of a deadline; each wait starts when the previous one fired.
    let steps = [(0, 1), (98, 1), (4, 2), (196, 2), (6, 3), (396, 3), (6, 4)];
    for (ms, attempts) in steps {
        tokio::time::advance(Duration::from_millis(ms)).await;
        settle().await;
        assert_eq!(origin.attempts(), attempts, "after +{ms} ms");
    }
    let Ok(response) = task.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn backoff_is_capped_by_max_delay() {
    tokio::time::pause();
    let origin = Origin::new(&[connect(), connect(), connect()]);
    let layer = RetryLayer::with_delay(4, Duration::from_millis(100))
        .with_max_delay(Duration::from_millis(150))
        .with_jitter(false);
    let task = tokio::spawn(
        layer
            .layer(origin.service())
            .oneshot(request(Method::GET, b"")),
    );
    let steps = [(0, 1), (98, 1), (4, 2), (148, 2), (4, 3), (148, 3), (4, 4)];
    for (ms, attempts) in steps {
        tokio::time::advance(Duration::from_millis(ms)).await;
        settle().await;
        assert_eq!(origin.attempts(), attempts, "after +{ms} ms");
    }
    let Ok(response) = task.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[test]
fn backoff_nominal_delays() {
    let ms = Duration::from_millis;
    let backoff = Backoff::new(ms(100));
    let delays: Vec<_> = (1..=6).map(|n| backoff.nominal(n)).collect();
    // Doubling, then capped at the default of ten times the base.
    assert_eq!(
        delays,
        [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
    );
    assert_eq!(backoff.nominal(u32::MAX), ms(1000));

    let mut capped = Backoff::new(ms(100));
    capped.set_max(ms(250));
    assert_eq!(capped.nominal(3), ms(250));

    // No overflow with extreme inputs.
    let huge = Backoff::new(Duration::MAX);
    assert_eq!(huge.nominal(64), Duration::MAX);
    assert!(huge.delay(64) >= Duration::MAX / 2);
    assert_eq!(Backoff::new(Duration::ZERO).delay(5), Duration::ZERO);
}

#[test]
fn jitter_stays_between_half_and_all_of_the_nominal_delay() {
    let backoff = Backoff::new(Duration::from_millis(100));
    let samples: Vec<_> = (0..200).map(|_| backoff.delay(3)).collect();
    for delay in &samples {
        assert!(
            (Duration::from_millis(200)..=Duration::from_millis(400)).contains(delay),
            "{delay:?}"
        );
    }
    assert!(samples.iter().any(|d| *d != samples[0]), "no jitter at all");

    let mut exact = backoff;
    exact.set_jitter(false);
    assert!((0..20).all(|_| exact.delay(3) == Duration::from_millis(400)));
}

// ===== budget =====

#[tokio::test]
async fn budget_reserve_is_min_per_second_times_ttl() {
    tokio::time::pause();
    let budget = Budget::new(Duration::from_secs(2), 3, 0.0);
    let granted = (0..10).filter(|_| budget.withdraw()).count();
    assert_eq!(granted, 6);
}

#[tokio::test]
async fn budget_grows_with_requests() {
    tokio::time::pause();
    let budget = Budget::new(Duration::from_secs(10), 0, 0.5);
    assert!(!budget.withdraw());
    budget.deposit();
    assert!(!budget.withdraw());
    budget.deposit();
    assert!(budget.withdraw());
    assert!(!budget.withdraw());
}

#[tokio::test]
async fn budget_recovers_once_retries_leave_the_window() {
    tokio::time::pause();
    let budget = Budget::new(Duration::from_secs(1), 1, 0.0);
    assert!(budget.withdraw());
    assert!(!budget.withdraw());
    tokio::time::advance(Duration::from_millis(500)).await;
    assert!(!budget.withdraw());
    tokio::time::advance(Duration::from_millis(600)).await;
    assert!(budget.withdraw());
    assert!(!budget.withdraw());
}

#[tokio::test]
async fn budget_accepts_any_configuration() {
    tokio::time::pause();
    for (ttl, min, ratio) in [
        (Duration::ZERO, u32::MAX, f32::NAN),
        (Duration::MAX, u32::MAX, f32::INFINITY),
        (Duration::from_nanos(1), 0, -1.0),
        (Duration::from_secs(3600), 0, f32::MAX),
    ] {
        let budget = Budget::new(ttl, min, ratio);
        budget.deposit();
        let _ = budget.withdraw();
        let _ = format!("{budget:?}");
    }
    // An infinite ratio is clamped to 1000 retries per request.
    let budget = Budget::new(Duration::from_secs(1), 0, f32::INFINITY);
    budget.deposit();
    assert_eq!((0..2000).filter(|_| budget.withdraw()).count(), 1000);
}

#[tokio::test]
async fn exhausted_budget_stops_retries() {
    tokio::time::pause();
    // No reserve; one retry per two requests.
    let layer = immediate(3).with_budget(Duration::from_secs(10), 0, 0.5);
    let origin = Origin::with_default(&[], connect());
    let mut service = layer.layer(origin.service());
    for _ in 0..20 {
        let Ok(response) = service
            .ready()
            .await
            .unwrap()
            .call(request(Method::POST, b"x"))
            .await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    }
    // 20 first attempts, and 10 retries instead of 40.
    assert_eq!(origin.attempts(), 30);
}

#[tokio::test]
async fn default_budget_is_shared_by_clones_and_routes() {
    tokio::time::pause();
    let layer = immediate(3);
    let origin = Origin::with_default(&[], connect());
    // Two services from the same layer, as `Router::layer` builds one per route.
    let services = [
        layer.layer(origin.service()),
        layer.clone().layer(origin.service()),
    ];
    for i in 0..200 {
        let Ok(_) = services[i % 2]
            .clone()
            .oneshot(request(Method::GET, b""))
            .await;
    }
    // 100 retries of reserve (10/s over 10 s) plus 20 % of 200 requests, not 400.
    assert_eq!(origin.attempts(), 200 + 140);
}

// ===== as an axum layer =====

#[tokio::test(start_paused = true)]
async fn router_layer_retries_a_connect_failure() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = Router::new()
        .route(
            "/upload",
            post(move |body: Bytes| async move {
                if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    ProxyError::new(Kind::Connect).into_response()
                } else {
                    body.into_response()
                }
            }),
        )
        .layer(RetryLayer::new(3));

    let request = Request::post("/upload")
        .header(header::CONTENT_LENGTH, 5)
        .body(Body::from("hello"))
        .unwrap();
    let Ok(response) = app.oneshot(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_of(response).await, "hello");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
