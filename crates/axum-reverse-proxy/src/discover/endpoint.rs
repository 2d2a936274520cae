//! The endpoint value of the file and etcd sources, URL validation, and how the balancer
//! reads any discovered value.

use std::any::Any;
use std::fmt;

use crate::error::BoxError;

/// An endpoint URL with a relative weight (default 1), as listed in a file or stored in
/// etcd. It converts into its URL (`Into<String>`), so it feeds any balancer that takes URL
/// strings; the [`DiscoverableBalancedProxy`](crate::DiscoverableBalancedProxy) gives the
/// endpoint its [`weight`](Self::weight). Build one from your own source to weight its
/// endpoints.
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

// ===== reading discovered values =====

/// What the balancer takes from one discovered value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Described {
    /// Where to connect.
    pub(crate) url: String,
    /// The name for `Host` and TLS when it is not the URL's host.
    pub(crate) server_name: Option<String>,
    /// The relative weight, at least 1.
    pub(crate) weight: u32,
}

/// Read a discovered value: a [`WeightedUrl`] brings its weight, a
/// [`DnsEndpoint`](super::DnsEndpoint) its DNS name and weight; any other value is its URL
/// (`Into<String>`) with weight 1.
///
/// Why by type: the discoverable proxy accepts any `D::Service: Into<String>` (1.3's
/// bound, kept so that 1.3 code compiles). A trait for "a URL with a weight and a name"
/// implemented for every `Into<String>` could not also be implemented, differently, for
/// `WeightedUrl` and `DnsEndpoint` (they convert into `String` too; Rust has no
/// specialisation). So the two are recognised through `Any`, once per discovery change,
/// never on the request path.
pub(crate) fn describe<S: Into<String> + 'static>(service: S) -> Described {
    let mut slot = Some(service);
    let any: &mut dyn Any = &mut slot;
    if let Some(weighted) = any
        .downcast_mut::<Option<WeightedUrl>>()
        .and_then(Option::take)
    {
        return Described {
            weight: weighted.weight,
            url: weighted.url,
            server_name: None,
        };
    }
    #[cfg(feature = "dns")]
    if let Some(dns) = any
        .downcast_mut::<Option<super::DnsEndpoint>>()
        .and_then(Option::take)
    {
        return Described {
            weight: dns.effective_weight(),
            server_name: Some(dns.hostname().to_owned()),
            url: dns.into(),
        };
    }
    Described {
        url: slot.map(Into::into).unwrap_or_default(),
        server_name: None,
        weight: 1,
    }
}
