//! TLS termination: one certificate per SNI name, HTTP/2 by ALPN.
//!
//! [`SniResolver`] picks the certificate for the name the client asked for: the exact
//! name first, then a `*.example.com` wildcard entry (one label deep, as certificates
//! do), then the certificate marked `default = true`. With no match and no default the
//! handshake is refused, so a scanner without the right name learns nothing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{ListenerConfig, Loaded};
use crate::upstream::BuildError;

/// Certificates by server name.
#[derive(Debug, Default)]
pub(crate) struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn lookup(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = name {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(key) = self.exact.get(&name) {
                return Some(key.clone());
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(key) = self.wildcard.get(parent)
            {
                return Some(key.clone());
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(hello.server_name())
    }
}

/// Build the rustls configuration of a TLS listener, loading its certificates.
pub(crate) fn server_config(
    name: &str,
    listener: &ListenerConfig,
    loaded: &Loaded,
) -> Result<Option<Arc<rustls::ServerConfig>>, BuildError> {
    let Some(tls) = &listener.tls else {
        return Ok(None);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut resolver = SniResolver::default();
    for (i, cert) in tls.get_ref().certificates.iter().enumerate() {
        let key_path = format!("listeners.{name}.tls.certificates[{i}]");
        let c = cert.get_ref();
        let certified = load(
            &loaded.resolve(c.cert.get_ref()),
            &loaded.resolve(c.key.get_ref()),
            &provider,
        )
        .map_err(|(which, message)| BuildError {
            span: if which == "cert" { c.cert.span() } else { c.key.span() },
            key: format!("{key_path}.{which}"),
            message,
            hint: "give a readable PEM file: the certificate chain (leaf first) in `cert`, its private key in `key`".to_owned(),
        })?;
        let certified = Arc::new(certified);
        for sn in &c.server_names {
            let n = sn.get_ref().to_ascii_lowercase();
            match n.strip_prefix("*.") {
                Some(parent) => resolver
                    .wildcard
                    .insert(parent.to_owned(), certified.clone()),
                None => resolver.exact.insert(n, certified.clone()),
            };
        }
        if c.default {
            resolver.default = Some(certified);
        }
    }
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| BuildError {
            span: tls.span(),
            key: format!("listeners.{name}.tls"),
            message: format!("TLS setup failed: {err}"),
            hint: String::new(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = if listener.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Some(Arc::new(config)))
}

/// Load one certificate chain and key; the error names which file is at fault.
fn load(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, (&'static str, String)> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|err| {
            (
                "cert",
                format!("cannot read certificates from {}: {err}", cert.display()),
            )
        })?;
    if chain.is_empty() {
        return Err((
            "cert",
            format!("no certificate found in {}", cert.display()),
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|err| {
        (
            "key",
            format!("cannot read a private key from {}: {err}", key.display()),
        )
    })?;
    CertifiedKey::from_der(chain, private, provider).map_err(|err| {
        (
            "key",
            format!(
                "the key in {} does not fit the certificate: {err}",
                key.display()
            ),
        )
    })
}
