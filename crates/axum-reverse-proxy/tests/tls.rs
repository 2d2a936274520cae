//! HTTPS upstreams.
//!
//! The upstream is a tokio-rustls server with a fresh rcgen self-signed certificate for
//! `localhost`, offering ALPN `h2` and `http/1.1`, serving hyper's auto (HTTP/1.1 + HTTP/2)
//! connection. It records, per request, the HTTP version, the ALPN protocol of its TLS
//! connection and the `Host`/`:authority` it was sent.
//!
//! What is checked:
//! - `new_with_client` with a hyper-rustls client whose root store trusts the certificate
//!   (real verification: a wrong name or another certificate is refused);
//! - the rustls and native-tls "danger" helpers;
//! - the default connector (`ReverseProxy::new`, `proxy_route`) verifies certificates and
//!   refuses the self-signed one with 502 + `ProxyError::is_connect()`;
//! - HTTP/2 by ALPN: through `new_with_client` with `enable_all_versions()`, through the
//!   native-tls danger helper (which asks for `h2`), and, with `native-tls`, through the
//!   default pool itself. The default pool's connector cannot be told to trust a test
//!   certificate from inside the process, so that check runs this test binary again in a
//!   child process whose `SSL_CERT_FILE` names the certificate (OpenSSL reads it at
//!   start-up). With only `tls` (rustls), the default connector trusts the compiled-in
//!   Mozilla roots alone, so its ALPN cannot be observed against a local upstream.
#![cfg(any(feature = "tls", feature = "native-tls"))]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, Version};
use axum_reverse_proxy::{ProxyError, ProxyRouterExt, ReverseProxy};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
#[cfg(feature = "native-tls")]
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types};
use tower::ServiceExt;

// ===== Helpers: certificates =====

/// A self-signed certificate for `localhost` and its key.
struct Identity {
    cert: pki_types::CertificateDer<'static>,
    key: Vec<u8>,
    /// The certificate in PEM (what OpenSSL's `SSL_CERT_FILE` reads).
    #[cfg_attr(not(feature = "native-tls"), allow(dead_code))]
    pem: String,
}

fn self_signed() -> Identity {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    Identity {
        pem: cert.pem(),
        cert: cert.der().clone(),
        key: key_pair.serialize_der(),
    }
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ===== Helpers: a recording TLS upstream =====

/// One request as the TLS upstream received it.
#[derive(Clone, Debug)]
struct Seen {
    version: Version,
    /// The ALPN protocol of the TLS connection the request came on.
    alpn: Option<Vec<u8>>,
    /// `Host`, or the `:authority` of an HTTP/2 request.
    authority: Option<String>,
    // Read by the rustls-only tests.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    path: String,
}

#[derive(Clone)]
struct TlsUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// TCP connections accepted (TLS handshake or not).
    connections: Arc<AtomicUsize>,
}

impl TlsUpstream {
    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn last(&self) -> Seen {
        self.requests()
            .pop()
            .expect("the TLS upstream received no request")
    }
}

/// Serve HTTP/1.1 and HTTP/2 over TLS with `identity`, offering ALPN `h2` and
/// `http/1.1`. Answers `tls <path>`.
async fn tls_upstream(identity: &Identity) -> TlsUpstream {
    let key = pki_types::PrivateKeyDer::Pkcs8(identity.key.clone().into());
    let mut config = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert.clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = TlsUpstream {
        addr: listener.local_addr().unwrap(),
        seen: Arc::default(),
        connections: Arc::default(),
    };
    let (seen, connections) = (up.seen.clone(), up.connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            connections.fetch_add(1, Ordering::SeqCst);
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                // A client that refuses our certificate aborts here.
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let authority = req
                        .headers()
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_owned)
                        .or_else(|| req.uri().authority().map(|a| a.to_string()));
                    let path = req.uri().path().to_owned();
                    seen.lock().unwrap().push(Seen {
                        version: req.version(),
                        alpn: alpn.clone(),
                        authority,
                        path: path.clone(),
                    });
                    async move {
                        Ok::<_, std::convert::Infallible>(Response::new(format!("tls {path}")))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    up
}

// ===== Helpers: proxy side =====

/// Send one request through `proxy` in-process (the response keeps its extensions).
async fn call(proxy: Router, path: &str) -> Response<Body> {
    let req = Request::builder().uri(path).body(Body::empty()).unwrap();
    proxy.oneshot(req).await.unwrap()
}

async fn text(response: Response<Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Serve `app` on `127.0.0.1:0` and return its address.
async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn assert_connect_error(response: &Response<Body>) {
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let err = response
        .extensions()
        .get::<ProxyError>()
        .expect("a proxy-made 502 carries a ProxyError");
    assert!(err.is_connect(), "expected a connect error, got {err:?}");
}

/// A hyper-rustls client whose only trusted root is `identity`'s certificate.
#[cfg(feature = "tls")]
fn trusting_client(
    identity: &Identity,
    all_versions: bool,
) -> Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Body>
{
    let mut roots = rustls::RootCertStore::empty();
    roots.add(identity.cert.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let https = if all_versions {
        builder.enable_all_versions().build()
    } else {
        builder.enable_http1().build()
    };
    Client::builder(TokioExecutor::new()).build(https)
}

// ===== Verified client (new_with_client) =====

#[cfg(feature = "tls")]
#[tokio::test]
async fn verified_client_reaches_the_upstream() {
    let identity = self_signed();
    let up = tls_upstream(&identity).await;
    let target = format!("https://localhost:{}", up.port());
    let proxy = ReverseProxy::new_with_client("/", &target, trusting_client(&identity, false));
    let addr = serve(proxy.into()).await;

    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{addr}/secure/path"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.unwrap(), "tls /secure/path");
    let seen = up.last();
    assert_eq!(seen.path, "/secure/path");
    assert_eq!(seen.version, Version::HTTP_11);
    // hyper-rustls sends no ALPN when only HTTP/1.1 is enabled.
    assert_ne!(seen.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(seen.authority, Some(format!("localhost:{}", up.port())));
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn verified_client_refuses_a_name_the_certificate_does_not_cover() {
    let identity = self_signed();
    let up = tls_upstream(&identity).await;
    // Same server, same trusted certificate, but it names `localhost`, not 127.0.0.1.
    let target = format!("https://127.0.0.1:{}", up.port());
    let proxy = ReverseProxy::new_with_client("/", &target, trusting_client(&identity, false));
    let response = call(proxy.into(), "/x").await;
    assert_connect_error(&response);
    assert!(up.requests().is_empty());
    assert!(
        up.connections.load(Ordering::SeqCst) >= 1,
        "never even connected"
    );
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn verified_client_refuses_another_certificate() {
    let trusted = self_signed();
    let other = self_signed();
    let up = tls_upstream(&other).await;
    let target = format!("https://localhost:{}", up.port());
    let proxy = ReverseProxy::new_with_client("/", &target, trusting_client(&trusted, false));
    let response = call(proxy.into(), "/x").await;
    assert_connect_error(&response);
    assert!(up.requests().is_empty());
}

// ===== Danger helpers =====

#[cfg(feature = "tls")]
#[tokio::test]
async fn dangerous_rustls_config_accepts_a_self_signed_certificate() {
    use axum_reverse_proxy::create_dangerous_rustls_config;

    let up = tls_upstream(&self_signed()).await;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(create_dangerous_rustls_config())
        .https_or_http()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build(https);
    // Any name is accepted too: the certificate only names `localhost`.
    let target = format!("https://127.0.0.1:{}", up.port());
    let proxy = ReverseProxy::new_with_client("/", &target, client);
    let response = call(proxy.into(), "/danger").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, "tls /danger");
    assert_eq!(up.last().version, Version::HTTP_11);
}

#[cfg(feature = "native-tls")]
#[tokio::test]
async fn dangerous_native_tls_connector_accepts_a_self_signed_certificate() {
    use axum_reverse_proxy::create_dangerous_native_tls_connector;

    let up = tls_upstream(&self_signed()).await;
    let tls = create_dangerous_native_tls_connector().unwrap();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let https = hyper_tls::HttpsConnector::from((http, tokio_native_tls::TlsConnector::from(tls)));
    let client = Client::builder(TokioExecutor::new()).build(https);
    let target = format!("https://127.0.0.1:{}", up.port());
    let proxy = ReverseProxy::new_with_client("/n", &target, client);
    let response = call(proxy.into(), "/n/danger").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, "tls /danger");
    // The helper asks for `h2` by ALPN, and hyper-tls hands the negotiated protocol to
    // the client, so the upstream is spoken to in HTTP/2.
    let seen = up.last();
    assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(seen.version, Version::HTTP_2);
}

// ===== Default connector: verification is on =====

#[tokio::test]
async fn default_proxy_refuses_a_self_signed_certificate() {
    let up = tls_upstream(&self_signed()).await;
    let proxy = ReverseProxy::new("/", format!("https://localhost:{}", up.port()));
    let response = call(proxy.clone().into(), "/x").await;
    assert_connect_error(&response);
    let body = text(response).await;
    assert_eq!(body, "Bad Gateway");

    // Over the wire too.
    let addr = serve(proxy.into()).await;
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{addr}/y"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 502);
    assert!(
        up.requests().is_empty(),
        "a request crossed a refused handshake"
    );
    assert!(
        up.connections.load(Ordering::SeqCst) >= 2,
        "never even connected"
    );
}

#[tokio::test]
async fn proxy_route_default_pool_refuses_a_self_signed_certificate() {
    let up = tls_upstream(&self_signed()).await;
    let app = Router::new().proxy_route("/r/{*rest}", format!("https://localhost:{}", up.port()));
    let response = call(app, "/r/x").await;
    assert_connect_error(&response);
    assert!(up.requests().is_empty());
}

// ===== HTTP/2 by ALPN =====

#[cfg(feature = "tls")]
#[tokio::test]
async fn alpn_negotiates_h2_when_the_client_enables_all_versions() {
    let identity = self_signed();
    let up = tls_upstream(&identity).await;
    let target = format!("https://localhost:{}", up.port());
    let proxy = ReverseProxy::new_with_client("/", &target, trusting_client(&identity, true));
    let app: Router = proxy.into();

    for i in 0..5 {
        let response = call(app.clone(), &format!("/h2/{i}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(text(response).await, format!("tls /h2/{i}"));
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 5);
    for s in &seen {
        assert_eq!(s.version, Version::HTTP_2, "{s:?}");
        assert_eq!(s.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(s.authority, Some(format!("localhost:{}", up.port())));
    }
    // One multiplexed connection carries them all.
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn alpn_stays_on_http1_when_the_client_offers_only_http1() {
    let identity = self_signed();
    let up = tls_upstream(&identity).await;
    let target = format!("https://localhost:{}", up.port());
    let proxy = ReverseProxy::new_with_client("/", &target, trusting_client(&identity, false));
    let response = call(proxy.into(), "/h1").await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen = up.last();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_ne!(seen.alpn.as_deref(), Some(&b"h2"[..]));
}

/// Set in the child process: the directory holding the certificate and key it serves.
#[cfg(feature = "native-tls")]
const CHILD_DIR: &str = "AXUM_REVERSE_PROXY_TLS_TEST_DIR";

/// The default pool (native-tls connector with the system trust store, which OpenSSL
/// reads from `SSL_CERT_FILE`) negotiates HTTP/2 by ALPN and verifies the host name.
///
/// Runs itself again as a child process with `SSL_CERT_FILE` naming a fresh certificate,
/// since the trust store is read once, at start-up.
#[cfg(feature = "native-tls")]
#[tokio::test]
async fn default_pool_negotiates_h2_by_alpn() {
    const NAME: &str = "default_pool_negotiates_h2_by_alpn";
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        return default_pool_child(std::path::PathBuf::from(dir)).await;
    }

    let identity = self_signed();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("arp-tls-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), &identity.pem).unwrap();
    std::fs::write(dir.join("cert.der"), identity.cert.as_ref()).unwrap();
    std::fs::write(dir.join("key.der"), &identity.key).unwrap();

    let output = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, &dir)
        .env("SSL_CERT_FILE", dir.join("cert.pem"))
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child process failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
}

#[cfg(feature = "native-tls")]
async fn default_pool_child(dir: std::path::PathBuf) {
    let identity = Identity {
        cert: std::fs::read(dir.join("cert.der")).unwrap().into(),
        key: std::fs::read(dir.join("key.der")).unwrap(),
        pem: String::new(),
    };
    let up = tls_upstream(&identity).await;
    let target = format!("https://localhost:{}", up.port());
    let app: Router = ReverseProxy::new("/", &target).into();

    for i in 0..5 {
        let response = call(app.clone(), &format!("/pool/{i}")).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{:?}",
            response.extensions().get::<ProxyError>()
        );
        assert_eq!(text(response).await, format!("tls /pool/{i}"));
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 5);
    for s in &seen {
        assert_eq!(s.alpn.as_deref(), Some(&b"h2"[..]), "{s:?}");
        assert_eq!(s.version, Version::HTTP_2, "{s:?}");
        assert_eq!(s.authority, Some(format!("localhost:{}", up.port())));
    }
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "HTTP/2 connection not reused"
    );

    // Concurrent requests share the one HTTP/2 connection.
    let responses = futures_util::future::join_all(
        (0..16).map(|i| call(app.clone(), if i % 2 == 0 { "/even" } else { "/odd" })),
    )
    .await;
    assert!(responses.iter().all(|r| r.status() == StatusCode::OK));
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);

    // The trusted certificate still has to name the host.
    let wrong_name: Router =
        ReverseProxy::new("/", format!("https://127.0.0.1:{}", up.port())).into();
    assert_connect_error(&call(wrong_name, "/x").await);
}

// ===== with_tls_config: our pool, the caller's trust =====

#[cfg(feature = "tls")]
fn trusting_config(identity: &Identity) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(identity.cert.clone()).unwrap();
    rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn with_tls_config_trusts_the_given_roots_and_negotiates_h2() {
    let identity = self_signed();
    let up = tls_upstream(&identity).await;
    let target = format!("https://localhost:{}", up.port());
    let proxy = ReverseProxy::new("/", &target).with_tls_config(trusting_config(&identity));
    for _ in 0..2 {
        let response = call(proxy.clone().into(), "/pooled").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(text(response).await, "tls /pooled");
    }
    let seen = up.requests();
    assert!(
        seen.iter().all(|s| s.version == Version::HTTP_2),
        "{seen:?}"
    );
    assert_eq!(seen[0].alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(seen[0].authority, Some(format!("localhost:{}", up.port())));
    // One multiplexed connection carried both requests.
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);

    // Verification stays on: the same certificate under another name is refused.
    let by_ip = format!("https://127.0.0.1:{}", up.port());
    let proxy = ReverseProxy::new("/", &by_ip).with_tls_config(trusting_config(&identity));
    assert_connect_error(&call(proxy.into(), "/x").await);
}
