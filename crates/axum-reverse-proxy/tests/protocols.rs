//! HTTP versions and message framing through the proxy: HTTP/2 clients, h2c upstreams
//! (by policy, and automatically for gRPC), HTTP/1.0 clients, bodiless responses
//! (HEAD, 204, 304), upstream connection reuse under sequential and concurrent load,
//! `Expect: 100-continue`, and CONNECT.
//!
//! Upstreams are servers on `127.0.0.1:0` that record what they received and count the
//! TCP connections they accepted; the proxy is served with `axum::serve`. Raw-socket
//! clients are used where a library client would hide the bytes on the wire.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, Response, StatusCode, Version, header};
use axum::routing::any;
use axum::serve::ListenerExt;
use axum_reverse_proxy::{ProxyError, ProxyPolicy, ProxyRouterExt, ReverseProxy};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tower::ServiceExt;

/// Upper bound for one network step, so a hang fails the test instead of stalling it.
const STEP: Duration = Duration::from_secs(10);

// ===== Helpers: recording upstreams =====

/// One request as an upstream received it.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    /// Path and query, as sent.
    path: String,
    version: Version,
    headers: HeaderMap,
    /// `Host`, or the `:authority` of an HTTP/2 request.
    authority: Option<String>,
    body: Bytes,
}

#[derive(Clone)]
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// TCP connections accepted.
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

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Which protocols an upstream speaks.
#[derive(Clone, Copy, PartialEq)]
enum Speaks {
    /// HTTP/1.1, and HTTP/2 with prior knowledge (hyper's auto connection).
    Auto,
    /// HTTP/2 with prior knowledge only: an HTTP/1.1 request is a protocol error.
    H2Only,
}

/// The upstream app used unless a test needs something else:
/// - `/stream`: a streamed (chunked) body `onetwothree`;
/// - `/doc`: 1234 bytes of `x`; for HEAD, only `Content-Length: 1234`;
/// - `/204`, `/304`: those statuses (the 304 with an `ETag`);
/// - anything else: `<METHOD> <path?query>` and the request body after a newline.
fn app() -> Router {
    Router::new()
        .route(
            "/stream",
            any(|| async {
                let chunks = ["one", "two", "three"].map(|c| Ok::<_, Infallible>(Bytes::from(c)));
                Body::from_stream(futures_util::stream::iter(chunks))
            }),
        )
        .route(
            "/doc",
            any(|method: Method| async move {
                if method == Method::HEAD {
                    Response::builder()
                        .header(header::CONTENT_LENGTH, 1234)
                        .body(Body::empty())
                        .unwrap()
                } else {
                    Response::new(Body::from(vec![b'x'; 1234]))
                }
            }),
        )
        .route("/204", any(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/304",
            any(|| async { (StatusCode::NOT_MODIFIED, [(header::ETAG, "\"v1\"")]) }),
        )
        .fallback(any(|req: Request<Body>| async move {
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

async fn upstream(speaks: Speaks) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = Upstream {
        addr: listener.local_addr().unwrap(),
        seen: Arc::default(),
        connections: Arc::default(),
    };
    let (seen, connections) = (up.seen.clone(), up.connections.clone());
    let app = app();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            connections.fetch_add(1, Ordering::SeqCst);
            let _ = stream.set_nodelay(true);
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
                    let authority = parts
                        .headers
                        .get(header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_owned)
                        .or_else(|| parts.uri.authority().map(|a| a.to_string()));
                    seen.lock().unwrap().push(Seen {
                        method: parts.method.clone(),
                        path: parts
                            .uri
                            .path_and_query()
                            .map_or("/", |pq| pq.as_str())
                            .to_owned(),
                        version: parts.version,
                        headers: parts.headers.clone(),
                        authority,
                        body: body.clone(),
                    });
                    app.oneshot(Request::from_parts(parts, Body::from(body)))
                        .await
                }
            });
            let io = TokioIo::new(stream);
            tokio::spawn(async move {
                let _ = match speaks {
                    Speaks::Auto => {
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await
                    }
                    Speaks::H2Only => {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await
                            .map_err(Into::into)
                    }
                };
            });
        }
    });
    up
}

// ===== Helpers: clients =====

/// Serve `app` on `127.0.0.1:0`, with `TCP_NODELAY` as a production server would set
/// it (without it, streamed responses stall on Nagle's algorithm).
async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
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

async fn text(body: Incoming) -> String {
    let bytes = timeout(STEP, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// One keep-alive HTTP/1.1 client connection.
async fn h1_connect(addr: SocketAddr) -> http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

async fn h1_send(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: &'static str,
) -> Response<Incoming> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    timeout(STEP, async {
        sender.ready().await.unwrap();
        sender.send_request(req).await.unwrap()
    })
    .await
    .expect("no response in time")
}

/// A raw TCP client, for exact bytes on the wire.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A parsed response head.
#[derive(Debug)]
struct Head {
    status_line: String,
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Read more bytes; `false` at end of stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = timeout(STEP, self.stream.read(&mut chunk))
            .await
            .expect("no bytes in time")
            .unwrap();
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn head(&mut self) -> Head {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(
                self.fill().await,
                "connection closed before a response head"
            );
        };
        let head = String::from_utf8(self.buf.drain(..end + 4).collect()).unwrap();
        let mut lines = head.trim_end().split("\r\n");
        let status_line = lines.next().unwrap().to_owned();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        Head {
            status_line,
            status,
            headers,
        }
    }

    async fn body(&mut self, len: usize) -> Vec<u8> {
        while self.buf.len() < len {
            assert!(self.fill().await, "connection closed inside a body");
        }
        self.buf.drain(..len).collect()
    }

    async fn read_until_close(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }
}

// ===== HTTP/2 clients =====

#[tokio::test]
async fn h2_prior_knowledge_client_to_http1_upstream() {
    let up = upstream(Speaks::Auto).await;
    let addr = serve(ReverseProxy::new("/", up.url()).into()).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();

    let response = client
        .get(format!("http://{addr}/h2/path?q=1").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response.into_body()).await, "GET /h2/path?q=1");
    let seen = up.last();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(
        seen.authority.as_deref(),
        Some(up.addr.to_string().as_str())
    );
    assert_eq!(seen.headers.get_all(header::HOST).iter().count(), 1);

    let req = Request::post(format!("http://{addr}/upload"))
        .body(Full::new(Bytes::from_static(b"h2 body")))
        .unwrap();
    let response = client.request(req).await.unwrap();
    assert_eq!(text(response.into_body()).await, "POST /upload\nh2 body");
    assert_eq!(up.last().version, Version::HTTP_11);
    assert_eq!(up.last().body, "h2 body");
}

#[tokio::test]
async fn h2_streams_multiplexed_on_one_client_connection() {
    let up = upstream(Speaks::Auto).await;
    let addr = serve(ReverseProxy::new("/", up.url()).into()).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);

    let requests = (0..20).map(|i| {
        let mut sender: http2::SendRequest<Full<Bytes>> = sender.clone();
        async move {
            let req = Request::get(format!("http://{addr}/stream-{i}"))
                .body(Full::default())
                .unwrap();
            let response = timeout(STEP, sender.send_request(req))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            text(response.into_body()).await
        }
    });
    let bodies = futures_util::future::join_all(requests).await;
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(body, &format!("GET /stream-{i}"));
    }
    assert!(up.requests().iter().all(|s| s.version == Version::HTTP_11));
}

#[tokio::test]
async fn h2_authority_becomes_host_when_preserved() {
    let up = upstream(Speaks::Auto).await;
    let policy =
        ProxyPolicy::new().with_host_behaviour(axum_reverse_proxy::HostBehaviour::Preserve);
    let addr = serve(ReverseProxy::new("/", up.url()).with_policy(policy).into()).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);

    // No Host header: only the `:authority` pseudo-header names the site.
    let req = Request::get("http://public.example:8443/a")
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = timeout(STEP, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = up.last();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.authority.as_deref(), Some("public.example:8443"));
}

// ===== h2c upstreams =====

#[tokio::test]
async fn h2c_upstream_by_policy() {
    let up = upstream(Speaks::H2Only).await;
    let proxy = ReverseProxy::new("/", up.url()).with_policy(ProxyPolicy::new().with_h2c(true));
    let addr = serve(proxy.into()).await;
    let mut sender = h1_connect(addr).await;

    let response = h1_send(&mut sender, addr, Method::GET, "/plain?x=1", "").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response.into_body()).await, "GET /plain?x=1");
    let response = h1_send(&mut sender, addr, Method::POST, "/echo", "over h2c").await;
    assert_eq!(text(response.into_body()).await, "POST /echo\nover h2c");

    for _ in 0..10 {
        let response = h1_send(&mut sender, addr, Method::GET, "/again", "").await;
        assert_eq!(response.status(), StatusCode::OK);
        text(response.into_body()).await;
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 12);
    for s in &seen {
        assert_eq!(s.version, Version::HTTP_2, "{s:?}");
        assert_eq!(s.authority.as_deref(), Some(up.addr.to_string().as_str()));
    }
    assert_eq!(seen[1].body, "over h2c");
    // Every stream rides one multiplexed connection.
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn h2_only_upstream_without_h2c_is_a_bad_gateway() {
    // Control for the tests above and below: plain requests without the policy go out
    // as HTTP/1.1, which an h2-only upstream refuses.
    let up = upstream(Speaks::H2Only).await;
    let proxy = ReverseProxy::new("/", up.url());
    let req = Request::get("/plain").body(Body::empty()).unwrap();
    let response = Router::from(proxy).oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert!(response.extensions().get::<ProxyError>().is_some());
    assert!(up.requests().is_empty());
}

async fn grpc_call(addr: SocketAddr, path: &str, content_type: &str) -> (StatusCode, String) {
    let mut sender = h1_connect(addr).await;
    let req = Request::post(path)
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, content_type)
        .header(header::TE, "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x02hi")))
        .unwrap();
    let response = timeout(STEP, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = response.status();
    (status, text(response.into_body()).await)
}

#[tokio::test]
async fn grpc_goes_over_h2c_without_a_policy() {
    let up = upstream(Speaks::H2Only).await;
    let addr = serve(ReverseProxy::new("/", up.url()).into()).await;

    for content_type in ["application/grpc", "application/grpc+proto"] {
        let (status, body) = grpc_call(addr, "/test.Echo/Unary", content_type).await;
        assert_eq!(status, StatusCode::OK, "{content_type}");
        assert_eq!(body, "POST /test.Echo/Unary\n\0\0\0\0\x02hi");
        let seen = up.last();
        assert_eq!(seen.version, Version::HTTP_2);
        assert_eq!(seen.headers[header::CONTENT_TYPE], content_type);
        assert_eq!(seen.headers[header::TE], "trailers");
    }
}

#[tokio::test]
async fn grpc_goes_over_h2c_with_a_user_client_and_proxy_route() {
    let up = upstream(Speaks::H2Only).await;
    let client: Client<HttpConnector, Body> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let app = Router::new()
        .merge(ReverseProxy::new_with_client("/c", up.url(), client))
        .proxy_route("/r/{*rest}", up.url());
    let addr = serve(app).await;

    let (status, _) = grpc_call(addr, "/c/pkg.Svc/M", "application/grpc").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(up.last().path, "/pkg.Svc/M");
    assert_eq!(up.last().version, Version::HTTP_2);

    let (status, _) = grpc_call(addr, "/r/pkg.Svc/N", "application/grpc").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(up.last().path, "/pkg.Svc/N");
    assert_eq!(up.last().version, Version::HTTP_2);
}

// ===== HTTP/1.0 clients =====

#[tokio::test]
async fn http10_client_gets_an_unchunked_body() {
    let up = upstream(Speaks::Auto).await;
    let addr = serve(ReverseProxy::new("/", up.url()).into()).await;

    // No Host header, as HTTP/1.0 allows; the upstream streams a chunked body.
    let mut raw = Raw::connect(addr).await;
    raw.send(b"GET /stream HTTP/1.0\r\n\r\n").await;
    let head = raw.head().await;
    assert_eq!(head.status, 200, "{head:?}");
    assert!(head.status_line.starts_with("HTTP/1."), "{head:?}");
    assert_eq!(
        head.header("transfer-encoding"),
        None,
        "chunked to an HTTP/1.0 client"
    );
    // Without a length the body is delimited by closing the connection.
    let body = raw.read_until_close().await;
    assert_eq!(body, b"onetwothree");

    let seen = up.last();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(
        seen.authority.as_deref(),
        Some(up.addr.to_string().as_str())
    );
}

#[tokio::test]
async fn http10_client_with_a_host_and_a_body() {
    let up = upstream(Speaks::Auto).await;
    let addr = serve(ReverseProxy::new("/", up.url()).into()).await;
    let mut raw = Raw::connect(addr).await;
    raw.send(b"POST /old HTTP/1.0\r\nHost: legacy.example\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    let head = raw.head().await;
    assert_eq!(head.status, 200, "{head:?}");
    let body = match head.header("content-length") {
        Some(len) => raw.body(len.parse().unwrap()).await,
        None => raw.read_until_close().await,
    };
    assert_eq!(body, b"POST /old\nhello");
    let seen = up.last();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.body, "hello");
    assert_eq!(
        seen.authority.as_deref(),
        Some(up.addr.to_string().as_str())
    );
}

// ===== Bodiless responses =====

#[tokio::test]
async fn head_keeps_content_length_and_sends_no_body() {
    let up = upstream(Speaks::Auto).await;
    let addr = serve(ReverseProxy::new("/", up.url()).into()).await;

    // Exact bytes: a HEAD answer, then a GET on the same connection. Any stray body
    // byte after the HEAD head would corrupt the second response.
    let mut raw = Raw::connect(addr).await;
    raw.send(b"HEAD /doc HTTP/1.1\r\nHost: p\r\n\r\n").await;
    let head = raw.head().await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-length"), Some("1234"), "{head:?}");
    assert_eq!(head.header("transfer-encoding"), None);
    raw.send(b"GET /doc HTTP/1.1\r\nHost: p\r\n\r\n").await;
    let head = raw.head().await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-length"), Some("1234"));
    assert_eq!(raw.body(1234).await, vec![b'x'; 1234]);
    assert!(raw.buf.is_empty(), "extra bytes: {:?}", raw.buf);

    let methods: Vec<_> = up.requests().into_iter().map(|s| s.method).collect();
    assert_eq!(methods, [Method::HEAD, Method::GET]);
}

#[tokio::test]
async fn no_content_and_not_modified_have_no_body() {
    let up = upstream(Speaks::Auto).await;
    let addr = serve(ReverseProxy::new("/", up.url()).into()).await;

    let mut raw = Raw::connect(addr).await;
    raw.send(b"GET /204 HTTP/1.1\r\nHost: p\r\n\r\n").await;
    let head = raw.head().await;
    assert_eq!(head.status, 204, "{head:?}");
    assert_eq!(head.header("transfer-encoding"), None);
    assert!(
        matches!(head.header("content-length"), None | Some("0")),
        "{head:?}"
    );

    raw.send(b"GET /304 HTTP/1.1\r\nHost: p\r\nIf-None-Match: \"v1\"\r\n\r\n")
        .await;
    let head = raw.head().await;
    assert_eq!(head.status, 304, "{head:?}");
    assert_eq!(head.header("etag"), Some("\"v1\""));
    assert_eq!(head.header("transfer-encoding"), None);

    // The connection is still in sync.
    raw.send(b"GET /after HTTP/1.1\r\nHost: p\r\n\r\n").await;
    let head = raw.head().await;
    assert_eq!(head.status, 200, "{head:?}");
    let len = head.header("content-length").unwrap().parse().unwrap();
    assert_eq!(raw.body(len).await, b"GET /after");
    assert!(raw.buf.is_empty(), "extra bytes: {:?}", raw.buf);
    assert_eq!(
        up.requests()[1].headers[header::IF_NONE_MATCH],
        "\"v1\"",
        "conditional header not forwarded"
    );
}

// ===== Upstream connection reuse =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_keep_alive_requests_reuse_one_upstream_connection() {
    let up = upstream(Speaks::Auto).await;
    let addr = serve(ReverseProxy::new("/", up.url()).into()).await;
    let mut sender = h1_connect(addr).await;
    for i in 0..100 {
        // Alternate short and streamed bodies: both must give the connection back.
        let path = if i % 2 == 0 {
            format!("/n/{i}")
        } else {
            "/stream".to_owned()
        };
        let response = h1_send(&mut sender, addr, Method::GET, &path, "").await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = text(response.into_body()).await;
        if i % 2 == 0 {
            assert_eq!(body, format!("GET /n/{i}"));
        } else {
            assert_eq!(body, "onetwothree");
        }
    }
    assert_eq!(up.requests().len(), 100);
    // One idle list per worker thread: at most one connection each.
    assert!(
        up.connections() <= 2,
        "100 sequential requests used {} upstream connections",
        up.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_on_new_client_connections_still_reuse_upstream_connections() {
    let up = upstream(Speaks::Auto).await;
    let addr = serve(ReverseProxy::new("/", up.url()).into()).await;
    for i in 0..50 {
        let mut sender = h1_connect(addr).await;
        let response = h1_send(&mut sender, addr, Method::GET, &format!("/c/{i}"), "").await;
        assert_eq!(text(response.into_body()).await, format!("GET /c/{i}"));
    }
    assert!(
        up.connections() <= 2,
        "50 requests on 50 client connections used {} upstream connections",
        up.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_use_a_bounded_set_of_upstream_connections() {
    const CLIENTS: usize = 64;
    const REQUESTS: usize = 20;
    let up = upstream(Speaks::Auto).await;
    let addr = serve(ReverseProxy::new("/", up.url()).into()).await;

    let clients = (0..CLIENTS).map(|c| {
        tokio::spawn(async move {
            let mut sender = h1_connect(addr).await;
            for r in 0..REQUESTS {
                let path = format!("/c{c}/r{r}");
                let response = h1_send(&mut sender, addr, Method::GET, &path, "").await;
                assert_eq!(response.status(), StatusCode::OK);
                assert_eq!(text(response.into_body()).await, format!("GET {path}"));
            }
        })
    });
    for result in futures_util::future::join_all(clients).await {
        result.unwrap();
    }
    assert_eq!(up.requests().len(), CLIENTS * REQUESTS);
    // At most one upstream connection per concurrent request, plus a little slack for
    // connections parked on the other worker thread's idle list.
    let used = up.connections();
    assert!(
        used <= CLIENTS + 8,
        "{CLIENTS} clients used {used} upstream connections"
    );
}

// ===== Expect: 100-continue =====

#[tokio::test]
async fn expect_100_continue_passes_through() {
    let up = upstream(Speaks::Auto).await;
    let addr = serve(ReverseProxy::new("/", up.url()).into()).await;

    let mut raw = Raw::connect(addr).await;
    raw.send(
        b"POST /upload HTTP/1.1\r\nHost: p\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    // The client waits for the interim answer before sending its body.
    let interim = raw.head().await;
    assert_eq!(interim.status, 100, "{interim:?}");
    raw.send(b"hello world").await;
    let head = raw.head().await;
    assert_eq!(head.status, 200, "{head:?}");
    let len = head.header("content-length").unwrap().parse().unwrap();
    assert_eq!(raw.body(len).await, b"POST /upload\nhello world");
    assert_eq!(up.last().body, "hello world");
}

// ===== CONNECT =====

#[tokio::test]
async fn connect_is_not_implemented() {
    let up = upstream(Speaks::Auto).await;
    let addr = serve(ReverseProxy::new("/", up.url()).into()).await;

    let authority = up.addr.to_string();
    let mut raw = Raw::connect(addr).await;
    raw.send(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await;
    let head = raw.head().await;
    assert_eq!(head.status, 501, "{head:?}");

    // In-process, the response says why.
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(authority.as_str())
        .body(Body::empty())
        .unwrap();
    let response = Router::from(ReverseProxy::new("/", up.url()))
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_IMPLEMENTED);
    let err = response.extensions().get::<ProxyError>().unwrap();
    assert!(err.is_not_implemented());

    assert!(up.requests().is_empty());
    assert_eq!(up.connections(), 0, "CONNECT opened an upstream connection");
}
