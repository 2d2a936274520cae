//! The route table: which route answers a request, by host and path prefix.
//!
//! Hosts are tried from most to least specific: the exact host (`api.example.com`), then
//! wildcards (`*.example.com` matches any name ending in `.example.com`, the longest
//! suffix first), then routes with no host. Within the first host group that has a route
//! whose prefix matches, the longest prefix wins. Prefixes match on segment boundaries:
//! `/api` matches `/api`, `/api/` and `/api/x`, never `/apix`; `/` matches everything.
//!
//! The table is immutable: a reload builds a new one and swaps it in.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::config::normalize_prefix;

/// Routes of one listener.
#[derive(Debug)]
pub(crate) struct RouteTable<T> {
    exact: HashMap<String, Vec<(String, T)>>,
    /// (suffix with its leading dot, routes), longest suffix first.
    wildcard: Vec<(String, Vec<(String, T)>)>,
    any: Vec<(String, T)>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable {
            exact: HashMap::new(),
            wildcard: Vec::new(),
            any: Vec::new(),
        }
    }
}

impl<T: Clone> RouteTable<T> {
    /// Add `value` for each of `hosts` (none: any host) under `prefix`.
    pub(crate) fn insert(&mut self, hosts: &[String], prefix: &str, value: T) {
        let prefix = normalize_prefix(prefix).to_owned();
        if hosts.is_empty() {
            self.any.push((prefix, value));
            return;
        }
        for host in hosts {
            let host = host.to_ascii_lowercase();
            let entry = (prefix.clone(), value.clone());
            if let Some(suffix) = host.strip_prefix('*') {
                match self.wildcard.iter_mut().find(|(s, _)| s == suffix) {
                    Some((_, routes)) => routes.push(entry),
                    None => self.wildcard.push((suffix.to_owned(), vec![entry])),
                }
            } else {
                self.exact.entry(host).or_default().push(entry);
            }
        }
    }

    /// Sort for lookup: longest prefixes and suffixes first.
    pub(crate) fn finish(mut self) -> Self {
        let by_len = |a: &(String, T), b: &(String, T)| b.0.len().cmp(&a.0.len());
        for routes in self.exact.values_mut() {
            routes.sort_by(by_len);
        }
        for (_, routes) in &mut self.wildcard {
            routes.sort_by(by_len);
        }
        self.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        self.any.sort_by(by_len);
        self
    }
}

impl<T> RouteTable<T> {
    /// The route for `host` (as sent: port and case are ignored) and `path`, with the
    /// prefix it matched.
    pub(crate) fn find(&self, host: Option<&str>, path: &str) -> Option<(&str, &T)> {
        // Most tables route by path alone: then the host is not even looked at.
        let by_host = !(self.exact.is_empty() && self.wildcard.is_empty());
        let host = host.filter(|_| by_host).map(normalize_host);
        if let Some(host) = host.as_deref() {
            if let Some(found) = self.exact.get(host).and_then(|r| longest(r, path)) {
                return Some(found);
            }
            for (suffix, routes) in &self.wildcard {
                if host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && let Some(found) = longest(routes, path)
                {
                    return Some(found);
                }
            }
        }
        longest(&self.any, path)
    }
}

fn longest<'a, T>(routes: &'a [(String, T)], path: &str) -> Option<(&'a str, &'a T)> {
    routes
        .iter()
        .find(|(prefix, _)| prefix_matches(prefix, path))
        .map(|(p, v)| (p.as_str(), v))
}

/// Whether normalized `prefix` matches `path` on a segment boundary.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// `/api/x` under prefix `/api` → `/x`; `/api` → `/`.
pub(crate) fn strip(prefix: &str, path: &str) -> String {
    if prefix == "/" {
        return path.to_owned();
    }
    match path.strip_prefix(prefix) {
        Some("") | None => "/".to_owned(),
        Some(rest) => rest.to_owned(),
    }
}

/// Lower-case, without port and trailing dot (copied only when case must change).
fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = host.trim();
    let without_port = if host.starts_with('[') {
        // IPv6 literal: keep up to and including the bracket.
        host.find(']').map_or(host, |i| &host[..=i])
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    let host = without_port.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable<&'static str> {
        let mut t = RouteTable::default();
        t.insert(&[], "/", "any-root");
        t.insert(&[], "/api", "any-api");
        t.insert(&["api.example.com".into()], "/", "exact-root");
        t.insert(&["api.example.com".into()], "/v2/", "exact-v2");
        t.insert(&["*.example.com".into()], "/", "wild");
        t.insert(&["*.eu.example.com".into()], "/", "wild-eu");
        t.finish()
    }

    #[test]
    fn exact_before_wildcard_before_any() {
        let t = table();
        assert_eq!(
            t.find(Some("api.example.com"), "/x").unwrap().1,
            &"exact-root"
        );
        assert_eq!(
            t.find(Some("API.Example.com:8443"), "/v2/y").unwrap().1,
            &"exact-v2"
        );
        assert_eq!(t.find(Some("www.example.com"), "/api").unwrap().1, &"wild");
        assert_eq!(t.find(Some("a.eu.example.com"), "/").unwrap().1, &"wild-eu");
        assert_eq!(t.find(Some("example.com"), "/api/x").unwrap().1, &"any-api");
        assert_eq!(t.find(None, "/apix").unwrap().1, &"any-root");
        assert_eq!(t.find(Some("other.org."), "/api").unwrap().1, &"any-api");
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let mut t = RouteTable::default();
        t.insert(&[], "/a", 1);
        t.insert(&[], "/a/b", 2);
        let t = t.finish();
        assert_eq!(t.find(None, "/a/b/c").unwrap().1, &2);
        assert_eq!(t.find(None, "/a/bc").unwrap().1, &1);
        assert_eq!(t.find(None, "/a").unwrap().1, &1);
        assert!(t.find(None, "/ab").is_none());
    }

    #[test]
    fn stripping() {
        assert_eq!(strip("/api", "/api/x"), "/x");
        assert_eq!(strip("/api", "/api"), "/");
        assert_eq!(strip("/", "/x"), "/x");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
    }
}
