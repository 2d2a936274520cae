//! Our upstream connection pool: per-thread LIFO idle lists for HTTP/1.1, one shared
//! multiplexed connection per upstream for HTTP/2.
//!
//! # Why not hyper-util's pooled client
//! Its pool sits behind one mutex that every request takes twice (checkout and
//! checkin), and returning a connection spawns a task to wait for readiness. Measured on
//! one core, that costs about 20 % more CPU per small proxied request than this design
//! (see `bench/README.md`). Here:
//!
//! - **HTTP/1.1**: idle senders live in a list per worker thread ([`ThreadLocal`]), so
//!   checkout and checkin take only that thread's own, uncontended lock. The list is
//!   LIFO: the most recently used connection is the warmest (its socket buffers and the
//!   upstream's worker are hot), and the oldest ones age out. A sender goes back to the
//!   list of the thread where its response body ends; a body dropped early closes the
//!   connection, as HTTP/1.1 requires. Tasks migrate between worker threads, so that is
//!   often not the thread of the next checkout: a thread whose own list has nothing for
//!   the upstream looks through the other threads' lists before it connects, or
//!   connections would pile up, idle, on one thread while another keeps dialling.
//! - **HTTP/2**: one connection per upstream carries every stream. Each thread caches a
//!   clone of the sender; a shared map (locked only on a miss) holds the canonical one.
//! - **Stale connections**: an idle connection the upstream closed is dropped at
//!   checkout. A request that hyper hands back unsent (the connection died just as it was
//!   reused) is sent again: nothing reached the upstream, so this is safe for any method.
//!   When the upstream's close crosses the request on the wire, the request was written
//!   and the connection ends without an answer; then only an idempotent request without
//!   a body is sent again, once, on a new connection (RFC 9110 §9.2.2). Anything else
//!   is answered 502: its bytes were sent, and it is not the proxy's to repeat.
//! - **HTTP/2 refusals**: a stream the upstream refused unprocessed (REFUSED_STREAM, or
//!   sent after its GOAWAY) is sent again on a new connection when it is idempotent
//!   without a body; otherwise it fails as `is_connect()` (it never reached the
//!   upstream), which a `RetryLayer` may replay.
//! - **Suspect responses**: a response with both `Transfer-Encoding` and
//!   `Content-Length` loses the latter and its connection is not reused.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use thread_local::ThreadLocal;

use super::connect::{Alpn, Connector};
use crate::error::{Kind, ProxyError};

/// Which upstream a connection belongs to: where it was dialled and, for TLS, which name
/// the certificate was verified for. Two names on one address, or one name on two
/// addresses, are different keys and never share a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PoolKey {
    pub(crate) https: bool,
    /// Where to connect: an IP address or a host name, and a port.
    pub(crate) authority: Authority,
    /// The name the upstream is known by when it is not the authority's host (an
    /// endpoint found by DNS): TLS sends and verifies it.
    pub(crate) server_name: Option<Arc<str>>,
}

impl PoolKey {
    /// The name TLS sends (SNI) and verifies the certificate against: the server name,
    /// else the authority's host without IPv6 brackets.
    #[cfg_attr(not(any(feature = "tls", feature = "native-tls")), allow(dead_code))]
    pub(crate) fn tls_name(&self) -> &str {
        match &self.server_name {
            Some(name) => name,
            None => {
                let host = self.authority.host();
                host.strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host)
            }
        }
    }
}

/// Which protocol to speak on a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/1.1, or HTTP/2 when TLS ALPN negotiates it.
    Auto,
    /// HTTP/2 with prior knowledge (h2c on plain TCP).
    Http2,
}

/// Pool limits.
#[derive(Clone, Debug)]
pub(crate) struct PoolConfig {
    /// Idle HTTP/1.1 connections kept per worker thread (all upstreams together).
    pub(crate) max_idle_per_thread: usize,
    /// How long an idle connection is kept.
    pub(crate) idle_timeout: Duration,
    /// Deadline for TCP connect + TLS + HTTP/2 handshake.
    pub(crate) connect_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_idle_per_thread: 1024,
            idle_timeout: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

struct Idle {
    key: PoolKey,
    sender: http1::SendRequest<Body>,
    since: Instant,
}

type H2List = Vec<(PoolKey, http2::SendRequest<Body>)>;

/// A connection pool over a [`Connector`].
pub(crate) struct Pool {
    connector: Connector,
    config: PoolConfig,
    idle: ThreadLocal<Mutex<Vec<Idle>>>,
    h2_local: ThreadLocal<RefCell<H2List>>,
    h2_shared: Mutex<H2List>,
    /// Set once an HTTP/2 connection was ever stored: until then, a checkout does not
    /// take `h2_shared`'s lock (a lock every request would take, for nothing, on a pool
    /// that only ever speaks HTTP/1.1).
    h2_stored: AtomicBool,
}

enum Conn {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

impl Pool {
    pub(crate) fn new(connector: Connector, config: PoolConfig) -> Self {
        Pool {
            connector,
            config,
            idle: ThreadLocal::new(),
            h2_local: ThreadLocal::new(),
            h2_shared: Mutex::new(Vec::new()),
            h2_stored: AtomicBool::new(false),
        }
    }

    /// How this pool dials (the upgrade path opens its own connections with it).
    pub(crate) fn connector(&self) -> &Connector {
        &self.connector
    }

    /// Send `req` to the upstream `key`.
    ///
    /// `req` carries an origin-form URI and the `Host` the upstream should see; on
    /// HTTP/2 the pool moves that host into `:authority`.
    pub(crate) async fn send(
        self: &Arc<Self>,
        key: &PoolKey,
        mut req: Request<Body>,
        protocol: Protocol,
    ) -> Result<Response<Body>, ProxyError> {
        // A pooled connection may die just as we reuse it. If hyper gives the request
        // back unsent, we try again; if it was written, only an idempotent request
        // without a body is sent again (see `replayable`), and on a new connection.
        // A fresh connection ends the loop either way.
        let mut fresh_only = false;
        loop {
            let checked_out = if fresh_only {
                None
            } else {
                self.checkout(key, protocol).await
            };
            let (conn, reused) = match checked_out {
                Some(conn) => (conn, true),
                // Boxed: the connect future (connector, TLS, handshakes) is several KiB,
                // and only a pool miss needs it; inline, every request would carry it.
                None => (Box::pin(self.connect(key, protocol)).await?, false),
            };
            let (mut failed, replay) = match conn {
                Conn::H1(mut sender) => {
                    *req.version_mut() = Version::HTTP_11;
                    let replay = if reused { replayable(&req) } else { None };
                    match sender.try_send_request(req).await {
                        Ok(response) => return Ok(self.h1_response(key, sender, response)),
                        Err(err) => (err, replay),
                    }
                }
                Conn::H2(mut sender) => {
                    // Copied before the conversion, which moves `Host` into the URI.
                    let replay = if reused { replayable(&req) } else { None };
                    to_h2_request(&mut req, key);
                    match sender.try_send_request(req).await {
                        Ok(response) => return Ok(response.map(Body::new)),
                        Err(err) => {
                            if sender.is_closed() {
                                self.forget_h2(key);
                            }
                            (err, replay)
                        }
                    }
                }
            };
            match failed.take_message() {
                Some(unsent) if reused => {
                    tracing::debug!("pooled connection closed before use; retrying on a new one");
                    req = unsent;
                }
                _ => {
                    let err = failed.into_error();
                    match replay {
                        Some(replay) if died_before_response(&err) || refused_unprocessed(&err) => {
                            tracing::debug!(
                                error = %err,
                                "pooled connection closed as it was reused; \
                                 sending the idempotent request again on a new one"
                            );
                            req = replay;
                            fresh_only = true;
                        }
                        _ => return Err(classify_send_error(err)),
                    }
                }
            }
        }
    }

    fn h1_response(
        self: &Arc<Self>,
        key: &PoolKey,
        sender: http1::SendRequest<Body>,
        response: Response<Incoming>,
    ) -> Response<Body> {
        let mut response = response;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The connection now belongs to the upgrade.
            return response.map(Body::new);
        }
        if super::drop_conflicting_length(response.headers_mut()) {
            // A sign of response splitting: this connection is not used again (it closes
            // once the body, framed by its Transfer-Encoding, is read).
            return response.map(Body::new);
        }
        if response.body().is_end_stream() {
            self.checkin(key.clone(), sender);
            return response.map(Body::new);
        }
        let pool = Arc::clone(self);
        let key = key.clone();
        response.map(move |incoming| {
            Body::new(PooledBody {
                inner: incoming,
                give_back: Some(GiveBack { pool, key, sender }),
            })
        })
    }

    async fn checkout(&self, key: &PoolKey, protocol: Protocol) -> Option<Conn> {
        if let Some(sender) = self.h2_cached(key) {
            return Some(Conn::H2(sender));
        }
        if protocol == Protocol::Http2 {
            return None;
        }
        loop {
            let mut sender = self.take_idle(key)?;
            // A sender is returned when its response body ends; the connection task may
            // not have noticed yet, so wait for it (it errors if the connection closed).
            if sender.ready().await.is_ok() {
                return Some(Conn::H1(sender));
            }
        }
    }

    /// Whether an idle HTTP/1.1 connection to `key` is pooled and ready for a request
    /// (waiting for its connection task to say so), leaving it pooled.
    #[cfg(test)]
    pub(crate) async fn idle_ready(&self, key: &PoolKey) -> bool {
        let Some(mut sender) = self.take_idle(key) else {
            return false;
        };
        let ready = sender.ready().await.is_ok();
        if ready {
            self.checkin(key.clone(), sender);
        }
        ready
    }

    fn take_idle(&self, key: &PoolKey) -> Option<http1::SendRequest<Body>> {
        // This thread's list first: the warmest connection, and no contention.
        if let Some(list) = self.idle.get()
            && let Some(sender) = self.take_from(&mut lock(list), key)
        {
            return Some(sender);
        }
        // Then the other threads' lists: a response that ended on another worker thread
        // gave its connection back there. A list busy right now is skipped.
        self.idle
            .iter()
            .filter_map(|list| list.try_lock().ok())
            .find_map(|mut list| self.take_from(&mut list, key))
    }

    /// The most recent live idle sender for `key` in `list`; dead or expired ones found
    /// on the way are dropped.
    fn take_from(&self, list: &mut Vec<Idle>, key: &PoolKey) -> Option<http1::SendRequest<Body>> {
        while let Some(i) = list.iter().rposition(|idle| idle.key == *key) {
            let idle = list.remove(i);
            if idle.sender.is_closed() || idle.since.elapsed() > self.config.idle_timeout {
                continue;
            }
            return Some(idle.sender);
        }
        None
    }

    fn checkin(&self, key: PoolKey, sender: http1::SendRequest<Body>) {
        if sender.is_closed() || self.config.max_idle_per_thread == 0 {
            return;
        }
        let now = Instant::now();
        let mut list = lock(self.idle.get_or(|| Mutex::new(Vec::new())));
        // Age out from the front (oldest first), and make room.
        let expired = list
            .iter()
            .take_while(|idle| now.duration_since(idle.since) > self.config.idle_timeout)
            .count();
        list.drain(..expired);
        if list.len() >= self.config.max_idle_per_thread {
            list.remove(0);
        }
        list.push(Idle {
            key,
            sender,
            since: now,
        });
    }

    fn h2_cached(&self, key: &PoolKey) -> Option<http2::SendRequest<Body>> {
        if let Some(local) = self.h2_local.get() {
            let mut local = local.borrow_mut();
            if let Some(i) = local.iter().position(|(k, _)| k == key) {
                if !local[i].1.is_closed() {
                    return Some(local[i].1.clone());
                }
                local.swap_remove(i);
            }
        }
        if !self.h2_stored.load(Ordering::Acquire) {
            return None;
        }
        let shared = self.h2_shared.lock().ok()?;
        let (_, sender) = shared.iter().find(|(k, s)| k == key && !s.is_closed())?;
        let sender = sender.clone();
        drop(shared);
        self.h2_local
            .get_or(|| RefCell::new(Vec::new()))
            .borrow_mut()
            .push((key.clone(), sender.clone()));
        Some(sender)
    }

    fn forget_h2(&self, key: &PoolKey) {
        if let Some(local) = self.h2_local.get() {
            local.borrow_mut().retain(|(k, _)| k != key);
        }
        if let Ok(mut shared) = self.h2_shared.lock() {
            shared.retain(|(k, s)| k != key || !s.is_closed());
        }
    }

    fn store_h2(&self, key: &PoolKey, sender: &http2::SendRequest<Body>) {
        if let Ok(mut shared) = self.h2_shared.lock() {
            shared.retain(|(k, s)| k != key && !s.is_closed());
            shared.push((key.clone(), sender.clone()));
            self.h2_stored.store(true, Ordering::Release);
        }
        let local = self.h2_local.get_or(|| RefCell::new(Vec::new()));
        let mut local = local.borrow_mut();
        local.retain(|(k, _)| k != key);
        local.push((key.clone(), sender.clone()));
    }

    async fn connect(&self, key: &PoolKey, protocol: Protocol) -> Result<Conn, ProxyError> {
        let connect = async {
            let (io, negotiated_h2) = self
                .connector
                .connect(key, Alpn::Any)
                .await
                .map_err(|e| ProxyError::with_cause(Kind::Connect, e))?;
            let h2 = protocol == Protocol::Http2 || negotiated_h2;
            if h2 {
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .adaptive_window(true)
                    .keep_alive_interval(Duration::from_secs(30))
                    .handshake(io)
                    .await
                    .map_err(|e| ProxyError::with_cause(Kind::Connect, e))?;
                tokio::spawn(async move {
                    if let Err(err) = conn.await {
                        tracing::debug!(error = %err, "upstream HTTP/2 connection ended");
                    }
                });
                Ok(Conn::H2(sender))
            } else {
                let (sender, conn) = http1::Builder::new()
                    .handshake(io)
                    .await
                    .map_err(|e| ProxyError::with_cause(Kind::Connect, e))?;
                tokio::spawn(async move {
                    if let Err(err) = conn.with_upgrades().await {
                        tracing::debug!(error = %err, "upstream HTTP/1 connection ended");
                    }
                });
                Ok(Conn::H1(sender))
            }
        };
        let conn = match tokio::time::timeout(self.config.connect_timeout, connect).await {
            Ok(conn) => conn?,
            Err(elapsed) => return Err(ProxyError::with_cause(Kind::Connect, elapsed)),
        };
        if let Conn::H2(sender) = &conn {
            self.store_h2(key, sender);
        }
        Ok(conn)
    }
}

/// Lock an idle list. Nothing panics while holding one, but a poisoned list is still a
/// valid list.
fn lock(list: &Mutex<Vec<Idle>>) -> MutexGuard<'_, Vec<Idle>> {
    list.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Turn an origin-form HTTP/1 request into an HTTP/2 one: absolute URI, and the `Host`
/// header moved into `:authority`.
fn to_h2_request(req: &mut Request<Body>, key: &PoolKey) {
    let authority = req
        .headers_mut()
        .remove(header::HOST)
        .and_then(|host| Authority::try_from(host.as_bytes()).ok())
        .unwrap_or_else(|| key.authority.clone());
    let path_and_query = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(if key.https {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    });
    parts.authority = Some(authority);
    parts.path_and_query = Some(path_and_query);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_2;
}

/// A copy of `req` to send again if the reused connection it goes on turns out to have
/// been closed by the upstream: only for idempotent methods (RFC 9110 §9.2.2, which
/// allows repeating them after a failure before the response) with no body and nothing
/// in the extensions. Everything else is sent once.
///
/// An upstream closes an idle keep-alive connection whenever its own idle timeout says
/// so; a request written in the instant before the close reaches the proxy is lost with
/// the connection, and without this copy a `GET` would be answered 502 for nothing.
fn replayable(req: &Request<Body>) -> Option<Request<Body>> {
    if !req.method().is_idempotent() || !req.body().is_end_stream() || !req.extensions().is_empty()
    {
        return None;
    }
    let mut copy = Request::new(Body::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// Whether a connection ended (closed or reset) before a response to the request on it
/// was complete, rather than answering with something malformed.
fn died_before_response(err: &hyper::Error) -> bool {
    if err.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            );
        }
        source = e.source();
    }
    false
}

/// Whether an HTTP/2 upstream refused the request before processing it: a stream reset
/// with REFUSED_STREAM, or one that came after the upstream's GOAWAY (a graceful
/// shutdown, a restart). RFC 9113 §8.7: such requests are safe to retry, whatever the
/// method.
fn refused_unprocessed(err: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && (h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM));
        }
        source = e.source();
    }
    false
}

/// Map a failure to send a request on an established connection. A request the
/// upstream refused unprocessed counts as never having reached it (`is_connect()`), so
/// that a [`RetryLayer`](crate::RetryLayer) may send it again.
pub(crate) fn classify_send_error(err: hyper::Error) -> ProxyError {
    if is_body_limit(&err) {
        ProxyError::with_cause(Kind::BodyTooLarge, err)
    } else if refused_unprocessed(&err) {
        ProxyError::with_cause(Kind::Connect, err)
    } else {
        ProxyError::with_cause(Kind::Upstream, err)
    }
}

/// Whether the request body limit is what broke this request.
pub(crate) fn is_body_limit(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

struct GiveBack {
    pool: Arc<Pool>,
    key: PoolKey,
    sender: http1::SendRequest<Body>,
}

pin_project_lite::pin_project! {
    /// A response body that returns its connection to the pool when it ends.
    struct PooledBody {
        #[pin]
        inner: Incoming,
        give_back: Option<GiveBack>,
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let ended = match &frame {
            None => true,
            Some(Ok(_)) => this.inner.is_end_stream(),
            Some(Err(_)) => {
                this.give_back.take();
                false
            }
        };
        if ended && let Some(give_back) = this.give_back.take() {
            give_back.pool.checkin(give_back.key, give_back.sender);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
