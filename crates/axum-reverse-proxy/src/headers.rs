//! Header rules: hop-by-hop stripping, forwarding headers (`X-Forwarded-*`, `Forwarded`)
//! and `Via`.
//!
//! All functions here are pure edits of a [`HeaderMap`]; the proxy calls them on the way
//! up (request) and on the way down (response).
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection and must not be
//! forwarded: `Connection` and every header it names, `Keep-Alive`, `Proxy-Connection`,
//! `TE` (except `TE: trailers`, which gRPC needs end to end), `Transfer-Encoding` (and a
//! `Content-Length` beside it, which it overrides), `Upgrade` (except on an upgrade,
//! which the proxy carries through), and the proxy's own `Proxy-Authorization` /
//! `Proxy-Authenticate`.
//!
//! `Trailer` is kept. RFC 2616 listed it as hop-by-hop, but RFC 9110 (§6.6.2, §7.6.1)
//! makes it an end-to-end declaration of the trailer fields that follow the body, and
//! hyper's HTTP/1 encoder sends only the trailer fields it declares: stripping it would
//! silently drop every trailer on an HTTP/1 hop. (A `Trailer` named in `Connection` is
//! still removed, as any connection option is.)

use std::net::IpAddr;

use bytes::Bytes;
use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const FORWARDED: HeaderName = header::FORWARDED;

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHORIZATION
        || name == header::PROXY_AUTHENTICATE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// The comma-separated tokens of every line of a header, trimmed.
pub(crate) fn tokens<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether a header carries `token` in its comma list (case-insensitive).
pub(crate) fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

// Used by the upgrade path (landing next); the unit tests pin its rules meanwhile.
#[allow(dead_code)]
/// An HTTP/1.1 upgrade request (RFC 9110 §7.8): `Upgrade` present and `Connection`
/// naming `upgrade` anywhere in its list.
pub(crate) fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && has_token(headers, &header::CONNECTION, "upgrade")
}

/// Whether every transfer coding of the message is `chunked` (or it has none).
pub(crate) fn only_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .all(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(',')
                    .map(str::trim)
                    .all(|t| t.is_empty() || t.eq_ignore_ascii_case("chunked"))
            })
        })
}

/// Remove hop-by-hop headers. With `keep_upgrade`, `Upgrade` survives and `Connection`
/// is reduced to `upgrade`, as an upgrade handshake needs.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Fast path: most messages carry none of these.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        // From the raw bytes: a line with obs-text (not `to_str`) still names headers.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|line| line.as_bytes().split(|b| *b == b','))
            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
            .collect();
        for name in named {
            if keep_upgrade && name == header::UPGRADE {
                continue;
            }
            // `Connection: te` must not take `TE: trailers` away: TE is handled below.
            if name == header::TE {
                continue;
            }
            headers.remove(&name);
        }
        headers.remove(header::CONNECTION);
    }
    if headers.contains_key(header::TE) {
        let trailers = has_token(headers, &header::TE, "trailers");
        headers.remove(header::TE);
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    if headers.remove(header::TRANSFER_ENCODING).is_some() {
        // RFC 9112 §6.3: beside Transfer-Encoding, Content-Length means nothing, and an
        // intermediary must remove it before forwarding; left alone it would frame the
        // message the proxy re-encodes.
        headers.remove(header::CONTENT_LENGTH);
    }
    headers.remove(header::PROXY_AUTHORIZATION);
    headers.remove(header::PROXY_AUTHENTICATE);
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// The protocol-version token of a `Via` element (RFC 9110 §7.6.3).
pub(crate) fn via_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Whether any `Via` element was received by `pseudonym`: the request has looped.
pub(crate) fn via_has_pseudonym(headers: &HeaderMap, pseudonym: &str) -> bool {
    tokens(headers, &header::VIA).any(|element| {
        element
            .split_ascii_whitespace()
            .nth(1)
            .is_some_and(|by| by.eq_ignore_ascii_case(pseudonym))
    })
}

/// Append `<version> <pseudonym>` to the `Via` chain, keeping what is there.
pub(crate) fn append_via(headers: &mut HeaderMap, version: Version, pseudonym: &str) {
    let ours = format!("{} {}", via_version(version), pseudonym);
    append_list(headers, header::VIA, &ours);
}

/// Append `item` to a comma-separated header, folding existing lines into one.
fn append_list(headers: &mut HeaderMap, name: HeaderName, item: &str) {
    let mut value = String::new();
    for existing in headers.get_all(&name).iter() {
        if let Ok(s) = existing.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                value.push_str(s);
                value.push_str(", ");
            }
        }
    }
    value.push_str(item);
    insert_text(headers, name, value);
}

/// A bit of its own for each of the four forwarding headers; 0 for any other name.
fn forwarding_bit(name: &HeaderName) -> u8 {
    if *name == FORWARDED {
        1
    } else if *name == X_FORWARDED_FOR {
        2
    } else if *name == X_FORWARDED_HOST {
        4
    } else if *name == X_FORWARDED_PROTO {
        8
    } else {
        0
    }
}

/// Insert `text` as the value of `name` without copying it (invalid text is dropped).
fn insert_text(headers: &mut HeaderMap, name: HeaderName, text: String) {
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(text)) {
        headers.insert(name, value);
    }
}

/// A dotted-quad IPv4 address written into `buf`: what `Display` writes, without the
/// formatting machinery (four integer formats per address, twice per request).
fn ipv4_text(ip: std::net::Ipv4Addr, buf: &mut [u8; 15]) -> &str {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        let mut put = |byte: u8| {
            if let Some(slot) = buf.get_mut(len) {
                *slot = byte;
                len += 1;
            }
        };
        if i > 0 {
            put(b'.');
        }
        if octet >= 100 {
            put(b'0' + octet / 100);
        }
        if octet >= 10 {
            put(b'0' + octet / 10 % 10);
        }
        put(b'0' + octet % 10);
    }
    std::str::from_utf8(buf.get(..len).unwrap_or_default()).unwrap_or_default()
}

/// What the proxy knows about the client connection, for forwarding headers.
pub(crate) struct ClientInfo<'a> {
    /// The peer address, when the server recorded it (`ConnectInfo`).
    pub(crate) peer: Option<IpAddr>,
    /// The host the client asked for (`Host`, or HTTP/2 `:authority`).
    pub(crate) host: Option<&'a HeaderValue>,
    /// The scheme the client used to reach us.
    pub(crate) proto: &'a str,
}

/// Rewrite forwarding headers per the policy.
///
/// `trusted`: keep what the client sent and append; otherwise drop and rebuild.
/// `x_forwarded`: add the `X-Forwarded-*` family (needs a known peer).
/// `forwarded`: add an RFC 7239 element (needs a known peer).
pub(crate) fn apply_forwarding(
    headers: &mut HeaderMap,
    info: &ClientInfo<'_>,
    trusted: bool,
    x_forwarded: bool,
    forwarded: bool,
) {
    // Which of the four the client sent, in one pass over the names rather than a hashed
    // lookup of each (most requests carry none of them).
    let mut sent = headers
        .keys()
        .fold(0u8, |sent, name| sent | forwarding_bit(name));
    if !trusted && sent != 0 {
        headers.remove(X_FORWARDED_FOR);
        headers.remove(X_FORWARDED_HOST);
        headers.remove(X_FORWARDED_PROTO);
        headers.remove(FORWARDED);
        sent = 0;
    }
    let present = |name: &HeaderName| sent & forwarding_bit(name) != 0;
    let Some(peer) = info.peer else { return };
    let mut v4_buf = [0u8; 15];
    let v6_text;
    let ip = match peer {
        IpAddr::V4(v4) => ipv4_text(v4, &mut v4_buf),
        IpAddr::V6(v6) => {
            v6_text = v6.to_string();
            v6_text.as_str()
        }
    };
    if x_forwarded {
        if present(&X_FORWARDED_FOR) {
            append_list(headers, X_FORWARDED_FOR, ip);
        } else if let Ok(value) = HeaderValue::from_str(ip) {
            headers.insert(X_FORWARDED_FOR, value);
        }
        if let Some(host) = info.host
            && !present(&X_FORWARDED_HOST)
        {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
        if !present(&X_FORWARDED_PROTO) {
            let proto = match info.proto {
                "http" => Ok(HeaderValue::from_static("http")),
                "https" => Ok(HeaderValue::from_static("https")),
                other => HeaderValue::from_str(other),
            };
            if let Ok(proto) = proto {
                headers.insert(X_FORWARDED_PROTO, proto);
            }
        }
    }
    if forwarded {
        let host = info.host.and_then(|h| h.to_str().ok());
        let mut element = String::with_capacity(32 + host.map_or(0, str::len));
        match peer {
            IpAddr::V4(_) => {
                element.push_str("for=");
                element.push_str(ip);
            }
            IpAddr::V6(_) => {
                element.push_str("for=\"[");
                element.push_str(ip);
                element.push_str("]\"");
            }
        }
        if let Some(host) = host {
            element.push_str(";host=\"");
            if host.contains(['"', '\\']) {
                for c in host.chars() {
                    if c == '"' || c == '\\' {
                        element.push('\\');
                    }
                    element.push(c);
                }
            } else {
                element.push_str(host);
            }
            element.push('"');
        }
        element.push_str(";proto=");
        element.push_str(info.proto);
        if present(&FORWARDED) {
            append_list(headers, FORWARDED, &element);
        } else {
            insert_text(headers, FORWARDED, element);
        }
    }
}

#[cfg(test)]
mod tests;
