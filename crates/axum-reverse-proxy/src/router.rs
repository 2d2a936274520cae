//! Mounting proxies in axum: the `From<…> for Router` conversions and
//! [`ProxyRouterExt::proxy_route`] with its [`TargetResolver`]s.
//!
//! # Mounting
//! `Router::from(proxy)` (or `router.merge(proxy)`) answers the proxy's path, the path
//! with a trailing slash, and everything below it; a proxy at `/` or `""` becomes the
//! router's fallback. The proxy sees the full request path and removes its mount path
//! exactly once, so `/api/api/x` on a proxy at `/api` reaches the upstream as `/api/x`.
//!
//! # Routes with resolvers
//! ```
//! use axum::Router;
//! use axum_reverse_proxy::{ProxyRouterExt, proxy_template};
//!
//! let app: Router = Router::new()
//!     // Static base URL: the rest of the path is appended (`/api/users` → `/users`).
//!     .proxy_route("/api/{*rest}", "http://127.0.0.1:3000")
//!     // Template: `{name}` is replaced by the path parameter, percent-encoded.
//!     .proxy_route("/users/{id}", proxy_template("http://127.0.0.1:3001/v2/users/{id}"));
//! ```
//!
//! # Security
//! Template values come from the request path, so they are attacker-controlled. Every
//! substituted value is percent-encoded except for RFC 3986 unreserved characters, so it
//! can never add a `/`, `?`, `#`, `@`, `:` or `{placeholder}` to the URL: it cannot
//! change the scheme, host or port, and cannot walk up the upstream's path (`..` is
//! encoded as `%2E%2E`). Put placeholders in the host only if any host of that shape is
//! acceptable.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{FromRequestParts, RawPathParams};
use axum::routing::any;
use http::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::Connect;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::balance::{BalancedProxy, DiscoverableBalancedProxy};
use crate::client::{self, ProxyConnector, Transport};
use crate::error::{Kind, ProxyError};
use crate::policy::ProxyPolicy;
use crate::proxy::{Forwarder, ReverseProxy, Settings};
use crate::uri::{self, Target};

// ===== Router conversions =====

/// Mount `svc` at `path` and below (see the module docs).
pub(crate) fn mount<S, T>(path: &str, svc: T) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    T: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    T::Future: Send + 'static,
{
    let base = uri::normalize_base(path);
    if base.is_empty() {
        return Router::new().fallback_service(svc);
    }
    // Our own path is literal: escape axum's parameter syntax.
    let mut escaped = String::with_capacity(base.len() + 1);
    if !base.starts_with('/') {
        escaped.push('/');
    }
    for c in base.chars() {
        match c {
            '{' => escaped.push_str("{{"),
            '}' => escaped.push_str("}}"),
            c => escaped.push(c),
        }
    }
    Router::new()
        .route_service(&escaped, svc.clone())
        .route_service(&format!("{escaped}/"), svc.clone())
        .route_service(&format!("{escaped}/{{*proxy_rest}}"), svc)
}

impl<C, S> From<ReverseProxy<C>> for Router<S>
where
    C: Connect + Clone + Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
{
    fn from(proxy: ReverseProxy<C>) -> Self {
        let path = proxy.path().to_owned();
        mount(&path, proxy)
    }
}

impl<C, S> From<BalancedProxy<C>> for Router<S>
where
    C: Connect + Clone + Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
{
    fn from(proxy: BalancedProxy<C>) -> Self {
        let path = proxy.path().to_owned();
        mount(&path, proxy)
    }
}

impl<C, D, S> From<DiscoverableBalancedProxy<C, D>> for Router<S>
where
    C: Connect + Clone + Send + Sync + 'static,
    D: tower::discover::Discover + Send + 'static,
    D::Key: std::hash::Hash + Eq + Clone + std::fmt::Debug + Send + Sync,
    D::Service: Into<String> + Send,
    D::Error: std::fmt::Debug + Send,
    S: Clone + Send + Sync + 'static,
{
    fn from(proxy: DiscoverableBalancedProxy<C, D>) -> Self {
        let path = proxy.path().to_owned();
        mount(&path, proxy)
    }
}

// ===== TargetResolver =====

/// Decides, per request, where a [`ProxyRouterExt::proxy_route`] sends it.
pub trait TargetResolver: Clone + Send + Sync + 'static {
    /// The upstream URL for this request. `params` are the route's path parameters,
    /// percent-decoded, in route order.
    fn resolve(&self, req: &Request<Body>, params: &[(String, String)]) -> String;

    /// Whether [`resolve`](Self::resolve) returns a base URL onto which the rest of the
    /// request path (after the route's literal prefix) is appended. Plain strings are
    /// base URLs; templates and custom resolvers return the full URL.
    fn is_base_url(&self) -> bool {
        false
    }
}

impl TargetResolver for String {
    fn resolve(&self, _req: &Request<Body>, _params: &[(String, String)]) -> String {
        self.clone()
    }

    fn is_base_url(&self) -> bool {
        true
    }
}

impl TargetResolver for &'static str {
    fn resolve(&self, _req: &Request<Body>, _params: &[(String, String)]) -> String {
        (*self).to_owned()
    }

    fn is_base_url(&self) -> bool {
        true
    }
}

/// A target URL with `{name}` placeholders filled from the route's path parameters.
///
/// A placeholder that names no parameter of the route is a configuration error: such
/// requests are answered 500 ([`ProxyError::is_invalid_target`]) and never forwarded.
#[derive(Clone, Debug)]
pub struct TemplateTarget {
    template: Arc<str>,
}

impl TemplateTarget {
    /// A template such as `http://users.internal/v1/{id}/profile`.
    pub fn new(template: impl Into<String>) -> Self {
        TemplateTarget {
            template: template.into().into(),
        }
    }
}

/// Shorthand for [`TemplateTarget::new`].
pub fn proxy_template(template: impl Into<String>) -> TemplateTarget {
    TemplateTarget::new(template)
}

/// Everything but RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`).
const TEMPLATE_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Substitute `{name}` placeholders in one pass; values are encoded and never rescanned,
/// and a `.` or `..` path segment made with a value is encoded too.
pub(crate) fn fill_template(template: &str, params: &[(String, String)]) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut segment = Segment {
        start: 0,
        filled: false,
        in_path: true,
    };
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        segment.push_literal(&mut out, &rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            rest = &rest[open..];
            break;
        };
        let name = &after[..close];
        match params.iter().find(|(k, _)| k == name) {
            Some((_, value)) if value == "." || value == ".." => {
                for _ in 0..value.len() {
                    out.push_str("%2E");
                }
            }
            Some((_, value)) => {
                out.extend(utf8_percent_encode(value, TEMPLATE_VALUE));
                segment.filled = true;
            }
            None => {
                out.push('{');
                out.push_str(name);
                out.push('}');
            }
        }
        rest = &after[close + 1..];
    }
    segment.push_literal(&mut out, rest);
    segment.close(&mut out);
    out
}

/// The `/`-separated segment of a template being filled. A segment that a value helped
/// make and that came out as `.` or `..` (an empty value beside a literal dot:
/// `{name}.{ext}` with both empty, as axum matches `/f//` to `/f/{name}/{ext}`) would
/// walk the upstream's path: its dots are encoded. Values never add a `/`, `?` or `#`.
struct Segment {
    start: usize,
    filled: bool,
    /// Before the query and fragment.
    in_path: bool,
}

impl Segment {
    fn push_literal(&mut self, out: &mut String, mut text: &str) {
        while self.in_path
            && let Some(i) = text.find(['/', '?', '#'])
        {
            out.push_str(&text[..i]);
            self.close(out);
            out.push_str(&text[i..=i]);
            self.in_path = &text[i..=i] == "/";
            self.start = out.len();
            self.filled = false;
            text = &text[i + 1..];
        }
        out.push_str(text);
    }

    fn close(&self, out: &mut String) {
        let segment = &out[self.start..];
        if self.in_path && self.filled && (segment == "." || segment == "..") {
            let dots = segment.len();
            out.truncate(self.start);
            for _ in 0..dots {
                out.push_str("%2E");
            }
        }
    }
}

impl TargetResolver for TemplateTarget {
    fn resolve(&self, _req: &Request<Body>, params: &[(String, String)]) -> String {
        fill_template(&self.template, params)
    }
}

// ===== ProxyRouterExt =====

/// Adds proxy routes to an axum [`Router`].
pub trait ProxyRouterExt<S> {
    /// Proxy every method on `path` (axum route syntax) to `target`, through the
    /// process-wide default connection pool.
    fn proxy_route<T: TargetResolver>(self, path: &str, target: T) -> Self;

    /// Like [`proxy_route`](Self::proxy_route), with a [`ProxyPolicy`].
    fn proxy_route_with_policy<T: TargetResolver>(
        self,
        path: &str,
        target: T,
        policy: ProxyPolicy,
    ) -> Self;

    /// Like [`proxy_route_with_policy`](Self::proxy_route_with_policy), sending through
    /// `client` (its connector, TLS and pool).
    fn proxy_route_with_client<T, C>(
        self,
        path: &str,
        target: T,
        policy: ProxyPolicy,
        client: Client<C, Body>,
    ) -> Self
    where
        T: TargetResolver,
        C: Connect + Clone + Send + Sync + 'static;
}

impl<S> ProxyRouterExt<S> for Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    fn proxy_route<T: TargetResolver>(self, path: &str, target: T) -> Self {
        self.proxy_route_with_policy(path, target, ProxyPolicy::default())
    }

    fn proxy_route_with_policy<T: TargetResolver>(
        self,
        path: &str,
        target: T,
        policy: ProxyPolicy,
    ) -> Self {
        let forwarder: Forwarder<ProxyConnector> = Forwarder {
            transport: Transport::Pool(client::shared_default_pool()),
            settings: Arc::new(Settings::new(policy)),
        };
        add_route(self, path, target, forwarder)
    }

    fn proxy_route_with_client<T, C>(
        self,
        path: &str,
        target: T,
        policy: ProxyPolicy,
        client: Client<C, Body>,
    ) -> Self
    where
        T: TargetResolver,
        C: Connect + Clone + Send + Sync + 'static,
    {
        let forwarder = Forwarder {
            transport: Transport::Client(Arc::new(client)),
            settings: Arc::new(Settings::new(policy)),
        };
        add_route(self, path, target, forwarder)
    }
}

/// The literal part of a route path, before its first parameter, without trailing
/// slashes: what a base-URL target strips from the request path.
pub(crate) fn literal_prefix(route: &str) -> String {
    let literal = route.find('{').map_or(route, |i| &route[..i]);
    uri::normalize_base(literal).to_owned()
}

struct RouteProxy<T, C> {
    resolver: T,
    prefix: Arc<str>,
    forwarder: Forwarder<C>,
}

impl<T: Clone, C: Clone> Clone for RouteProxy<T, C> {
    fn clone(&self) -> Self {
        RouteProxy {
            resolver: self.resolver.clone(),
            prefix: Arc::clone(&self.prefix),
            forwarder: self.forwarder.clone(),
        }
    }
}

impl<T, C> RouteProxy<T, C>
where
    T: TargetResolver,
    C: Connect + Clone + Send + Sync + 'static,
{
    async fn handle(self, req: Request<Body>) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        let params: Vec<(String, String)> =
            match RawPathParams::from_request_parts(&mut parts, &()).await {
                // axum has already percent-decoded the values: decoding again would turn
                // a literal `%2F` in the path (`%252F`) into `/`.
                Ok(raw) => raw
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                // A value that is not UTF-8 cannot be given to a resolver; a base URL
                // does not use the values (the raw path is appended), so it forwards.
                Err(RawPathParamsRejection::InvalidUtf8InPathParam(_))
                    if !self.resolver.is_base_url() =>
                {
                    return ProxyError::new(Kind::BadRequest).into_response();
                }
                Err(_) => Vec::new(),
            };
        let req = Request::from_parts(parts, body);
        let resolved = self.resolver.resolve(&req, &params);
        let target = match Target::parse(&resolved) {
            Ok(target) => target,
            Err(err) => {
                // The resolved URL may carry secrets in its query: log only the reason.
                tracing::warn!(
                    reason = err.reason,
                    "proxy_route resolved an invalid target"
                );
                return ProxyError::with_cause(Kind::InvalidTarget, err).into_response();
            }
        };
        let path_and_query = if self.resolver.is_base_url() {
            uri::upstream_path(&self.prefix, &target, req.uri(), true)
        } else {
            uri::UpstreamPath::Built(uri::join_path_and_query(
                "",
                &target,
                "/",
                req.uri().query(),
                false,
            ))
        };
        self.forwarder
            .forward(&target, req, path_and_query, None)
            .await
    }
}

fn add_route<S, T, C>(
    router: Router<S>,
    path: &str,
    resolver: T,
    forwarder: Forwarder<C>,
) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    T: TargetResolver,
    C: Connect + Clone + Send + Sync + 'static,
{
    let route = RouteProxy {
        resolver,
        prefix: literal_prefix(path).into(),
        forwarder,
    };
    router.route(
        path,
        any(move |req: Request<Body>| {
            let route = route.clone();
            async move { route.handle(req).await }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn template_values_cannot_escape_their_place() {
        let t = "http://{svc}.internal:8080/users/{id}?x={q}";
        for (value, expect_host) in [
            ("api", "api.internal"),
            ("evil.com/", "evil.com%2F.internal"),
            ("a@b", "a%40b.internal"),
            (":99", "%3A99.internal"),
            ("{id}", "%7Bid%7D.internal"),
        ] {
            let out = fill_template(t, &params(&[("svc", value), ("id", "7"), ("q", "1")]));
            assert!(
                out.starts_with(&format!("http://{expect_host}:8080/users/7")),
                "{out}"
            );
            if let Ok(target) = Target::parse(&out) {
                assert_eq!(target.authority().port_u16(), Some(8080));
                assert!(target.authority().host().ends_with(".internal"), "{out}");
            }
        }
        let out = fill_template("http://h/files/{name}", &params(&[("name", "..")]));
        assert_eq!(out, "http://h/files/%2E%2E");
        let out = fill_template("http://h/files/{name}", &params(&[("name", "../../etc")]));
        assert_eq!(out, "http://h/files/..%2F..%2Fetc");
        let out = fill_template("http://h/{a}/{unknown}", &params(&[("a", "{unknown}")]));
        assert_eq!(out, "http://h/%7Bunknown%7D/{unknown}");
        assert_eq!(fill_template("http://h/{open", &[]), "http://h/{open");
    }

    #[test]
    fn empty_values_make_no_dot_segment() {
        // Found by the `template` fuzz target: axum gives `/f//` to `/f/{name}/{ext}` with
        // both values empty, and `{name}.{ext}` became the segment `.`.
        let both_empty = params(&[("name", ""), ("ext", "")]);
        let out = fill_template("http://h/files/{name}.{ext}?v=1", &both_empty);
        assert_eq!(out, "http://h/files/%2E?v=1");
        let out = fill_template("http://h/a/{name}..{ext}/b", &both_empty);
        assert_eq!(out, "http://h/a/%2E%2E/b");
        // The template's own dot segments, and dots in the query, stay as written.
        let out = fill_template("http://h/./x/../{name}.{ext}?p=../.", &both_empty);
        assert_eq!(out, "http://h/./x/../%2E?p=../.");
        let out = fill_template("http://h/{name}../{open", &both_empty);
        assert_eq!(out, "http://h/%2E%2E/{open");
        let out = fill_template("http://h/{name}.json", &params(&[("name", "a")]));
        assert_eq!(out, "http://h/a.json");
    }

    #[test]
    fn literal_prefixes() {
        assert_eq!(literal_prefix("/api/{*rest}"), "/api");
        assert_eq!(literal_prefix("/api"), "/api");
        assert_eq!(literal_prefix("/{id}"), "");
        assert_eq!(literal_prefix("/v1/users/{id}/x"), "/v1/users");
    }
}
