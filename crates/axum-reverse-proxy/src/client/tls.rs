//! TLS for upstream connections: the default rustls configuration and the "danger"
//! helpers that turn certificate verification off.

#[cfg(feature = "tls")]
use std::sync::Arc;

/// The crypto provider every rustls config of ours uses. Named explicitly so that a
/// process where several providers are compiled in never has to pick a default.
#[cfg(feature = "tls")]
pub(crate) fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The default client config: Mozilla's root certificates (webpki-roots), TLS 1.2 and
/// 1.3, no client certificate. ALPN is set by the connector.
#[cfg(feature = "tls")]
#[cfg_attr(feature = "native-tls", allow(dead_code))]
pub(crate) fn default_rustls_config() -> rustls::ClientConfig {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A rustls client config that accepts **any** server certificate.
///
/// # Danger
/// This turns off the protection TLS gives against an attacker in the middle: anyone on
/// the path can read and change the traffic. Use it only for development against
/// self-signed upstreams you control; prefer adding your CA to a root store.
///
/// Build a client with it and hand the client to
/// [`ReverseProxy::new_with_client`](crate::ReverseProxy::new_with_client):
///
/// ```
/// use axum::body::Body;
/// use axum_reverse_proxy::{ReverseProxy, create_dangerous_rustls_config};
/// use hyper_util::client::legacy::{Client, connect::HttpConnector};
/// use hyper_util::rt::TokioExecutor;
///
/// let https = hyper_rustls::HttpsConnectorBuilder::new()
///     .with_tls_config(create_dangerous_rustls_config())
///     .https_or_http()
///     .enable_all_versions()
///     .build();
/// let client = Client::builder(TokioExecutor::new()).build::<_, Body>(https);
/// let proxy = ReverseProxy::new_with_client("/", "https://127.0.0.1:8443", client);
/// ```
#[cfg(feature = "tls")]
pub fn create_dangerous_rustls_config() -> rustls::ClientConfig {
    let provider = crypto_provider();
    rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(danger::AcceptAnyCertificate { provider }))
        .with_no_client_auth()
}

/// A native-tls connector that accepts **any** server certificate and host name.
///
/// # Danger
/// As for [`create_dangerous_rustls_config`]: development against self-signed upstreams
/// only.
#[cfg(feature = "native-tls")]
pub fn create_dangerous_native_tls_connector() -> Result<native_tls::TlsConnector, native_tls::Error>
{
    native_tls::TlsConnector::builder()
        .danger_accept_invalid_certs(true)
        .danger_accept_invalid_hostnames(true)
        .request_alpns(&["h2", "http/1.1"])
        .build()
}

#[cfg(feature = "tls")]
mod danger {
    use std::sync::Arc;

    use rustls::DigitallySignedStruct;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    /// Accepts every certificate, but still checks that handshake signatures are made
    /// by the certificate's key (so the peer holds the key it presents).
    #[derive(Debug)]
    pub(super) struct AcceptAnyCertificate {
        pub(super) provider: Arc<CryptoProvider>,
    }

    impl ServerCertVerifier for AcceptAnyCertificate {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
}
