//! Hot reload: a [`Snapshot`] is everything a request needs (route tables, built pools),
//! built from a validated configuration and swapped in whole.
//!
//! A reload (SIGHUP, or the file's modification time changing; it is polled every
//! second) reads and validates the file, builds a new snapshot, and only then swaps it
//! in. If any step fails the old snapshot keeps serving and the error is logged.
//! Requests read the snapshot once, when they arrive, so requests in flight, streaming
//! responses and upgraded connections finish on the configuration they started with.
//! A reload never closes an upgraded tunnel (WebSocket…): once spliced, a tunnel is a
//! task of its own that needs nothing from the snapshot, and all pools of all
//! generations count their tunnels in the one process-wide `UpgradeTunnels` handle
//! that `/metrics` reads and shutdown drains.
//! A pool whose configuration did not change is carried over as built, with its
//! connection pool and its endpoints' state (health, ejections, latency estimates,
//! discovery task).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use axum_reverse_proxy::UpgradeTunnels;

use crate::admin::metrics::Metrics;
use crate::admin::metrics::RouteMetrics;
use crate::config::{self, ConfigError, ConfigErrors, Loaded, normalize_prefix};
use crate::handler::HeaderOps;
use crate::listener::tls;
use crate::routes::RouteTable;
use crate::upstream::{BuildError, BuiltPool, UpstreamService, build_upstream};

/// One route as a request sees it.
pub(crate) struct Route {
    pub(crate) name: Arc<str>,
    pub(crate) prefix: String,
    pub(crate) strip_prefix: bool,
    pub(crate) pool: Arc<str>,
    /// This route's request metrics, resolved at its first request.
    pub(crate) metrics: OnceLock<RouteMetrics>,
    pub(crate) service: UpstreamService,
    /// The pool retries: its requests carry an attempt counter (for the retry metric).
    pub(crate) retries: bool,
    pub(crate) request_headers: HeaderOps,
    pub(crate) response_headers: HeaderOps,
}

/// The active configuration, built.
pub(crate) struct Snapshot {
    pub(crate) generation: u64,
    pub(crate) loaded: Loaded,
    pub(crate) pools: BTreeMap<String, Arc<BuiltPool>>,
    /// Route table per listener name. Looked up on every request: a B-tree of a few
    /// names costs a comparison or two, where a `HashMap` would SipHash the name.
    pub(crate) tables: BTreeMap<String, Arc<RouteTable<Arc<Route>>>>,
    /// rustls configuration per TLS listener name.
    pub(crate) tls: HashMap<String, Arc<rustls::ServerConfig>>,
}

impl Snapshot {
    /// Build everything `loaded` describes, reusing unchanged pools of `previous`. Every
    /// pool counts its upgraded tunnels in `tunnels`.
    pub(crate) fn build(
        loaded: Loaded,
        previous: Option<&Snapshot>,
        metrics: &Arc<Metrics>,
        tunnels: &UpgradeTunnels,
    ) -> Result<Snapshot, ConfigErrors> {
        let cfg = &loaded.config;
        let mut errors: Vec<ConfigError> = Vec::new();
        let report = |e: BuildError| loaded.locator().error(&e.span, e.key, e.message, e.hint);

        let mut pools = BTreeMap::new();
        for (name, pool) in &cfg.pools {
            let name = name.get_ref();
            let kept = previous
                .and_then(|p| p.pools.get(name))
                .filter(|built| built.serves(pool, &cfg.server));
            match kept {
                Some(built) => {
                    pools.insert(name.clone(), built.clone());
                }
                None => match build_upstream(name, pool, &cfg.server, metrics, tunnels) {
                    Ok(built) => {
                        pools.insert(name.clone(), Arc::new(built));
                    }
                    Err(e) => errors.push(report(e)),
                },
            }
        }

        let mut tls_configs = HashMap::new();
        for (name, listener) in &cfg.listeners {
            match tls::server_config(name.get_ref(), listener, &loaded) {
                Ok(Some(config)) => {
                    tls_configs.insert(name.get_ref().clone(), config);
                }
                Ok(None) => {}
                Err(e) => errors.push(report(e)),
            }
        }
        if !errors.is_empty() {
            return Err(loaded.place(errors));
        }

        let mut tables: BTreeMap<String, RouteTable<Arc<Route>>> = cfg
            .listeners
            .keys()
            .map(|name| (name.get_ref().clone(), RouteTable::default()))
            .collect();
        for r in &cfg.routes {
            let rc = r.get_ref();
            let Some(pool) = pools.get(rc.pool.get_ref().as_str()) else {
                continue; // validation guarantees the pool exists
            };
            let route = Arc::new(Route {
                name: Arc::from(rc.display_name()),
                prefix: normalize_prefix(rc.prefix.get_ref()).to_owned(),
                strip_prefix: rc.strip_prefix,
                pool: Arc::from(rc.pool.get_ref().as_str()),
                metrics: OnceLock::new(),
                service: pool.service.clone(),
                retries: pool.config.retry.is_some(),
                request_headers: HeaderOps::compile(&rc.request_headers),
                response_headers: HeaderOps::compile(&rc.response_headers),
            });
            let hosts: Vec<String> = rc.hosts.iter().map(|h| h.get_ref().clone()).collect();
            for (listener, table) in &mut tables {
                let served_here = rc
                    .listeners
                    .as_ref()
                    .is_none_or(|ls| ls.iter().any(|l| l.get_ref() == listener));
                if served_here {
                    table.insert(&hosts, rc.prefix.get_ref(), route.clone());
                }
            }
        }
        Ok(Snapshot {
            generation: previous.map_or(1, |p| p.generation + 1),
            loaded,
            pools,
            tables: tables
                .into_iter()
                .map(|(k, t)| (k, Arc::new(t.finish())))
                .collect(),
            tls: tls_configs,
        })
    }
}

/// How long a reload waits for the pools it builds anew over discovery to find endpoints.
pub(crate) const DISCOVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Snapshot {
    /// Wait until every pool of this snapshot that was built anew (not carried over from
    /// `previous`) and whose endpoints come from discovery has found one, or `limit`
    /// passes. A rebuilt etcd or DNS pool starts empty and would answer 503 until its
    /// source first answers; waiting keeps `previous` serving meanwhile.
    pub(crate) async fn wait_for_discovery(&self, previous: &Snapshot, limit: std::time::Duration) {
        let fresh: Vec<&Arc<BuiltPool>> = self
            .pools
            .iter()
            .filter(|(name, pool)| {
                matches!(pool.kind(), "etcd" | "dns")
                    && previous
                        .pools
                        .get(*name)
                        .is_none_or(|old| !Arc::ptr_eq(old, pool))
            })
            .map(|(_, pool)| pool)
            .collect();
        let deadline = tokio::time::Instant::now() + limit;
        while fresh.iter().any(|pool| pool.endpoints().is_empty())
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

// ===== impl FileWatch =====

/// Notices changes to the configuration file by polling its modification time and size.
pub(crate) struct FileWatch {
    path: PathBuf,
    stamp: Option<(SystemTime, u64)>,
}

impl FileWatch {
    pub(crate) fn new(path: PathBuf) -> FileWatch {
        let stamp = config::stamp(&path);
        FileWatch { path, stamp }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Remember the file as it is now (a reload is about to read it).
    pub(crate) fn mark(&mut self) {
        self.stamp = config::stamp(&self.path);
    }

    /// Whether the file changed since the last look; a change is reported once.
    pub(crate) fn changed(&mut self) -> bool {
        let now = config::stamp(&self.path);
        if now.is_none() || now == self.stamp {
            return false;
        }
        self.stamp = now;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn loaded(second_target: &str) -> Loaded {
        let toml = format!(
            r#"
[listeners.web]
address = "127.0.0.1:0"
[pools.kept]
targets = ["http://127.0.0.1:1"]
[pools.changed]
targets = ["{second_target}"]
[[routes]]
prefix = "/"
pool = "kept"
[[routes]]
prefix = "/c"
pool = "changed"
"#
        );
        config::parse("t.toml", toml, ".".into(), false).unwrap()
    }

    #[tokio::test]
    async fn unchanged_pools_are_carried_over() {
        let metrics = Arc::new(Metrics::new());
        let tunnels = UpgradeTunnels::new();
        let first =
            Snapshot::build(loaded("http://127.0.0.1:2"), None, &metrics, &tunnels).unwrap();
        let second = Snapshot::build(
            loaded("http://127.0.0.1:3"),
            Some(&first),
            &metrics,
            &tunnels,
        )
        .unwrap();
        assert_eq!(second.generation, 2);
        assert!(Arc::ptr_eq(&first.pools["kept"], &second.pools["kept"]));
        assert!(!Arc::ptr_eq(
            &first.pools["changed"],
            &second.pools["changed"]
        ));
        let table = &second.tables["web"];
        assert_eq!(table.find(None, "/c/x").unwrap().1.pool.as_ref(), "changed");
        assert_eq!(table.find(None, "/x").unwrap().1.pool.as_ref(), "kept");
    }
}
