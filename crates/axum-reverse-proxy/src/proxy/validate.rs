//! Checks on a request before it is forwarded: framing the proxy could not pass on
//! unambiguously, and the request target and `Host` (RFC 9112 §3.2 and §6, RFC 9110
//! §7.2).
//!
//! hyper's servers already refuse most malformed messages. Its HTTP/1 parser answers 400
//! and closes the connection for: an invalid or conflicting `Content-Length` (`+5`,
//! `0x5`, `1, 2`, beyond `u64`); a `Transfer-Encoding` whose last coding is not
//! `chunked`, or any `Transfer-Encoding` in HTTP/1.0; obs-fold; whitespace before the
//! colon; a bare CR; CTLs in a field value; an invalid method or version. A message with
//! both `Content-Length` and `Transfer-Encoding: chunked` is read as chunked, its
//! `Content-Length` dropped, and the connection closed after the response. Bare LF line
//! ends in the head are read as CRLF (RFC 9112 §2.2 allows it; the proxy writes CRLF).
//! Malformed chunked bodies (bad sizes, CR or LF inside an extension, bare LF) fail the
//! body: the proxy then aborts the upstream request, which never ends, and answers 400.
//! Its HTTP/2 server (the `h2` crate) resets streams that carry connection-specific
//! fields, `te` other than `trailers`, or CR, LF or NUL in a value.
//!
//! What they let through, and this module refuses:
//!
//! | request | answer |
//! |---|---|
//! | `Transfer-Encoding` with a coding other than `chunked` (`gzip, chunked`) | 501 |
//! | `chunked` more than once (`chunked, chunked`, or on two lines) | 400 |
//! | `Transfer-Encoding` not ending in `chunked`, or in HTTP/1.0 (in-process requests) | 400 |
//! | `Content-Length` other than one number (in-process requests) | 400 |
//! | a field named like a framing field with `_` for `-` (`Content_Length`), which some servers read as the real one | 400 |
//! | two `Host` lines, or a `Host` that is not `host[:port]` | 400 |
//! | a target with a scheme other than `http`/`https`, or with userinfo | 400 |
//! | authority-form (`GET host:80`) other than for `CONNECT`, asterisk-form (`*`) other than for `OPTIONS` | 400 |
//! | HTTP/2: `Host` naming another authority than `:authority` | 400 |
//! | HTTP/1.1 without `Host` (only [`validate_request`]; see below) | 400 |
//!
//! And normalises: the authority of an absolute-form target replaces `Host` (RFC 9112
//! §3.2.2), so that routing, `X-Forwarded-Host` and a preserved `Host` all see one
//! authority (the upstream is always the configured target, never the one named); an
//! empty `Host` counts as none; a `Content-Length` beside `Transfer-Encoding` is
//! dropped; equal `Content-Length` values become one.
//!
//! The proxy applies all of this to every request except the `Host` requirement: code
//! that calls a proxy in-process often builds requests without `Host`, and the proxy
//! sends the target's anyway. A server should require it: call [`validate_request`]
//! before routing, as the `axum-reverse-proxy` server does.
//!
//! The scheme of an absolute-form target is all the proxy knows of the client's
//! connection: `GET https://host/ HTTP/1.1` on a plain connection gets
//! `X-Forwarded-Proto: https`. Pin it with
//! [`ProxyPolicy::with_public_scheme`](crate::ProxyPolicy::with_public_scheme), or have
//! the server set the URI's scheme from its connection (the bundled server does).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::Scheme;
use http::{Method, Version};

use crate::error::{Kind, ProxyError};

/// Check a request as a server must before acting on it, and normalise what can be (see
/// the [module docs](self) for the rules): refuse ambiguous or unsupported framing, a
/// missing, repeated or invalid `Host`, and request targets the proxy does not serve;
/// let the authority of an absolute-form target replace `Host`.
///
/// Every proxy runs these checks itself, except that it accepts an HTTP/1.1 request
/// without `Host` (requests built in-process rarely have one). A server in front of the
/// proxy should call this first, and answer the error
/// ([`ProxyError::into_response`], 400 or 501) with `Connection: close`:
///
/// ```
/// use axum::{Router, extract::Request, middleware, response::{IntoResponse, Response}};
/// use axum_reverse_proxy::{ReverseProxy, validate_request};
///
/// async fn strict(req: Request) -> Result<Request, Response> {
///     let (mut parts, body) = req.into_parts();
///     match validate_request(&mut parts) {
///         Ok(()) => Ok(Request::from_parts(parts, body)),
///         Err(err) => Err(([(http::header::CONNECTION, "close")], err.into_response())
///             .into_response()),
///     }
/// }
///
/// let app: Router = Router::from(ReverseProxy::new("/", "http://127.0.0.1:3000"))
///     .layer(middleware::map_request(strict));
/// ```
pub fn validate_request(parts: &mut Parts) -> Result<(), ProxyError> {
    check(parts, true)
}

/// [`validate_request`], with the `Host` requirement only when `require_host`.
pub(crate) fn check(parts: &mut Parts, require_host: bool) -> Result<(), ProxyError> {
    framing(&mut parts.headers, parts.version)?;
    target(parts, require_host)
}

fn bad(why: &'static str) -> ProxyError {
    ProxyError::with_cause(Kind::BadRequest, why)
}

// ===== Framing =====

fn framing(headers: &mut HeaderMap, version: Version) -> Result<(), ProxyError> {
    // One pass over the names instead of a lookup per framing field: most requests
    // carry neither, and a pass over a handful of names is cheaper than two hashes.
    let (mut chunked_or_coded, mut length) = (false, false);
    for name in headers.keys() {
        if name == header::TRANSFER_ENCODING {
            chunked_or_coded = true;
        } else if name == header::CONTENT_LENGTH {
            length = true;
        } else if imitates_framing(name) {
            return Err(bad(
                "a field name imitates Content-Length or Transfer-Encoding",
            ));
        }
    }
    if chunked_or_coded {
        transfer_codings(headers, version)?;
        // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length.
        if length {
            headers.remove(header::CONTENT_LENGTH);
        }
    } else if length {
        content_length(headers)?;
    }
    Ok(())
}

/// `content_length` or `transfer_encoding`, with `_` for some `-`.
fn imitates_framing(name: &HeaderName) -> bool {
    let name = name.as_str().as_bytes();
    let like = |real: &[u8]| {
        name.len() == real.len()
            && name.contains(&b'_')
            && name
                .iter()
                .zip(real)
                .all(|(&n, &r)| n == r || (n == b'_' && r == b'-'))
    };
    like(b"content-length") || like(b"transfer-encoding")
}

/// RFC 9112 §6.1: `chunked` once and last; any other coding is not implemented.
fn transfer_codings(headers: &HeaderMap, version: Version) -> Result<(), ProxyError> {
    if version < Version::HTTP_11 {
        return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
    }
    let (mut chunked, mut other, mut last_chunked) = (0, false, false);
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let value = value
            .to_str()
            .map_err(|_| bad("Transfer-Encoding is not ASCII"))?;
        for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            last_chunked = coding.eq_ignore_ascii_case("chunked");
            if last_chunked {
                chunked += 1;
            } else {
                other = true;
            }
        }
    }
    if !last_chunked {
        return Err(bad("Transfer-Encoding does not end in chunked"));
    }
    if chunked > 1 {
        return Err(bad("chunked applied more than once"));
    }
    if other {
        return Err(ProxyError::with_cause(
            Kind::NotImplemented,
            "a transfer coding other than chunked",
        ));
    }
    Ok(())
}

/// RFC 9110 §8.6: one decimal number (equal repeated values are tolerated, and merged).
fn content_length(headers: &mut HeaderMap) -> Result<(), ProxyError> {
    let (mut length, mut values) = (None, 0);
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for element in value.as_bytes().split(|&b| b == b',') {
            let n = decimal(element.trim_ascii()).ok_or_else(|| bad("invalid Content-Length"))?;
            if length.is_some_and(|len| len != n) {
                return Err(bad("conflicting Content-Length values"));
            }
            length = Some(n);
            values += 1;
        }
    }
    if values > 1
        && let Some(n) = length
    {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(())
}

/// `1*DIGIT` as a `u64` (no sign, no spaces, no overflow).
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

// ===== Target and Host =====

fn target(parts: &mut Parts, require_host: bool) -> Result<(), ProxyError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(bad("more than one Host"));
    }
    let has_host = host.is_some();
    let host = host.filter(|h| !h.is_empty());
    if host.as_ref().is_some_and(|h| !valid_host(h.as_bytes())) {
        return Err(bad("invalid Host"));
    }
    let http1 = parts.version < Version::HTTP_2;
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is refused, whatever its target.
    if require_host && parts.version == Version::HTTP_11 && !has_host {
        return Err(bad("HTTP/1.1 request without Host"));
    }
    match parts.uri.authority() {
        // Authority-form belongs to CONNECT, which the proxy answers itself.
        Some(_) if parts.method == Method::CONNECT => {}
        Some(authority) => {
            match parts.uri.scheme() {
                Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => {}
                Some(_) => return Err(bad("request target scheme other than http or https")),
                None => return Err(bad("authority-form request target without CONNECT")),
            }
            if authority.as_str().contains('@') {
                return Err(bad("userinfo in the request target"));
            }
            if http1 {
                // RFC 9112 §3.2.2: the target's authority replaces Host.
                let value = HeaderValue::from_str(authority.as_str())
                    .map_err(|_| bad("invalid request target authority"))?;
                parts.headers.insert(header::HOST, value);
                return Ok(());
            }
            // RFC 9113 §8.3.1: Host and :authority must name the same.
            if host.as_ref().is_some_and(|h| {
                !h.as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes())
            }) {
                return Err(bad("Host differs from :authority"));
            }
        }
        None if parts.uri.path() == "*" && parts.method != Method::OPTIONS => {
            return Err(bad("asterisk-form request target without OPTIONS"));
        }
        None => {}
    }
    if has_host && host.is_none() {
        // An empty Host says there is no authority: the same as none.
        parts.headers.remove(header::HOST);
    }
    Ok(())
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2): an IP literal in brackets
/// or a reg-name, no userinfo; the port all digits.
fn valid_host(value: &[u8]) -> bool {
    let (host, port) = if let Some(literal) = value.strip_prefix(b"[") {
        let Some(end) = literal.iter().position(|&b| b == b']') else {
            return false;
        };
        let ip = &literal[..end];
        if ip.is_empty()
            || !ip
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match &literal[end + 1..] {
            [] => (&b"x"[..], None),
            [b':', port @ ..] => (&b"x"[..], Some(port)),
            _ => return false,
        }
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        }
    };
    !host.is_empty() && reg_name(host) && port.is_none_or(|p| p.iter().all(u8::is_ascii_digit))
}

/// RFC 3986 reg-name: unreserved, pct-encoded and sub-delims.
fn reg_name(host: &[u8]) -> bool {
    let mut bytes = host.iter().enumerate();
    while let Some((i, &b)) = bytes.next() {
        if REG_NAME[usize::from(b)] {
            continue;
        }
        if b != b'%' {
            return false;
        }
        let hex = host.get(i + 1..i + 3);
        if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
            return false;
        }
        bytes.nth(1);
    }
    true
}

/// The bytes a reg-name takes as themselves: unreserved and sub-delims (`%` starts a
/// pct-encoding and is checked apart). A table, as `Host` is checked on every request.
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let others = b"-._~!$&'()*+,;=";
    let mut i = 0;
    while i < others.len() {
        table[others[i] as usize] = true;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests;
