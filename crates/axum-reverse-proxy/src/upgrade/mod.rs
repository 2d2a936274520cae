//! WebSocket and HTTP `Upgrade` proxying: detection, the handshake with the upstream and
//! its validation, the byte splice, and tunnel tracking.
//!
//! Every proxy type gets this through the shared forwarding path, so `ReverseProxy`,
//! the balanced proxies and `proxy_route` behave the same.
//!
//! # Detection
//! A request is an upgrade when either
//! - it is an HTTP/1.1 `GET` with an `Upgrade` header and a `Connection` header carrying
//!   the `upgrade` token anywhere in its comma list, case-insensitive (RFC 9110 §7.8,
//!   RFC 6455 §4.1). Any protocol is carried (`websocket`, or a custom one such as
//!   `Upgrade: echo-proto`), except `h2c`, which names the client's own connection and
//!   is dropped; or
//! - it is an HTTP/2 extended `CONNECT` with `:protocol = websocket` (RFC 8441; servers
//!   built with `axum::serve` accept these).
//!
//! Anything else is an ordinary request and its `Upgrade` header is removed as
//! hop-by-hop: an `Upgrade` on HTTP/1.0 or HTTP/2, or on a method other than `GET`.
//! A classic `CONNECT`, or an extended `CONNECT` for another protocol, is answered
//! `501 Not Implemented`.
//!
//! # Handshake
//! The upstream is asked first, and the client is answered only once the upstream has
//! switched. The request goes through the proxy's transport, so its connector, TLS
//! settings and certificates apply (`https://` and `wss://` targets speak TLS). It
//! always travels over its own HTTP/1.1 connection (see `dial`), and carries the
//! client's headers under the usual header policy: `Origin`, cookies, `Sec-WebSocket-*`
//! (including `Sec-WebSocket-Extensions`) and custom headers pass; hop-by-hop headers
//! are removed except `Upgrade` and `Connection: upgrade`. For an HTTP/2 client, the
//! extended CONNECT becomes an HTTP/1.1 WebSocket upgrade with a key of the proxy's own.
//!
//! | upstream answer | client gets |
//! |---|---|
//! | valid 101 | 101 with the upstream's headers (`Sec-WebSocket-Protocol`, `-Extensions`, `Set-Cookie`…), minus hop-by-hop ones other than `Upgrade`/`Connection`; 200 to an HTTP/2 client |
//! | 101 switching to a protocol the client did not offer | 502 |
//! | WebSocket 101 with a wrong or missing `Sec-WebSocket-Accept`, or a subprotocol or extension the client did not offer | 502 |
//! | any other status (403, 404, 426, 500…) | that response, as is (to an HTTP/2 client, a 2xx is a 502: it would read as "switched") |
//! | no answer within [`websocket_connect_timeout`](crate::ProxyPolicy::websocket_connect_timeout) (5 s; or the upstream timeout if shorter) | 504 |
//! | connection refused, TLS failure | 502 |
//! | [`UpgradeTunnels::close_all`] was called | 503 |
//!
//! # The tunnel
//! After the 101, a task copies bytes both ways with `tokio::io::copy_bidirectional`:
//! no WebSocket frame is parsed or rebuilt, so subprotocols, extensions
//! (`permessage-deflate`), fragmentation, ping/pong and close codes and reasons pass
//! unchanged, and any other protocol works too. When one side finishes sending, the
//! other side's write half is shut down and the opposite direction keeps flowing
//! (half-close); the tunnel ends when both directions have ended or either fails, or
//! when, after one direction ended, the other stays silent for 10 s (a peer that never
//! closes its half would otherwise hold the tunnel forever). It
//! is counted in the policy's [`UpgradeTunnels`] while open, closes after
//! [`upgrade_idle_timeout`](crate::ProxyPolicy::upgrade_idle_timeout) without a byte
//! either way, and closes on [`UpgradeTunnels::close_all`]. A [`TunnelGuard`] in the
//! request extensions is held until the tunnel ends.
//!
//! A request without hyper's upgrade handle (a proxy called in-process, for example
//! with `tower::ServiceExt::oneshot`) still gets the upstream's 101, but there is no
//! client connection to splice: the upstream side is closed and a warning logged.
//!
//! # Security
//! - The proxy does not look inside the tunnel: message size limits, origin checks and
//!   authentication after the handshake are the upstream's job.
//! - Without an idle timeout, a tunnel whose peers keep their connections open lasts
//!   forever. Set [`with_upgrade_idle_timeout`](crate::ProxyPolicy::with_upgrade_idle_timeout)
//!   above the application's ping interval to bound idle resources.
//! - Nothing from the handshake headers is logged (cookies, tokens in
//!   `Sec-WebSocket-Protocol`), nor the query string.
//!
//! ```
//! use std::time::Duration;
//! use axum::Router;
//! use axum_reverse_proxy::{ProxyPolicy, ReverseProxy, UpgradeTunnels};
//!
//! let tunnels = UpgradeTunnels::new();
//! let policy = ProxyPolicy::new()
//!     .with_websocket_connect_timeout(Duration::from_secs(3))
//!     .with_upgrade_idle_timeout(Duration::from_secs(300))
//!     .with_upgrade_tunnels(tunnels.clone());
//! let app: Router = ReverseProxy::new("/ws", "wss://chat.internal")
//!     .with_policy(policy)
//!     .into();
//! assert_eq!(tunnels.active(), 0);
//! ```

use std::time::Duration;

use axum::body::Body;
use http::{Extensions, Request, Response, StatusCode, request};
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::connect::Connect;

use crate::client::Transport;
use crate::error::{Kind, ProxyError};
use crate::headers;
use crate::policy::ProxyPolicy;
use crate::uri::Target;

mod detect;
mod dial;
mod guard;
mod handshake;
mod tracker;
mod tunnel;

#[cfg(test)]
mod tests;

pub(crate) use detect::{Detected, detect};
pub use guard::TunnelGuard;
pub(crate) use guard::{Held, hold_until_body_ends};
pub use tracker::UpgradeTunnels;

use detect::{Mode, Offer};
use handshake::Invalid;
use tunnel::Tunnel;

/// One upgrade in flight: what the client offered, and its side of the upgrade.
pub(crate) struct Upgrade {
    offer: Offer,
    client: Option<OnUpgrade>,
}

impl Upgrade {
    /// Start an upgrade, taking the client's upgrade handle out of `extensions`.
    pub(crate) fn new(offer: Offer, extensions: &mut Extensions) -> Self {
        Upgrade {
            offer,
            client: extensions.remove::<OnUpgrade>(),
        }
    }

    /// Turn the client request (hop-by-hop headers already stripped, upgrade kept) into
    /// the upstream handshake; returns the body to send.
    pub(crate) fn prepare(&mut self, parts: &mut request::Parts, body: Body) -> Body {
        handshake::prepare_request(&mut self.offer, parts);
        match self.offer.mode {
            Mode::Http1 => body,
            // The CONNECT stream's data is the tunnel, not a request body.
            Mode::ExtendedConnect => Body::empty(),
        }
    }

    /// Send the handshake, within the handshake deadline.
    pub(crate) async fn send<C>(
        &self,
        transport: &Transport<C>,
        target: &Target,
        req: Request<Body>,
        policy: &ProxyPolicy,
    ) -> Result<Response<Body>, ProxyError>
    where
        C: Connect + Clone + Send + Sync + 'static,
    {
        let limit = handshake_timeout(policy);
        match tokio::time::timeout(limit, dial::send(transport, target, req)).await {
            Ok(result) => result,
            Err(elapsed) => Err(ProxyError::with_cause(Kind::Timeout, elapsed)),
        }
    }

    /// Answer the client from the upstream's response: forward a non-101, check a 101
    /// and start the tunnel. `held` is moved into the tunnel when one starts.
    pub(crate) fn respond(
        self,
        mut response: Response<Body>,
        policy: &ProxyPolicy,
        target: &Target,
        held: &mut Option<Held>,
    ) -> Result<Response<Body>, ProxyError> {
        let mode = self.offer.mode;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            if mode == Mode::ExtendedConnect && response.status().is_success() {
                return Err(ProxyError::with_cause(Kind::Upstream, Invalid::NotSwitched));
            }
            headers::strip_hop_by_hop(response.headers_mut(), false);
            return Ok(response);
        }
        handshake::validate(&self.offer, response.headers())
            .map_err(|invalid| ProxyError::with_cause(Kind::Upstream, invalid))?;
        let upstream = hyper::upgrade::on(&mut response);
        let (parts, _empty) = response.into_parts();
        let answer = handshake::client_response(mode, parts);
        match self.client {
            Some(client) => Tunnel {
                client,
                upstream,
                slot: policy.upgrade_tunnels.open(),
                handshake_timeout: handshake_timeout(policy),
                idle_timeout: policy.upgrade_idle_timeout,
                // The field is public: clamp here too, so 0 cannot read as end of stream.
                buffer_size: policy.upgrade_buffer_size.clamp(1024, 1024 * 1024),
                held: held.take(),
                upstream_name: target.authority().clone(),
            }
            .spawn(),
            None => tracing::warn!(
                upstream = %target.authority(),
                "upgrade request without a client connection to upgrade (called in-process?); \
                 closing the upstream side"
            ),
        }
        Ok(answer)
    }
}

/// The handshake deadline: the WebSocket connect timeout, or the upstream timeout if
/// that is shorter.
fn handshake_timeout(policy: &ProxyPolicy) -> Duration {
    let limit = policy.websocket_connect_timeout;
    policy.upstream_timeout.map_or(limit, |t| t.min(limit))
}
