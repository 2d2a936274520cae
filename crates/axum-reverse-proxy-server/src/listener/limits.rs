//! The `[server]` limits of one client connection, and the ones hyper leaves to us.
//!
//! hyper enforces the head size (`max_header_bytes`: 431), the HTTP/1.1 header count
//! (431), HTTP/2's `SETTINGS_MAX_CONCURRENT_STREAMS` (extra streams get `REFUSED_STREAM`),
//! the HTTP/2 header list size (which also bounds CONTINUATION floods: `h2` sends GOAWAY
//! after a few CONTINUATION frames more than the list size needs) and the HTTP/2
//! pending-accept reset limit. This module adds:
//!
//! - **One deadline for a request head** ([`Watch::head_deadline`]). `header_read_timeout`
//!   runs from the moment a connection is accepted (TLS handshake included) until its
//!   first request head is complete, and on a keep-alive HTTP/1.1 connection from the
//!   first byte of each later request until its head is complete. It is a total
//!   deadline: a client trickling its head one line at a time (slowloris) is closed when
//!   it passes, however often it sends. Between requests, `idle_timeout` applies
//!   instead. hyper's own `header_read_timeout` is not used: it also runs on an idle
//!   keep-alive connection (which then closes after `header_read_timeout`, not
//!   `idle_timeout`), and on listeners that speak HTTP/2 too it starts only once the
//!   first 24 bytes have told the versions apart, so a client sending one byte at a time
//!   got far more than the deadline.
//! - **Header count and URI length** for both versions ([`Limits::reject`]): 431 and 414,
//!   before the request reaches a route.
//! - **Rapid reset** (CVE-2023-44487, [`RequestGuard`]). A client that opens HTTP/2
//!   streams and cancels them (RST_STREAM) at once makes the proxy start upstream
//!   requests it throws away, and cancelled streams do not count against the
//!   concurrent-streams limit. `h2` only counts streams cancelled before the server
//!   accepted them; a client that waits a moment before each reset evades that. So every
//!   stream cancelled before its response started is counted too, and once a connection
//!   has more than `http2_max_reset_streams` of them *and* they are more than half of its
//!   streams (so that a long-lived connection whose client sometimes gives up on a slow
//!   request is left alone), its new streams get 503 without reaching an upstream, and
//!   the connection gets GOAWAY and is closed a second later.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::{Request, Response, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::config::ServerConfig;
use crate::handler::Activity;

/// hyper's own header-count default: at this value its parser keeps the header index on
/// the stack, any other value costs a heap allocation per request.
pub(crate) const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// `h2`'s default for streams cancelled before the server accepted them (then GOAWAY
/// with ENHANCE_YOUR_CALM), written out so that a dependency update cannot change it.
pub(crate) const PENDING_ACCEPT_RESETS: usize = 20;

/// hyper's default for streams the server itself resets because the client broke the
/// protocol on them (then GOAWAY), written out for the same reason.
pub(crate) const LOCAL_ERROR_RESETS: usize = 1024;

// ===== impl Limits =====

/// The limits a connection was accepted with (a reload applies to new connections).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) header_read: Duration,
    pub(crate) idle: Duration,
    pub(crate) release_buffers: Duration,
    pub(crate) header_bytes: u64,
    pub(crate) header_count: usize,
    pub(crate) uri_bytes: u64,
    pub(crate) http2_streams: u32,
    pub(crate) http2_resets: u64,
}

impl Limits {
    pub(crate) fn of(s: &ServerConfig) -> Limits {
        Limits {
            header_read: s.header_read_timeout.get_ref().0,
            idle: s.idle_timeout.get_ref().0,
            release_buffers: s.release_idle_buffers_after.get_ref().0,
            header_bytes: s.max_header_bytes.get_ref().0,
            header_count: *s.max_header_count.get_ref(),
            uri_bytes: s.max_uri_bytes.get_ref().0,
            http2_streams: *s.http2_max_concurrent_streams.get_ref(),
            http2_resets: *s.http2_max_reset_streams.get_ref(),
        }
    }

    /// The answer to a request that must not go further, if it is one: 503 once the
    /// connection is being closed for rapid resets, 431 for too many header fields, 414
    /// for a path and query longer than `max_uri_bytes`.
    pub(crate) fn reject<B>(&self, watch: &Watch, req: &Request<B>) -> Option<Response<Body>> {
        let (status, text) = if watch.tripped.load(Ordering::Relaxed) {
            (StatusCode::SERVICE_UNAVAILABLE, "connection closing\n")
        } else if req.headers().len() > self.header_count {
            (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many header fields\n",
            )
        } else if uri_bytes(req.uri()) > self.uri_bytes {
            (StatusCode::URI_TOO_LONG, "URI too long\n")
        } else {
            return None;
        };
        let mut response = Response::new(Body::from(text));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Some(response)
    }
}

/// The length `max_uri_bytes` limits: the path and query (HTTP/1.1's origin-form request
/// target, HTTP/2's `:path`).
fn uri_bytes(uri: &Uri) -> u64 {
    uri.path_and_query()
        .map_or(0, |pq| pq.as_str().len() as u64)
}

// ===== impl Watch =====

/// No request head is being read.
const NO_HEAD: u64 = u64::MAX;

/// What one connection's limits need to know as it goes.
pub(crate) struct Watch {
    start: Instant,
    /// Milliseconds after `start` at which the head being read began, or [`NO_HEAD`].
    head_since: AtomicU64,
    /// The connection speaks HTTP/2 (seen on its first request): its bytes never start
    /// a head deadline (PINGs and WINDOW_UPDATEs come at any time).
    http2: AtomicBool,
    /// Requests handed to the service and not yet answered. The handler's [`Activity`]
    /// counts a request from its first poll until its response body ends; this covers
    /// the moment before, so that body bytes read meanwhile start no head deadline.
    answering: AtomicUsize,
    /// Requests in flight and when the connection was last busy.
    activity: Activity,
    /// HTTP/2 streams handed to the service.
    streams: AtomicU64,
    /// Of those, the ones cancelled by the client before their response started.
    early_resets: AtomicU64,
    max_resets: u64,
    /// Rapid reset detected: set once, then `trip` is notified.
    tripped: AtomicBool,
    trip: Notify,
    /// The last write or flush could not finish (the client is not reading): bytes of a
    /// response may still be waiting to go out.
    write_blocked: AtomicBool,
    /// The HTTP/1.1 connection is being closed only to release its buffers: shutting
    /// down the byte stream must then leave it open (see `Watched::poll_shutdown`).
    releasing: AtomicBool,
}

impl Watch {
    /// Start watching a connection accepted now: its first head deadline runs from here.
    pub(crate) fn new(max_resets: u64) -> Watch {
        Watch {
            start: Instant::now(),
            head_since: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            answering: AtomicUsize::new(0),
            activity: Activity::new(),
            streams: AtomicU64::new(0),
            early_resets: AtomicU64::new(0),
            max_resets,
            tripped: AtomicBool::new(false),
            trip: Notify::new(),
            write_blocked: AtomicBool::new(false),
            releasing: AtomicBool::new(false),
        }
    }

    /// When the connection was accepted.
    pub(crate) fn accepted(&self) -> Instant {
        self.start
    }

    pub(crate) fn activity(&self) -> &Activity {
        &self.activity
    }

    /// A request is in flight (being answered, or its response being sent).
    pub(crate) fn busy(&self) -> bool {
        self.answering.load(Ordering::Relaxed) > 0
            || self.activity.idle_deadline(Duration::ZERO).is_none()
    }

    /// Whether the connection may give back its HTTP/1.1 buffers at `now`: no request
    /// in flight, no head being read, no response bytes waiting for the client, and idle
    /// for `after`. If not, when to look again.
    pub(crate) fn releasable(&self, after: Duration, now: Instant) -> Result<(), Instant> {
        let retry = now + after.max(Duration::from_millis(1));
        if self.head_since.load(Ordering::Relaxed) != NO_HEAD
            || self.write_blocked.load(Ordering::Relaxed)
            || self.answering.load(Ordering::Relaxed) > 0
        {
            return Err(retry);
        }
        match self.activity.idle_deadline(after) {
            Some(at) if at <= now => Ok(()),
            Some(at) => Err(at),
            None => Err(retry),
        }
    }

    /// A write or flush was polled: remember whether it could not finish.
    fn wrote<T>(&self, polled: Poll<T>) -> Poll<T> {
        self.write_blocked
            .store(polled.is_pending(), Ordering::Relaxed);
        polled
    }

    /// Mark the connection as closing only to release its buffers (or no longer).
    pub(crate) fn set_releasing(&self, releasing: bool) {
        self.releasing.store(releasing, Ordering::Relaxed);
    }

    /// When the request head being read must be complete; `None` when none is.
    pub(crate) fn head_deadline(&self, timeout: Duration) -> Option<Instant> {
        let since = self.head_since.load(Ordering::Relaxed);
        (since != NO_HEAD).then(|| self.start + Duration::from_millis(since) + timeout)
    }

    /// Bytes came from the client: on an idle HTTP/1.1 connection they start a head.
    fn bytes_arrived(&self) {
        if self.head_since.load(Ordering::Relaxed) != NO_HEAD
            || self.http2.load(Ordering::Relaxed)
            || self.busy()
        {
            return;
        }
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(NO_HEAD - 1);
        let _ = self.head_since.compare_exchange(
            NO_HEAD,
            now.min(NO_HEAD - 1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// A request head is complete and goes to the service; answer through the guard.
    pub(crate) fn request(self: &Arc<Self>, version: Version) -> RequestGuard {
        self.answering.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(NO_HEAD, Ordering::Relaxed);
        let http2 = version == Version::HTTP_2;
        if http2 {
            self.http2.store(true, Ordering::Relaxed);
            self.streams.fetch_add(1, Ordering::Relaxed);
        }
        RequestGuard {
            watch: self.clone(),
            http2,
            answered: false,
        }
    }

    /// Resolves once the connection has been caught resetting streams rapidly.
    pub(crate) async fn tripped(&self) {
        loop {
            if self.tripped.load(Ordering::Relaxed) {
                return;
            }
            self.trip.notified().await;
        }
    }

    fn early_reset(&self) {
        let resets = self.early_resets.fetch_add(1, Ordering::Relaxed) + 1;
        let streams = self.streams.load(Ordering::Relaxed);
        if resets > self.max_resets
            && resets.saturating_mul(2) > streams
            && !self.tripped.swap(true, Ordering::Relaxed)
        {
            self.trip.notify_one();
        }
    }
}

// ===== impl RequestGuard =====

/// One request between the service call and its response. Dropped unanswered on an
/// HTTP/2 connection, it was cancelled by the client (RST_STREAM, or the connection
/// closing): an early reset.
pub(crate) struct RequestGuard {
    watch: Arc<Watch>,
    http2: bool,
    answered: bool,
}

impl RequestGuard {
    /// The response is ready (the handler's in-flight count covers its body).
    pub(crate) fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.watch.answering.fetch_sub(1, Ordering::Relaxed);
        if self.http2 && !self.answered {
            self.watch.early_reset();
        }
    }
}

// ===== impl Watched =====

/// The client's byte stream, telling the [`Watch`] when bytes arrive.
pub(crate) struct Watched<I> {
    io: I,
    watch: Arc<Watch>,
}

impl<I> Watched<I> {
    pub(crate) fn new(io: I, watch: Arc<Watch>) -> Watched<I> {
        Watched { io, watch }
    }

    pub(crate) fn get_ref(&self) -> &I {
        &self.io
    }

    pub(crate) fn into_inner(self) -> I {
        self.io
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.watch.bytes_arrived();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch.wrote(polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.watch.wrote(polled)
    }

    /// Shut the stream down, except when the HTTP/1.1 connection closes only to give
    /// back its buffers: the client must not see the connection end then.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.watch.releasing.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(max_resets: u64) -> Arc<Watch> {
        Arc::new(Watch::new(max_resets))
    }

    #[test]
    fn the_first_head_runs_from_accept_and_later_ones_from_their_first_byte() {
        let w = watch(10);
        let timeout = Duration::from_secs(10);
        assert_eq!(w.head_deadline(timeout), Some(w.accepted() + timeout));
        let guard = w.request(Version::HTTP_11);
        assert_eq!(w.head_deadline(timeout), None);
        // Body bytes while the request is being answered start nothing.
        w.bytes_arrived();
        assert_eq!(w.head_deadline(timeout), None);
        guard.answered();
        // Idle again: the next request's first byte starts its deadline.
        w.bytes_arrived();
        let deadline = w.head_deadline(timeout).expect("a head deadline");
        assert!(deadline >= w.accepted() + timeout);
        // Later bytes of the same head do not move it.
        w.bytes_arrived();
        assert_eq!(w.head_deadline(timeout), Some(deadline));
    }

    #[test]
    fn buffers_are_released_only_when_nothing_is_pending() {
        let w = Arc::new(Watch::new(10));
        let after = Duration::from_millis(100);
        let later = |w: &Watch| Instant::now() + Duration::from_secs(5) + w.start.elapsed();
        // The first head is being read (its deadline runs from accept).
        assert!(w.releasable(after, later(&w)).is_err());
        let guard = w.request(Version::HTTP_11);
        assert!(w.releasable(after, later(&w)).is_err(), "answering");
        let in_flight = crate::handler::InFlight::new(w.clone());
        guard.answered();
        assert!(
            w.releasable(after, later(&w)).is_err(),
            "response body going out"
        );
        drop(in_flight);
        // Idle, but not for `after` yet: the answer is when to look again.
        let now = Instant::now();
        match w.releasable(after, now) {
            Err(at) => assert!(at > now && at <= now + after, "{at:?}"),
            Ok(()) => panic!("released before the delay"),
        }
        assert_eq!(w.releasable(after, later(&w)), Ok(()));
        // Response bytes the client has not taken yet.
        let _ = w.wrote(Poll::<()>::Pending);
        assert!(w.releasable(after, later(&w)).is_err(), "write blocked");
        let _ = w.wrote(Poll::Ready(()));
        assert_eq!(w.releasable(after, later(&w)), Ok(()));
        // The first byte of the next head.
        w.bytes_arrived();
        assert!(w.releasable(after, later(&w)).is_err(), "head started");
    }

    #[test]
    fn http2_bytes_start_no_head_after_the_first_request() {
        let w = watch(10);
        w.request(Version::HTTP_2).answered();
        w.bytes_arrived();
        assert_eq!(w.head_deadline(Duration::from_secs(1)), None);
    }

    #[test]
    fn rapid_resets_trip_past_the_limit_when_most_streams_are_reset() {
        let w = watch(3);
        for _ in 0..3 {
            drop(w.request(Version::HTTP_2));
        }
        assert!(!w.tripped.load(Ordering::Relaxed));
        drop(w.request(Version::HTTP_2));
        assert!(w.tripped.load(Ordering::Relaxed));

        // Many answered streams: the same resets are tolerated.
        let w = watch(3);
        for _ in 0..20 {
            w.request(Version::HTTP_2).answered();
        }
        for _ in 0..10 {
            drop(w.request(Version::HTTP_2));
        }
        assert!(!w.tripped.load(Ordering::Relaxed));

        // HTTP/1.1 requests dropped unanswered (the client left) are not resets.
        let w = watch(0);
        drop(w.request(Version::HTTP_11));
        assert!(!w.tripped.load(Ordering::Relaxed));
    }

    #[test]
    fn rejections() {
        let limits = Limits {
            header_read: Duration::from_secs(1),
            idle: Duration::from_secs(1),
            release_buffers: Duration::from_secs(1),
            header_bytes: 8192,
            header_count: 2,
            uri_bytes: 10,
            http2_streams: 1,
            http2_resets: 0,
        };
        let w = watch(0);
        let ok = Request::get("/123456789")
            .header("a", "1")
            .body(())
            .unwrap();
        assert!(limits.reject(&w, &ok).is_none());
        let long = Request::get("/1234567890").body(()).unwrap();
        assert_eq!(
            limits.reject(&w, &long).map(|r| r.status()),
            Some(StatusCode::URI_TOO_LONG)
        );
        let many = Request::get("/")
            .header("a", "1")
            .header("a", "2")
            .header("b", "3")
            .body(())
            .unwrap();
        assert_eq!(
            limits.reject(&w, &many).map(|r| r.status()),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        drop(w.request(Version::HTTP_2));
        assert_eq!(
            limits.reject(&w, &ok).map(|r| r.status()),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
    }
}
