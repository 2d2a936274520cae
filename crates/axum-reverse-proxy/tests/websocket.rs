//! WebSocket and other HTTP upgrades through the reverse proxy.
//!
//! Upstreams are real servers on 127.0.0.1:0: an axum WebSocket app (echo, server-side
//! close, server-side ping, subprotocols), a TLS one (rcgen + tokio-rustls), a custom
//! `Upgrade: echo-proto` server, and raw TCP servers that play the handshake by hand
//! when a test must see or send exact bytes (frames, extension headers, bad 101s).
//! Clients are tokio-tungstenite, hyper's HTTP/2 client (RFC 8441), or raw sockets.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
#[cfg(feature = "tls")]
use axum_reverse_proxy::create_dangerous_rustls_config;
use axum_reverse_proxy::{ProxyPolicy, ProxyRouterExt, ReverseProxy, TunnelGuard, UpgradeTunnels};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::ClientRequestBuilder;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tower::ServiceExt;

// ===== Harness =====

/// Upper bound for any single network step, so a broken proxy fails instead of hanging.
const STEP: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

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

/// A root proxy (`/` → `http://upstream`) with `policy`, served on its own port.
async fn proxy_to(upstream: SocketAddr, policy: ProxyPolicy) -> SocketAddr {
    let proxy = ReverseProxy::new("/", format!("http://{upstream}")).with_policy(policy);
    serve(proxy.into()).await
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn big_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

async fn connect(url: &str) -> (Ws, tungstenite::handshake::client::Response) {
    within("WebSocket handshake", tokio_tungstenite::connect_async(url))
        .await
        .unwrap_or_else(|err| panic!("connect {url}: {err}"))
}

/// The status and body of a refused handshake.
async fn refused(url: &str) -> (StatusCode, String) {
    match within("refused handshake", tokio_tungstenite::connect_async(url)).await {
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            (
                response.status(),
                String::from_utf8_lossy(&body).into_owned(),
            )
        }
        Err(other) => panic!("expected an HTTP answer, got {other}"),
        Ok(_) => panic!("expected the handshake to be refused"),
    }
}

async fn next_message(ws: &mut Ws) -> Message {
    within("next WebSocket message", ws.next())
        .await
        .expect("stream ended")
        .expect("read failed")
}

/// Read until the stream ends; true if it ended (a close, EOF or reset), whatever
/// came before.
async fn ends(ws: &mut Ws) -> bool {
    loop {
        match ws.next().await {
            None | Some(Err(_)) => return true,
            Some(Ok(Message::Close(_))) => {}
            Some(Ok(_)) => {}
        }
    }
}

// ===== The axum upstream =====

/// What the upstream app saw, reported to the test.
#[derive(Debug, PartialEq)]
enum Event {
    /// The path and the handshake headers of a WebSocket request.
    Handshake(String, HeaderMap),
    /// A close frame received from the client.
    Closed(Option<(u16, String)>),
    /// A pong received in answer to the server's ping.
    Pong(Vec<u8>),
}

type Events = mpsc::UnboundedSender<Event>;

fn upstream_app(events: Events) -> Router {
    Router::new()
        .route("/ws", any(echo))
        .route("/ws/{*rest}", any(echo))
        .route("/close-me", any(close_me))
        .route("/ping-me", any(ping_me))
        .route(
            "/forbidden",
            any(|| async { (StatusCode::FORBIDDEN, "forbidden by upstream") }),
        )
        .route("/echo-proto", get(echo_proto))
        .with_state(events)
}

async fn spawn_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (serve(upstream_app(tx)).await, rx)
}

async fn echo(State(events): State<Events>, ws: WebSocketUpgrade, req: Request) -> Response {
    let _ = events.send(Event::Handshake(
        req.uri().path().to_owned(),
        req.headers().clone(),
    ));
    ws.protocols(["chat", "superchat"])
        .max_message_size(64 << 20)
        .max_frame_size(64 << 20)
        .on_upgrade(move |socket| echo_socket(socket, events))
}

async fn echo_socket(mut socket: WebSocket, events: Events) {
    while let Some(Ok(message)) = socket.recv().await {
        match message {
            ws::Message::Text(_) | ws::Message::Binary(_) => {
                if socket.send(message).await.is_err() {
                    return;
                }
            }
            ws::Message::Close(frame) => {
                let _ = events.send(Event::Closed(
                    frame.map(|f| (f.code, f.reason.as_str().to_owned())),
                ));
                return;
            }
            ws::Message::Ping(_) | ws::Message::Pong(_) => {}
        }
    }
}

async fn close_me(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(|mut socket| async move {
        let frame = ws::CloseFrame {
            code: 4002,
            reason: "server bye".into(),
        };
        let _ = socket.send(ws::Message::Close(Some(frame))).await;
        while let Some(Ok(_)) = socket.recv().await {}
    })
}

async fn ping_me(State(events): State<Events>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |mut socket| async move {
        if socket
            .send(ws::Message::Ping(b"srv".as_slice().into()))
            .await
            .is_err()
        {
            return;
        }
        while let Some(Ok(message)) = socket.recv().await {
            match message {
                ws::Message::Pong(payload) => {
                    let _ = events.send(Event::Pong(payload.to_vec()));
                }
                ws::Message::Text(_) if socket.send(message).await.is_err() => return,
                _ => {}
            }
        }
    })
}

/// A non-WebSocket upgrade: after `101 Upgrade: echo-proto`, echo every byte until the
/// client stops sending, then send a last line and close (exercises half-close).
async fn echo_proto(mut req: Request) -> Response {
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        let mut buf = [0u8; 1024];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = io.write_all(b"bye after your EOF").await;
        let _ = io.shutdown().await;
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::UPGRADE, "echo-proto"),
            (header::CONNECTION, "upgrade"),
        ],
    )
        .into_response()
}

// ===== Raw HTTP/1.1 and frames =====

type Conn = BufReader<TcpStream>;

/// A request or response head: first line and headers (names lowercased).
#[derive(Debug)]
struct Head {
    line: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn status(&self) -> u16 {
        self.line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

async fn read_head(conn: &mut Conn) -> Head {
    let mut line = String::new();
    conn.read_line(&mut line).await.unwrap();
    let mut head = Head {
        line: line.trim_end().to_owned(),
        headers: Vec::new(),
    };
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).await.unwrap() == 0 {
            panic!("connection closed inside a head: {head:?}");
        }
        let line = line.trim_end();
        if line.is_empty() {
            return head;
        }
        let (name, value) = line.split_once(':').unwrap();
        head.headers
            .push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
}

/// Send a raw request head to `addr` and read the response head.
async fn raw_request(addr: SocketAddr, request: &str) -> (Head, Conn) {
    let mut conn = BufReader::new(TcpStream::connect(addr).await.unwrap());
    conn.write_all(request.as_bytes()).await.unwrap();
    let head = within("response head", read_head(&mut conn)).await;
    (head, conn)
}

/// A TCP upstream whose connections the test drives by hand; each comes with the
/// request head already read.
async fn raw_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<(Head, Conn)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut conn = BufReader::new(stream);
                let head = read_head(&mut conn).await;
                let _ = tx.send((head, conn));
            });
        }
    });
    (addr, rx)
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn ws_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: proxy.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A 101 answering `head`'s key, with extra header lines.
fn ws_101(head: &Head, extra: &str) -> String {
    let accept = derive_accept_key(head.get("sec-websocket-key").unwrap().as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
    )
}

#[derive(Debug, PartialEq)]
struct RawFrame {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// Encode a frame; clients mask (RFC 6455 §5.3).
fn encode(fin: bool, rsv1: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

async fn read_frame(conn: &mut Conn) -> RawFrame {
    let mut two = [0u8; 2];
    conn.read_exact(&mut two).await.unwrap();
    let len = match two[1] & 0x7f {
        126 => u64::from(conn.read_u16().await.unwrap()),
        127 => conn.read_u64().await.unwrap(),
        n => u64::from(n),
    };
    let mut key = [0u8; 4];
    if two[1] & 0x80 != 0 {
        conn.read_exact(&mut key).await.unwrap();
    }
    let mut payload = vec![0u8; len as usize];
    conn.read_exact(&mut payload).await.unwrap();
    if two[1] & 0x80 != 0 {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    RawFrame {
        fin: two[0] & 0x80 != 0,
        rsv1: two[0] & 0x40 != 0,
        opcode: two[0] & 0x0f,
        payload,
    }
}

/// True if the peer closed the connection (EOF or reset) within [`STEP`].
async fn closed_by_peer(conn: &mut Conn) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match within("connection close", conn.read(&mut buf)).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
}

// ===== Messages =====

#[tokio::test]
async fn text_and_binary_echo() {
    let (upstream, _events) = spawn_upstream().await;
    let proxy = proxy_to(upstream, ProxyPolicy::new()).await;
    let (mut ws, response) = connect(&format!("ws://{proxy}/ws")).await;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);

    ws.send(Message::text("hello through the proxy"))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Message::text("hello through the proxy")
    );
    let bytes: Vec<u8> = (0..=255).collect();
    ws.send(Message::binary(bytes.clone())).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::binary(bytes));
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn sixteen_mib_message() {
    let (upstream, _events) = spawn_upstream().await;
    let proxy = proxy_to(upstream, ProxyPolicy::new()).await;
    let (mut ws, _) = within(
        "handshake",
        tokio_tungstenite::connect_async_with_config(
            format!("ws://{proxy}/ws"),
            Some(big_config()),
            false,
        ),
    )
    .await
    .unwrap();
    let payload: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(payload.clone())).await.unwrap();
    match next_message(&mut ws).await {
        Message::Binary(echoed) => {
            assert_eq!(echoed.len(), payload.len());
            assert!(echoed == payload, "16 MiB echo differs");
        }
        other => panic!("expected binary, got {other:?}"),
    }
}

#[tokio::test]
async fn fragmented_messages_pass_frame_by_frame() {
    let (upstream, mut conns) = raw_upstream().await;
    let proxy = proxy_to(upstream, ProxyPolicy::new()).await;
    let client = tokio::spawn(async move {
        let (head, mut conn) = raw_request(proxy, &ws_request("/frag", "")).await;
        assert_eq!(head.status(), 101);
        let mut sent = encode(false, false, 0x1, b"hel", Some([1, 2, 3, 4]));
        sent.extend(encode(false, false, 0x0, b"lo ", Some([5, 6, 7, 8])));
        sent.extend(encode(true, false, 0x0, b"world", Some([9, 9, 9, 9])));
        conn.write_all(&sent).await.unwrap();
        // The upstream's fragments, exactly as sent.
        let mut received = Vec::new();
        for _ in 0..2 {
            received.push(within("fragment", read_frame(&mut conn)).await);
        }
        received
    });

    let (head, mut up) = within("upstream handshake", conns.recv()).await.unwrap();
    up.write_all(ws_101(&head, "").as_bytes()).await.unwrap();
    let mut frames = Vec::new();
    for _ in 0..3 {
        frames.push(within("fragment", read_frame(&mut up)).await);
    }
    let expect = |fin, opcode, payload: &[u8]| RawFrame {
        fin,
        rsv1: false,
        opcode,
        payload: payload.to_vec(),
    };
    assert_eq!(
        frames,
        [
            expect(false, 0x1, b"hel"),
            expect(false, 0x0, b"lo "),
            expect(true, 0x0, b"world"),
        ]
    );
    up.write_all(&encode(false, false, 0x2, &[1, 2], None))
        .await
        .unwrap();
    up.write_all(&encode(true, false, 0x0, &[3], None))
        .await
        .unwrap();
    assert_eq!(
        client.await.unwrap(),
        [expect(false, 0x2, &[1, 2]), expect(true, 0x0, &[3])]
    );
}

#[tokio::test]
async fn fragmented_message_is_reassembled_by_a_real_upstream() {
    let (upstream, _events) = spawn_upstream().await;
    let proxy = proxy_to(upstream, ProxyPolicy::new()).await;
    let (mut ws, _) = connect(&format!("ws://{proxy}/ws")).await;
    ws.send(Message::Frame(Frame::message(
        "frag".as_bytes().to_vec(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        "mented".as_bytes().to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("fragmented"));
}

#[tokio::test]
async fn pings_from_either_side() {
    let (upstream, mut events) = spawn_upstream().await;
    let proxy = proxy_to(upstream, ProxyPolicy::new()).await;

    // Client ping: one pong, from the upstream.
    let (mut ws, _) = connect(&format!("ws://{proxy}/ws")).await;
    ws.send(Message::Ping(b"cli".as_slice().into()))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Message::Pong(b"cli".as_slice().into())
    );
    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Message::text("after"),
        "exactly one pong"
    );

    // Server ping: the client's pong reaches the upstream.
    let (mut ws, _) = connect(&format!("ws://{proxy}/ping-me")).await;
    assert_eq!(
        next_message(&mut ws).await,
        Message::Ping(b"srv".as_slice().into())
    );
    ws.flush().await.unwrap();
    loop {
        match within("pong at the upstream", events.recv()).await.unwrap() {
            Event::Pong(payload) => {
                assert_eq!(payload, b"srv");
                break;
            }
            Event::Handshake(..) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn close_code_and_reason_both_directions() {
    let (upstream, mut events) = spawn_upstream().await;
    let proxy = proxy_to(upstream, ProxyPolicy::new()).await;

    let (mut ws, _) = connect(&format!("ws://{proxy}/ws")).await;
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4001),
        reason: "client bye".into(),
    }))
    .await
    .unwrap();
    loop {
        match within("close at the upstream", events.recv())
            .await
            .unwrap()
        {
            Event::Closed(frame) => {
                assert_eq!(frame, Some((4001, "client bye".to_owned())));
                break;
            }
            Event::Handshake(..) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    let (mut ws, _) = connect(&format!("ws://{proxy}/close-me")).await;
    match next_message(&mut ws).await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4002);
            assert_eq!(frame.reason.as_str(), "server bye");
        }
        other => panic!("expected the server's close, got {other:?}"),
    }
}

// ===== Handshake negotiation =====

#[tokio::test]
async fn subprotocol_chosen_none_chosen_none_offered() {
    let (upstream, _events) = spawn_upstream().await;
    let proxy = proxy_to(upstream, ProxyPolicy::new()).await;
    let uri: http::Uri = format!("ws://{proxy}/ws").parse().unwrap();

    // Chosen: the upstream's choice reaches the client.
    let request = ClientRequestBuilder::new(uri.clone())
        .with_sub_protocol("superchat")
        .with_sub_protocol("other");
    let (_ws, response) = within("handshake", tokio_tungstenite::connect_async(request))
        .await
        .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "superchat");

    // Offered but none chosen (tungstenite refuses that answer itself: ask by hand).
    let (head, _conn) = raw_request(
        proxy,
        &ws_request("/ws", "Sec-WebSocket-Protocol: unknown-proto\r\n"),
    )
    .await;
    assert_eq!(head.status(), 101);
    assert!(!head.has("sec-websocket-protocol"), "{head:?}");

    // None offered.
    let (_ws, response) = connect(&uri.to_string()).await;
    assert!(!response.headers().contains_key("sec-websocket-protocol"));
}

#[tokio::test]
async fn permessage_deflate_negotiated_end_to_end() {
    let (upstream, mut conns) = raw_upstream().await;
    let proxy = proxy_to(upstream, ProxyPolicy::new()).await;
    let offered = "permessage-deflate; client_max_window_bits";
    let chosen = "permessage-deflate; server_no_context_takeover; client_max_window_bits=10";
    // "Hello" compressed with permessage-deflate (RFC 7692 §7.2.3.1).
    let hello: &[u8] = &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];

    let client = tokio::spawn(async move {
        let extra = format!("Sec-WebSocket-Extensions: {offered}\r\n");
        let (head, mut conn) = raw_request(proxy, &ws_request("/deflate", &extra)).await;
        assert_eq!(head.status(), 101);
        assert_eq!(head.get("sec-websocket-extensions"), Some(chosen));
        conn.write_all(&encode(true, true, 0x1, hello, Some([7, 7, 7, 7])))
            .await
            .unwrap();
        within("compressed frame", read_frame(&mut conn)).await
    });

    let (head, mut up) = within("upstream handshake", conns.recv()).await.unwrap();
    assert_eq!(head.get("sec-websocket-extensions"), Some(offered));
    let extra = format!("Sec-WebSocket-Extensions: {chosen}\r\n");
    up.write_all(ws_101(&head, &extra).as_bytes())
        .await
        .unwrap();
    let frame = within("compressed frame", read_frame(&mut up)).await;
    assert_eq!(
        (frame.rsv1, frame.opcode, frame.payload.as_slice()),
        (true, 1, hello)
    );
    up.write_all(&encode(true, true, 0x1, hello, None))
        .await
        .unwrap();
    let frame = client.await.unwrap();
    assert_eq!(
        (frame.rsv1, frame.opcode, frame.payload.as_slice()),
        (true, 1, hello)
    );
}

#[tokio::test]
async fn handshake_headers_pass_per_policy() {
    let (upstream, mut conns) = raw_upstream().await;
    let proxy = proxy_to(upstream, ProxyPolicy::new()).await;
    let client = tokio::spawn(async move {
        let request = "GET /chat?room=1 HTTP/1.1\r\nHost: proxy.test\r\nUpgrade: websocket\r\n\
             Connection: keep-alive, Upgrade, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Origin: https://app.example\r\nCookie: session=abc\r\nX-Custom: 42\r\n\r\n";
        let (head, _conn) = raw_request(proxy, request).await;
        head
    });
    let (head, mut up) = within("upstream handshake", conns.recv()).await.unwrap();
    assert_eq!(head.line, "GET /chat?room=1 HTTP/1.1");
    assert_eq!(head.get("upgrade"), Some("websocket"));
    assert!(
        head.get("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("upgrade")),
        "{head:?}"
    );
    assert_eq!(head.get("origin"), Some("https://app.example"));
    assert_eq!(head.get("cookie"), Some("session=abc"));
    assert_eq!(head.get("x-custom"), Some("42"));
    assert_eq!(head.get("sec-websocket-key"), Some(KEY));
    assert_eq!(head.get("sec-websocket-version"), Some("13"));
    assert!(!head.has("x-hop") && !head.has("keep-alive"), "{head:?}");
    assert!(head.has("x-forwarded-for"), "forwarding headers as usual");

    let extra = "Set-Cookie: ticket=1\r\nX-Upstream: yes\r\nConnection: X-Drop\r\nX-Drop: 1\r\n";
    up.write_all(ws_101(&head, extra).as_bytes()).await.unwrap();
    let answer = client.await.unwrap();
    assert_eq!(answer.status(), 101);
    assert_eq!(answer.get("set-cookie"), Some("ticket=1"));
    assert_eq!(answer.get("x-upstream"), Some("yes"));
    assert_eq!(
        answer.get("sec-websocket-accept"),
        Some(derive_accept_key(KEY.as_bytes()).as_str())
    );
    assert!(!answer.has("x-drop"), "{answer:?}");
}

#[tokio::test]
async fn invalid_101_is_502() {
    let (upstream, mut conns) = raw_upstream().await;
    let proxy = proxy_to(upstream, ProxyPolicy::new()).await;
    type Answer = fn(&Head) -> String;
    let cases: [(&str, Answer); 4] = [
        ("wrong accept", |_| {
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"
                .to_owned()
        }),
        ("unoffered subprotocol", |head| {
            ws_101(head, "Sec-WebSocket-Protocol: admin\r\n")
        }),
        ("unoffered extension", |head| {
            ws_101(head, "Sec-WebSocket-Extensions: x-evil\r\n")
        }),
        ("other protocol", |_| {
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
                .to_owned()
        }),
    ];
    for (what, answer) in cases {
        let client = tokio::spawn(async move {
            let extra = "Sec-WebSocket-Protocol: chat\r\n";
            raw_request(proxy, &ws_request("/bad", extra)).await.0
        });
        let (head, mut up) = within("upstream handshake", conns.recv()).await.unwrap();
        up.write_all(answer(&head).as_bytes()).await.unwrap();
        assert_eq!(client.await.unwrap().status(), 502, "{what}");
    }
}

#[tokio::test]
async fn unsolicited_101_is_502() {
    let (upstream, mut conns) = raw_upstream().await;
    let proxy = proxy_to(upstream, ProxyPolicy::new()).await;
    let client = tokio::spawn(async move {
        raw_request(proxy, "GET /plain HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
            .await
            .0
    });
    let (head, mut up) = within("upstream request", conns.recv()).await.unwrap();
    assert!(!head.has("upgrade"));
    up.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(client.await.unwrap().status(), 502);
}

#[tokio::test]
async fn upgrade_on_other_methods_is_an_ordinary_request() {
    let (upstream, mut conns) = raw_upstream().await;
    let proxy = proxy_to(upstream, ProxyPolicy::new()).await;
    let client = tokio::spawn(async move {
        raw_request(
            proxy,
            "POST /form HTTP/1.1\r\nHost: proxy.test\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nContent-Length: 2\r\n\r\nhi",
        )
        .await
        .0
    });
    let (head, mut up) = within("upstream request", conns.recv()).await.unwrap();
    assert!(head.line.starts_with("POST /form"));
    assert!(!head.has("upgrade") && !head.has("connection"), "{head:?}");
    up.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        .await
        .unwrap();
    assert_eq!(client.await.unwrap().status(), 200);
}

// ===== Failures =====

#[tokio::test]
async fn upstream_403_reaches_the_client() {
    let (upstream, _events) = spawn_upstream().await;
    let proxy = proxy_to(upstream, ProxyPolicy::new()).await;
    let (status, body) = refused(&format!("ws://{proxy}/forbidden")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, "forbidden by upstream");
    let (status, _) = refused(&format!("ws://{proxy}/missing")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn silent_upstream_is_504_within_the_timeout() {
    let (upstream, mut conns) = raw_upstream().await;
    let timeout = Duration::from_millis(300);
    let proxy = proxy_to(
        upstream,
        ProxyPolicy::new().with_websocket_connect_timeout(timeout),
    )
    .await;
    let started = Instant::now();
    let refusal = tokio::spawn(async move { refused(&format!("ws://{proxy}/ws")).await });
    // Hold the upstream connection open without answering.
    let (_head, _silent) = within("upstream handshake", conns.recv()).await.unwrap();
    let (status, _) = refusal.await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(elapsed >= timeout, "{elapsed:?}");
    assert!(elapsed < timeout + Duration::from_secs(2), "{elapsed:?}");
}

#[tokio::test]
async fn connect_failure_is_502() {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let proxy = proxy_to(closed, ProxyPolicy::new()).await;
    let (status, _) = refused(&format!("ws://{proxy}/ws")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
}

// ===== Mounting =====

#[tokio::test]
async fn mount_nest_fallback_and_route_parity() {
    let (upstream, mut events) = spawn_upstream().await;
    let target = format!("http://{upstream}");
    let app = Router::new()
        .merge(ReverseProxy::new("/chat", target.clone()))
        .nest(
            "/nested",
            Router::from(ReverseProxy::new("/", target.clone())),
        )
        .proxy_route("/route/{*rest}", target.clone())
        .fallback_service(ReverseProxy::new("/", target));
    let proxy = serve(app).await;
    for (path, upstream_path) in [
        ("/chat/ws", "/ws"),
        ("/nested/ws/n", "/ws/n"),
        ("/route/ws/r", "/ws/r"),
        ("/ws/fallback", "/ws/fallback"),
    ] {
        let (mut ws, _) = connect(&format!("ws://{proxy}{path}")).await;
        ws.send(Message::text(path)).await.unwrap();
        assert_eq!(next_message(&mut ws).await, Message::text(path));
        match within("handshake event", events.recv()).await.unwrap() {
            Event::Handshake(seen, _) => assert_eq!(seen, upstream_path, "{path}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

// ===== Other protocols, TLS, HTTP/2 =====

#[tokio::test]
async fn custom_upgrade_protocol_with_half_close() {
    let (upstream, _events) = spawn_upstream().await;
    let proxy = proxy_to(upstream, ProxyPolicy::new()).await;
    let (head, mut conn) = raw_request(
        proxy,
        "GET /echo-proto HTTP/1.1\r\nHost: proxy.test\r\nUpgrade: echo-proto\r\nConnection: upgrade\r\n\r\n",
    )
    .await;
    assert_eq!(head.status(), 101);
    assert_eq!(head.get("upgrade"), Some("echo-proto"));
    conn.write_all(b"ping over a custom protocol")
        .await
        .unwrap();
    let mut echoed = [0u8; 27];
    within("echo", conn.read_exact(&mut echoed)).await.unwrap();
    assert_eq!(&echoed, b"ping over a custom protocol");
    // Half-close: our side is done sending, the upstream's side still flows.
    conn.get_mut().shutdown().await.unwrap();
    let mut rest = Vec::new();
    within("rest after EOF", conn.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(rest, b"bye after your EOF");
}

#[cfg(feature = "tls")]
async fn spawn_tls_upstream(app: Router) -> SocketAddr {
    use tokio_rustls::rustls;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key.into())
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn wss_upstream_with_self_signed_certificate() {
    let (tx, _events) = mpsc::unbounded_channel();
    let upstream = spawn_tls_upstream(upstream_app(tx)).await;
    // The caller's client: certificate checks off, HTTP/1.1 only by ALPN (an upstream
    // that picks h2 cannot upgrade).
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(create_dangerous_rustls_config())
        .https_or_http()
        .enable_http1()
        .build();
    let client =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build::<_, Body>(https);
    let proxy =
        ReverseProxy::new_with_client("/", format!("wss://localhost:{}", upstream.port()), client);
    let proxy = serve(proxy.into()).await;
    let (mut ws, _) = connect(&format!("ws://{proxy}/ws")).await;
    ws.send(Message::text("over TLS")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("over TLS"));
}

#[tokio::test]
async fn websocket_over_http2_extended_connect() {
    let (upstream, _events) = spawn_upstream().await;
    let proxy = proxy_to(upstream, ProxyPolicy::new()).await;
    let io = TokioIo::new(TcpStream::connect(proxy).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Body>(io)
        .await
        .unwrap();
    tokio::spawn(conn);
    // The server's SETTINGS (with ENABLE_CONNECT_PROTOCOL) arrive with its preface;
    // a first request makes sure they have been read.
    let warmup = http::Request::get("/missing").body(Body::empty()).unwrap();
    within("warm-up", sender.send_request(warmup))
        .await
        .unwrap();

    let request = http::Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://{proxy}/ws"))
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "chat")
        .body(Body::empty())
        .unwrap();
    let mut response = within("extended CONNECT", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat");
    assert!(!response.headers().contains_key("sec-websocket-accept"));
    let upgraded = within("h2 upgrade", hyper::upgrade::on(&mut response))
        .await
        .unwrap();
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    ws.send(Message::text("over h2")).await.unwrap();
    let echoed = within("h2 echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(echoed, Message::text("over h2"));

    // A classic CONNECT is still refused.
    let connect = http::Request::builder()
        .method(Method::CONNECT)
        .uri("example.com:443")
        .body(Body::empty())
        .unwrap();
    let response = within("CONNECT", sender.send_request(connect))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_IMPLEMENTED);
}

#[tokio::test]
async fn in_process_call_answers_101_and_closes_the_upstream() {
    let (upstream, mut conns) = raw_upstream().await;
    let proxy = ReverseProxy::new("/", format!("http://{upstream}"));
    let request = http::Request::get("/ws")
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-key", KEY)
        .header("sec-websocket-version", "13")
        .body(Body::empty())
        .unwrap();
    let call = tokio::spawn(proxy.oneshot(request));
    let (head, mut up) = within("upstream handshake", conns.recv()).await.unwrap();
    up.write_all(ws_101(&head, "").as_bytes()).await.unwrap();
    let response = within("in-process answer", call).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(closed_by_peer(&mut up).await);
}

// ===== Tunnel lifecycle =====

#[tokio::test]
async fn tunnel_count_returns_to_zero_after_both_sides_close() {
    let (upstream, _events) = spawn_upstream().await;
    let tunnels = UpgradeTunnels::new();
    let policy = ProxyPolicy::new().with_upgrade_tunnels(tunnels.clone());
    let proxy = proxy_to(upstream, policy).await;

    // Client-initiated close.
    let (mut ws, _) = connect(&format!("ws://{proxy}/ws")).await;
    assert_eq!(tunnels.active(), 1);
    ws.send(Message::text("x")).await.unwrap();
    next_message(&mut ws).await;
    ws.close(None).await.unwrap();
    assert!(ends(&mut ws).await);
    drop(ws);
    within("drain", tunnels.drained()).await;
    assert_eq!((tunnels.active(), tunnels.total()), (0, 1));
    assert!(tunnels.bytes_to_upstream() > 0 && tunnels.bytes_to_client() > 0);

    // Upstream-initiated close.
    let (mut ws, _) = connect(&format!("ws://{proxy}/close-me")).await;
    assert_eq!(tunnels.active(), 1);
    assert!(ends(&mut ws).await);
    drop(ws);
    within("drain", tunnels.drained()).await;
    assert_eq!((tunnels.active(), tunnels.total()), (0, 2));
}

#[tokio::test]
async fn idle_timeout_closes_an_idle_tunnel() {
    let (upstream, _events) = spawn_upstream().await;
    let tunnels = UpgradeTunnels::new();
    let idle = Duration::from_millis(300);
    let policy = ProxyPolicy::new()
        .with_upgrade_idle_timeout(idle)
        .with_upgrade_tunnels(tunnels.clone());
    let proxy = proxy_to(upstream, policy).await;
    let (mut ws, _) = connect(&format!("ws://{proxy}/ws")).await;

    // Traffic more often than the timeout keeps it open past several timeouts.
    let started = Instant::now();
    let mut last_traffic = Instant::now();
    while started.elapsed() < idle * 3 {
        tokio::time::sleep(idle / 3).await;
        ws.send(Message::text("keepalive")).await.unwrap();
        assert_eq!(next_message(&mut ws).await, Message::text("keepalive"));
        last_traffic = Instant::now();
    }
    assert_eq!(tunnels.active(), 1);

    // Then silence: the proxy closes it, an idle timeout after the last byte.
    assert!(within("idle close", ends(&mut ws)).await);
    let waited = last_traffic.elapsed();
    assert!(waited >= idle, "{waited:?}");
    assert!(waited < idle + Duration::from_secs(2), "{waited:?}");
    within("drain", tunnels.drained()).await;
}

#[tokio::test]
async fn close_all_closes_tunnels_and_refuses_new_upgrades() {
    let (upstream, _events) = spawn_upstream().await;
    let tunnels = UpgradeTunnels::new();
    let policy = ProxyPolicy::new().with_upgrade_tunnels(tunnels.clone());
    let proxy = proxy_to(upstream, policy).await;
    let (mut a, _) = connect(&format!("ws://{proxy}/ws")).await;
    let (mut b, _) = connect(&format!("ws://{proxy}/ws")).await;
    assert_eq!(tunnels.active(), 2);
    tunnels.close_all();
    assert!(within("close a", ends(&mut a)).await);
    assert!(within("close b", ends(&mut b)).await);
    within("drain", tunnels.drained()).await;
    let (status, _) = refused(&format!("ws://{proxy}/ws")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn tunnel_guard_is_held_until_the_tunnel_closes() {
    let (upstream, _events) = spawn_upstream().await;
    let (released_tx, mut released) = mpsc::unbounded_channel::<oneshot::Receiver<()>>();
    let proxy = ReverseProxy::new("/", format!("http://{upstream}"));
    let app = Router::from(proxy).layer(axum::middleware::map_request(move |mut req: Request| {
        let released_tx = released_tx.clone();
        async move {
            // The guard holds a sender; its receiver resolves when it is dropped.
            let (tx, rx) = oneshot::channel::<()>();
            let _ = released_tx.send(rx);
            req.extensions_mut().insert(TunnelGuard::new(tx));
            req
        }
    }));
    let proxy = serve(app).await;
    let (mut ws, _) = connect(&format!("ws://{proxy}/ws")).await;
    let mut guard = within("guard", released.recv()).await.unwrap();
    ws.send(Message::text("x")).await.unwrap();
    next_message(&mut ws).await;
    assert_eq!(
        guard.try_recv(),
        Err(oneshot::error::TryRecvError::Empty),
        "held while the tunnel is open"
    );
    ws.close(None).await.unwrap();
    assert!(ends(&mut ws).await);
    drop(ws);
    assert!(within("release", &mut guard).await.is_err(), "released");
}

#[tokio::test]
async fn thousand_concurrent_sockets() {
    const SOCKETS: usize = 1000;
    // Client, proxy (both sides) and upstream sockets all live in this process.
    if let Some(limit) = open_file_limit() {
        assert!(
            limit >= 4 * SOCKETS as u64 + 200,
            "this test needs about {} file descriptors, the limit is {limit}: \
             raise it with `ulimit -n 8192` (as .ci/run does)",
            4 * SOCKETS + 200
        );
    }
    let (upstream, _events) = spawn_upstream().await;
    let tunnels = UpgradeTunnels::new();
    let proxy = proxy_to(
        upstream,
        ProxyPolicy::new().with_upgrade_tunnels(tunnels.clone()),
    )
    .await;
    let url = format!("ws://{proxy}/ws");
    let started = Instant::now();
    let clients: Vec<_> = (0..SOCKETS)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
                let text = format!("socket {i}");
                ws.send(Message::text(text.clone())).await.unwrap();
                assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
                ws
            })
        })
        .collect();
    let mut sockets = Vec::with_capacity(SOCKETS);
    for client in clients {
        sockets.push(
            tokio::time::timeout(Duration::from_secs(60), client)
                .await
                .expect("1000 sockets within 60 s")
                .unwrap(),
        );
    }
    assert_eq!(tunnels.active(), SOCKETS, "all open at once");
    for ws in &mut sockets {
        ws.close(None).await.unwrap();
    }
    drop(sockets);
    tokio::time::timeout(Duration::from_secs(30), tunnels.drained())
        .await
        .expect("all tunnels closed");
    assert_eq!(tunnels.total(), SOCKETS as u64);
    eprintln!(
        "{SOCKETS} sockets opened, echoed and closed in {:?}",
        started.elapsed()
    );
}

/// The soft limit on open files, where the platform says (Linux).
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
