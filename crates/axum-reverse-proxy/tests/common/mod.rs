//! Shared harness for the integration tests: client → proxy → origin, where the origin
//! records exactly what it received.
//!
//! - [`Upstream`]: a recording origin on `127.0.0.1:0` (HTTP/1.1 and h2c) that captures
//!   method, raw path and query, version, headers in order, body bytes, frame boundaries
//!   and trailers, then answers as the test's responder says.
//! - [`RawUpstream`]: an origin that writes scripted bytes, for malformed or truncated
//!   answers and hop-by-hop response headers.
//! - [`spawn_proxy`]: serve a router with `ConnectInfo<SocketAddr>`, as users do.
//! - [`RawClient`]: a tiny HTTP/1.1 client over raw TCP, for byte-level checks that
//!   reqwest would normalise away.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type origins answer with and the h2 client sends.
pub type UpBody = BoxBody<Bytes, BoxError>;

/// Upper bound for any single network step: a broken proxy fails a test, never hangs it.
pub const STEP: Duration = Duration::from_secs(10);
/// Body bytes an [`Upstream`] keeps per request (the rest is only counted).
const BODY_CAP: usize = 1 << 20;
/// Frame sizes an [`Upstream`] keeps per request.
const FRAMES_CAP: usize = 1 << 16;

/// Await `f`, panicking with `what` if it takes longer than [`STEP`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(STEP, f).await {
        Ok(out) => out,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

// ===== Bodies =====

pub fn full(data: impl Into<Bytes>) -> UpBody {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

pub fn empty() -> UpBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// A body whose frames are whatever the test sends on the returned channel; it ends
/// when the sender is dropped.
pub fn channel_body() -> (mpsc::UnboundedSender<Frame<Bytes>>, UpBody) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame<Bytes>>();
    let stream = async_stream::stream! {
        while let Some(frame) = rx.recv().await {
            yield Ok::<_, BoxError>(frame);
        }
    };
    (tx, StreamBody::new(stream).boxed())
}

// ===== Recording upstream =====

/// One request as the origin received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Index of the TCP connection it came on (0 for the first accepted).
    pub conn: usize,
    pub method: String,
    /// Path and query exactly as on the request line (or `:path`).
    pub target: String,
    pub version: Version,
    /// Header lines in the order hyper kept them; values as raw bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The first [`BODY_CAP`] bytes of the body.
    pub body: Vec<u8>,
    pub body_len: u64,
    /// Sizes of the data frames, in order (the first [`FRAMES_CAP`]).
    pub frames: Vec<usize>,
    pub trailers: Option<HeaderMap>,
    /// Set when reading the body failed (the peer aborted it).
    pub body_error: Option<String>,
}

impl Recorded {
    /// The first value of `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| std::str::from_utf8(v).expect("header value is not UTF-8"))
    }

    /// Every line of `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }
}

type Responder =
    Arc<dyn Fn(Recorded) -> Pin<Box<dyn Future<Output = Response<UpBody>> + Send>> + Send + Sync>;

/// A recording origin. Every request is read to its end, recorded (available from
/// [`next`](Self::next)), and then answered by the responder.
pub struct Upstream {
    pub addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<Recorded>,
    /// The size of every data frame, as it arrives (before the body ends).
    pub frames: mpsc::UnboundedReceiver<usize>,
    connections: Arc<AtomicUsize>,
}

impl Upstream {
    /// An origin answering `200 ok` with `x-upstream-target: <target>`.
    pub async fn start() -> Upstream {
        Self::start_with(|req| async move {
            Response::builder()
                .header("x-upstream-target", req.target.as_str())
                .body(full("ok"))
                .unwrap()
        })
        .await
    }

    /// An origin answering with `respond`.
    pub async fn start_with<F, Fut>(respond: F) -> Upstream
    where
        F: Fn(Recorded) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<UpBody>> + Send + 'static,
    {
        let respond: Responder = Arc::new(move |req| Box::pin(respond(req)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (req_tx, requests) = mpsc::unbounded_channel();
        let (frame_tx, frames) = mpsc::unbounded_channel();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let conn = counter.fetch_add(1, Ordering::SeqCst);
                let (respond, req_tx, frame_tx) =
                    (Arc::clone(&respond), req_tx.clone(), frame_tx.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (respond, req_tx, frame_tx) =
                            (Arc::clone(&respond), req_tx.clone(), frame_tx.clone());
                        async move {
                            let recorded = record(conn, req, &frame_tx).await;
                            let _ = req_tx.send(recorded.clone());
                            Ok::<_, Infallible>(respond(recorded).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            requests,
            frames,
            connections,
        }
    }

    /// `http://127.0.0.1:<port>` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The next recorded request (panics after [`STEP`]).
    pub async fn next(&mut self) -> Recorded {
        within("the upstream to receive a request", self.requests.recv())
            .await
            .expect("upstream stopped")
    }

    /// A request already recorded, if any.
    pub fn try_next(&mut self) -> Option<Recorded> {
        self.requests.try_recv().ok()
    }

    /// How many TCP connections the origin has accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn record(
    conn: usize,
    req: Request<Incoming>,
    frames_tx: &mpsc::UnboundedSender<usize>,
) -> Recorded {
    let (parts, mut body) = req.into_parts();
    let mut rec = Recorded {
        conn,
        method: parts.method.to_string(),
        target: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.to_string(), |pq| pq.as_str().to_owned()),
        version: parts.version,
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
        body: Vec::new(),
        body_len: 0,
        frames: Vec::new(),
        trailers: None,
        body_error: None,
    };
    // HTTP/2 has no Host line: record `:authority` as `host` so tests can treat both alike.
    if parts.version == Version::HTTP_2
        && !rec.has("host")
        && let Some(authority) = parts.uri.authority()
    {
        rec.headers
            .insert(0, ("host".into(), authority.as_str().as_bytes().to_vec()));
    }
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => {
                    let _ = frames_tx.send(data.len());
                    if rec.frames.len() < FRAMES_CAP {
                        rec.frames.push(data.len());
                    }
                    let room = BODY_CAP.saturating_sub(rec.body.len());
                    rec.body.extend_from_slice(&data[..room.min(data.len())]);
                    rec.body_len += data.len() as u64;
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        rec.trailers = Some(trailers);
                    }
                }
            },
            Err(err) => {
                rec.body_error = Some(err.to_string());
                break;
            }
        }
    }
    rec
}

// ===== Raw upstream =====

/// What a [`RawUpstream`] saw.
#[derive(Debug)]
pub enum RawEvent {
    /// A request head (request line and headers, up to the blank line).
    Request(Vec<u8>),
    /// The origin closed a connection after answering.
    Closed,
}

/// An origin that answers the n-th request (counting from 0, across connections) with
/// `script(n)`: the bytes to write, and whether to close the connection afterwards.
pub struct RawUpstream {
    pub addr: SocketAddr,
    pub events: mpsc::UnboundedReceiver<RawEvent>,
}

impl RawUpstream {
    pub async fn start<F>(script: F) -> RawUpstream
    where
        F: Fn(usize) -> (Vec<u8>, bool) + Send + Sync + 'static,
    {
        let script = Arc::new(script);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let counter = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (script, tx, counter) = (Arc::clone(&script), tx.clone(), counter.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(head) = read_request(&mut stream, &mut buf).await else {
                            return;
                        };
                        let _ = tx.send(RawEvent::Request(head));
                        let (reply, close) = script(counter.fetch_add(1, Ordering::SeqCst));
                        if stream.write_all(&reply).await.is_err() {
                            return;
                        }
                        if close {
                            let _ = stream.shutdown().await;
                            drop(stream);
                            let _ = tx.send(RawEvent::Closed);
                            return;
                        }
                    }
                });
            }
        });
        RawUpstream { addr, events }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn next_event(&mut self) -> RawEvent {
        within("a raw upstream event", self.events.recv())
            .await
            .expect("raw upstream stopped")
    }
}

/// Read one request (head, and a Content-Length or chunked body) from `stream`; `None`
/// at end of stream. Returns the head.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        fill(stream, buf).await?;
    };
    let head: Vec<u8> = buf.drain(..end).collect();
    let (_, headers) = parse_head(&head);
    if let Some(len) = header_in(&headers, "content-length") {
        let len: usize = len.trim().parse().ok()?;
        while buf.len() < len {
            fill(stream, buf).await?;
        }
        buf.drain(..len);
    } else if header_in(&headers, "transfer-encoding").is_some() {
        loop {
            if let Some(i) = find(buf, b"0\r\n\r\n") {
                buf.drain(..i + 5);
                break;
            }
            fill(stream, buf).await?;
        }
    }
    Some(head)
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Split a message head into its first line and `(lowercased name, value)` lines.
fn parse_head(head: &[u8]) -> (String, Vec<(String, Vec<u8>)>) {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let colon = l.iter().position(|&b| b == b':')?;
            let name = String::from_utf8_lossy(&l[..colon]).to_ascii_lowercase();
            let value = l[colon + 1..].trim_ascii().to_vec();
            Some((name, value))
        })
        .collect();
    (first, headers)
}

fn header_in(headers: &[(String, Vec<u8>)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

// ===== Proxy =====

/// Serve `router` on `127.0.0.1:0` with the peer address recorded, as the docs advise.
pub async fn spawn_proxy(router: Router) -> SocketAddr {
    spawn_proxy_on("127.0.0.1:0", router).await
}

/// Like [`spawn_proxy`], on another local address (such as `[::1]:0`).
pub async fn spawn_proxy_on(bind: &str, router: Router) -> SocketAddr {
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// A reqwest client that never goes through an environment proxy.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// An HTTP/2 (h2c prior knowledge) connection to `addr`.
pub async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<UpBody> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

// ===== Raw client =====

/// A response as read off the wire.
#[derive(Debug, Default)]
pub struct RawResponse {
    pub status: u16,
    /// The status line, e.g. `HTTP/1.1 200 OK`.
    pub status_line: String,
    /// Header lines in wire order, names lowercased, values raw.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// Chunk sizes when the body was chunked.
    pub chunks: Vec<usize>,
    /// Trailer lines of a chunked body.
    pub trailers: Vec<(String, Vec<u8>)>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        header_in(&self.headers, name)
    }

    pub fn header_all(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A minimal HTTP/1.1 client on one TCP connection.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        RawClient {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn fill(&mut self) -> bool {
        within(
            "bytes from the proxy",
            fill(&mut self.stream, &mut self.buf),
        )
        .await
        .is_some()
    }

    /// Read a response head (status line and headers).
    pub async fn read_head(&mut self) -> RawResponse {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.fill().await,
                "connection closed before a response head"
            );
        };
        let head: Vec<u8> = self.buf.drain(..end).collect();
        let (status_line, headers) = parse_head(&head);
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        RawResponse {
            status,
            status_line,
            headers,
            ..RawResponse::default()
        }
    }

    /// Read a full response. `head_request`: the request was HEAD (no body follows).
    pub async fn read_response(&mut self, head_request: bool) -> RawResponse {
        let mut res = self.read_head().await;
        while (100..200).contains(&res.status) && res.status != 101 {
            res = self.read_head().await;
        }
        if head_request || res.status == 204 || res.status == 304 {
            return res;
        }
        if let Some(len) = res.header("content-length") {
            let len: usize = len.trim().parse().unwrap();
            while self.buf.len() < len {
                assert!(self.fill().await, "connection closed inside a body");
            }
            res.body = self.buf.drain(..len).collect();
        } else if res
            .header("transfer-encoding")
            .is_some_and(|te| te.contains("chunked"))
        {
            while let Some(chunk) = self.next_chunk(&mut res.trailers).await {
                res.chunks.push(chunk.len());
                res.body.extend(chunk);
            }
        } else {
            res.body = self.read_to_end().await;
        }
        res
    }

    async fn read_line(&mut self) -> Vec<u8> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return line[..i].to_vec();
            }
            assert!(self.fill().await, "connection closed inside a chunked body");
        }
    }

    /// The next chunk of a chunked body whose head was read with
    /// [`read_head`](Self::read_head): its data, or `None` after the last chunk.
    pub async fn read_chunk(&mut self) -> Option<Vec<u8>> {
        self.next_chunk(&mut Vec::new()).await
    }

    async fn next_chunk(&mut self, trailers: &mut Vec<(String, Vec<u8>)>) -> Option<Vec<u8>> {
        let line = self.read_line().await;
        let size = String::from_utf8_lossy(&line);
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            loop {
                let line = self.read_line().await;
                if line.is_empty() {
                    return None;
                }
                trailers.extend(parse_head(&[b"x\r\n".as_slice(), &line].concat()).1);
            }
        }
        while self.buf.len() < size + 2 {
            assert!(self.fill().await, "connection closed inside a chunk");
        }
        let data = self.buf.drain(..size).collect();
        self.buf.drain(..2);
        Some(data)
    }

    /// The bytes of a response head, or whatever arrived before the peer closed.
    pub async fn read_head_bytes(&mut self) -> Vec<u8> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                return self.buf.drain(..i + 4).collect();
            }
            if !self.fill().await {
                return std::mem::take(&mut self.buf);
            }
        }
    }

    /// Everything until the peer closes (what is buffered included).
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }
}

/// Send one raw request on a new connection and read the response.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut client = RawClient::connect(addr).await;
    client.send(request).await;
    let head_request = request.starts_with(b"HEAD ");
    client.read_response(head_request).await
}

/// `GET <target>` with `Host: proxy.example` on a new connection.
pub async fn raw_get(addr: SocketAddr, target: &str) -> RawResponse {
    let request = format!("GET {target} HTTP/1.1\r\nHost: proxy.example\r\n\r\n");
    raw_request(addr, request.as_bytes()).await
}

/// An empty response with `status`.
pub fn status(status: StatusCode) -> Response<UpBody> {
    Response::builder().status(status).body(empty()).unwrap()
}
