//! Upstream targets and the pure rules that join a request's path onto them.
//!
//! A target (`http://upstream:8080/base?k=v`) is parsed once, when the proxy is built
//! ([`Target::parse`]); every request then goes through [`join_path_and_query`], which
//! does no parsing and at most one allocation.
//!
//! # The joining rules
//!
//! With `B` the proxy's mount path (trailing slashes ignored), `T` the target path
//! (trailing slashes ignored, `/` counts as empty) and `P?Q` the request:
//!
//! 1. **Remainder.** If `P` equals `B`, or starts with `B` followed by `/`, the remainder
//!    `R` is `P` without `B`. A request for the root of a root mount (`B` empty, `P = /`)
//!    has an empty remainder. Any other request (possible when the proxy is a fallback
//!    service) keeps its whole path: `R = P`. Matching is byte-wise on the raw,
//!    percent-encoded path, so `/a%2Fb` is not `/a/b`.
//! 2. **Join.** An empty `R` gives `T` itself (with its trailing slash if the target had
//!    one, `/` if `T` is empty); otherwise `T + R`, verbatim.
//! 3. **Query.** The target's query first, then the request's, joined with `&`.
//! 4. **No normalisation.** Percent-encoding, dot segments, `//` and case are kept exactly
//!    as received: the upstream sees the bytes the client sent.
//!
//! | mount `B` | target | request | upstream |
//! |---|---|---|---|
//! | `/api` | `http://u/bar` | `/api` | `/bar` |
//! | `/api` | `http://u/bar` | `/api/` | `/bar/` |
//! | `/api` | `http://u/bar` | `/api/x?y=1` | `/bar/x?y=1` |
//! | `/api` | `http://u/base/` | `/api` | `/base/` |
//! | `/api` | `http://u` | `/api/api/x` | `/api/x` (stripped once) |
//! | `/` or `""` | `http://u/api` | `/` | `/api` |
//! | `/` | `http://u/api` | `/x/` | `/api/x/` |
//! | `/p` | `http://u/t?k=v` | `/p?q=1` | `/t?k=v&q=1` |

use std::net::Ipv6Addr;
use std::sync::Arc;

use http::HeaderValue;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};

use crate::client::UpstreamKey;
use crate::error::InvalidTarget;

/// An upstream target, parsed and validated once.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    raw: String,
    scheme: Scheme,
    authority: Authority,
    /// The target path with trailing slashes removed; empty for `/`.
    path: String,
    /// The target path ended with `/` and was more than `/`.
    trailing_slash: bool,
    query: Option<String>,
    host_header: HeaderValue,
    key: UpstreamKey,
}

impl Target {
    /// Parse a proxy target. Accepts `http`, `https`, and `ws`/`wss` (as aliases of
    /// `http`/`https`), or no scheme at all (`localhost:3000` means `http://localhost:3000`).
    pub(crate) fn parse(raw: &str) -> Result<Target, InvalidTarget> {
        // `http::Uri` accepts braces in the path and query, but RFC 3986 has no place for
        // them: here they are a template placeholder left unfilled, never a real URL.
        if raw.contains(['{', '}']) {
            return Err(InvalidTarget {
                target: raw.to_owned(),
                reason: "it contains `{` or `}` (an unfilled placeholder?)",
            });
        }
        let invalid = |reason| InvalidTarget {
            target: raw.to_owned(),
            reason,
        };
        let uri: Uri = raw.trim().parse().map_err(|_| invalid("not a valid URI"))?;
        let scheme = match uri.scheme_str() {
            None | Some("http") | Some("ws") => Scheme::HTTP,
            Some("https") | Some("wss") => Scheme::HTTPS,
            Some(_) => return Err(invalid("the scheme must be http or https")),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| invalid("it has no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("user information in the target is not supported"));
        }
        if authority.host().is_empty() {
            return Err(invalid("it has no host"));
        }
        // `http::Uri` accepts any port text (`host:80x`), and a port that is not a number
        // would silently become the scheme's default.
        let port = authority.as_str()[authority.host().len()..].strip_prefix(':');
        if port.is_some_and(|p| !p.is_empty() && authority.port_u16().is_none()) {
            return Err(invalid("the port is not a number from 0 to 65535"));
        }
        let raw_path = uri.path();
        let trimmed = raw_path.trim_end_matches('/');
        let trailing_slash = !trimmed.is_empty() && trimmed.len() != raw_path.len();
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| invalid("the host is not a valid header value"))?;
        let key = UpstreamKey {
            https: scheme == Scheme::HTTPS,
            authority: authority.clone(),
            server_name: None,
        };
        Ok(Target {
            raw: raw.to_owned(),
            scheme,
            authority,
            key,
            path: trimmed.to_owned(),
            trailing_slash,
            query: uri.query().filter(|q| !q.is_empty()).map(str::to_owned),
            host_header,
        })
    }

    /// The same target known by `name` (an endpoint found by DNS): connections still go
    /// to the URL's host and port, but `Host` becomes `name[:port]` (the port only when
    /// it is not the scheme's default) and TLS sends `name` as SNI and verifies the
    /// certificate against it. Connections are pooled per address *and* name.
    ///
    /// A name equal to the URL's host changes nothing. A trailing dot is removed; an IPv6
    /// address is bracketed in `Host`.
    pub(crate) fn with_server_name(mut self, name: &str) -> Result<Target, InvalidTarget> {
        let invalid = |reason| InvalidTarget {
            target: self.raw.clone(),
            reason,
        };
        let bare = |host: &str| {
            let host = host.strip_suffix('.').unwrap_or(host);
            host.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host)
                .to_owned()
        };
        let name = bare(name);
        if name.is_empty() {
            return Err(invalid("the server name is empty"));
        }
        if name.eq_ignore_ascii_case(&bare(self.authority.host())) {
            return Ok(self);
        }
        let mut host = if name.parse::<Ipv6Addr>().is_ok() {
            format!("[{name}]")
        } else {
            name.clone()
        };
        let default_port = if self.is_https() { 443 } else { 80 };
        if let Some(port) = self.authority.port_u16()
            && port != default_port
        {
            host.push(':');
            host.push_str(&port.to_string());
        }
        // As a URI authority, the name can carry no path, userinfo or stray characters.
        match Authority::try_from(host.as_str()) {
            Ok(parsed) if parsed.as_str() == host && !host.contains('@') => {}
            _ => return Err(invalid("the server name is not a valid host name")),
        }
        self.host_header = HeaderValue::from_str(&host)
            .map_err(|_| invalid("the server name is not a valid header value"))?;
        self.key.server_name = Some(Arc::from(name));
        Ok(self)
    }

    /// The name the upstream is known by when it differs from the URL's host
    /// ([`with_server_name`](Self::with_server_name)).
    pub(crate) fn server_name(&self) -> Option<&str> {
        self.key.server_name.as_deref()
    }

    /// The target exactly as the user gave it.
    pub(crate) fn as_str(&self) -> &str {
        &self.raw
    }

    pub(crate) fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Which pooled connections can carry requests to this target.
    pub(crate) fn pool_key(&self) -> &UpstreamKey {
        &self.key
    }

    /// The `Host` header value that names this target.
    pub(crate) fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }
}

#[cfg(fuzzing)]
impl Target {
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    pub(crate) fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    pub(crate) fn trailing_slash(&self) -> bool {
        self.trailing_slash
    }
}

/// Strip trailing slashes from a mount path: `/api/` and `/api` mount the same place,
/// and `/` is the same as `""`.
pub(crate) fn normalize_base(base: &str) -> &str {
    base.trim_end_matches('/')
}

/// The path and query a request goes upstream with.
#[derive(Debug)]
pub(crate) enum UpstreamPath {
    /// The request's own, shared: the joining rules would rebuild it unchanged.
    Unchanged(PathAndQuery),
    /// Built by [`join_path_and_query`]; parsed when sent.
    Built(String),
}

impl UpstreamPath {
    pub(crate) fn into_path_and_query(self) -> Result<PathAndQuery, http::uri::InvalidUri> {
        match self {
            UpstreamPath::Unchanged(pq) => Ok(pq),
            UpstreamPath::Built(joined) => PathAndQuery::try_from(joined),
        }
    }
}

/// [`join_path_and_query`] for a request's `uri`, sharing the request's own path and
/// query when the rules leave them as they are: no base to strip, and a target with
/// neither path nor query (`http://host:port`). The common case costs then neither an
/// allocation nor a second parse of the path.
pub(crate) fn upstream_path(base: &str, target: &Target, uri: &Uri, strip: bool) -> UpstreamPath {
    if base.is_empty()
        && target.path.is_empty()
        && target.query.is_none()
        && let Some(pq) = uri.path_and_query()
        // Origin-form only: an absolute-form target may have an empty path (`?q`),
        // which the rules make `/?q`.
        && pq.as_str().starts_with('/')
    {
        return UpstreamPath::Unchanged(pq.clone());
    }
    UpstreamPath::Built(join_path_and_query(
        base,
        target,
        uri.path(),
        uri.query(),
        strip,
    ))
}

/// Join a request's path and query onto a target, per the module's rules.
///
/// `base` must already be normalised ([`normalize_base`]). With `strip == false` the
/// request path is taken as the remainder whole (the caller knows the mount prefix was
/// already removed, as under `Router::nest`).
pub(crate) fn join_path_and_query(
    base: &str,
    target: &Target,
    path: &str,
    query: Option<&str>,
    strip: bool,
) -> String {
    let remainder = if !strip || base.is_empty() {
        if path == "/" { "" } else { path }
    } else {
        match path.strip_prefix(base) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => path,
        }
    };

    let target_query = target.query.as_deref();
    let mut out = String::with_capacity(
        target.path.len()
            + remainder.len()
            + 2
            + target_query.map_or(0, |q| q.len() + 1)
            + query.map_or(0, |q| q.len() + 1),
    );
    out.push_str(&target.path);
    if remainder.is_empty() {
        if target.path.is_empty() || target.trailing_slash {
            out.push('/');
        }
    } else {
        out.push_str(remainder);
    }
    match (target_query, query) {
        (Some(tq), Some(q)) if !q.is_empty() => {
            out.push('?');
            out.push_str(tq);
            out.push('&');
            out.push_str(q);
        }
        (Some(tq), _) => {
            out.push('?');
            out.push_str(tq);
        }
        (None, Some(q)) => {
            out.push('?');
            out.push_str(q);
        }
        (None, None) => {}
    }
    out
}

#[cfg(test)]
mod tests;
