//! One client connection: optional TLS handshake, then HTTP/1.1 or HTTP/2 (by ALPN on
//! TLS; else by the client's first bytes, the HTTP/2 preface or not, when the listener
//! takes HTTP/2) with the server limits (see [`super::limits`]), until the client
//! leaves, the connection idles out or breaks a limit, or shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};

use super::Settings;
use super::limits::{
    HYPER_DEFAULT_MAX_HEADERS, LOCAL_ERROR_RESETS, Limits, PENDING_ACCEPT_RESETS, Watch, Watched,
};
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
    let limits = Limits::of(&shared.active.load().loaded.config.server);
    let activity = Arc::new(Activity::new());
    // The first head deadline runs from here, through the TLS handshake.
    let watch = Arc::new(Watch::new(activity.clone(), limits.http2_resets));
    let info = |tls| {
        Arc::new(ConnInfo {
            listener,
            peer,
            tls,
            activity,
            slot,
        })
    };
    let no_alpn = if settings.http2 {
        Protocol::Sniff
    } else {
        Protocol::Http1
    };
    match &settings.tls {
        None => run(shared, info(false), watch, no_alpn, limits, tcp).await,
        Some(acceptor) => {
            let deadline = watch.accepted() + limits.header_read;
            match tokio::time::timeout_at(deadline.into(), acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let protocol = match stream.get_ref().1.alpn_protocol() {
                        Some(b"h2") => Protocol::Http2,
                        Some(_) => Protocol::Http1,
                        None => no_alpn,
                    };
                    run(shared, info(true), watch, protocol, limits, stream).await;
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

/// How a connection's HTTP version is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
    /// HTTP/2 if the client starts with its connection preface, else HTTP/1.1.
    Sniff,
}

async fn run<I>(
    shared: Arc<Shared>,
    conn_info: Arc<ConnInfo>,
    watch: Arc<Watch>,
    protocol: Protocol,
    limits: Limits,
    io: I,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn_info.peer;
    let mut io = Watched::new(io, watch.clone());
    let (http2, prefix) = match protocol {
        Protocol::Http1 => (false, Vec::new()),
        Protocol::Http2 => (true, Vec::new()),
        Protocol::Sniff => {
            // The first head deadline bounds this read too.
            let deadline = watch.accepted() + limits.header_read;
            match tokio::time::timeout_at(deadline.into(), sniff(&mut io)).await {
                Ok(Ok(found)) => found,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, "connection failed before its first request: {err}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "no request within header_read_timeout");
                    return;
                }
            }
        }
    };
    let io = TokioIo::new(Prefixed::new(prefix, io));

    let handler_shared = shared.clone();
    let service_watch = watch.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let guard = service_watch.request(req.version());
        let rejected = limits.reject(&service_watch, &req);
        let shared = handler_shared.clone();
        let conn = conn_info.clone();
        async move {
            let response = match rejected {
                Some(response) => response,
                None => handler::handle(shared, conn, req).await,
            };
            guard.answered();
            Ok::<_, Infallible>(response)
        }
    });

    let shutdown = shared.shutdown.clone();
    if !http2 {
        let head_bytes = usize::try_from(limits.header_bytes).unwrap_or(usize::MAX);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            // Our head deadline replaces hyper's (see `limits`).
            .header_read_timeout(None)
            .max_header_size(head_bytes)
            .max_buf_size(head_bytes.max(8192))
            .keep_alive(true);
        if limits.header_count != HYPER_DEFAULT_MAX_HEADERS {
            builder.max_headers(limits.header_count);
        }
        // `with_upgrades` keeps the socket alive for a 101 (WebSocket…): the connection
        // future then ends and the proxy's tunnel owns the socket.
        let conn = builder.serve_connection(io, service).with_upgrades();
        tokio::pin!(conn);
        drive(
            conn,
            |c| c.graceful_shutdown(),
            shutdown,
            &watch,
            &limits,
            peer,
        )
        .await;
        return;
    }
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.http2_streams)
        .max_pending_accept_reset_streams(PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(LOCAL_ERROR_RESETS)
        // RFC 8441: WebSockets from HTTP/2 clients, as extended CONNECT streams.
        .enable_connect_protocol();
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    drive(
        conn,
        |c| c.graceful_shutdown(),
        shutdown,
        &watch,
        &limits,
        peer,
    )
    .await;
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Read until the first bytes are, or cannot be, the HTTP/2 preface; returns whether
/// they are, and what was read (to be read again by the protocol).
async fn sniff<I: AsyncRead + Unpin>(io: &mut I) -> std::io::Result<(bool, Vec<u8>)> {
    let mut read = Vec::with_capacity(PREFACE.len());
    let mut chunk = [0u8; PREFACE.len()];
    while read.len() < PREFACE.len() {
        let n = io.read(&mut chunk[..PREFACE.len() - read.len()]).await?;
        if n == 0 {
            break;
        }
        read.extend_from_slice(&chunk[..n]);
        if !PREFACE.starts_with(&read) {
            return Ok((false, read));
        }
    }
    Ok((read.len() == PREFACE.len(), read))
}

/// A byte stream with some bytes already read from it put back in front.
struct Prefixed<I> {
    prefix: Vec<u8>,
    at: usize,
    io: I,
}

impl<I> Prefixed<I> {
    fn new(prefix: Vec<u8>, io: I) -> Prefixed<I> {
        Prefixed { prefix, at: 0, io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(rest) = this.prefix.get(this.at..)
            && !rest.is_empty()
        {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// How long a connection asked to close (idle, or caught resetting streams rapidly) has
/// to do so before it is dropped: an HTTP/2 client answers GOAWAY's PING in that time.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Run a connection until it ends. Ask it to finish gracefully on shutdown, when it has
/// been idle for `idle_timeout`, or when it resets streams rapidly; drop it when a request
/// head is late, or when it has not closed `CLOSE_GRACE` after being asked to (once no
/// request is in flight, unless it was for rapid resets).
async fn drive<F, E>(
    mut conn: Pin<&mut F>,
    graceful: impl Fn(Pin<&mut F>),
    mut shutdown: watch::Receiver<bool>,
    watch: &Watch,
    limits: &Limits,
    peer: SocketAddr,
) where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut closing = *shutdown.borrow();
    if closing {
        graceful(conn.as_mut());
    }
    let mut close_by: Option<Instant> = None;
    let mut abusive = false;
    loop {
        let now = Instant::now();
        let head = watch.head_deadline(limits.header_read);
        if head.is_some_and(|at| at <= now) {
            tracing::debug!(%peer, "no complete request head within header_read_timeout");
            return;
        }
        if close_by.is_some_and(|at| at <= now) && (abusive || !watch.busy()) {
            tracing::debug!(%peer, "the connection did not close when asked to");
            return;
        }
        // While busy, look again after the idle period.
        let mut wake = watch
            .activity()
            .idle_deadline(limits.idle)
            .unwrap_or(now + limits.idle);
        for at in [head, close_by.filter(|at| *at > now)]
            .into_iter()
            .flatten()
        {
            wake = wake.min(at);
        }
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
            () = watch.tripped(), if !abusive => {
                tracing::warn!(
                    %peer,
                    "HTTP/2 client cancelled more than server.http2_max_reset_streams streams before their response (rapid reset): closing the connection"
                );
                abusive = true;
                if !closing {
                    closing = true;
                    graceful(conn.as_mut());
                }
                close_by = Some(Instant::now() + CLOSE_GRACE);
            }
            () = tokio::time::sleep_until(wake.into()) => {
                if !closing
                    && let Some(at) = watch.activity().idle_deadline(limits.idle)
                    && at <= Instant::now()
                {
                    closing = true;
                    graceful(conn.as_mut());
                    close_by = Some(Instant::now() + CLOSE_GRACE);
                }
            }
        }
    }
}
