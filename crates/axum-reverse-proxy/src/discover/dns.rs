//! DNS discovery (feature `dns`): A/AAAA or SRV lookups through hickory-resolver 0.25,
//! refreshed at the records' TTL.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use hickory_resolver::config::{ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{ResolveError, TokioResolver};
use tower::discover::Change;

use super::publish::{Publisher, Subscription, backoff};
use crate::error::BoxError;

/// The shortest wait between two lookups whatever the configuration says.
const HARD_FLOOR: Duration = Duration::from_millis(10);

// ===== impl DnsDiscoveryConfig =====

/// What to resolve and how often: the configuration of axum-reverse-proxy 1.3, unchanged.
///
/// Its fields are exactly 1.3's, so struct literals written for 1.3 still compile. The
/// settings added since ([`with_srv`](Self::with_srv),
/// [`with_record_types`](Self::with_record_types), [`with_min_refresh`](Self::with_min_refresh),
/// [`with_respect_ttl`](Self::with_respect_ttl)) turn it into a [`DnsDiscoverySettings`], which
/// every constructor accepts as well.
///
/// `resolver_config` and `resolver_opts` are honoured independently: a missing
/// `resolver_config` means the system's (`/etc/resolv.conf`), missing `resolver_opts` means
/// the system's options with the system configuration and hickory's defaults with a given
/// configuration.
#[derive(Debug, Clone)]
pub struct DnsDiscoveryConfig {
    /// The name to resolve: a host name, or with [`with_srv`](Self::with_srv) the SRV owner
    /// name (`_http._tcp.example.com`).
    pub hostname: String,
    /// The port of every endpoint (unused for SRV, whose records carry the port).
    pub port: u16,
    /// The longest time between two lookups (default 30 s). With TTLs respected (the
    /// default), a lookup happens earlier when the records expire earlier.
    pub refresh_interval: Duration,
    /// `https://` endpoint URLs instead of `http://` (default `false`).
    pub use_https: bool,
    /// The resolver's name servers; `None` means the system's.
    pub resolver_config: Option<ResolverConfig>,
    /// The resolver's options; `None` means the defaults (see the type's doc).
    pub resolver_opts: Option<ResolverOpts>,
}

impl DnsDiscoveryConfig {
    /// Resolves `hostname`, endpoints on `port`, every 30 s at most, over `http://`.
    pub fn new<S: Into<String>>(hostname: S, port: u16) -> Self {
        Self {
            hostname: hostname.into(),
            port,
            refresh_interval: Duration::from_secs(30),
            use_https: false,
            resolver_config: None,
            resolver_opts: None,
        }
    }

    /// The longest time between two lookups.
    pub fn with_refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = interval;
        self
    }

    /// `https://` endpoint URLs when `true`.
    pub fn with_https(mut self, use_https: bool) -> Self {
        self.use_https = use_https;
        self
    }

    /// Name servers to ask instead of the system's.
    pub fn with_resolver_config(mut self, config: ResolverConfig) -> Self {
        self.resolver_config = Some(config);
        self
    }

    /// Resolver options (timeouts, attempts, cache, lookup strategy…).
    pub fn with_resolver_opts(mut self, opts: ResolverOpts) -> Self {
        self.resolver_opts = Some(opts);
        self
    }

    /// See [`DnsDiscoverySettings::with_srv`].
    pub fn with_srv(self, srv: bool) -> DnsDiscoverySettings {
        DnsDiscoverySettings::from(self).with_srv(srv)
    }

    /// See [`DnsDiscoverySettings::with_record_types`].
    pub fn with_record_types(self, types: DnsRecordTypes) -> DnsDiscoverySettings {
        DnsDiscoverySettings::from(self).with_record_types(types)
    }

    /// See [`DnsDiscoverySettings::with_min_refresh`].
    pub fn with_min_refresh(self, floor: Duration) -> DnsDiscoverySettings {
        DnsDiscoverySettings::from(self).with_min_refresh(floor)
    }

    /// See [`DnsDiscoverySettings::with_respect_ttl`].
    pub fn with_respect_ttl(self, respect: bool) -> DnsDiscoverySettings {
        DnsDiscoverySettings::from(self).with_respect_ttl(respect)
    }
}

/// Which address records a host name is resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DnsRecordTypes {
    /// Whatever the resolver's `ip_strategy` says (hickory's default: A records, AAAA only
    /// when there are none). This is 1.3's behaviour.
    #[default]
    ResolverDefault,
    /// A records only.
    A,
    /// AAAA records only.
    Aaaa,
    /// Both: every A and every AAAA record. A name with records of only one family is fine.
    Both,
}

// ===== impl DnsDiscoverySettings =====

/// A [`DnsDiscoveryConfig`] with the settings added after 1.3.
///
/// Built from a config by any of the new `with_*` builders, or by `From`:
///
/// ```
/// use std::time::Duration;
/// use axum_reverse_proxy::DnsDiscoveryConfig;
/// use axum_reverse_proxy::discover::DnsRecordTypes;
///
/// let settings = DnsDiscoveryConfig::new("backend.internal", 8080)
///     .with_refresh_interval(Duration::from_secs(60))
///     .with_record_types(DnsRecordTypes::Both)
///     .with_min_refresh(Duration::from_secs(5));
/// # let _ = settings;
/// ```
#[derive(Debug, Clone)]
pub struct DnsDiscoverySettings {
    config: DnsDiscoveryConfig,
    srv: bool,
    record_types: DnsRecordTypes,
    min_refresh: Duration,
    respect_ttl: bool,
}

impl From<DnsDiscoveryConfig> for DnsDiscoverySettings {
    fn from(config: DnsDiscoveryConfig) -> Self {
        Self {
            config,
            srv: false,
            record_types: DnsRecordTypes::default(),
            min_refresh: Duration::from_secs(1),
            respect_ttl: true,
        }
    }
}

impl DnsDiscoverySettings {
    /// The 1.3 part of the settings.
    pub fn config(&self) -> &DnsDiscoveryConfig {
        &self.config
    }

    /// Looks up SRV records (RFC 2782) at `hostname`, which must then be the full owner name
    /// (`_service._proto.name`): each record's target is resolved (per
    /// [`with_record_types`](Self::with_record_types)) and gives endpoints on the record's
    /// port, carrying its weight and priority ([`DnsEndpoint`]). A target of `.` ("no
    /// service") gives no endpoint. `port` is ignored.
    ///
    /// - **Priority**: each lookup uses the lowest priority value that has a target that
    ///   resolves; the higher values are backups, used only while no target of a lower
    ///   one resolves (a failing target's records are skipped, as RFC 2782 clients do).
    ///   The choice is made per lookup, by DNS alone: endpoints of the chosen priority
    ///   that fail health checks or are ejected do not bring the backups in.
    /// - **Weight**: the endpoints of the chosen priority share traffic in proportion to
    ///   their SRV weights, through the balancer's weighted strategies (see
    ///   [`DnsEndpoint::effective_weight`] for weight 0).
    /// - **Name**: requests to an endpoint carry the record's *target* (`web-1.example.com`)
    ///   as `Host` and TLS server name, not the service's domain (`example.com`): the
    ///   target is the name the address was resolved from, and the name that host's
    ///   certificate is usually issued for (one certificate per instance, as with
    ///   Kubernetes headless services). An upstream that expects the service's name (a
    ///   virtual host) needs [`HostBehaviour::Preserve`](crate::HostBehaviour::Preserve)
    ///   or a certificate for both.
    pub fn with_srv(mut self, srv: bool) -> Self {
        self.srv = srv;
        self
    }

    /// Which address records to look up (default: the resolver's strategy, as in 1.3).
    pub fn with_record_types(mut self, types: DnsRecordTypes) -> Self {
        self.record_types = types;
        self
    }

    /// The shortest time between two lookups (default 1 s, never below 10 ms): a TTL of 0
    /// or a failing lookup cannot make the task spin. After a failure, lookups back off from
    /// this floor, doubling up to the refresh interval.
    pub fn with_min_refresh(mut self, floor: Duration) -> Self {
        self.min_refresh = floor;
        self
    }

    /// Whether the records' TTL brings the next lookup forward (default `true`): the next
    /// lookup then happens when the shortest TTL expires, clamped between the minimum
    /// refresh and the refresh interval. With `false`, lookups happen every refresh
    /// interval and bypass the resolver's cache (1.3's behaviour, minus the stale cache).
    pub fn with_respect_ttl(mut self, respect: bool) -> Self {
        self.respect_ttl = respect;
        self
    }

    /// See [`DnsDiscoveryConfig::with_refresh_interval`].
    pub fn with_refresh_interval(mut self, interval: Duration) -> Self {
        self.config.refresh_interval = interval;
        self
    }

    /// See [`DnsDiscoveryConfig::with_https`].
    pub fn with_https(mut self, use_https: bool) -> Self {
        self.config.use_https = use_https;
        self
    }

    /// See [`DnsDiscoveryConfig::with_resolver_config`].
    pub fn with_resolver_config(mut self, config: ResolverConfig) -> Self {
        self.config.resolver_config = Some(config);
        self
    }

    /// See [`DnsDiscoveryConfig::with_resolver_opts`].
    pub fn with_resolver_opts(mut self, opts: ResolverOpts) -> Self {
        self.config.resolver_opts = Some(opts);
        self
    }

    fn floor(&self) -> Duration {
        self.min_refresh.max(HARD_FLOOR)
    }

    fn interval(&self) -> Duration {
        self.config.refresh_interval.max(self.floor())
    }
}

// ===== impl DnsEndpoint =====

/// One resolved endpoint: an address, the URL to reach it, and what DNS said about it.
///
/// It converts into its URL (`Into<String>`), so a [`DnsEndpointDiscovery`] feeds any
/// balancer that takes URL strings. The
/// [`DiscoverableBalancedProxy`](crate::DiscoverableBalancedProxy) reads more: it
/// connects to [`url`](Self::url) (the address), sends [`hostname`](Self::hostname) as
/// `Host` (with the port when it is not the scheme's default) and as the TLS server name,
/// verifying the certificate against it, and weights the endpoint by
/// [`effective_weight`](Self::effective_weight).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DnsEndpoint {
    url: String,
    addr: SocketAddr,
    hostname: String,
    weight: u16,
    priority: u16,
    effective_weight: u32,
}

impl DnsEndpoint {
    /// `http://1.2.3.4:80` or `https://[2001:db8::1]:443`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The resolved address and port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The DNS name this address was resolved from, without the trailing dot: the name
    /// looked up for A/AAAA records, the record's target for SRV (see
    /// [`DnsDiscoverySettings::with_srv`] for why the target). What `Host` and TLS SNI
    /// carry.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The SRV weight (1 for A/AAAA records). When two SRV targets resolve to this same
    /// address and port, their weights are added.
    pub fn weight(&self) -> u16 {
        self.weight
    }

    /// The relative weight the balancer gives this endpoint among the others of the same
    /// lookup, at least 1, following RFC 2782: the SRV weight when every endpoint has a
    /// non-zero one; 1 each when all are 0; and when both occur, the SRV weight × 100
    /// with 0 counting as 1, so that weight-0 targets get "a very small chance of being
    /// selected" (about 1 % of a weight-1 target). 1 for A/AAAA records.
    pub fn effective_weight(&self) -> u32 {
        self.effective_weight
    }

    /// The SRV priority (0 for A/AAAA records).
    pub fn priority(&self) -> u16 {
        self.priority
    }
}

impl fmt::Display for DnsEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl From<DnsEndpoint> for String {
    fn from(endpoint: DnsEndpoint) -> Self {
        endpoint.url
    }
}

/// Every endpoint of one lookup round.
type EndpointSet = BTreeMap<SocketAddr, DnsEndpoint>;

/// The 1.3 projection: one endpoint per IP address (for SRV, the lowest port of that IP).
fn by_ip(set: &EndpointSet) -> BTreeMap<IpAddr, String> {
    let mut out = BTreeMap::new();
    // `SocketAddr` order puts the lowest port of an IP first.
    for (addr, endpoint) in set {
        out.entry(addr.ip()).or_insert_with(|| endpoint.url.clone());
    }
    out
}

fn by_socket_addr(set: &EndpointSet) -> BTreeMap<SocketAddr, DnsEndpoint> {
    set.clone()
}

/// The balancer weights of one SRV priority level (see [`DnsEndpoint::effective_weight`]).
fn settle_srv_weights(set: &mut EndpointSet) {
    let zero = set.values().any(|e| e.weight == 0);
    let nonzero = set.values().any(|e| e.weight > 0);
    for endpoint in set.values_mut() {
        endpoint.effective_weight = match (zero, nonzero) {
            (true, true) => (u32::from(endpoint.weight) * 100).max(1),
            (false, true) => u32::from(endpoint.weight),
            _ => 1,
        };
    }
}

// ===== impl Lookup =====

/// A resolver and what to ask it.
struct Lookup {
    resolver: TokioResolver,
    settings: DnsDiscoverySettings,
    scheme: &'static str,
}

/// A lookup failure, naming what was looked up.
#[derive(Debug)]
struct LookupError {
    name: String,
    source: ResolveError,
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DNS lookup of {} failed: {}", self.name, self.source)
    }
}

impl StdError for LookupError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.source)
    }
}

impl Lookup {
    fn new(settings: DnsDiscoverySettings) -> Result<Self, BoxError> {
        let config = &settings.config;
        let mut builder = match &config.resolver_config {
            Some(resolver_config) => TokioResolver::builder_with_config(
                resolver_config.clone(),
                TokioConnectionProvider::default(),
            ),
            None => TokioResolver::builder_tokio()?,
        };
        if let Some(opts) = &config.resolver_opts {
            *builder.options_mut() = opts.clone();
        }
        Ok(Self {
            resolver: builder.build(),
            scheme: if config.use_https { "https" } else { "http" },
            settings,
        })
    }

    /// One round: the endpoint set and when its records expire.
    async fn round(&self) -> Result<(EndpointSet, Instant), LookupError> {
        if !self.settings.respect_ttl {
            self.resolver.clear_cache();
        }
        let name = self.settings.config.hostname.as_str();
        let mut set = EndpointSet::new();
        if !self.settings.srv {
            let (ips, valid_until) = self.addresses(name).await?;
            let host = name.strip_suffix('.').unwrap_or(name);
            for ip in ips {
                self.insert(&mut set, ip, self.settings.config.port, host, 1, 0);
            }
            return Ok((set, valid_until));
        }

        let srv = self
            .resolver
            .srv_lookup(name)
            .await
            .map_err(|source| LookupError {
                name: name.to_owned(),
                source,
            })?;
        let mut valid_until = srv.as_lookup().valid_until();
        let mut records: Vec<_> = srv.iter().collect();
        // By priority, then by target: when two targets share an address and port, the
        // endpoint takes the first name, whatever order the server answered in.
        records.sort_by(|a, b| {
            (a.priority().cmp(&b.priority())).then_with(|| a.target().cmp(b.target()))
        });
        let mut last_error = None;
        let mut i = 0;
        while i < records.len() {
            let priority = records[i].priority();
            let end = records[i..]
                .iter()
                .position(|record| record.priority() != priority)
                .map_or(records.len(), |n| i + n);
            for record in &records[i..end] {
                let target = record.target();
                if target.is_root() {
                    continue;
                }
                let target = target.to_ascii();
                match self.addresses(&target).await {
                    Ok((ips, until)) => {
                        valid_until = valid_until.min(until);
                        let host = target.strip_suffix('.').unwrap_or(&target);
                        for ip in ips {
                            self.insert(
                                &mut set,
                                ip,
                                record.port(),
                                host,
                                record.weight(),
                                priority,
                            );
                        }
                    }
                    // A target that does not resolve is skipped, as RFC 2782 clients do.
                    Err(error) => last_error = Some(error),
                }
            }
            if !set.is_empty() {
                settle_srv_weights(&mut set);
                return Ok((set, valid_until));
            }
            i = end;
        }
        match last_error {
            Some(error) => Err(error),
            // Only `.` targets (or none): the service is explicitly not available.
            None => Ok((set, valid_until)),
        }
    }

    fn insert(
        &self,
        set: &mut EndpointSet,
        ip: IpAddr,
        port: u16,
        hostname: &str,
        weight: u16,
        priority: u16,
    ) {
        let addr = SocketAddr::new(ip, port);
        set.entry(addr)
            .and_modify(|endpoint| endpoint.weight = endpoint.weight.saturating_add(weight))
            .or_insert_with(|| DnsEndpoint {
                // `SocketAddr` displays IPv6 bracketed: `[2001:db8::1]:80`.
                url: format!("{}://{addr}", self.scheme),
                addr,
                hostname: hostname.to_owned(),
                weight,
                priority,
                effective_weight: 1,
            });
    }

    /// The addresses of `name` per the configured record types.
    async fn addresses(&self, name: &str) -> Result<(Vec<IpAddr>, Instant), LookupError> {
        let literal = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok((vec![ip], Instant::now() + self.settings.interval()));
        }
        let error = |source| LookupError {
            name: name.to_owned(),
            source,
        };
        match self.settings.record_types {
            DnsRecordTypes::ResolverDefault => {
                let found = self.resolver.lookup_ip(name).await.map_err(error)?;
                Ok((found.iter().collect(), found.valid_until()))
            }
            DnsRecordTypes::A => {
                let found = self.resolver.ipv4_lookup(name).await.map_err(error)?;
                let ips = found.iter().map(|a| IpAddr::V4(a.0)).collect();
                Ok((ips, found.valid_until()))
            }
            DnsRecordTypes::Aaaa => {
                let found = self.resolver.ipv6_lookup(name).await.map_err(error)?;
                let ips = found.iter().map(|aaaa| IpAddr::V6(aaaa.0)).collect();
                Ok((ips, found.valid_until()))
            }
            DnsRecordTypes::Both => {
                let (v4, v6) = tokio::join!(
                    self.resolver.ipv4_lookup(name),
                    self.resolver.ipv6_lookup(name)
                );
                let mut ips = Vec::new();
                let mut valid_until: Option<Instant> = None;
                let mut failures = Vec::new();
                match v4 {
                    Ok(found) => {
                        ips.extend(found.iter().map(|a| IpAddr::V4(a.0)));
                        valid_until = Some(found.valid_until());
                    }
                    Err(e) => failures.push(e),
                }
                match v6 {
                    Ok(found) => {
                        ips.extend(found.iter().map(|aaaa| IpAddr::V6(aaaa.0)));
                        let until = found.valid_until();
                        valid_until = Some(valid_until.map_or(until, |v| v.min(until)));
                    }
                    Err(e) => failures.push(e),
                }
                // One family having no records is normal; any other failure fails the round
                // (a partial answer would drop the other family's endpoints).
                let serious = failures.iter().position(|e| !e.is_no_records_found());
                match (valid_until, serious) {
                    (Some(until), None) => Ok((ips, until)),
                    (_, Some(n)) => Err(error(failures.swap_remove(n))),
                    (None, None) => match failures.pop() {
                        Some(e) => Err(error(e)),
                        None => Ok((ips, Instant::now() + self.settings.interval())),
                    },
                }
            }
        }
    }

    /// When to look up again after a success whose records expire at `valid_until`.
    fn next_delay(&self, valid_until: Instant) -> Duration {
        let interval = self.settings.interval();
        if !self.settings.respect_ttl {
            return interval;
        }
        valid_until
            .saturating_duration_since(Instant::now())
            .clamp(self.settings.floor(), interval)
    }
}

/// The background task of a [`DnsDiscovery`]: look up, publish, wait, until every handle
/// is dropped.
async fn run(lookup: Lookup, publisher: Publisher<EndpointSet>) {
    let mut failures = 0u32;
    loop {
        let outcome = tokio::select! {
            outcome = lookup.round() => outcome,
            _ = publisher.closed() => return,
        };
        let delay = match outcome {
            Ok((set, valid_until)) => {
                failures = 0;
                publisher.publish(set);
                lookup.next_delay(valid_until)
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::debug!(%error, failures, "DNS discovery lookup failed");
                publisher.fail(error);
                backoff(
                    lookup.settings.floor(),
                    lookup.settings.interval(),
                    failures,
                )
            }
        };
        if !publisher.sleep(delay).await {
            return;
        }
    }
}

// ===== impl DnsDiscovery =====

/// A live DNS source: looks the name up in a background task, again when the records'
/// TTL expires (at most every `refresh_interval`), and streams the differences as
/// `Change::Remove(ip)` then `Change::Insert(ip, url)`.
///
/// It is a `Stream<Item = Result<Change<IpAddr, String>, Box<dyn Error + Send + Sync>>>`,
/// so it is a [`tower::discover::Discover`]. A failed lookup is an `Err` item; the previous
/// endpoints are kept and lookups back off from the minimum refresh.
///
/// Its values are 1.3's URL strings, which name the resolved IP: a balancer over this
/// stream sends the IP as `Host` and verifies TLS against the IP, with weight 1 for every
/// endpoint. Give the balancer [`endpoints`](Self::endpoints) instead to send the DNS name
/// (and to use SRV weights).
///
/// **Clones** are independent subscribers of the same background task: a clone starts
/// with the current endpoints replayed as Inserts, then sees every later change. Lookups
/// are never duplicated. The task stops once the last clone (and the last
/// [`DnsEndpointDiscovery`] made from it) is dropped.
///
/// `new` must be called within a Tokio runtime (it returns an error otherwise).
#[derive(Clone)]
pub struct DnsDiscovery {
    inner: DnsSubscription<IpAddr, String>,
}

impl DnsDiscovery {
    /// Builds the resolver and starts the background task; the first lookup starts at once.
    ///
    /// Errors: no Tokio runtime, or no usable system resolver configuration when
    /// `resolver_config` is `None`.
    pub fn new(
        config: impl Into<DnsDiscoverySettings>,
    ) -> Result<Self, Box<dyn StdError + Send + Sync>> {
        Ok(Self {
            inner: DnsSubscription::start(config.into(), by_ip)?,
        })
    }

    /// A stream of the same task's endpoints keyed by address *and port*, with their DNS
    /// name, SRV weight and priority. With SRV records, one IP can serve several ports; this
    /// stream keeps them all, while `DnsDiscovery` keeps the lowest port of each IP. The
    /// discoverable balanced proxy sends each endpoint's DNS name as `Host` and TLS server
    /// name, and weights it by SRV weight ([`DnsEndpoint`]).
    pub fn endpoints(&self) -> DnsEndpointDiscovery {
        DnsEndpointDiscovery {
            inner: self.inner.resubscribe(by_socket_addr),
        }
    }
}

impl fmt::Debug for DnsDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsDiscovery").finish_non_exhaustive()
    }
}

impl Stream for DnsDiscovery {
    type Item = Result<Change<IpAddr, String>, Box<dyn StdError + Send + Sync>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().inner.sub.poll_change(cx)
    }
}

// ===== impl DnsEndpointDiscovery =====

/// Like [`DnsDiscovery`], keyed by `SocketAddr` and carrying [`DnsEndpoint`]s (which
/// convert into their URL). Made by [`DnsEndpointDiscovery::new`] or
/// [`DnsDiscovery::endpoints`]; clones behave as `DnsDiscovery`'s.
#[derive(Clone)]
pub struct DnsEndpointDiscovery {
    inner: DnsSubscription<SocketAddr, DnsEndpoint>,
}

impl DnsEndpointDiscovery {
    /// As [`DnsDiscovery::new`].
    pub fn new(
        config: impl Into<DnsDiscoverySettings>,
    ) -> Result<Self, Box<dyn StdError + Send + Sync>> {
        Ok(Self {
            inner: DnsSubscription::start(config.into(), by_socket_addr)?,
        })
    }
}

impl fmt::Debug for DnsEndpointDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsEndpointDiscovery")
            .finish_non_exhaustive()
    }
}

impl Stream for DnsEndpointDiscovery {
    type Item = Result<Change<SocketAddr, DnsEndpoint>, Box<dyn StdError + Send + Sync>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().inner.sub.poll_change(cx)
    }
}

/// A subscription to a DNS task, `Clone` as a fresh subscription.
struct DnsSubscription<K, V> {
    sub: Subscription<EndpointSet, K, V>,
}

impl<K: Ord + Clone, V: PartialEq + Clone> DnsSubscription<K, V> {
    fn start(
        settings: DnsDiscoverySettings,
        project: fn(&EndpointSet) -> BTreeMap<K, V>,
    ) -> Result<Self, BoxError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "DNS discovery must be started within a Tokio runtime")?;
        let lookup = Lookup::new(settings)?;
        let (publisher, rx) = Publisher::new();
        runtime.spawn(run(lookup, publisher));
        Ok(Self {
            sub: Subscription::new(rx, project),
        })
    }

    fn resubscribe<K2: Ord + Clone, V2: PartialEq + Clone>(
        &self,
        project: fn(&EndpointSet) -> BTreeMap<K2, V2>,
    ) -> DnsSubscription<K2, V2> {
        DnsSubscription {
            sub: self.sub.resubscribe_as(project),
        }
    }
}

impl<K: Ord + Clone, V: PartialEq + Clone> Clone for DnsSubscription<K, V> {
    fn clone(&self) -> Self {
        Self {
            sub: self.sub.resubscribe(),
        }
    }
}

// ===== impl StaticDnsDiscovery =====

type Outcome = Result<Arc<[(IpAddr, String)]>, Arc<LookupError>>;
type OneShot = Shared<BoxFuture<'static, Outcome>>;

/// One lookup, its endpoints as `Change::Insert(ip, url)`, then the end of the stream (or
/// one `Err` item, then the end).
///
/// The lookup starts at the first poll (so `new` needs no runtime) and happens once for all
/// clones: a clone replays the same result from the start. It is `Send + Sync + 'static`
/// and works with the discoverable balanced proxy.
pub struct StaticDnsDiscovery {
    /// The lookup, until this handle saw its outcome.
    lookup: Option<OneShot>,
    outcome: Option<Outcome>,
    next: usize,
}

impl StaticDnsDiscovery {
    /// Builds the resolver; the lookup happens at the first poll.
    ///
    /// Errors: no usable system resolver configuration when `resolver_config` is `None`.
    pub fn new(
        config: impl Into<DnsDiscoverySettings>,
    ) -> Result<Self, Box<dyn StdError + Send + Sync>> {
        let lookup = Lookup::new(config.into())?;
        let future: BoxFuture<'static, Outcome> = Box::pin(async move {
            match lookup.round().await {
                Ok((set, _)) => Ok(by_ip(&set).into_iter().collect()),
                Err(error) => Err(Arc::new(error)),
            }
        });
        Ok(Self {
            lookup: Some(future.shared()),
            outcome: None,
            next: 0,
        })
    }
}

impl Clone for StaticDnsDiscovery {
    /// A clone starts from the first item again (the lookup is not repeated).
    fn clone(&self) -> Self {
        Self {
            // A `Shared` handle that completed must not be polled again: once the outcome
            // is known, clones take it instead.
            lookup: match self.outcome {
                Some(_) => None,
                None => self.lookup.clone(),
            },
            outcome: self.outcome.clone(),
            next: 0,
        }
    }
}

impl fmt::Debug for StaticDnsDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticDnsDiscovery").finish_non_exhaustive()
    }
}

impl Stream for StaticDnsDiscovery {
    type Item = Result<Change<IpAddr, String>, Box<dyn StdError + Send + Sync>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.outcome.is_none() {
            let Some(lookup) = this.lookup.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(lookup).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(outcome) => {
                    this.outcome = Some(outcome);
                    this.lookup = None;
                }
            }
        }
        let position = this.next;
        this.next = this.next.saturating_add(1);
        match &this.outcome {
            Some(Ok(endpoints)) => Poll::Ready(
                endpoints
                    .get(position)
                    .map(|(ip, url)| Ok(Change::Insert(*ip, url.clone()))),
            ),
            Some(Err(error)) if position == 0 => {
                Poll::Ready(Some(Err(Box::new(OneShotError(Arc::clone(error))))))
            }
            _ => Poll::Ready(None),
        }
    }
}

/// The shared lookup failure of a [`StaticDnsDiscovery`].
#[derive(Debug)]
struct OneShotError(Arc<LookupError>);

impl fmt::Display for OneShotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl StdError for OneShotError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0.source)
    }
}
