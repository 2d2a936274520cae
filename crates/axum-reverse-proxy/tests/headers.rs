//! Header rules, both ways: hop-by-hop stripping, Host, the forwarding family
//! (`X-Forwarded-*`, `Forwarded`), `Via` and loops, repeated lines, and responses
//! passed through verbatim.
//!
//! Requests are written over raw TCP so that every header line reaches the proxy as the
//! test wrote it; the recording origin reports what arrived.

mod common;

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum_reverse_proxy::{
    HostBehaviour, ProxyError, ProxyPolicy, ReverseProxy, TrustedProxies, XForwardedFor,
};
use common::{RawClient, RawUpstream, Recorded, Upstream, full, h2_client, raw_request};
use http::{Request, Response, StatusCode};
use tower::ServiceExt;

// ===== Harness =====

/// A proxy at `/` with `policy` in front of a fresh recording origin.
async fn setup(policy: ProxyPolicy) -> (Upstream, SocketAddr) {
    let origin = Upstream::start().await;
    let proxy = ReverseProxy::new("/", origin.url("")).with_policy(policy);
    let addr = spawn(proxy).await;
    (origin, addr)
}

async fn spawn(proxy: ReverseProxy) -> SocketAddr {
    common::spawn_proxy(Router::from(proxy)).await
}

/// `GET /h` with `Host: proxy.example` and the given extra header lines; returns what the
/// origin received.
async fn send_with(origin: &mut Upstream, addr: SocketAddr, extra: &str) -> Recorded {
    let request = format!("GET /h HTTP/1.1\r\nHost: proxy.example\r\n{extra}\r\n");
    let res = raw_request(addr, request.as_bytes()).await;
    assert_eq!(res.status, 200, "{}", res.body_text());
    origin.next().await
}

/// A request for the proxy when it is called in-process (no `ConnectInfo`).
fn in_process(headers: &[(&str, &str)]) -> Request<Body> {
    let mut req = Request::builder().uri("/h").header("host", "in.process");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(Body::empty()).unwrap()
}

// ===== Hop-by-hop =====

#[tokio::test]
async fn hop_by_hop_request_headers_are_stripped() {
    let (mut origin, addr) = setup(ProxyPolicy::new()).await;
    let seen = send_with(
        &mut origin,
        addr,
        "Connection: keep-alive, X-Custom-Hop\r\n\
         X-Custom-Hop: secret\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: trailers, deflate\r\n\
         Trailer: X-Late\r\n\
         Upgrade: example/1\r\n\
         Proxy-Authorization: Basic c2VjcmV0\r\n\
         X-End-To-End: kept\r\n",
    )
    .await;
    for name in [
        "connection",
        "x-custom-hop",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "proxy-authorization",
    ] {
        assert!(
            !seen.has(name),
            "{name} reached the origin: {:?}",
            seen.headers
        );
    }
    assert_eq!(
        seen.header_all("te"),
        [b"trailers"],
        "only `te: trailers` survives"
    );
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
    // `Trailer` is an end-to-end declaration (RFC 9110 §6.6.2), not a hop-by-hop field.
    assert_eq!(seen.header("trailer"), Some("X-Late"));

    // TE without `trailers` goes entirely; a header named by Connection goes even if it
    // is an end-to-end name.
    let seen = send_with(
        &mut origin,
        addr,
        "TE: deflate\r\nConnection: X-Forwarded-Proto\r\nX-Forwarded-Proto: gopher\r\n",
    )
    .await;
    assert!(!seen.has("te"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_stripped() {
    let origin = RawUpstream::start(|_| {
        let reply = "HTTP/1.1 200 OK\r\n\
                     Content-Length: 2\r\n\
                     Connection: X-Hop-Resp\r\n\
                     X-Hop-Resp: secret\r\n\
                     Keep-Alive: timeout=5, max=100\r\n\
                     Proxy-Connection: keep-alive\r\n\
                     Proxy-Authenticate: Basic realm=\"inner\"\r\n\
                     Trailer: X-Late\r\n\
                     Upgrade: example/1\r\n\
                     X-End-To-End: kept\r\n\
                     \r\n\
                     ok";
        (reply.as_bytes().to_vec(), false)
    })
    .await;
    let addr = spawn(ReverseProxy::new("/", origin.url(""))).await;
    let res = common::raw_get(addr, "/").await;
    assert_eq!((res.status, res.body_text().as_str()), (200, "ok"));
    for name in [
        "connection",
        "x-hop-resp",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "upgrade",
    ] {
        assert!(
            res.header(name).is_none(),
            "{name} reached the client: {:?}",
            res.headers
        );
    }
    assert_eq!(res.header("x-end-to-end").as_deref(), Some("kept"));
}

// ===== Host =====

#[tokio::test]
async fn host_is_replaced_by_default() {
    let (mut origin, addr) = setup(ProxyPolicy::new()).await;
    let seen = send_with(&mut origin, addr, "").await;
    assert_eq!(
        seen.header_all("host"),
        [origin.addr.to_string().as_bytes()]
    );
    assert_eq!(seen.header("x-forwarded-host"), Some("proxy.example"));
}

#[tokio::test]
async fn host_is_preserved_when_asked() {
    let policy = ProxyPolicy::new().with_host_behaviour(HostBehaviour::Preserve);
    let (mut origin, addr) = setup(policy).await;
    let seen = send_with(&mut origin, addr, "").await;
    assert_eq!(seen.header_all("host"), [b"proxy.example"]);

    // Over HTTP/2 the client's `:authority` is what is preserved.
    let mut h2 = h2_client(addr).await;
    let req = Request::get("http://public.example:8443/h2")
        .body(common::empty())
        .unwrap();
    let res = h2.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let seen = origin.next().await;
    assert_eq!(seen.target, "/h2");
    assert_eq!(seen.header_all("host"), [b"public.example:8443"]);
}

// ===== X-Forwarded-* =====

#[tokio::test]
async fn x_forwarded_headers_are_added() {
    let (mut origin, addr) = setup(ProxyPolicy::new()).await;
    let seen = send_with(&mut origin, addr, "").await;
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-host"), Some("proxy.example"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert!(!seen.has("forwarded"), "RFC 7239 Forwarded is opt-in");
    assert!(!seen.has("via"), "Via is opt-in");
}

#[tokio::test]
async fn client_forwarding_headers_are_kept_by_default() {
    let (mut origin, addr) = setup(ProxyPolicy::new()).await;
    let seen = send_with(
        &mut origin,
        addr,
        "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 198.51.100.2\r\n\
         X-Forwarded-Host: public.example\r\nX-Forwarded-Proto: https\r\n",
    )
    .await;
    assert_eq!(
        seen.header_all("x-forwarded-for"),
        [b"203.0.113.9, 198.51.100.2, 127.0.0.1"]
    );
    assert_eq!(seen.header("x-forwarded-host"), Some("public.example"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
}

#[tokio::test]
async fn untrusted_forwarding_headers_are_dropped() {
    let spoofed = "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Host: evil.example\r\n\
                   X-Forwarded-Proto: https\r\nForwarded: for=203.0.113.9\r\n";
    let untrusted = [
        TrustedProxies::None,
        TrustedProxies::list(["10.0.0.0/8", "::1"]).unwrap(),
    ];
    for trusted in untrusted {
        let (mut origin, addr) = setup(ProxyPolicy::new().with_trusted_proxies(trusted)).await;
        let seen = send_with(&mut origin, addr, spoofed).await;
        assert_eq!(seen.header_all("x-forwarded-for"), [b"127.0.0.1"]);
        assert_eq!(seen.header("x-forwarded-host"), Some("proxy.example"));
        assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
        assert!(!seen.has("forwarded"));
    }

    // A listed peer is believed.
    let trusted = TrustedProxies::list(["10.0.0.0/8", "127.0.0.0/8"]).unwrap();
    let (mut origin, addr) = setup(ProxyPolicy::new().with_trusted_proxies(trusted)).await;
    let seen = send_with(&mut origin, addr, spoofed).await;
    assert_eq!(
        seen.header_all("x-forwarded-for"),
        [b"203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(seen.header("x-forwarded-host"), Some("evil.example"));
    assert_eq!(seen.header("forwarded"), Some("for=203.0.113.9"));
}

#[tokio::test]
async fn public_scheme_sets_the_proto() {
    let policy = ProxyPolicy::new()
        .with_public_scheme("https")
        .with_forwarded(true);
    let (mut origin, addr) = setup(policy).await;
    let seen = send_with(&mut origin, addr, "").await;
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert!(seen.header("forwarded").unwrap().ends_with(";proto=https"));
}

#[tokio::test]
async fn x_forwarded_preserve_adds_nothing() {
    let policy = ProxyPolicy::new().with_x_forwarded_for(XForwardedFor::Preserve);
    let (mut origin, addr) = setup(policy).await;
    let seen = send_with(&mut origin, addr, "").await;
    assert!(!seen.has("x-forwarded-for") && !seen.has("x-forwarded-host"));
    assert!(!seen.has("x-forwarded-proto"));
    let seen = send_with(&mut origin, addr, "X-Forwarded-For: 203.0.113.9\r\n").await;
    assert_eq!(seen.header_all("x-forwarded-for"), [b"203.0.113.9"]);
}

#[tokio::test]
async fn no_forwarding_headers_without_connect_info() {
    let mut origin = Upstream::start().await;
    let proxy =
        ReverseProxy::new("/", origin.url("")).with_policy(ProxyPolicy::new().with_forwarded(true));
    let res = proxy.clone().oneshot(in_process(&[])).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let seen = origin.next().await;
    for name in [
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "forwarded",
    ] {
        assert!(!seen.has(name), "{name} without a known peer");
    }
    assert_eq!(
        seen.header_all("host"),
        [origin.addr.to_string().as_bytes()]
    );

    // An unknown peer is not on any trusted list: its headers are dropped.
    let listed = TrustedProxies::list(["127.0.0.1"]).unwrap();
    let proxy = proxy.with_policy(ProxyPolicy::new().with_trusted_proxies(listed));
    let res = proxy
        .oneshot(in_process(&[("x-forwarded-for", "203.0.113.9")]))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(!origin.next().await.has("x-forwarded-for"));
}

#[tokio::test]
async fn a_client_address_given_in_process_is_the_peer() {
    let mut origin = Upstream::start().await;
    let listed = TrustedProxies::list(["203.0.113.0/24"]).unwrap();
    let proxy = ReverseProxy::new("/", origin.url("")).with_policy(
        ProxyPolicy::new()
            .with_forwarded(true)
            .with_trusted_proxies(listed),
    );
    let client: SocketAddr = "203.0.113.7:4000".parse().unwrap();

    // No ConnectInfo at all: the given address is the peer, and a trusted one.
    let res = proxy
        .proxy_request_from(client, in_process(&[("x-forwarded-for", "198.51.100.1")]))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let seen = origin.next().await;
    assert_eq!(
        seen.header_all("x-forwarded-for"),
        [b"198.51.100.1, 203.0.113.7"]
    );
    assert_eq!(
        seen.header("forwarded"),
        Some("for=203.0.113.7;host=\"in.process\";proto=http")
    );

    // The given address wins over a ConnectInfo; an untrusted one loses the client's list.
    let mut req = in_process(&[("x-forwarded-for", "198.51.100.1")]);
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(client));
    let other: SocketAddr = "[2001:db8::5]:9".parse().unwrap();
    let res = proxy.proxy_request_from(other, req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let seen = origin.next().await;
    assert_eq!(seen.header_all("x-forwarded-for"), [b"2001:db8::5"]);
    assert_eq!(
        seen.header("forwarded"),
        Some("for=\"[2001:db8::5]\";host=\"in.process\";proto=http")
    );
}

// ===== Forwarded (RFC 7239) =====

#[tokio::test]
async fn forwarded_element_ipv4() {
    let (mut origin, addr) = setup(ProxyPolicy::new().with_forwarded(true)).await;
    let seen = send_with(&mut origin, addr, "").await;
    assert_eq!(
        seen.header_all("forwarded"),
        [b"for=127.0.0.1;host=\"proxy.example\";proto=http"]
    );
    let seen = send_with(
        &mut origin,
        addr,
        "Forwarded: for=192.0.2.60;proto=https\r\n",
    )
    .await;
    assert_eq!(
        seen.header_all("forwarded"),
        [b"for=192.0.2.60;proto=https, for=127.0.0.1;host=\"proxy.example\";proto=http"]
    );
}

#[tokio::test]
async fn forwarded_element_ipv6() {
    let mut origin = Upstream::start().await;
    let proxy =
        ReverseProxy::new("/", origin.url("")).with_policy(ProxyPolicy::new().with_forwarded(true));
    let Ok(probe) = tokio::net::TcpListener::bind("[::1]:0").await else {
        eprintln!("skipping: cannot bind [::1] here");
        return;
    };
    drop(probe);
    let addr = common::spawn_proxy_on("[::1]:0", Router::from(proxy)).await;
    let res = raw_request(addr, b"GET /v6 HTTP/1.1\r\nHost: [::1]\r\n\r\n").await;
    assert_eq!(res.status, 200);
    let seen = origin.next().await;
    assert_eq!(
        seen.header_all("forwarded"),
        [b"for=\"[::1]\";host=\"[::1]\";proto=http"]
    );
    assert_eq!(seen.header("x-forwarded-for"), Some("::1"));
}

// ===== Via and loops =====

#[tokio::test]
async fn via_is_appended_both_ways() {
    let mut origin = Upstream::start_with(|_| async {
        Response::builder()
            .header("via", "1.1 origin-cache")
            .body(full("ok"))
            .unwrap()
    })
    .await;
    let proxy =
        ReverseProxy::new("/", origin.url("")).with_policy(ProxyPolicy::new().with_via("edge"));
    let addr = spawn(proxy).await;

    let res = raw_request(
        addr,
        b"GET / HTTP/1.1\r\nHost: p\r\nVia: 1.0 corp-proxy\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header_all("via"), [b"1.1 origin-cache, 1.1 edge"]);
    assert_eq!(
        origin.next().await.header_all("via"),
        [b"1.0 corp-proxy, 1.1 edge"]
    );

    // The version is the one the message arrived with.
    let mut h2 = h2_client(addr).await;
    let req = Request::get(format!("http://{addr}/"))
        .body(common::empty())
        .unwrap();
    let res = h2.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(origin.next().await.header_all("via"), [b"2 edge"]);

    // Another proxy's similar name is not a loop.
    let res = raw_request(addr, b"GET / HTTP/1.1\r\nHost: p\r\nVia: 1.1 edge2\r\n\r\n").await;
    assert_eq!(res.status, 200);
    assert_eq!(
        origin.next().await.header_all("via"),
        [b"1.1 edge2, 1.1 edge"]
    );
}

#[tokio::test]
async fn a_request_that_already_passed_is_a_loop() {
    let origin = Upstream::start().await;
    let proxy =
        ReverseProxy::new("/", origin.url("")).with_policy(ProxyPolicy::new().with_via("edge"));
    let addr = spawn(proxy.clone()).await;
    for via in ["1.1 edge", "1.0 corp, 1.1 EDGE (cache)", "2 edge"] {
        let request = format!("GET / HTTP/1.1\r\nHost: p\r\nVia: {via}\r\n\r\n");
        let res = raw_request(addr, request.as_bytes()).await;
        assert_eq!(res.status, 508, "Via: {via}");
        assert!(!res.body_text().contains(&origin.addr.to_string()));
    }
    let res = proxy
        .oneshot(in_process(&[("via", "1.1 edge")]))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::LOOP_DETECTED);
    let err = res.extensions().get::<ProxyError>().expect("a ProxyError");
    assert!(err.is_loop() && !err.is_connect());
    assert_eq!(err.status(), StatusCode::LOOP_DETECTED);
    assert_eq!(origin.connections(), 0, "a loop never reaches the origin");
}

// ===== Repeated lines and verbatim responses =====

#[tokio::test]
async fn repeated_request_headers_stay_separate() {
    let (mut origin, addr) = setup(ProxyPolicy::new()).await;
    let seen = send_with(
        &mut origin,
        addr,
        "X-Multi: a\r\nX-Other: o\r\nX-Multi: b, c\r\nAccept: text/html\r\nAccept: */*\r\n",
    )
    .await;
    assert_eq!(seen.header_all("x-multi"), [b"a".as_slice(), b"b, c"]);
    assert_eq!(seen.header_all("accept"), [b"text/html".as_slice(), b"*/*"]);
    assert_eq!(seen.header_all("x-other"), [b"o"]);
}

#[tokio::test]
async fn responses_pass_verbatim() {
    let origin = Upstream::start_with(|req| async move {
        let status: u16 = req.target.trim_start_matches('/').parse().unwrap();
        Response::builder()
            .status(status)
            .header("set-cookie", "a=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT")
            .header("set-cookie", "b=2; Path=/")
            .header("x-spaced", "a,  b ;; c")
            .header("x-empty", "")
            .header(
                "x-latin1",
                http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
            )
            .header("content-type", "application/x-odd")
            .body(full(format!("origin says {status}")))
            .unwrap()
    })
    .await;
    let addr = spawn(ReverseProxy::new("/", origin.url(""))).await;
    let mut client = RawClient::connect(addr).await;
    for status in [200u16, 201, 299, 404, 418, 500, 502, 503] {
        let request = format!("GET /{status} HTTP/1.1\r\nHost: p\r\n\r\n");
        client.send(request.as_bytes()).await;
        let res = client.read_response(false).await;
        assert_eq!(res.status, status);
        assert_eq!(res.body_text(), format!("origin says {status}"));
        assert_eq!(
            res.header_all("set-cookie"),
            [
                b"a=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT".as_slice(),
                b"b=2; Path=/"
            ]
        );
        assert_eq!(res.header_all("x-spaced"), [b"a,  b ;; c"]);
        assert_eq!(res.header_all("x-empty"), [b""]);
        assert_eq!(res.header_all("x-latin1"), [b"caf\xe9"]);
        assert_eq!(
            res.header("content-type").as_deref(),
            Some("application/x-odd")
        );
    }
}

#[tokio::test]
async fn non_utf8_request_header_values_pass() {
    let (mut origin, addr) = setup(ProxyPolicy::new()).await;
    let mut request = b"GET /h HTTP/1.1\r\nHost: proxy.example\r\nX-Bin: caf".to_vec();
    request.extend_from_slice(b"\xe9\xff\r\n\r\n");
    let res = raw_request(addr, &request).await;
    assert_eq!(res.status, 200);
    assert_eq!(origin.next().await.header_all("x-bin"), [b"caf\xe9\xff"]);
}
