//! The path of one request: request id, route lookup, header rules, the pool's service,
//! metrics and the access log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use axum::body::Body;
use axum_reverse_proxy::TunnelGuard;
use http::header::{CONNECTION, Entry as HeaderEntry, HOST};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use tracing::Instrument;

use crate::access_log::{Counted, Entry, Logged};
use crate::config::HeaderRules;
use crate::listener::http::ConnSlot;
use crate::listener::limits::Watch;
use crate::routes::strip;
use crate::server::Shared;
use crate::upstream::Attempts;

/// The request-id header, propagated to the upstream and returned to the client.
pub(crate) static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What a connection knows about itself.
pub(crate) struct ConnInfo {
    pub(crate) listener: Arc<str>,
    pub(crate) peer: SocketAddr,
    /// The connection is TLS: requests are `https` for forwarding headers.
    pub(crate) tls: bool,
    /// The connection's state for the server limits, its [`Activity`] among them.
    pub(crate) watch: Arc<Watch>,
    /// Held as long as this is: by the connection, and by the tunnel of an upgrade made
    /// on it.
    pub(crate) _slot: ConnSlot,
}

/// Requests in flight on a connection and when it was last busy, for the idle timeout.
pub(crate) struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    last_millis: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_millis: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_millis.store(now, Ordering::Relaxed);
    }

    /// When the connection becomes idle for `idle`, as seen now; `None` while busy.
    pub(crate) fn idle_deadline(&self, idle: std::time::Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = std::time::Duration::from_millis(self.last_millis.load(Ordering::Relaxed));
        Some(self.start + last + idle)
    }
}

/// Holds a request "in flight" until dropped (with the response body).
pub(crate) struct InFlight(Arc<Watch>);

impl InFlight {
    pub(crate) fn new(watch: Arc<Watch>) -> InFlight {
        // No `touch` here: the time of the last activity is read only while nothing is
        // in flight, and the drop of the last `InFlight` sets it.
        watch.activity().in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(watch)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = self.0.activity();
        activity.touch();
        activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Header rules, parsed once per snapshot.
#[derive(Debug, Default)]
pub(crate) struct HeaderOps {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderOps {
    /// Compile validated rules (an invalid entry, impossible after validation, is skipped).
    pub(crate) fn compile(rules: &HeaderRules) -> HeaderOps {
        let pair = |(n, v): (&toml::Spanned<String>, &toml::Spanned<String>)| {
            Some((
                HeaderName::from_bytes(n.get_ref().as_bytes()).ok()?,
                HeaderValue::from_str(v.get_ref()).ok()?,
            ))
        };
        HeaderOps {
            remove: rules
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.get_ref().as_bytes()).ok())
                .collect(),
            set: rules.set.iter().filter_map(pair).collect(),
            add: rules.add.iter().filter_map(pair).collect(),
        }
    }

    fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// A request id we keep: 1 to 128 characters of `A-Z a-z 0-9 - _ . :`.
fn valid_request_id(value: &HeaderValue) -> bool {
    let b = value.as_bytes();
    (1..=128).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

/// 32 random lowercase hex digits.
///
/// Shared from the start (`Bytes::from_owner`): the id is cloned for the request, the
/// log entry and the response, and bytes copied from a slice would be allocated twice,
/// once when copied and again at the first clone.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bits = fastrand::u128(..);
    let mut id = [0u8; 32];
    for digit in id.iter_mut().rev() {
        *digit = HEX[(bits & 0xf) as usize];
        bits >>= 4;
    }
    let id = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(id))
        .unwrap_or_else(|_| HeaderValue::from_static("0"));
    never_indexed(id)
}

/// A request id marked "sensitive", which HTTP/2 encodes as a literal never indexed
/// (RFC 7541 §6.2.3). An id is unique to its request: in HPACK's dynamic table it would
/// only push out what could be reused, and the encoder's search of the churning table
/// cost ~2,800 instructions per HTTP/2 response. HTTP/1.1 ignores the mark.
fn never_indexed(mut id: HeaderValue) -> HeaderValue {
    id.set_sensitive(true);
    id
}

/// Serve one request from a client connection.
pub(crate) async fn handle<B>(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<B>,
) -> Response<Logged>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let start = Instant::now();
    let log_on = shared.access_log.is_on();
    // The wall-clock time is for the log line alone (the log is set for the process).
    let time = if log_on {
        SystemTime::now()
    } else {
        SystemTime::UNIX_EPOCH
    };
    let in_flight = InFlight::new(conn.watch.clone());
    let (mut parts, body) = req.into_parts();
    // Room, in one step, for the request id and the library's four forwarding fields:
    // grown a field at a time, the map would reallocate and re-index twice.
    parts.headers.reserve(5);
    let method = parts.method.clone();

    // Framing, target and Host first (RFC 9112 §3.2): routing reads Host, and the
    // authority of an absolute-form target replaces it.
    let invalid = axum_reverse_proxy::validate_request(&mut parts).err();
    if invalid.is_none() {
        // Before our own edits: a client must not name away what the route or we add.
        drop_connection_options(&mut parts.headers);
    }

    // One lookup for both the read and the write; repeated lines become one.
    let request_id = match parts.headers.entry(&REQUEST_ID) {
        HeaderEntry::Occupied(mut sent) => {
            let id = match sent.get() {
                v if valid_request_id(v) => never_indexed(v.clone()),
                _ => new_request_id(),
            };
            sent.insert(id.clone());
            id
        }
        HeaderEntry::Vacant(none) => none.insert(new_request_id()).clone(),
    };
    let bytes_in = log_on.then(|| Arc::new(AtomicU64::new(0)));
    // Written with status 499 if the client goes away before the response is ready;
    // taken back below when it is.
    let mut unanswered = Unanswered {
        shared: Arc::clone(&shared),
        entry: Some(Entry {
            time,
            start,
            request_id: request_id.clone(),
            client: conn.peer,
            method,
            // The target as received, for the log line alone (a clone shares its bytes
            // but still costs a reference count on each of its parts).
            uri: if log_on {
                parts.uri.clone()
            } else {
                Uri::default()
            },
            status: CLIENT_CLOSED_REQUEST,
            // Set once the route is known (before anything is awaited).
            route: None,
            bytes_in: bytes_in.clone(),
            bytes_out: 0,
        }),
    };

    set_scheme(&mut parts, conn.tls);

    let found = if invalid.is_some() {
        None
    } else {
        let host = parts
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()));
        shared
            .active
            .load()
            .tables
            .get(&*conn.listener)
            .and_then(|t| t.find(host, parts.uri.path()))
            .map(|(_, route)| Arc::clone(route))
    };
    if let Some(pending) = unanswered.entry.as_mut() {
        pending.route.clone_from(&found);
    }

    let mut response = match (invalid, &found) {
        (Some(err), _) => {
            tracing::debug!(
                id = request_id.to_str().unwrap_or("-"),
                method = %parts.method,
                status = err.status().as_u16(),
                error = %err,
                "request refused"
            );
            refusal(err, parts.version)
        }
        (None, None) => {
            let mut resp = Response::new(Body::from("no route for this host and path\n"));
            *resp.status_mut() = StatusCode::NOT_FOUND;
            resp
        }
        (None, Some(route)) => {
            // With the target as received (before any prefix is stripped). A span no
            // subscriber wants costs next to nothing to make.
            let span = tracing::info_span!(
                "request",
                id = request_id.to_str().unwrap_or("-"),
                method = %parts.method,
                path = parts.uri.path(),
                route = &*route.name,
            );
            // Stripping `/` changes nothing: skip the rebuild of the target.
            if route.strip_prefix && route.prefix != "/" {
                let stripped = strip(&route.prefix, parts.uri.path());
                let pq = match parts.uri.query() {
                    Some(q) => format!("{stripped}?{q}"),
                    None => stripped,
                };
                if let Ok(pq) = PathAndQuery::try_from(pq) {
                    let mut uri_parts = parts.uri.clone().into_parts();
                    uri_parts.path_and_query = Some(pq);
                    if let Ok(uri) = Uri::from_parts(uri_parts) {
                        parts.uri = uri;
                    }
                }
            }
            route.request_headers.apply(&mut parts.headers);
            if route.retries {
                parts.extensions.insert(Attempts::default());
            }
            if may_upgrade(&parts) {
                // An upgraded connection leaves hyper, which lets go of the connection's
                // slot: the tunnel holds it instead until it closes.
                parts.extensions.insert(TunnelGuard::new(Arc::clone(&conn)));
            }
            let body = match &bytes_in {
                Some(count) => Body::new(Counted {
                    inner: body,
                    count: Arc::clone(count),
                }),
                None => Body::new(body),
            };
            let req = Request::from_parts(parts, body);
            // Instrumented only when the span is wanted: the wrapper is one more future
            // level, polled and copied, for every request. (The call is made in each
            // arm: a future held in a local first is copied once more when awaited.)
            let mut resp = if span.is_disabled() {
                route.service.call(conn.peer, req).await
            } else {
                route.service.call(conn.peer, req).instrument(span).await
            };
            route.response_headers.apply(resp.headers_mut());
            resp
        }
    };
    let Some(mut entry) = unanswered.entry.take() else {
        // Not reachable: the entry is taken only here.
        return response.map(Logged::unlogged);
    };
    entry.status = response.status().as_u16();
    record(&shared, &entry);
    response
        .headers_mut()
        .insert(REQUEST_ID.clone(), request_id);
    response.map(|body| Logged::wrap(body, entry, &shared.access_log, in_flight))
}

/// nginx's status for a request whose client closed the connection before the answer.
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Count an answered (or abandoned) request in its route's metrics.
fn record(shared: &Shared, entry: &Entry) {
    let elapsed = entry.start.elapsed();
    match &entry.route {
        Some(route) => route
            .metrics
            .get_or_init(|| shared.metrics.route(&route.name, &route.pool))
            .record(entry.status, elapsed),
        None => shared.metrics.unrouted().record(entry.status, elapsed),
    }
}

/// A request not answered yet. If its future is dropped (the client went away before
/// the response head was ready), it is still counted in the metrics and written to the
/// access log, with status 499.
struct Unanswered {
    shared: Arc<Shared>,
    entry: Option<Entry>,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            record(&self.shared, &entry);
            self.shared.access_log.write(&entry);
        }
    }
}

/// Whether the request asks for an upgrade (HTTP/1.1 `Upgrade`, or an HTTP/2 CONNECT);
/// the proxy decides whether it really is one.
fn may_upgrade(parts: &http::request::Parts) -> bool {
    parts.method == http::Method::CONNECT || parts.headers.contains_key(http::header::UPGRADE)
}

/// The proxy's answer to a request [`validate_request`] refused: generic, and on HTTP/1
/// with `Connection: close`, since what follows it on the connection (a body we did not
/// read, bytes after a bad frame) cannot be trusted to be the next request.
///
/// [`validate_request`]: axum_reverse_proxy::validate_request
fn refusal(err: axum_reverse_proxy::ProxyError, version: http::Version) -> Response<Body> {
    let mut response = err.into_response();
    if version < http::Version::HTTP_2 {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Remove the headers the client named in `Connection` (RFC 9110 §7.6.1) and their
/// tokens, so that a client cannot name away a header the route's rules or the proxy add
/// later (the library strips hop-by-hop headers after all our edits). `upgrade` stays for
/// the upgrade, `te` for `TE: trailers`, and `Host` for the library's forwarding headers:
/// the library handles those itself.
fn drop_connection_options(headers: &mut HeaderMap) {
    let mut lines = headers.get_all(CONNECTION).iter();
    let Some(first) = lines.next().cloned() else {
        return;
    };
    // Most requests have one `Connection` line: the rest is empty, and allocates nothing.
    let rest: Vec<HeaderValue> = lines.cloned().collect();
    if rest.is_empty()
        && let Ok(option) = first.to_str()
        && (option.eq_ignore_ascii_case("close") || option.eq_ignore_ascii_case("keep-alive"))
    {
        // By far the most common: one option, and one `Connection` line to drop.
        headers.remove(CONNECTION);
        headers.remove(option);
        return;
    }
    let all = || {
        std::iter::once(&first)
            .chain(&rest)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
    };
    if !all().any(names_an_option) {
        return;
    }
    headers.remove(CONNECTION);
    let mut kept = String::new();
    for token in all() {
        if names_an_option(token) {
            // By `&str`: looked up case-insensitively, with no `HeaderName` allocated.
            headers.remove(token);
        } else {
            if !kept.is_empty() {
                kept.push_str(", ");
            }
            kept.push_str(token);
        }
    }
    if !kept.is_empty()
        && let Ok(value) = HeaderValue::from_str(&kept)
    {
        headers.insert(CONNECTION, value);
    }
}

/// Whether a `Connection` token names a field for [`drop_connection_options`] to remove:
/// a valid field name other than `upgrade`, `te` and `host`, which the library handles.
fn names_an_option(token: &str) -> bool {
    let handled = ["upgrade", "te", "host"]
        .iter()
        .any(|name| token.eq_ignore_ascii_case(name));
    // `close` and `keep-alive` are by far the most common: valid, without the check
    // (which allocates for names `http` does not know).
    !handled
        && (token.eq_ignore_ascii_case("close")
            || token.eq_ignore_ascii_case("keep-alive")
            || HeaderName::from_bytes(token.as_bytes()).is_ok())
}

/// Make the URI's scheme say what the connection is, whatever the client wrote
/// (an absolute-form target or an HTTP/2 `:scheme`), so that `X-Forwarded-Proto` and
/// `Forwarded: proto=` tell the truth: `https` on TLS (an origin-form request gets its
/// Host as authority), `http` otherwise.
fn set_scheme(parts: &mut http::request::Parts, tls: bool) {
    let scheme = if tls { Scheme::HTTPS } else { Scheme::HTTP };
    match parts.uri.scheme() {
        Some(s) if *s == scheme => return,
        // Plain origin-form: the library says `http` already.
        None if !tls => return,
        _ => {}
    }
    let mut uri = parts.uri.clone().into_parts();
    if uri.scheme.is_none() {
        let Some(host) = parts.headers.get(HOST).and_then(|h| h.to_str().ok()) else {
            return;
        };
        let Ok(authority) = host.parse::<http::uri::Authority>() else {
            return;
        };
        uri.authority = Some(authority);
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(PathAndQuery::from_static("/"));
        }
    }
    uri.scheme = Some(scheme);
    if let Ok(uri) = Uri::from_parts(uri) {
        parts.uri = uri;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(valid_request_id(&HeaderValue::from_static("abc-123_x.y:z")));
        assert!(!valid_request_id(&HeaderValue::from_static("")));
        assert!(!valid_request_id(&HeaderValue::from_static("a b")));
        assert!(!valid_request_id(
            &HeaderValue::from_str(&"a".repeat(129)).unwrap()
        ));
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(
            id.as_bytes()
                .iter()
                .all(|b| b"0123456789abcdef".contains(b))
        );
        assert!(valid_request_id(&id));
        assert_ne!(id, new_request_id());
        // Exactly the random number's hex digits, most significant first.
        fastrand::seed(7);
        let id = new_request_id();
        fastrand::seed(7);
        assert_eq!(id, format!("{:032x}", fastrand::u128(..)).as_str());
    }

    #[test]
    fn request_ids_are_never_indexed_by_http2() {
        // `h2` sends a value marked sensitive as a literal never indexed.
        assert!(new_request_id().is_sensitive());
        let sent = never_indexed(HeaderValue::from_static("abc-123"));
        assert!(sent.is_sensitive());
        assert_eq!(sent, "abc-123");
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    #[test]
    fn connection_options_go_before_our_edits() {
        let mut h = headers(&[
            ("connection", "Upgrade, X-A, close"),
            ("connection", "te, host, x-request-id"),
            ("x-a", "1"),
            ("x-request-id", "client"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("host", "h"),
            ("x-b", "2"),
        ]);
        drop_connection_options(&mut h);
        assert!(!h.contains_key("x-a") && !h.contains_key("x-request-id"));
        // The library still needs these, and handles them itself.
        assert_eq!(h["connection"], "Upgrade, te, host");
        for kept in ["upgrade", "te", "host", "x-b"] {
            assert!(h.contains_key(kept), "{kept}");
        }
        let mut h = headers(&[("connection", "x-a"), ("x-a", "1")]);
        drop_connection_options(&mut h);
        assert!(h.is_empty(), "{h:?}");
        let mut h = headers(&[("connection", "keep-alive"), ("keep-alive", "5")]);
        drop_connection_options(&mut h);
        assert!(h.is_empty(), "{h:?}");
        let mut h = headers(&[("connection", "Close"), ("close", "x"), ("x-b", "1")]);
        drop_connection_options(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-b"));
        // Case-insensitive, whether `http` knows the name or not.
        let mut h = headers(&[
            ("connection", "CLOSE, X-Custom"),
            ("close", "1"),
            ("x-custom", "2"),
            ("x-b", "3"),
        ]);
        drop_connection_options(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-b"));
        // Only what the library handles, or no field name at all: left as it was.
        for value in ["upgrade", "Upgrade, TE", "a b", "upgrade, é"] {
            let mut h = headers(&[("connection", value), ("upgrade", "websocket")]);
            drop_connection_options(&mut h);
            assert_eq!(h["connection"], value);
            assert_eq!(h.len(), 2);
        }
        // An invalid token is kept beside the valid ones that go.
        let mut h = headers(&[("connection", "a b, x-a"), ("x-a", "1")]);
        drop_connection_options(&mut h);
        assert_eq!(h["connection"], "a b");
        assert!(!h.contains_key("x-a"));
    }

    #[test]
    fn the_scheme_is_the_connection_s() {
        let scheme = |uri: &str, host: Option<&str>, tls: bool| {
            let mut req = Request::builder().uri(uri);
            if let Some(host) = host {
                req = req.header(HOST, host);
            }
            let mut parts = req.body(()).unwrap().into_parts().0;
            set_scheme(&mut parts, tls);
            parts.uri.to_string()
        };
        assert_eq!(scheme("/x", Some("h"), false), "/x");
        assert_eq!(scheme("/x", Some("h:8443"), true), "https://h:8443/x");
        assert_eq!(scheme("/x", None, true), "/x");
        assert_eq!(scheme("https://e/x", None, false), "http://e/x");
        assert_eq!(scheme("http://e/x", None, true), "https://e/x");
        assert_eq!(scheme("http://e/x?q", None, false), "http://e/x?q");
    }
}
