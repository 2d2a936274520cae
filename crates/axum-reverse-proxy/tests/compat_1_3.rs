//! The 1.3.0 public API, called exactly as a 1.3.0 user calls it, plus the names the 2.x
//! line introduced (`with_policy`, `ProxyPolicy`, `HostBehaviour`, `XForwardedFor`,
//! `proxy_route_with_client`, `ProxyError`).
//!
//! Every call is exercised with a real request: upstreams are servers on `127.0.0.1:0` that
//! record exactly what they received, and proxies are served with `axum::serve` or called
//! in-process through `tower::Service`.
//!
//! `RetryLayer`, `Rfc9110Layer`, the balanced/discoverable proxies and DNS discovery are
//! covered elsewhere.
// 1.3.0 users pass `&format!(..)`: that exact call shape is what is under test.
#![allow(clippy::needless_borrows_for_generic_args)]

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use axum::routing::{any, get};
use axum_reverse_proxy::{
    HostBehaviour, ProxyError, ProxyPolicy, ProxyRouterExt, ReverseProxy, TargetResolver,
    TemplateTarget, XForwardedFor, proxy_template,
};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::ServiceExt;

// ===== Helpers: a recording upstream =====

/// One request as the upstream received it.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    /// Path and query, as sent on the wire.
    path: String,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    peer: SocketAddr,
}

/// An HTTP/1.1 + HTTP/2 server on `127.0.0.1:0` that records every request, then lets
/// `app` answer it.
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

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn last(&self) -> Seen {
        self.requests()
            .pop()
            .expect("the upstream received no request")
    }
}

/// Answers `<METHOD> <path?query>` (and the body, if any, after a newline).
fn echo() -> Router {
    Router::new().fallback(any(|req: Request<Body>| async move {
        let head = format!(
            "{} {}",
            req.method(),
            req.uri().path_and_query().map_or("/", |pq| pq.as_str())
        );
        let body = req.into_body().collect().await.unwrap().to_bytes();
        if body.is_empty() {
            head
        } else {
            format!("{head}\n{}", String::from_utf8_lossy(&body))
        }
    }))
}

async fn upstream(app: Router) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = Upstream {
        addr: listener.local_addr().unwrap(),
        seen: Arc::default(),
        connections: Arc::default(),
    };
    let (seen, connections) = (up.seen.clone(), up.connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            connections.fetch_add(1, Ordering::SeqCst);
            let (app, seen) = (app.clone(), seen.clone());
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (app, seen) = (app.clone(), seen.clone());
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    seen.lock().unwrap().push(Seen {
                        method: parts.method.clone(),
                        path: parts
                            .uri
                            .path_and_query()
                            .map_or("/", |pq| pq.as_str())
                            .to_owned(),
                        version: parts.version,
                        headers: parts.headers.clone(),
                        body: body.clone(),
                        peer,
                    });
                    app.oneshot(Request::from_parts(parts, Body::from(body)))
                        .await
                }
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    up
}

/// Serve `app` (with the peer address recorded, as a real deployment does) and return
/// its address.
async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn fetch(addr: SocketAddr, path_and_query: &str) -> (StatusCode, String) {
    let response = http()
        .get(format!("http://{addr}{path_and_query}"))
        .send()
        .await
        .unwrap();
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    (status, response.text().await.unwrap())
}

async fn body_text(response: Response<Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A port on which nothing listens (bound, then released).
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// The 1.3.0 service contract: `Clone`, `Error = Infallible`, `Response<Body>`, and a
/// `Send` future.
fn assert_service_contract<S>(_: &S)
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
}

// ===== ReverseProxy::new =====

#[tokio::test]
async fn new_with_borrowed_string_at_root() {
    let up = upstream(echo()).await;
    let proxy = ReverseProxy::new("/", &format!("http://{}", up.addr));
    assert_eq!(proxy.path(), "/");
    assert_eq!(proxy.target(), format!("http://{}", up.addr));
    assert_service_contract(&proxy);

    let addr = serve(Router::from(proxy)).await;
    assert_eq!(fetch(addr, "/").await, (StatusCode::OK, "GET /".into()));
    assert_eq!(
        fetch(addr, "/hello/world?a=1&b=2").await,
        (StatusCode::OK, "GET /hello/world?a=1&b=2".into())
    );
    let seen = up.last();
    assert_eq!(seen.path, "/hello/world?a=1&b=2");
    assert_eq!(seen.headers["host"], up.addr.to_string().as_str());
}

#[tokio::test]
async fn new_with_as_str_under_a_prefix() {
    let up = upstream(echo()).await;
    let proxy = ReverseProxy::new("/x", format!("http://{}/base", up.addr).as_str());
    assert_eq!(proxy.path(), "/x");
    assert_eq!(proxy.target(), format!("http://{}/base", up.addr));
    let app: Router = proxy.into();
    let addr = serve(app).await;

    assert_eq!(
        fetch(addr, "/x/items?q=2").await,
        (StatusCode::OK, "GET /base/items?q=2".into())
    );
    assert_eq!(
        fetch(addr, "/x").await,
        (StatusCode::OK, "GET /base".into())
    );
    assert_eq!(
        fetch(addr, "/x/").await,
        (StatusCode::OK, "GET /base/".into())
    );
    // Mounted once: a repeated prefix is the upstream's business.
    assert_eq!(
        fetch(addr, "/x/x/y").await,
        (StatusCode::OK, "GET /base/x/y".into())
    );
    let before = up.requests().len();
    assert_eq!(fetch(addr, "/other").await.0, StatusCode::NOT_FOUND);
    assert_eq!(fetch(addr, "/xy").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        up.requests().len(),
        before,
        "requests outside /x reached the upstream"
    );
}

#[tokio::test]
async fn new_accepts_independent_string_types() {
    // 1.3.0 required one `S` for both; 2.x and we accept any two `Into<String>`.
    let up = upstream(echo()).await;
    let proxy = ReverseProxy::new("/svc", up.url());
    let addr = serve(proxy.into()).await;
    assert_eq!(
        fetch(addr, "/svc/a").await,
        (StatusCode::OK, "GET /a".into())
    );
}

#[tokio::test]
async fn post_body_reaches_the_upstream() {
    let up = upstream(echo()).await;
    let addr = serve(ReverseProxy::new("/", &up.url()).into()).await;
    let response = http()
        .post(format!("http://{addr}/submit"))
        .body("payload-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.unwrap(), "POST /submit\npayload-123");
    let seen = up.last();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.body, "payload-123");
}

// ===== ReverseProxy::new_with_client =====

#[tokio::test]
async fn new_with_client_plain_http_connector() {
    let up = upstream(echo()).await;
    let client: Client<HttpConnector, Body> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let proxy = ReverseProxy::new_with_client("/api", &format!("http://{}", up.addr), client);
    assert_eq!(proxy.path(), "/api");
    assert_eq!(proxy.target(), format!("http://{}", up.addr));
    assert_service_contract(&proxy);

    let addr = serve(Router::from(proxy)).await;
    assert_eq!(
        fetch(addr, "/api/users?id=7").await,
        (StatusCode::OK, "GET /users?id=7".into())
    );
    assert_eq!(up.last().headers["host"], up.addr.to_string().as_str());
}

#[tokio::test]
async fn new_with_client_sends_through_that_client() {
    // A connector that binds its sockets to 127.0.0.2: the upstream sees that peer
    // address only if the proxy really used the given client.
    let up = upstream(echo()).await;
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some("127.0.0.2".parse().unwrap()));
    let client = Client::builder(TokioExecutor::new()).build(connector);
    let proxy = ReverseProxy::new_with_client("/api", &format!("http://{}", up.addr), client);
    let addr = serve(proxy.into()).await;

    assert_eq!(
        fetch(addr, "/api/who").await,
        (StatusCode::OK, "GET /who".into())
    );
    assert_eq!(up.last().peer.ip(), "127.0.0.2".parse::<IpAddr>().unwrap());

    // Control: the default client connects from 127.0.0.1.
    let addr = serve(ReverseProxy::new("/api", &up.url()).into()).await;
    assert_eq!(fetch(addr, "/api/who").await.0, StatusCode::OK);
    assert_eq!(up.last().peer.ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
}

// ===== proxy_request and tower::Service =====

#[tokio::test]
async fn proxy_request_from_a_handler() {
    let up = upstream(echo()).await;
    let proxy = ReverseProxy::new("/svc", &format!("http://{}", up.addr));
    let app = Router::new().route(
        "/svc/{*rest}",
        any(move |req: Request<Body>| {
            let proxy = proxy.clone();
            async move {
                let mut response = proxy.proxy_request(req).await.unwrap();
                response
                    .headers_mut()
                    .insert("x-handled", "by-handler".parse().unwrap());
                response
            }
        }),
    );
    let addr = serve(app).await;
    let response = http()
        .get(format!("http://{addr}/svc/deep/path?z=9"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["x-handled"], "by-handler");
    assert_eq!(response.text().await.unwrap(), "GET /deep/path?z=9");
}

#[tokio::test]
async fn service_call_without_poll_ready() {
    let up = upstream(echo()).await;
    let mut proxy = ReverseProxy::new("/", &format!("http://{}", up.addr));

    let req = Request::builder()
        .uri("/direct?k=v")
        .body(Body::empty())
        .unwrap();
    let response = tower::Service::call(&mut proxy, req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(response).await, "GET /direct?k=v");

    let req = Request::builder()
        .method("PUT")
        .uri("/put")
        .body(Body::from("in-process"))
        .unwrap();
    let response = tower::Service::call(&mut proxy, req).await.unwrap();
    assert_eq!(body_text(response).await, "PUT /put\nin-process");
    assert_eq!(up.last().body, "in-process");

    // Clones are independent services over the same target.
    let mut clone = proxy.clone();
    let req = Request::builder().uri("/c").body(Body::empty()).unwrap();
    let response = tower::Service::call(&mut clone, req).await.unwrap();
    assert_eq!(body_text(response).await, "GET /c");
}

#[tokio::test]
async fn router_from_and_into_side_by_side() {
    let a = upstream(echo()).await;
    let b = upstream(echo()).await;
    let from = Router::from(ReverseProxy::new("/a", &a.url()));
    let into: Router = ReverseProxy::new("/b", &b.url()).into();
    let addr = serve(from.merge(into)).await;

    assert_eq!(fetch(addr, "/a/1").await, (StatusCode::OK, "GET /1".into()));
    assert_eq!(fetch(addr, "/b/2").await, (StatusCode::OK, "GET /2".into()));
    assert_eq!(a.requests().len(), 1);
    assert_eq!(b.requests().len(), 1);
    assert_eq!(a.last().path, "/1");
    assert_eq!(b.last().path, "/2");
}

#[derive(Clone)]
struct AppState {
    greeting: &'static str,
}

#[tokio::test]
async fn merge_into_a_router_with_state() {
    let up = upstream(echo()).await;
    let proxy = ReverseProxy::new("/api", &format!("http://{}", up.addr));
    let app = Router::<AppState>::new()
        .route(
            "/hello",
            get(|State(state): State<AppState>| async move { state.greeting }),
        )
        .merge(proxy)
        .with_state(AppState { greeting: "hi" });
    let addr = serve(app).await;

    assert_eq!(fetch(addr, "/hello").await, (StatusCode::OK, "hi".into()));
    assert!(up.requests().is_empty(), "a local route was proxied");
    assert_eq!(
        fetch(addr, "/api/things?n=1").await,
        (StatusCode::OK, "GET /things?n=1".into())
    );
    assert_eq!(up.requests().len(), 1);
}

// ===== ProxyRouterExt =====

#[tokio::test]
async fn proxy_route_with_a_string() {
    let up = upstream(echo()).await;
    let target: String = format!("http://{}", up.addr);
    let app = Router::new().proxy_route("/api/{*rest}", target);
    let addr = serve(app).await;
    assert_eq!(
        fetch(addr, "/api/users?x=1").await,
        (StatusCode::OK, "GET /users?x=1".into())
    );
    assert_eq!(up.last().path, "/users?x=1");
    assert_eq!(up.last().headers["host"], up.addr.to_string().as_str());
}

#[tokio::test]
async fn proxy_route_with_a_static_str() {
    let up = upstream(echo()).await;
    let target: &'static str = Box::leak(format!("http://{}/v1", up.addr).into_boxed_str());
    let app = Router::new().proxy_route("/static/{*rest}", target);
    let addr = serve(app).await;
    assert_eq!(
        fetch(addr, "/static/a/b").await,
        (StatusCode::OK, "GET /v1/a/b".into())
    );
    // Routes not registered stay 404 and do not reach the upstream.
    assert_eq!(fetch(addr, "/elsewhere").await.0, StatusCode::NOT_FOUND);
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn proxy_template_with_a_borrowed_string() {
    let up = upstream(echo()).await;
    let template = format!("http://{}/v2/users/{{id}}", up.addr);
    let app = Router::new().proxy_route("/users/{id}", proxy_template(&template));
    let addr = serve(app).await;
    assert_eq!(
        fetch(addr, "/users/42?fields=name").await,
        (StatusCode::OK, "GET /v2/users/42?fields=name".into())
    );
}

#[tokio::test]
async fn template_target_new_with_two_parameters() {
    let up = upstream(echo()).await;
    let target = TemplateTarget::new(format!("http://{}/orgs/{{org}}/repos/{{repo}}", up.addr));
    let app = Router::new().proxy_route("/r/{org}/{repo}", target);
    let addr = serve(app).await;
    assert_eq!(
        fetch(addr, "/r/acme/widgets").await,
        (StatusCode::OK, "GET /orgs/acme/repos/widgets".into())
    );
}

/// Picks an upstream from a request header and builds the path from a parameter, as a
/// 1.3.0 user's resolver would.
#[derive(Clone)]
struct ShardResolver {
    shard_a: String,
    shard_b: String,
}

impl TargetResolver for ShardResolver {
    fn resolve(&self, req: &Request<Body>, params: &[(String, String)]) -> String {
        let base = match req.headers().get("x-shard").map(|v| v.as_bytes()) {
            Some(b"b") => &self.shard_b,
            _ => &self.shard_a,
        };
        let id = params
            .iter()
            .find(|(name, _)| name == "id")
            .map_or("none", |(_, value)| value.as_str());
        format!("{base}/items/{id}")
    }
}

#[tokio::test]
async fn proxy_route_with_a_custom_resolver() {
    let a = upstream(echo()).await;
    let b = upstream(echo()).await;
    let resolver = ShardResolver {
        shard_a: a.url(),
        shard_b: b.url(),
    };
    let app = Router::new().proxy_route("/items/{id}", resolver);
    let addr = serve(app).await;

    let response = http()
        .get(format!("http://{addr}/items/5?v=1"))
        .header("x-shard", "b")
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "GET /items/5?v=1");
    assert_eq!(b.requests().len(), 1);
    assert!(a.requests().is_empty());

    assert_eq!(
        fetch(addr, "/items/6").await,
        (StatusCode::OK, "GET /items/6".into())
    );
    assert_eq!(a.requests().len(), 1);
    assert_eq!(b.requests().len(), 1);
}

// ===== 2.x names: ProxyPolicy, HostBehaviour, XForwardedFor, ProxyError =====

#[tokio::test]
async fn with_policy_preserves_host_and_forwarding_headers() {
    let up = upstream(echo()).await;
    let policy = ProxyPolicy::new()
        .with_host_behaviour(HostBehaviour::Preserve)
        .with_x_forwarded_for(XForwardedFor::Preserve);
    let proxy = ReverseProxy::new("/", &up.url()).with_policy(policy);
    assert_eq!(proxy.policy().host_behaviour, HostBehaviour::Preserve);
    let addr = serve(proxy.into()).await;

    let response = http()
        .get(format!("http://{addr}/p"))
        .header("host", "public.example")
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let seen = up.last();
    assert_eq!(seen.headers["host"], "public.example");
    let xff: Vec<_> = seen.headers.get_all("x-forwarded-for").iter().collect();
    assert_eq!(xff, ["203.0.113.9"]);
}

#[tokio::test]
async fn default_policy_replaces_host_and_appends_forwarded_for() {
    let up = upstream(echo()).await;
    let proxy = ReverseProxy::new("/", &up.url()).with_policy(ProxyPolicy::default());
    assert_eq!(proxy.policy().host_behaviour, HostBehaviour::Replace);
    assert_eq!(proxy.policy().x_forwarded_for, XForwardedFor::Append);
    let addr = serve(proxy.into()).await;

    let response = http()
        .get(format!("http://{addr}/p"))
        .header("host", "public.example")
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let seen = up.last();
    assert_eq!(seen.headers["host"], up.addr.to_string().as_str());
    let xff = seen
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect::<Vec<_>>()
        .join(", ");
    assert_eq!(xff, "203.0.113.9, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-host"], "public.example");
}

#[tokio::test]
async fn proxy_route_with_client_and_policy() {
    let up = upstream(echo()).await;
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some("127.0.0.2".parse().unwrap()));
    let client: Client<HttpConnector, Body> =
        Client::builder(TokioExecutor::new()).build(connector);
    let policy = ProxyPolicy::new().with_host_behaviour(HostBehaviour::Preserve);
    let app = Router::new().proxy_route_with_client("/c/{*rest}", up.url(), policy, client);
    let addr = serve(app).await;

    let response = http()
        .get(format!("http://{addr}/c/x/y?z=1"))
        .header("host", "kept.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "GET /x/y?z=1");
    let seen = up.last();
    assert_eq!(seen.peer.ip(), "127.0.0.2".parse::<IpAddr>().unwrap());
    assert_eq!(seen.headers["host"], "kept.example");
}

#[tokio::test]
async fn proxy_error_on_connect_failure() {
    let port = closed_port().await;
    let mut proxy = ReverseProxy::new("/", &format!("http://127.0.0.1:{port}"));
    let req = Request::builder().uri("/x").body(Body::empty()).unwrap();
    let response = tower::Service::call(&mut proxy, req).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let err = response
        .extensions()
        .get::<ProxyError>()
        .expect("a proxy-made 502 carries a ProxyError")
        .clone();
    assert!(err.is_connect(), "{err:?}");
    assert!(!err.is_timeout());
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
    let body = body_text(response).await;
    assert_eq!(body, err.message());
    assert!(
        !body.contains(&port.to_string()),
        "error body leaks the address: {body}"
    );
}

#[tokio::test]
async fn upstream_statuses_carry_no_proxy_error() {
    let up = upstream(Router::new().fallback(|| async { (StatusCode::BAD_GATEWAY, "mine") })).await;
    let mut proxy = ReverseProxy::new("/", &up.url());
    let req = Request::builder().uri("/").body(Body::empty()).unwrap();
    let response = tower::Service::call(&mut proxy, req).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert!(response.extensions().get::<ProxyError>().is_none());
    assert_eq!(body_text(response).await, "mine");
}

// ===== TLS danger helpers =====

/// An HTTPS upstream with a fresh self-signed certificate for `localhost`. Answers
/// `tls <path>`.
#[cfg(any(feature = "tls", feature = "native-tls"))]
async fn tls_upstream() -> SocketAddr {
    use tokio_rustls::TlsAcceptor;
    use tokio_rustls::rustls::{self, pki_types};

    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = pki_types::PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .fallback(|req: Request<Body>| async move { format!("tls {}", req.uri().path()) });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    app.clone().oneshot(req.map(Body::new))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn dangerous_rustls_config_reaches_a_self_signed_upstream() {
    use axum_reverse_proxy::create_dangerous_rustls_config;

    let tls = tls_upstream().await;
    let cfg = create_dangerous_rustls_config();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_or_http()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build(https);
    let proxy =
        ReverseProxy::new_with_client("/", &format!("https://localhost:{}", tls.port()), client);
    let addr = serve(proxy.into()).await;
    assert_eq!(
        fetch(addr, "/secure").await,
        (StatusCode::OK, "tls /secure".into())
    );
}

#[cfg(feature = "native-tls")]
#[tokio::test]
async fn dangerous_native_tls_connector_reaches_a_self_signed_upstream() {
    use axum_reverse_proxy::create_dangerous_native_tls_connector;

    let tls_upstream = tls_upstream().await;
    let tls = create_dangerous_native_tls_connector().unwrap();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let https = hyper_tls::HttpsConnector::from((http, tokio_native_tls::TlsConnector::from(tls)));
    let client = Client::builder(TokioExecutor::new()).build(https);
    // The helper also accepts a host name the certificate does not name.
    let proxy = ReverseProxy::new_with_client(
        "/n",
        &format!("https://127.0.0.1:{}", tls_upstream.port()),
        client,
    );
    let addr = serve(proxy.into()).await;
    assert_eq!(
        fetch(addr, "/n/secure").await,
        (StatusCode::OK, "tls /secure".into())
    );
}
