//! The configuration file's schema: one struct per table, every key with its default.
//!
//! Values whose place in the file matters for error messages are kept as
//! [`Spanned`], so that checks made after parsing can still name the line.
//! Unknown keys are rejected everywhere (`deny_unknown_fields`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use toml::Spanned;

use super::units::{ByteSize, Interval};

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Process-wide limits and settings.
    #[serde(default)]
    pub(crate) server: ServerConfig,
    /// The admin listener (`/metrics`, `/health`, `/upstreams`, `/config`); none if absent.
    #[serde(default)]
    pub(crate) admin: Option<AdminConfig>,
    /// Where and how the access log is written.
    #[serde(default)]
    pub(crate) access_log: AccessLogConfig,
    /// Listeners by name.
    #[serde(default)]
    pub(crate) listeners: BTreeMap<Spanned<String>, ListenerConfig>,
    /// Upstream pools by name.
    #[serde(default)]
    pub(crate) pools: BTreeMap<Spanned<String>, PoolConfig>,
    /// Routes, in file order (matching does not depend on the order).
    #[serde(default)]
    pub(crate) routes: Vec<Spanned<RouteConfig>>,
}

// ===== [server] =====

/// `[server]`: limits that apply to every listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ServerConfig {
    /// Runtime worker threads; absent means one per core. Read at start only.
    pub(crate) workers: Option<Spanned<usize>>,
    /// How long shutdown waits for in-flight requests and open WebSockets before closing.
    pub(crate) shutdown_timeout: Interval,
    /// Largest request head (request line, headers, blank line) accepted (431 beyond);
    /// for HTTP/2 the header list size as RFC 9113 counts it.
    pub(crate) max_header_bytes: Spanned<ByteSize>,
    /// Most header fields in a request (431 beyond).
    pub(crate) max_header_count: Spanned<usize>,
    /// Longest request target path and query (414 beyond).
    pub(crate) max_uri_bytes: Spanned<ByteSize>,
    /// Largest request body accepted (413 beyond); a pool's own limit may lower it.
    pub(crate) max_body_bytes: Option<ByteSize>,
    /// How long a client may take to send a request head (and the TLS handshake).
    pub(crate) header_read_timeout: Spanned<Interval>,
    /// How long a connection with no request in flight stays open.
    pub(crate) idle_timeout: Spanned<Interval>,
    /// HTTP/1.1: a keep-alive connection idle this long gives back its read and write
    /// buffers (about 20 KiB) until its next request arrives; 0 gives them back after
    /// every response.
    pub(crate) release_idle_buffers_after: Spanned<Interval>,
    /// Most client connections open at once over all listeners; more are refused.
    pub(crate) max_connections: Spanned<usize>,
    /// HTTP/2: most streams a client may have open at once on one connection
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`); more are refused with `REFUSED_STREAM`.
    pub(crate) http2_max_concurrent_streams: Spanned<u32>,
    /// HTTP/2: streams a client may cancel before their response starts; past this, when
    /// they are most of the connection's streams, it is closed (rapid reset).
    pub(crate) http2_max_reset_streams: Spanned<u64>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            workers: None,
            shutdown_timeout: Interval::secs(30),
            max_header_bytes: Spanned::new(0..0, ByteSize(64 * 1024)),
            max_header_count: Spanned::new(0..0, 100),
            max_uri_bytes: Spanned::new(0..0, ByteSize(8 * 1024)),
            max_body_bytes: None,
            header_read_timeout: Spanned::new(0..0, Interval::secs(10)),
            idle_timeout: Spanned::new(0..0, Interval::secs(60)),
            release_idle_buffers_after: Spanned::new(0..0, Interval::secs(1)),
            max_connections: Spanned::new(0..0, 10_000),
            http2_max_concurrent_streams: Spanned::new(0..0, 128),
            http2_max_reset_streams: Spanned::new(0..0, 100),
        }
    }
}

// ===== [admin] =====

/// `[admin]`: the admin listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminConfig {
    /// Address of the admin listener. Keep it private: it shows the configuration.
    pub(crate) address: Spanned<SocketAddr>,
}

// ===== [access_log] =====

/// `[access_log]`: one line per request.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AccessLogConfig {
    /// `text` or `json`.
    pub(crate) format: LogFormat,
    /// `"stdout"`, `"off"`, or a file path (appended to).
    pub(crate) output: Spanned<String>,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            format: LogFormat::Text,
            output: Spanned::new(0..0, "stdout".to_owned()),
        }
    }
}

/// Access-log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LogFormat {
    /// `key=value` pairs.
    Text,
    /// One JSON object per line.
    Json,
}

// ===== [listeners.NAME] =====

/// `[listeners.NAME]`: one socket clients connect to.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerConfig {
    /// Address to bind (`0.0.0.0:8080`; port 0 picks a free port).
    pub(crate) address: Spanned<SocketAddr>,
    /// Offer HTTP/2: by ALPN on TLS listeners, and by prior knowledge when `h2c` is set.
    #[serde(default = "yes")]
    pub(crate) http2: bool,
    /// Accept HTTP/2 without TLS (prior knowledge) on a plain listener.
    #[serde(default = "spanned_default")]
    pub(crate) h2c: Spanned<bool>,
    /// Terminate TLS here.
    #[serde(default)]
    pub(crate) tls: Option<Spanned<TlsConfig>>,
}

/// A default value with an empty span (it was not written in the file).
fn spanned_default<T: Default>() -> Spanned<T> {
    Spanned::new(0..0, T::default())
}

fn yes() -> bool {
    true
}

/// `[listeners.NAME.tls]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsConfig {
    /// One entry per certificate; the client's SNI name picks one.
    pub(crate) certificates: Vec<Spanned<CertificateConfig>>,
}

/// `[[listeners.NAME.tls.certificates]]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertificateConfig {
    /// Names this certificate answers for (`example.com`, `*.example.com`).
    pub(crate) server_names: Vec<Spanned<String>>,
    /// PEM certificate chain, leaf first (relative paths: from the config file's folder).
    pub(crate) cert: Spanned<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub(crate) key: Spanned<PathBuf>,
    /// Use this certificate when the client sends no SNI name or an unknown one.
    #[serde(default)]
    pub(crate) default: bool,
}

// ===== [[routes]] =====

/// `[[routes]]`: which requests go to which pool.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteConfig {
    /// Name used in metrics and logs (default: host and prefix).
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// Hosts this route answers (`api.example.com`, `*.example.com`); empty: any host.
    #[serde(default)]
    pub(crate) hosts: Vec<Spanned<String>>,
    /// Path prefix, matched on segment boundaries (`/api` matches `/api` and `/api/x`).
    #[serde(default = "root")]
    pub(crate) prefix: Spanned<String>,
    /// Remove the prefix before forwarding (`/api/x` → `/x`).
    #[serde(default)]
    pub(crate) strip_prefix: bool,
    /// The pool that serves this route.
    pub(crate) pool: Spanned<String>,
    /// Listeners this route is served on (default: all).
    #[serde(default)]
    pub(crate) listeners: Option<Vec<Spanned<String>>>,
    /// Header rules applied to the request before it is forwarded.
    #[serde(default)]
    pub(crate) request_headers: HeaderRules,
    /// Header rules applied to the response before it is returned.
    #[serde(default)]
    pub(crate) response_headers: HeaderRules,
}

fn root() -> Spanned<String> {
    Spanned::new(0..0, "/".to_owned())
}

impl RouteConfig {
    /// The route's name: given, or built from its first host and prefix.
    pub(crate) fn display_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let host = self.hosts.first().map_or("*", |h| h.get_ref().as_str());
        format!("{host}{}", self.prefix.get_ref())
    }
}

/// Header rules: `set` replaces, `add` appends, `remove` deletes (applied remove, set, add).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HeaderRules {
    pub(crate) set: BTreeMap<Spanned<String>, Spanned<String>>,
    pub(crate) add: BTreeMap<Spanned<String>, Spanned<String>>,
    pub(crate) remove: Vec<Spanned<String>>,
}

// ===== [pools.NAME] =====

/// `[pools.NAME]`: where requests go and how they are forwarded.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PoolConfig {
    /// Static targets: URLs, or `{ url = "...", weight = 2 }` tables.
    #[serde(default)]
    pub(crate) targets: Vec<Spanned<TargetConfig>>,
    /// A discovery source instead of static targets.
    #[serde(default)]
    pub(crate) discovery: Option<Spanned<DiscoveryConfig>>,
    /// How an endpoint is picked.
    #[serde(default = "spanned_default")]
    pub(crate) strategy: Spanned<Strategy>,
    /// What `consistent_hash` hashes: `"path"`, `"client_ip"`, `"header:NAME"`, `"cookie:NAME"`.
    #[serde(default)]
    pub(crate) hash_key: Option<Spanned<String>>,
    /// Active health checks.
    #[serde(default)]
    pub(crate) health_check: Option<Spanned<HealthCheckConfig>>,
    /// Passive outlier detection (ejects endpoints that keep failing); on by default.
    #[serde(default)]
    pub(crate) outlier_detection: Option<Spanned<OutlierConfig>>,
    /// Retries of requests that failed before reaching the upstream.
    #[serde(default)]
    pub(crate) retry: Option<Spanned<RetryConfig>>,
    /// Deadline for the upstream's response headers (504 beyond); none by default.
    #[serde(default)]
    pub(crate) timeout: Option<Interval>,
    /// Largest request body forwarded to this pool (413 beyond).
    #[serde(default)]
    pub(crate) max_body_bytes: Option<ByteSize>,
    /// Deadline for the upstream's answer to a WebSocket/upgrade handshake (504 beyond);
    /// 5 s by default (or `timeout` if shorter).
    #[serde(default)]
    pub(crate) websocket_connect_timeout: Option<Interval>,
    /// Close an upgraded tunnel (WebSocket…) after this long without a byte either way;
    /// none by default.
    #[serde(default)]
    pub(crate) upgrade_idle_timeout: Option<Interval>,
    /// `Host` sent upstream: `replace` (the target's) or `preserve` (the client's).
    #[serde(default)]
    pub(crate) host: HostMode,
    /// `X-Forwarded-For/-Host/-Proto`: `append` or `preserve` (pass the client's as is).
    #[serde(default)]
    pub(crate) x_forwarded: XForwardedMode,
    /// Add an RFC 7239 `Forwarded` header.
    #[serde(default)]
    pub(crate) forwarded: bool,
    /// Add `Via` with this pseudonym and answer 508 on loops.
    #[serde(default)]
    pub(crate) via: Option<String>,
    /// Whose forwarding headers are kept: `"all"`, `"none"`, or a list of networks.
    #[serde(default = "spanned_default")]
    pub(crate) trusted_proxies: Spanned<TrustedProxiesConfig>,
    /// Scheme clients use to reach us, for `X-Forwarded-Proto` (`http` or `https`).
    #[serde(default)]
    pub(crate) public_scheme: Option<Spanned<String>>,
    /// HTTP/2 by prior knowledge to plain-HTTP targets for every request.
    #[serde(default)]
    pub(crate) h2c: bool,
}

/// One static target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct TargetConfig {
    pub(crate) url: String,
    pub(crate) weight: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetTable {
    url: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

impl<'de> Deserialize<'de> for TargetConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TargetConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a URL string or a table { url = \"...\", weight = N }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TargetConfig, E> {
                Ok(TargetConfig {
                    url: v.to_owned(),
                    weight: 1,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TargetConfig, A::Error> {
                let t = TargetTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(TargetConfig {
                    url: t.url,
                    weight: t.weight,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Load-balancing strategy (`strategy = "..."`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Strategy {
    #[default]
    RoundRobin,
    WeightedRoundRobin,
    P2cPendingRequests,
    P2cPeakEwma,
    LeastRequest,
    Random,
    ConsistentHash,
}

impl Strategy {
    pub(crate) const NAMES: &'static [&'static str] = &[
        "round_robin",
        "weighted_round_robin",
        "p2c_pending_requests",
        "p2c_peak_ewma",
        "least_request",
        "random",
        "consistent_hash",
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::WeightedRoundRobin => "weighted_round_robin",
            Strategy::P2cPendingRequests => "p2c_pending_requests",
            Strategy::P2cPeakEwma => "p2c_peak_ewma",
            Strategy::LeastRequest => "least_request",
            Strategy::Random => "random",
            Strategy::ConsistentHash => "consistent_hash",
        }
    }
}

/// `Host` handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HostMode {
    #[default]
    Replace,
    Preserve,
}

/// `X-Forwarded-*` handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum XForwardedMode {
    #[default]
    Append,
    Preserve,
}

/// `trusted_proxies = "all" | "none" | ["10.0.0.0/8", "127.0.0.1"]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(untagged)]
pub(crate) enum TrustedProxiesConfig {
    #[default]
    #[serde(serialize_with = "all")]
    All,
    #[serde(serialize_with = "none")]
    None,
    List(Vec<String>),
}

fn all<S: serde::Serializer>(s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("all")
}

fn none<S: serde::Serializer>(s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("none")
}

impl<'de> Deserialize<'de> for TrustedProxiesConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TrustedProxiesConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"all\", \"none\", or a list of networks such as [\"10.0.0.0/8\"]")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "all" => Ok(TrustedProxiesConfig::All),
                    "none" => Ok(TrustedProxiesConfig::None),
                    other => Err(E::custom(format!(
                        "unknown value `{other}`: write \"all\", \"none\", or a list of networks"
                    ))),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut list = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    list.push(item);
                }
                Ok(TrustedProxiesConfig::List(list))
            }
        }
        d.deserialize_any(V)
    }
}

/// `[pools.NAME.discovery]`: exactly one source.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiscoveryConfig {
    #[serde(default)]
    pub(crate) dns: Option<DnsDiscoveryConfig>,
    #[serde(default)]
    pub(crate) etcd: Option<EtcdDiscoveryConfig>,
}

/// `[pools.NAME.discovery.dns]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DnsDiscoveryConfig {
    /// The DNS name to resolve.
    pub(crate) name: Spanned<String>,
    /// Port for A/AAAA answers (SRV answers carry their own).
    #[serde(default)]
    pub(crate) port: Option<u16>,
    /// `a`, `aaaa`, `a_and_aaaa` or `srv`.
    #[serde(default)]
    pub(crate) record: DnsRecord,
    /// `http` or `https`.
    #[serde(default = "http")]
    pub(crate) scheme: Spanned<String>,
    /// How often to resolve again (answers' TTLs may shorten it).
    #[serde(default = "thirty_seconds")]
    pub(crate) refresh: Interval,
    /// Name servers to ask (`"10.0.0.2:53"`, over UDP); empty: the system's resolver.
    #[serde(default)]
    pub(crate) servers: Vec<Spanned<SocketAddr>>,
}

fn http() -> Spanned<String> {
    Spanned::new(0..0, "http".to_owned())
}

fn thirty_seconds() -> Interval {
    Interval::secs(30)
}

/// DNS record type to query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DnsRecord {
    A,
    Aaaa,
    #[default]
    AAndAaaa,
    Srv,
}

/// `[pools.NAME.discovery.etcd]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EtcdDiscoveryConfig {
    /// etcd client URLs.
    pub(crate) endpoints: Vec<Spanned<String>>,
    /// Key prefix under which each key's value is one target URL.
    pub(crate) prefix: Spanned<String>,
    #[serde(default)]
    pub(crate) username: Option<String>,
    /// Secret: shown redacted in `/config`.
    #[serde(default)]
    pub(crate) password: Option<String>,
}

/// `[pools.NAME.health_check]`: active HTTP checks.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HealthCheckConfig {
    pub(crate) path: Spanned<String>,
    pub(crate) interval: Interval,
    pub(crate) timeout: Spanned<Interval>,
    pub(crate) healthy_threshold: Spanned<u32>,
    pub(crate) unhealthy_threshold: Spanned<u32>,
    /// Statuses that count as healthy, as an inclusive range `"200-399"` or one code.
    pub(crate) expected_status: Spanned<String>,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            path: Spanned::new(0..0, "/health".to_owned()),
            interval: Interval::secs(10),
            timeout: Spanned::new(0..0, Interval::secs(2)),
            healthy_threshold: Spanned::new(0..0, 2),
            unhealthy_threshold: Spanned::new(0..0, 3),
            expected_status: Spanned::new(0..0, "200-399".to_owned()),
        }
    }
}

/// `[pools.NAME.outlier_detection]`: passive ejection of failing endpoints. On with these
/// defaults when the table is absent; `enabled = false` turns it off.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct OutlierConfig {
    /// Whether endpoints are ejected at all.
    pub(crate) enabled: bool,
    /// Consecutive gateway failures (502/503/504, connect errors) that eject an endpoint.
    pub(crate) consecutive_failures: Spanned<u32>,
    /// First ejection time; multiplied by the number of times ejected.
    pub(crate) base_ejection_time: Interval,
    /// Longest ejection.
    pub(crate) max_ejection_time: Spanned<Interval>,
    /// Most endpoints of the pool ejected at once, in percent (never all).
    pub(crate) max_ejection_percent: Spanned<u8>,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            enabled: true,
            consecutive_failures: Spanned::new(0..0, 5),
            base_ejection_time: Interval::secs(30),
            max_ejection_time: Spanned::new(0..0, Interval::secs(300)),
            max_ejection_percent: Spanned::new(0..0, 50),
        }
    }
}

/// `[pools.NAME.retry]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RetryConfig {
    /// Attempts in total, the first included.
    pub(crate) attempts: Spanned<u32>,
    /// Base of the exponential backoff.
    pub(crate) delay: Interval,
    /// Cap on one wait (default: ten times `delay`).
    pub(crate) max_delay: Option<Interval>,
    /// Randomise waits.
    pub(crate) jitter: bool,
    /// Also retry idempotent requests after an upstream failure or timeout.
    pub(crate) idempotent: bool,
    /// Request body kept for replay.
    pub(crate) max_replay_body_bytes: ByteSize,
    /// Retry budget shared by the pool.
    pub(crate) budget: Option<Spanned<BudgetConfig>>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: Spanned::new(0..0, 3),
            delay: Interval(std::time::Duration::from_millis(500)),
            max_delay: None,
            jitter: true,
            idempotent: false,
            max_replay_body_bytes: ByteSize(64 * 1024),
            budget: None,
        }
    }
}

/// `[pools.NAME.retry.budget]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct BudgetConfig {
    /// Window over which retries and requests are counted (1s..=60s).
    pub(crate) ttl: Spanned<Interval>,
    /// Retries always allowed per second.
    pub(crate) min_per_second: u32,
    /// Extra retries allowed per request (0.2 = 20 %).
    pub(crate) ratio: Spanned<f32>,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            ttl: Spanned::new(0..0, Interval::secs(10)),
            min_per_second: 10,
            ratio: Spanned::new(0..0, 0.2),
        }
    }
}
