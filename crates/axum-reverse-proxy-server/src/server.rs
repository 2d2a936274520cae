//! Running a configuration: bind the listeners and the admin listener, serve, reload on
//! request, and shut down gracefully.
//!
//! The process prints one line per bound socket on stdout (`listener NAME on URL`,
//! `admin on URL`), then `ready`, so that scripts and tests can read the real addresses
//! when a config asks for port 0. At shutdown it prints `… shutting down …`, then
//! `waiting for N upgraded connection(s) …` if WebSockets are still open once HTTP has
//! drained, then `shutdown complete`, `drain deadline passed: …` or (a second signal)
//! `SIGTERM again: …`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum_reverse_proxy::UpgradeTunnels;
use tokio::runtime::Handle;
use tokio::sync::{Notify, Semaphore, mpsc, watch};

use crate::access_log::AccessLog;
use crate::admin::{self, metrics::Metrics, metrics::ResultLabels};
use crate::config::{self, ConfigErrors, Loaded};
use crate::listener::http::{self, Parkable};
use crate::listener::parking::ParkingLot;
use crate::listener::{self, Running, Settings};
use crate::reload::{self, FileWatch, Snapshot};
use crate::shutdown::{self, Event, Signals};

/// State shared by every connection and request.
pub(crate) struct Shared {
    /// The active snapshot, read once per request.
    pub(crate) active: ArcSwap<Snapshot>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) access_log: Arc<AccessLog>,
    pub(crate) conn_limit: Arc<Semaphore>,
    /// Becomes `true` when shutdown starts.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Notified (all waiters) when shutdown starts, after `shutdown`: what idle HTTP/1.1
    /// connections that do not park (TLS) wait on between requests, its `Notified` being half the size of a
    /// watch's `changed()` in each of their tasks (see `listener::http`).
    pub(crate) parked: Notify,
    /// Where idle plain-TCP HTTP/1.1 connections wait, started by the first to park.
    parking: OnceLock<Option<ParkingLot<Parkable>>>,
    pub(crate) draining: AtomicBool,
    /// The upgraded tunnels (WebSockets…) of every pool of every configuration
    /// generation: one handle for the process, so that `/metrics` counts across reloads
    /// and shutdown drains them all. Reloads never close them.
    pub(crate) tunnels: UpgradeTunnels,
}

impl Shared {
    /// The parking lot of idle connections, started at the first call (on the current
    /// runtime); `None` if it could not start (logged once).
    pub(crate) fn parking(&self) -> Option<&ParkingLot<Parkable>> {
        self.parking
            .get_or_init(
                || match ParkingLot::start(Handle::current(), http::resume) {
                    Ok(lot) => Some(lot),
                    Err(err) => {
                        tracing::warn!("idle connections wait in tasks: no parking lot: {err}");
                        None
                    }
                },
            )
            .as_ref()
    }
}

/// Why the server could not start or run.
#[derive(Debug)]
pub(crate) enum RunError {
    /// The configuration is invalid (exit code 2).
    Config(ConfigErrors),
    /// Binding, opening a file, or another runtime failure (exit code 1).
    Runtime(String),
}

/// The addresses bound at start, for the banner.
pub(crate) struct Started {
    /// (listener name, URL)
    pub(crate) listeners: Vec<(String, String)>,
    pub(crate) admin: Option<SocketAddr>,
}

/// How long closed tunnels may take to shut their sockets down at the drain deadline.
const TUNNEL_CLOSE_GRACE: Duration = Duration::from_secs(2);

fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.as_ref());
    let _ = out.flush();
}

/// Build `loaded` without running it (`--check`).
pub(crate) fn check(loaded: Loaded) -> Result<(), ConfigErrors> {
    Snapshot::build(
        loaded,
        None,
        &Arc::new(Metrics::new()),
        &UpgradeTunnels::new(),
    )
    .map(|_| ())
}

/// Run `loaded` until SIGTERM/SIGINT. `path` enables reloads from that file. `banner`
/// prints what the user should see once everything is bound.
pub(crate) async fn run(
    loaded: Loaded,
    path: Option<PathBuf>,
    banner: impl FnOnce(&Started),
) -> Result<(), RunError> {
    let mut signals = Signals::install()
        .map_err(|e| RunError::Runtime(format!("cannot install signal handlers: {e}")))?;
    let metrics = Arc::new(Metrics::new());
    let tunnels = UpgradeTunnels::new();
    let snapshot = Snapshot::build(loaded, None, &metrics, &tunnels).map_err(RunError::Config)?;
    let cfg = snapshot.loaded.config.clone();

    let log_path = snapshot
        .loaded
        .resolve(cfg.access_log.output.get_ref().as_ref());
    let access_log = AccessLog::open(
        cfg.access_log.format,
        cfg.access_log.output.get_ref(),
        &log_path,
    )
    .map_err(|e| {
        RunError::Runtime(format!(
            "cannot open the access log {}: {e}",
            log_path.display()
        ))
    })?;

    // Bind everything before serving anything.
    let mut bound = Vec::new();
    for (name, lc) in &cfg.listeners {
        let settings = Settings::new(lc, snapshot.tls.get(name.get_ref()).cloned(), &cfg.server);
        let b = listener::bind(name.get_ref(), lc, settings).map_err(|e| {
            let (line, _) = snapshot.loaded.locator().position(&lc.address.span());
            let place = if line > 0 && !snapshot.loaded.generated {
                format!("{}:{line}: ", snapshot.loaded.file)
            } else {
                String::new()
            };
            RunError::Runtime(format!(
                "{place}cannot listen on {} for listener `{}`: {e}",
                lc.address.get_ref(),
                name.get_ref()
            ))
        })?;
        bound.push(b);
    }
    let admin_socket = match &cfg.admin {
        Some(a) => Some(
            tokio::net::TcpListener::bind(*a.address.get_ref())
                .await
                .map_err(|e| {
                    RunError::Runtime(format!(
                        "cannot listen on {} for the admin listener: {e}",
                        a.address.get_ref()
                    ))
                })?,
        ),
        None => None,
    };
    let generation = snapshot.generation;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        active: ArcSwap::from_pointee(snapshot),
        metrics,
        access_log: Arc::new(access_log),
        conn_limit: Arc::new(Semaphore::new(*cfg.server.max_connections.get_ref())),
        shutdown: shutdown_rx,
        parked: Notify::new(),
        parking: OnceLock::new(),
        draining: AtomicBool::new(false),
        tunnels,
    });

    let (drain_tx, drain_rx) = mpsc::channel::<()>(1);
    let mut started = Started {
        listeners: Vec::new(),
        admin: None,
    };
    let mut running = BTreeMap::new();
    for b in bound {
        let tls = cfg
            .listeners
            .get(b.name.as_str())
            .is_some_and(|l| l.tls.is_some());
        let scheme = if tls { "https" } else { "http" };
        started
            .listeners
            .push((b.name.clone(), format!("{scheme}://{}", b.local)));
        running.insert(b.name.clone(), b.start(shared.clone(), drain_tx.clone()));
    }
    if let Some(socket) = admin_socket {
        started.admin = socket.local_addr().ok();
        let router = admin::router(shared.clone());
        let mut stop = shared.shutdown.clone();
        tokio::spawn(async move {
            let serve = axum::serve(socket, router).with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            });
            if let Err(err) = serve.await {
                tracing::error!("admin listener failed: {err}");
            }
        });
    }
    banner(&started);
    say(format!("ready (configuration generation {generation})"));

    let mut server = Server {
        shared: shared.clone(),
        running,
        drain: drain_tx,
    };
    let mut watch = path.map(FileWatch::new);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let reason = loop {
        tokio::select! {
            event = signals.next() => match event {
                Event::Shutdown(signal) => break signal,
                Event::Reload => match &mut watch {
                    Some(w) => {
                        w.mark();
                        server.reload(w.path()).await;
                    }
                    None => say("SIGHUP: nothing to reload (no --config file)"),
                },
            },
            _ = tick.tick(), if watch.is_some() => {
                if let Some(w) = &mut watch
                    && w.changed()
                {
                    server.reload(w.path()).await;
                }
            }
        }
    };

    // Graceful shutdown.
    let deadline = shared.active.load().loaded.config.server.shutdown_timeout.0;
    say(format!(
        "{reason}: shutting down, draining connections (deadline {}s)",
        deadline.as_secs_f64()
    ));
    shared.draining.store(true, Ordering::Relaxed);
    let _ = shutdown_tx.send(true);
    shared.parked.notify_waiters();
    // A lot not started yet never will be: connections then wait in their tasks, which
    // see the shutdown. A connection parking from now on is closed.
    if let Some(lot) = shared.parking.get_or_init(|| None) {
        lot.close();
    }
    for (_, r) in std::mem::take(&mut server.running) {
        r.stop().await;
    }
    drop(server);
    let until = tokio::time::Instant::now() + deadline;
    let tunnels = &shared.tunnels;
    let drained = async {
        let connections_done = shutdown::drain(drain_rx, until).await;
        let open = tunnels.active();
        if connections_done && open > 0 {
            say(format!(
                "waiting for {open} upgraded connection(s) (WebSocket...) to close"
            ));
        }
        // Tunnels are counted before their 101 is sent: once the connections have
        // drained, no new one can appear.
        connections_done && shutdown::drain_tunnels(tunnels, until).await
    };
    // A second SIGTERM/SIGINT cuts the drain short.
    let cut_short = tokio::select! {
        done = drained => (!done).then(|| "drain deadline passed".to_owned()),
        signal = signals.next_shutdown() => Some(format!("{signal} again")),
    };
    // From here on, upgrades are refused (503) and what is left is closed.
    let left = tunnels.active();
    tunnels.close_all();
    match cut_short {
        None => say("shutdown complete"),
        Some(why) => {
            say(format!(
                "{why}: closing the remaining connections ({left} upgraded)"
            ));
            // A closing tunnel shuts both sides down within a second; wait a little longer.
            let _ = tokio::time::timeout(TUNNEL_CLOSE_GRACE, tunnels.drained()).await;
        }
    }
    Ok(())
}

/// The parts of a running server a reload changes.
struct Server {
    shared: Arc<Shared>,
    running: BTreeMap<String, Running>,
    drain: mpsc::Sender<()>,
}

impl Server {
    /// Reload from `path`; on any error the running configuration stays.
    async fn reload(&mut self, path: &std::path::Path) {
        let current = self.shared.active.load_full();
        match self.try_reload(path, &current).await {
            Ok(generation) => {
                self.shared
                    .metrics
                    .reloads
                    .get_or_create(&ResultLabels { result: "ok" })
                    .inc();
                tracing::info!(generation, "configuration reloaded");
                say(format!("reloaded: configuration generation {generation}"));
            }
            Err(message) => {
                self.shared
                    .metrics
                    .reloads
                    .get_or_create(&ResultLabels { result: "error" })
                    .inc();
                tracing::error!(
                    "reload failed, still serving generation {}:\n{message}",
                    current.generation
                );
                say(format!(
                    "reload failed: still serving configuration generation {}",
                    current.generation
                ));
            }
        }
    }

    async fn try_reload(
        &mut self,
        path: &std::path::Path,
        current: &Snapshot,
    ) -> Result<u64, String> {
        let loaded = config::load(path).map_err(|e| e.to_string())?;
        let snapshot = Snapshot::build(
            loaded,
            Some(current),
            &self.shared.metrics,
            &self.shared.tunnels,
        )
        .map_err(|e| e.to_string())?;
        snapshot
            .wait_for_discovery(current, reload::DISCOVERY_WAIT)
            .await;
        let old = &current.loaded.config;
        let new = &snapshot.loaded.config;
        let mut at_restart = Vec::new();
        if old.server.workers != new.server.workers {
            at_restart.push("server.workers");
        }
        if old.server.max_connections != new.server.max_connections {
            at_restart.push("server.max_connections");
        }
        if old.admin != new.admin {
            at_restart.push("admin");
        }
        if old.access_log != new.access_log {
            at_restart.push("access_log");
        }
        if !at_restart.is_empty() {
            tracing::warn!(
                "changes to {} take effect at the next restart",
                at_restart.join(", ")
            );
        }

        // Bind new sockets first: if one fails, nothing has changed yet.
        let mut updates = Vec::new();
        let mut fresh = Vec::new();
        for (name, lc) in &new.listeners {
            let settings =
                Settings::new(lc, snapshot.tls.get(name.get_ref()).cloned(), &new.server);
            match self.running.get(name.get_ref()) {
                Some(r) if r.configured == *lc.address.get_ref() => {
                    updates.push((name.get_ref().clone(), settings));
                }
                _ => fresh.push(listener::bind(name.get_ref(), lc, settings).map_err(|e| {
                    format!(
                        "cannot listen on {} for listener `{}`: {e}",
                        lc.address.get_ref(),
                        name.get_ref()
                    )
                })?),
            }
        }
        let generation = snapshot.generation;
        let tls_names: BTreeSet<String> = new
            .listeners
            .iter()
            .filter(|(_, l)| l.tls.is_some())
            .map(|(n, _)| n.get_ref().clone())
            .collect();
        let keep: BTreeSet<String> = updates.iter().map(|(n, _)| n.clone()).collect();

        // Commit: swap the snapshot, then adjust the listeners.
        self.shared.active.store(Arc::new(snapshot));
        for (name, settings) in updates {
            if let Some(r) = self.running.get(&name) {
                r.update(settings);
            }
        }
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|name| !keep.contains(*name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(r) = self.running.remove(&name) {
                let local = r.local;
                r.stop().await;
                say(format!("listener {name} on {local} stopped"));
            }
        }
        for b in fresh {
            let scheme = if tls_names.contains(&b.name) {
                "https"
            } else {
                "http"
            };
            say(format!("listener {} on {scheme}://{}", b.name, b.local));
            self.running.insert(
                b.name.clone(),
                b.start(self.shared.clone(), self.drain.clone()),
            );
        }
        Ok(generation)
    }
}
