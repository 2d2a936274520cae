//! Signals and graceful shutdown.
//!
//! SIGTERM and SIGINT (Ctrl-C) stop every listener from accepting, tell each open
//! connection to finish its current request and close (HTTP/1.1 closes after the
//! response, HTTP/2 sends GOAWAY), and wait for them up to `server.shutdown_timeout`
//! (default 30 s). Upgraded connections (WebSockets and other `Upgrade` tunnels) have
//! left HTTP, so no GOAWAY reaches them: they are waited for, within the same deadline,
//! until their peers close them. What is still open at the deadline is closed (tunnels
//! with [`UpgradeTunnels::close_all`](axum_reverse_proxy::UpgradeTunnels::close_all),
//! which both peers see as the connection ending), and the process exits 0. A second
//! SIGTERM/SIGINT during the drain closes everything at once. SIGHUP asks for a reload,
//! which never closes a tunnel (and is ignored once shutdown has begun).

use tokio::time::Instant;

use axum_reverse_proxy::UpgradeTunnels;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    Reload,
    Shutdown(&'static str),
}

/// The signals the server reacts to, installed once at start.
pub(crate) struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    pub(crate) fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal received.
    pub(crate) async fn next(&mut self) -> Event {
        tokio::select! {
            _ = self.term.recv() => Event::Shutdown("SIGTERM"),
            _ = self.int.recv() => Event::Shutdown("SIGINT"),
            _ = self.hup.recv() => Event::Reload,
        }
    }

    /// The next SIGTERM or SIGINT (SIGHUP is ignored: no reload during shutdown).
    pub(crate) async fn next_shutdown(&mut self) -> &'static str {
        loop {
            if let Event::Shutdown(signal) = self.next().await {
                return signal;
            }
        }
    }
}

/// Wait until every connection has released its drain token (the receiver then sees
/// the channel closed), or `deadline` passes. Returns whether all of them finished.
pub(crate) async fn drain(mut tokens: mpsc::Receiver<()>, deadline: Instant) -> bool {
    tokio::time::timeout_at(deadline, async { while tokens.recv().await.is_some() {} })
        .await
        .is_ok()
}

/// Wait until no upgraded tunnel is open, or `deadline` passes; returns whether they all
/// closed. Call it once the connections have drained: a handshake still in flight could
/// open a tunnel after the count was seen at zero.
pub(crate) async fn drain_tunnels(tunnels: &UpgradeTunnels, deadline: Instant) -> bool {
    tokio::time::timeout_at(deadline, tunnels.drained())
        .await
        .is_ok()
}
