//! One client connection: optional TLS handshake, then HTTP/1.1 or HTTP/2 with the
//! server limits, until the client leaves, the connection idles out, or shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::Settings;
use crate::admin::metrics::ListenerLabels;
use crate::handler::{self, Activity, ConnInfo};
use crate::server::Shared;

/// Serve one accepted connection. `hold` (the connection-limit permit and the drain
/// token) is released when the connection is over.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: Arc<str>,
    settings: Arc<Settings>,
    tcp: TcpStream,
    peer: SocketAddr,
    hold: (OwnedSemaphorePermit, mpsc::Sender<()>),
) {
    let labels = ListenerLabels {
        listener: listener.to_string(),
    };
    let gauge = shared
        .metrics
        .open_connections
        .get_or_create(&labels)
        .clone();
    gauge.inc();
    let limits = {
        let snapshot = shared.active.load();
        let s = &snapshot.loaded.config.server;
        Limits {
            header_read: s.header_read_timeout.0,
            idle: s.idle_timeout.0,
            header_bytes: s.max_header_bytes.get_ref().0,
        }
    };
    match &settings.tls {
        None => run(shared, listener, settings.http2, false, limits, tcp, peer).await,
        Some(acceptor) => {
            match tokio::time::timeout(limits.header_read, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    let http2 = settings.http2 || h2;
                    run(shared, listener, http2, true, limits, stream, peer).await;
                }
                Ok(Err(err)) => tracing::debug!(%peer, "TLS handshake failed: {err}"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
    gauge.dec();
    drop(hold);
}

struct Limits {
    header_read: Duration,
    idle: Duration,
    header_bytes: u64,
}

async fn run<I>(
    shared: Arc<Shared>,
    listener: Arc<str>,
    http2: bool,
    tls: bool,
    limits: Limits,
    io: I,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let conn_info = Arc::new(ConnInfo {
        listener,
        peer,
        tls,
        activity: activity.clone(),
    });
    let handler_shared = shared.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let shared = handler_shared.clone();
        let conn = conn_info.clone();
        async move { Ok::<_, Infallible>(handler::handle(shared, conn, req).await) }
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_buf_size(
            usize::try_from(limits.header_bytes)
                .unwrap_or(usize::MAX)
                .max(8192),
        )
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.header_bytes).unwrap_or(u32::MAX));
    let builder = if http2 { builder } else { builder.http1_only() };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);

    let mut shutdown = shared.shutdown.clone();
    let mut closing = *shutdown.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        let idle_at = activity.idle_deadline(limits.idle);
        // While busy, look again after the idle period.
        let wake = idle_at.unwrap_or_else(|| std::time::Instant::now() + limits.idle);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%peer, "connection ended with an error: {err}");
                }
                break;
            }
            changed = shutdown.changed(), if !closing => {
                if changed.is_err() || *shutdown.borrow() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = tokio::time::sleep_until(wake.into()), if !closing => {
                if let Some(at) = activity.idle_deadline(limits.idle)
                    && at <= std::time::Instant::now()
                {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
