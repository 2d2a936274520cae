//! How a proxy treats each request: Host, forwarding headers, Via, limits and timeouts.
//!
//! A [`ProxyPolicy`] is set on any proxy with `with_policy` and is built with `with_*`
//! methods. The defaults are what a reverse proxy in front of one application wants:
//!
//! | setting | default |
//! |---|---|
//! | `Host` sent upstream | the target's authority ([`HostBehaviour::Replace`]) |
//! | `X-Forwarded-For` / `-Host` / `-Proto` | appended/set when the peer address is known ([`XForwardedFor::Append`]) |
//! | incoming forwarding headers | kept from every peer ([`TrustedProxies::All`]) |
//! | RFC 7239 `Forwarded` | off |
//! | `Via` | off |
//! | upstream response-header timeout | none |
//! | upstream silence while the response body streams | no limit |
//! | request body limit | none |
//! | HTTP/2 to plain-HTTP upstreams | only for gRPC (h2c prior knowledge) |
//! | WebSocket/upgrade handshake deadline | 5 s (504 beyond) |
//! | idle upgraded tunnels | kept open |
//! | upgraded tunnels counted in | a fresh [`UpgradeTunnels`] per policy |
//! | upgraded tunnel buffers | 8 KiB per direction |
//!
//! ```
//! use std::time::Duration;
//! use axum_reverse_proxy::{HostBehaviour, ProxyPolicy, ReverseProxy, TrustedProxies};
//!
//! let policy = ProxyPolicy::new()
//!     .with_host_behaviour(HostBehaviour::Preserve)
//!     .with_trusted_proxies(TrustedProxies::list(["10.0.0.0/8", "127.0.0.1"]).unwrap())
//!     .with_forwarded(true)
//!     .with_via("edge")
//!     .with_upstream_timeout(Duration::from_secs(30))
//!     .with_max_request_body_bytes(10 * 1024 * 1024);
//! let proxy = ReverseProxy::new("/api", "http://127.0.0.1:3000").with_policy(policy);
//! ```
//!
//! # Security
//! Forwarding headers are only as trustworthy as the hop that set them. With the default
//! [`TrustedProxies::All`], a client can send its own `X-Forwarded-For` and the upstream
//! will see it before the real address. If the upstream makes decisions on these
//! headers (rate limits, allow lists), name the proxies you trust with
//! [`TrustedProxies::list`]: headers from anyone else are dropped and rebuilt.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::upgrade::UpgradeTunnels;

/// What `Host` the upstream receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HostBehaviour {
    /// Send the target's authority (`upstream:8080`), as most backends expect.
    #[default]
    Replace,
    /// Send the `Host` the client sent (or its HTTP/2 `:authority`), for virtual-hosted
    /// backends and allow-lists that check the public name.
    Preserve,
}

/// Whether the proxy adds the `X-Forwarded-*` family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum XForwardedFor {
    /// Append the peer's address to `X-Forwarded-For` and set `X-Forwarded-Host` and
    /// `X-Forwarded-Proto` when absent. Needs the peer address: serve the router with
    /// `into_make_service_with_connect_info::<SocketAddr>()`.
    #[default]
    Append,
    /// Add nothing and pass whatever the client sent.
    Preserve,
}

/// Which peers may supply forwarding headers (`X-Forwarded-*`, `Forwarded`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TrustedProxies {
    /// Keep incoming forwarding headers from every peer, and append to them.
    #[default]
    All,
    /// Never keep incoming forwarding headers: this proxy is the edge.
    None,
    /// Keep them only from peers in these networks; drop them from anyone else.
    List(Vec<IpNet>),
}

impl TrustedProxies {
    /// Trust the given networks (`10.0.0.0/8`) or single addresses (`127.0.0.1`, `::1`).
    pub fn list<I, S>(items: I) -> Result<Self, ipnet::AddrParseError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut nets = Vec::new();
        for item in items {
            let item = item.as_ref().trim();
            let net = match item.parse::<IpNet>() {
                Ok(net) => net,
                Err(err) => match item.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => return Err(err),
                },
            };
            nets.push(net);
        }
        Ok(TrustedProxies::List(nets))
    }

    /// Whether forwarding headers sent by `peer` are kept. An unknown peer (an in-process
    /// call) is trusted only under [`TrustedProxies::All`].
    pub fn trusts(&self, peer: Option<IpAddr>) -> bool {
        match self {
            TrustedProxies::All => true,
            TrustedProxies::None => false,
            TrustedProxies::List(nets) => {
                let Some(peer) = peer else { return false };
                let peer = match peer {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
                    v4 => v4,
                };
                nets.iter().any(|net| net.contains(&peer))
            }
        }
    }
}

/// Per-proxy request handling settings. See the [module docs](self) for the defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProxyPolicy {
    /// What `Host` the upstream receives.
    pub host_behaviour: HostBehaviour,
    /// Whether `X-Forwarded-*` headers are added.
    pub x_forwarded_for: XForwardedFor,
    /// Which peers may supply forwarding headers.
    pub trusted_proxies: TrustedProxies,
    /// Add an RFC 7239 `Forwarded` element (`for`, `host`, `proto`).
    pub forwarded: bool,
    /// The scheme clients used to reach this proxy, for `X-Forwarded-Proto` and
    /// `Forwarded: proto=` (default: taken from the request, else `http`).
    pub public_scheme: Option<String>,
    /// Append `<version> <pseudonym>` to `Via` both ways, and answer 508 when a request
    /// already carries our pseudonym.
    pub via: Option<String>,
    /// Deadline for the upstream's response headers (504 when it passes).
    pub upstream_timeout: Option<Duration>,
    /// Longest silence of the upstream while its response body streams (the response
    /// is then cut).
    pub upstream_body_idle_timeout: Option<Duration>,
    /// Largest request body forwarded (413 beyond it).
    pub max_request_body_bytes: Option<u64>,
    /// How long a WebSocket/upgrade handshake with the upstream may take (504 beyond).
    pub websocket_connect_timeout: Duration,
    /// Speak HTTP/2 with prior knowledge (h2c) to plain-HTTP upstreams for every request,
    /// not only for gRPC.
    pub h2c: bool,
    /// Close an upgraded tunnel (WebSocket…) after this long without a byte either way.
    pub upgrade_idle_timeout: Option<Duration>,
    /// Where upgraded tunnels are counted, and how they are all closed on shutdown.
    pub upgrade_tunnels: UpgradeTunnels,
    /// Bytes an upgraded tunnel buffers in each direction (1 KiB to 1 MiB).
    pub upgrade_buffer_size: usize,
}

impl Default for ProxyPolicy {
    fn default() -> Self {
        ProxyPolicy {
            host_behaviour: HostBehaviour::Replace,
            x_forwarded_for: XForwardedFor::Append,
            trusted_proxies: TrustedProxies::All,
            forwarded: false,
            public_scheme: None,
            via: None,
            upstream_timeout: None,
            upstream_body_idle_timeout: None,
            max_request_body_bytes: None,
            websocket_connect_timeout: Duration::from_secs(5),
            h2c: false,
            upgrade_idle_timeout: None,
            upgrade_tunnels: UpgradeTunnels::new(),
            upgrade_buffer_size: 8 * 1024,
        }
    }
}

impl ProxyPolicy {
    /// The default policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Choose what `Host` the upstream receives.
    pub fn with_host_behaviour(mut self, host: HostBehaviour) -> Self {
        self.host_behaviour = host;
        self
    }

    /// Choose whether `X-Forwarded-*` headers are added.
    pub fn with_x_forwarded_for(mut self, xff: XForwardedFor) -> Self {
        self.x_forwarded_for = xff;
        self
    }

    /// Choose which peers may supply forwarding headers.
    pub fn with_trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.trusted_proxies = trusted;
        self
    }

    /// Add an RFC 7239 `Forwarded` element to each request.
    pub fn with_forwarded(mut self, enabled: bool) -> Self {
        self.forwarded = enabled;
        self
    }

    /// Declare the scheme clients use to reach this proxy (`https` behind a TLS
    /// terminator), used for `X-Forwarded-Proto` and `Forwarded: proto=`.
    pub fn with_public_scheme(mut self, scheme: impl Into<String>) -> Self {
        self.public_scheme = Some(scheme.into());
        self
    }

    /// Add `Via` with this pseudonym both ways and detect loops through it (508).
    /// The pseudonym is a token or `host[:port]` (no spaces or commas); another value is
    /// ignored, with a warning.
    pub fn with_via(mut self, pseudonym: impl Into<String>) -> Self {
        self.via = Some(pseudonym.into());
        self
    }

    /// Answer 504 when the upstream's response headers take longer than this.
    /// The response body then streams without a deadline.
    pub fn with_upstream_timeout(mut self, timeout: Duration) -> Self {
        self.upstream_timeout = Some(timeout);
        self
    }

    /// Cut the response when the upstream, once its head is sent, sends nothing for this
    /// long: the client sees its body fail (HTTP/1.1: the connection closes without the
    /// body's valid end; HTTP/2: the stream is reset), the upstream connection is closed,
    /// and the cause is a [`ProxyError`](crate::ProxyError) whose `is_timeout()` is
    /// true. Every frame resets the timer, so a slow steady stream is never cut. Off by
    /// default: a stream may then stay silent as long as the client waits.
    pub fn with_upstream_body_idle_timeout(mut self, timeout: Duration) -> Self {
        self.upstream_body_idle_timeout = Some(timeout);
        self
    }

    /// Answer 413 for request bodies larger than this many bytes: at once when the
    /// declared `Content-Length` is larger, else when the stream passes the limit.
    pub fn with_max_request_body_bytes(mut self, max: u64) -> Self {
        self.max_request_body_bytes = Some(max);
        self
    }

    /// Limit how long a WebSocket or other upgrade handshake with the upstream may take
    /// (connect, TLS and the upstream's 101): 504 beyond. The upstream timeout, when
    /// shorter, applies instead.
    pub fn with_websocket_connect_timeout(mut self, timeout: Duration) -> Self {
        self.websocket_connect_timeout = timeout;
        self
    }

    /// Close an upgraded tunnel when no byte has passed either way for `timeout`.
    ///
    /// The proxy does not parse the tunnelled protocol, so WebSocket pings count as
    /// traffic: set this above the application's ping interval. Without it, a tunnel
    /// whose peers stay connected lasts forever. (Independently, once one side has
    /// finished sending, a tunnel closes after 10 s without traffic, or this timeout if
    /// shorter.)
    pub fn with_upgrade_idle_timeout(mut self, timeout: Duration) -> Self {
        self.upgrade_idle_timeout = Some(timeout);
        self
    }

    /// Set how many bytes an upgraded tunnel buffers in each direction (default 8 KiB,
    /// clamped to 1 KiB..=1 MiB). The buffers live as long as the tunnel, idle or not.
    ///
    /// Each read from one side becomes one write to the other, so small buffers cost
    /// syscalls on large messages: on loopback, 64 KiB buffers roughly double the
    /// throughput of 64 KiB WebSocket messages over the 8 KiB default, at 128 KiB per
    /// tunnel instead of 16 KiB. Raise it for proxies that carry bulk data over few
    /// tunnels; keep the default for many mostly idle ones (chat, notifications).
    pub fn with_upgrade_buffer_size(mut self, bytes: usize) -> Self {
        self.upgrade_buffer_size = bytes.clamp(1024, 1024 * 1024);
        self
    }

    /// Count this policy's upgraded tunnels in `tunnels` (shared with its clones), for
    /// metrics and to close them all on shutdown with [`UpgradeTunnels::close_all`].
    pub fn with_upgrade_tunnels(mut self, tunnels: UpgradeTunnels) -> Self {
        self.upgrade_tunnels = tunnels;
        self
    }

    /// Speak HTTP/2 with prior knowledge (h2c) to plain-HTTP upstreams for all requests.
    /// gRPC requests always do, whatever this says.
    pub fn with_h2c(mut self, enabled: bool) -> Self {
        self.h2c = enabled;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_lists() {
        let t = TrustedProxies::list(["10.0.0.0/8", "127.0.0.1", "::1"]).unwrap();
        assert!(t.trusts(Some("10.1.2.3".parse().unwrap())));
        assert!(t.trusts(Some("127.0.0.1".parse().unwrap())));
        assert!(t.trusts(Some("::ffff:127.0.0.1".parse().unwrap())));
        assert!(t.trusts(Some("::1".parse().unwrap())));
        assert!(!t.trusts(Some("192.168.0.1".parse().unwrap())));
        assert!(!t.trusts(None));
        assert!(TrustedProxies::All.trusts(None));
        assert!(!TrustedProxies::None.trusts(Some("127.0.0.1".parse().unwrap())));
        assert!(TrustedProxies::list(["nonsense"]).is_err());
    }
}
