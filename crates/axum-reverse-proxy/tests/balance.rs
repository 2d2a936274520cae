//! Balanced proxies end to end: client → proxy (in process, through `oneshot`) → real
//! upstreams on 127.0.0.1:0 that say who they are.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::routing::get;
use axum_reverse_proxy::{
    BalancedProxy, DiscoverableBalancedProxy, HashKey, HealthCheck, LoadBalancingStrategy,
    OutlierDetection, ProxyError, StandardBalancedProxy, StandardDiscoverableBalancedProxy,
};
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::time::timeout;
use tower::ServiceExt;
use tower::discover::Change;

// ===== helpers =====

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// An upstream that answers every path with its name, and counts.
async fn named(name: &'static str, hits: Arc<AtomicU64>) -> String {
    let app = Router::new().fallback(move || {
        let hits = Arc::clone(&hits);
        async move {
            hits.fetch_add(1, SeqCst);
            name
        }
    });
    format!("http://{}", serve(app).await)
}

async fn upstream(name: &'static str) -> String {
    named(name, Arc::new(AtomicU64::new(0))).await
}

fn request(path: &str) -> Request<Body> {
    Request::builder().uri(path).body(Body::empty()).unwrap()
}

async fn text(response: Response<Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn call<S>(svc: &S, req: Request<Body>) -> Response<Body>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    svc.clone().oneshot(req).await.unwrap()
}

async fn hit<S>(svc: &S, path: &str) -> (StatusCode, String)
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    let response = call(svc, request(path)).await;
    (response.status(), text(response).await)
}

/// Wait (by yielding, never sleeping) until `cond` holds; fail after 5 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    timeout(Duration::from_secs(5), async {
        while !cond() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

type Changes = mpsc::UnboundedSender<Result<Change<u32, String>, std::io::Error>>;

/// A non-`Clone` discovery stream fed through a channel.
fn channel_discover() -> (
    Changes,
    impl futures_util::Stream<Item = Result<Change<u32, String>, std::io::Error>> + Send + 'static,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
}

// ===== 1.3 compatibility =====

#[derive(Clone)]
struct AppState {
    greeting: &'static str,
}

#[tokio::test]
async fn compat_balanced_proxy_1_3_signatures() {
    let a = upstream("a").await;
    let b = upstream("b").await;

    // `new(String, Vec<String>)`.
    let proxy = BalancedProxy::new(String::from("/api"), vec![a.clone(), b.clone()]);
    assert_eq!(proxy.path(), "/api");
    // `new(&str, Vec<&str>)` and `new_with_client`.
    let _: StandardBalancedProxy = BalancedProxy::new("/", vec![a.as_str()]);
    let with_client =
        BalancedProxy::new_with_client("/".to_string(), vec![a.clone(), b.clone()], client());
    assert_eq!(hit(&with_client, "/").await, (StatusCode::OK, "a".into()));
    assert_eq!(hit(&with_client, "/").await, (StatusCode::OK, "b".into()));

    // Router conversions, `.merge` into a router with state.
    let app: Router = Router::from(proxy.clone());
    assert_eq!(hit(&app, "/api/x").await, (StatusCode::OK, "a".into()));
    let app = Router::new()
        .route(
            "/",
            get(|State(s): State<AppState>| async move { s.greeting }),
        )
        .merge(proxy)
        .with_state(AppState { greeting: "hi" });
    assert_eq!(hit(&app, "/").await.1, "hi");
    assert_eq!(hit(&app, "/api/y").await.1, "b");
    assert_eq!(hit(&app, "/elsewhere").await.0, StatusCode::NOT_FOUND);

    // No targets: every request is 503.
    let empty = BalancedProxy::new(String::from("/"), Vec::<String>::new());
    let response = call(&empty, request("/anything")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        response
            .extensions()
            .get::<ProxyError>()
            .unwrap()
            .is_no_endpoint()
    );
    assert_eq!(text(response).await, "No upstream services available");

    // `call` without `poll_ready`.
    let mut svc = with_client.clone();
    let response = tower::Service::call(&mut svc, request("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Paths are joined as for `ReverseProxy`: the mount path is stripped once, the
    // target's path and query come first.
    let echo = serve(Router::new().fallback(|uri: http::Uri| async move { uri.to_string() })).await;
    let joined = BalancedProxy::new(
        "/api".to_string(),
        vec![
            format!("http://{echo}/base?k=v"),
            format!("http://{echo}/other"),
        ],
    );
    let app: Router = Router::from(joined.clone());
    assert_eq!(hit(&app, "/api/api/x?y=1").await.1, "/base/api/x?k=v&y=1");
    assert_eq!(hit(&app, "/api").await.1, "/other");
    let nested: Router = Router::new().nest("/api", Router::new().fallback_service(joined));
    assert_eq!(hit(&nested, "/api/z").await.1, "/base/z?k=v");

    // A bad target is refused at construction, not per request.
    assert!(BalancedProxy::try_new("/", vec!["not a url"]).is_err());
}

#[tokio::test]
async fn compat_discoverable_proxy_1_3_signatures() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let stream = futures_util::stream::iter(vec![
        Ok::<_, Infallible>(Change::Insert(1u32, a.clone())),
        Ok(Change::Insert(2u32, b.clone())),
    ]);
    fn assert_clone<T: Clone>(_: &T) {}
    assert_clone(&stream);

    #[allow(unused_mut)]
    let mut proxy = DiscoverableBalancedProxy::new_with_client("/api", client(), stream);
    proxy.start_discovery().await;
    // Idempotent.
    proxy.start_discovery().await;
    assert_eq!(proxy.path(), "/api");
    assert_eq!(proxy.strategy(), LoadBalancingStrategy::RoundRobin);
    let counted = proxy.clone();
    timeout(Duration::from_secs(5), async {
        while counted.service_count().await != 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();

    let app: Router<AppState> = Router::new()
        .route(
            "/",
            get(|State(s): State<AppState>| async move { s.greeting }),
        )
        .merge(proxy.clone());
    let app = app.with_state(AppState { greeting: "hi" });
    let mut seen = HashSet::new();
    for _ in 0..4 {
        let (status, body) = hit(&app, "/api/x").await;
        assert_eq!(status, StatusCode::OK);
        seen.insert(body);
    }
    assert_eq!(seen, HashSet::from(["a".to_string(), "b".to_string()]));
    let _: Router = Router::from(proxy);

    let stream = futures_util::stream::iter(vec![Ok::<_, Infallible>(Change::Insert(1u32, a))]);
    let p2c = DiscoverableBalancedProxy::new_with_client_and_strategy(
        "/",
        client(),
        stream,
        LoadBalancingStrategy::P2cPeakEwma,
    );
    assert_eq!(p2c.strategy(), LoadBalancingStrategy::P2cPeakEwma);
    p2c.start_discovery().await;

    // The default-pool constructor takes a stream that is not `Clone`.
    let (tx, stream) = channel_discover();
    let proxy: StandardDiscoverableBalancedProxy<_> = DiscoverableBalancedProxy::new("/", stream);
    // Before discovery starts: 503.
    assert_eq!(hit(&proxy, "/").await.0, StatusCode::SERVICE_UNAVAILABLE);
    proxy.start_discovery().await;
    tx.send(Ok(Change::Insert(7, b))).unwrap();
    let p = proxy.clone();
    eventually("one endpoint", || p.endpoints().len() == 1).await;
    assert_eq!(hit(&proxy, "/").await, (StatusCode::OK, "b".into()));
}

// ===== strategies over real upstreams =====

#[tokio::test]
async fn round_robin_starts_at_the_first_target() {
    let targets = vec![
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
    ];
    let proxy = BalancedProxy::new("/".to_string(), targets);
    let mut order = String::new();
    for _ in 0..6 {
        order += &hit(&proxy, "/").await.1;
    }
    assert_eq!(order, "abcabc");
    let stats = proxy.endpoints();
    assert_eq!(
        stats.iter().map(|s| s.requests).collect::<Vec<_>>(),
        [2, 2, 2]
    );
    assert!(
        stats
            .iter()
            .all(|s| s.pending == 0 && s.failures == 0 && s.healthy)
    );
}

#[tokio::test]
async fn smooth_weighted_round_robin_order() {
    let targets = vec![
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
    ];
    let proxy = BalancedProxy::new("/".to_string(), targets)
        .with_strategy(LoadBalancingStrategy::WeightedRoundRobin)
        .with_weights([5, 1, 1]);
    let mut order = String::new();
    for _ in 0..14 {
        order += &hit(&proxy, "/").await.1;
    }
    assert_eq!(order, "aabacaaaabacaa");
    assert_eq!(
        proxy
            .endpoints()
            .iter()
            .map(|s| s.weight)
            .collect::<Vec<_>>(),
        [5, 1, 1]
    );
}

#[tokio::test]
async fn p2c_peak_ewma_prefers_the_fast_endpoint() {
    let slow = serve(Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        "slow"
    }))
    .await;
    let fast = upstream("fast").await;
    let proxy = BalancedProxy::new("/".to_string(), vec![format!("http://{slow}"), fast])
        .with_strategy(LoadBalancingStrategy::P2cPeakEwma)
        .with_rng_seed(1);
    let mut fast_hits = 0;
    for _ in 0..40 {
        if hit(&proxy, "/").await.1 == "fast" {
            fast_hits += 1;
        }
    }
    assert!(fast_hits >= 36, "fast got only {fast_hits} of 40");
    let stats = proxy.endpoints();
    assert!(stats[0].rtt_ewma > stats[1].rtt_ewma, "{stats:?}");
}

/// An upstream whose body sends one chunk, then waits for `release` before ending.
async fn streaming(name: &'static str, release: Arc<Notify>) -> String {
    let app = Router::new().fallback(move || {
        let release = Arc::clone(&release);
        async move {
            let body = async_stream::stream! {
                yield Ok::<_, Infallible>(bytes::Bytes::from(name));
                release.notified().await;
                yield Ok(bytes::Bytes::from_static(b"!"));
            };
            Body::from_stream(body)
        }
    });
    format!("http://{}", serve(app).await)
}

#[tokio::test]
async fn pending_is_counted_until_the_body_ends() {
    let (release_a, release_b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let a = streaming("a", Arc::clone(&release_a)).await;
    let b = streaming("b", Arc::clone(&release_b)).await;
    let proxy = BalancedProxy::new("/".to_string(), vec![a, b])
        .with_strategy(LoadBalancingStrategy::P2cPendingRequests)
        .with_rng_seed(3);

    let mut first = call(&proxy, request("/")).await.into_body();
    let chunk = first.frame().await.unwrap().unwrap().into_data().unwrap();
    let first_name = String::from_utf8(chunk.to_vec()).unwrap();
    let first_index = usize::from(first_name == "b");
    // Headers and a first chunk are in, the body is not finished: still pending.
    let pending: Vec<u64> = proxy.endpoints().iter().map(|s| s.pending).collect();
    assert_eq!(pending[first_index], 1, "{pending:?}");
    assert_eq!(pending[1 - first_index], 0, "{pending:?}");

    // So the next request goes to the other endpoint.
    let mut second = call(&proxy, request("/")).await.into_body();
    let chunk = second.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_ne!(String::from_utf8(chunk.to_vec()).unwrap(), first_name);
    assert_eq!(
        proxy
            .endpoints()
            .iter()
            .map(|s| s.pending)
            .collect::<Vec<_>>(),
        [1, 1]
    );

    release_a.notify_one();
    release_b.notify_one();
    let rest = first.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"!");
    second.collect().await.unwrap();
    assert_eq!(
        proxy
            .endpoints()
            .iter()
            .map(|s| s.pending)
            .collect::<Vec<_>>(),
        [0, 0]
    );
}

#[tokio::test]
async fn consistent_hash_is_sticky_per_key() {
    let targets = vec![
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
    ];
    let proxy = BalancedProxy::new("/".to_string(), targets.clone())
        .with_strategy(LoadBalancingStrategy::ConsistentHash)
        .with_hash_key(HashKey::header("X-User"));
    let mut owners = HashMap::new();
    for round in 0..3 {
        for user in 0..40 {
            let req = Request::builder()
                .uri("/")
                .header("x-user", format!("user-{user}"))
                .body(Body::empty())
                .unwrap();
            let who = text(call(&proxy, req).await).await;
            let owner = owners.entry(user).or_insert_with(|| who.clone());
            assert_eq!(*owner, who, "user {user} moved in round {round}");
        }
    }
    let used: HashSet<_> = owners.values().collect();
    assert_eq!(used.len(), 3, "keys should spread: {owners:?}");

    // Client IP (from ConnectInfo).
    let by_ip = BalancedProxy::new("/".to_string(), targets)
        .with_strategy(LoadBalancingStrategy::ConsistentHash);
    let mut seen = HashSet::new();
    for ip in 1..=20u8 {
        let addr = SocketAddr::from(([10, 0, 0, ip], 5000));
        let mut answers = HashSet::new();
        for port in [1, 2] {
            let mut req = request("/");
            req.extensions_mut()
                .insert(ConnectInfo(SocketAddr::new(addr.ip(), port)));
            answers.insert(text(call(&by_ip, req).await).await);
        }
        assert_eq!(answers.len(), 1, "ip {ip} was not sticky");
        // Given directly rather than in ConnectInfo, the address hashes the same.
        let given = text(
            by_ip
                .proxy_request_from(SocketAddr::new(addr.ip(), 3), request("/"))
                .await
                .unwrap(),
        )
        .await;
        assert!(
            answers.contains(&given),
            "ip {ip}: {given} not in {answers:?}"
        );
        seen.extend(answers);
    }
    assert!(seen.len() >= 2);
}

// ===== outlier detection and health checks =====

#[tokio::test]
async fn outlier_ejection_and_recovery_with_real_upstreams() {
    let good = upstream("good").await;
    let bad_hits = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&bad_hits);
    let bad = serve(Router::new().fallback(move || {
        counter.fetch_add(1, SeqCst);
        async { (StatusCode::BAD_GATEWAY, "bad") }
    }))
    .await;
    let proxy = BalancedProxy::new("/".to_string(), vec![good, format!("http://{bad}")])
        .with_outlier_detection(
            OutlierDetection::default()
                .with_consecutive_gateway_failures(3)
                .with_base_ejection_time(Duration::from_secs(5)),
        );
    for _ in 0..6 {
        hit(&proxy, "/").await;
    }
    assert_eq!(bad_hits.load(SeqCst), 3);
    let stats = proxy.endpoints();
    assert!(stats[1].ejected_until.is_some(), "{stats:?}");
    assert_eq!(stats[1].failures, 3);
    for _ in 0..10 {
        assert_eq!(hit(&proxy, "/").await, (StatusCode::OK, "good".into()));
    }
    assert_eq!(bad_hits.load(SeqCst), 3);

    // Five seconds later it is back, without any probe.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(5)).await;
    tokio::time::resume();
    assert_eq!(proxy.endpoints()[1].ejected_until, None);
    for _ in 0..4 {
        hit(&proxy, "/").await;
    }
    assert_eq!(bad_hits.load(SeqCst), 5);
    assert_eq!(proxy.endpoints()[1].times_ejected, 1);
}

#[tokio::test]
async fn connect_errors_are_gateway_failures_and_a_single_endpoint_stays() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap();
    drop(listener);
    let proxy = BalancedProxy::new("/".to_string(), vec![format!("http://{closed}")]);
    for _ in 0..7 {
        let response = call(&proxy, request("/")).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert!(
            response
                .extensions()
                .get::<ProxyError>()
                .unwrap()
                .is_connect()
        );
    }
    let stats = &proxy.endpoints()[0];
    assert_eq!(
        (stats.requests, stats.failures, stats.pending),
        (7, 7, 0),
        "{stats:?}"
    );
    assert_eq!(stats.consecutive_failures, 7);
    // Never eject the last endpoint.
    assert_eq!(stats.ejected_until, None);
    assert!(stats.rtt_ewma >= Duration::from_millis(900), "{stats:?}");
}

#[tokio::test]
async fn active_health_checks_flip_an_endpoint_down_and_up() {
    let status = Arc::new(AtomicU16::new(200));
    let (checks_tx, mut checks) = mpsc::unbounded_channel::<u16>();
    let state = Arc::clone(&status);
    let a = serve(
        Router::new()
            .route(
                "/health",
                get(move || {
                    let code = state.load(SeqCst);
                    let _ = checks_tx.send(code);
                    async move { StatusCode::from_u16(code).unwrap() }
                }),
            )
            .fallback(|| async { "a" }),
    )
    .await;
    let b = upstream("b").await;
    let proxy = BalancedProxy::new("/".to_string(), vec![format!("http://{a}"), b])
        .with_health_check(
            HealthCheck::new("/health")
                .with_interval(Duration::from_millis(20))
                .with_timeout(Duration::from_secs(1))
                .with_unhealthy_threshold(2)
                .with_healthy_threshold(2),
        );
    proxy.start_health_checks();

    // Wait for `n` checks in a row that saw `code`, then one more: the round that
    // applied the last of them is over.
    async fn observe(checks: &mut mpsc::UnboundedReceiver<u16>, code: u16, n: usize) {
        timeout(Duration::from_secs(10), async {
            let mut streak = 0;
            while streak < n {
                let seen = checks.recv().await.unwrap();
                streak = if seen == code { streak + 1 } else { 0 };
            }
            checks.recv().await.unwrap();
        })
        .await
        .expect("health checks did not run");
    }

    status.store(503, SeqCst);
    observe(&mut checks, 503, 2).await;
    assert!(!proxy.endpoints()[0].healthy);
    for _ in 0..6 {
        assert_eq!(hit(&proxy, "/").await.1, "b");
    }

    status.store(200, SeqCst);
    observe(&mut checks, 200, 2).await;
    assert!(proxy.endpoints()[0].healthy);
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(hit(&proxy, "/").await.1);
    }
    assert_eq!(
        answers.iter().filter(|a| *a == "a").count(),
        2,
        "{answers:?}"
    );

    // The task stops with the proxy: the upstream is no longer checked (one check
    // already on the wire may still arrive; a running task would make about 15).
    drop(proxy);
    while checks.try_recv().is_ok() {}
    let mut late = 0;
    let _ = timeout(Duration::from_millis(300), async {
        while checks.recv().await.is_some() {
            late += 1;
        }
    })
    .await;
    assert!(
        late <= 1,
        "{late} health checks after the proxy was dropped"
    );
}

// ===== discovery =====

#[tokio::test]
async fn discovery_replaces_and_removes_without_moving_metrics() {
    let (release_a, release_b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let a = streaming("a", Arc::clone(&release_a)).await;
    let b = streaming("b", Arc::clone(&release_b)).await;
    let c = upstream("c").await;
    let (tx, stream) = channel_discover();
    let proxy = DiscoverableBalancedProxy::new("/", stream);
    proxy.start_discovery().await;
    tx.send(Ok(Change::Insert(1, a.clone()))).unwrap();
    tx.send(Ok(Change::Insert(2, b.clone()))).unwrap();
    let p = proxy.clone();
    eventually("two endpoints", || p.endpoints().len() == 2).await;

    // Round robin: a, b, a, b. Both a requests and the second b request stay open:
    // a has (2 requests, 2 pending), b (2, 1).
    let mut on_a = call(&proxy, request("/")).await.into_body();
    assert_eq!(
        &on_a.frame().await.unwrap().unwrap().into_data().unwrap()[..],
        b"a"
    );
    release_b.notify_one();
    assert_eq!(hit(&proxy, "/").await.1, "b!");
    let mut on_a2 = call(&proxy, request("/")).await.into_body();
    assert_eq!(
        &on_a2.frame().await.unwrap().unwrap().into_data().unwrap()[..],
        b"a"
    );
    let mut on_b = call(&proxy, request("/")).await.into_body();
    assert_eq!(
        &on_b.frame().await.unwrap().unwrap().into_data().unwrap()[..],
        b"b"
    );
    let stats = proxy.endpoints();
    assert_eq!((stats[0].requests, stats[0].pending), (2, 2), "{stats:?}");
    assert_eq!((stats[1].requests, stats[1].pending), (2, 1), "{stats:?}");

    // Removing a leaves b with its own metrics (1.3 shifted a's onto b).
    tx.send(Ok(Change::Remove(1))).unwrap();
    let p = proxy.clone();
    eventually("a removed", || p.endpoints().len() == 1).await;
    let stats = proxy.endpoints();
    assert_eq!(stats[0].url, b);
    assert_eq!((stats[0].requests, stats[0].pending), (2, 1), "{stats:?}");
    // Requests on the removed endpoint finish normally.
    release_a.notify_one();
    release_a.notify_one();
    assert_eq!(&on_a.collect().await.unwrap().to_bytes()[..], b"!");
    assert_eq!(&on_a2.collect().await.unwrap().to_bytes()[..], b"!");

    // Same key, same URL: the endpoint and its metrics are kept.
    tx.send(Ok(Change::Insert(2, b.clone()))).unwrap();
    tx.send(Ok(Change::Insert(3, c.clone()))).unwrap();
    let p = proxy.clone();
    eventually("c added", || p.endpoints().len() == 2).await;
    assert_eq!(proxy.endpoints()[0].requests, 2);
    // Same key, another URL: a fresh endpoint replaces it.
    tx.send(Ok(Change::Insert(2, a.clone()))).unwrap();
    let p = proxy.clone();
    eventually("key 2 replaced", || {
        p.endpoints().iter().any(|s| s.url == a)
    })
    .await;
    let stats = proxy.endpoints();
    assert_eq!(stats.len(), 2, "{stats:?}");
    let fresh = stats.iter().find(|s| s.url == a).unwrap();
    assert_eq!((fresh.requests, fresh.pending), (0, 0));
    release_b.notify_one();
    on_b.collect().await.unwrap();
    // Errors in the stream are survived.
    tx.send(Err(std::io::Error::other("flaky source"))).unwrap();
    tx.send(Ok(Change::Remove(3))).unwrap();
    let p = proxy.clone();
    eventually("c removed after an error", || p.endpoints().len() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_churn_while_10000_requests_flow() {
    const REQUESTS: usize = 10_000;
    let hits: Vec<Arc<AtomicU64>> = (0..4).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let names = ["u0", "u1", "u2", "u3"];
    let mut urls = Vec::new();
    for (name, hits) in names.into_iter().zip(&hits) {
        urls.push(named(name, Arc::clone(hits)).await);
    }
    let (tx, stream) = channel_discover();
    let proxy = DiscoverableBalancedProxy::new("/", stream)
        .with_strategy(LoadBalancingStrategy::P2cPeakEwma)
        .with_rng_seed(42);
    proxy.start_discovery().await;
    // Key 0 is never removed: a live endpoint always exists.
    tx.send(Ok(Change::Insert(0, urls[0].clone()))).unwrap();
    let p = proxy.clone();
    eventually("first endpoint", || p.endpoints().len() == 1).await;

    let done = Arc::new(AtomicBool::new(false));
    let churn = {
        let (tx, urls, done) = (tx.clone(), urls.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(7);
            let mut changes = 0u64;
            while !done.load(SeqCst) {
                let key = rng.u32(1..9);
                let change = if rng.bool() {
                    Change::Insert(key, urls[rng.usize(0..urls.len())].clone())
                } else {
                    Change::Remove(key)
                };
                tx.send(Ok(change)).unwrap();
                changes += 1;
                tokio::task::yield_now().await;
            }
            changes
        })
    };

    let run = futures_util::stream::iter(0..REQUESTS)
        .map(|i| {
            let proxy = proxy.clone();
            async move {
                let response = proxy.oneshot(request(&format!("/r/{i}"))).await.unwrap();
                (response.status(), text(response).await)
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>();
    let results = timeout(Duration::from_secs(120), run)
        .await
        .expect("requests took too long");
    done.store(true, SeqCst);
    let changes = churn.await.unwrap();

    let failures: Vec<_> = results
        .iter()
        .filter(|(s, _)| *s != StatusCode::OK)
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    let total: u64 = hits.iter().map(|h| h.load(SeqCst)).sum();
    assert_eq!(total, REQUESTS as u64);
    assert!(changes > 100, "too little churn: {changes}");
    let mut per_name = HashMap::new();
    for (_, body) in &results {
        *per_name.entry(body.as_str()).or_insert(0u64) += 1;
    }
    for (name, hits) in names.iter().zip(&hits) {
        assert_eq!(
            per_name.get(name).copied().unwrap_or(0),
            hits.load(SeqCst),
            "{name}"
        );
    }
    let stats = proxy.endpoints();
    assert!(stats.iter().all(|s| s.pending == 0), "{stats:?}");
    assert!(stats.iter().any(|s| s.url == urls[0]));

    // Dropping the last clone stops the discovery task, which drops the stream.
    drop(proxy);
    drop(p);
    timeout(Duration::from_secs(5), tx.closed())
        .await
        .expect("discovery task still running after the proxy was dropped");
}

#[tokio::test]
async fn discovered_weights_reach_every_weighted_strategy() {
    use axum_reverse_proxy::discover::WeightedUrl;

    let heavy = upstream("heavy").await;
    let light = upstream("light").await;
    // (strategy, heavy's share of 400 requests: exact, or a band for the random ones)
    let cases = [
        // Weights are ignored by plain round robin.
        (LoadBalancingStrategy::RoundRobin, 200..=200),
        (LoadBalancingStrategy::WeightedRoundRobin, 300..=300),
        (LoadBalancingStrategy::Random, 270..=330),
        (LoadBalancingStrategy::ConsistentHash, 270..=330),
        // One request at a time: both have no pending request, so the cost
        // (pending + 1) / weight always favours the heavy one.
        (LoadBalancingStrategy::P2cPendingRequests, 400..=400),
        (LoadBalancingStrategy::LeastRequest, 400..=400),
    ];
    for (strategy, expected) in cases {
        let (tx, rx) = mpsc::unbounded_channel::<Result<Change<u32, WeightedUrl>, Infallible>>();
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let proxy = DiscoverableBalancedProxy::new("/", stream)
            .with_strategy(strategy)
            .with_hash_key(HashKey::Path)
            .with_rng_seed(7);
        proxy.start_discovery().await;
        tx.send(Ok(Change::Insert(1, WeightedUrl::new(&heavy, 3).unwrap())))
            .unwrap();
        tx.send(Ok(Change::Insert(2, WeightedUrl::new(&light, 1).unwrap())))
            .unwrap();
        let p = proxy.clone();
        eventually("two endpoints", || p.endpoints().len() == 2).await;
        assert_eq!(
            proxy
                .endpoints()
                .iter()
                .map(|s| s.weight)
                .collect::<Vec<_>>(),
            [3, 1]
        );
        let mut on_heavy = 0;
        for i in 0..400 {
            if hit(&proxy, &format!("/key/{i}")).await.1 == "heavy" {
                on_heavy += 1;
            }
        }
        assert!(
            expected.contains(&on_heavy),
            "{strategy:?}: {on_heavy} of 400 on the weight-3 endpoint"
        );
    }
}
