//! The two upstreams of the soak test.
//!
//! `serve` (`bench-soak upstream ADDR NAME`): HTTP/1.1 and h2c on one port, every response
//! tagged `x-upstream: NAME`:
//! - `GET /small`: `hello, world\n`; `GET /health`: `ok`;
//! - `POST /echo`: the request body streamed back;
//! - `GET /1m`: 1 MiB of [`pattern`] bytes in 16 KiB frames;
//! - `GET /ws`: a WebSocket that echoes every message.
//!
//! SIGTERM drains it: the listener closes (new connections are refused), every connection
//! is told to finish its current requests and close (GOAWAY on HTTP/2), and the process
//! exits when they are done (after 10 s at most). EOF on stdin (the soak runner died) ends
//! it at once.
//!
//! `serve_faults` (`bench-soak fault-upstream ADDR`): raw TCP, one request per connection,
//! misbehaving by path: `/f/reset-early` resets before answering, `/f/reset-mid` sends a
//! 200 for 1 MiB, 128 KiB of it, then resets; `/f/close-early` closes without a word;
//! `/f/garbage` answers bytes that are not HTTP; `/f/hang` never answers (until the peer
//! goes); anything else gets a small 200.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::Full;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::{MIB, SMALL, pattern};

type RespBody = BoxBody<Bytes, hyper::Error>;

/// Exit when stdin reaches EOF: the process that started us is gone.
fn exit_with_parent() {
    tokio::spawn(async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        std::process::exit(0);
    });
}

pub async fn serve(addr: String, name: String) {
    exit_with_parent();
    let listener = TcpListener::bind(&addr).await.expect("bind");
    println!("listening on {}", listener.local_addr().expect("addr"));
    let name = HeaderValue::from_str(&name).expect("name");
    let big = Bytes::from(pattern(MIB));
    let (stop_tx, stop_rx) = watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    loop {
        let (socket, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
            _ = term.recv() => break,
        };
        let _ = socket.set_nodelay(true);
        let (name, big, open) = (name.clone(), big.clone(), Arc::clone(&open));
        let mut stop = stop_rx.clone();
        open.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(req, name.clone(), big.clone()));
            let builder = Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(socket), service);
            tokio::pin!(conn);
            let mut draining = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    _ = stop.changed(), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
    // Drain: refuse new connections, let the open ones finish what they carry.
    drop(listener);
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while open.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::process::exit(0);
}

async fn respond(
    req: Request<Incoming>,
    name: HeaderValue,
    big: Bytes,
) -> Result<Response<RespBody>, Infallible> {
    use http_body_util::BodyExt;
    let full = |b: Bytes| Full::new(b).map_err(|never| match never {}).boxed();
    let mut response = match req.uri().path() {
        "/small" => Response::new(full(Bytes::from_static(SMALL))),
        "/health" => Response::new(full(Bytes::from_static(b"ok"))),
        "/echo" => {
            let length = req.headers().get(header::CONTENT_LENGTH).cloned();
            let mut response = Response::new(req.into_body().boxed());
            if let Some(length) = length {
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, length);
            }
            response
        }
        "/1m" => Response::new(
            Chunked {
                data: big,
                at: 0,
                chunk: 16 * 1024,
            }
            .boxed(),
        ),
        "/ws" => bench_tools::websocket_echo(req)
            .map(|body| body.map_err(|never| match never {}).boxed()),
        _ => {
            let mut response = Response::new(full(Bytes::from_static(b"not found\n")));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        }
    };
    response.headers_mut().insert("x-upstream", name);
    Ok(response)
}

/// A body sent as frames of `chunk` bytes.
struct Chunked {
    data: Bytes,
    at: usize,
    chunk: usize,
}

impl http_body::Body for Chunked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.at >= self.data.len() {
            return Poll::Ready(None);
        }
        let end = (self.at + self.chunk).min(self.data.len());
        let frame = self.data.slice(self.at..end);
        self.at = end;
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.at >= self.data.len()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((self.data.len() - self.at) as u64)
    }
}

// ===== the fault upstream =====

pub async fn serve_faults(addr: String) {
    exit_with_parent();
    let listener = TcpListener::bind(&addr).await.expect("bind");
    println!("listening on {}", listener.local_addr().expect("addr"));
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(fault(socket));
    }
}

async fn fault(mut socket: TcpStream) {
    let _ = socket.set_nodelay(true);
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let path = line
        .split(|&b| b == b' ')
        .nth(1)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    match path.as_str() {
        "/f/reset-early" => reset(socket),
        "/f/reset-mid" => {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {MIB}\r\n\r\n");
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(&pattern(128 * 1024)).await;
            // Let the bytes leave before the reset discards what is still queued.
            tokio::time::sleep(Duration::from_millis(20)).await;
            reset(socket);
        }
        "/f/close-early" => drop(socket),
        "/f/garbage" => {
            let _ = socket.write_all(b"HTTP/1.1 2x0 ???\r\n\r\n").await;
        }
        "/f/hang" => {
            // Say nothing; wait for the peer to give up (60 s at most).
            let _ = tokio::time::timeout(Duration::from_secs(60), socket.read(&mut buf)).await;
        }
        _ => {
            let body = "fault upstream\n";
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    }
}

/// Close with RST instead of FIN.
fn reset(socket: TcpStream) {
    let _ = socket.set_zero_linger();
    drop(socket);
}
