//! The smallest axum application embedding `ReverseProxy`, as a library user writes it.
//!
//! `bench-embedded LISTEN_ADDR UPSTREAM_URL [BALANCED_URL...]`: everything goes to
//! `UPSTREAM_URL`, except `/b/…` when `BALANCED_URL`s are given: that goes to a
//! `BalancedProxy` over them (round robin). Prints `listening on ADDR` once bound.
//! Worker threads follow `TOKIO_WORKER_THREADS` (the benchmark sets 1).

use std::net::SocketAddr;

use axum::Router;
use axum::serve::ListenerExt;
use axum_reverse_proxy::{BalancedProxy, ReverseProxy};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8081".into());
    let upstream = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:9000".into());
    let balanced: Vec<String> = args.collect();
    let mut app: Router = ReverseProxy::new("/", upstream).into();
    if !balanced.is_empty() {
        app = app.merge(BalancedProxy::new("/b".to_owned(), balanced));
    }
    let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
    println!("listening on {}", listener.local_addr().expect("addr"));
    // axum::serve leaves Nagle's algorithm on; a proxy wants every write sent at once.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .expect("serve");
}
