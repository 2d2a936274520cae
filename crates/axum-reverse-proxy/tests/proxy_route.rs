//! `ProxyRouterExt::proxy_route` and friends: static base-URL targets, templates and
//! their encoding, SSRF attempts through path parameters, resolver errors, connection
//! sharing between routes, and `proxy_route_with_client`.
//!
//! Upstreams are servers on `127.0.0.1:0` that record every request. SSRF checks run
//! against two of them: the intended one, and an "evil" one that must never see a
//! request. Requests are sent with a raw HTTP/1.1 client so that paths such as `/p/..`
//! reach the proxy exactly as written (URL libraries normalise them away).

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, Response, StatusCode, Uri, header};
use axum::routing::any;
use axum::serve::ListenerExt;
use axum_reverse_proxy::{
    ProxyError, ProxyPolicy, ProxyRouterExt, TargetResolver, TemplateTarget, proxy_template,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tower::ServiceExt;

/// Upper bound for one network step, so a hang fails the test instead of stalling it.
const STEP: Duration = Duration::from_secs(10);

// ===== Helpers: recording upstream =====

/// One request as the upstream received it.
#[derive(Clone, Debug)]
struct Seen {
    /// Path and query, as sent on the wire.
    path: String,
    headers: HeaderMap,
}

#[derive(Clone)]
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
}

impl Upstream {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn paths(&self) -> Vec<String> {
        self.requests().into_iter().map(|s| s.path).collect()
    }

    fn last(&self) -> Seen {
        self.requests()
            .pop()
            .expect("the upstream received no request")
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// An upstream that answers every request with its path and query.
async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = Upstream {
        addr: listener.local_addr().unwrap(),
        seen: Arc::default(),
        connections: Arc::default(),
    };
    let (seen, connections) = (up.seen.clone(), up.connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            connections.fetch_add(1, Ordering::SeqCst);
            let _ = stream.set_nodelay(true);
            let seen = seen.clone();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let path = req
                    .uri()
                    .path_and_query()
                    .map_or("/", |pq| pq.as_str())
                    .to_owned();
                seen.lock().unwrap().push(Seen {
                    path: path.clone(),
                    headers: req.headers().clone(),
                });
                async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(path)))) }
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    up
}

// ===== Helpers: proxy and clients =====

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A keep-alive HTTP/1.1 connection that sends request targets exactly as given.
struct Conn {
    addr: SocketAddr,
    sender: http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        Conn { addr, sender }
    }

    /// GET `target` (an origin-form path, sent verbatim); the status and body.
    async fn get(&mut self, target: &str) -> (StatusCode, String) {
        let req = Request::get(target)
            .header(header::HOST, self.addr.to_string())
            .body(Full::default())
            .unwrap();
        timeout(STEP, async {
            self.sender
                .ready()
                .await
                .expect("the proxy closed the connection");
            let response = self.sender.send_request(req).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        })
        .await
        .expect("no response in time")
    }
}

/// One request on a fresh connection.
async fn get(addr: SocketAddr, target: &str) -> (StatusCode, String) {
    Conn::open(addr).await.get(target).await
}

/// A connector that records every `(host, port)` it is asked to dial and acts as a tiny
/// resolver: `127.0.0.1` and `good.internal` are this machine; any other host fails
/// without a DNS lookup.
#[derive(Clone, Default)]
struct RecordingConnector {
    dialled: Arc<Mutex<Vec<(String, u16)>>>,
}

impl RecordingConnector {
    fn dialled(&self) -> Vec<(String, u16)> {
        self.dialled.lock().unwrap().clone()
    }
}

impl tower::Service<Uri> for RecordingConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let host = uri.host().unwrap_or_default().to_owned();
        let port = uri.port_u16().unwrap_or(80);
        self.dialled.lock().unwrap().push((host.clone(), port));
        Box::pin(async move {
            match host.as_str() {
                "127.0.0.1" | "good.internal" => {
                    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
                    stream.set_nodelay(true)?;
                    Ok(TokioIo::new(stream))
                }
                _ => Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("test resolver does not know {host:?}"),
                )),
            }
        })
    }
}

fn client(connector: RecordingConnector) -> Client<RecordingConnector, Body> {
    Client::builder(TokioExecutor::new()).build(connector)
}

// ===== Static base-URL targets =====

#[tokio::test]
async fn static_target_appends_the_rest_of_the_path() {
    let up = upstream().await;
    let app = Router::new().proxy_route("/api/{*rest}", up.url());
    let addr = serve(app).await;
    let mut conn = Conn::open(addr).await;

    assert_eq!(
        conn.get("/api/users?x=1").await,
        (StatusCode::OK, "/users?x=1".into())
    );
    assert_eq!(
        conn.get("/api/a/b/c").await,
        (StatusCode::OK, "/a/b/c".into())
    );
    // Verbatim: encoded bytes, empty segments and dot segments are the upstream's.
    assert_eq!(
        conn.get("/api/a%20b/%2F//x").await,
        (StatusCode::OK, "/a%20b/%2F//x".into())
    );
    assert_eq!(
        conn.get("/api/x/../y").await,
        (StatusCode::OK, "/x/../y".into())
    );
    let before = up.requests().len();
    assert_eq!(conn.get("/apix/users").await.0, StatusCode::NOT_FOUND);
    assert_eq!(up.requests().len(), before);
    assert_eq!(
        up.last().headers[header::HOST],
        up.addr.to_string().as_str()
    );
}

#[tokio::test]
async fn static_target_with_a_base_path_and_its_own_query() {
    let up = upstream().await;
    let app = Router::new()
        .proxy_route("/v1/{*rest}", format!("{}/base?key=k", up.url()))
        .proxy_route("/health", format!("{}/status", up.url()));
    let addr = serve(app).await;
    let mut conn = Conn::open(addr).await;

    assert_eq!(
        conn.get("/v1/x?y=2").await,
        (StatusCode::OK, "/base/x?key=k&y=2".into())
    );
    assert_eq!(
        conn.get("/v1/x").await,
        (StatusCode::OK, "/base/x?key=k".into())
    );
    // A route with no parameter: nothing is left to append.
    assert_eq!(
        conn.get("/health").await,
        (StatusCode::OK, "/status".into())
    );
    assert_eq!(
        conn.get("/health?deep=1").await,
        (StatusCode::OK, "/status?deep=1".into())
    );
}

#[tokio::test]
async fn static_target_strips_only_the_literal_prefix() {
    let up = upstream().await;
    let app = Router::new().proxy_route("/tenants/{tenant}/files/{*rest}", up.url());
    let addr = serve(app).await;
    assert_eq!(
        get(addr, "/tenants/acme/files/a.txt").await,
        (StatusCode::OK, "/acme/files/a.txt".into())
    );
}

// ===== Templates =====

#[tokio::test]
async fn template_values_are_substituted_and_percent_encoded() {
    let up = upstream().await;
    let app = Router::new()
        .proxy_route(
            "/u/{id}",
            proxy_template(format!("{}/users/{{id}}/profile", up.url())),
        )
        .proxy_route(
            "/s/{term}",
            TemplateTarget::new(format!("{}/search?q={{term}}", up.url())),
        );
    let addr = serve(app).await;
    let mut conn = Conn::open(addr).await;

    // (request path, what the upstream must see)
    let cases = [
        ("/u/42", "/users/42/profile"),
        ("/u/42?fields=name", "/users/42/profile?fields=name"),
        ("/u/a%20b", "/users/a%20b/profile"),
        ("/u/%C3%BC", "/users/%C3%BC/profile"),
        ("/u/a+b", "/users/a%2Bb/profile"),
        ("/u/x;y=z", "/users/x%3By%3Dz/profile"),
        ("/u/-._~", "/users/-._~/profile"),
        // A query-position value cannot add parameters.
        ("/s/a&admin=1", "/search?q=a%26admin%3D1"),
        ("/s/a%23frag", "/search?q=a%23frag"),
    ];
    for (request, expected) in cases {
        assert_eq!(
            conn.get(request).await,
            (StatusCode::OK, expected.into()),
            "{request}"
        );
    }
    assert_eq!(up.paths().len(), cases.len());
}

#[tokio::test]
async fn a_value_cannot_inject_another_placeholder() {
    let up = upstream().await;
    let template = format!("{}/files/{{a}}/{{b}}", up.url());
    let app = Router::new().proxy_route("/two/{a}/{b}", proxy_template(&template));
    let addr = serve(app).await;
    assert_eq!(
        get(addr, "/two/%7Bb%7D/zzz").await,
        (StatusCode::OK, "/files/%7Bb%7D/zzz".into())
    );
    assert_eq!(
        get(addr, "/two/first/%7Ba%7D").await,
        (StatusCode::OK, "/files/first/%7Ba%7D".into())
    );
}

#[tokio::test]
async fn unknown_placeholders_are_an_error_not_a_panic() {
    let up = upstream().await;
    let app = Router::new()
        .proxy_route(
            "/p/{id}",
            proxy_template(format!("{}/x/{{nope}}", up.url())),
        )
        .proxy_route(
            "/h/{id}",
            proxy_template(format!("http://{{nope}}:{}/x", up.port())),
        )
        .route("/alive", any(|| async { "alive" }));
    let addr = serve(app.clone()).await;
    let mut conn = Conn::open(addr).await;

    for path in ["/p/1", "/h/1"] {
        let (status, body) = conn.get(path).await;
        assert!(
            status.is_server_error(),
            "{path}: an unfilled placeholder was forwarded ({status}, {body:?})"
        );
        assert!(
            !body.contains("nope"),
            "error body leaks the template: {body}"
        );
    }
    // No panic: the same connection still serves.
    assert_eq!(conn.get("/alive").await, (StatusCode::OK, "alive".into()));
    assert!(
        up.requests().is_empty(),
        "reached the upstream: {:?}",
        up.paths()
    );

    let response = app
        .oneshot(Request::get("/p/1").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let err = response
        .extensions()
        .get::<ProxyError>()
        .expect("a ProxyError");
    assert!(err.is_invalid_target(), "{err:?}");
}

#[tokio::test]
async fn values_are_decoded_exactly_once() {
    let up = upstream().await;
    let app = Router::new().proxy_route(
        "/u/{id}",
        proxy_template(format!("{}/users/{{id}}", up.url())),
    );
    let addr = serve(app).await;
    let mut conn = Conn::open(addr).await;
    // `%25` is a literal `%`: the value is `a%2Fb`, not `a/b`, and `100%`.
    assert_eq!(
        conn.get("/u/a%252Fb").await,
        (StatusCode::OK, "/users/a%252Fb".into())
    );
    assert_eq!(
        conn.get("/u/100%25").await,
        (StatusCode::OK, "/users/100%25".into())
    );
    assert_eq!(
        conn.get("/u/a%2520b").await,
        (StatusCode::OK, "/users/a%2520b".into())
    );
}

#[tokio::test]
async fn non_utf8_values() {
    let up = upstream().await;
    let app = Router::new()
        .proxy_route(
            "/u/{id}",
            proxy_template(format!("{}/users/{{id}}", up.url())),
        )
        .proxy_route("/api/{*rest}", up.url());
    let addr = serve(app).await;
    let mut conn = Conn::open(addr).await;
    // A template cannot be filled from bytes that are not text: the client's error.
    assert_eq!(conn.get("/u/%FF").await.0, StatusCode::BAD_REQUEST);
    assert!(
        up.requests().is_empty(),
        "reached the upstream: {:?}",
        up.paths()
    );
    // A base URL does not use the value: the raw path is forwarded.
    assert_eq!(
        conn.get("/api/%FF/x").await,
        (StatusCode::OK, "/%FF/x".into())
    );
}

// ===== SSRF through path parameters =====

/// Attack values, as sent in the request path (raw), for a placeholder in path
/// position, and the single segment the intended upstream must see.
fn path_attacks(evil: u16) -> Vec<(String, String)> {
    [
        ("evil.com%2F", "evil.com%2F"),
        ("evil.com%252F", "evil.com%252F"),
        ("a@b", "a%40b"),
        (":99", "%3A99"),
        ("%3A99", "%3A99"),
        ("%7Bother%7D", "%7Bother%7D"),
        ("..", "%2E%2E"),
        ("%2E%2E", "%2E%2E"),
        (".", "%2E"),
        ("..%2Fadmin", "..%2Fadmin"),
        ("..%2F..%2Fadmin", "..%2F..%2Fadmin"),
        ("%5C..%5Cadmin", "%5C..%5Cadmin"),
        ("127.0.0.1:EVIL%2F", "127.0.0.1%3AEVIL%2F"),
        ("@127.0.0.1:EVIL", "%40127.0.0.1%3AEVIL"),
        ("x%3Fy%23z", "x%3Fy%23z"),
    ]
    .into_iter()
    .map(|(raw, seen)| {
        (
            raw.replace("EVIL", &evil.to_string()),
            seen.replace("EVIL", &evil.to_string()),
        )
    })
    .collect()
}

#[tokio::test]
async fn path_position_values_stay_in_their_segment() {
    let good = upstream().await;
    let evil = upstream().await;
    let app = Router::new().proxy_route(
        "/p/{name}",
        proxy_template(format!("http://127.0.0.1:{}/files/{{name}}", good.port())),
    );
    let addr = serve(app).await;
    let mut conn = Conn::open(addr).await;

    for (raw, segment) in path_attacks(evil.port()) {
        let (status, body) = conn.get(&format!("/p/{raw}")).await;
        assert_eq!(status, StatusCode::OK, "{raw}: {body}");
        let expected = format!("/files/{segment}");
        assert_eq!(body, expected, "{raw}");
        assert_eq!(good.last().path, expected, "{raw}");
        assert_eq!(
            good.last().headers[header::HOST],
            good.addr.to_string().as_str(),
            "{raw}"
        );
        assert!(!segment.contains('/'), "{raw}");
    }
    assert!(
        evil.requests().is_empty(),
        "evil upstream reached: {:?}",
        evil.paths()
    );
    assert_eq!(evil.connections(), 0);
}

#[tokio::test]
async fn host_position_values_cannot_change_host_port_or_scheme() {
    let good = upstream().await;
    let evil = upstream().await;
    let connector = RecordingConnector::default();
    let app = Router::new().proxy_route_with_client(
        "/h/{svc}",
        proxy_template(format!("http://{{svc}}.internal:{}/x", good.port())),
        ProxyPolicy::new(),
        client(connector.clone()),
    );
    let addr = serve(app).await;
    let mut conn = Conn::open(addr).await;

    // Control: a legitimate value reaches the intended upstream.
    assert_eq!(conn.get("/h/good").await, (StatusCode::OK, "/x".into()));
    assert_eq!(
        good.last().headers[header::HOST],
        format!("good.internal:{}", good.port()).as_str()
    );

    let e = evil.port();
    let attacks = [
        "evil.com%2F".to_owned(),
        "evil.com%252F".to_owned(),
        "a@b".to_owned(),
        ":99".to_owned(),
        "%7Bother%7D".to_owned(),
        "..".to_owned(),
        "..%2Fadmin".to_owned(),
        // The same ideas aimed at the evil upstream on this machine.
        format!("127.0.0.1:{e}%2F"),
        format!("127.0.0.1:{e}%3F"),
        format!("127.0.0.1:{e}%23"),
        format!("good.internal:{e}%2F"),
        format!("x@127.0.0.1:{e}%2F"),
        format!("good@127.0.0.1:{e}"),
        format!("http:%2F%2F127.0.0.1:{e}%2F"),
    ];
    for raw in &attacks {
        let before = good.requests().len();
        let (status, body) = conn.get(&format!("/h/{raw}")).await;
        // No such host: the request fails, and nowhere else is reached instead.
        assert!(status.is_server_error(), "{raw}: {status} {body:?}");
        assert_eq!(good.requests().len(), before, "{raw}");
    }
    assert!(
        evil.requests().is_empty(),
        "evil upstream reached: {:?}",
        evil.paths()
    );
    assert_eq!(evil.connections(), 0);
    for (host, port) in connector.dialled() {
        assert_eq!(port, good.port(), "dialled another port: {host}:{port}");
        assert!(
            host.ends_with(".internal") && !host.contains("evil.com."),
            "dialled {host:?}"
        );
    }
}

#[tokio::test]
async fn default_pool_host_position_values_do_not_reach_another_upstream() {
    // The same through `proxy_route` (default pool): values aimed at the evil upstream
    // on 127.0.0.1 never get there.
    let good = upstream().await;
    let evil = upstream().await;
    let app = Router::new().proxy_route(
        "/h/{octet}",
        proxy_template(format!("http://127.0.0.{{octet}}:{}/t", good.port())),
    );
    let addr = serve(app).await;
    let mut conn = Conn::open(addr).await;

    assert_eq!(conn.get("/h/1").await, (StatusCode::OK, "/t".into()));
    let e = evil.port();
    for raw in [
        format!("1:{e}%2F"),
        format!("1:{e}%3F"),
        format!("1:{e}%23"),
        format!("1:{e}"),
        format!("1@127.0.0.1:{e}%2F"),
    ] {
        let (status, body) = conn.get(&format!("/h/{raw}")).await;
        assert!(status.is_server_error(), "{raw}: {status} {body:?}");
    }
    assert_eq!(good.requests().len(), 1);
    assert!(
        evil.requests().is_empty(),
        "evil upstream reached: {:?}",
        evil.paths()
    );
    assert_eq!(evil.connections(), 0);
}

// ===== Resolver errors =====

/// Returns whatever URL it was built with.
#[derive(Clone)]
struct Fixed(&'static str);

impl TargetResolver for Fixed {
    fn resolve(&self, _req: &Request<Body>, _params: &[(String, String)]) -> String {
        self.0.to_owned()
    }
}

#[tokio::test]
async fn a_resolver_returning_an_invalid_url_is_a_500() {
    for bad in [
        "not a url",
        "http://",
        "http://exa mple.com/",
        "ftp://127.0.0.1/",
        "http://user@127.0.0.1/",
        "",
    ] {
        let app = Router::new().proxy_route("/r", Fixed(bad));
        let response = app
            .clone()
            .oneshot(Request::get("/r").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "{bad:?}"
        );
        let err = response
            .extensions()
            .get::<ProxyError>()
            .unwrap_or_else(|| panic!("{bad:?}: no ProxyError"))
            .clone();
        assert!(err.is_invalid_target(), "{bad:?}: {err:?}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, err.message(), "{bad:?}");

        // Over the wire: the connection survives.
        let addr = serve(app).await;
        let mut conn = Conn::open(addr).await;
        assert_eq!(conn.get("/r").await.0, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(conn.get("/r").await.0, StatusCode::INTERNAL_SERVER_ERROR);
    }
}

// ===== Connection sharing =====

#[tokio::test]
async fn routes_of_one_router_share_one_pool() {
    let up = upstream().await;
    let app = Router::new()
        .proxy_route("/a/{*rest}", up.url())
        .proxy_route("/b/{id}", proxy_template(format!("{}/b/{{id}}", up.url())));
    let addr = serve(app).await;
    let mut conn = Conn::open(addr).await;
    for i in 0..50 {
        assert_eq!(
            conn.get(&format!("/a/{i}")).await,
            (StatusCode::OK, format!("/{i}"))
        );
        assert_eq!(
            conn.get(&format!("/b/{i}")).await,
            (StatusCode::OK, format!("/b/{i}"))
        );
    }
    assert_eq!(up.requests().len(), 100);
    // One runtime thread, strictly sequential: one pooled connection serves both routes
    // (a pool per route would need two).
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn proxy_route_with_client_uses_that_client() {
    let up = upstream().await;
    let connector = RecordingConnector::default();
    let shared = client(connector.clone());
    let app = Router::new()
        .proxy_route_with_client(
            "/c/{*rest}",
            format!("http://good.internal:{}", up.port()),
            ProxyPolicy::new(),
            shared.clone(),
        )
        .proxy_route_with_client(
            "/t/{id}",
            proxy_template(format!("http://good.internal:{}/t/{{id}}", up.port())),
            ProxyPolicy::new(),
            shared,
        );
    let addr = serve(app).await;
    let mut conn = Conn::open(addr).await;
    for i in 0..10 {
        assert_eq!(
            conn.get(&format!("/c/{i}?q")).await,
            (StatusCode::OK, format!("/{i}?q"))
        );
        assert_eq!(
            conn.get(&format!("/t/{i}")).await,
            (StatusCode::OK, format!("/t/{i}"))
        );
    }
    // Only our connector could have resolved `good.internal`; its pool kept one
    // connection for all twenty requests.
    assert_eq!(
        connector.dialled(),
        [("good.internal".to_owned(), up.port())]
    );
    assert_eq!(up.connections(), 1);
    assert_eq!(
        up.last().headers[header::HOST],
        format!("good.internal:{}", up.port()).as_str()
    );
}
