//! What consistent hashing hashes: [`HashKey`].

use std::net::SocketAddr;

use http::{Request, header};

use super::set::stable_hash;
use crate::proxy::forward::peer_addr;

/// The part of a request that [`ConsistentHash`](crate::LoadBalancingStrategy::ConsistentHash)
/// hashes to choose an endpoint. Requests with equal keys go to the same endpoint while
/// the endpoint set does not change.
///
/// A request without the key (no such header or cookie, no recorded peer address) goes
/// to a random endpoint. The default, when none is set, is [`HashKey::ClientIp`].
///
/// **Security**: headers, cookies and paths are chosen by the client, so a client can
/// choose its endpoint (and concentrate load on one) by choosing its key. `ClientIp` is
/// the peer address of the connection (`ConnectInfo<SocketAddr>`), never
/// `X-Forwarded-For`.
///
/// ```
/// use axum_reverse_proxy::{BalancedProxy, HashKey, LoadBalancingStrategy};
///
/// let proxy = BalancedProxy::new("/", vec!["http://127.0.0.1:3001", "http://127.0.0.1:3002"])
///     .with_strategy(LoadBalancingStrategy::ConsistentHash)
///     .with_hash_key(HashKey::header("x-user"));
/// # let _ = proxy;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HashKey {
    /// The first value of this request header (name matched case-insensitively).
    Header(String),
    /// The value of this cookie.
    Cookie(String),
    /// The request path, without the query.
    Path,
    /// The client's IP address, as recorded by
    /// `into_make_service_with_connect_info::<SocketAddr>()`.
    ClientIp,
}

impl HashKey {
    /// Hash the first value of the header `name`.
    pub fn header(name: impl Into<String>) -> Self {
        HashKey::Header(name.into().to_ascii_lowercase())
    }

    /// Hash the value of the cookie `name`.
    pub fn cookie(name: impl Into<String>) -> Self {
        HashKey::Cookie(name.into())
    }

    /// The key's hash for `req`, if `req` has the key; `client` is the peer's address when
    /// it is known apart from the request's `ConnectInfo`.
    pub(crate) fn hash<B>(&self, req: &Request<B>, client: Option<SocketAddr>) -> Option<u64> {
        match self {
            HashKey::Header(name) => req
                .headers()
                .get(name.as_str())
                .map(|v| stable_hash(v.as_bytes(), 0)),
            HashKey::Cookie(name) => req
                .headers()
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name).then(|| stable_hash(v.as_bytes(), 0))
                }),
            HashKey::Path => Some(stable_hash(req.uri().path().as_bytes(), 0)),
            HashKey::ClientIp => {
                client
                    .or_else(|| peer_addr(req.extensions()))
                    .map(|addr| match addr.ip() {
                        std::net::IpAddr::V4(ip) => stable_hash(&ip.octets(), 0),
                        std::net::IpAddr::V6(ip) => stable_hash(&ip.octets(), 0),
                    })
            }
        }
    }
}
