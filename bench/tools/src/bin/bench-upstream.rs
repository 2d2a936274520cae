//! A fast upstream for the load benchmarks.
//!
//! `bench-upstream ADDR`: serves HTTP/1.1 and HTTP/2 (prior knowledge) on `ADDR`.
//! - `GET /small`: 13 bytes; `GET /1m`: 1 MiB; `POST /post`: reads the body, answers its length.
//! - `GET /ws`: a WebSocket that echoes every message.
//! - `GET /_stats`: `connections N`, the TCP connections accepted so far (for connection reuse).
//!
//! Prints `listening on ADDR` once bound.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;

const MIB: usize = 1024 * 1024;

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let listener = TcpListener::bind(&addr).await.expect("bind");
    println!("listening on {}", listener.local_addr().expect("addr"));
    let big = Bytes::from(vec![b'x'; MIB]);
    let connections = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        let _ = socket.set_nodelay(true);
        connections.fetch_add(1, Ordering::Relaxed);
        let big = big.clone();
        let connections = Arc::clone(&connections);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let big = big.clone();
                let connections = Arc::clone(&connections);
                async move {
                    if req.uri().path() == "/ws" {
                        return Ok(bench_tools::websocket_echo(req));
                    }
                    let body = match req.uri().path() {
                        "/1m" => big,
                        "/post" => {
                            let len = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes().len())
                                .unwrap_or(0);
                            Bytes::from(len.to_string())
                        }
                        "/_stats" => Bytes::from(format!(
                            "connections {}",
                            connections.load(Ordering::Relaxed)
                        )),
                        _ => Bytes::from_static(b"hello, world\n"),
                    };
                    Ok::<_, Infallible>(Response::new(Full::new(body)))
                }
            });
            let _ = Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(socket), service)
                .await;
        });
    }
}
