//! The splice: bytes copied both ways between the two upgraded connections, until both
//! sides have closed, the tunnel goes idle, or shutdown asks it to close.
//!
//! `copy_bidirectional` carries half-close: when one side stops sending, the other's
//! write half is shut down and the opposite direction keeps flowing. A peer that then
//! never closes its own half (a WebSocket client holding its socket after the close
//! handshake) would keep the tunnel forever, so once one direction has ended, the
//! tunnel also closes after [`HALF_CLOSED_IDLE`] without a byte (or the idle timeout,
//! if shorter).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::guard::Held;
use super::tracker::Slot;

/// How long a closing tunnel may take to shut its two sides down cleanly.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// How long a half-closed tunnel may stay silent before it is closed.
const HALF_CLOSED_IDLE: Duration = Duration::from_secs(10);

/// Everything a tunnel task needs.
pub(crate) struct Tunnel {
    /// Completes once the client has been sent its 101 (or 200 on HTTP/2).
    pub(crate) client: OnUpgrade,
    /// Completes once the upstream connection has handed over its socket.
    pub(crate) upstream: OnUpgrade,
    pub(crate) slot: Slot,
    /// How long both upgrades may take to complete.
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    /// Bytes buffered per direction.
    pub(crate) buffer_size: usize,
    /// Released when the tunnel ends.
    pub(crate) held: Option<Held>,
    /// For logs.
    pub(crate) upstream_name: Authority,
}

/// Why a tunnel ended.
pub(super) enum End {
    /// Both sides closed.
    Closed,
    /// A read or write failed (a reset, usually).
    Failed(io::Error),
    /// No byte either way for the idle timeout.
    Idle,
    /// One side finished and the other stayed silent.
    HalfClosedIdle,
    /// [`UpgradeTunnels::close_all`](super::UpgradeTunnels::close_all).
    Shutdown,
}

impl Tunnel {
    pub(crate) fn spawn(self) {
        tokio::spawn(self.run());
    }

    async fn run(self) {
        let Tunnel {
            client,
            upstream,
            mut slot,
            handshake_timeout,
            idle_timeout,
            buffer_size,
            held,
            upstream_name,
        } = self;
        let both = tokio::time::timeout(handshake_timeout, async {
            tokio::try_join!(client, upstream)
        });
        let (client, upstream) = tokio::select! {
            biased;
            () = slot.closing() => return,
            result = both => match result {
                Ok(Ok(pair)) => pair,
                Ok(Err(err)) => {
                    tracing::debug!(upstream = %upstream_name, error = %err, "upgrade did not complete");
                    return;
                }
                Err(_) => {
                    tracing::debug!(upstream = %upstream_name, "upgrade did not complete in time");
                    return;
                }
            },
        };

        let activity = Activity::new();
        let mut client = Metered::new(TokioIo::new(client), &activity);
        let mut upstream = Metered::new(TokioIo::new(upstream), &activity);
        tracing::debug!(upstream = %upstream_name, "tunnel open");

        let end = tokio::select! {
            result = tokio::io::copy_bidirectional_with_sizes(
                &mut client,
                &mut upstream,
                buffer_size,
                buffer_size,
            ) => match result {
                Ok(_) => End::Closed,
                Err(err) => End::Failed(err),
            },
            end = activity.watch(idle_timeout) => end,
            () = slot.closing() => End::Shutdown,
        };
        if !matches!(end, End::Closed | End::Failed(_)) {
            // Best effort: a FIN (and TLS close_notify) rather than a bare close.
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
                let _ = tokio::join!(client.shutdown(), upstream.shutdown());
            })
            .await;
        }
        slot.record(client.bytes_read, upstream.bytes_read);
        let (why, error) = match &end {
            End::Closed => ("closed", None),
            End::Failed(err) => ("failed", Some(err)),
            End::Idle => ("idle", None),
            End::HalfClosedIdle => ("half-closed and idle", None),
            End::Shutdown => ("shutdown", None),
        };
        tracing::debug!(
            upstream = %upstream_name,
            to_upstream = client.bytes_read,
            to_client = upstream.bytes_read,
            seconds = activity.start.elapsed().as_secs_f64(),
            end = why,
            error = error.map(tracing::field::display),
            "tunnel closed"
        );
        drop((client, upstream));
        drop(held);
        drop(slot);
    }
}

/// What both sides of a tunnel share: when a byte was last read, and whether a side
/// has stopped sending.
pub(super) struct Activity {
    start: Instant,
    /// Nanoseconds from `start` to the last read that returned data.
    last_read: AtomicU64,
    /// Signalled (one stored permit) when a side reaches end of stream.
    eof: Notify,
}

impl Activity {
    pub(super) fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_read: AtomicU64::new(0),
            eof: Notify::new(),
        }
    }

    /// Bytes were read.
    pub(super) fn touch(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_read.store(nanos, Ordering::Relaxed);
    }

    /// A side reached end of stream: the half-closed linger counts from now.
    pub(super) fn ended(&self) {
        self.touch();
        self.eof.notify_one();
    }

    /// Resolves when the tunnel should close for lack of traffic: the idle timeout
    /// (if any), and once a side has ended, [`HALF_CLOSED_IDLE`].
    pub(super) async fn watch(&self, idle_timeout: Option<Duration>) -> End {
        tokio::select! {
            () = self.quiet_for(idle_timeout) => return End::Idle,
            () = self.eof.notified() => {}
        }
        let linger = idle_timeout.map_or(HALF_CLOSED_IDLE, |t| t.min(HALF_CLOSED_IDLE));
        self.quiet_for(Some(linger)).await;
        End::HalfClosedIdle
    }

    /// Resolves once nothing was read for `timeout` (never without one).
    async fn quiet_for(&self, timeout: Option<Duration>) {
        let Some(timeout) = timeout else {
            return std::future::pending().await;
        };
        loop {
            let last = self.start + Duration::from_nanos(self.last_read.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One side of the tunnel: counts what is read from it and reports activity.
struct Metered<'a, T> {
    io: T,
    bytes_read: u64,
    activity: &'a Activity,
}

impl<'a, T> Metered<'a, T> {
    fn new(io: T, activity: &'a Activity) -> Self {
        Metered {
            io,
            bytes_read: 0,
            activity,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let read = buf.filled().len().saturating_sub(before);
            if read > 0 {
                this.bytes_read += read as u64;
                this.activity.touch();
            } else if buf.remaining() > 0 {
                this.activity.ended();
            }
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
