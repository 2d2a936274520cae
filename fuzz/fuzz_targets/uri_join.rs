//! URI joining: a target parsed as the proxy parses it, a mount path, and a request's
//! path and query, joined as `ReverseProxy` (strip the mount), `Router::nest` (no
//! strip) and `proxy_route` (strip the route's literal prefix) join them; and the
//! server's `strip_prefix` rule.
//!
//! Input: UTF-8 text, one item a line: the target URL, the mount path (also used as a
//! `proxy_route` path and as a server route prefix), the request's path-and-query.
//!
//! Asserted: the result is a valid path-and-query, and a valid URI behind the target's
//! authority; it starts with `/` and with the target's path; what follows the target's
//! path is the request path with the mount removed at most once, verbatim; the target's
//! query comes first and the request's query is kept verbatim at the end.
#![no_main]

use axum_reverse_proxy::__fuzz::{self as lib, Target};
use axum_reverse_proxy_server::__fuzz as server;
use http::Uri;
use http::uri::PathAndQuery;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let raw_target = lines.next().unwrap_or_default();
    let mount = lines.next().unwrap_or_default();
    let request = lines.next().unwrap_or("/");

    // Only what a server can hand us: an origin-form request target.
    let Ok(request) = request.parse::<PathAndQuery>() else {
        return;
    };
    let (path, query) = (request.path(), request.query());
    if !path.starts_with('/') {
        return;
    }

    check_server_strip(mount, path, query);

    let Ok(target) = Target::parse(raw_target) else {
        return;
    };
    check_target(raw_target, &target);

    let base = lib::normalize_base(mount);
    assert!(!base.ends_with('/'), "{base:?}");
    check_join(&target, base, path, query, true);
    check_join(&target, base, path, query, false);

    let prefix = lib::literal_prefix(mount);
    assert!(mount.starts_with(&prefix), "{mount:?} → {prefix:?}");
    assert!(
        !prefix.contains('{') && !prefix.ends_with('/'),
        "{prefix:?}"
    );
    check_join(&target, &prefix, path, query, true);
});

fn check_target(raw: &str, target: &Target) {
    let path = target.path();
    assert!(
        path.is_empty() || path.starts_with('/'),
        "{raw:?}: path {path:?}"
    );
    assert!(!path.ends_with('/'), "{raw:?}: path {path:?}");
    assert!(!target.authority().host().is_empty(), "{raw:?}");
    assert!(!target.authority().as_str().contains('@'), "{raw:?}");
    let authority = target.authority();
    let port = authority.as_str()[authority.host().len()..].strip_prefix(':');
    if port.is_some_and(|p| !p.is_empty()) {
        assert!(authority.port_u16().is_some(), "{raw:?}: port {port:?}");
    }
    assert_eq!(
        target.host_header().as_bytes(),
        target.authority().as_str().as_bytes(),
        "{raw:?}"
    );
    if let Some(q) = target.query() {
        assert!(!q.is_empty(), "{raw:?}");
    }
}

fn check_join(target: &Target, base: &str, path: &str, query: Option<&str>, strip: bool) {
    let out = lib::join_path_and_query(base, target, path, query, strip);
    let ctx = || {
        format!(
            "target path {:?} query {:?}, base {base:?}, request {path:?} ? {query:?}, strip {strip}: {out:?}",
            target.path(),
            target.query()
        )
    };

    // A valid request target, on its own and behind the target's authority.
    let pq: PathAndQuery = out.parse().unwrap_or_else(|e| panic!("{e}: {}", ctx()));
    let scheme = if target.is_https() { "https" } else { "http" };
    let full: Uri = format!("{scheme}://{}{out}", target.authority())
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {}", ctx()));
    assert_eq!(full.authority(), Some(target.authority()), "{}", ctx());
    assert_eq!(full.path(), pq.path(), "{}", ctx());

    // The path: the target's, then the request's remainder.
    let out_path = pq.path();
    assert!(out_path.starts_with('/'), "{}", ctx());
    let Some(tail) = out_path.strip_prefix(target.path()) else {
        panic!("does not start with the target path: {}", ctx());
    };
    let remainder = if !strip || base.is_empty() {
        if path == "/" { "" } else { path }
    } else {
        match path.strip_prefix(base) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => path,
        }
    };
    // The mount is removed at most once, and only on a segment boundary.
    assert!(path.ends_with(remainder), "{}", ctx());
    if remainder.is_empty() {
        let slash = target.path().is_empty() || target.trailing_slash();
        assert_eq!(tail, if slash { "/" } else { "" }, "{}", ctx());
    } else {
        assert_eq!(tail, remainder, "remainder changed: {}", ctx());
    }

    // The query: the target's first, the request's kept verbatim at the end.
    let out_query = pq.query();
    match (target.query(), query) {
        (Some(tq), Some(q)) if !q.is_empty() => {
            assert_eq!(out_query, Some(format!("{tq}&{q}").as_str()), "{}", ctx());
        }
        (Some(tq), _) => assert_eq!(out_query, Some(tq), "{}", ctx()),
        (None, q) => assert_eq!(out_query, q, "{}", ctx()),
    }
}

/// The server's `strip_prefix`: the forwarded path is the request path without the
/// route prefix, always a valid path-and-query with the query kept.
fn check_server_strip(prefix: &str, path: &str, query: Option<&str>) {
    let prefix = server::normalize_prefix(prefix);
    assert!(prefix == "/" || !prefix.ends_with('/'), "{prefix:?}");
    if !server::prefix_matches(prefix, path) {
        return;
    }
    let stripped = server::strip(prefix, path);
    assert!(
        stripped.starts_with('/'),
        "{prefix:?} {path:?}: {stripped:?}"
    );
    if prefix == "/" {
        assert_eq!(stripped, path);
    } else if stripped == "/" {
        assert!(
            path == prefix || path == format!("{prefix}/"),
            "{prefix:?} {path:?}"
        );
    } else {
        assert_eq!(format!("{prefix}{stripped}"), path, "{prefix:?}");
    }
    let pq = match query {
        Some(q) => format!("{stripped}?{q}"),
        None => stripped.clone(),
    };
    let parsed: PathAndQuery = pq
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {prefix:?} {path:?} → {pq:?}"));
    assert_eq!(parsed.path(), stripped);
    assert_eq!(parsed.query(), query);
}
