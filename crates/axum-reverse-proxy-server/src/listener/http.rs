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
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;

use super::Settings;
use super::limits::{
    HYPER_DEFAULT_MAX_HEADERS, LOCAL_ERROR_RESETS, Limits, PENDING_ACCEPT_RESETS, Watch, Watched,
};
use crate::access_log::Logged;
use crate::admin::metrics::ListenerMetrics;
use crate::handler::{self, ConnInfo};
use crate::server::Shared;
use prometheus_client::metrics::gauge::Gauge;

/// Serve one accepted connection. The drain token in `hold` is released when the
/// connection is over; the connection-limit permit (and the open-connections gauge) when
/// the connection is over and, if it was upgraded (WebSocket…), its tunnel has closed.
///
/// Everything up to the first HTTP/1.1 request (the TLS handshake, the first read) and
/// a whole HTTP/2 connection run in a box that is freed once they are over, and so does
/// each stretch of HTTP/1.1 requests ([`Conn::until_idle`]). Between stretches a plain
/// TCP connection has no task at all ([`super::parking`]); the task of an idle TLS one
/// keeps only a [`Conn`], its stream and the wait for the next request: 512 bytes with
/// tokio's task header (`-Zprint-type-sizes`; it was 2.3 KiB when the whole connection
/// ran in the task).
pub(crate) fn serve(
    shared: Arc<Shared>,
    listener: Arc<str>,
    metrics: Arc<ListenerMetrics>,
    settings: Arc<Settings>,
    tcp: TcpStream,
    peer: SocketAddr,
    hold: (OwnedSemaphorePermit, mpsc::Sender<()>),
) -> impl Future<Output = ()> + Send + 'static {
    let (permit, drain_token) = hold;
    let opened = Box::pin(open(shared, listener, metrics, settings, tcp, peer, permit));
    async move {
        // (`let … else`, not `if let`: a value matched by `if let` would be kept in the
        // task to the end of the block, moved out of or not.)
        let Some((conn, io)) = opened.await else {
            return;
        };
        serve_http1(conn, io, drain_token, Next::Buffered).await;
    }
}

/// The token a connection holds until it is over, for the drain at shutdown.
type DrainToken = mpsc::Sender<()>;

/// Where an HTTP/1.1 connection is between stretches of requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// The first bytes of its next request are in its stream already.
    Buffered,
    /// It has just released its buffers, with nothing of a next request read.
    Released,
    /// Its socket has become readable while it was parked.
    Readable,
}

/// Serve an HTTP/1.1 connection from `next`. Between stretches of requests a released
/// plain-TCP connection parks (see [`super::parking`]): this task ends, and a new one is
/// spawned by [`resume`] when the client sends again. A TLS connection waits here
/// instead ([`Conn::wait_for_request`]).
///
/// A plain `fn` returning an `async` block, not an `async fn`: an `async fn` keeps a copy
/// of each argument beside the original in its state, in every idle TLS connection's
/// task (640 bytes instead of 512 with tokio's header).
#[expect(clippy::manual_async_fn, reason = "an `async fn` copies its arguments")]
fn serve_http1(
    conn: Conn,
    mut io: Io,
    drain_token: DrainToken,
    mut next: Next,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        loop {
            if next == Next::Released && conn.can_park(&io) {
                conn.park(io, drain_token);
                return;
            }
            if next != Next::Buffered && !conn.wait_for_request(&mut io).await {
                let _ = tokio::time::timeout(CLOSE_GRACE, io.shutdown()).await;
                return;
            }
            let Some((stream, ready)) = Box::pin(conn.until_idle(io)).await else {
                return;
            };
            io = stream;
            next = if ready {
                Next::Buffered
            } else {
                Next::Released
            };
        }
    }
}

/// What a parked connection keeps while it has no task (see [`super::parking`]).
pub(crate) struct Parkable {
    conn: Conn,
    drain_token: DrainToken,
    _counted: ParkedCount,
}

/// A parked connection in its listener's `proxy_parked_connections` gauge.
struct ParkedCount(Gauge);

impl ParkedCount {
    fn new(gauge: &Gauge) -> ParkedCount {
        gauge.inc();
        ParkedCount(gauge.clone())
    }
}

impl Drop for ParkedCount {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serve a parked connection whose client has sent something (its next request, or the
/// end of the stream), in a task of its own again (called in the runtime's context).
pub(crate) fn resume(parked: Parkable, socket: std::net::TcpStream) {
    let Parkable {
        conn, drain_token, ..
    } = parked;
    let socket = match TcpStream::from_std(socket) {
        Ok(socket) => socket,
        Err(err) => {
            tracing::debug!(peer = %conn.info.peer, "cannot resume a parked connection: {err}");
            return;
        }
    };
    let io = Prefixed::new(
        Vec::new(),
        Watched::new(Either::Left(socket), conn.watch.clone()),
    );
    tokio::spawn(serve_http1(conn, io, drain_token, Next::Readable));
}

/// A client connection's byte stream: TCP (`Left`), or TLS over TCP (`Right`; boxed, as
/// rustls' state is over 1 KiB and a plain connection would carry its size too). One type
/// for both, so that hyper's connection types exist once in the binary and a parked
/// connection's task is the same size whatever its listener.
type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// The byte stream a connection's protocol reads and writes.
type Io = Prefixed<Watched<Stream>>;

/// Set a connection up: TLS handshake, then the client's first bytes (HTTP/1.1 or, when
/// the listener takes it, HTTP/2). An HTTP/2 connection is served here; an HTTP/1.1 one
/// is returned, to be served by [`Conn::serve_http1`].
async fn open(
    shared: Arc<Shared>,
    listener: Arc<str>,
    metrics: Arc<ListenerMetrics>,
    settings: Arc<Settings>,
    tcp: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) -> Option<(Conn, Io)> {
    let slot = ConnSlot::new(permit, metrics.open.clone());
    let limits = &settings.limits;
    // The first head deadline runs from here, through the TLS handshake.
    let watch = Arc::new(Watch::new(limits.http2_resets));
    let no_alpn = if settings.http2 {
        Protocol::Sniff
    } else {
        Protocol::Http1
    };
    // The handshake and the first read are both bounded by the first head deadline.
    let first_head_by = watch.accepted() + limits.header_read;
    let (stream, protocol) = match &settings.tls {
        None => (Either::Left(tcp), no_alpn),
        Some(acceptor) => {
            // Boxed, like HTTP/2 below: inline, the handshake (1.3 KiB) would be allocated
            // and copied with every plain connection's setup too.
            let accept = Box::pin(acceptor.accept(tcp));
            let (failed, late) = ("TLS handshake failed", "TLS handshake timed out");
            let stream = Box::new(by_deadline(first_head_by, accept, peer, failed, late).await?);
            let protocol = match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Protocol::Http2,
                Some(_) => Protocol::Http1,
                None => no_alpn,
            };
            (Either::Right(stream), protocol)
        }
    };
    let info = Arc::new(ConnInfo {
        listener,
        peer,
        tls: matches!(stream, Either::Right(_)),
        watch: watch.clone(),
        _slot: slot,
    });
    let mut io = Watched::new(stream, watch.clone());
    // Nothing is built for HTTP/1.1 until the client's first bytes arrive: hyper
    // allocates its buffers (~20 KiB) at once, and a silent connection would hold them
    // for the whole head deadline. HTTP/2 (by ALPN) starts at once.
    let (http2, prefix) = if protocol == Protocol::Http2 {
        (true, Vec::new())
    } else {
        let first = first_read(&mut io, protocol == Protocol::Sniff);
        let failed = "connection failed before its first request";
        let late = "no request within header_read_timeout";
        by_deadline(first_head_by, first, peer, failed, late).await?
    };
    let conn = Conn {
        shared,
        info,
        watch,
        settings,
        metrics,
    };
    let io = Prefixed::new(prefix, io);
    if http2 {
        Box::pin(conn.serve_http2(io)).await;
        return None;
    }
    Some((conn, io))
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

/// The result of a step of a connection's setup if it succeeds by `deadline`; else
/// `None`, with why logged (`failed`, or `late`).
async fn by_deadline<T, E: std::fmt::Display>(
    deadline: Instant,
    step: impl Future<Output = Result<T, E>>,
    peer: SocketAddr,
    failed: &str,
    late: &str,
) -> Option<T> {
    match tokio::time::timeout_at(deadline.into(), step).await {
        Ok(Ok(done)) => Some(done),
        Ok(Err(err)) => {
            tracing::debug!(%peer, "{failed}: {err}");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "{late}");
            None
        }
    }
}

/// What a client connection keeps from accept to close, whatever its state.
struct Conn {
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    watch: Arc<Watch>,
    /// The listener's settings as the connection started (its limits among them).
    settings: Arc<Settings>,
    metrics: Arc<ListenerMetrics>,
}

impl Conn {
    /// The service hyper calls for each request: the server limits, then the handler.
    fn service(
        &self,
    ) -> impl hyper::service::Service<
        hyper::Request<Incoming>,
        Response = hyper::Response<Logged>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Unpin
    + 'static {
        let shared = self.shared.clone();
        let info = self.info.clone();
        let watch = self.watch.clone();
        let limits = self.settings.limits;
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let guard = watch.request(req.version());
            let rejected = limits.reject(&watch, &req);
            let shared = shared.clone();
            let conn = info.clone();
            async move {
                let response = match rejected {
                    Some(response) => response.map(Logged::unlogged),
                    None => handler::handle(shared, conn, req).await,
                };
                guard.answered();
                Ok::<_, Infallible>(response)
            }
        })
    }

    async fn serve_http2(&self, io: Io) {
        let limits = &self.settings.limits;
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(limits.http2_streams)
            .max_pending_accept_reset_streams(PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(LOCAL_ERROR_RESETS)
            // RFC 8441: WebSockets from HTTP/2 clients, as extended CONNECT streams.
            .enable_connect_protocol();
        // Each stream's future is boxed: hyper spawns it as a task, and tokio moves a
        // spawned future several times (into the task, through its stages), which for
        // this one (several KiB, the proxy's inside) cost ~4,600 instructions per
        // request, against an allocation. (HTTP/1.1 keeps it unboxed: there, boxing
        // measured no better.)
        let service = self.service();
        let boxed = hyper::service::service_fn(move |req| {
            Box::pin(hyper::service::Service::call(&service, req))
        });
        let conn = builder.serve_connection(TokioIo::new(io), boxed);
        let mut conn = std::pin::pin!(conn);
        drive(
            conn.as_mut(),
            |c| c.graceful_shutdown(),
            self.shared.shutdown.clone(),
            &self.watch,
            limits,
            self.info.peer,
            None,
        )
        .await;
    }

    /// When the connection, idle now, idles out.
    fn idle_until(&self) -> Instant {
        let idle = self.settings.limits.idle;
        self.watch
            .activity()
            .idle_deadline(idle)
            .unwrap_or_else(|| Instant::now() + idle)
    }

    /// Whether a released connection waits for its next request in the server's parking
    /// lot: a plain TCP one, with no bytes of its next request read already, when the lot
    /// is running.
    fn can_park(&self, io: &Io) -> bool {
        io.is_drained()
            && matches!(io.io.get_ref(), Either::Left(_))
            && self.shared.parking().is_some()
    }

    /// Park a released connection (see [`Conn::can_park`]) until its client sends again
    /// or it idles out; it is closed if it cannot park (on shutdown).
    fn park(self, io: Io, drain_token: DrainToken) {
        let until = self.idle_until();
        let Either::Left(socket) = io.io.into_inner() else {
            return;
        };
        let shared = Arc::clone(&self.shared);
        let Some(lot) = shared.parking() else {
            return;
        };
        let _counted = ParkedCount::new(&self.metrics.parked);
        let parked = Parkable {
            conn: self,
            drain_token,
            _counted,
        };
        if let Err((err, parked)) = lot.park(socket, until, parked) {
            tracing::debug!(peer = %parked.conn.info.peer, "connection closed, not parked: {err}");
        }
    }

    /// Wait, holding no buffer, for the first bytes of a released connection's next
    /// request, and put them back in `io`; `false` when the client leaves, the
    /// connection idles out, or on shutdown.
    async fn wait_for_request(&self, io: &mut Io) -> bool {
        let idle_until = self.idle_until();
        // Registered before the flag is read: a shutdown after the read still wakes it.
        let mut shutdown = std::pin::pin!(self.shared.parked.notified());
        shutdown.as_mut().enable();
        if *self.shared.shutdown.borrow() {
            return false;
        }
        let first = tokio::select! {
            read = next_bytes(io, 2048) => match read {
                Ok(first) if !first.is_empty() => first,
                _ => return false,
            },
            () = shutdown => return false,
            () = tokio::time::sleep_until(idle_until.into()) => return false,
        };
        io.put_back(first);
        true
    }

    /// Serve HTTP/1.1 requests until the connection closes (`None`), or until it has
    /// idled long enough to give back hyper's buffers: then the stream, and whether
    /// bytes of the next request (read by hyper already) were put back in it.
    ///
    /// hyper keeps a read buffer (8–16 KiB), a write buffer (8 KiB), a box for the
    /// request being answered and a spare header map for as long as its connection
    /// lives, idle or not: about 20 KiB for every keep-alive client, where nginx keeps
    /// none. So once a connection has been idle for `release_idle_buffers_after` (and no
    /// response bytes are waiting for the client), hyper is asked to close it gracefully
    /// with the byte stream left open (see [`Watched`]), and everything it held is
    /// dropped with the box this future runs in (see [`serve`]). The socket then waits
    /// with no buffer for the client's next bytes ([`Conn::wait_for_request`]), which
    /// are handed to a new hyper connection. The client sees one keep-alive connection
    /// throughout; `idle_timeout`, the head deadline and shutdown apply as before.
    async fn until_idle(&self, io: Io) -> Option<(Io, bool)> {
        let limits = &self.settings.limits;
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
        let peer = self.info.peer;
        // `with_upgrades` keeps the socket alive for a 101 (WebSocket…): the connection
        // future then ends and the proxy's tunnel owns the socket.
        let mut conn = builder
            .serve_connection(TokioIo::new(io), self.service())
            .with_upgrades();
        let ended = drive(
            Pin::new(&mut conn),
            |c| c.graceful_shutdown(),
            self.shared.shutdown.clone(),
            &self.watch,
            limits,
            peer,
            Some(limits.release_buffers),
        )
        .await;
        if ended != Ended::Released {
            return None;
        }
        self.watch.set_releasing(false);
        // `None`: upgraded meanwhile, the tunnel owns the socket.
        let parts = conn.into_parts()?;
        let mut stream = parts.io.into_inner();
        // Bytes of the next request hyper had read already: copied out, so that the
        // read buffer they share goes now.
        let ready = !parts.read_buf.is_empty();
        if ready {
            stream.put_back(parts.read_buf.to_vec());
        }
        self.metrics.idle_releases.inc();
        tracing::trace!(%peer, "idle connection released its buffers");
        Some((stream, ready))
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The client's first bytes, and whether they are the HTTP/2 preface (looked for only
/// when `http2_too`).
async fn first_read<I: AsyncRead + Unpin>(
    io: &mut I,
    http2_too: bool,
) -> std::io::Result<(bool, Vec<u8>)> {
    if http2_too {
        sniff(io).await
    } else {
        Ok((false, next_bytes(io, 4096).await?))
    }
}

/// Read until the first bytes are, or cannot be, the HTTP/2 preface; returns whether
/// they are, and what was read (to be read again by the protocol). Reads take what the
/// client has sent, up to 4 KiB, not just the preface's 24 bytes: usually the whole first
/// request, which then costs one read, not two.
async fn sniff<I: AsyncRead + Unpin>(io: &mut I) -> std::io::Result<(bool, Vec<u8>)> {
    let mut read = Vec::new();
    loop {
        let first = next_bytes(io, 4096).await?;
        if first.is_empty() {
            return Ok((false, read));
        }
        read.extend_from_slice(&first);
        let seen = read.len().min(PREFACE.len());
        if read.get(..seen) != PREFACE.get(..seen) {
            return Ok((false, read));
        }
        if seen == PREFACE.len() {
            return Ok((true, read));
        }
    }
}

/// The next bytes from `io` (up to `max`, at most 4 KiB; empty at the end of the
/// stream), read through a buffer that exists only while the read is polled: a
/// connection waiting here holds no buffer.
fn next_bytes<I: AsyncRead + Unpin>(
    io: &mut I,
    max: usize,
) -> impl Future<Output = std::io::Result<Vec<u8>>> + '_ {
    // A `poll_fn`, not an `async fn`: it is part of every parked connection's task.
    std::future::poll_fn(move |cx| {
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let limit = max.min(chunk.len());
        let mut buf = ReadBuf::uninit(chunk.get_mut(..limit).unwrap_or_default());
        match Pin::new(&mut *io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.filled().to_vec())),
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => Poll::Pending,
        }
    })
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

    /// No bytes put back are left to read.
    fn is_drained(&self) -> bool {
        self.at >= self.prefix.len()
    }

    /// Put bytes read from the stream back in front of what is left to read.
    fn put_back(&mut self, mut bytes: Vec<u8>) {
        if let Some(rest) = self.prefix.get(self.at..) {
            bytes.extend_from_slice(rest);
        }
        self.prefix = bytes;
        self.at = 0;
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

/// How [`drive`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The connection is over.
    Closed,
    /// hyper closed an idle HTTP/1.1 connection when asked to release its buffers; the
    /// byte stream is still open.
    Released,
}

/// Run a connection until it ends. Ask it to finish gracefully on shutdown, when it has
/// been idle for `idle_timeout`, or when it resets streams rapidly; drop it when a request
/// head is late, or when it has not closed `CLOSE_GRACE` after being asked to (once no
/// request is in flight, unless it was for rapid resets). With `release`, ask an HTTP/1.1
/// connection idle that long to finish so that its buffers can be released (see
/// [`Conn::until_idle`]); only HTTP/2 (`release` is `None`) can reset streams.
async fn drive<F, E>(
    mut conn: Pin<&mut F>,
    graceful: impl Fn(Pin<&mut F>),
    mut shutdown: watch::Receiver<bool>,
    watch: &Watch,
    limits: &Limits,
    peer: SocketAddr,
    release: Option<Duration>,
) -> Ended
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut closing = *shutdown.borrow();
    if closing {
        graceful(conn.as_mut());
    }
    let mut close_by: Option<Instant> = None;
    let mut abusive = false;
    let mut releasing = false;
    loop {
        let now = Instant::now();
        let head = watch.head_deadline(limits.header_read);
        if head.is_some_and(|at| at <= now) {
            tracing::debug!(%peer, "no complete request head within header_read_timeout");
            return Ended::Closed;
        }
        if close_by.is_some_and(|at| at <= now) && (abusive || !watch.busy()) {
            tracing::debug!(%peer, "the connection did not close when asked to");
            return Ended::Closed;
        }
        let mut release_at = None;
        if let Some(after) = release.filter(|_| !closing) {
            match watch.releasable(after, now) {
                Ok(()) => {
                    closing = true;
                    releasing = true;
                    watch.set_releasing(true);
                    graceful(conn.as_mut());
                    close_by = Some(now + CLOSE_GRACE);
                }
                Err(at) => release_at = Some(at),
            }
        }
        // While busy, look again after the idle period.
        let mut wake = watch
            .activity()
            .idle_deadline(limits.idle)
            .unwrap_or(now + limits.idle);
        for at in [head, close_by.filter(|at| *at > now), release_at]
            .into_iter()
            .flatten()
        {
            wake = wake.min(at);
        }
        // Biased, the connection first: this runs at every wake-up of the connection's
        // task, and the connection is what woke it nearly always.
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                return match result {
                    Ok(()) if releasing => Ended::Released,
                    Ok(()) => Ended::Closed,
                    Err(err) => {
                        tracing::debug!(%peer, "connection ended with an error: {err}");
                        Ended::Closed
                    }
                };
            }
            changed = shutdown_changed(&mut shutdown), if !closing => {
                if changed.is_err() || *shutdown.borrow() {
                    closing = true;
                    graceful(conn.as_mut());
                }
            }
            () = watch.tripped(), if !abusive && release.is_none() => {
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
            () = wake_at(wake) => {
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

/// `shutdown.changed()`, for a `select!` that runs at every wake-up of a connection's
/// task. A waiting tokio `Notified` takes its `Notify`'s lock each time it is polled,
/// and all connections wait on the same `Notify`: that would be a lock shared by every
/// request. So the wait is polled once, to register, and after that only once the
/// value has changed, which a second receiver tells without a lock.
async fn shutdown_changed(
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), watch::error::RecvError> {
    let probe = shutdown.clone();
    let mut changed = std::pin::pin!(shutdown.changed());
    let mut registered = false;
    std::future::poll_fn(|cx| {
        if registered && matches!(probe.has_changed(), Ok(false)) {
            return Poll::Pending;
        }
        registered = true;
        changed.as_mut().poll(cx)
    })
    .await
}

/// `sleep_until(deadline)`, for the same `select!`: a `Sleep` polled again re-registers
/// its waker and spends the task's cooperative budget, ~120 instructions at every
/// wake-up, two per request. Once registered, it is polled only after its timer has
/// fired, which `is_elapsed` tells without registering anything.
async fn wake_at(deadline: Instant) {
    let mut sleep = std::pin::pin!(tokio::time::sleep_until(deadline.into()));
    let mut registered = false;
    std::future::poll_fn(|cx| {
        if registered && !sleep.is_elapsed() {
            return Poll::Pending;
        }
        registered = true;
        sleep.as_mut().poll(cx)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Polls once, with the task's waker.
    async fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
    }

    #[tokio::test]
    async fn the_shutdown_wait_wakes_its_task_on_a_change_and_on_close() {
        let (tx, rx) = watch::channel(false);
        let (registered_tx, registered) = tokio::sync::oneshot::channel();
        let waiting = tokio::spawn(async move {
            let mut rx = rx;
            let mut wait = Box::pin(shutdown_changed(&mut rx));
            // Pending however often it is polled, and registered after the first poll.
            for _ in 0..3 {
                assert!(poll_once(&mut wait).await.is_pending());
            }
            registered_tx.send(()).unwrap();
            let changed = wait.await;
            drop(rx);
            changed
        });
        registered.await.unwrap();
        // Only the waker registered by the first poll can wake the task now.
        tx.send(true).unwrap();
        let woken = tokio::time::timeout(Duration::from_secs(10), waiting).await;
        assert!(woken.expect("woken by the change").unwrap().is_ok());

        let (tx, mut rx) = watch::channel(false);
        let mut wait = Box::pin(shutdown_changed(&mut rx));
        assert!(poll_once(&mut wait).await.is_pending());
        drop(tx);
        let closed = tokio::time::timeout(Duration::from_secs(10), wait).await;
        assert!(closed.expect("woken by the close").is_err());
    }

    #[tokio::test]
    async fn the_wake_up_time_ends_its_wait_however_often_it_was_polled_before() {
        let waiting = tokio::spawn(async {
            let mut wait = Box::pin(wake_at(Instant::now() + Duration::from_millis(50)));
            // Pending while the time has not come, polled again and again (as the
            // connection's every wake-up does) without registering again.
            for _ in 0..3 {
                assert!(poll_once(&mut wait).await.is_pending());
            }
            // Only the timer registered by the first poll can wake the task now.
            wait.await;
        });
        let woken = tokio::time::timeout(Duration::from_secs(10), waiting).await;
        woken.expect("woken when the time came").unwrap();
        // A time already past ends the wait too (at the timer's next tick).
        let past = wake_at(Instant::now() - Duration::from_millis(5));
        tokio::time::timeout(Duration::from_secs(10), past)
            .await
            .expect("a time already past");
    }

    #[tokio::test]
    async fn bytes_put_back_are_read_first_then_the_rest() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut stream = Prefixed::new(b"GET / HT".to_vec(), server);
        let mut two = [0u8; 2];
        stream.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"GE");
        // Read from the stream again while "T / HT" was still waiting in front.
        stream.put_back(b"[again]".to_vec());
        client.write_all(b"TP/1.1\r\n").await.unwrap();
        drop(client);
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"[again]T / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn sniffing_tells_http2_from_http1_and_keeps_every_byte() {
        for (sent, http2) in [
            (&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04"[..], true),
            (&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], false),
            (&b"PRI * HTTP/1.1\r\n"[..], false),
            (&b"PR"[..], false),
        ] {
            // One byte at a time, and all at once.
            for step in [1, sent.len()] {
                let (mut client, mut server) = tokio::io::duplex(64);
                let writer = async {
                    for piece in sent.chunks(step) {
                        client.write_all(piece).await.unwrap();
                        tokio::task::yield_now().await;
                    }
                    drop(client);
                };
                let ((found, read), ()) =
                    tokio::join!(async { sniff(&mut server).await.unwrap() }, writer);
                assert_eq!(found, http2, "{sent:?} by {step}");
                let mut rest = Vec::new();
                server.read_to_end(&mut rest).await.unwrap();
                assert_eq!([read, rest].concat(), sent, "{sent:?} by {step}");
            }
        }
    }
}
