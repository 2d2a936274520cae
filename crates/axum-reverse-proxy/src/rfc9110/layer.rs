//! [`Rfc9110Layer`]: applies [`Rfc9110`] with one configuration.

use std::collections::HashSet;
use std::sync::Arc;

use tower_layer::Layer;

use super::Rfc9110;
use super::rules::Prepared;

/// How [`Rfc9110Layer`] detects loops and writes `Via`.
///
/// Every field is public, so a configuration reads as a struct literal:
///
/// ```
/// use axum_reverse_proxy::Rfc9110Config;
///
/// let config = Rfc9110Config {
///     pseudonym: Some("edge".into()),
///     ..Default::default()
/// };
/// assert!(config.combine_via);
/// ```
#[derive(Clone, Debug)]
pub struct Rfc9110Config {
    /// Names under which a request reaches this proxy only when it has looped: typically the
    /// proxy's internal host names and addresses, which a route would use if it sent traffic
    /// back to the proxy. A request whose host (the absolute-form URI's host, otherwise the
    /// `Host` header; port ignored, case-insensitive) is one of them is answered
    /// `508 Loop Detected`. `None` (the default) disables the check.
    ///
    /// Do not list the public name clients use to reach the proxy: since `Host` is checked,
    /// every ordinary request would match and be refused.
    pub server_names: Option<HashSet<String>>,
    /// The name this proxy writes as the `received-by` part of `Via`. When set, a request
    /// whose `Via` already names it is answered `508 Loop Detected`.
    ///
    /// `None` (the default) writes `proxy` and does no `Via` loop detection, because the
    /// generic name `proxy` may belong to any other intermediary. Characters that a
    /// `received-by` may not contain are replaced with `-`.
    pub pseudonym: Option<String>,
    /// With a pseudonym set, collapse an incoming `Via` chain into this proxy's single
    /// entry when every member has the same protocol version as this hop (RFC 9110 §7.6.3
    /// allows combining members with identical received-protocol). Default `true`; it has
    /// no effect without a pseudonym.
    ///
    /// Collapsing drops the names of earlier intermediaries, and with them their ability to
    /// detect a loop through `Via`. Only use it when the whole chain is under your control.
    pub combine_via: bool,
    /// Keep `Connection: upgrade` and `Upgrade` on an upgrade request (WebSocket and other
    /// protocol switches), and on the `101 Switching Protocols` answering it. Default
    /// `true`; with `false`, upgrades cannot pass through this layer.
    pub preserve_websocket_headers: bool,
}

impl Default for Rfc9110Config {
    fn default() -> Self {
        Rfc9110Config {
            server_names: None,
            pseudonym: None,
            combine_via: true,
            preserve_websocket_headers: true,
        }
    }
}

/// Applies RFC 9110 intermediary rules to a service: loop detection, `Max-Forwards`,
/// hop-by-hop fields and `Via`.
///
/// On the request, in order:
/// - **loop**: `508 Loop Detected` (inner service not called) when the request's host is one
///   of [`server_names`](Rfc9110Config::server_names), or its `Via` already names the
///   configured [`pseudonym`](Rfc9110Config::pseudonym);
/// - **`Max-Forwards`** on `TRACE`/`OPTIONS`: `0` is answered here (`TRACE` echoes the
///   request as `message/http` without credentials; `OPTIONS` answers
///   `Allow: GET, HEAD, OPTIONS, TRACE`), more is decremented and forwarded;
/// - **hop-by-hop fields** removed: `Connection`, every field it names (no exceptions),
///   `Keep-Alive`, `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`
///   (except a lone `trailers`), `Trailer`, `Transfer-Encoding`, `Upgrade` (kept on an
///   upgrade request when [`preserve_websocket_headers`] is on);
/// - **`Via`**: this hop appended as `<version> <pseudonym or "proxy">`.
///
/// On the response: the same hop-by-hop removal (upgrade fields kept on the `101` that
/// answers a preserved upgrade), and this hop appended to the upstream's `Via`.
/// `Max-Forwards` is never written onto a response.
///
/// The configuration is checked and normalised once, here; every service the layer makes
/// shares it.
///
/// ```
/// use axum::{Router, routing::get};
/// use axum_reverse_proxy::{Rfc9110Config, Rfc9110Layer};
///
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .layer(Rfc9110Layer::with_config(Rfc9110Config {
///         pseudonym: Some("edge".into()),
///         ..Default::default()
///     }));
/// # let _ = app;
/// ```
///
/// [`preserve_websocket_headers`]: Rfc9110Config::preserve_websocket_headers
#[derive(Clone, Debug, Default)]
pub struct Rfc9110Layer {
    config: Arc<Prepared>,
}

impl Rfc9110Layer {
    /// A layer with the default [`Rfc9110Config`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A layer with the given configuration.
    pub fn with_config(config: Rfc9110Config) -> Self {
        Rfc9110Layer {
            config: Arc::new(Prepared::new(config)),
        }
    }
}

impl<S> Layer<S> for Rfc9110Layer {
    type Service = Rfc9110<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Rfc9110::from_prepared(inner, self.config.clone())
    }
}
