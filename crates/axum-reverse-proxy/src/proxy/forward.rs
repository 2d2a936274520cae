//! The forwarding path shared by every proxy type: rewrite the request, send it, and
//! rewrite the response.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Extensions, Request, Response, StatusCode, Uri, Version};
use http_body::{Frame, SizeHint};
use hyper_util::client::legacy::connect::Connect;

use crate::client::Transport;
use crate::error::{Kind, ProxyError};
use crate::headers::{self, ClientInfo};
use crate::policy::{HostBehaviour, ProxyPolicy, XForwardedFor};
use crate::upgrade::{self, Detected, TunnelGuard, Upgrade};
use crate::uri::{Target, UpstreamPath};

use super::validate;

/// A policy with what can be decided once already decided.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) policy: ProxyPolicy,
    /// The `Via` pseudonym, when valid as a header value.
    via: Option<String>,
}

impl Settings {
    pub(crate) fn new(policy: ProxyPolicy) -> Self {
        let via = policy
            .via
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty() && p.bytes().all(is_received_by))
            .map(str::to_owned);
        if policy.via.is_some() && via.is_none() {
            tracing::warn!("ignoring an empty or invalid Via pseudonym");
        }
        Settings { policy, via }
    }

    #[cfg(fuzzing)]
    pub(crate) fn via(&self) -> Option<&str> {
        self.via.as_deref()
    }
}

/// A byte of a `Via` received-by (RFC 9110 §7.6.3): a token, or `host[:port]`. Anything
/// else (a space, a comma) would make our own element unrecognisable, and a loop through
/// this proxy undetected.
fn is_received_by(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:[]".contains(&b)
}

/// Everything needed to forward a request to a target: where to send it and how.
pub(crate) struct Forwarder<C> {
    pub(crate) transport: Transport<C>,
    pub(crate) settings: Arc<Settings>,
}

impl<C: Clone> Clone for Forwarder<C> {
    fn clone(&self) -> Self {
        Forwarder {
            transport: self.transport.clone(),
            settings: Arc::clone(&self.settings),
        }
    }
}

/// Whether the request is gRPC, which must travel over HTTP/2.
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The peer address recorded by `into_make_service_with_connect_info`.
pub(crate) fn peer_addr(extensions: &Extensions) -> Option<SocketAddr> {
    extensions.get::<ConnectInfo<SocketAddr>>().map(|ci| ci.0)
}

impl<C> Forwarder<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    pub(crate) fn policy(&self) -> &ProxyPolicy {
        &self.settings.policy
    }

    /// Forward `req` to `target` at `path_and_query`. Never fails: errors become
    /// responses carrying a [`ProxyError`]. The client's address is `client` when
    /// given, else the request's `ConnectInfo<SocketAddr>`.
    pub(crate) async fn forward(
        &self,
        target: &Target,
        req: Request<Body>,
        path_and_query: UpstreamPath,
        client: Option<SocketAddr>,
    ) -> Response<Body> {
        let method = req.method().clone();
        let version = req.version();
        match self.try_forward(target, req, path_and_query, client).await {
            Ok(response) => response,
            Err((err, path)) => {
                // Log the path without its query: queries often carry tokens.
                if err.status().is_server_error() {
                    tracing::warn!(
                        status = err.status().as_u16(),
                        %method,
                        upstream = %target.authority(),
                        path = path.as_ref().map_or("", |p| p.path()),
                        error = %err,
                        "proxy request failed"
                    );
                } else {
                    tracing::debug!(
                        status = err.status().as_u16(),
                        %method,
                        upstream = %target.authority(),
                        error = %err,
                        "proxy request refused"
                    );
                }
                let close = version < Version::HTTP_2
                    && matches!(err.kind(), Kind::BadRequest | Kind::NotImplemented);
                let mut response = err.into_response();
                if close {
                    // What follows a refused request on its connection (a body we did not
                    // read, bytes after a bad frame) must not be read as the next request.
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                response
            }
        }
    }

    async fn try_forward(
        &self,
        target: &Target,
        req: Request<Body>,
        path_and_query: UpstreamPath,
        client: Option<SocketAddr>,
    ) -> Result<Response<Body>, (ProxyError, Option<PathAndQuery>)> {
        let settings = &*self.settings;
        let policy = &settings.policy;
        let (mut parts, body) = req.into_parts();
        let mut upgrade = match upgrade::detect(&parts) {
            Detected::Plain => None,
            Detected::Upgrade(offer) => Some(Upgrade::new(offer, &mut parts.extensions)),
            Detected::UnsupportedConnect => {
                return Err((ProxyError::new(Kind::NotImplemented), None));
            }
        };
        validate::check(&mut parts, false).map_err(|err| (err, None))?;
        // Released when the exchange is over (response body end, or tunnel close).
        let mut held = TunnelGuard::take(&mut parts.extensions);
        let path_and_query = path_and_query
            .into_path_and_query()
            .map_err(|e| (ProxyError::with_cause(Kind::BadRequest, e), None))?;
        let fail = |err: ProxyError| (err, Some(path_and_query.clone()));

        if let Some(pseudonym) = &settings.via
            && headers::via_has_pseudonym(&parts.headers, pseudonym)
        {
            return Err(fail(ProxyError::new(Kind::Loop)));
        }

        if upgrade.is_some() && policy.upgrade_tunnels.is_closing() {
            return Err(fail(ProxyError::new(Kind::NoEndpoint)));
        }

        // A client body that fails (malformed chunks, a client gone mid-way) fails the
        // upstream request too: that is the client's error, not the upstream's.
        let (body, client_failed) = ClientBody::watch(body);
        // Set when the limit trips mid-stream: an HTTP/2 upstream connection reports that
        // body error only as a reset stream, without the cause.
        let mut over_limit = None;
        let body = match policy.max_request_body_bytes {
            Some(max) if declared_length(&parts.headers).is_some_and(|len| len > max) => {
                return Err(fail(ProxyError::new(Kind::BodyTooLarge)));
            }
            // A body already over (most requests) has nothing to count.
            Some(max) if !http_body::Body::is_end_stream(&body) => {
                let tripped = Arc::new(AtomicBool::new(false));
                over_limit = Some(Arc::clone(&tripped));
                let limited = http_body_util::Limited::new(body, max as usize);
                Body::new(http_body_util::BodyExt::map_err(limited, move |err| {
                    if err.is::<http_body_util::LengthLimitError>() {
                        tripped.store(true, Ordering::Relaxed);
                    }
                    err
                }))
            }
            _ => body,
        };

        let client_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let http2 = is_grpc(&parts.headers) || policy.h2c;

        headers::strip_hop_by_hop(&mut parts.headers, upgrade.is_some());

        // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; forward the plain form.
        let peer = client
            .or_else(|| peer_addr(&parts.extensions))
            .map(|a| a.ip().to_canonical());
        let trusted = policy.trusted_proxies.trusts(peer);
        let x_forwarded = policy.x_forwarded_for == XForwardedFor::Append;
        if !trusted || x_forwarded || policy.forwarded {
            let proto = policy
                .public_scheme
                .as_deref()
                .or(parts.uri.scheme_str())
                .unwrap_or("http");
            // Room for what is added, in one step: a map grown one field at a time
            // reallocates and re-indexes at every doubling.
            parts
                .headers
                .reserve(3 * usize::from(x_forwarded) + usize::from(policy.forwarded));
            let info = ClientInfo {
                peer,
                host: client_host.as_ref(),
                proto,
            };
            headers::apply_forwarding(
                &mut parts.headers,
                &info,
                trusted,
                x_forwarded,
                policy.forwarded,
            );
        }
        if let Some(pseudonym) = &settings.via {
            headers::append_via(&mut parts.headers, parts.version, pseudonym);
        }
        let host = match (policy.host_behaviour, client_host) {
            (HostBehaviour::Preserve, Some(host)) => host,
            _ => target.host_header().clone(),
        };
        parts.headers.insert(header::HOST, host);
        parts.uri = Uri::from(path_and_query.clone());
        parts.version = Version::HTTP_11;
        parts.extensions = Extensions::new();

        if let Some(mut upgrade) = upgrade.take() {
            let body = upgrade.prepare(&mut parts, body);
            let req = Request::from_parts(parts, body);
            // Boxed: dialling an upgrade is a large future, and keeping it inline would
            // make every plain request's future (moved into a box per request) that large.
            let response = Box::pin(upgrade.send(&self.transport, target, req, policy))
                .await
                .map_err(fail)?;
            let response = upgrade
                .respond(response, policy, target, &mut held)
                .map_err(fail)?;
            return Ok(self.finish(response, held));
        }

        let req = Request::from_parts(parts, body);
        let send = self.transport.send(target, req, http2);
        let result = match policy.upstream_timeout {
            Some(limit) => match tokio::time::timeout(limit, send).await {
                Ok(result) => result,
                Err(elapsed) => Err(ProxyError::with_cause(Kind::Timeout, elapsed)),
            },
            None => send.await,
        };
        let result = result.map_err(|err| match &client_failed {
            Some(failed) if failed.load(Ordering::Relaxed) => {
                ProxyError::with_cause(Kind::BadRequest, err)
            }
            _ => err,
        });
        let result = result.map_err(|err| match over_limit {
            Some(tripped) if err.kind() == Kind::Upstream && tripped.load(Ordering::Relaxed) => {
                ProxyError::with_cause(Kind::BodyTooLarge, err)
            }
            _ => err,
        });
        let mut response = result.map_err(fail)?;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // Nobody asked to switch: the connection is in an unknown state.
            return Err(fail(ProxyError::with_cause(
                Kind::Upstream,
                "101 Switching Protocols to a request that did not ask for an upgrade",
            )));
        }
        if !headers::only_chunked(response.headers()) {
            // We never asked for another coding (TE beyond `trailers` is not forwarded),
            // and removing Transfer-Encoding would pass the coded bytes off as the body.
            return Err(fail(ProxyError::with_cause(
                Kind::Upstream,
                "response with a transfer coding other than chunked",
            )));
        }
        headers::strip_hop_by_hop(response.headers_mut(), false);
        let response = crate::client::idle::limit(response, policy.upstream_body_idle_timeout);
        Ok(self.finish(response, held))
    }

    /// The last touches on an upstream response: `Via`, and the request's guard held
    /// until the body ends.
    fn finish(&self, mut response: Response<Body>, held: Option<upgrade::Held>) -> Response<Body> {
        if let Some(pseudonym) = &self.settings.via {
            let version = response.version();
            headers::append_via(response.headers_mut(), version, pseudonym);
        }
        match held {
            Some(held) => upgrade::hold_until_body_ends(response, held),
            None => response,
        }
    }
}

pin_project_lite::pin_project! {
    /// The client's request body, noting whether it failed.
    struct ClientBody {
        #[pin]
        inner: Body,
        failed: Arc<AtomicBool>,
    }
}

impl ClientBody {
    /// Wrap `body` unless it is already over (most requests): the wrapped body, and the
    /// flag set when it fails.
    fn watch(body: Body) -> (Body, Option<Arc<AtomicBool>>) {
        if http_body::Body::is_end_stream(&body) {
            return (body, None);
        }
        let failed = Arc::new(AtomicBool::new(false));
        let body = Body::new(ClientBody {
            inner: body,
            failed: Arc::clone(&failed),
        });
        (body, Some(failed))
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Err(_)) = &frame {
            this.failed.store(true, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_pseudonyms_that_loop_detection_cannot_find_are_ignored() {
        // Found by the `headers` fuzz target: `prox,` was accepted, and `Via: 1.1 prox,`
        // does not name `prox,`, so a loop through this proxy went undetected.
        for bad in ["prox,", "my proxy", "a\tb", "", "  ", "é"] {
            let settings = Settings::new(ProxyPolicy::new().with_via(bad));
            assert_eq!(settings.via, None, "{bad:?}");
        }
        for good in ["edge", " edge-1 ", "proxy.example.com:8080", "[::1]:80"] {
            let via = Settings::new(ProxyPolicy::new().with_via(good))
                .via
                .unwrap();
            let mut map = http::HeaderMap::new();
            headers::append_via(&mut map, Version::HTTP_11, &via);
            assert!(headers::via_has_pseudonym(&map, &via), "{good:?}");
        }
    }
}
