use super::*;
use http::Request;

fn parts(method: &str, uri: &str, version: Version, headers: &[(&str, &str)]) -> Parts {
    let mut req = Request::builder().method(method).uri(uri).version(version);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(()).unwrap().into_parts().0
}

/// The status `validate_request` answers, or 0 when it lets the request through.
fn status(method: &str, uri: &str, version: Version, headers: &[(&str, &str)]) -> u16 {
    let mut p = parts(method, uri, version, headers);
    validate_request(&mut p).map_or_else(|e| e.status().as_u16(), |()| 0)
}

fn h11(headers: &[(&str, &str)]) -> u16 {
    status("POST", "/a", Version::HTTP_11, headers)
}

#[test]
fn transfer_codings() {
    let te = |v| h11(&[("host", "h"), ("transfer-encoding", v)]);
    assert_eq!(te("chunked"), 0);
    assert_eq!(te("CHUNKED"), 0);
    assert_eq!(te(" , chunked"), 0);
    assert_eq!(te("gzip, chunked"), 501);
    assert_eq!(te("identity, chunked"), 501);
    assert_eq!(te("chunked, gzip"), 400);
    assert_eq!(te("chunked, chunked"), 400);
    assert_eq!(te("chunked;q=1"), 400);
    assert_eq!(te(""), 400);
    assert_eq!(
        h11(&[
            ("host", "h"),
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked")
        ]),
        400
    );
    assert_eq!(
        h11(&[
            ("host", "h"),
            ("transfer-encoding", "gzip"),
            ("transfer-encoding", "chunked")
        ]),
        501
    );
    let http10 = [("transfer-encoding", "chunked")];
    assert_eq!(status("POST", "/a", Version::HTTP_10, &http10), 400);

    // Transfer-Encoding wins over Content-Length, which goes.
    let mut p = parts(
        "POST",
        "/a",
        Version::HTTP_11,
        &[
            ("host", "h"),
            ("content-length", "4"),
            ("transfer-encoding", "chunked"),
        ],
    );
    validate_request(&mut p).unwrap();
    assert!(!p.headers.contains_key("content-length"));
}

#[test]
fn content_lengths() {
    let cl = |v| h11(&[("host", "h"), ("content-length", v)]);
    assert_eq!(cl("5"), 0);
    assert_eq!(cl("0"), 0);
    assert_eq!(cl("18446744073709551615"), 0);
    for bad in [
        "",
        "+5",
        "-5",
        "0x5",
        "5 5",
        "5.0",
        "1, 2",
        "18446744073709551616",
        "five",
    ] {
        assert_eq!(cl(bad), 400, "{bad:?}");
    }
    let mut p = parts(
        "POST",
        "/a",
        Version::HTTP_11,
        &[
            ("host", "h"),
            ("content-length", "5, 5"),
            ("content-length", "5"),
        ],
    );
    validate_request(&mut p).unwrap();
    let all: Vec<_> = p.headers.get_all("content-length").iter().collect();
    assert_eq!(all, ["5"]);
    assert_eq!(
        h11(&[
            ("host", "h"),
            ("content-length", "5"),
            ("content-length", "6")
        ]),
        400
    );
}

#[test]
fn lookalike_framing_names() {
    assert_eq!(h11(&[("host", "h"), ("content_length", "5")]), 400);
    assert_eq!(h11(&[("host", "h"), ("transfer_encoding", "chunked")]), 400);
    assert_eq!(h11(&[("host", "h"), ("transfer-encoding_", "x")]), 0);
    assert_eq!(h11(&[("host", "h"), ("x_content_length", "5")]), 0);
}

#[test]
fn hosts() {
    let host = |v| status("GET", "/a", Version::HTTP_11, &[("host", v)]);
    for good in [
        "h",
        "H.Example",
        "h:80",
        "h:",
        "127.0.0.1:8080",
        "[::1]",
        "[::1]:443",
        "xn--bcher-kva.example",
        "a%41b",
    ] {
        assert_eq!(host(good), 0, "{good:?}");
    }
    for bad in [
        "a b", "h/evil", "user@h", "h:port", "[::1", "[::1]x", "[]", ":80", "a%4", "h?x", "h#x",
        "a, b",
    ] {
        assert_eq!(host(bad), 400, "{bad:?}");
    }
    assert_eq!(
        status(
            "GET",
            "/a",
            Version::HTTP_11,
            &[("host", "a"), ("host", "a")]
        ),
        400
    );
    assert_eq!(status("GET", "/a", Version::HTTP_11, &[]), 400);
    assert_eq!(status("GET", "/a", Version::HTTP_10, &[]), 0);

    // Without the Host requirement (what every proxy applies itself).
    let mut p = parts("GET", "/a", Version::HTTP_11, &[]);
    check(&mut p, false).unwrap();

    // An empty Host is no Host.
    let mut p = parts("GET", "/a", Version::HTTP_11, &[("host", "")]);
    validate_request(&mut p).unwrap();
    assert!(!p.headers.contains_key("host"));
}

#[test]
fn request_targets() {
    let host = [("host", "proxy.example")];
    // RFC 9112 §3.2.2: the authority replaces Host.
    let mut p = parts("GET", "http://evil.example:81/x", Version::HTTP_11, &host);
    validate_request(&mut p).unwrap();
    assert_eq!(p.headers["host"], "evil.example:81");

    assert_eq!(
        status("GET", "ftp://evil.example/x", Version::HTTP_11, &host),
        400
    );
    assert_eq!(
        status("GET", "http://u:p@evil.example/x", Version::HTTP_11, &host),
        400
    );
    assert_eq!(
        status("GET", "evil.example:80", Version::HTTP_11, &host),
        400
    );
    assert_eq!(status("GET", "*", Version::HTTP_11, &host), 400);
    assert_eq!(status("OPTIONS", "*", Version::HTTP_11, &host), 0);
    assert_eq!(
        status("CONNECT", "evil.example:443", Version::HTTP_11, &host),
        0
    );

    // HTTP/2: Host and :authority must agree (case aside).
    let h2 = |h| {
        status(
            "GET",
            "http://proxy.example/x",
            Version::HTTP_2,
            &[("host", h)],
        )
    };
    assert_eq!(h2("PROXY.example"), 0);
    assert_eq!(h2("evil.example"), 400);
    assert_eq!(
        status("GET", "http://proxy.example/x", Version::HTTP_2, &[]),
        0
    );
}

/// RFC 3986 reg-name, spelled out: the reference the table-driven check must agree with.
fn reg_name_by_the_rfc(host: &[u8]) -> bool {
    let mut i = 0;
    while i < host.len() {
        let b = host[i];
        if b == b'%' {
            match host.get(i + 1..i + 3) {
                Some(h) if h.iter().all(u8::is_ascii_hexdigit) => i += 3,
                _ => return false,
            }
            continue;
        }
        let unreserved = b.is_ascii_alphanumeric() || b"-._~".contains(&b);
        if !unreserved && !b"!$&'()*+,;=".contains(&b) {
            return false;
        }
        i += 1;
    }
    true
}

proptest::proptest! {
    #[test]
    fn reg_name_agrees_with_the_rfc(host in proptest::collection::vec(proptest::num::u8::ANY, 0..24)) {
        proptest::prop_assert_eq!(reg_name(&host), reg_name_by_the_rfc(&host));
    }

    #[test]
    fn reg_name_agrees_on_likely_bytes(host in "[a-zA-Z0-9%._~:@/ -]{0,16}") {
        proptest::prop_assert_eq!(reg_name(host.as_bytes()), reg_name_by_the_rfc(host.as_bytes()));
    }
}

#[test]
fn framing_fields_in_any_order() {
    // The look-alike is refused wherever it stands among the real framing fields.
    assert_eq!(
        h11(&[
            ("host", "h"),
            ("transfer-encoding", "chunked"),
            ("content_length", "5")
        ]),
        400
    );
    // Content-Length beside Transfer-Encoding goes, whichever comes first.
    for order in [
        [("content-length", "5"), ("transfer-encoding", "chunked")],
        [("transfer-encoding", "chunked"), ("content-length", "5")],
    ] {
        let mut p = parts("POST", "/a", Version::HTTP_11, &order);
        p.headers.insert("host", HeaderValue::from_static("h"));
        validate_request(&mut p).unwrap();
        assert!(!p.headers.contains_key("content-length"));
    }
}
