//! [`UpgradeTunnels`]: counting the open tunnels, and closing them all on shutdown.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};

/// The upgraded connections (WebSocket and other `Upgrade` tunnels) of the proxies that
/// share this handle: how many are open, and a way to close them all.
///
/// Every [`ProxyPolicy`](crate::ProxyPolicy) holds one (a fresh one by default); give
/// several proxies the same handle with
/// [`with_upgrade_tunnels`](crate::ProxyPolicy::with_upgrade_tunnels) and keep a clone
/// for metrics and shutdown. Clones share the same counters. Reading a counter is one
/// atomic load.
///
/// # Graceful shutdown
/// A server's graceful shutdown waits for the HTTP connections it knows of, but an
/// upgraded connection has left HTTP: it is the proxy's to close. Call
/// [`close_all`](Self::close_all) when shutdown begins and await
/// [`drained`](Self::drained):
///
/// ```no_run
/// use axum::Router;
/// use axum::serve::ListenerExt;
/// use axum_reverse_proxy::{ProxyPolicy, ReverseProxy, UpgradeTunnels};
///
/// # async fn run(shutdown_signal: impl std::future::Future<Output = ()> + Send + 'static) {
/// let tunnels = UpgradeTunnels::new();
/// let policy = ProxyPolicy::new().with_upgrade_tunnels(tunnels.clone());
/// let app: Router = ReverseProxy::new("/", "http://127.0.0.1:3000")
///     .with_policy(policy)
///     .into();
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080")
///     .await
///     .unwrap()
///     .tap_io(|tcp| {
///         let _ = tcp.set_nodelay(true);
///     });
/// let closer = tunnels.clone();
/// axum::serve(listener, app)
///     .with_graceful_shutdown(async move {
///         shutdown_signal.await;
///         closer.close_all();
///     })
///     .await
///     .unwrap();
/// tunnels.drained().await;
/// # }
/// ```
///
/// Closing is abrupt at the byte level: the proxy does not parse the tunnelled protocol,
/// so it cannot send a WebSocket close frame. Both sides see their connection shut
/// down (a WebSocket peer reports code 1006). Applications that want a clean `1001
/// Going Away` should send it themselves before calling `close_all`.
#[derive(Clone)]
pub struct UpgradeTunnels {
    inner: Arc<Inner>,
}

struct Inner {
    active: AtomicUsize,
    total: AtomicU64,
    to_upstream: AtomicU64,
    to_client: AtomicU64,
    closing: watch::Sender<bool>,
    drained: Notify,
}

impl UpgradeTunnels {
    /// A handle with no tunnels.
    pub fn new() -> Self {
        UpgradeTunnels {
            inner: Arc::new(Inner {
                active: AtomicUsize::new(0),
                total: AtomicU64::new(0),
                to_upstream: AtomicU64::new(0),
                to_client: AtomicU64::new(0),
                closing: watch::Sender::new(false),
                drained: Notify::new(),
            }),
        }
    }

    /// Tunnels open now: from the moment the client is sent its 101 until both sides
    /// have closed (or the tunnel was closed for idleness or shutdown).
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Tunnels opened since this handle was made.
    pub fn total(&self) -> u64 {
        self.inner.total.load(Ordering::Relaxed)
    }

    /// Bytes carried from clients to upstreams by tunnels that have closed.
    pub fn bytes_to_upstream(&self) -> u64 {
        self.inner.to_upstream.load(Ordering::Relaxed)
    }

    /// Bytes carried from upstreams to clients by tunnels that have closed.
    pub fn bytes_to_client(&self) -> u64 {
        self.inner.to_client.load(Ordering::Relaxed)
    }

    /// Close every open tunnel, and refuse new upgrades from now on (503). For graceful
    /// shutdown; there is no way back.
    pub fn close_all(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Whether [`close_all`](Self::close_all) was called.
    pub fn is_closing(&self) -> bool {
        *self.inner.closing.borrow()
    }

    /// Resolves when no tunnel is open (at once if none is).
    pub async fn drained(&self) {
        loop {
            let notified = self.inner.drained.notified();
            tokio::pin!(notified);
            // Register before checking, so a close in between is not missed.
            notified.as_mut().enable();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Count a new tunnel; it stays counted until the slot drops.
    pub(crate) fn open(&self) -> Slot {
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        self.inner.total.fetch_add(1, Ordering::Relaxed);
        Slot {
            tunnels: self.clone(),
            closing: self.inner.closing.subscribe(),
        }
    }
}

impl Default for UpgradeTunnels {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for UpgradeTunnels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpgradeTunnels")
            .field("active", &self.active())
            .field("total", &self.total())
            .field("closing", &self.is_closing())
            .finish()
    }
}

/// One open tunnel's place in the count (RAII: dropping it closes the count).
pub(crate) struct Slot {
    tunnels: UpgradeTunnels,
    closing: watch::Receiver<bool>,
}

impl Slot {
    /// Resolves when [`UpgradeTunnels::close_all`] is called (at once if it was).
    ///
    /// A tunnel polls this at every wake-up (each chunk it carries), and a waiting
    /// tokio `Notified` takes its `Notify`'s lock on every poll: the lock all tunnels
    /// share. So the wait is polled once, to register its waker, and after that only
    /// once a second receiver sees a new version, which needs no lock.
    pub(crate) async fn closing(&mut self) {
        let probe = self.closing.clone();
        let mut wait = std::pin::pin!(self.closing.wait_for(|closing| *closing));
        let mut registered = false;
        let closed = std::future::poll_fn(|cx| {
            if registered && matches!(probe.has_changed(), Ok(false)) {
                return std::task::Poll::Pending;
            }
            registered = true;
            wait.as_mut().poll(cx).map(|r| r.is_ok())
        })
        .await;
        if !closed {
            // The sender lives as long as `tunnels`: cannot happen; never resolve.
            std::future::pending::<()>().await;
        }
    }

    /// Add a closed tunnel's byte counts to the totals.
    pub(crate) fn record(&self, to_upstream: u64, to_client: u64) {
        let inner = &self.tunnels.inner;
        inner.to_upstream.fetch_add(to_upstream, Ordering::Relaxed);
        inner.to_client.fetch_add(to_client, Ordering::Relaxed);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let inner = &self.tunnels.inner;
        if inner.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            inner.drained.notify_waiters();
        }
    }
}
