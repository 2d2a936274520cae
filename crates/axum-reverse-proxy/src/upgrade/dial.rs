//! Sending the handshake upstream, over an HTTP/1.1 connection of its own.
//!
//! An upgrade needs HTTP/1.1: HTTP/2 has no `Upgrade`. Our pool would hand out an
//! HTTP/2 connection when one is cached for the upstream (gRPC, h2c) or when TLS ALPN
//! picks `h2`, so proxies on the default transport dial a fresh connection with the same
//! connector settings (TCP options, roots) but ALPN limited to `http/1.1`. The
//! connection is never pooled: after a 101 it belongs to the tunnel.
//!
//! Proxies built with a user's client send through that client, whose connector and TLS
//! settings apply. If its connector offers `h2` by ALPN and the upstream picks it, the
//! upgrade cannot happen (the upstream answers the `GET` as a plain request); build
//! such a client's connector with HTTP/1.1 only for WebSocket upstreams.

use std::sync::OnceLock;

use axum::body::Body;
use http::uri::{Scheme, Uri};
use http::{Request, Response, Version};
use hyper_util::client::legacy::connect::Connect;
use tower::ServiceExt;

use crate::client::pool::classify_send_error;
use crate::client::{ProxyConnector, Transport};
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
        Transport::Pool(_) => send_http1(target, req).await,
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
async fn send_http1(target: &Target, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    let uri = Uri::builder()
        .scheme(if target.is_https() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        })
        .authority(target.authority().clone())
        .path_and_query("/")
        .build()
        .map_err(|e| ProxyError::with_cause(Kind::Connect, e))?;
    let io = http1_connector()
        .oneshot(uri)
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

/// The default connector with ALPN limited to HTTP/1.1, built once per process.
fn http1_connector() -> ProxyConnector {
    static CONNECTOR: OnceLock<ProxyConnector> = OnceLock::new();
    CONNECTOR.get_or_init(build_http1_connector).clone()
}

#[cfg(feature = "native-tls")]
fn build_http1_connector() -> ProxyConnector {
    use crate::client::http_connector;
    // As for the default connector: without a TLS library there is no proxy at all.
    let tls = native_tls::TlsConnector::builder()
        .request_alpns(&["http/1.1"])
        .build()
        .expect("the system TLS library could not build a client connector");
    hyper_tls::HttpsConnector::from((http_connector(), tokio_native_tls::TlsConnector::from(tls)))
}

#[cfg(all(feature = "tls", not(feature = "native-tls")))]
fn build_http1_connector() -> ProxyConnector {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(crate::client::tls::default_rustls_config())
        .https_or_http()
        .enable_http1()
        .wrap_connector(crate::client::http_connector())
}

#[cfg(not(any(feature = "tls", feature = "native-tls")))]
fn build_http1_connector() -> ProxyConnector {
    crate::client::http_connector()
}
