//! `Rfc9110Layer` end to end: client → layer + forwarding app → origin, over real HTTP.
//!
//! The origin records every request it receives, so each test can say exactly what was
//! forwarded, and that a request answered by the layer never reached the origin.

use std::collections::HashSet;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum_reverse_proxy::{Rfc9110Config, Rfc9110Layer};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// What the origin received.
#[derive(Debug)]
struct Seen {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

// ===== the origin =====

async fn record(
    State(tx): State<mpsc::UnboundedSender<Seen>>,
    request: Request,
    next: Next,
) -> Response {
    let _ = tx.send(Seen {
        method: request.method().clone(),
        uri: request.uri().clone(),
        headers: request.headers().clone(),
    });
    next.run(request).await
}

async fn echo_socket(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(|mut socket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            if socket.send(message).await.is_err() {
                break;
            }
        }
    })
}

async fn start_origin() -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route("/ws", get(echo_socket))
        .route(
            "/via",
            any(|| async { ([(header::VIA, "1.0 origin-cache")], "ok") }),
        )
        .route(
            "/hop",
            any(|| async {
                (
                    [
                        ("connection", "x-upstream-secret"),
                        ("x-upstream-secret", "s3cr3t"),
                        ("keep-alive", "timeout=5"),
                        ("proxy-authenticate", "Basic realm=\"origin\""),
                        ("x-end-to-end", "kept"),
                    ],
                    "ok",
                )
            }),
        )
        .fallback(|| async { "ok" })
        .layer(middleware::from_fn_with_state(tx, record));
    (serve(app).await, rx)
}

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

// ===== the proxy: the layer in front of a minimal forwarding app =====

#[derive(Clone)]
struct Forward {
    client: Client<HttpConnector, Body>,
    origin: SocketAddr,
}

async fn forward(State(state): State<Forward>, mut request: Request) -> Response {
    let client_side = hyper::upgrade::on(&mut request);
    let path = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    *request.uri_mut() = format!("http://{}{}", state.origin, path).parse().unwrap();
    let Ok(mut response) = state.client.request(request).await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let origin_side = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            if let (Ok(client), Ok(origin)) = (client_side.await, origin_side.await) {
                let _ = tokio::io::copy_bidirectional(
                    &mut TokioIo::new(client),
                    &mut TokioIo::new(origin),
                )
                .await;
            }
        });
    }
    response.map(Body::new)
}

struct Harness {
    proxy: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
}

impl Harness {
    async fn start(config: Rfc9110Config) -> Harness {
        let (origin, seen) = start_origin().await;
        let client = Client::builder(TokioExecutor::new()).build_http();
        let app = Router::new()
            .route("/", any(forward))
            .route("/{*path}", any(forward))
            .with_state(Forward { client, origin })
            .layer(Rfc9110Layer::with_config(config));
        let proxy = serve(app).await;
        Harness { proxy, seen }
    }

    /// Send `request` as written (no header added but `Host`, unless it has one).
    async fn send(
        &self,
        mut request: http::Request<Empty<Bytes>>,
    ) -> (http::response::Parts, Bytes) {
        if !request.headers().contains_key(header::HOST) {
            let host = self.proxy.to_string().parse().unwrap();
            request.headers_mut().insert(header::HOST, host);
        }
        let stream = TcpStream::connect(self.proxy).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let response = sender.send_request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        (parts, body.collect().await.unwrap().to_bytes())
    }

    /// What the origin received for the request just answered.
    fn forwarded(&mut self) -> Seen {
        self.seen
            .try_recv()
            .expect("the origin should have received the request")
    }

    /// The request just answered never reached the origin.
    fn not_forwarded(&mut self) {
        if let Ok(seen) = self.seen.try_recv() {
            panic!("the origin received {} {}", seen.method, seen.uri);
        }
    }
}

fn build(method: Method, uri: &str, headers: &[(&str, &str)]) -> http::Request<Empty<Bytes>> {
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Empty::new()).unwrap()
}

fn edge() -> Rfc9110Config {
    Rfc9110Config {
        pseudonym: Some("edge".into()),
        ..Default::default()
    }
}

// ===== loop detection =====

#[tokio::test]
async fn loop_detected_by_via_pseudonym() {
    let mut h = Harness::start(edge()).await;
    let (parts, body) = h
        .send(build(
            Method::GET,
            "/x",
            &[("via", "1.0 fred, 1.1 EDGE (ours)")],
        ))
        .await;
    assert_eq!(parts.status, StatusCode::LOOP_DETECTED);
    assert_eq!(&body[..], b"Loop Detected");
    h.not_forwarded();

    // Our name on a second Via line counts too.
    let mut request = build(Method::GET, "/x", &[("via", "1.0 fred")]);
    request
        .headers_mut()
        .append(header::VIA, "2 edge".parse().unwrap());
    let (parts, _) = h.send(request).await;
    assert_eq!(parts.status, StatusCode::LOOP_DETECTED);
    h.not_forwarded();

    // Another intermediary's name passes (a 1.0 hop, so the chain is not combined).
    let (parts, _) = h
        .send(build(Method::GET, "/x", &[("via", "1.0 fred")]))
        .await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(h.forwarded().headers[header::VIA], "1.0 fred, 1.1 edge");
}

#[tokio::test]
async fn loop_detected_by_host_header_in_server_names() {
    let mut h = Harness::start(Rfc9110Config {
        server_names: Some(HashSet::from(["edge.example".to_string()])),
        ..Default::default()
    })
    .await;
    let (parts, body) = h
        .send(build(Method::GET, "/x", &[("host", "EDGE.example:8080")]))
        .await;
    assert_eq!(parts.status, StatusCode::LOOP_DETECTED);
    assert_eq!(&body[..], b"Loop Detected");
    h.not_forwarded();

    let (parts, _) = h.send(build(Method::GET, "/x", &[])).await;
    assert_eq!(parts.status, StatusCode::OK);
    h.forwarded();
}

#[tokio::test]
async fn loop_detected_by_absolute_form_host() {
    let mut h = Harness::start(Rfc9110Config {
        server_names: Some(HashSet::from(["edge.example".to_string()])),
        ..Default::default()
    })
    .await;
    let (parts, _) = h
        .send(build(
            Method::GET,
            "http://edge.example/x",
            &[("host", "edge.example")],
        ))
        .await;
    assert_eq!(parts.status, StatusCode::LOOP_DETECTED);
    h.not_forwarded();
}

#[tokio::test]
async fn default_config_forwards_via_proxy() {
    let mut h = Harness::start(Rfc9110Config::default()).await;
    let (parts, _) = h
        .send(build(Method::GET, "/x", &[("via", "1.1 proxy")]))
        .await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(h.forwarded().headers[header::VIA], "1.1 proxy, 1.1 proxy");
    assert_eq!(parts.headers[header::VIA], "1.1 proxy");
}

// ===== Max-Forwards =====

#[tokio::test]
async fn trace_max_forwards_zero_echoes_without_credentials() {
    let mut h = Harness::start(edge()).await;
    let (parts, body) = h
        .send(build(
            Method::TRACE,
            "/echo?x=1",
            &[
                ("max-forwards", "0"),
                ("authorization", "Bearer top-secret"),
                ("proxy-authorization", "Basic dG9wLXNlY3JldA=="),
                ("cookie", "session=top-secret"),
                ("x-trace-me", "visible"),
            ],
        ))
        .await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers[header::CONTENT_TYPE], "message/http");
    assert!(!parts.headers.contains_key(header::MAX_FORWARDS));
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.starts_with("TRACE /echo?x=1 HTTP/1.1\r\n"), "{text}");
    assert!(text.contains("\r\nx-trace-me: visible\r\n"), "{text}");
    assert!(text.contains("\r\nmax-forwards: 0\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(!lower.contains("authorization"), "{text}");
    assert!(!lower.contains("cookie"), "{text}");
    assert!(!lower.contains("top-secret"), "{text}");
    h.not_forwarded();
}

#[tokio::test]
async fn options_max_forwards_zero_answered_locally() {
    let mut h = Harness::start(Rfc9110Config::default()).await;
    let (parts, body) = h
        .send(build(Method::OPTIONS, "/x", &[("max-forwards", "0")]))
        .await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers[header::ALLOW], "GET, HEAD, OPTIONS, TRACE");
    assert_eq!(parts.headers[header::CONTENT_LENGTH], "0");
    assert!(!parts.headers.contains_key(header::MAX_FORWARDS));
    assert!(body.is_empty());
    h.not_forwarded();
}

#[tokio::test]
async fn max_forwards_decremented_and_never_on_responses() {
    let mut h = Harness::start(Rfc9110Config::default()).await;
    let cases = [
        (Method::OPTIONS, "5", "4"),
        (Method::TRACE, "1", "0"),
        (Method::GET, "0", "0"),
        (Method::POST, "7", "7"),
        (Method::TRACE, "lots", "lots"),
    ];
    for (method, sent, expected) in cases {
        let (parts, _) = h
            .send(build(method.clone(), "/x", &[("max-forwards", sent)]))
            .await;
        assert_eq!(parts.status, StatusCode::OK, "{method} {sent}");
        assert!(
            !parts.headers.contains_key(header::MAX_FORWARDS),
            "{method} {sent}"
        );
        let seen = h.forwarded();
        assert_eq!(seen.method, method);
        assert_eq!(
            seen.headers[header::MAX_FORWARDS],
            expected,
            "{method} {sent}"
        );
    }
}

// ===== hop-by-hop =====

#[tokio::test]
async fn connection_named_headers_stripped_from_request() {
    let mut h = Harness::start(Rfc9110Config::default()).await;
    let mut request = build(
        Method::GET,
        "/x",
        &[
            ("connection", "keep-alive, X-Hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("authorization", "Bearer named-in-connection"),
            ("proxy-authorization", "Basic cHJveHk="),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("upgrade", "h2c"),
            ("x-end-to-end", "kept"),
        ],
    );
    request
        .headers_mut()
        .append(header::CONNECTION, "Authorization".parse().unwrap());
    let (parts, _) = h.send(request).await;
    assert_eq!(parts.status, StatusCode::OK);
    let seen = h.forwarded();
    for name in [
        "connection",
        "x-hop",
        "keep-alive",
        "authorization",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        assert!(!seen.headers.contains_key(name), "{name} was forwarded");
    }
    assert_eq!(seen.headers["x-end-to-end"], "kept");
}

#[tokio::test]
async fn connection_named_headers_stripped_from_response() {
    let mut h = Harness::start(Rfc9110Config::default()).await;
    let (parts, _) = h.send(build(Method::GET, "/hop", &[])).await;
    assert_eq!(parts.status, StatusCode::OK);
    for name in ["x-upstream-secret", "keep-alive", "proxy-authenticate"] {
        assert!(
            !parts.headers.contains_key(name),
            "{name} reached the client"
        );
    }
    assert_eq!(parts.headers["x-end-to-end"], "kept");
    h.forwarded();
}

// ===== Via =====

#[tokio::test]
async fn upstream_via_extended() {
    let mut h = Harness::start(edge()).await;
    let (parts, _) = h.send(build(Method::GET, "/via", &[])).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers[header::VIA], "1.0 origin-cache, 1.1 edge");
    assert_eq!(h.forwarded().headers[header::VIA], "1.1 edge");
}

#[tokio::test]
async fn via_chain_combined_under_a_pseudonym() {
    let mut h = Harness::start(edge()).await;
    let (parts, _) = h
        .send(build(Method::GET, "/x", &[("via", "1.1 a, 1.1 b")]))
        .await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(h.forwarded().headers[header::VIA], "1.1 edge");

    let mut h = Harness::start(Rfc9110Config {
        combine_via: false,
        ..edge()
    })
    .await;
    h.send(build(Method::GET, "/x", &[("via", "1.1 a, 1.1 b")]))
        .await;
    assert_eq!(h.forwarded().headers[header::VIA], "1.1 a, 1.1 b, 1.1 edge");
}

// ===== WebSocket =====

#[tokio::test]
async fn websocket_headers_preserved_by_default() {
    let mut h = Harness::start(Rfc9110Config::default()).await;
    let url = format!("ws://{}/ws", h.proxy);
    let (mut socket, response) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()[header::UPGRADE], "websocket");
    socket.send(Message::Text("ping".into())).await.unwrap();
    let echoed = socket.next().await.unwrap().unwrap();
    assert_eq!(echoed, Message::Text("ping".into()));
    socket.close(None).await.unwrap();

    let seen = h.forwarded();
    assert_eq!(seen.headers[header::CONNECTION], "upgrade");
    assert_eq!(seen.headers[header::UPGRADE], "websocket");
    assert!(seen.headers.contains_key(header::SEC_WEBSOCKET_KEY));
}

#[tokio::test]
async fn websocket_headers_stripped_when_not_preserved() {
    let mut h = Harness::start(Rfc9110Config {
        preserve_websocket_headers: false,
        ..Default::default()
    })
    .await;
    let url = format!("ws://{}/ws", h.proxy);
    let error = tokio_tungstenite::connect_async(url).await.unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = error else {
        panic!("expected the handshake to be refused, got {error}");
    };
    assert!(response.status().is_client_error(), "{}", response.status());
    let seen = h.forwarded();
    assert!(!seen.headers.contains_key(header::UPGRADE));
    assert!(!seen.headers.contains_key(header::CONNECTION));
}
