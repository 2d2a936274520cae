//! The pure rules behind [`Rfc9110`](super::Rfc9110): each takes headers (or a request) and
//! decides, so that every rule can be tested without a service around it.

use std::collections::HashSet;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Uri, Version};

use super::Rfc9110Config;

/// The received-by name written into `Via` when no pseudonym is configured.
pub(super) const DEFAULT_RECEIVED_BY: &str = "proxy";

/// The methods a locally answered `OPTIONS` (Max-Forwards 0) advertises.
pub(super) const ALLOW: &str = "GET, HEAD, OPTIONS, TRACE";

/// Request fields never echoed back by a locally answered `TRACE` (RFC 9110 §9.3.8: the final
/// recipient excludes fields likely to carry sensitive data).
const TRACE_REDACTED: [&str; 8] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
    "x-csrf-token",
    "x-xsrf-token",
];

// ===== impl Prepared =====

/// [`Rfc9110Config`] checked and normalised once, when the layer is built.
#[derive(Clone, Debug)]
pub(super) struct Prepared {
    /// Lower-cased host names without port or brackets; `None` when nothing is configured.
    server_names: Option<HashSet<String>>,
    /// The sanitised pseudonym, when one is configured: also the loop-detection name.
    pseudonym: Option<String>,
    combine_via: bool,
    pub(super) preserve_websocket_headers: bool,
}

impl Default for Prepared {
    fn default() -> Self {
        Prepared::new(Rfc9110Config::default())
    }
}

impl Prepared {
    pub(super) fn new(config: Rfc9110Config) -> Self {
        let server_names = config
            .server_names
            .map(|names| {
                names
                    .iter()
                    .map(|name| normalize_configured_host(name))
                    .filter(|name| !name.is_empty())
                    .collect::<HashSet<_>>()
            })
            .filter(|names| !names.is_empty());
        let pseudonym = config.pseudonym.and_then(|raw| {
            let clean = sanitize_pseudonym(&raw);
            if clean != raw {
                tracing::warn!(
                    pseudonym = %clean,
                    "Rfc9110Config::pseudonym is not a valid Via received-by token; \
                     invalid characters were replaced"
                );
            }
            (!clean.is_empty()).then_some(clean)
        });
        Prepared {
            server_names,
            pseudonym,
            combine_via: config.combine_via,
            preserve_websocket_headers: config.preserve_websocket_headers,
        }
    }

    /// The name this proxy writes as `received-by` in `Via`.
    pub(super) fn received_by(&self) -> &str {
        self.pseudonym.as_deref().unwrap_or(DEFAULT_RECEIVED_BY)
    }

    /// Whether the request has already passed through this proxy.
    pub(super) fn is_loop<B>(&self, request: &Request<B>) -> bool {
        if let Some(names) = &self.server_names
            && let Some(host) = request_host(request.uri(), request.headers())
            && names.contains(&host)
        {
            return true;
        }
        match &self.pseudonym {
            Some(pseudonym) => via_names(request.headers(), pseudonym),
            // The default name "proxy" is shared by every unconfigured proxy: matching it
            // would turn any upstream hop called "proxy" into a false loop.
            None => false,
        }
    }

    /// The `Via` value to forward with a request received over `version`.
    pub(super) fn request_via(&self, headers: &HeaderMap, version: Version) -> HeaderValue {
        let protocol = via_protocol(version);
        if self.combine_via
            && let Some(pseudonym) = &self.pseudonym
            && chain_has_single_protocol(headers, protocol)
        {
            return via_element(protocol, pseudonym);
        }
        extend_via(headers, &via_element(protocol, self.received_by()))
    }
}

/// Keep a pseudonym to the characters a `received-by` may hold (a token, or `host[:port]`),
/// replacing the others with `-`.
fn sanitize_pseudonym(raw: &str) -> String {
    raw.trim()
        .chars()
        .map(|c| {
            if is_tchar(c) || matches!(c, ':' | '[' | ']') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

// ===== loop detection =====

/// Lower-case a host, drop IPv6 brackets and a trailing root dot.
fn normalize_host(host: &str) -> String {
    let host = host.trim_end_matches('.');
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.to_ascii_lowercase()
}

/// A configured server name may carry a port (`example.com:8080`) or brackets (`[::1]`).
fn normalize_configured_host(name: &str) -> String {
    let name = name.trim();
    match name.parse::<Authority>() {
        Ok(authority) => normalize_host(authority.host()),
        // `::1` is not an authority, but it is a host.
        Err(_) => normalize_host(name),
    }
}

/// The host a request is addressed to, normalised: the absolute-form URI's host when there
/// is one (RFC 9112 §3.2.2: it wins over `Host`; HTTP/2 puts `:authority` there), otherwise
/// the `Host` header, without its port.
pub(super) fn request_host(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    if let Some(host) = uri.host() {
        return Some(normalize_host(host));
    }
    let value = headers.get(header::HOST)?.to_str().ok()?;
    let authority = value.trim().parse::<Authority>().ok()?;
    Some(normalize_host(authority.host()))
}

/// One member of a `Via` list: `received-protocol RWS received-by [RWS comment]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ViaElement<'a> {
    /// `[protocol-name "/"] protocol-version`, as written.
    pub(super) protocol: &'a [u8],
    /// The pseudonym or `host[:port]` of the intermediary.
    pub(super) received_by: &'a [u8],
}

/// Split one `Via` line into its members. Commas inside comments do not split, comments are
/// skipped, and malformed members (a lone token) come back as `None`.
pub(super) fn via_members(line: &[u8]) -> impl Iterator<Item = Option<ViaElement<'_>>> + '_ {
    split_list(line).map(|member| {
        let mut words = member
            .split(|b| *b == b' ' || *b == b'\t')
            .filter(|w| !w.is_empty());
        let protocol = words.next()?;
        // A comment glued to the name (`proxy(x)`) is not part of it.
        let received_by = words
            .next()
            .and_then(|w| w.split(|b| *b == b'(').next())
            .filter(|w| !w.is_empty())?;
        Some(ViaElement {
            protocol,
            received_by,
        })
    })
}

/// The non-empty members of a comma-separated field line, trimmed, honouring comments
/// (`(...)`, nested, with `\` quoted pairs) and quoted strings, which may contain commas.
fn split_list(line: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    let mut rest = line;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let mut depth = 0usize;
            let mut quoted = false;
            let mut escaped = false;
            let mut end = rest.len();
            for (i, &b) in rest.iter().enumerate() {
                if escaped {
                    escaped = false;
                    continue;
                }
                match b {
                    b'\\' if depth > 0 || quoted => escaped = true,
                    b'"' if depth == 0 => quoted = !quoted,
                    b'(' if !quoted => depth += 1,
                    b')' if !quoted && depth > 0 => depth -= 1,
                    b',' if depth == 0 && !quoted => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
            }
            let member = trim_ows(&rest[..end]);
            rest = rest.get(end + 1..).unwrap_or_default();
            if !member.is_empty() {
                return Some(member);
            }
        }
    })
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', tail @ ..] = s {
        s = tail;
    }
    while let [head @ .., b' ' | b'\t'] = s {
        s = head;
    }
    s
}

/// Whether any `Via` member, on any line, was received by `name` (case-insensitive).
pub(super) fn via_names(headers: &HeaderMap, name: &str) -> bool {
    headers.get_all(header::VIA).iter().any(|line| {
        via_members(line.as_bytes())
            .flatten()
            .any(|element| element.received_by.eq_ignore_ascii_case(name.as_bytes()))
    })
}

// ===== Via =====

/// The `received-protocol` for a message received over `version` (RFC 9110 §7.6.3: the
/// protocol name is omitted for HTTP; HTTP/2 and HTTP/3 are written `2` and `3`).
pub(super) fn via_protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// `received-protocol` without an `HTTP/` prefix, with `2.0`/`3.0` spelled `2`/`3`; `None`
/// for another protocol.
fn http_protocol_version(protocol: &[u8]) -> Option<&[u8]> {
    let version = match protocol.iter().position(|b| *b == b'/') {
        Some(slash) => {
            if !protocol[..slash].eq_ignore_ascii_case(b"HTTP") {
                return None;
            }
            &protocol[slash + 1..]
        }
        None => protocol,
    };
    Some(match version {
        b"2.0" => b"2",
        b"3.0" => b"3",
        other => other,
    })
}

/// Every existing `Via` member (at least one) is well formed and has `protocol`.
pub(super) fn chain_has_single_protocol(headers: &HeaderMap, protocol: &str) -> bool {
    let mut seen = false;
    for line in headers.get_all(header::VIA) {
        for member in via_members(line.as_bytes()) {
            let Some(element) = member else { return false };
            if http_protocol_version(element.protocol) != Some(protocol.as_bytes()) {
                return false;
            }
            seen = true;
        }
    }
    seen
}

/// `<protocol> <received_by>`; both parts were validated, so this cannot fail, but a bad
/// value degrades to the protocol alone rather than panicking.
pub(super) fn via_element(protocol: &str, received_by: &str) -> HeaderValue {
    let mut buf = BytesMut::with_capacity(protocol.len() + 1 + received_by.len());
    buf.put_slice(protocol.as_bytes());
    buf.put_u8(b' ');
    buf.put_slice(received_by.as_bytes());
    HeaderValue::from_maybe_shared(buf.freeze())
        .unwrap_or_else(|_| HeaderValue::from_static("1.1 proxy"))
}

/// The existing `Via` lines of `headers` joined into one list, with `ours` appended.
pub(super) fn extend_via(headers: &HeaderMap, ours: &HeaderValue) -> HeaderValue {
    let existing: Vec<&[u8]> = headers
        .get_all(header::VIA)
        .iter()
        .map(|line| trim_ows(line.as_bytes()))
        .filter(|line| !line.is_empty())
        .collect();
    if existing.is_empty() {
        return ours.clone();
    }
    let len = existing.iter().map(|line| line.len() + 2).sum::<usize>() + ours.len();
    let mut buf = BytesMut::with_capacity(len);
    for line in existing {
        buf.put_slice(line);
        buf.put_slice(b", ");
    }
    buf.put_slice(ours.as_bytes());
    // Every byte came from a valid header value or from `", "`, so this holds.
    HeaderValue::from_maybe_shared(buf.freeze()).unwrap_or_else(|_| ours.clone())
}

// ===== Max-Forwards =====

/// What a request's `Max-Forwards` asks of this proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MaxForwards {
    /// Not TRACE/OPTIONS, no header, or a value that is not a `u32`: leave it alone.
    Ignore,
    /// Zero: this proxy is the final recipient and answers itself.
    Answer,
    /// Forward with this (decremented) value.
    Forward(u32),
}

/// RFC 9110 §7.6.2: only TRACE and OPTIONS honour `Max-Forwards`.
pub(super) fn max_forwards(method: &Method, headers: &HeaderMap) -> MaxForwards {
    if method != Method::TRACE && method != Method::OPTIONS {
        return MaxForwards::Ignore;
    }
    let Some(value) = headers.get(header::MAX_FORWARDS) else {
        return MaxForwards::Ignore;
    };
    let digits = trim_ows(value.as_bytes());
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return MaxForwards::Ignore;
    }
    // All ASCII digits, so `from_utf8` holds; an overflow is "not a u32".
    match std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
    {
        Some(0) => MaxForwards::Answer,
        Some(n) => MaxForwards::Forward(n - 1),
        None => MaxForwards::Ignore,
    }
}

/// The local answer to `TRACE` with `Max-Forwards: 0`: the request as received, in
/// HTTP/1.1 wire form, as `message/http`, with credentials left out.
pub(super) fn trace_response<B>(request: &Request<B>) -> Response<axum::body::Body> {
    let body = trace_echo(request);
    let length = HeaderValue::from(body.len());
    let mut response = Response::new(axum::body::Body::from(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("message/http"),
    );
    headers.insert(header::CONTENT_LENGTH, length);
    response
}

/// The bytes of the `TRACE` echo.
pub(super) fn trace_echo<B>(request: &Request<B>) -> Bytes {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_slice(request.method().as_str().as_bytes());
    buf.put_u8(b' ');
    let uri = request.uri();
    if uri.authority().is_some() {
        buf.put_slice(uri.to_string().as_bytes());
    } else {
        let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
        buf.put_slice(target.as_bytes());
    }
    buf.put_slice(match request.version() {
        Version::HTTP_09 => b" HTTP/0.9\r\n",
        Version::HTTP_10 => b" HTTP/1.0\r\n",
        Version::HTTP_2 => b" HTTP/2.0\r\n",
        Version::HTTP_3 => b" HTTP/3.0\r\n",
        _ => b" HTTP/1.1\r\n",
    });
    let headers = request.headers();
    // HTTP/2 carries the host in `:authority`; an HTTP/1.1 message needs `Host`.
    if !headers.contains_key(header::HOST)
        && let Some(authority) = uri.authority()
    {
        buf.put_slice(b"host: ");
        buf.put_slice(authority.as_str().as_bytes());
        buf.put_slice(b"\r\n");
    }
    for (name, value) in headers {
        if TRACE_REDACTED.contains(&name.as_str()) {
            continue;
        }
        buf.put_slice(name.as_str().as_bytes());
        buf.put_slice(b": ");
        buf.put_slice(value.as_bytes());
        buf.put_slice(b"\r\n");
    }
    buf.put_slice(b"\r\n");
    buf.freeze()
}

/// The local answer to `OPTIONS` with `Max-Forwards: 0`.
pub(super) fn options_response() -> Response<axum::body::Body> {
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::ALLOW, HeaderValue::from_static(ALLOW));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

// ===== hop-by-hop =====

/// The fields that only ever describe one connection (RFC 9110 §7.6.1, plus the legacy
/// `Keep-Alive`/`Proxy-Connection` and the proxy authentication pair).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Each token of every `Connection` line, as a header name (invalid names are skipped).
pub(super) fn connection_options(headers: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    headers.get_all(header::CONNECTION).iter().flat_map(|line| {
        line.as_bytes()
            .split(|b| *b == b',')
            .map(trim_ows)
            .filter_map(|token| HeaderName::from_bytes(token).ok())
    })
}

/// Whether some `Connection` line carries `token` (case-insensitive).
pub(super) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|line| {
        line.as_bytes()
            .split(|b| *b == b',')
            .any(|t| trim_ows(t).eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// `TE` is present and every member of every line is `trailers`.
fn te_is_only_trailers(headers: &HeaderMap) -> bool {
    let mut seen = false;
    for line in headers.get_all(header::TE) {
        for member in line.as_bytes().split(|b| *b == b',').map(trim_ows) {
            if member.is_empty() {
                continue;
            }
            if !member.eq_ignore_ascii_case(b"trailers") {
                return false;
            }
            seen = true;
        }
    }
    seen
}

/// A request asking to switch protocols: it has `Upgrade`, and `Connection: upgrade` or the
/// WebSocket handshake fields (`Sec-WebSocket-Key` and `Sec-WebSocket-Version`).
pub(super) fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && (connection_has(headers, "upgrade")
            || (headers.contains_key(header::SEC_WEBSOCKET_KEY)
                && headers.contains_key(header::SEC_WEBSOCKET_VERSION)))
}

/// Remove the hop-by-hop fields and every field named in `Connection`.
///
/// `TE: trailers` survives when it is the only value (even when `Connection` names `TE`, as
/// RFC 9110 §10.1.4 requires of its senders). With `keep_upgrade`, the `Upgrade` lines
/// survive and `Connection` is rewritten to just `upgrade`.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let keep_te = te_is_only_trailers(headers);
    let upgrade: Vec<HeaderValue> = if keep_upgrade {
        headers.get_all(header::UPGRADE).iter().cloned().collect()
    } else {
        Vec::new()
    };
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = connection_options(headers).collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if keep_te {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if !upgrade.is_empty() {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        for value in upgrade {
            headers.append(header::UPGRADE, value);
        }
    }
}
