//! TLS termination: one listener, two certificates, the client's SNI picks one; HTTP/2
//! is offered by ALPN; an unknown name without a default certificate is refused.

mod common;

use std::sync::Arc;

use common::{Proxy, TempDir, echo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct Cert {
    der: CertificateDer<'static>,
}

fn make_cert(dir: &TempDir, name: &str) -> Cert {
    let generated = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    std::fs::write(dir.path(&format!("{name}.pem")), generated.cert.pem()).unwrap();
    std::fs::write(
        dir.path(&format!("{name}.key")),
        generated.key_pair.serialize_pem(),
    )
    .unwrap();
    Cert {
        der: generated.cert.der().clone(),
    }
}

fn connector(roots: &[&Cert], alpn: &[&[u8]]) -> TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for c in roots {
        store.add(c.der.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate() {
    let upstream = echo("tls-backend").await;
    let dir = TempDir::new("tls");
    let a = make_cert(&dir, "a.test");
    let b = make_cert(&dir, "b.test");
    // Relative certificate paths are read from the config file's folder.
    let config = format!(
        r#"
[listeners.secure]
address = "127.0.0.1:0"

[[listeners.secure.tls.certificates]]
server_names = ["a.test"]
cert = "a.test.pem"
key = "a.test.key"

[[listeners.secure.tls.certificates]]
server_names = ["b.test"]
cert = "b.test.pem"
key = "b.test.key"

[pools.main]
targets = ["http://{upstream}"]

[[routes]]
prefix = "/"
pool = "main"
"#
    );
    let path = dir.write("proxy.toml", &config);
    let proxy = Proxy::with_config(&path);
    let url = proxy.listener_url("secure");
    let addr = url
        .strip_prefix("https://")
        .expect("an https listener URL")
        .to_owned();

    for (name, cert) in [("a.test", &a), ("b.test", &b)] {
        // Trust both: the check is which one the server presents.
        let tls = connector(&[&a, &b], &[b"h2", b"http/1.1"]);
        let tcp = TcpStream::connect(&addr).await.unwrap();
        let stream = tls
            .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
            .await
            .unwrap_or_else(|e| panic!("handshake for {name}: {e}"));
        let (_, session) = stream.get_ref();
        let presented = session.peer_certificates().unwrap();
        assert_eq!(presented[0], cert.der, "wrong certificate for {name}");
        assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]), "h2 by ALPN");
    }

    // HTTP/1.1 over TLS reaches the upstream.
    let tls = connector(&[&a], &[b"http/1.1"]);
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let mut stream = tls
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .unwrap();
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("tls-backend"), "{response}");
    assert!(
        response.contains("\"x-forwarded-proto\":\"https\""),
        "{response}"
    );

    // A name with no certificate and no default: the handshake is refused.
    let tls = connector(&[&a, &b], &[]);
    let tcp = TcpStream::connect(&addr).await.unwrap();
    assert!(
        tls.connect(ServerName::try_from("c.test").unwrap(), tcp)
            .await
            .is_err()
    );
}

async fn presented(addr: &str, name: &str, roots: &[&Cert]) -> CertificateDer<'static> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = connector(roots, &[])
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
        .unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rotates_certificates_on_the_same_socket() {
    let upstream = echo("rotate").await;
    let dir = TempDir::new("tls-rotate");
    let old = make_cert(&dir, "r.test");
    let config = |cert: &str| common::tls_config("", "r.test", cert, upstream);
    let path = dir.write("proxy.toml", &config("r.test"));
    let proxy = Proxy::with_config(&path);
    let addr = proxy.listener_url("secure").replace("https://", "");
    assert_eq!(presented(&addr, "r.test", &[&old]).await, old.der);

    // A new certificate in another file; the listener keeps its address.
    let new = {
        let generated = rcgen::generate_simple_self_signed(vec!["r.test".to_owned()]).unwrap();
        std::fs::write(dir.path("new.pem"), generated.cert.pem()).unwrap();
        std::fs::write(dir.path("new.key"), generated.key_pair.serialize_pem()).unwrap();
        Cert {
            der: generated.cert.der().clone(),
        }
    };
    dir.write("proxy.toml", &config("new"));
    proxy.signal("HUP");
    let (proxy, _) = proxy.wait_line_async(|l| l.starts_with("reloaded:")).await;
    assert_eq!(proxy.listener_url("secure"), format!("https://{addr}"));
    assert_eq!(presented(&addr, "r.test", &[&new]).await, new.der);
}
