use super::*;
use proptest::prelude::*;

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[test]
fn strips_hop_by_hop_and_what_connection_names() {
    let mut h = map(&[
        ("connection", "keep-alive, X-Secret"),
        ("connection", "authorization"),
        ("x-secret", "1"),
        ("authorization", "Bearer t"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("proxy-authorization", "Basic x"),
        ("te", "gzip"),
        ("trailer", "x-t"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("x-keep", "yes"),
        ("cookie", "a=b"),
    ]);
    strip_hop_by_hop(&mut h, false);
    let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["cookie", "trailer", "x-keep"]);
}

#[test]
fn content_length_goes_with_transfer_encoding() {
    let mut h = map(&[("content-length", "100"), ("transfer-encoding", "chunked")]);
    strip_hop_by_hop(&mut h, false);
    assert!(h.is_empty(), "{h:?}");
    let mut h = map(&[("content-length", "100"), ("connection", "close")]);
    strip_hop_by_hop(&mut h, false);
    assert_eq!(h.get("content-length").unwrap(), "100");
}

#[test]
fn a_connection_line_with_obs_text_still_names_headers() {
    // Found by the `headers` fuzz target: the line was skipped whole (not `to_str`), so
    // `x-secret` was forwarded.
    let mut h = map(&[("x-secret", "1"), ("x-keep", "yes")]);
    h.append(
        header::CONNECTION,
        HeaderValue::from_bytes(b"keep-al\xffive, x-secret").unwrap(),
    );
    strip_hop_by_hop(&mut h, false);
    let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["x-keep"]);
}

#[test]
fn te_trailers_survives() {
    let mut h = map(&[("te", "trailers"), ("connection", "te")]);
    strip_hop_by_hop(&mut h, false);
    assert_eq!(h.get("te").unwrap(), "trailers");
    let mut h = map(&[("te", "gzip, trailers")]);
    strip_hop_by_hop(&mut h, false);
    assert_eq!(h.get("te").unwrap(), "trailers");
}

#[test]
fn upgrade_kept_on_upgrade() {
    let mut h = map(&[
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
    ]);
    assert!(is_upgrade_request(&h));
    strip_hop_by_hop(&mut h, true);
    assert_eq!(h.get("connection").unwrap(), "upgrade");
    assert_eq!(h.get("upgrade").unwrap(), "websocket");
    assert!(!is_upgrade_request(&map(&[("upgrade", "websocket")])));
    assert!(!is_upgrade_request(&map(&[("connection", "upgrade")])));
    assert!(is_upgrade_request(&map(&[
        ("connection", "UPGRADE"),
        ("upgrade", "x")
    ])));
}

#[test]
fn via_loop_detection_and_append() {
    let mut h = map(&[("via", "1.0 fred, 1.1 p.example.net (comment)")]);
    assert!(via_has_pseudonym(&h, "P.example.net"));
    assert!(!via_has_pseudonym(&h, "edge"));
    append_via(&mut h, Version::HTTP_2, "edge");
    assert_eq!(
        h.get("via").unwrap(),
        "1.0 fred, 1.1 p.example.net (comment), 2 edge"
    );
    assert!(via_has_pseudonym(&h, "edge"));
}

#[test]
fn forwarding_append_trusted() {
    let host = HeaderValue::from_static("example.com");
    let mut h = map(&[("x-forwarded-for", "1.1.1.1")]);
    let info = https_client_10_0_0_2(&host);
    apply_forwarding(&mut h, &info, true, true, true);
    assert_eq!(h.get("x-forwarded-for").unwrap(), "1.1.1.1, 10.0.0.2");
    assert_eq!(h.get("x-forwarded-host").unwrap(), "example.com");
    assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
    assert_eq!(
        h.get("forwarded").unwrap(),
        "for=10.0.0.2;host=\"example.com\";proto=https"
    );
}

#[test]
fn forwarding_untrusted_rebuilds() {
    let mut h = map(&[
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-host", "evil"),
        ("forwarded", "for=6.6.6.6"),
    ]);
    let info = ClientInfo {
        peer: Some("::1".parse().unwrap()),
        host: None,
        proto: "http",
    };
    apply_forwarding(&mut h, &info, false, true, true);
    assert_eq!(h.get("x-forwarded-for").unwrap(), "::1");
    assert!(h.get("x-forwarded-host").is_none());
    assert_eq!(h.get("forwarded").unwrap(), "for=\"[::1]\";proto=http");
}

#[test]
fn forwarding_needs_a_peer() {
    let mut h = HeaderMap::new();
    let info = ClientInfo {
        peer: None,
        host: None,
        proto: "http",
    };
    apply_forwarding(&mut h, &info, true, true, true);
    assert!(h.is_empty());
}

/// The client of the trusted/untrusted forwarding tests: 10.0.0.2 over https, asking for
/// `host`.
fn https_client_10_0_0_2(host: &HeaderValue) -> ClientInfo<'_> {
    ClientInfo {
        peer: Some("10.0.0.2".parse().unwrap()),
        host: Some(host),
        proto: "https",
    }
}

/// The fields a property test's client sent, as a map.
fn sent_map(sent: &[(&str, String)]) -> HeaderMap {
    let pairs: Vec<(&str, &str)> = sent.iter().map(|(n, v)| (*n, v.as_str())).collect();
    map(&pairs)
}

const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

#[test]
fn ipv4_text_edges() {
    for text in [
        "0.0.0.0",
        "10.0.0.1",
        "100.20.3.255",
        "255.255.255.255",
        "9.99.199.200",
    ] {
        let mut buf = [0u8; 15];
        assert_eq!(ipv4_text(text.parse().unwrap(), &mut buf), text);
    }
}

proptest! {
    #[test]
    fn ipv4_text_is_what_display_writes(bits in any::<u32>()) {
        let ip = std::net::Ipv4Addr::from(bits);
        let mut buf = [0u8; 15];
        prop_assert_eq!(ipv4_text(ip, &mut buf), ip.to_string());
    }

    #[test]
    fn nothing_hop_by_hop_survives(
        names in proptest::collection::vec("[a-z][a-z-]{0,8}", 0..6),
        hop in proptest::collection::vec(proptest::sample::select(HOP), 0..4),
        listed in proptest::collection::vec("[a-z][a-z-]{0,8}", 0..3),
    ) {
        let mut h = HeaderMap::new();
        for n in names.iter().chain(listed.iter()) {
            h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_static("v"));
        }
        for n in &hop {
            // A value that can never be a header name, so it names nothing in Connection.
            h.append(HeaderName::from_static(n), HeaderValue::from_static("(hop)"));
        }
        if !listed.is_empty() {
            h.append(header::CONNECTION, HeaderValue::from_str(&listed.join(", ")).unwrap());
        }
        strip_hop_by_hop(&mut h, false);
        for n in HOP {
            prop_assert!(!h.contains_key(*n), "{} survived", n);
        }
        for n in &listed {
            prop_assert!(!h.contains_key(n.as_str()), "{} named in Connection survived", n);
        }
        for n in &names {
            if !listed.contains(n) && !HOP.contains(&n.as_str()) {
                prop_assert!(h.contains_key(n.as_str()), "{} was removed", n);
            }
        }
    }
}

proptest! {
    /// Untrusted, whatever the client sent of the four forwarding headers (on one line or
    /// several, among other fields) is replaced by exactly one line each, ours; the other
    /// fields stay (`HeaderMap::remove` may reorder them).
    #[test]
    fn forwarding_untrusted_leaves_only_ours(
        sent in proptest::collection::vec(
            (
                proptest::sample::select(&[
                    "x-forwarded-for",
                    "x-forwarded-host",
                    "x-forwarded-proto",
                    "forwarded",
                    "x-forwarded",
                    "accept",
                    "host",
                ][..]),
                "[a-z0-9.=;]{0,8}",
            ),
            0..8,
        ),
    ) {
        let mut h = sent_map(&sent);
        let others = |h: &HeaderMap| {
            h.iter()
                .filter(|(n, _)| forwarding_bit(n) == 0)
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect::<Vec<_>>()
        };
        let sorted = |mut fields: Vec<_>| {
            fields.sort();
            fields
        };
        let before = others(&h);
        let host = HeaderValue::from_static("example.com");
        let info = https_client_10_0_0_2(&host);
        apply_forwarding(&mut h, &info, false, true, true);
        prop_assert_eq!(sorted(others(&h)), sorted(before));
        let one = |name: &str| h.get_all(name).iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>();
        prop_assert_eq!(one("x-forwarded-for"), vec!["10.0.0.2".to_owned()]);
        prop_assert_eq!(one("x-forwarded-host"), vec!["example.com".to_owned()]);
        prop_assert_eq!(one("x-forwarded-proto"), vec!["https".to_owned()]);
        prop_assert_eq!(
            one("forwarded"),
            vec!["for=10.0.0.2;host=\"example.com\";proto=https".to_owned()]
        );
    }

    /// Trusted, what the client sent stays: its X-Forwarded-Host and -Proto as they were,
    /// and our address appended to its X-Forwarded-For and Forwarded.
    #[test]
    fn forwarding_trusted_keeps_what_was_sent(
        sent in proptest::collection::vec(
            (
                proptest::sample::select(&[
                    "x-forwarded-for",
                    "x-forwarded-host",
                    "x-forwarded-proto",
                    "forwarded",
                    "accept",
                ][..]),
                "[a-z0-9.=]{1,8}",
            ),
            0..6,
        ),
    ) {
        let mut h = sent_map(&sent);
        let host = HeaderValue::from_static("example.com");
        let info = https_client_10_0_0_2(&host);
        apply_forwarding(&mut h, &info, true, true, true);
        let sent_of = |name: &str| sent.iter().filter(|(n, _)| *n == name).map(|(_, v)| v.clone()).collect::<Vec<_>>();
        let now = |name: &str| h.get_all(name).iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>();
        for name in ["x-forwarded-host", "x-forwarded-proto"] {
            let expected = if sent_of(name).is_empty() {
                vec![if name == "x-forwarded-host" { "example.com".to_owned() } else { "https".to_owned() }]
            } else {
                sent_of(name)
            };
            prop_assert_eq!(now(name), expected);
        }
        let mut xff = sent_of("x-forwarded-for");
        xff.push("10.0.0.2".to_owned());
        prop_assert_eq!(now("x-forwarded-for"), vec![xff.join(", ")]);
        let mut fwd = sent_of("forwarded");
        fwd.push("for=10.0.0.2;host=\"example.com\";proto=https".to_owned());
        prop_assert_eq!(now("forwarded"), vec![fwd.join(", ")]);
    }
}
