//! The server's configuration: TOML parsing and validation, as `--check` and `--config`
//! run them (certificates and other files are not read: that is the build step).
//!
//! Input: the file's text (not UTF-8: skipped, as reading the file fails first).
//!
//! Asserted: never a panic; a refused file gives at least one error, each naming the
//! file, with a message, and a place: a line and column inside the text (1-based, the
//! column within that line), or, for an error about something missing, its key. Errors
//! about generated text (the command line, the demo) carry no line. An accepted file
//! serialises for the admin `/config` page with every secret and URL userinfo redacted.
#![no_main]

use axum_reverse_proxy_server::__fuzz::parse_config;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const FILE: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    match parse_config(FILE, source, false) {
        Ok(json) => {
            let json = json.unwrap_or_else(|e| panic!("/config cannot show it: {e}"));
            check_redacted(&json, "");
            // The same text as generated text is accepted too.
            assert!(parse_config(FILE, source, true).is_ok());
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "refused without an error");
            let lines: Vec<&str> = source.split('\n').collect();
            for e in &errors {
                assert_eq!(e.file, FILE, "{e:?}");
                assert!(!e.message.trim().is_empty(), "{e:?}");
                assert!(e.display.starts_with(FILE), "{e:?}");
                if e.line == 0 {
                    assert_eq!(e.column, 0, "{e:?}");
                    assert!(!e.key.is_empty(), "an error with no place: {e:?}");
                } else {
                    let line = lines
                        .get(e.line - 1)
                        .unwrap_or_else(|| panic!("line {} of {}: {e:?}", e.line, lines.len()));
                    assert!(
                        e.column >= 1 && e.column <= line.chars().count() + 1,
                        "column {} of {:?}: {e:?}",
                        e.column,
                        line
                    );
                    let place = format!("{FILE}:{}:{}: ", e.line, e.column);
                    assert!(e.display.starts_with(&place), "{e:?}");
                }
            }
            let generated = parse_config(FILE, source, true).expect_err("refused once");
            assert_eq!(generated.len(), errors.len());
            for e in &generated {
                assert_eq!((e.line, e.column), (0, 0), "{e:?}");
            }
        }
    }
});

/// Secret keys' values and URL userinfo never appear in `/config`.
fn check_redacted(value: &Value, key: &str) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if ["password", "secret", "token"].contains(&k.to_ascii_lowercase().as_str()) {
                    assert!(v.is_null() || v == "<redacted>", "`{k}` shown: {v}");
                } else {
                    check_redacted(v, k);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| check_redacted(v, key)),
        Value::String(s) => {
            if let Some((_, rest)) = s.split_once("://") {
                let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
                if let Some((userinfo, _)) = authority.rsplit_once('@') {
                    assert_eq!(userinfo, "<redacted>", "`{key}`: {s:?}");
                }
            }
        }
        _ => {}
    }
}
