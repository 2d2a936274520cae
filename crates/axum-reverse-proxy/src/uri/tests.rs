use super::*;
use proptest::prelude::*;

fn join(base: &str, target: &str, request: &str) -> String {
    let target = Target::parse(target).unwrap();
    let uri: Uri = request.parse().unwrap();
    join_path_and_query(normalize_base(base), &target, uri.path(), uri.query(), true)
}

#[test]
fn documented_table() {
    let cases = [
        ("/api", "http://u/bar", "/api", "/bar"),
        ("/api", "http://u/bar", "/api/", "/bar/"),
        ("/api", "http://u/bar", "/api/x?y=1", "/bar/x?y=1"),
        ("/api", "http://u/base/", "/api", "/base/"),
        ("/api", "http://u/base/", "/api?x=1", "/base/?x=1"),
        ("/api", "http://u/base/", "/api/x", "/base/x"),
        ("/api", "http://u", "/api/api/x", "/api/x"),
        ("/api", "http://u", "/api", "/"),
        ("/api", "http://u", "/api/", "/"),
        ("/api/", "http://u", "/api/x", "/x"),
        ("/", "http://u/api", "/", "/api"),
        ("", "http://u/api", "/", "/api"),
        ("/", "http://u/api", "/x/", "/api/x/"),
        ("/proxy", "http://u/api", "/proxy?foo=bar", "/api?foo=bar"),
        ("/p", "http://u/t?k=v", "/p?q=1", "/t?k=v&q=1"),
        ("/p", "http://u/t?k=v", "/p", "/t?k=v"),
        ("/p", "http://u/t?k=v", "/p?", "/t?k=v"),
        ("/p", "http://u/t", "/p?", "/t?"),
        ("/api", "http://u", "/other", "/other"),
        ("/api", "http://u", "/apiary", "/apiary"),
        ("/foo%20bar", "http://u", "/foo%20bar/baz", "/baz"),
        ("/foo%20bar", "http://u", "/foo%20barista", "/foo%20barista"),
        ("/", "http://u", "/a//b/%2F/../c", "/a//b/%2F/../c"),
        ("/", "http://u", "//x", "//x"),
        ("/", "localhost:3000", "/x", "/x"),
    ];
    for (base, target, request, expected) in cases {
        assert_eq!(
            join(base, target, request),
            expected,
            "B={base} T={target} req={request}"
        );
    }
}

#[test]
fn no_strip_when_already_nested() {
    let target = Target::parse("http://u/t").unwrap();
    assert_eq!(
        join_path_and_query("/api", &target, "/api/x", None, false),
        "/t/api/x"
    );
    assert_eq!(join_path_and_query("/api", &target, "/", None, false), "/t");
}

#[test]
fn target_parsing() {
    let t = Target::parse("http://[::1]:8080/base/?a=b").unwrap();
    assert_eq!(t.authority().host(), "[::1]");
    assert_eq!(t.authority().port_u16(), Some(8080));
    assert_eq!(t.host_header(), "[::1]:8080");
    assert_eq!(t.query.as_deref(), Some("a=b"));
    assert!(t.trailing_slash);
    assert_eq!(t.path, "/base");
    let t = Target::parse("https://example.com").unwrap();
    assert!(t.is_https());
    let t = Target::parse("wss://example.com").unwrap();
    assert!(t.is_https());
    let t = Target::parse("http://host:/x").unwrap();
    assert_eq!(
        t.authority().port_u16(),
        None,
        "an empty port is the default one"
    );
    let t = Target::parse("localhost:3000").unwrap();
    assert!(!t.is_https());
    assert_eq!(t.as_str(), "localhost:3000");
    for bad in [
        "",
        "not a uri",
        "/just/a/path",
        "ftp://x",
        "http://user:pw@host",
        "http://",
        // Found by the template fuzz target: `http::Uri` takes these ports as text.
        "http://host:80x/",
        "http://host:65536",
        "http://[::1]:8o",
    ] {
        let err = Target::parse(bad).expect_err(bad);
        assert_eq!(err.target(), bad);
    }
}

#[test]
fn a_server_name_changes_host_and_tls_name_but_not_the_address() {
    let named = |url: &str, name: &str| Target::parse(url).unwrap().with_server_name(name);

    let t = named("http://127.0.0.1:8080/base", "backend.test.").unwrap();
    assert_eq!(t.host_header(), "backend.test:8080");
    assert_eq!(t.server_name(), Some("backend.test"));
    assert_eq!(t.authority().as_str(), "127.0.0.1:8080");
    assert_eq!(t.as_str(), "http://127.0.0.1:8080/base");
    assert_eq!(t.pool_key().tls_name(), "backend.test");

    // The scheme's default port is left out of Host.
    let t = named("https://[2001:db8::1]:443", "backend.test").unwrap();
    assert_eq!(t.host_header(), "backend.test");
    assert_eq!(t.authority().host(), "[2001:db8::1]");
    let t = named("http://10.0.0.1:80", "web.test").unwrap();
    assert_eq!(t.host_header(), "web.test");
    let t = named("https://10.0.0.1:80", "web.test").unwrap();
    assert_eq!(t.host_header(), "web.test:80");

    // An IPv6 name is bracketed in Host; the name of the URL's own host changes nothing.
    let t = named("http://10.0.0.1:8080", "2001:db8::7").unwrap();
    assert_eq!(t.host_header(), "[2001:db8::7]:8080");
    assert_eq!(t.pool_key().tls_name(), "2001:db8::7");
    let t = named("http://[::1]:8080", "[::1]").unwrap();
    assert_eq!(t.server_name(), None);
    assert_eq!(t.pool_key().tls_name(), "::1");
    let t = named("http://Example.com:8080", "example.com").unwrap();
    assert_eq!(t.server_name(), None);
    assert_eq!(t.host_header(), "Example.com:8080");

    for bad in ["", ".", "a b", "user@host", "host/path", "ho\nst", "a:b:c"] {
        assert!(named("http://10.0.0.1:8080", bad).is_err(), "{bad:?}");
    }
}

#[test]
fn pool_keys_tell_names_and_addresses_apart() {
    let key = |url: &str, name: Option<&str>| {
        let t = Target::parse(url).unwrap();
        let t = match name {
            Some(name) => t.with_server_name(name).unwrap(),
            None => t,
        };
        t.pool_key().clone()
    };
    let a_on_1 = key("https://10.0.0.1:443", Some("a.test"));
    assert_eq!(
        a_on_1,
        key("https://10.0.0.1:443/other/path", Some("a.test"))
    );
    // Two names on one address, one name on two addresses, a name or none: all apart.
    assert_ne!(a_on_1, key("https://10.0.0.1:443", Some("b.test")));
    assert_ne!(a_on_1, key("https://10.0.0.2:443", Some("a.test")));
    assert_ne!(a_on_1, key("https://10.0.0.1:443", None));
    assert_ne!(a_on_1, key("http://10.0.0.1:443", Some("a.test")));
}

fn segment() -> impl Strategy<Value = String> {
    // Raw path bytes a client may send, percent-encodings and dots included.
    proptest::string::string_regex("([a-zA-Z0-9._~-]|%2F|%20|%25){0,6}").unwrap()
}

fn path() -> impl Strategy<Value = String> {
    proptest::collection::vec(segment(), 1..5).prop_map(|segs| format!("/{}", segs.join("/")))
}

fn query() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(proptest::string::string_regex("[a-z0-9=&%]{0,10}").unwrap())
}

#[test]
fn an_absolute_target_without_a_path_goes_upstream_with_one() {
    let target = Target::parse("http://u").unwrap();
    for (request, sent) in [
        ("http://h?x=1", "/?x=1"),
        ("http://h", "/"),
        ("/a?b", "/a?b"),
    ] {
        let uri: Uri = request.parse().unwrap();
        let upstream = upstream_path("", &target, &uri, true).into_path_and_query();
        assert_eq!(upstream.unwrap().as_str(), sent, "{request}");
    }
}

proptest! {
    #[test]
    fn output_is_a_valid_path_and_query(base in path(), tpath in path(), p in path(), q in query()) {
        let target = Target::parse(&format!("http://u{tpath}")).unwrap();
        let out = join_path_and_query(normalize_base(&base), &target, &p, q.as_deref(), true);
        prop_assert!(out.starts_with('/'));
        prop_assert!(out.parse::<http::uri::PathAndQuery>().is_ok(), "{}", out);
    }

    #[test]
    fn remainder_is_kept_verbatim_and_stripped_once(base in path(), rest in path(), tpath in path(), q in query()) {
        let nb = normalize_base(&base).to_owned();
        let target = Target::parse(&format!("http://u{tpath}")).unwrap();
        // The request is base + base + rest: only one copy of the base may go.
        let request = format!("{nb}{nb}{rest}");
        let out = join_path_and_query(&nb, &target, &request, q.as_deref(), true);
        let expected_path = format!("{}{nb}{rest}", target.path);
        let (out_path, out_query) = match out.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (out.clone(), None),
        };
        if nb.is_empty() && request == "/" {
            prop_assert!(out_path.starts_with(&target.path));
        } else {
            prop_assert_eq!(out_path, expected_path);
        }
        prop_assert_eq!(out_query, q);
    }

    #[test]
    fn identity_for_a_bare_root_target(p in path(), q in query()) {
        let target = Target::parse("http://u").unwrap();
        let out = join_path_and_query("", &target, &p, q.as_deref(), true);
        let expected = match &q { Some(q) => format!("{p}?{q}"), None => p.clone() };
        prop_assert_eq!(out, expected);
    }

    #[test]
    fn the_request_path_shared_or_joined_is_what_the_rules_build(
        base in prop_oneof![Just(String::new()), path()],
        tpath in prop_oneof![Just(String::new()), Just("/".to_owned()), path()],
        tquery in proptest::option::of("[a-z]{1,3}=[0-9]{1,2}"),
        p in path(),
        q in query(),
        absolute in any::<bool>(),
        strip in any::<bool>(),
    ) {
        let tquery = tquery.map(|tq| format!("?{tq}")).unwrap_or_default();
        let target = Target::parse(&format!("http://u{tpath}{tquery}")).unwrap();
        let request = match &q { Some(q) => format!("{p}?{q}"), None => p.clone() };
        let request = if absolute { format!("http://h{request}") } else { request };
        let uri: Uri = request.parse().unwrap();
        let base = normalize_base(&base);
        let joined = join_path_and_query(base, &target, uri.path(), uri.query(), strip);
        let upstream = upstream_path(base, &target, &uri, strip);
        // Shared exactly when there is no base and the target has no path or query.
        let shared = base.is_empty() && target.path.is_empty() && target.query.is_none();
        prop_assert_eq!(matches!(upstream, UpstreamPath::Unchanged(_)), shared);
        let sent = upstream.into_path_and_query().unwrap();
        prop_assert_eq!(sent.as_str(), joined.as_str());
    }

    #[test]
    fn target_query_comes_first(tq in "[a-z]{1,5}=[0-9]{1,3}", q in "[a-z]{1,5}=[0-9]{1,3}") {
        let target = Target::parse(&format!("http://u/t?{tq}")).unwrap();
        let out = join_path_and_query("", &target, "/x", Some(&q), true);
        prop_assert_eq!(out, format!("/t/x?{tq}&{q}"));
    }

    #[test]
    fn parse_never_panics(s in "\\PC{0,40}") {
        let _ = Target::parse(&s);
    }
}
