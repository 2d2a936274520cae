//! One upstream: [`ReverseProxy`] rewrites each request onto its target, forwards it, and
//! streams the answer back.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{NestedPath, OriginalUri};
use http::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::Connect;

use crate::client::{self, ProxyConnector, Transport};
use crate::error::InvalidTarget;
use crate::policy::ProxyPolicy;
use crate::uri::{self, Target, UpstreamPath};

pub(crate) mod forward;
pub(crate) mod validate;

pub(crate) use forward::{Forwarder, Settings};

/// A reverse proxy to one upstream target, usable as a `tower::Service`, as an
/// `axum::Router` (via `From`), or from a handler with [`proxy_request`](Self::proxy_request).
///
/// The `path` is where the proxy is mounted: a request for `path/rest` goes to
/// `target/rest` (see the [joining rules](crate#uri-joining)).
///
/// ```
/// use axum::Router;
/// use axum_reverse_proxy::ReverseProxy;
///
/// let proxy = ReverseProxy::new("/api", "http://127.0.0.1:3000");
/// let app: Router = Router::new()
///     .route("/", axum::routing::get(|| async { "home" }))
///     .merge(proxy);
/// ```
pub struct ReverseProxy<C = ProxyConnector> {
    mount: Arc<Mount>,
    forwarder: Forwarder<C>,
}

struct Mount {
    path: String,
    base: String,
    target: Target,
}

impl<C: Clone> Clone for ReverseProxy<C> {
    fn clone(&self) -> Self {
        ReverseProxy {
            mount: Arc::clone(&self.mount),
            forwarder: self.forwarder.clone(),
        }
    }
}

impl<C> std::fmt::Debug for ReverseProxy<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReverseProxy")
            .field("path", &self.mount.path)
            .field("target", &self.mount.target.as_str())
            .finish_non_exhaustive()
    }
}

pub(crate) fn check_tls(target: &Target) -> Result<(), InvalidTarget> {
    if target.is_https() && !client::TLS_ENABLED {
        return Err(InvalidTarget {
            target: target.as_str().to_owned(),
            reason: "https targets need the `tls` or `native-tls` feature",
        });
    }
    Ok(())
}

impl ReverseProxy<ProxyConnector> {
    /// A proxy mounted at `path` forwarding to `target`, with its own connection pool.
    ///
    /// # Panics
    /// If `target` is not a valid `http`/`https` URL with a host. Use
    /// [`try_new`](Self::try_new) to get an error instead.
    pub fn new<P, T>(path: P, target: T) -> Self
    where
        P: Into<String>,
        T: Into<String>,
    {
        Self::try_new(path, target).unwrap_or_else(|err| panic!("{err}"))
    }

    /// Like [`new`](Self::new), returning an error for an unusable target.
    pub fn try_new<P, T>(path: P, target: T) -> Result<Self, InvalidTarget>
    where
        P: Into<String>,
        T: Into<String>,
    {
        let target = Target::parse(&target.into())?;
        check_tls(&target)?;
        Ok(Self::from_parts(
            path.into(),
            target,
            Transport::Pool(client::new_default_pool()),
        ))
    }
}

impl<C> ReverseProxy<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    /// A proxy that sends through `client` (its connector, TLS settings and pool).
    ///
    /// gRPC requests to a plain `http://` target are the one exception: they need HTTP/2
    /// with prior knowledge, which such a client cannot be told to use per request, so
    /// they go through the library's own h2c pool.
    ///
    /// # Panics
    /// If `target` is not a valid `http`/`https` URL with a host.
    pub fn new_with_client<P, T>(path: P, target: T, client: Client<C, Body>) -> Self
    where
        P: Into<String>,
        T: Into<String>,
    {
        Self::try_new_with_client(path, target, client).unwrap_or_else(|err| panic!("{err}"))
    }

    /// Like [`new_with_client`](Self::new_with_client), returning an error for an
    /// unusable target.
    pub fn try_new_with_client<P, T>(
        path: P,
        target: T,
        client: Client<C, Body>,
    ) -> Result<Self, InvalidTarget>
    where
        P: Into<String>,
        T: Into<String>,
    {
        let target = Target::parse(&target.into())?;
        Ok(Self::from_parts(
            path.into(),
            target,
            Transport::Client(Arc::new(client)),
        ))
    }

    fn from_parts(path: String, target: Target, transport: Transport<C>) -> Self {
        let base = uri::normalize_base(&path).to_owned();
        ReverseProxy {
            mount: Arc::new(Mount { path, base, target }),
            forwarder: Forwarder {
                transport,
                settings: Arc::new(Settings::new(ProxyPolicy::default())),
            },
        }
    }

    /// Replace the proxy's [`ProxyPolicy`].
    pub fn with_policy(mut self, policy: ProxyPolicy) -> Self {
        self.forwarder.settings = Arc::new(Settings::new(policy));
        self
    }

    /// Speak TLS to an `https` target with rustls and `config` (its root certificates,
    /// client certificate, protocol versions), through a connection pool of the proxy's
    /// own; the proxy sets ALPN. This replaces the client given to `new_with_client`.
    ///
    /// ```
    /// use axum_reverse_proxy::ReverseProxy;
    ///
    /// # fn build(roots: rustls::RootCertStore) {
    /// let config = rustls::ClientConfig::builder_with_provider(
    ///     rustls::crypto::ring::default_provider().into(),
    /// )
    /// .with_safe_default_protocol_versions()
    /// .unwrap()
    /// .with_root_certificates(roots)
    /// .with_no_client_auth();
    /// let proxy = ReverseProxy::new("/", "https://internal.example:8443").with_tls_config(config);
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    pub fn with_tls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.forwarder.transport = Transport::Pool(client::new_rustls_pool(config));
        self
    }

    /// The proxy's policy.
    pub fn policy(&self) -> &ProxyPolicy {
        self.forwarder.policy()
    }

    /// The path the proxy is mounted at, as given.
    pub fn path(&self) -> &str {
        &self.mount.path
    }

    /// The target, as given.
    pub fn target(&self) -> &str {
        self.mount.target.as_str()
    }

    /// Forward one request; for use inside ordinary handlers.
    ///
    /// ```
    /// use axum::{Router, body::Body, extract::Request, routing::any};
    /// use axum_reverse_proxy::ReverseProxy;
    ///
    /// let proxy = ReverseProxy::new("/", "http://127.0.0.1:3000");
    /// let app: Router = Router::new().route(
    ///     "/{*path}",
    ///     any(move |req: Request<Body>| {
    ///         let proxy = proxy.clone();
    ///         async move { proxy.proxy_request(req).await.unwrap() }
    ///     }),
    /// );
    /// ```
    pub async fn proxy_request(&self, req: Request<Body>) -> Result<Response<Body>, Infallible> {
        let (target, path_and_query) = self.mounted(&req);
        Ok(self
            .forwarder
            .forward(target, req, path_and_query, None)
            .await)
    }

    /// Forward one request from the client at `client`, for servers that know the peer
    /// address without axum's `ConnectInfo` extension (which [`proxy_request`] reads for
    /// `X-Forwarded-For`, `Forwarded` and the trusted-proxy check, and which costs a map
    /// and two allocations per request to insert).
    ///
    /// [`proxy_request`]: Self::proxy_request
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use axum::{body::Body, extract::Request, response::Response};
    /// use axum_reverse_proxy::ReverseProxy;
    ///
    /// async fn serve(proxy: &ReverseProxy, peer: SocketAddr, req: Request<Body>) -> Response {
    ///     let Ok(response) = proxy.proxy_request_from(peer, req).await;
    ///     response
    /// }
    /// ```
    pub async fn proxy_request_from(
        &self,
        client: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Body>, Infallible> {
        // Not through a shared `async fn`: each level of one keeps its own copy of the
        // request in the future, and copies the future below it in.
        let (target, path_and_query) = self.mounted(&req);
        Ok(self
            .forwarder
            .forward(target, req, path_and_query, Some(client))
            .await)
    }

    /// The target, and the upstream path and query for `req`.
    fn mounted(&self, req: &Request<Body>) -> (&Target, UpstreamPath) {
        let mount = &*self.mount;
        (
            &mount.target,
            mounted_path_and_query(req, &mount.base, &mount.target),
        )
    }
}

/// The upstream path and query for `req` on a proxy mounted at `base` (normalised):
/// the joining rules of [`uri`], applied once whichever way axum routed the request.
pub(crate) fn mounted_path_and_query(
    req: &Request<Body>,
    base: &str,
    target: &Target,
) -> UpstreamPath {
    let nested = req
        .extensions()
        .get::<NestedPath>()
        .filter(|nested| nested_at(nested.as_str(), base));
    let Some(nested) = nested else {
        return uri::upstream_path(base, target, req.uri(), true);
    };
    // Under `Router::nest` at our own path, axum already removed the prefix, and
    // rewrote what follows it (`/api//x` became `/x`, `/api/` became `/`): when the
    // original URI is known, strip the nest path from it ourselves.
    match original_below(req, nested.as_str()) {
        Some(original) => {
            uri::upstream_path(uri::normalize_base(nested.as_str()), target, original, true)
        }
        None => uri::upstream_path(base, target, req.uri(), false),
    }
}

/// The request's original URI, when its path starts with the literal nest path
/// `nested` on a segment boundary.
fn original_below<'a>(req: &'a Request<Body>, nested: &str) -> Option<&'a Uri> {
    let original = &req.extensions().get::<OriginalUri>()?.0;
    let prefix = uri::normalize_base(nested);
    if prefix.contains('{') {
        return None;
    }
    let rest = original.path().strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(original)
}

/// Whether a nest at `nested` has already removed `base`: the nest path ends with the
/// base on a segment boundary (`/v1/api` ends with `/api`, `/xapi` does not).
fn nested_at(nested: &str, base: &str) -> bool {
    if base.is_empty() {
        return false;
    }
    let nested = uri::normalize_base(nested);
    nested
        .strip_suffix(base)
        .is_some_and(|rest| rest.is_empty() || rest.ends_with('/') || base.starts_with('/'))
}

impl<C> tower::Service<Request<Body>> for ReverseProxy<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.proxy_request(req).await })
    }
}
