//! RFC 9110 intermediary rules as a tower layer: loop detection, `Max-Forwards`, hop-by-hop
//! fields and `Via`, applied around a proxy (or any service) by [`Rfc9110Layer`].
//!
//! # What the layer does
//!
//! On each request, in this order:
//!
//! 1. **Loop detection** (`508 Loop Detected`, short generic body, a [`ProxyError`] with
//!    [`is_loop()`](crate::ProxyError::is_loop) in the extensions, inner service not called):
//!    - the request's host is one of [`Rfc9110Config::server_names`], the names that only a
//!      looped request uses (internal names, not the public one). The host is the
//!      absolute-form URI's host when there is one (as HTTP/2's `:authority` is), otherwise
//!      the `Host` header; the port is ignored and the comparison is case-insensitive;
//!    - or a `Via` member, on any `Via` line, was received by the configured
//!      [`pseudonym`](Rfc9110Config::pseudonym) (comments ignored). Without a pseudonym
//!      there is no `Via` check: the default name `proxy` could be anyone's.
//! 2. **`Max-Forwards`** (RFC 9110 §7.6.2), for `TRACE` and `OPTIONS` only, when the value
//!    is a number that fits a `u32`:
//!    - `0`: this proxy is the final recipient. `TRACE` is answered `200` with the request
//!      as received, in HTTP/1.1 wire form, as `message/http` (§9.3.8), **without**
//!      `Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie` and the usual API
//!      key and CSRF token fields. `OPTIONS` is answered `200` with
//!      `Allow: GET, HEAD, OPTIONS, TRACE` and no body;
//!    - more than `0`: decremented and forwarded.
//!
//!    `Max-Forwards` is never written onto a response.
//! 3. **Hop-by-hop fields** (§7.6.1) are removed: `Connection` (every line, every token)
//!    and every field it names, with no exceptions, then `Keep-Alive`, `Proxy-Connection`,
//!    `Proxy-Authenticate`, `Proxy-Authorization`, `TE`, `Trailer`, `Transfer-Encoding` and
//!    `Upgrade`. `TE: trailers` is kept when it is the only value (gRPC needs it).
//!    With [`preserve_websocket_headers`](Rfc9110Config::preserve_websocket_headers) (the
//!    default), an upgrade request (`Upgrade` plus `Connection: upgrade`, or plus the
//!    WebSocket key and version fields) keeps `Upgrade` and is sent with
//!    `Connection: upgrade`.
//! 4. **`Via`** (§7.6.3): this hop is appended as `<version> <pseudonym>` (`proxy` without
//!    a pseudonym), the version being that of the request received: `1.0`, `1.1`, `2` or
//!    `3`. With a pseudonym and [`combine_via`](Rfc9110Config::combine_via), a chain whose
//!    members all have this hop's version is collapsed into this hop's single member.
//!
//! On the response from the inner service:
//!
//! 5. **Hop-by-hop fields** are removed by the same rules; `Connection: upgrade` and
//!    `Upgrade` stay on a `101 Switching Protocols` that answers a preserved upgrade.
//! 6. **`Via`**: this hop is appended to the upstream's `Via` (or becomes it), with the
//!    response's version. The upstream's own members are never lost.
//!
//! # Security
//!
//! - Stripping every field named in `Connection` means a client can ask for any end-to-end
//!   field, `Authorization` included, to be dropped before the upstream sees it. That is
//!   what RFC 9110 requires of an intermediary; an upstream must not rely on a field that
//!   the client controls being present.
//! - The `TRACE` echo leaves credentials out, but any other request field is reflected to
//!   the client that sent it.
//! - Collapsing `Via` (`combine_via` with a pseudonym) erases the names other proxies use
//!   to detect loops through this one.
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::get};
//! use axum_reverse_proxy::{Rfc9110Config, Rfc9110Layer};
//! use std::collections::HashSet;
//!
//! let config = Rfc9110Config {
//!     server_names: Some(HashSet::from(["proxy-1.internal".to_string()])),
//!     pseudonym: Some("edge".into()),
//!     ..Default::default()
//! };
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(Rfc9110Layer::with_config(config));
//! # let _ = app;
//! ```
//!
//! The service can also be named and built directly:
//!
//! ```
//! use axum_reverse_proxy::{Rfc9110, Rfc9110Layer};
//! use tower::{Layer, service_fn};
//! use axum::body::Body;
//! use http::{Request, Response};
//!
//! let inner = service_fn(|_req: Request<Body>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
//! });
//! let service: Rfc9110<_> = Rfc9110Layer::new().layer(inner);
//! # let _ = service;
//! ```
//!
//! [`ProxyError`]: crate::ProxyError

mod future;
mod layer;
mod rules;
mod service;
#[cfg(test)]
mod tests;

pub use self::layer::{Rfc9110Config, Rfc9110Layer};
pub use self::service::Rfc9110;
