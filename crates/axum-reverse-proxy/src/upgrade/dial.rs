//! Sending the handshake upstream, over an HTTP/1.1 connection of its own.
//!
//! An upgrade needs HTTP/1.1: HTTP/2 has no `Upgrade`. Our pool would hand out an
//! HTTP/2 connection when one is cached for the upstream (gRPC, h2c) or when TLS ALPN
//! picks `h2`, so proxies on the default transport dial a fresh connection with the
//! pool's connector (TCP options, TLS trust, the endpoint's name) but ALPN limited to
//! HTTP/1.1. The connection is never pooled: after a 101 it belongs to the tunnel.
//!
//! Proxies built with a user's client send through that client, whose connector and TLS
//! settings apply. If its connector offers `h2` by ALPN and the upstream picks it, the
//! upgrade cannot happen (the upstream answers the `GET` as a plain request); build
//! such a client's connector with HTTP/1.1 only for WebSocket upstreams.

use axum::body::Body;
use http::{Request, Response, Version};
use hyper_util::client::legacy::connect::Connect;

use crate::client::Transport;
use crate::client::connect::Alpn;
use crate::client::pool::{Pool, classify_send_error};
use crate::error::{Kind, ProxyError};
use crate::uri::Target;

/// Send the handshake `req` (origin-form URI, `Host` set) to `target`.
pub(crate) async fn send<C>(
    transport: &Transport<C>,
    target: &Target,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    match transport {
        Transport::Pool(pool) => send_http1(pool, target, req).await,
        Transport::Client(_) => {
            let response = transport.send(target, req, false).await?;
            if response.version() == Version::HTTP_2 {
                tracing::warn!(
                    upstream = %target.authority(),
                    "the client's connector negotiated HTTP/2, which cannot carry an upgrade; \
                     offer only HTTP/1.1 by ALPN to WebSocket upstreams"
                );
            }
            Ok(response)
        }
    }
}

/// One request on a new HTTP/1.1 connection, kept open for an upgrade.
async fn send_http1(
    pool: &Pool,
    target: &Target,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    let (io, _) = pool
        .connector()
        .connect(target.pool_key(), Alpn::Http1)
        .await
        .map_err(|e| ProxyError::with_cause(Kind::Connect, e))?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|e| ProxyError::with_cause(Kind::Connect, e))?;
    tokio::spawn(async move {
        // Resolves when the connection hands its socket to the upgrade, or closes.
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(error = %err, "upstream upgrade connection ended");
        }
    });
    let mut req = req;
    *req.version_mut() = Version::HTTP_11;
    let response = sender
        .send_request(req)
        .await
        .map_err(classify_send_error)?;
    Ok(response.map(Body::new))
}
