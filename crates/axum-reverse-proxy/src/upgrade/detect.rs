//! Recognising an upgrade request, and remembering what the client offered so that the
//! upstream's answer can be checked against it.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version, request};

use crate::headers;

pub(crate) const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
pub(crate) const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");
pub(crate) const SEC_WEBSOCKET_PROTOCOL: HeaderName =
    HeaderName::from_static("sec-websocket-protocol");
pub(crate) const SEC_WEBSOCKET_EXTENSIONS: HeaderName =
    HeaderName::from_static("sec-websocket-extensions");

/// How the client asked to switch protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// An HTTP/1.1 `GET` with `Upgrade` and `Connection: upgrade` (RFC 9110 §7.8): the
    /// client gets the upstream's 101.
    Http1,
    /// WebSocket over HTTP/2 (RFC 8441): an extended `CONNECT` with `:protocol =
    /// websocket`. The upstream is asked with an HTTP/1.1 WebSocket upgrade; the client
    /// gets 200 and its stream becomes the tunnel.
    ExtendedConnect,
}

/// What the client asked for.
#[derive(Debug)]
pub(crate) struct Offer {
    pub(crate) mode: Mode,
    /// The protocols offered in `Upgrade`, as sent (`h2c` removed: it names this hop).
    pub(crate) protocols: Vec<String>,
    /// `Upgrade` listed `h2c` next to something else, so it must be rewritten.
    pub(crate) rewrite_upgrade: bool,
    /// WebSocket specifics, when `websocket` is among the protocols.
    pub(crate) websocket: Option<WebSocketOffer>,
}

/// The WebSocket handshake fields the upstream's answer is checked against.
#[derive(Debug, Default)]
pub(crate) struct WebSocketOffer {
    /// `Sec-WebSocket-Key`: the client's, or one we make up for an extended CONNECT.
    pub(crate) key: Option<HeaderValue>,
    /// `Sec-WebSocket-Protocol` values, in order, compared case-sensitively.
    pub(crate) subprotocols: Vec<String>,
    /// `Sec-WebSocket-Extensions` names, lowercased (parameters dropped).
    pub(crate) extensions: Vec<String>,
}

/// What a request is, as far as upgrades go.
#[derive(Debug)]
pub(crate) enum Detected {
    /// An ordinary request: any `Upgrade` header is hop-by-hop and removed.
    Plain,
    /// A protocol switch the proxy carries through.
    Upgrade(Offer),
    /// A `CONNECT` the proxy does not serve (classic tunnels, or an extended CONNECT
    /// for a protocol other than WebSocket): 501.
    UnsupportedConnect,
}

/// Classify a request (see the [module docs](super) for the rules).
pub(crate) fn detect(parts: &request::Parts) -> Detected {
    if parts.method == Method::CONNECT {
        let websocket = parts.version == Version::HTTP_2
            && parts
                .extensions
                .get::<hyper::ext::Protocol>()
                .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
        if !websocket {
            return Detected::UnsupportedConnect;
        }
        return Detected::Upgrade(Offer {
            mode: Mode::ExtendedConnect,
            protocols: vec!["websocket".to_owned()],
            rewrite_upgrade: false,
            websocket: Some(websocket_offer(&parts.headers, None)),
        });
    }
    // RFC 9110 §7.8: Upgrade means nothing in HTTP/1.0 or HTTP/2. Only GET is carried:
    // it is what RFC 6455 requires, and a request body before a protocol switch is a
    // smuggling hazard nobody needs.
    if parts.version != Version::HTTP_11
        || parts.method != Method::GET
        || !headers::is_upgrade_request(&parts.headers)
    {
        return Detected::Plain;
    }
    let mut rewrite_upgrade = false;
    let protocols: Vec<String> = headers::tokens(&parts.headers, &header::UPGRADE)
        .filter(|p| {
            let h2c = p.eq_ignore_ascii_case("h2c");
            rewrite_upgrade |= h2c;
            !h2c
        })
        .map(str::to_owned)
        .collect();
    if protocols.is_empty() {
        // `Upgrade: h2c` asks to switch this very connection to HTTP/2: not ours to pass.
        return Detected::Plain;
    }
    let websocket = protocols
        .iter()
        .any(|p| p.eq_ignore_ascii_case("websocket"))
        .then(|| {
            let key = parts.headers.get(SEC_WEBSOCKET_KEY).cloned();
            websocket_offer(&parts.headers, key)
        });
    Detected::Upgrade(Offer {
        mode: Mode::Http1,
        protocols,
        rewrite_upgrade,
        websocket,
    })
}

fn websocket_offer(headers: &HeaderMap, key: Option<HeaderValue>) -> WebSocketOffer {
    WebSocketOffer {
        key,
        subprotocols: headers::tokens(headers, &SEC_WEBSOCKET_PROTOCOL)
            .map(str::to_owned)
            .collect(),
        extensions: extension_names(headers).collect(),
    }
}

/// The extension names of `Sec-WebSocket-Extensions` (`permessage-deflate;
/// client_max_window_bits` → `permessage-deflate`), lowercased.
pub(crate) fn extension_names(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|ext| {
            let name = ext.split(';').next().unwrap_or("").trim();
            (!name.is_empty()).then(|| name.to_ascii_lowercase())
        })
}
