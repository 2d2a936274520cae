use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use tower::{Layer, ServiceExt, service_fn};

use super::rules::{self, MaxForwards, Prepared};
use super::service::{Decision, prepare_request};
use super::{Rfc9110Config, Rfc9110Layer};
use crate::ProxyError;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn request(method: Method, uri: &str, pairs: &[(&str, &str)]) -> Request<Body> {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    *request.headers_mut() = headers(pairs);
    request
}

fn prepared(config: Rfc9110Config) -> Prepared {
    Prepared::new(config)
}

fn with_pseudonym(name: &str) -> Prepared {
    prepared(Rfc9110Config {
        pseudonym: Some(name.into()),
        ..Default::default()
    })
}

fn with_server_names(names: &[&str]) -> Prepared {
    prepared(Rfc9110Config {
        server_names: Some(names.iter().map(|n| n.to_string()).collect()),
        ..Default::default()
    })
}

fn names(map: &HeaderMap) -> Vec<&str> {
    let mut names: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    names
}

// ===== config =====

#[test]
fn config_defaults_match_1_3() {
    let config = Rfc9110Config::default();
    assert!(config.server_names.is_none());
    assert!(config.pseudonym.is_none());
    assert!(config.combine_via);
    assert!(config.preserve_websocket_headers);
    assert_eq!(Prepared::default().received_by(), "proxy");
}

#[test]
fn pseudonym_is_sanitised_into_a_token() {
    assert_eq!(with_pseudonym("my proxy,x").received_by(), "my-proxy-x");
    assert_eq!(with_pseudonym("edge:8080").received_by(), "edge:8080");
    assert_eq!(with_pseudonym("  ").received_by(), "proxy");
    // An empty pseudonym is no pseudonym: no Via loop check on "proxy".
    let config = with_pseudonym("");
    assert!(!config.is_loop(&request(Method::GET, "/", &[("via", "1.1 proxy")])));
}

// ===== loop detection =====

#[test]
fn loop_by_host_header_ignores_port_and_case() {
    let config = with_server_names(&["Edge.Example.com"]);
    let looped = |host: &str| config.is_loop(&request(Method::GET, "/", &[("host", host)]));
    assert!(looped("edge.example.com"));
    assert!(looped("EDGE.example.COM:8443"));
    assert!(looped("edge.example.com."));
    assert!(!looped("other.example.com"));
    assert!(!looped("edge.example.com.evil"));
    assert!(!config.is_loop(&request(Method::GET, "/", &[])));
}

#[test]
fn loop_by_absolute_uri_host() {
    let config = with_server_names(&["edge.example.com"]);
    let absolute = request(Method::GET, "http://edge.example.com:80/x", &[]);
    assert!(config.is_loop(&absolute));
    // The URI's authority wins over `Host` (RFC 9112 §3.2.2).
    let elsewhere = request(
        Method::GET,
        "http://upstream.internal/x",
        &[("host", "edge.example.com")],
    );
    assert!(!config.is_loop(&elsewhere));
}

#[test]
fn loop_by_configured_name_with_port_or_ipv6() {
    let config = with_server_names(&["localhost:3000", "[::1]", "127.0.0.1"]);
    let looped = |host: &str| config.is_loop(&request(Method::GET, "/", &[("host", host)]));
    assert!(looped("localhost"));
    assert!(looped("[::1]:8080"));
    assert!(looped("127.0.0.1:1"));
    assert!(!looped("[::2]"));
    assert!(!looped("not a host"));
}

#[test]
fn empty_server_names_disable_the_check() {
    let config = prepared(Rfc9110Config {
        server_names: Some(HashSet::new()),
        ..Default::default()
    });
    assert!(!config.is_loop(&request(Method::GET, "/", &[("host", "localhost")])));
}

#[test]
fn loop_by_via_pseudonym_on_any_line_and_member() {
    let config = with_pseudonym("edge");
    let looped = |vias: &[&str]| {
        let pairs: Vec<(&str, &str)> = vias.iter().map(|v| ("via", *v)).collect();
        config.is_loop(&request(Method::GET, "/", &pairs))
    };
    assert!(looped(&["1.1 edge"]));
    assert!(looped(&["1.0 fred, HTTP/1.1 EDGE"]));
    assert!(looped(&["1.0 fred", "2 edge (our-version 1)"]));
    assert!(looped(&["1.1 a (x, y), 1.1 edge"]));
    assert!(!looped(&["1.1 edges, 1.1 ledge"]));
    assert!(!looped(&["1.1 fred (edge)"]));
    assert!(!looped(&["1.1 a (comment, 1.1 edge)"]));
    assert!(!looped(&[]));
}

#[test]
fn default_config_does_not_treat_proxy_as_a_loop() {
    let config = Prepared::default();
    assert!(!config.is_loop(&request(Method::GET, "/", &[("via", "1.1 proxy")])));
    assert!(!config.is_loop(&request(
        Method::GET,
        "http://localhost/",
        &[("via", "1.0 proxy, 1.1 proxy")]
    )));
}

#[test]
fn via_members_parse_comments_and_malformed_members() {
    let line = b"1.0 fred, 1.1 p.example.net (Apache/1.1, x), ,lonely, HTTP/2 \"q\"";
    let members: Vec<_> = rules::via_members(line).collect();
    assert_eq!(members.len(), 4);
    let first = members[0].unwrap();
    assert_eq!(
        (first.protocol, first.received_by),
        (&b"1.0"[..], &b"fred"[..])
    );
    let second = members[1].unwrap();
    assert_eq!(second.received_by, b"p.example.net");
    assert_eq!(members[2], None);
    assert_eq!(members[3].unwrap().protocol, b"HTTP/2");
    // Unbalanced input must not panic.
    assert_eq!(rules::via_members(b"1.1 a (((, \\").count(), 1);
    assert_eq!(rules::via_members(b")),,(").flatten().count(), 0);
}

// ===== Max-Forwards =====

#[test]
fn max_forwards_only_for_trace_and_options() {
    let mf = |method: Method, value: &str| {
        rules::max_forwards(&method, &headers(&[("max-forwards", value)]))
    };
    assert_eq!(mf(Method::TRACE, "0"), MaxForwards::Answer);
    assert_eq!(mf(Method::OPTIONS, "0"), MaxForwards::Answer);
    assert_eq!(mf(Method::OPTIONS, "5"), MaxForwards::Forward(4));
    assert_eq!(mf(Method::TRACE, " 1 "), MaxForwards::Forward(0));
    assert_eq!(mf(Method::GET, "0"), MaxForwards::Ignore);
    assert_eq!(mf(Method::POST, "3"), MaxForwards::Ignore);
    for bad in [
        "",
        "-1",
        "+3",
        "1.0",
        "abc",
        "4294967296",
        "99999999999999999999",
    ] {
        assert_eq!(mf(Method::TRACE, bad), MaxForwards::Ignore, "{bad:?}");
    }
    assert_eq!(
        mf(Method::TRACE, "4294967295"),
        MaxForwards::Forward(u32::MAX - 1)
    );
    assert_eq!(
        rules::max_forwards(&Method::TRACE, &HeaderMap::new()),
        MaxForwards::Ignore
    );
}

#[test]
fn trace_echo_is_http_wire_form_without_credentials() {
    let request = request(
        Method::TRACE,
        "/path?q=1",
        &[
            ("host", "edge.example"),
            ("max-forwards", "0"),
            ("authorization", "Bearer secret-token"),
            ("proxy-authorization", "Basic c2VjcmV0"),
            ("cookie", "session=secret"),
            ("x-api-key", "secret-key"),
            ("x-trace-me", "yes"),
        ],
    );
    let echo = rules::trace_echo(&request);
    let text = std::str::from_utf8(&echo).unwrap();
    assert!(text.starts_with("TRACE /path?q=1 HTTP/1.1\r\n"), "{text}");
    assert!(text.contains("\r\nhost: edge.example\r\n"), "{text}");
    assert!(text.contains("\r\nmax-forwards: 0\r\n"), "{text}");
    assert!(text.contains("\r\nx-trace-me: yes\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "{text}");
    assert!(!text.contains("secret"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("authorization"),
        "{text}"
    );
    assert!(!text.to_ascii_lowercase().contains("cookie"), "{text}");
}

#[test]
fn trace_echo_of_an_http2_request_carries_host() {
    let mut request = request(Method::TRACE, "https://edge.example/x", &[]);
    *request.version_mut() = Version::HTTP_2;
    let echo = rules::trace_echo(&request);
    assert_eq!(
        &echo[..],
        b"TRACE https://edge.example/x HTTP/2.0\r\nhost: edge.example\r\n\r\n"
    );
}

#[tokio::test]
async fn trace_and_options_local_responses() {
    let config = Prepared::default();
    let mut trace = request(
        Method::TRACE,
        "/t",
        &[("max-forwards", "0"), ("cookie", "a=b")],
    );
    let Decision::Respond(response) = prepare_request(&config, &mut trace) else {
        panic!("TRACE with Max-Forwards 0 must be answered locally");
    };
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "message/http");
    assert!(!response.headers().contains_key(header::MAX_FORWARDS));
    let length: usize = response.headers()[header::CONTENT_LENGTH]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), length);
    assert!(body.starts_with(b"TRACE /t HTTP/1.1\r\n"));

    let mut options = request(Method::OPTIONS, "*", &[("max-forwards", "0")]);
    let Decision::Respond(response) = prepare_request(&config, &mut options) else {
        panic!("OPTIONS with Max-Forwards 0 must be answered locally");
    };
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::ALLOW], rules::ALLOW);
    assert_eq!(response.headers()[header::CONTENT_LENGTH], "0");
    assert!(!response.headers().contains_key(header::MAX_FORWARDS));
}

#[test]
fn max_forwards_is_decremented_and_other_methods_untouched() {
    let config = Prepared::default();
    let mut options = request(Method::OPTIONS, "/", &[("max-forwards", "3")]);
    assert!(matches!(
        prepare_request(&config, &mut options),
        Decision::Forward { .. }
    ));
    assert_eq!(options.headers()[header::MAX_FORWARDS], "2");

    let mut get = request(Method::GET, "/", &[("max-forwards", "0")]);
    assert!(matches!(
        prepare_request(&config, &mut get),
        Decision::Forward { .. }
    ));
    assert_eq!(get.headers()[header::MAX_FORWARDS], "0");
}

// ===== hop-by-hop =====

#[test]
fn strips_the_hop_by_hop_list() {
    let mut map = headers(&[
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("proxy-authenticate", "Basic"),
        ("proxy-authorization", "Basic abc"),
        ("te", "gzip"),
        ("trailer", "x-checksum"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "h2c"),
        ("content-type", "text/plain"),
        ("x-end-to-end", "1"),
    ]);
    rules::strip_hop_by_hop(&mut map, false);
    assert_eq!(names(&map), ["content-type", "x-end-to-end"]);
}

#[test]
fn strips_every_field_named_in_every_connection_line() {
    let mut map = headers(&[
        ("connection", "X-One ,x-two"),
        ("connection", "AUTHORIZATION, , cookie, not a name"),
        ("x-one", "1"),
        ("x-two", "2"),
        ("authorization", "Bearer t"),
        ("cookie", "a=b"),
        ("content-type", "text/plain"),
    ]);
    rules::strip_hop_by_hop(&mut map, false);
    assert_eq!(names(&map), ["content-type"]);
}

#[test]
fn te_trailers_survives_alone() {
    let mut map = headers(&[("te", "trailers"), ("connection", "TE")]);
    rules::strip_hop_by_hop(&mut map, false);
    assert_eq!(map.get_all(header::TE).iter().count(), 1);
    assert_eq!(map[header::TE], "trailers");
    assert!(!map.contains_key(header::CONNECTION));

    let mut map = headers(&[("te", "Trailers, ")]);
    rules::strip_hop_by_hop(&mut map, false);
    assert_eq!(map[header::TE], "trailers");

    let mut map = headers(&[("te", "trailers, deflate;q=0.5")]);
    rules::strip_hop_by_hop(&mut map, false);
    assert!(!map.contains_key(header::TE));
}

#[test]
fn upgrade_detection() {
    let upgrade = |pairs: &[(&str, &str)]| rules::is_upgrade_request(&headers(pairs));
    assert!(upgrade(&[
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket")
    ]));
    assert!(upgrade(&[
        ("connection", "keep-alive"),
        ("connection", "upgrade"),
        ("upgrade", "h2c")
    ]));
    assert!(upgrade(&[
        ("upgrade", "websocket"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ]));
    assert!(!upgrade(&[("connection", "upgrade")]));
    assert!(!upgrade(&[("upgrade", "websocket")]));
    assert!(!upgrade(&[
        ("connection", "upgraded"),
        ("upgrade", "websocket")
    ]));
}

#[test]
fn upgrade_fields_kept_only_when_asked() {
    let original = headers(&[
        ("connection", "keep-alive, Upgrade, x-hop"),
        ("upgrade", "websocket"),
        ("x-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ]);
    let mut kept = original.clone();
    rules::strip_hop_by_hop(&mut kept, true);
    assert_eq!(kept[header::CONNECTION], "upgrade");
    assert_eq!(kept[header::UPGRADE], "websocket");
    assert!(!kept.contains_key("x-hop"));
    assert!(!kept.contains_key("keep-alive"));
    assert!(kept.contains_key(header::SEC_WEBSOCKET_KEY));

    let mut stripped = original;
    rules::strip_hop_by_hop(&mut stripped, false);
    assert!(!stripped.contains_key(header::CONNECTION));
    assert!(!stripped.contains_key(header::UPGRADE));
}

#[test]
fn preserve_websocket_headers_switch() {
    let ws = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];
    let mut on = request(Method::GET, "/ws", &ws);
    assert!(matches!(
        prepare_request(&Prepared::default(), &mut on),
        Decision::Forward { upgrade: true }
    ));
    assert_eq!(on.headers()[header::UPGRADE], "websocket");

    let off = prepared(Rfc9110Config {
        preserve_websocket_headers: false,
        ..Default::default()
    });
    let mut stripped = request(Method::GET, "/ws", &ws);
    assert!(matches!(
        prepare_request(&off, &mut stripped),
        Decision::Forward { upgrade: false }
    ));
    assert!(!stripped.headers().contains_key(header::UPGRADE));
    assert!(!stripped.headers().contains_key(header::CONNECTION));
}

// ===== Via =====

#[test]
fn via_protocol_per_version() {
    assert_eq!(rules::via_protocol(Version::HTTP_10), "1.0");
    assert_eq!(rules::via_protocol(Version::HTTP_11), "1.1");
    assert_eq!(rules::via_protocol(Version::HTTP_2), "2");
    assert_eq!(rules::via_protocol(Version::HTTP_3), "3");
}

#[test]
fn request_via_appends_this_hop() {
    let default = Prepared::default();
    let via = |config: &Prepared, pairs: &[(&str, &str)], version| {
        config.request_via(&headers(pairs), version)
    };
    assert_eq!(via(&default, &[], Version::HTTP_11), "1.1 proxy");
    assert_eq!(via(&default, &[], Version::HTTP_2), "2 proxy");
    assert_eq!(
        via(
            &default,
            &[("via", "1.0 fred"), ("via", " 1.1 wilma ")],
            Version::HTTP_11
        ),
        "1.0 fred, 1.1 wilma, 1.1 proxy"
    );
    // Without a pseudonym nothing is combined, even with combine_via.
    assert_eq!(
        via(&default, &[("via", "1.1 a, 1.1 b")], Version::HTTP_11),
        "1.1 a, 1.1 b, 1.1 proxy"
    );
    let edge = with_pseudonym("edge");
    assert_eq!(via(&edge, &[], Version::HTTP_10), "1.0 edge");
}

#[test]
fn combine_via_collapses_a_single_protocol_chain() {
    let edge = with_pseudonym("edge");
    let via = |pairs: &[(&str, &str)], version| edge.request_via(&headers(pairs), version);
    assert_eq!(
        via(
            &[("via", "1.1 a, HTTP/1.1 b (x)"), ("via", "1.1 c")],
            Version::HTTP_11
        ),
        "1.1 edge"
    );
    assert_eq!(
        via(&[("via", "HTTP/2.0 a, 2 b")], Version::HTTP_2),
        "2 edge"
    );
    // Mixed protocols, another protocol name or a malformed member: append.
    assert_eq!(
        via(&[("via", "1.0 a, 1.1 b")], Version::HTTP_11),
        "1.0 a, 1.1 b, 1.1 edge"
    );
    assert_eq!(
        via(&[("via", "SHTTP/1.1 a")], Version::HTTP_11),
        "SHTTP/1.1 a, 1.1 edge"
    );
    assert_eq!(via(&[("via", "1.1")], Version::HTTP_11), "1.1, 1.1 edge");

    let no_combine = prepared(Rfc9110Config {
        pseudonym: Some("edge".into()),
        combine_via: false,
        ..Default::default()
    });
    assert_eq!(
        no_combine.request_via(&headers(&[("via", "1.1 a")]), Version::HTTP_11),
        "1.1 a, 1.1 edge"
    );
}

#[test]
fn extend_via_keeps_obs_text() {
    let mut map = HeaderMap::new();
    map.insert(
        header::VIA,
        HeaderValue::from_bytes(b"1.1 caf\xe9").unwrap(),
    );
    let ours = rules::via_element("1.1", "proxy");
    assert_eq!(
        rules::extend_via(&map, &ours).as_bytes(),
        b"1.1 caf\xe9, 1.1 proxy"
    );
}

// ===== the service =====

type Seen = Arc<Mutex<Vec<Request<()>>>>;

/// An inner service that records each request and answers with `response`'s headers.
fn recording(
    seen: Seen,
    status: StatusCode,
    pairs: &'static [(&'static str, &'static str)],
) -> impl tower::Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    service_fn(move |request: Request<Body>| {
        let seen = seen.clone();
        async move {
            let (parts, _) = request.into_parts();
            seen.lock().unwrap().push(Request::from_parts(parts, ()));
            let mut response = Response::new(Body::from("upstream"));
            *response.status_mut() = status;
            *response.headers_mut() = headers(pairs);
            Ok(response)
        }
    })
}

#[tokio::test]
async fn loop_is_answered_508_without_calling_inner() {
    let seen = Seen::default();
    let service = Rfc9110Layer::with_config(Rfc9110Config {
        pseudonym: Some("edge".into()),
        ..Default::default()
    })
    .layer(recording(seen.clone(), StatusCode::OK, &[]));
    let response = service
        .oneshot(request(Method::GET, "/", &[("via", "1.1 edge")]))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::LOOP_DETECTED);
    assert!(response.extensions().get::<ProxyError>().unwrap().is_loop());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"Loop Detected");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn response_rules_strip_and_extend_via() {
    let seen = Seen::default();
    let service = Rfc9110Layer::new().layer(recording(
        seen.clone(),
        StatusCode::OK,
        &[
            ("via", "1.1 upstream-cache"),
            ("connection", "x-secret, close"),
            ("x-secret", "s"),
            ("keep-alive", "timeout=5"),
            ("proxy-authenticate", "Basic"),
            ("content-type", "text/plain"),
        ],
    ));
    let response = service
        .oneshot(request(
            Method::OPTIONS,
            "/",
            &[("max-forwards", "4"), ("connection", "x-in"), ("x-in", "1")],
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(names(response.headers()), ["content-type", "via"]);
    assert_eq!(
        response.headers()[header::VIA],
        "1.1 upstream-cache, 1.1 proxy"
    );

    let seen = seen.lock().unwrap();
    let forwarded = seen[0].headers();
    assert_eq!(names(forwarded), ["max-forwards", "via"]);
    assert_eq!(forwarded[header::MAX_FORWARDS], "3");
    assert_eq!(forwarded[header::VIA], "1.1 proxy");
}

#[tokio::test]
async fn switching_protocols_keeps_upgrade_fields_for_an_upgrade() {
    const SWITCH: &[(&str, &str)] = &[
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    ];
    let ws = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];
    let service = Rfc9110Layer::new().layer(recording(
        Seen::default(),
        StatusCode::SWITCHING_PROTOCOLS,
        SWITCH,
    ));
    let response = service
        .clone()
        .oneshot(request(Method::GET, "/ws", &ws))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()[header::CONNECTION], "upgrade");
    assert_eq!(response.headers()[header::UPGRADE], "websocket");

    // A 101 to a request that did not ask for an upgrade gets no upgrade fields.
    let response = service
        .oneshot(request(Method::GET, "/", &[]))
        .await
        .unwrap();
    assert!(!response.headers().contains_key(header::UPGRADE));
    assert!(!response.headers().contains_key(header::CONNECTION));

    let off = Rfc9110Layer::with_config(Rfc9110Config {
        preserve_websocket_headers: false,
        ..Default::default()
    })
    .layer(recording(
        Seen::default(),
        StatusCode::SWITCHING_PROTOCOLS,
        SWITCH,
    ));
    let response = off.oneshot(request(Method::GET, "/ws", &ws)).await.unwrap();
    assert!(!response.headers().contains_key(header::UPGRADE));
}

#[tokio::test]
async fn response_via_uses_the_response_version() {
    let inner = service_fn(|_request: Request<Body>| async {
        let mut response = Response::new(Body::empty());
        *response.version_mut() = Version::HTTP_2;
        Ok::<_, Infallible>(response)
    });
    let service = Rfc9110Layer::with_config(Rfc9110Config {
        pseudonym: Some("edge".into()),
        ..Default::default()
    })
    .layer(inner);
    let response = service
        .oneshot(request(Method::GET, "/", &[]))
        .await
        .unwrap();
    assert_eq!(response.headers()[header::VIA], "2 edge");
}

#[test]
fn service_is_nameable_clone_and_debug() {
    let service: super::Rfc9110<()> = super::Rfc9110::new(());
    let debug = format!("{:?}", service.clone());
    assert!(debug.starts_with("Rfc9110"), "{debug}");
    let layer = Rfc9110Layer::default();
    assert!(format!("{layer:?}").starts_with("Rfc9110Layer"));
}
