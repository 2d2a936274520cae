//! Signals and graceful shutdown.
//!
//! SIGTERM and SIGINT (Ctrl-C) stop every listener from accepting, tell each open
//! connection to finish its current request and close (HTTP/1.1 closes after the
//! response, HTTP/2 sends GOAWAY), and wait for them up to `server.shutdown_timeout`
//! (default 30 s). What is still open then is closed. SIGHUP asks for a reload.

use std::time::Duration;

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
}

/// Wait until every connection has released its drain token (the receiver then sees
/// the channel closed), or `deadline` passes. Returns whether all of them finished.
pub(crate) async fn drain(mut tokens: mpsc::Receiver<()>, deadline: Duration) -> bool {
    tokio::time::timeout(deadline, async { while tokens.recv().await.is_some() {} })
        .await
        .is_ok()
}
