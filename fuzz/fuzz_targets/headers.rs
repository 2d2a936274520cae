//! Header rules: hop-by-hop stripping, `X-Forwarded-*`, `Forwarded` and `Via`, applied
//! in the order the proxy applies them to a request, then the response rules.
//!
//! Input: text. The first line holds the options, space-separated: the peer address (or
//! `-`), the scheme the client used, then any of `trusted`, `xff`, `forwarded`,
//! `upgrade` (keep an upgrade), `via=NAME`. Every further line is `Name: value`; lines
//! whose name or value is not a valid header are skipped, as a server would refuse them.
//!
//! Asserted, after stripping: no hop-by-hop header is left (`te: trailers` and, on an
//! upgrade, `connection: upgrade` with the `Upgrade` header excepted); nothing named in
//! `Connection` is left; every value is a valid header value. After forwarding: the last
//! `X-Forwarded-For` element is the peer; `X-Forwarded-Proto` is the client's scheme
//! unless a trusted one was kept; the last `Forwarded` element parses (RFC 7239) and
//! names the peer, the host and the scheme, whatever the client's `Host` held.
//! After `Via`: the chain names our pseudonym, so the next pass detects the loop.
#![no_main]

use std::net::IpAddr;

use axum_reverse_proxy::__fuzz as lib;
use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

struct Options<'a> {
    peer: Option<IpAddr>,
    proto: &'a str,
    trusted: bool,
    xff: bool,
    forwarded: bool,
    upgrade: bool,
    via: Option<&'a str>,
}

fn options(line: &str) -> Options<'_> {
    let mut words = line.split(' ');
    let peer = words.next().and_then(|w| w.parse().ok());
    let proto = words.next().unwrap_or("http");
    let mut o = Options {
        peer,
        proto,
        trusted: false,
        xff: false,
        forwarded: false,
        upgrade: false,
        via: None,
    };
    for w in words {
        match w {
            "trusted" => o.trusted = true,
            "xff" => o.xff = true,
            "forwarded" => o.forwarded = true,
            "upgrade" => o.upgrade = true,
            _ => o.via = w.strip_prefix("via=").or(o.via),
        }
    }
    o
}

fn header_map(lines: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in lines.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    map
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// The header names a message's `Connection` lines name, read from the raw bytes.
fn connection_options(map: &HeaderMap) -> Vec<HeaderName> {
    map.get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| HeaderName::from_bytes(trim(t)).ok())
        .collect()
}

fn check_stripped(map: &HeaderMap, named: &[HeaderName], upgrade: bool, ctx: &str) {
    for name in HOP_BY_HOP {
        let Some(value) = map.get(name) else { continue };
        match name {
            "te" => assert_eq!(map.get_all(name).iter().count(), 1, "{ctx}"),
            "connection" if upgrade => assert_eq!(map.get_all(name).iter().count(), 1, "{ctx}"),
            "upgrade" if upgrade => continue,
            _ => panic!("hop-by-hop `{name}` left: {ctx}"),
        }
        let expect: &[u8] = if name == "te" {
            b"trailers"
        } else {
            b"upgrade"
        };
        assert_eq!(value.as_bytes(), expect, "{ctx}");
    }
    for name in named {
        let kept = (name == header::TE && map.get(name).is_some_and(|v| v == "trailers"))
            || (upgrade && (name == header::UPGRADE || name == header::CONNECTION));
        assert!(
            kept || !map.contains_key(name),
            "`{name}` named in Connection is left: {ctx}"
        );
    }
    assert_valid(map, ctx);
}

fn assert_valid(map: &HeaderMap, ctx: &str) {
    for (name, value) in map {
        assert!(
            HeaderValue::from_bytes(value.as_bytes()).is_ok(),
            "{name}: invalid value {value:?}: {ctx}"
        );
    }
}

/// The elements of a `Forwarded` list (RFC 7239 §4), each a list of (name, value) pairs
/// with quoted strings unescaped; `None` if the list does not parse.
fn parse_forwarded(text: &str) -> Option<Vec<Vec<(String, String)>>> {
    let mut elements = vec![Vec::new()];
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
        let mut name = String::new();
        while let Some(c) = chars.next_if(|c| is_tchar(*c)) {
            name.push(c);
        }
        if name.is_empty() || chars.next() != Some('=') {
            return None;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| is_tchar(*c)) {
                value.push(c);
            }
            if value.is_empty() {
                return None;
            }
        }
        elements
            .last_mut()?
            .push((name.to_ascii_lowercase(), value));
        while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
        match chars.next() {
            None => return Some(elements),
            Some(';') => {}
            Some(',') => elements.push(Vec::new()),
            Some(_) => return None,
        }
    }
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// What `append_list` keeps of a list header: its visible-ASCII lines, trimmed, joined.
fn kept_list(map: &HeaderMap, name: &str) -> Option<String> {
    let lines: Vec<&str> = map
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    (!lines.is_empty()).then(|| lines.join(", "))
}

/// The value of a list header (all lines joined), when every line is visible ASCII.
fn joined(map: &HeaderMap, name: &str) -> Option<String> {
    let lines: Option<Vec<&str>> = map.get_all(name).iter().map(|v| v.to_str().ok()).collect();
    let lines = lines?;
    (!lines.is_empty()).then(|| lines.join(", "))
}

fuzz_target!(|data: &[u8]| {
    let (first, rest) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(first) = std::str::from_utf8(first) else {
        return;
    };
    let o = options(first);
    let original = header_map(rest);
    let ctx = format!("{first:?} {original:?}");

    // ===== request: strip, forwarding headers, Via =====
    let mut map = original.clone();
    let upgrade = o.upgrade && lib::is_upgrade_request(&map);
    let named = connection_options(&map);
    let client_host = map.get(header::HOST).cloned();
    lib::strip_hop_by_hop(&mut map, upgrade);
    check_stripped(&map, &named, upgrade, &ctx);
    if upgrade {
        assert_eq!(
            map.get_all(header::UPGRADE).iter().collect::<Vec<_>>(),
            original.get_all(header::UPGRADE).iter().collect::<Vec<_>>(),
            "{ctx}"
        );
    }

    // Which forwarding headers survive stripping, to know what a trusted proxy keeps.
    let kept_proto = map.get("x-forwarded-proto").cloned();
    let kept_forwarded = kept_list(&map, "forwarded");
    lib::apply_forwarding(
        &mut map,
        o.peer,
        client_host.as_ref(),
        o.proto,
        o.trusted,
        o.xff,
        o.forwarded,
    );
    assert_valid(&map, &ctx);
    if !o.trusted && !(o.peer.is_some() && o.xff) {
        for name in ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"] {
            assert!(!map.contains_key(name), "untrusted {name} kept: {ctx}");
        }
    }
    if let (Some(peer), true) = (o.peer, o.xff) {
        let xff = joined(&map, "x-forwarded-for").expect("X-Forwarded-For");
        let last = xff.rsplit(',').next().unwrap_or_default().trim();
        assert_eq!(last, peer.to_string(), "{ctx}");
        let proto = map.get("x-forwarded-proto");
        match (&kept_proto, o.trusted) {
            (Some(kept), true) => assert_eq!(proto, Some(kept), "{ctx}"),
            _ if HeaderValue::from_str(o.proto).is_ok() => {
                assert_eq!(
                    proto.map(|p| p.as_bytes()),
                    Some(o.proto.as_bytes()),
                    "{ctx}"
                );
            }
            _ => {}
        }
    }
    if let (Some(peer), true) = (o.peer, o.forwarded) {
        check_forwarded(&map, peer, client_host.as_ref(), &o, kept_forwarded, &ctx);
    } else if !o.trusted {
        assert!(!map.contains_key(header::FORWARDED), "{ctx}");
    }

    if let Some(raw) = o.via {
        check_via(&mut map, raw, &ctx);
    }

    // ===== response: strip (never an upgrade), Via =====
    let mut response = original.clone();
    let named = connection_options(&response);
    lib::strip_hop_by_hop(&mut response, false);
    check_stripped(&response, &named, false, &ctx);
    if let Some(raw) = o.via {
        check_via(&mut response, raw, &ctx);
    }
});

fn check_forwarded(
    map: &HeaderMap,
    peer: IpAddr,
    host: Option<&HeaderValue>,
    o: &Options<'_>,
    kept: Option<String>,
    ctx: &str,
) {
    // Only a proto the proxy is configured with (a token) makes a valid element.
    if !o.proto.chars().all(is_tchar) || o.proto.is_empty() {
        return;
    }
    let value = joined(map, "forwarded").expect("Forwarded");
    let client_list_parses = match (&kept, o.trusted) {
        (Some(k), true) => parse_forwarded(k).is_some(),
        _ => true,
    };
    if !client_list_parses {
        // What a trusted client sent is kept as it is; it may not parse.
        return;
    }
    let elements = parse_forwarded(&value).unwrap_or_else(|| panic!("{value:?}: {ctx}"));
    let ours = elements.last().expect("an element");
    let get = |k: &str| ours.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let expect_for = match peer {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    assert_eq!(get("for"), Some(expect_for.as_str()), "{value:?}: {ctx}");
    assert_eq!(get("proto"), Some(o.proto), "{value:?}: {ctx}");
    assert_eq!(
        get("host"),
        host.and_then(|h| h.to_str().ok()),
        "{value:?}: {ctx}"
    );
    assert_eq!(
        ours.len(),
        2 + usize::from(get("host").is_some()),
        "{value:?}: {ctx}"
    );
}

fn check_via(map: &mut HeaderMap, raw: &str, ctx: &str) {
    let Some(pseudonym) = lib::via_pseudonym(raw) else {
        return;
    };
    lib::append_via(map, Version::HTTP_11, &pseudonym);
    assert_valid(map, ctx);
    assert!(
        lib::via_has_pseudonym(map, &pseudonym),
        "Via {:?} does not name {pseudonym:?}: {ctx}",
        map.get_all(header::VIA).iter().collect::<Vec<_>>()
    );
}
