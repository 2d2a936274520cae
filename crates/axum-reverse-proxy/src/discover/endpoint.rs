//! The endpoint value of the file and etcd sources, and URL validation.

use std::fmt;

use crate::error::BoxError;

/// An endpoint URL with a relative weight (default 1), as listed in a file or stored in
/// etcd. It converts into its URL (`Into<String>`), so it feeds any balancer that takes URL
/// strings; a weighted balancer can read [`weight`](Self::weight).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WeightedUrl {
    url: String,
    weight: u32,
}

impl WeightedUrl {
    /// `url` with weight `weight`. `url` must be an absolute `http://` or `https://` URL
    /// and `weight` at least 1.
    pub fn new(url: impl Into<String>, weight: u32) -> Result<Self, BoxError> {
        let url = url.into();
        check_url(&url)?;
        if weight == 0 {
            return Err(format!("weight of {url} must be at least 1").into());
        }
        Ok(Self { url, weight })
    }

    /// The endpoint URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The relative weight, at least 1.
    pub fn weight(&self) -> u32 {
        self.weight
    }
}

impl fmt::Display for WeightedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl From<WeightedUrl> for String {
    fn from(endpoint: WeightedUrl) -> Self {
        endpoint.url
    }
}

/// Accepts absolute `http`/`https` URLs with a host, as a proxy target needs.
pub(crate) fn check_url(url: &str) -> Result<(), BoxError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid endpoint URL {url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!("endpoint URL {url:?} must start with http:// or https://").into());
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("endpoint URL {url:?} has no host").into());
    };
    if authority.host().is_empty() {
        return Err(format!("endpoint URL {url:?} has no host").into());
    }
    // `http::Uri` accepts any digits as a port; a proxy target needs a real one.
    let host_port = authority
        .as_str()
        .rsplit_once('@')
        .map_or(authority.as_str(), |(_, hp)| hp);
    let port = match host_port.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(_, rest)| rest),
        None => host_port.split_once(':').map_or("", |(_, port)| port),
    };
    let port = port.strip_prefix(':').unwrap_or(port);
    if !port.is_empty() && port.parse::<u16>().is_err() {
        return Err(format!("invalid endpoint URL {url:?}: bad port {port:?}").into());
    }
    Ok(())
}
