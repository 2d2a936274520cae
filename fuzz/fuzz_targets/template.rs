//! `proxy_template` substitution: path parameters (attacker-controlled) filled into a
//! target template.
//!
//! Input: text. The first line is the template: a full URL when it starts with `http`,
//! else a path-and-query placed behind `http://upstream.internal:8080`. Every further
//! line is a parameter, `name=value` (the value may be anything but a newline).
//!
//! Asserted, comparing the output with the template filled with a harmless `x` for
//! every known parameter: a value never adds a `/`, `?`, `#`, `@`, `{` or `}`, so
//! the output has the same path segments, and its dot segments (`.`, `..`) are exactly
//! the template's own (no `..` segment comes from a value); when the template makes a
//! valid URI with placeholders only in its path and query, so does the output, with the
//! same scheme and authority; with a placeholder in the host, an output that parses keeps
//! the scheme and the port. (Placeholders in the scheme or port change those, as written.)
#![no_main]

use axum_reverse_proxy::__fuzz::{self as lib, Target};
use http::Uri;
use libfuzzer_sys::fuzz_target;

const BASE: &str = "http://upstream.internal:8080";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or_default();
    let template = if first.starts_with("http") {
        first.to_owned()
    } else if first.starts_with('/') {
        format!("{BASE}{first}")
    } else {
        format!("{BASE}/{first}")
    };
    let params: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let harmless: Vec<(String, String)> = params
        .iter()
        .map(|(k, _)| (k.clone(), "x".to_owned()))
        .collect();

    let out = lib::fill_template(&template, &params);
    let reference = lib::fill_template(&template, &harmless);
    let ctx = format!("{template:?} {params:?}: {out:?} (with x: {reference:?})");

    // Every substituted value is RFC 3986 unreserved characters and %XX only.
    for (name, value) in &params {
        if name.contains(['{', '}']) {
            continue;
        }
        let alone = lib::fill_template(&format!("{{{name}}}"), &[(name.clone(), value.clone())]);
        assert!(
            alone
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)),
            "{name}={value:?} → {alone:?}"
        );
        assert!(
            alone != "." && alone != "..",
            "{name}={value:?} → {alone:?}"
        );
    }

    for c in ['/', '?', '#', '@', '{', '}', ':'] {
        assert_eq!(
            out.matches(c).count(),
            reference.matches(c).count(),
            "a value added {c:?}: {ctx}"
        );
    }

    // The same segments; dot segments only where the template has them.
    // Values add no `/`, `?` or `#` (checked above), so the `/`-separated pieces before
    // the query correspond one to one (scheme and authority included).
    let segments = |s: &str| -> Vec<String> {
        let path = s.split(['?', '#']).next().unwrap_or_default();
        path.split('/').map(str::to_owned).collect()
    };
    let (ours, theirs) = (segments(&out), segments(&reference));
    assert_eq!(ours.len(), theirs.len(), "{ctx}");
    for (o, t) in ours.iter().zip(&theirs) {
        if o == "." || o == ".." {
            assert_eq!(o, t, "a value made a dot segment: {ctx}");
        }
    }

    // A valid template gives a valid URI pointing where the template points. (A value in
    // the host may not make a valid host, `%2F` say: the route then answers 500 and
    // forwards nothing, which is safe.)
    let Ok(reference_uri) = reference.parse::<Uri>() else {
        return;
    };
    let authority_part = |s: &str| -> String {
        let rest = s.split_once("://").map_or(s, |(_, r)| r);
        rest.split(['/', '?', '#'])
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let scheme_part = template.split_once("://").map_or("", |(scheme, _)| scheme);
    if scheme_part.contains('{') {
        // A value in the scheme: nothing to compare (Target::parse allows http(s) only).
        return;
    }
    if !authority_part(&template).contains('{') {
        let uri: Uri = out.parse().unwrap_or_else(|e| panic!("{e}: {ctx}"));
        assert_eq!(uri.scheme(), reference_uri.scheme(), "{ctx}");
        assert_eq!(uri.authority(), reference_uri.authority(), "{ctx}");
    } else if let (Ok(target), Ok(reference_target)) =
        (Target::parse(&out), Target::parse(&reference))
    {
        assert_eq!(target.is_https(), reference_target.is_https(), "{ctx}");
        // A value in the host cannot move the port (one in the port is the port).
        let authority = authority_part(&template);
        let port_text = authority.rsplit_once(':').map_or("", |(_, p)| p);
        if !port_text.contains('{') || authority.ends_with(']') {
            assert_eq!(
                target.authority().port_u16(),
                reference_target.authority().port_u16(),
                "{ctx}"
            );
        }
    }
});
