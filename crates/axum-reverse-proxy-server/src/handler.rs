//! The path of one request: request id, route lookup, header rules, the pool's service,
//! metrics and the access log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum_reverse_proxy::TunnelGuard;
use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use tower::ServiceExt;
use tracing::Instrument;

use crate::access_log::{Counted, Entry, Logged};
use crate::config::HeaderRules;
use crate::listener::http::ConnSlot;
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
    pub(crate) activity: Arc<Activity>,
    /// Held by the connection, and by the tunnel of an upgrade made on it.
    pub(crate) slot: Arc<ConnSlot>,
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
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
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

fn new_request_id() -> HeaderValue {
    let id = format!("{:032x}", fastrand::u128(..));
    HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Serve one request from a client connection.
pub(crate) async fn handle<B>(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<B>,
) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let start = Instant::now();
    let time = SystemTime::now();
    let in_flight = InFlight::new(conn.activity.clone());
    let (mut parts, body) = req.into_parts();

    let request_id = match parts.headers.get(&REQUEST_ID) {
        Some(v) if valid_request_id(v) => v.clone(),
        _ => new_request_id(),
    };
    parts.headers.insert(REQUEST_ID.clone(), request_id.clone());
    let bytes_in = Arc::new(AtomicU64::new(0));
    // Written with status 499 if the client goes away before the response is ready;
    // taken back below when it is.
    let mut unanswered = Unanswered {
        shared: Arc::clone(&shared),
        entry: None,
    };
    let pending = unanswered.entry.insert(Entry {
        time,
        start,
        request_id: request_id.to_str().unwrap_or("-").to_owned(),
        client: conn.peer,
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        status: CLIENT_CLOSED_REQUEST,
        // Set once the route is known (before anything can be awaited).
        route: String::new(),
        upstream: String::new(),
        bytes_in: bytes_in.clone(),
        bytes_out: 0,
    });

    if conn.tls && parts.uri.scheme().is_none() {
        mark_https(&mut parts);
    }

    let snapshot = shared.active.load_full();
    let host = parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()));
    let found = snapshot
        .tables
        .get(&*conn.listener)
        .and_then(|t| t.find(host, &pending.path))
        .map(|(_, route)| route.clone());

    let mut response = match found {
        None => {
            pending.route = "none".to_owned();
            pending.upstream = "none".to_owned();
            let mut resp = Response::new(Body::from("no route for this host and path\n"));
            *resp.status_mut() = StatusCode::NOT_FOUND;
            resp
        }
        Some(route) => {
            if route.strip_prefix {
                let stripped = strip(&route.prefix, &pending.path);
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
            parts.extensions.insert(ConnectInfo(conn.peer));
            parts.extensions.insert(Attempts::default());
            if may_upgrade(&parts) {
                // An upgraded connection leaves hyper, which lets go of the connection's
                // slot: the tunnel holds it instead until it closes.
                parts.extensions.insert(TunnelGuard::new(conn.slot.clone()));
            }
            let body = Body::new(Counted {
                inner: body,
                count: bytes_in.clone(),
            });
            let req = Request::from_parts(parts, body);
            let span = tracing::info_span!(
                "request",
                id = %pending.request_id,
                method = %pending.method,
                path = %pending.path,
                route = %route.name,
            );
            pending.route = route.name.clone();
            pending.upstream = route.pool.clone();
            let Ok(mut resp) = route.service.clone().oneshot(req).instrument(span).await;
            route.response_headers.apply(resp.headers_mut());
            resp
        }
    };
    let Some(mut entry) = unanswered.entry.take() else {
        // Not reachable: the entry is taken only here.
        return response;
    };
    entry.status = response.status().as_u16();
    shared.metrics.record(
        &entry.route,
        &entry.upstream,
        entry.status,
        start.elapsed().as_secs_f64(),
    );
    response
        .headers_mut()
        .insert(REQUEST_ID.clone(), request_id);
    response.map(|body| Logged::wrap(body, entry, shared.access_log.clone(), in_flight))
}

/// nginx's status for a request whose client closed the connection before the answer.
const CLIENT_CLOSED_REQUEST: u16 = 499;

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
            let seconds = entry.start.elapsed().as_secs_f64();
            self.shared
                .metrics
                .record(&entry.route, &entry.upstream, entry.status, seconds);
            self.shared.access_log.write(&entry);
        }
    }
}

/// Whether the request asks for an upgrade (HTTP/1.1 `Upgrade`, or an HTTP/2 CONNECT);
/// the proxy decides whether it really is one.
fn may_upgrade(parts: &http::request::Parts) -> bool {
    parts.method == http::Method::CONNECT || parts.headers.contains_key(http::header::UPGRADE)
}

/// Give an origin-form request on a TLS connection the `https` scheme (and its Host as
/// authority), so that `X-Forwarded-Proto` and `Forwarded: proto=` say `https`.
fn mark_https(parts: &mut http::request::Parts) {
    let Some(host) = parts.headers.get(HOST).and_then(|h| h.to_str().ok()) else {
        return;
    };
    let Ok(authority) = host.parse::<http::uri::Authority>() else {
        return;
    };
    let mut uri = parts.uri.clone().into_parts();
    uri.scheme = Some(http::uri::Scheme::HTTPS);
    uri.authority = Some(authority);
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(PathAndQuery::from_static("/"));
    }
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
        assert_eq!(new_request_id().len(), 32);
    }
}
