//! A reverse proxy for [axum] and [tower]: embed it in an application, or mount it as a
//! whole router.
//!
//! This crate is a drop-in for the public API of axum-reverse-proxy 1.3: code written for
//! it compiles unchanged. Its behaviour follows HTTP: hop-by-hop headers are removed,
//! bodies and trailers stream both ways (gRPC works with no configuration), errors map
//! to 502/503/504 with a typed [`ProxyError`] on the response, and new capability comes
//! through [`ProxyPolicy`] and `with_*` builders.
//!
//! ```no_run
//! use axum::Router;
//! use axum::serve::ListenerExt;
//! use axum_reverse_proxy::ReverseProxy;
//!
//! # async fn run() {
//! let proxy = ReverseProxy::new("/api", "http://127.0.0.1:3000");
//! let app: Router = Router::new()
//!     .route("/", axum::routing::get(|| async { "hello" }))
//!     .merge(proxy);
//! // Without TCP_NODELAY, streamed responses wait ~40 ms per write for delayed ACKs.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080")
//!     .await
//!     .unwrap()
//!     .tap_io(|tcp| {
//!         let _ = tcp.set_nodelay(true);
//!     });
//! axum::serve(
//!     listener,
//!     app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
//! )
//! .await
//! .unwrap();
//! # }
//! ```
//!
//! # URI joining
//! A proxy mounted at `/api` with target `http://upstream/base` sends `/api/x?y=1` to
//! `http://upstream/base/x?y=1`. The mount path is removed once, the rest is appended
//! verbatim (percent-encoding, `//` and dot segments are not touched), and the target's
//! own query comes before the request's. See the table in the `uri` rules below:
//!
//! | mount | target | request | upstream |
//! |---|---|---|---|
//! | `/api` | `http://u/bar` | `/api` | `/bar` |
//! | `/api` | `http://u/bar` | `/api/` | `/bar/` |
//! | `/api` | `http://u/base/` | `/api` | `/base/` |
//! | `/api` | `http://u` | `/api/api/x` | `/api/x` |
//! | `/` | `http://u/api` | `/` | `/api` |
//! | `/p` | `http://u/t?k=v` | `/p?q=1` | `/t?k=v&q=1` |
//!
//! # Headers
//! Hop-by-hop headers are removed both ways (`TE: trailers` is kept). `Host` becomes the
//! target's authority unless [`HostBehaviour::Preserve`] is set. When the server records
//! the peer address (`into_make_service_with_connect_info::<SocketAddr>()`), the proxy
//! appends `X-Forwarded-For` and sets `X-Forwarded-Host`/`-Proto`; RFC 7239 `Forwarded`
//! and `Via` are opt-in. [`TrustedProxies`] decides whose incoming forwarding headers are
//! believed.
//!
//! # Errors
//! | cause | status |
//! |---|---|
//! | connect failure, upstream reset, malformed response | 502 |
//! | no endpoint available | 503 |
//! | upstream response-header timeout | 504 |
//! | request body over the limit | 413 |
//! | ambiguous or malformed request (see [`validate_request`]), client body failing mid-way | 400 |
//! | `CONNECT`, a transfer coding other than `chunked` | 501 |
//! | loop (our `Via` pseudonym seen again) | 508 |
//!
//! Bodies are generic; the cause is logged and attached as a [`ProxyError`] extension.
//! A 400 or 501 to an HTTP/1 request carries `Connection: close`: whatever followed
//! the request on its connection is not trusted to be the next request.
//!
//! # Framing and request smuggling
//! The upstream always gets one unambiguous message per request: the proxy writes its
//! own framing (`Content-Length` or chunked, never both, chunk extensions dropped),
//! removes hop-by-hop fields, and refuses what hyper's parser lets through but could be
//! read two ways (`Transfer-Encoding: gzip, chunked`, `chunked` twice, `Content_Length`,
//! two `Host` lines, authority-form targets…). An absolute-form target is routed by the
//! proxy's own configuration, never to the host it names; its authority replaces `Host`
//! (RFC 9112 §3.2.2). The rules, and what hyper already refuses, are listed at
//! [`validate_request`], which a server should also call before routing.
//!
//! # WebSocket and other upgrades
//! An HTTP/1.1 `Upgrade` (WebSocket or any other protocol) or an HTTP/2 WebSocket
//! (RFC 8441) is carried through: the upstream is connected through the proxy's own
//! connector (TLS included) and must answer a valid 101 before the client gets its
//! own; then bytes are spliced both ways unchanged, so subprotocols, extensions and
//! close codes pass. A non-101 answer is forwarded; a bad 101 is a 502, a handshake
//! timeout a 504. Tunnels are counted in [`UpgradeTunnels`], can be closed when idle
//! ([`ProxyPolicy::with_upgrade_idle_timeout`]) and all at once on shutdown
//! ([`UpgradeTunnels::close_all`]). A [`TunnelGuard`] holds a resource for as long as
//! a tunnel (or a response body) lasts.
//!
//! An upgrade needs HTTP/1.1 towards the upstream. Proxies on the default connector
//! take care of it; a client given to `new_with_client` must offer only HTTP/1.1 by
//! ALPN to TLS upstreams that carry WebSockets (`enable_http1()` on hyper-rustls),
//! or an upstream that picks HTTP/2 cannot switch protocols.
//!
//! Serve the proxy with `TCP_NODELAY` on accepted sockets (and give a custom client's
//! `HttpConnector` `set_nodelay(true)`; the default connector has it). A splice cuts
//! the byte stream where reads happen to end, and with Nagle's algorithm on, the tail
//! of a large message then waits for the peer's delayed ACK: about 40 ms per message.
//!
//! ```no_run
//! use axum::serve::ListenerExt;
//! # async fn run(app: axum::Router) {
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8080")
//!     .await
//!     .unwrap()
//!     .tap_io(|tcp| {
//!         let _ = tcp.set_nodelay(true);
//!     });
//! axum::serve(listener, app).await.unwrap();
//! # }
//! ```
//!
//! # Features
//! - `tls` (default): rustls with Mozilla's roots, HTTP/2 by ALPN.
//! - `native-tls`: the platform's TLS library instead (wins when both are on).
//! - `dns`: DNS service discovery (hickory-resolver), see [`discover`].
//! - `etcd`: service discovery from an etcd v3 key prefix, see [`discover`].
//! - `full`: `tls` and `dns`.
#![warn(missing_docs, rust_2018_idioms, clippy::all)]
#![deny(unreachable_pub)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod balance;
mod client;
pub mod discover;
mod error;
mod headers;
mod policy;
mod proxy;
mod retry;
mod rfc9110;
mod router;
mod upgrade;
mod uri;

// The crate-private rules, for the fuzz targets in `fuzz/` only (cargo-fuzz sets
// `cfg(fuzzing)`): not an API.
#[cfg(fuzzing)]
#[doc(hidden)]
#[path = "fuzz.rs"]
pub mod __fuzz;

pub use balance::{
    BalancedProxy, DiscoverableBalancedProxy, EndpointStats, HashKey, HealthCheck,
    LoadBalancingStrategy, OutlierDetection, StandardBalancedProxy,
    StandardDiscoverableBalancedProxy,
};
pub use client::ProxyConnector;
#[cfg(feature = "native-tls")]
pub use client::tls::create_dangerous_native_tls_connector;
#[cfg(feature = "tls")]
pub use client::tls::create_dangerous_rustls_config;
#[cfg(feature = "dns")]
pub use discover::{DnsDiscovery, DnsDiscoveryConfig, StaticDnsDiscovery};
pub use error::{InvalidTarget, ProxyError};
pub use policy::{HostBehaviour, ProxyPolicy, TrustedProxies, XForwardedFor};
pub use proxy::ReverseProxy;
pub use proxy::validate::validate_request;
pub use retry::{Retry, RetryLayer};
pub use rfc9110::{Rfc9110, Rfc9110Config, Rfc9110Layer};
pub use router::{ProxyRouterExt, TargetResolver, TemplateTarget, proxy_template};
pub use upgrade::{TunnelGuard, UpgradeTunnels};

/// [`ReverseProxy`] over the default connector.
pub type StandardReverseProxy = ReverseProxy<ProxyConnector>;
