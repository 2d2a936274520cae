//! How requests leave the proxy: connectors, TLS, our connection pool, and the bridge to
//! a user's own `hyper_util` client.
//!
//! Proxies built with `new` use our [`Pool`](pool::Pool) over our own
//! [`Connector`](connect::Connector) (the TLS library of [`ProxyConnector`], or a rustls
//! config given to `with_tls_config`). It dials an endpoint's address and verifies TLS
//! against the endpoint's name, which differ for endpoints found by DNS. Proxies built with
//! `new_with_client` send through the given `hyper_util::client::legacy::Client`, as
//! promised by the 1.3 API; that client dials by URI, so there TLS names the address. Only
//! gRPC to a plain-HTTP target bypasses it, because HTTP/2 with prior knowledge cannot be
//! forced on that client (it then goes through a process-wide h2c pool over plain TCP).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use http::uri::{Parts, Scheme, Uri};
use http::{Request, Response, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};

use crate::error::{Kind, ProxyError};
use crate::uri::Target;

pub(crate) mod connect;
pub(crate) mod idle;
pub(crate) mod pool;
pub(crate) mod tls;

use connect::Connector;
use pool::{Pool, PoolConfig, Protocol};

/// The connector type of [`ReverseProxy::new`](crate::ReverseProxy::new) and the
/// `Standard…` aliases, naming the TLS their connection pool uses: rustls with Mozilla's
/// roots (feature `tls`), the system's native TLS (feature `native-tls`, which wins when
/// both are on), or plain TCP.
#[cfg(feature = "native-tls")]
pub type ProxyConnector = hyper_tls::HttpsConnector<HttpConnector>;
/// The connector type of [`ReverseProxy::new`](crate::ReverseProxy::new) and the
/// `Standard…` aliases, naming the TLS their connection pool uses: rustls with Mozilla's
/// roots (feature `tls`), the system's native TLS (feature `native-tls`, which wins when
/// both are on), or plain TCP.
#[cfg(all(feature = "tls", not(feature = "native-tls")))]
pub type ProxyConnector = hyper_rustls::HttpsConnector<HttpConnector>;
/// The connector type of [`ReverseProxy::new`](crate::ReverseProxy::new) and the
/// `Standard…` aliases, naming the TLS their connection pool uses: rustls with Mozilla's
/// roots (feature `tls`), the system's native TLS (feature `native-tls`, which wins when
/// both are on), or plain TCP.
#[cfg(not(any(feature = "tls", feature = "native-tls")))]
pub type ProxyConnector = HttpConnector;

/// Whether this build can speak TLS to upstreams.
pub(crate) const TLS_ENABLED: bool = cfg!(any(feature = "tls", feature = "native-tls"));

/// The TCP connector every default client uses: no Nagle delay, 10 s connect timeout,
/// TCP keep-alive, and any scheme allowed (TLS is layered on top).
pub(crate) fn http_connector() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.set_reuse_address(true);
    http
}

/// The default connector as a hyper-util connector (for the etcd client), built once per
/// process (root store parsing is not free).
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub(crate) fn default_connector() -> ProxyConnector {
    static CONNECTOR: OnceLock<ProxyConnector> = OnceLock::new();
    CONNECTOR.get_or_init(build_default_connector).clone()
}

#[cfg(feature = "native-tls")]
fn build_default_connector() -> ProxyConnector {
    let tls = native_tls::TlsConnector::builder()
        .request_alpns(&["h2", "http/1.1"])
        .build()
        .expect("the system TLS library could not build a client connector");
    hyper_tls::HttpsConnector::from((http_connector(), tokio_native_tls::TlsConnector::from(tls)))
}

#[cfg(all(feature = "tls", not(feature = "native-tls")))]
fn build_default_connector() -> ProxyConnector {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls::default_rustls_config())
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http_connector())
}

#[cfg(not(any(feature = "tls", feature = "native-tls")))]
fn build_default_connector() -> ProxyConnector {
    http_connector()
}

/// A new pool over the default connector.
pub(crate) fn new_default_pool() -> Arc<Pool> {
    Arc::new(Pool::new(Connector::standard(), PoolConfig::default()))
}

/// A new pool whose TLS is rustls with `config` (ALPN is set by the pool).
#[cfg(feature = "tls")]
pub(crate) fn new_rustls_pool(config: rustls::ClientConfig) -> Arc<Pool> {
    Arc::new(Pool::new(Connector::rustls(config), PoolConfig::default()))
}

/// The pool shared by every `proxy_route` of the process that was not given a client.
pub(crate) fn shared_default_pool() -> Arc<Pool> {
    static POOL: OnceLock<Arc<Pool>> = OnceLock::new();
    Arc::clone(POOL.get_or_init(new_default_pool))
}

/// The plain-TCP HTTP/2 pool that carries gRPC for proxies with a user's client.
fn h2c_pool() -> &'static Arc<Pool> {
    static POOL: OnceLock<Arc<Pool>> = OnceLock::new();
    POOL.get_or_init(|| Arc::new(Pool::new(Connector::plain(), PoolConfig::default())))
}

/// Where a proxy sends its requests.
pub(crate) enum Transport<C> {
    /// Our own pool.
    Pool(Arc<Pool>),
    /// The user's `hyper_util` client (behind an `Arc`: cloned per request).
    Client(Arc<Client<C, Body>>),
}

impl<C: Clone> Clone for Transport<C> {
    fn clone(&self) -> Self {
        match self {
            Transport::Pool(pool) => Transport::Pool(Arc::clone(pool)),
            Transport::Client(client) => Transport::Client(Arc::clone(client)),
        }
    }
}

impl<C> Transport<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    /// Send `req` (origin-form URI, `Host` set) to `target`. With `http2`, plain-HTTP
    /// targets are spoken to in HTTP/2 with prior knowledge.
    pub(crate) async fn send(
        &self,
        target: &Target,
        req: Request<Body>,
        http2: bool,
    ) -> Result<Response<Body>, ProxyError> {
        let h2c = http2 && !target.is_https();
        match self {
            Transport::Pool(pool) => {
                let protocol = if h2c { Protocol::Http2 } else { Protocol::Auto };
                pool.send(target.pool_key(), req, protocol).await
            }
            // Boxed: a second pool's future inline would double the size of this one.
            Transport::Client(_) if h2c => {
                Box::pin(h2c_pool().send(target.pool_key(), req, Protocol::Http2)).await
            }
            Transport::Client(client) => {
                let mut req = req;
                *req.uri_mut() = absolute_uri(target, req.uri());
                *req.version_mut() = Version::HTTP_11;
                match client.request(req).await {
                    Ok(mut response) => {
                        drop_conflicting_length(response.headers_mut());
                        Ok(response.map(Body::new))
                    }
                    Err(err) if err.is_connect() => Err(ProxyError::with_cause(Kind::Connect, err)),
                    Err(err) if pool::is_body_limit(&err) => {
                        Err(ProxyError::with_cause(Kind::BodyTooLarge, err))
                    }
                    Err(err) => Err(ProxyError::with_cause(Kind::Upstream, err)),
                }
            }
        }
    }
}

/// RFC 9112 §6.3: an HTTP/1 response with both `Transfer-Encoding` and
/// `Content-Length` has its body framed by the former (hyper reads it so); the
/// `Content-Length` must go before the response is forwarded, or the client would frame
/// the body by a length it does not have. Returns whether it was there.
pub(crate) fn drop_conflicting_length(headers: &mut http::HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        && headers.remove(http::header::CONTENT_LENGTH).is_some()
}

/// `scheme://authority/path?query` for clients that dial by URI.
fn absolute_uri(target: &Target, origin: &Uri) -> Uri {
    let mut parts = Parts::default();
    parts.scheme = Some(if target.is_https() {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    });
    parts.authority = Some(target.authority().clone());
    parts.path_and_query = origin.path_and_query().cloned();
    Uri::from_parts(parts).unwrap_or_else(|_| origin.clone())
}

pub(crate) use pool::PoolKey as UpstreamKey;

#[cfg(test)]
mod tests;
