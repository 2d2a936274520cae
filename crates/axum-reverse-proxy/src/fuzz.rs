//! The crate-private rules, reachable from the fuzz targets in the repository's `fuzz/`
//! crate. Compiled only under `cfg(fuzzing)` (cargo-fuzz sets it), hidden from the docs:
//! not an API, and it changes without notice.
//!
//! Each item is a thin wrapper: the fuzz targets exercise the code the proxy runs.

use std::net::IpAddr;

use http::Version;
use http::header::{HeaderMap, HeaderValue};
use http::uri::Authority;

use crate::error::InvalidTarget;

// ===== uri =====

/// A parsed upstream target.
#[derive(Clone, Debug)]
pub struct Target(crate::uri::Target);

impl Target {
    /// [`crate::uri::Target::parse`].
    pub fn parse(raw: &str) -> Result<Target, InvalidTarget> {
        crate::uri::Target::parse(raw).map(Target)
    }

    /// The target path, trailing slashes removed (empty for `/`).
    pub fn path(&self) -> &str {
        self.0.path()
    }

    /// The target's own query, if not empty.
    pub fn query(&self) -> Option<&str> {
        self.0.query()
    }

    /// Whether the target path ended with `/` (and was more than `/`).
    pub fn trailing_slash(&self) -> bool {
        self.0.trailing_slash()
    }

    /// Whether requests go over TLS.
    pub fn is_https(&self) -> bool {
        self.0.is_https()
    }

    /// The target's authority.
    pub fn authority(&self) -> &Authority {
        self.0.authority()
    }

    /// The `Host` value naming the target.
    pub fn host_header(&self) -> &HeaderValue {
        self.0.host_header()
    }
}

/// [`crate::uri::normalize_base`].
pub fn normalize_base(base: &str) -> &str {
    crate::uri::normalize_base(base)
}

/// [`crate::uri::join_path_and_query`].
pub fn join_path_and_query(
    base: &str,
    target: &Target,
    path: &str,
    query: Option<&str>,
    strip: bool,
) -> String {
    crate::uri::join_path_and_query(base, &target.0, path, query, strip)
}

// ===== router =====

/// The prefix a `proxy_route` with a base-URL target strips from request paths.
pub fn literal_prefix(route: &str) -> String {
    crate::router::literal_prefix(route)
}

/// [`crate::router::fill_template`].
pub fn fill_template(template: &str, params: &[(String, String)]) -> String {
    crate::router::fill_template(template, params)
}

// ===== headers =====

/// [`crate::headers::strip_hop_by_hop`].
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    crate::headers::strip_hop_by_hop(headers, keep_upgrade);
}

/// [`crate::headers::is_upgrade_request`].
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    crate::headers::is_upgrade_request(headers)
}

/// [`crate::headers::apply_forwarding`], with the client's details as arguments.
pub fn apply_forwarding(
    headers: &mut HeaderMap,
    peer: Option<IpAddr>,
    host: Option<&HeaderValue>,
    proto: &str,
    trusted: bool,
    x_forwarded: bool,
    forwarded: bool,
) {
    let info = crate::headers::ClientInfo { peer, host, proto };
    crate::headers::apply_forwarding(headers, &info, trusted, x_forwarded, forwarded);
}

/// [`crate::headers::append_via`].
pub fn append_via(headers: &mut HeaderMap, version: Version, pseudonym: &str) {
    crate::headers::append_via(headers, version, pseudonym);
}

/// [`crate::headers::via_has_pseudonym`].
pub fn via_has_pseudonym(headers: &HeaderMap, pseudonym: &str) -> bool {
    crate::headers::via_has_pseudonym(headers, pseudonym)
}

/// The `Via` pseudonym a [`crate::ProxyPolicy::with_via`] value becomes, or `None`
/// when the proxy would refuse it.
pub fn via_pseudonym(raw: &str) -> Option<String> {
    let policy = crate::ProxyPolicy::new().with_via(raw);
    crate::proxy::Settings::new(policy).via().map(str::to_owned)
}
