//! Service discovery: sources of endpoints for the discoverable balanced proxy.
//!
//! Every source here is a `Stream` of `Result<tower::discover::Change<K, V>, E>` and so a
//! [`tower::discover::Discover`]: `Change::Insert(key, endpoint)` adds or replaces an
//! endpoint, `Change::Remove(key)` removes it. The endpoint values convert into their URL
//! (`V: Into<String>`), which is what the balanced proxies take; the
//! [`DiscoverableBalancedProxy`](crate::DiscoverableBalancedProxy) also reads the weight
//! of a [`WeightedUrl`] and the weight and DNS name of a [`DnsEndpoint`].
//!
//! | source | keys | values | weights | `Host` / TLS name | updates |
//! |---|---|---|---|---|---|
//! | [`StaticDiscovery`] | URL | URL | 1 | URL host | none: Inserts once, then pending |
//! | [`FileDiscovery`] | URL | [`WeightedUrl`] | `weight=N` | URL host | file polled for changes |
//! | [`DnsDiscovery`] (`dns`) | `IpAddr` | URL | 1 | the IP (1.3's shape) | TTL-aware re-lookups |
//! | [`DnsEndpointDiscovery`] (`dns`) | `SocketAddr` | [`DnsEndpoint`] | SRV weights | the DNS name | same task as `DnsDiscovery` |
//! | [`StaticDnsDiscovery`] (`dns`) | `IpAddr` | URL | 1 | the IP (1.3's shape) | one lookup, then the end |
//! | [`EtcdDiscovery`] (`etcd`) | etcd key | [`WeightedUrl`] | `"weight": N` | URL host | etcd watch |
//!
//! ```
//! use futures_util::StreamExt;
//! use tower::discover::Change;
//! use axum_reverse_proxy::discover::StaticDiscovery;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut pool = StaticDiscovery::new(["http://10.0.0.1:8080", "http://10.0.0.2:8080"]);
//! let Some(Ok(Change::Insert(key, url))) = pool.next().await else { panic!() };
//! assert_eq!((key.as_str(), url.as_str()), ("http://10.0.0.1:8080", "http://10.0.0.1:8080"));
//! # }
//! ```
//!
//! # Live sources: one task, many subscribers
//!
//! The live sources ([`DnsDiscovery`], [`DnsEndpointDiscovery`], [`FileDiscovery`],
//! [`EtcdDiscovery`]) run one background task that publishes the *whole* endpoint set
//! through a `tokio::sync::watch` channel. Each handle is a subscriber that diffs the sets
//! it sees against the last one it delivered and yields Removes, then Inserts. So:
//!
//! - **clones are independent**: a clone starts from an empty set (the current endpoints
//!   are replayed to it as Inserts) and then sees every later change. Nothing is lost and
//!   nothing is stolen from another clone (1.3's clones shared one receiver and could miss
//!   wakeups). A subscriber that falls behind sees the latest set, not every intermediate
//!   one: the differences it yields still add up to the truth;
//! - **failures** are `Err` items, one per failed round (a clone that arrives while the
//!   source is failing gets the current failure once). The endpoints are kept as they
//!   were; retries back off, so a broken source never spins;
//! - **lifetime**: the task stops as soon as the last handle is dropped;
//! - constructors spawn the task and so need a Tokio runtime; they return an error, rather
//!   than panic, outside one.
//!
//! # DNS (feature `dns`)
//!
//! [`DnsDiscoveryConfig`] is 1.3's configuration, fields unchanged; the settings added
//! since make it a [`DnsDiscoverySettings`]: SRV records, A/AAAA/both, minimum refresh,
//! TTL. Fixed from 1.3: `resolver_config` and `resolver_opts` are honoured independently;
//! no lost wakeups; the next lookup happens when the records' TTL expires (clamped between
//! the minimum refresh, default 1 s, and `refresh_interval`), and the first lookup happens
//! once; IPv6 endpoints are bracketed (`http://[2001:db8::1]:80`); the task stops with the
//! last handle; [`StaticDnsDiscovery`] is `Clone`, `Send + 'static`, and usable with the
//! balancer.
//!
//! **`Host` and TLS: the DNS name.** [`DnsDiscovery`] keeps 1.3's item type, a URL
//! string, which can only name the resolved IP: requests to its endpoints carry the IP as
//! `Host` and TLS verifies the IP. Give the balancer [`DnsDiscovery::endpoints`] (or a
//! [`DnsEndpointDiscovery`]) instead: its [`DnsEndpoint`]s carry the name, and the
//! proxy connects to the address while sending the name as `Host` (`name:port` unless
//! the port is the scheme's default) and as the TLS server name, verifying the
//! certificate against it. For SRV records the name is the record's target, and weights
//! and priorities follow RFC 2782 (see [`DnsDiscoverySettings::with_srv`]).
//!
//! ```no_run
//! # #[cfg(feature = "dns")]
//! # mod example {
//! use axum_reverse_proxy::{DiscoverableBalancedProxy, DnsDiscovery, DnsDiscoveryConfig};
//! use axum_reverse_proxy::LoadBalancingStrategy;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let dns = DnsDiscovery::new(DnsDiscoveryConfig::new("api.internal", 8443).with_https(true))?;
//! // `Host: api.internal:8443`, SNI `api.internal`, connections to each resolved address.
//! let proxy = DiscoverableBalancedProxy::new("/", dns.endpoints())
//!     .with_strategy(LoadBalancingStrategy::WeightedRoundRobin);
//! proxy.start_discovery().await;
//! # Ok(())
//! # }
//! # }
//! ```
//!
//! # etcd (feature `etcd`)
//!
//! [`EtcdDiscovery`] mirrors a key prefix of an etcd v3 cluster; see its documentation for
//! the value format and for why it speaks etcd's JSON gateway over HTTP/1.1 instead of gRPC.

// The table above links the feature-gated sources, absent from a build without them.
#![cfg_attr(
    not(all(feature = "dns", feature = "etcd")),
    allow(rustdoc::broken_intra_doc_links)
)]

mod endpoint;
mod file;
mod publish;

#[cfg(feature = "dns")]
mod dns;
#[cfg(feature = "etcd")]
mod etcd;

pub use self::endpoint::WeightedUrl;
pub(crate) use self::endpoint::describe;
pub use self::file::{FileDiscovery, StaticDiscovery};

#[cfg(feature = "dns")]
pub use self::dns::{
    DnsDiscovery, DnsDiscoveryConfig, DnsDiscoverySettings, DnsEndpoint, DnsEndpointDiscovery,
    DnsRecordTypes, StaticDnsDiscovery,
};
#[cfg(feature = "etcd")]
pub use self::etcd::{EtcdDiscovery, EtcdDiscoveryConfig};

#[cfg(test)]
mod tests;
