//! Per-request overhead of the proxy: the same request sent to an upstream directly and
//! through a `ReverseProxy`, over HTTP/1.1 and HTTP/2, small and 1 MiB responses.
//!
//! Everything runs in one process on loopback, one request at a time, so the numbers
//! are latency per request (including both network hops), not throughput. The
//! difference between "direct" and "proxy" is what the proxy adds. Load tests against
//! nginx live in `bench/`.
//!
//! `cargo bench -p axum-reverse-proxy --bench proxy`

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum_reverse_proxy::{BalancedProxy, ReverseProxy};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const MIB: usize = 1024 * 1024;

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn upstream() -> SocketAddr {
    let big = Bytes::from(vec![b'x'; MIB]);
    serve(
        Router::new()
            .route("/small", get(|| async { "ok" }))
            .route("/big", get(move || async move { Body::from(big.clone()) })),
    )
    .await
}

enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    async fn connect(addr: SocketAddr, h2: bool) -> Sender {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        io.inner().set_nodelay(true).unwrap();
        if h2 {
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .adaptive_window(true)
                .handshake(io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Sender::H2(tx)
        } else {
            let (tx, conn) = http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Sender::H1(tx)
        }
    }

    async fn get(&mut self, addr: SocketAddr, path: &str) -> usize {
        let req = http::Request::get(format!("http://{addr}{path}"))
            .header("host", addr.to_string())
            .body(Empty::new())
            .unwrap();
        let response = match self {
            Sender::H1(tx) => {
                tx.ready().await.unwrap();
                let (mut parts, body) = req.into_parts();
                parts.uri = path.parse().unwrap();
                tx.send_request(http::Request::from_parts(parts, body))
                    .await
                    .unwrap()
            }
            Sender::H2(tx) => {
                tx.ready().await.unwrap();
                tx.send_request(req).await.unwrap()
            }
        };
        assert!(response.status().is_success());
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .len()
    }
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let (direct, proxied) = rt.block_on(async {
        let up = upstream().await;
        let proxy = serve(ReverseProxy::new("/", format!("http://{up}")).into()).await;
        (up, proxy)
    });

    for (name, h2) in [("http1", false), ("http2", true)] {
        let mut group = c.benchmark_group(format!("small_get/{name}"));
        group.measurement_time(Duration::from_secs(5));
        for (via, addr) in [("direct", direct), ("proxy", proxied)] {
            let mut sender = rt.block_on(Sender::connect(addr, h2));
            group.bench_function(via, |b| {
                b.iter(|| rt.block_on(sender.get(addr, "/small")));
            });
        }
        group.finish();
    }

    // One request at a time through a 4-endpoint round-robin balancer vs one target:
    // what choosing, counting and passive health cost per request.
    let balanced = rt.block_on(async {
        let mut targets = Vec::new();
        for _ in 0..4 {
            targets.push(format!("http://{}", upstream().await));
        }
        serve(BalancedProxy::new(String::from("/"), targets).into()).await
    });
    let mut group = c.benchmark_group("small_get/http1/balanced");
    group.measurement_time(Duration::from_secs(5));
    for (via, addr) in [("single", proxied), ("balanced_4", balanced)] {
        let mut sender = rt.block_on(Sender::connect(addr, false));
        group.bench_function(via, |b| {
            b.iter(|| rt.block_on(sender.get(addr, "/small")));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("get_1mib/http1");
    group.throughput(Throughput::Bytes(MIB as u64));
    group.measurement_time(Duration::from_secs(5));
    for (via, addr) in [("direct", direct), ("proxy", proxied)] {
        let mut sender = rt.block_on(Sender::connect(addr, false));
        group.bench_function(via, |b| {
            b.iter(|| assert_eq!(rt.block_on(sender.get(addr, "/big")), MIB));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
