//! The handshake: the request the upstream receives, the checks its 101 must pass, and
//! the answer the client gets.

use std::fmt;

use axum::body::Body;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, Version, request, response};
use sha1::{Digest, Sha1};

use super::detect::{
    Mode, Offer, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, extension_names,
};
use crate::headers;

/// The GUID RFC 6455 §1.3 appends to the key before hashing.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: base64(SHA-1(key + GUID)).
pub(crate) fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(WEBSOCKET_GUID);
    BASE64.encode(sha1.finalize())
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64 (RFC 6455 §4.1).
fn new_key() -> HeaderValue {
    let nonce: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    // base64 output is always a valid header value; the fallback is never used.
    HeaderValue::try_from(BASE64.encode(nonce))
        .unwrap_or(HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}

/// Turn the (already hop-by-hop-stripped) client request into the upstream handshake.
///
/// HTTP/1.1: `Upgrade` (without `h2c`) and `Connection: upgrade` go up as offered.
/// Extended CONNECT: the request becomes `GET` with `Upgrade: websocket`,
/// `Connection: upgrade` and a key of our own, which `offer` remembers for the check.
pub(crate) fn prepare_request(offer: &mut Offer, parts: &mut request::Parts) {
    match offer.mode {
        Mode::Http1 => {
            if offer.rewrite_upgrade
                && let Ok(value) = HeaderValue::try_from(offer.protocols.join(", "))
            {
                parts.headers.insert(header::UPGRADE, value);
            }
        }
        Mode::ExtendedConnect => {
            parts.method = Method::GET;
            parts
                .headers
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            let key = new_key();
            parts.headers.insert(SEC_WEBSOCKET_KEY, key.clone());
            if let Some(ws) = &mut offer.websocket {
                ws.key = Some(key);
            }
        }
    }
}

/// Why an upstream's 101 was refused (answered 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// The 101 names no protocol in `Upgrade`.
    NoUpgrade,
    /// The 101 switched to a protocol the client did not offer.
    UnofferedProtocol,
    /// A WebSocket 101 to a request without `Sec-WebSocket-Key`.
    NoKey,
    /// `Sec-WebSocket-Accept` is missing or does not match the key.
    BadAccept,
    /// `Sec-WebSocket-Protocol` names several, or one the client did not offer.
    UnofferedSubprotocol,
    /// `Sec-WebSocket-Extensions` names one the client did not offer.
    UnofferedExtension,
    /// The upstream accepted an extended CONNECT with a 2xx instead of switching.
    NotSwitched,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invalid::NoUpgrade => "the upstream's 101 has no Upgrade header",
            Invalid::UnofferedProtocol => "the upstream switched to a protocol nobody offered",
            Invalid::NoKey => "WebSocket 101 to a request without Sec-WebSocket-Key",
            Invalid::BadAccept => "Sec-WebSocket-Accept is missing or wrong",
            Invalid::UnofferedSubprotocol => "the upstream chose a subprotocol nobody offered",
            Invalid::UnofferedExtension => "the upstream chose an extension nobody offered",
            Invalid::NotSwitched => {
                "the upstream accepted the WebSocket without switching protocols"
            }
        })
    }
}

impl std::error::Error for Invalid {}

/// Check the upstream's 101 against what was offered.
pub(crate) fn validate(offer: &Offer, headers: &HeaderMap) -> Result<(), Invalid> {
    let mut chosen = headers::tokens(headers, &header::UPGRADE).peekable();
    if chosen.peek().is_none() {
        return Err(Invalid::NoUpgrade);
    }
    let mut websocket = false;
    for protocol in chosen {
        if !offer
            .protocols
            .iter()
            .any(|p| p.eq_ignore_ascii_case(protocol))
        {
            return Err(Invalid::UnofferedProtocol);
        }
        websocket |= protocol.eq_ignore_ascii_case("websocket");
    }
    let Some(ws) = offer.websocket.as_ref().filter(|_| websocket) else {
        return Ok(());
    };
    let key = ws.key.as_ref().ok_or(Invalid::NoKey)?;
    let mut accepts = headers.get_all(SEC_WEBSOCKET_ACCEPT).iter();
    match (accepts.next(), accepts.next()) {
        (Some(accept), None) if accept.as_bytes() == accept_key(key.as_bytes()).as_bytes() => {}
        _ => return Err(Invalid::BadAccept),
    }
    let mut subprotocols = headers::tokens(headers, &SEC_WEBSOCKET_PROTOCOL);
    match (subprotocols.next(), subprotocols.next()) {
        (None, _) => {}
        (Some(chosen), None) if ws.subprotocols.iter().any(|p| p == chosen) => {}
        _ => return Err(Invalid::UnofferedSubprotocol),
    }
    if extension_names(headers).any(|name| !ws.extensions.contains(&name)) {
        return Err(Invalid::UnofferedExtension);
    }
    Ok(())
}

/// The answer the client gets for a valid 101: the upstream's headers minus hop-by-hop
/// ones (`Upgrade` and `Connection: upgrade` kept for HTTP/1.1), as a 101; for an
/// extended CONNECT, a 200 without the HTTP/1.1 handshake fields (RFC 8441 §5).
pub(crate) fn client_response(mode: Mode, upstream: response::Parts) -> Response<Body> {
    let mut headers = upstream.headers;
    headers.remove(header::CONTENT_LENGTH);
    let (status, version) = match mode {
        Mode::Http1 => {
            headers::strip_hop_by_hop(&mut headers, true);
            (StatusCode::SWITCHING_PROTOCOLS, Version::HTTP_11)
        }
        Mode::ExtendedConnect => {
            headers::strip_hop_by_hop(&mut headers, false);
            headers.remove(SEC_WEBSOCKET_ACCEPT);
            (StatusCode::OK, Version::HTTP_2)
        }
    };
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    response
}
