//! The traffic: paced workers of each class, every outcome checked and classified.
//!
//! Routes (see `run.rs` for the configuration): `/…` goes to the pool `churn` (HTTP/1.1
//! to the upstreams), `/h2up/…` to `churn_h2` (h2c to the same upstreams); both follow
//! etcd while the runner adds, removes, restarts and kills upstreams. `/f/…` goes to the
//! fault upstream and `/f/refuse` to a port where nothing listens.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{MissedTickBehavior, interval, timeout};
use tokio_tungstenite::tungstenite::Message;

use crate::report::{Class, Failure, Stats};
use crate::{MIB, Rng, SMALL, pattern};

type ReqBody = Full<Bytes>;

const HOST: &str = "soak.test";
/// Longest a normal request may take, body included.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Longest a request to a fault route may take (the pool's timeout is 1 s).
const FAULT_DEADLINE: Duration = Duration::from_secs(5);
const POST_BYTES: usize = 16 * 1024;

/// What the workers share.
pub struct Load {
    pub proxy: SocketAddr,
    pub stats: Arc<Stats>,
    /// No request starts after this.
    pub deadline: Instant,
    /// Multiplies every rate.
    pub scale: f64,
    pub seed: u64,
    big: Bytes,
    h2: H2Conn,
}

impl Load {
    pub fn new(
        proxy: SocketAddr,
        stats: Arc<Stats>,
        deadline: Instant,
        scale: f64,
        seed: u64,
    ) -> Load {
        Load {
            proxy,
            stats,
            deadline,
            scale,
            seed,
            big: Bytes::from(pattern(MIB)),
            h2: H2Conn {
                addr: proxy,
                sender: tokio::sync::Mutex::new(None),
            },
        }
    }

    /// Start every worker; they end by themselves after the deadline.
    pub fn spawn(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        let mut spawn = |f: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>| {
            tasks.push(tokio::spawn(f));
        };
        for i in 0..4 {
            let path = if i % 2 == 0 { "/small" } else { "/h2up/small" };
            spawn(Box::pin(Arc::clone(self).keep_alive(path, 100.0)));
        }
        for i in 0..2u64 {
            let path = if i == 0 { "/echo" } else { "/h2up/echo" };
            spawn(Box::pin(Arc::clone(self).post(path, 50.0, i)));
        }
        for i in 0..2 {
            let path = if i == 0 { "/small" } else { "/h2up/small" };
            spawn(Box::pin(Arc::clone(self).new_conn(path, 25.0)));
        }
        for i in 0..4 {
            let path = if i % 2 == 0 { "/small" } else { "/h2up/small" };
            spawn(Box::pin(Arc::clone(self).h2_get(path, 50.0)));
        }
        for i in 0..2 {
            let path = if i == 0 { "/1m" } else { "/h2up/1m" };
            spawn(Box::pin(Arc::clone(self).stream(path, 4.0)));
        }
        for i in 0..2u64 {
            spawn(Box::pin(Arc::clone(self).websocket(i)));
        }
        spawn(Box::pin(Arc::clone(self).faults(5.0)));
        tasks
    }

    fn pacer(&self, per_second: f64) -> Pacer {
        let period = Duration::from_secs_f64(1.0 / (per_second * self.scale).max(0.01));
        let mut tick = interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Pacer {
            tick,
            deadline: self.deadline,
        }
    }

    // ===== the classes =====

    async fn keep_alive(self: Arc<Self>, path: &'static str, rate: f64) {
        let mut pacer = self.pacer(rate);
        let mut conn = KeepAlive::new(self.proxy);
        while pacer.next().await {
            let began = Instant::now();
            let result = timeout(REQUEST_DEADLINE, async {
                let response = conn.send(get(path)).await?;
                expect_body(response, SMALL).await
            })
            .await
            .unwrap_or_else(|_| Err(deadline_failure(&mut conn)));
            let result = result.map_err(|f| f.at(&format!("GET {path}")));
            self.stats.churned(Class::KeepAlive, began, result);
        }
    }

    async fn post(self: Arc<Self>, path: &'static str, rate: f64, worker: u64) {
        let mut pacer = self.pacer(rate);
        let mut conn = KeepAlive::new(self.proxy);
        let mut rng = Rng::new(self.seed ^ (0x9e37_79b9 + worker));
        let mut body = vec![0u8; POST_BYTES];
        while pacer.next().await {
            rng.fill(&mut body);
            let body = Bytes::copy_from_slice(&body);
            let began = Instant::now();
            let result = timeout(REQUEST_DEADLINE, async {
                let req = request(Method::POST, path, body.clone());
                let response = conn.send(req).await?;
                expect_body(response, &body).await
            })
            .await
            .unwrap_or_else(|_| Err(deadline_failure(&mut conn)));
            let result = result.map_err(|f| f.at(&format!("POST {path}")));
            self.stats.churned(Class::Post, began, result);
        }
    }

    async fn new_conn(self: Arc<Self>, path: &'static str, rate: f64) {
        let mut pacer = self.pacer(rate);
        while pacer.next().await {
            let began = Instant::now();
            let result = timeout(REQUEST_DEADLINE, async {
                let mut conn = KeepAlive::new(self.proxy);
                let mut req = get(path);
                req.headers_mut()
                    .insert(hyper::header::CONNECTION, "close".parse().unwrap());
                let response = conn.send(req).await?;
                expect_body(response, SMALL).await
            })
            .await
            .unwrap_or_else(|_| {
                Err(Failure::new(
                    "client deadline",
                    "no complete answer in 10 s",
                ))
            });
            let result = result.map_err(|f| f.at(&format!("GET {path}")));
            self.stats.churned(Class::NewConn, began, result);
        }
    }

    async fn h2_get(self: Arc<Self>, path: &'static str, rate: f64) {
        let mut pacer = self.pacer(rate);
        while pacer.next().await {
            let began = Instant::now();
            let result = timeout(REQUEST_DEADLINE, async {
                let response = self.h2.send(h2_request(Method::GET, path)).await?;
                expect_body(response, SMALL).await
            })
            .await
            .unwrap_or_else(|_| {
                Err(Failure::new(
                    "client deadline",
                    "no complete answer in 10 s",
                ))
            });
            let result = result.map_err(|f| f.at(&format!("GET {path}")));
            self.stats.churned(Class::H2, began, result);
        }
    }

    async fn stream(self: Arc<Self>, path: &'static str, rate: f64) {
        let mut pacer = self.pacer(rate);
        let mut conn = KeepAlive::new(self.proxy);
        while pacer.next().await {
            let began = Instant::now();
            let result = timeout(REQUEST_DEADLINE, async {
                let response = conn.send(get(path)).await?;
                expect_body(response, &self.big).await
            })
            .await
            .unwrap_or_else(|_| Err(deadline_failure(&mut conn)));
            let result = result.map_err(|f| f.at(&format!("GET {path}")));
            self.stats.churned(Class::Stream, began, result);
        }
    }

    /// Sessions one after another: open, ten echoed messages 100 ms apart, close.
    async fn websocket(self: Arc<Self>, worker: u64) {
        let mut rng = Rng::new(self.seed ^ (0x51f1_5eed + worker));
        while Instant::now() < self.deadline {
            let began = Instant::now();
            let result = timeout(REQUEST_DEADLINE, ws_session(self.proxy, &mut rng))
                .await
                .unwrap_or_else(|_| {
                    Err(Failure::new("client deadline", "session longer than 10 s"))
                });
            self.stats.churned(Class::WebSocket, began, result);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The fault routes in turn, over new HTTP/1.1 connections and over the h2c
    /// connection the `h2c GET` class uses (a failed stream must not hurt the others).
    async fn faults(self: Arc<Self>, rate: f64) {
        const PATHS: [&str; 6] = [
            "/f/reset-early",
            "/f/reset-mid",
            "/f/close-early",
            "/f/garbage",
            "/f/hang",
            "/f/refuse",
        ];
        let mut pacer = self.pacer(rate);
        let mut turn = 0usize;
        while pacer.next().await {
            let path = PATHS[turn % PATHS.len()];
            let over_h2 = (turn / PATHS.len()) % 2 == 1;
            turn += 1;
            let began = Instant::now();
            let outcome = timeout(FAULT_DEADLINE, async {
                let response = if over_h2 {
                    self.h2.send(h2_request(Method::GET, path)).await
                } else {
                    KeepAlive::new(self.proxy).send(get(path)).await
                };
                let response = response.map_err(|f| (f, false))?;
                judge_fault(path, response).await
            })
            .await
            .unwrap_or_else(|_| {
                Err((
                    Failure::new(format!("client deadline on {path}"), "no answer in 5 s"),
                    false,
                ))
            });
            self.stats.fault(began, outcome);
        }
    }
}

/// What each fault route may answer: the failure it explains is expected, anything else
/// (another status, a hung request, a complete body where the upstream reset) is not.
async fn judge_fault(path: &str, response: Response<Incoming>) -> Result<(), (Failure, bool)> {
    let status = response.status();
    let wanted: &[StatusCode] = match path {
        "/f/hang" => &[StatusCode::GATEWAY_TIMEOUT],
        "/f/reset-mid" => &[StatusCode::OK, StatusCode::BAD_GATEWAY],
        _ => &[StatusCode::BAD_GATEWAY],
    };
    if !wanted.contains(&status) {
        return Err((
            Failure::new(format!("status {} on {path}", status.as_u16()), ""),
            false,
        ));
    }
    let body = response.into_body().collect().await;
    match (status, body) {
        (StatusCode::OK, Ok(_)) => Err((
            Failure::new(format!("complete body on {path}"), "the upstream reset it"),
            false,
        )),
        (StatusCode::OK, Err(e)) => Err((
            Failure::new(format!("body cut on {path}"), e.to_string()),
            true,
        )),
        (_, Ok(_)) => Err((
            Failure::new(format!("status {} on {path}", status.as_u16()), ""),
            true,
        )),
        (_, Err(e)) => Err((
            Failure::new(format!("error body cut on {path}"), e.to_string()),
            false,
        )),
    }
}

async fn ws_session(proxy: SocketAddr, rng: &mut Rng) -> Result<(), Failure> {
    let tcp = TcpStream::connect(proxy)
        .await
        .map_err(|e| Failure::new("connect to proxy", e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{HOST}/ws"), tcp)
        .await
        .map_err(|e| Failure::new("ws handshake", e.to_string()))?;
    for i in 0..10 {
        let len = 1 + rng.below(8192) as usize;
        let message = if i % 2 == 0 {
            let text: String = (0..len)
                .map(|j| (b'a' + ((i + j) % 26) as u8) as char)
                .collect();
            Message::text(text)
        } else {
            let mut bytes = vec![0u8; len];
            rng.fill(&mut bytes);
            Message::binary(bytes)
        };
        ws.send(message.clone())
            .await
            .map_err(|e| Failure::new("ws send", e.to_string()))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(echo)) if echo == message => break,
                Some(Ok(other)) => {
                    return Err(Failure::new(
                        "ws wrong echo",
                        format!("message {i}: got {} bytes", other.len()),
                    ));
                }
                Some(Err(e)) => return Err(Failure::new("ws receive", e.to_string())),
                None => {
                    return Err(Failure::new(
                        "ws closed early",
                        format!("after {i} messages"),
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ws.close(None)
        .await
        .map_err(|e| Failure::new("ws close", e.to_string()))?;
    loop {
        match ws.next().await {
            None => return Ok(()),
            Some(Ok(_)) => continue,
            // The peer closed the TCP connection right after the close frames.
            Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed)) => return Ok(()),
            Some(Err(e)) => return Err(Failure::new("ws close handshake", e.to_string())),
        }
    }
}

// ===== requests and responses =====

fn request(method: Method, path: &str, body: Bytes) -> Request<ReqBody> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, HOST)
        .body(Full::new(body))
        .expect("request")
}

fn get(path: &str) -> Request<ReqBody> {
    request(Method::GET, path, Bytes::new())
}

fn h2_request(method: Method, path: &str) -> Request<ReqBody> {
    Request::builder()
        .method(method)
        .uri(format!("http://{HOST}{path}"))
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// A 200 whose body is exactly `expected`, checked as it streams in.
async fn expect_body(response: Response<Incoming>, expected: &[u8]) -> Result<(), Failure> {
    let status = response.status();
    let upstream = response
        .headers()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let mut body = response.into_body();
    if status != StatusCode::OK {
        let text = match body.collect().await {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()[..]).trim().to_owned(),
            Err(e) => format!("(body error: {e})"),
        };
        return Err(Failure::new(
            format!("status {}", status.as_u16()),
            format!("upstream {upstream}: {text}"),
        ));
    }
    let mut at = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Failure::new(
                "body cut",
                format!(
                    "upstream {upstream}: after {at} of {} bytes: {e}",
                    expected.len()
                ),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let end = at + data.len();
        if end > expected.len() {
            return Err(Failure::new(
                "body too long",
                format!("upstream {upstream}: {end}+ of {} bytes", expected.len()),
            ));
        }
        if data[..] != expected[at..end] {
            return Err(Failure::new(
                "wrong body bytes",
                format!("upstream {upstream}: in {at}..{end}"),
            ));
        }
        at = end;
    }
    if at != expected.len() {
        return Err(Failure::new(
            "body short",
            format!("upstream {upstream}: {at} of {} bytes", expected.len()),
        ));
    }
    Ok(())
}

fn hyper_failure(e: &hyper::Error) -> Failure {
    let kind = if e.is_incomplete_message() {
        "closed before the response"
    } else if e.is_canceled() {
        "request canceled"
    } else if e.is_closed() {
        "connection closed"
    } else if e.is_parse() {
        "unparsable response"
    } else if e.is_timeout() {
        "timeout"
    } else {
        "send failed"
    };
    let source = std::error::Error::source(e)
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    Failure::new(kind, format!("{e}{source}"))
}

fn deadline_failure(conn: &mut KeepAlive) -> Failure {
    // The connection is in an unknown state: start over.
    conn.sender = None;
    Failure::new("client deadline", "no complete answer in 10 s")
}

struct Pacer {
    tick: tokio::time::Interval,
    deadline: Instant,
}

impl Pacer {
    /// Wait for the next slot; false once the run is over.
    async fn next(&mut self) -> bool {
        self.tick.tick().await;
        Instant::now() < self.deadline
    }
}

/// One HTTP/1.1 keep-alive connection to the proxy, opened again when it closes.
struct KeepAlive {
    addr: SocketAddr,
    sender: Option<http1::SendRequest<ReqBody>>,
}

impl KeepAlive {
    fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive { addr, sender: None }
    }

    async fn send(&mut self, req: Request<ReqBody>) -> Result<Response<Incoming>, Failure> {
        let reusable = match &mut self.sender {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            self.sender = Some(h1_connect(self.addr).await?);
        }
        let sender = self.sender.as_mut().expect("connected");
        sender.ready().await.map_err(|e| hyper_failure(&e))?;
        sender.send_request(req).await.map_err(|e| {
            self.sender = None;
            hyper_failure(&e)
        })
    }
}

async fn h1_connect(addr: SocketAddr) -> Result<http1::SendRequest<ReqBody>, Failure> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| Failure::new("connect to proxy", e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| hyper_failure(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The one h2c connection to the proxy that h2 requests share, opened again if it dies.
struct H2Conn {
    addr: SocketAddr,
    sender: tokio::sync::Mutex<Option<http2::SendRequest<ReqBody>>>,
}

impl H2Conn {
    async fn send(&self, req: Request<ReqBody>) -> Result<Response<Incoming>, Failure> {
        let mut sender = {
            let mut slot = self.sender.lock().await;
            match slot.as_ref() {
                Some(sender) if !sender.is_closed() => sender.clone(),
                _ => {
                    let tcp = TcpStream::connect(self.addr)
                        .await
                        .map_err(|e| Failure::new("connect to proxy", e.to_string()))?;
                    let _ = tcp.set_nodelay(true);
                    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                        .await
                        .map_err(|e| hyper_failure(&e))?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    *slot = Some(sender.clone());
                    sender
                }
            }
        };
        sender.ready().await.map_err(|e| hyper_failure(&e))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| hyper_failure(&e))
    }
}
