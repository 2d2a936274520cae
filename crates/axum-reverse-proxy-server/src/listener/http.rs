//! One client connection: optional TLS handshake, then HTTP/1.1 or HTTP/2 with the
//! server limits, until the client leaves, the connection idles out, or shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};

use super::Settings;
use crate::admin::metrics::ListenerLabels;
use crate::handler::{self, Activity, ConnInfo};
use crate::server::Shared;
use prometheus_client::metrics::gauge::Gauge;

/// Serve one accepted connection. The drain token in `hold` is released when the
/// connection is over; the connection-limit permit (and the open-connections gauge) when
/// the connection is over and, if it was upgraded (WebSocket…), its tunnel has closed.
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
    let (permit, drain_token) = hold;
    let slot = Arc::new(ConnSlot::new(permit, gauge));
    let limits = {
        let snapshot = shared.active.load();
        let s = &snapshot.loaded.config.server;
        Limits {
            header_read: s.header_read_timeout.get_ref().0,
            idle: s.idle_timeout.get_ref().0,
            header_bytes: s.max_header_bytes.get_ref().0,
        }
    };
    let info = |tls| {
        Arc::new(ConnInfo {
            listener,
            peer,
            tls,
            activity: Arc::new(Activity::new()),
            slot,
        })
    };
    match &settings.tls {
        None => run(shared, info(false), settings.http2, limits, tcp).await,
        Some(acceptor) => {
            match tokio::time::timeout(limits.header_read, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    let http2 = settings.http2 || h2;
                    run(shared, info(true), http2, limits, stream).await;
                }
                Ok(Err(err)) => tracing::debug!(%peer, "TLS handshake failed: {err}"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
    drop(drain_token);
}

/// A connection's place in `server.max_connections` and in the open-connections gauge,
/// shared by the connection and by the tunnel of an upgrade made on it (so that a
/// WebSocket counts as the connection it is until it closes).
pub(crate) struct ConnSlot {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl ConnSlot {
    fn new(permit: OwnedSemaphorePermit, gauge: Gauge) -> ConnSlot {
        gauge.inc();
        ConnSlot {
            _permit: permit,
            gauge,
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

struct Limits {
    header_read: Duration,
    idle: Duration,
    header_bytes: u64,
}

async fn run<I>(shared: Arc<Shared>, conn_info: Arc<ConnInfo>, http2: bool, limits: Limits, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = conn_info.activity.clone();
    let peer = conn_info.peer;
    let handler_shared = shared.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let shared = handler_shared.clone();
        let conn = conn_info.clone();
        async move { Ok::<_, Infallible>(handler::handle(shared, conn, req).await) }
    });

    let shutdown = shared.shutdown.clone();
    let max_buf = usize::try_from(limits.header_bytes)
        .unwrap_or(usize::MAX)
        .max(8192);
    if !http2 {
        // `auto::Builder::http1_only` is ignored with upgrades enabled: use hyper's own.
        // `with_upgrades` keeps the socket alive for a 101 (WebSocket…): the connection
        // future then ends and the proxy's tunnel owns the socket.
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read)
            .max_buf_size(max_buf)
            .keep_alive(true);
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        drive(
            conn,
            |c| c.graceful_shutdown(),
            shutdown,
            &activity,
            limits.idle,
            peer,
        )
        .await;
        return;
    }
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_buf_size(max_buf)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.header_bytes).unwrap_or(u32::MAX))
        // RFC 8441: WebSockets from HTTP/2 clients, as extended CONNECT streams.
        .enable_connect_protocol();
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    drive(
        conn,
        |c| c.graceful_shutdown(),
        shutdown,
        &activity,
        limits.idle,
        peer,
    )
    .await;
}

/// Run a connection until it ends; ask it to finish gracefully on shutdown or when it
/// has been idle for `idle`.
async fn drive<F, E>(
    mut conn: Pin<&mut F>,
    graceful: impl Fn(Pin<&mut F>),
    mut shutdown: watch::Receiver<bool>,
    activity: &Activity,
    idle: Duration,
    peer: SocketAddr,
) where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut closing = *shutdown.borrow();
    if closing {
        graceful(conn.as_mut());
    }
    loop {
        // While busy, look again after the idle period.
        let wake = activity
            .idle_deadline(idle)
            .unwrap_or_else(|| std::time::Instant::now() + idle);
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
                    graceful(conn.as_mut());
                }
            }
            _ = tokio::time::sleep_until(wake.into()), if !closing => {
                if let Some(at) = activity.idle_deadline(idle)
                    && at <= std::time::Instant::now()
                {
                    closing = true;
                    graceful(conn.as_mut());
                }
            }
        }
    }
}
