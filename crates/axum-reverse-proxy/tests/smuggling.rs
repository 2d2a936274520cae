//! Request smuggling and message framing through the library embedded in `axum::serve`:
//! every case of the shared table (`tests/smuggling_cases`, also played against the
//! server binary), over HTTP/1 and h2c, each against a fresh recording upstream.

mod common;
mod smuggling_cases;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum_reverse_proxy::{ReverseProxy, validate_request};
use http::header;
use smuggling_cases::{Mode, Running, Start, forwarded, refused, run_all, run_all_h2};

const PATIENCE: Duration = common::STEP;

/// Serve `app(upstream)` with `axum::serve` on a runtime of its own, so that stopping it
/// drops every task and closes every socket the proxy holds: client connections and
/// pooled upstream connections alike.
async fn serve_alone(
    app: impl FnOnce(SocketAddr) -> Router + Send + 'static,
    upstream: SocketAddr,
) -> Running {
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let _ = addr_tx.send(listener.local_addr().unwrap());
            let app = app(upstream).into_make_service_with_connect_info::<SocketAddr>();
            tokio::select! {
                _ = async { axum::serve(listener, app).await } => {}
                _ = stop_rx => {}
            }
        });
        drop(runtime);
    });
    let addr = addr_rx.await.unwrap();
    Running {
        h1: addr,
        h2: addr,
        stop: Box::new(move || {
            Box::pin(async move {
                let _ = stop_tx.send(());
                tokio::task::spawn_blocking(move || thread.join().unwrap())
                    .await
                    .unwrap();
            })
        }),
    }
}

/// A `ReverseProxy` at `/`, as users mount it.
fn embedded() -> Start {
    Arc::new(|upstream| {
        Box::pin(serve_alone(
            |upstream| ReverseProxy::new("/", format!("http://{upstream}")).into(),
            upstream,
        ))
    })
}

/// The same proxy behind [`validate_request`] as middleware, as its docs show: the rules
/// of a server, `Host` required on HTTP/1.1.
fn strict() -> Start {
    async fn strict(req: Request) -> Result<Request, Response> {
        let (mut parts, body) = req.into_parts();
        match validate_request(&mut parts) {
            Ok(()) => Ok(Request::from_parts(parts, body)),
            Err(err) => Err(([(header::CONNECTION, "close")], err.into_response()).into_response()),
        }
    }
    Arc::new(|upstream| {
        Box::pin(serve_alone(
            |upstream| {
                Router::from(ReverseProxy::new("/", format!("http://{upstream}")))
                    .layer(middleware::map_request(strict))
            },
            upstream,
        ))
    })
}

#[tokio::test]
async fn framing() {
    run_all(smuggling_cases::framing(), Mode::Embedded, embedded()).await;
}

#[tokio::test]
async fn chunks() {
    run_all(smuggling_cases::chunks(), Mode::Embedded, embedded()).await;
}

#[tokio::test]
async fn head() {
    run_all(smuggling_cases::head(), Mode::Embedded, embedded()).await;
}

#[tokio::test]
async fn request_line_and_host() {
    run_all(smuggling_cases::request_line(), Mode::Embedded, embedded()).await;
}

#[tokio::test]
async fn hop_by_hop() {
    run_all(smuggling_cases::hop_by_hop(), Mode::Embedded, embedded()).await;
}

#[tokio::test]
async fn h2() {
    run_all_h2(smuggling_cases::h2_cases(), Mode::Embedded, embedded()).await;
}

#[tokio::test]
async fn validate_request_in_front_requires_host() {
    let cases = vec![
        refused("HTTP/1.1 without Host", "GET /a HTTP/1.1\r\n\r\n", 400),
        refused(
            "absolute-form without Host",
            "GET http://evil.example/x HTTP/1.1\r\n\r\n",
            400,
        ),
        refused(
            "two Host lines",
            "GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            400,
        ),
        forwarded(
            "HTTP/1.0 without Host",
            "GET /a HTTP/1.0\r\n\r\n",
            |m, _| {
                assert_eq!(m.target(), "/a");
            },
        )
        .closes(),
        forwarded(
            "absolute-form with Host",
            "GET http://evil.example/x HTTP/1.1\r\nHost: h\r\n\r\n",
            |m, _| assert_eq!(m.one("x-forwarded-host").as_deref(), Some("evil.example")),
        ),
    ];
    // Mode::Server: the expectations of a proxy that requires Host.
    run_all(cases, Mode::Server, strict()).await;
}
