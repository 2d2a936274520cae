//! Listeners: bind, accept, and hand each connection to [`http::serve`].
//!
//! A listener is bound first ([`Bound`]) and starts accepting later ([`Bound::start`]), so
//! that a reload can bind every new socket, and give up cleanly if one fails, before
//! anything changes. A running listener keeps its socket across reloads when its address
//! did not change; its TLS certificates and HTTP/2 settings are swapped in place.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::{ListenerConfig, ServerConfig};
use crate::server::Shared;

pub(crate) mod http;
pub(crate) mod limits;
pub(crate) mod parking;
pub(crate) mod tls;

/// What a connection needs to know about its listener, swappable on reload.
pub(crate) struct Settings {
    pub(crate) tls: Option<TlsAcceptor>,
    /// Accept HTTP/2 (by ALPN with TLS, by prior knowledge without when h2c).
    pub(crate) http2: bool,
    /// The `[server]` limits, as of the last (re)load: each connection keeps those it
    /// started with.
    pub(crate) limits: limits::Limits,
}

impl Settings {
    pub(crate) fn new(
        config: &ListenerConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
        server: &ServerConfig,
    ) -> Self {
        let http2 = match tls {
            Some(_) => config.http2,
            None => config.http2 && *config.h2c.get_ref(),
        };
        Settings {
            tls: tls.map(TlsAcceptor::from),
            http2,
            limits: limits::Limits::of(server),
        }
    }
}

/// A bound socket, not yet accepting.
pub(crate) struct Bound {
    pub(crate) name: String,
    pub(crate) configured: SocketAddr,
    pub(crate) local: SocketAddr,
    socket: TcpListener,
    settings: Arc<ArcSwap<Settings>>,
}

/// A listener accepting connections.
pub(crate) struct Running {
    pub(crate) configured: SocketAddr,
    pub(crate) local: SocketAddr,
    settings: Arc<ArcSwap<Settings>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Bind `name` at the configured address.
pub(crate) fn bind(
    name: &str,
    config: &ListenerConfig,
    settings: Settings,
) -> std::io::Result<Bound> {
    let addr = *config.address.get_ref();
    let std = std::net::TcpListener::bind(addr)?;
    std.set_nonblocking(true)?;
    let socket = TcpListener::from_std(std)?;
    Ok(Bound {
        name: name.to_owned(),
        configured: addr,
        local: socket.local_addr()?,
        socket,
        settings: Arc::new(ArcSwap::from_pointee(settings)),
    })
}

impl Bound {
    /// Start accepting. Each connection holds a clone of `drain` until it closes.
    pub(crate) fn start(self, shared: Arc<Shared>, drain: mpsc::Sender<()>) -> Running {
        let (stop, mut stopped) = watch::channel(false);
        let settings = self.settings.clone();
        let name: Arc<str> = Arc::from(self.name.as_str());
        let socket = self.socket;
        let metrics = Arc::new(shared.metrics.listener(&self.name));
        let task = tokio::spawn(async move {
            let mut shutdown = shared.shutdown.clone();
            loop {
                let accepted = tokio::select! {
                    _ = stopped.changed() => break,
                    _ = shutdown.changed() => break,
                    accepted = socket.accept() => accepted,
                };
                let (tcp, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // Out of file descriptors and the like: back off a little.
                        tracing::warn!(listener = %name, "accept failed: {err}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = shared.conn_limit.clone().try_acquire_owned() else {
                    metrics.refused.inc();
                    drop(tcp);
                    continue;
                };
                metrics.accepted.inc();
                let _ = tcp.set_nodelay(true);
                tokio::spawn(http::serve(
                    shared.clone(),
                    name.clone(),
                    metrics.clone(),
                    settings.load_full(),
                    tcp,
                    peer,
                    (permit, drain.clone()),
                ));
            }
        });
        Running {
            configured: self.configured,
            local: self.local,
            settings: self.settings,
            stop,
            task,
        }
    }
}

impl Running {
    /// New settings for connections accepted from now on.
    pub(crate) fn update(&self, settings: Settings) {
        self.settings.store(Arc::new(settings));
    }

    /// Stop accepting and close the socket; open connections carry on until they close.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
