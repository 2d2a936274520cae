//! Request smuggling and message framing, byte by byte: the case table shared by the
//! library's `tests/smuggling.rs` (the proxy embedded in `axum::serve`) and the server's
//! `tests/smuggling.rs` (the binary), and the runner that plays a case against either.
//!
//! Every case gets a fresh recording upstream ([`Recorder`]: raw TCP, every byte kept,
//! parsed strictly) and a fresh proxy. The client writes the case's bytes on one
//! connection and reads what comes back; then the proxy is stopped, which closes all its
//! sockets, and every upstream connection is read to its end. So the assertions cover
//! every byte the upstream ever received, not just the requests it happened to answer.
//!
//! A case ends one of three ways:
//! - [`Expect::Refused`]: the proxy (or hyper in front of it) answers with the status
//!   and the upstream receives nothing at all;
//! - [`Expect::RefusedInBody`]: the head was fine and was forwarded, the chunked body
//!   then turned out malformed: the client gets the status, the upstream an unfinished
//!   request that is never completed (the proxy aborts it);
//! - [`Expect::Forwarded`]: the upstream receives exactly these well-formed requests.
//!
//! and, after it, the client connection is either closed by the proxy (nothing more
//! arrives) or kept alive (a follow-up `GET /after` is answered normally). In every case
//! `/smuggled` never reaches the upstream as a request, every forwarded request is one
//! unambiguous HTTP/1.1 message (CRLF, one `Host`, one framing, no hop-by-hop field),
//! and the client gets exactly one response per request the upstream saw.

#![allow(dead_code)]

pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

pub use wire::*;

/// What the runner knows when checking a case.
pub struct Ctx {
    pub upstream: SocketAddr,
    pub mode: Mode,
}

/// Which proxy is under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The server binary (`validate_request` in front of routing: Host required).
    Server,
    /// `ReverseProxy` in `axum::serve`, as users mount it.
    Embedded,
}

/// A check of one message (a forwarded request, or the client's response).
pub type Check = Arc<dyn Fn(&Message, &Ctx) + Send + Sync>;

pub enum Expect {
    Refused(u16),
    RefusedInBody(u16),
    Forwarded(Vec<Check>),
}

/// What happens to the client connection after the case's responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Closed,
    KeptAlive,
}

pub struct Case {
    pub name: &'static str,
    pub send: Vec<u8>,
    pub expect: Expect,
    pub after: After,
    /// The upstream's answer to the first request (the others get [`OK`]).
    pub reply: Vec<u8>,
    /// A check of the client's (first) response.
    pub response: Option<Check>,
    /// Where the embedded proxy behaves otherwise.
    pub embedded: Option<(Expect, After)>,
}

/// The upstream's usual answer.
pub const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
/// A request hidden in another one; it must never reach the upstream as a request.
pub const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
/// The follow-up on a connection the proxy should keep alive.
const AFTER: &[u8] = b"GET /after HTTP/1.1\r\nHost: after.example\r\n\r\n";

/// Lines joined with CRLF (end a head with `""`, then put the body, maybe `""`).
pub fn crlf(lines: &[&str]) -> Vec<u8> {
    lines.join("\r\n").into_bytes()
}

/// `data` as one chunk.
pub fn chunk(data: &str) -> String {
    format!("{:x}\r\n{data}\r\n", data.len())
}

pub fn refused(name: &'static str, send: impl Into<Vec<u8>>, status: u16) -> Case {
    Case {
        name,
        send: send.into(),
        expect: Expect::Refused(status),
        after: After::Closed,
        reply: OK.to_vec(),
        response: None,
        embedded: None,
    }
}

pub fn refused_in_body(name: &'static str, send: impl Into<Vec<u8>>, status: u16) -> Case {
    Case {
        expect: Expect::RefusedInBody(status),
        ..refused(name, send, status)
    }
}

pub fn forwarded(
    name: &'static str,
    send: impl Into<Vec<u8>>,
    check: impl Fn(&Message, &Ctx) + Send + Sync + 'static,
) -> Case {
    Case {
        expect: Expect::Forwarded(vec![Arc::new(check)]),
        after: After::KeptAlive,
        ..refused(name, send, 0)
    }
}

impl Case {
    /// The proxy closes the client connection after the response.
    pub fn closes(mut self) -> Case {
        self.after = After::Closed;
        self
    }

    /// Another request the upstream must see, after the ones already expected.
    pub fn then(mut self, check: impl Fn(&Message, &Ctx) + Send + Sync + 'static) -> Case {
        match &mut self.expect {
            Expect::Forwarded(checks) => checks.push(Arc::new(check)),
            _ => panic!("{}: then() on a refused case", self.name),
        }
        self
    }

    pub fn reply(mut self, reply: &[u8]) -> Case {
        self.reply = reply.to_vec();
        self
    }

    pub fn response(mut self, check: impl Fn(&Message, &Ctx) + Send + Sync + 'static) -> Case {
        self.response = Some(Arc::new(check));
        self
    }

    pub fn embedded(mut self, expect: Expect, after: After) -> Case {
        self.embedded = Some((expect, after));
        self
    }
}

/// A proxy under test, started in front of an upstream.
pub struct Running {
    /// Where to send HTTP/1 requests.
    pub h1: SocketAddr,
    /// Where to send HTTP/2 prior-knowledge connections.
    pub h2: SocketAddr,
    /// Stop the proxy and close every socket it holds.
    pub stop: Box<dyn FnOnce() -> futures_util::future::BoxFuture<'static, ()> + Send>,
}

/// Starts a proxy in front of the given upstream.
pub type Start =
    Arc<dyn Fn(SocketAddr) -> futures_util::future::BoxFuture<'static, Running> + Send + Sync>;

// ===== The cases =====

fn body_is(expected: &'static str) -> impl Fn(&Message, &Ctx) + Send + Sync + 'static {
    move |m, _| {
        assert_eq!(String::from_utf8_lossy(&m.body), expected, "body of {m:?}");
    }
}

fn target_is(expected: &'static str) -> impl Fn(&Message, &Ctx) + Send + Sync + 'static {
    move |m, _| assert_eq!(m.target(), expected)
}

/// `Content-Length` and `Transfer-Encoding`: conflicts, malformed values, obfuscation,
/// HTTP/1.0 bodies.
pub fn framing() -> Vec<Case> {
    let post = |headers: &[&str], body: &str| {
        let mut lines = vec!["POST /a HTTP/1.1", "Host: h"];
        lines.extend_from_slice(headers);
        lines.push("");
        lines.push(body);
        crlf(&lines)
    };
    let with_cl = |value: &str| post(&[&format!("Content-Length: {value}")], "hello");
    let with_te = |lines: &[&str]| {
        let body = format!("{}0\r\n\r\n{SMUGGLED}", chunk("hello"));
        let mut headers: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        headers.push("Content-Length: 5".into());
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        post(&headers, &body)
    };
    let chunked = |value: &str| {
        let body = format!("{}0\r\n\r\n", chunk("hello"));
        post(&[&format!("Transfer-Encoding:{value}")], &body)
    };
    vec![
        // CL + TE: chunked wins, the Content-Length goes, and the connection closes after,
        // so the bytes a Content-Length reader would have taken as the next request die.
        forwarded(
            "CL.TE: Content-Length covers a smuggled prefix",
            post(
                &["Content-Length: 6", "Transfer-Encoding: chunked"],
                &format!("0\r\n\r\n{SMUGGLED}"),
            ),
            body_is(""),
        )
        .closes(),
        forwarded(
            "TE.CL: the chunk holds what Content-Length would leave over",
            post(
                &["Transfer-Encoding: chunked", "Content-Length: 4"],
                &format!("{}0\r\n\r\n", chunk(SMUGGLED)),
            ),
            |m, _| assert_eq!(m.body, SMUGGLED.as_bytes()),
        )
        .closes(),
        forwarded(
            "CL + TE with a request after the chunked body",
            with_te(&["Transfer-Encoding: chunked"]),
            body_is("hello"),
        )
        .closes(),
        forwarded(
            "a Content-Length body that looks like a request stays body",
            post(&[&format!("Content-Length: {}", SMUGGLED.len())], SMUGGLED),
            |m, _| assert_eq!(m.body, SMUGGLED.as_bytes()),
        ),
        forwarded(
            "two identical Content-Length lines become one",
            post(&["Content-Length: 5", "Content-Length: 5"], "hello"),
            body_is("hello"),
        ),
        forwarded(
            "Content-Length with spaces around",
            with_cl(" 5 "),
            body_is("hello"),
        ),
        refused(
            "conflicting Content-Length lines",
            post(&["Content-Length: 5", "Content-Length: 6"], "hello!"),
            400,
        ),
        refused("Content-Length list 1, 2", with_cl("1, 2"), 400),
        refused("Content-Length list 5, 5", with_cl("5, 5"), 400),
        refused("Content-Length +5", with_cl("+5"), 400),
        refused("Content-Length -5", with_cl("-5"), 400),
        refused("Content-Length 0x5", with_cl("0x5"), 400),
        refused("Content-Length 5 5", with_cl("5 5"), 400),
        refused("Content-Length 5.0", with_cl("5.0"), 400),
        refused("Content-Length empty", with_cl(""), 400),
        refused(
            "Content-Length over u64",
            with_cl("18446744073709551616"),
            400,
        ),
        refused(
            "Content-Length huge",
            with_cl("99999999999999999999999999999999"),
            400,
        ),
        refused(
            "Content_Length imitating Content-Length",
            post(&["Content_Length: 5"], "hello"),
            400,
        ),
        refused(
            "Transfer_Encoding imitating Transfer-Encoding",
            post(&["Transfer_Encoding: chunked"], "0\r\n\r\n"),
            400,
        ),
        // Transfer-Encoding obfuscation.
        forwarded("TE: CHUNKED", chunked(" CHUNKED"), body_is("hello")),
        forwarded(
            "TE with spaces around",
            chunked("   chunked   "),
            body_is("hello"),
        ),
        forwarded(
            "TE with tabs around",
            chunked("\tchunked\t"),
            body_is("hello"),
        ),
        refused("TE: chunked, identity", chunked(" chunked, identity"), 400),
        refused("TE: identity, chunked", chunked(" identity, chunked"), 501),
        refused("TE: identity", chunked(" identity"), 400),
        refused("TE: gzip", chunked(" gzip"), 400),
        refused("TE: gzip, chunked", chunked(" gzip, chunked"), 501),
        refused("TE: chunked, chunked", chunked(" chunked, chunked"), 400),
        refused("TE: xchunked", chunked(" xchunked"), 400),
        refused("TE: chunked;ext", chunked(" chunked;q=1"), 400),
        refused(
            "TE: gzip with Content-Length",
            post(&["Transfer-Encoding: gzip", "Content-Length: 5"], "hello"),
            400,
        ),
        refused("TE: empty", chunked(""), 400),
        refused(
            "TE: chunked twice on two lines",
            with_te(&["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"]),
            400,
        ),
        refused(
            "TE: gzip then chunked on two lines",
            with_te(&["Transfer-Encoding: gzip", "Transfer-Encoding: chunked"]),
            501,
        ),
        refused(
            "TE: chunked then gzip on two lines",
            with_te(&["Transfer-Encoding: chunked", "Transfer-Encoding: gzip"]),
            400,
        ),
        refused(
            "TE obs-folded",
            with_te(&["Transfer-Encoding:", " chunked"]),
            400,
        ),
        refused(
            "TE with a space before the colon",
            with_te(&["Transfer-Encoding : chunked"]),
            400,
        ),
        refused(
            "TE with a tab before the colon",
            with_te(&["Transfer-Encoding\t: chunked"]),
            400,
        ),
        // HTTP/1.0 bodies.
        refused(
            "HTTP/1.0 with Transfer-Encoding",
            crlf(&[
                "POST /a HTTP/1.0",
                "Transfer-Encoding: chunked",
                "",
                &format!("{}0\r\n\r\n", chunk("hello")),
            ]),
            400,
        ),
        forwarded(
            "HTTP/1.0 with Content-Length",
            crlf(&["POST /a HTTP/1.0", "Content-Length: 5", "", "hello"]),
            body_is("hello"),
        )
        .closes(),
        forwarded(
            "HTTP/1.0 keep-alive with Content-Length",
            crlf(&[
                "POST /a HTTP/1.0",
                "Connection: keep-alive",
                "Content-Length: 5",
                "",
                "hello",
            ]),
            body_is("hello"),
        ),
    ]
}

/// Chunk sizes, chunk extensions and line endings in chunked bodies.
pub fn chunks() -> Vec<Case> {
    let chunked = |body: &str| {
        crlf(&[
            "POST /a HTTP/1.1",
            "Host: h",
            "Transfer-Encoding: chunked",
            "",
            body,
        ])
    };
    let tail = format!("0\r\n\r\n{SMUGGLED}");
    vec![
        refused_in_body(
            "negative chunk size",
            chunked(&format!("-5\r\nhello\r\n{tail}")),
            400,
        ),
        refused_in_body(
            "chunk size overflowing u64",
            chunked(&format!("10000000000000005\r\nhello\r\n{tail}")),
            400,
        ),
        refused_in_body(
            "missing chunk size",
            chunked(&format!("\r\nhello\r\n{tail}")),
            400,
        ),
        refused_in_body(
            "chunk size 0x5",
            chunked(&format!("0x5\r\nhello\r\n{tail}")),
            400,
        ),
        refused_in_body(
            "chunk size after a space",
            chunked(&format!(" 5\r\nhello\r\n{tail}")),
            400,
        ),
        refused_in_body(
            "chunk longer than its size",
            chunked(&format!("3\r\nhello\r\n{tail}")),
            400,
        ),
        refused_in_body(
            "chunk extension with a bare LF",
            chunked(&format!("5;a\nb\r\nhello\r\n{tail}")),
            400,
        ),
        refused_in_body(
            "chunk extension with a bare CR",
            chunked(&format!("5;a\rb\r\nhello\r\n{tail}")),
            400,
        ),
        refused_in_body(
            "bare LF chunk lines",
            chunked(&format!("5\nhello\n0\n\n{SMUGGLED}")),
            400,
        ),
        refused_in_body(
            "bare LF after chunk data",
            chunked(&format!("5\r\nhello\n{tail}")),
            400,
        ),
        forwarded(
            "chunk extensions are dropped",
            chunked("5;name=value\r\nhello\r\n3 ; a=\"b;c\\\"d\"\r\n123\r\n0;last\r\n\r\n"),
            body_is("hello123"),
        ),
        forwarded(
            "a request after the last chunk is the next request",
            chunked(&format!(
                "{}0\r\n\r\nGET /second HTTP/1.1\r\nHost: h\r\n\r\n",
                chunk("hello")
            )),
            body_is("hello"),
        )
        .then(target_is("/second")),
    ]
}

/// Line endings, obs-fold and forbidden characters in the head.
pub fn head() -> Vec<Case> {
    let get = |extra: &str| format!("GET /a HTTP/1.1\r\nHost: h\r\n{extra}\r\n\r\n").into_bytes();
    vec![
        forwarded(
            "bare LF line endings are read as CRLF",
            "GET /a HTTP/1.1\nHost: h\nX-A: 1\n\n",
            |m, _| {
                assert_eq!(m.target(), "/a");
                assert_eq!(m.one("x-a").as_deref(), Some("1"));
            },
        ),
        forwarded(
            "bare LF head with a Content-Length body",
            "POST /a HTTP/1.1\nHost: h\nContent-Length: 5\n\nhello",
            body_is("hello"),
        ),
        forwarded(
            "a bare LF inside a value starts a Transfer-Encoding line",
            format!(
                "POST /a HTTP/1.1\r\nHost: h\r\nX-A: a\nTransfer-Encoding: chunked\r\n\
                 Content-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
            |m, _| {
                assert_eq!(m.body, b"");
                assert_eq!(m.one("x-a").as_deref(), Some("a"));
            },
        )
        .closes(),
        refused("bare CR line endings", "GET /a HTTP/1.1\rHost: h\r\r", 400),
        refused("bare CR inside a value", get("X-A: a\rb"), 400),
        refused("NUL inside a value", get("X-A: a\0b"), 400),
        refused("LF inside a value", get("X-A: a\nb"), 400),
        refused("obs-fold", get("X-A: a\r\n b"), 400),
        refused("obs-fold with a tab", get("X-A: a\r\n\tb"), 400),
        refused("space before the colon", get("X-A : a"), 400),
        refused("tab before the colon", get("X-A\t: a"), 400),
        refused("empty header name", get(": a"), 400),
        refused("header name with a parenthesis", get("X(A): a"), 400),
    ]
}

/// The request line, the request target and `Host`.
pub fn request_line() -> Vec<Case> {
    let host_lines = |lines: &[&str]| {
        let mut all = vec!["GET /a HTTP/1.1"];
        all.extend_from_slice(lines);
        all.extend_from_slice(&["", ""]);
        crlf(&all)
    };
    vec![
        refused(
            "method with a parenthesis",
            "G(T /a HTTP/1.1\r\nHost: h\r\n\r\n",
            400,
        ),
        refused("empty method", " /a HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        refused("HTTP/1.2", "GET /a HTTP/1.2\r\nHost: h\r\n\r\n", 400),
        refused(
            "HTTP/2.0 on HTTP/1",
            "GET /a HTTP/2.0\r\nHost: h\r\n\r\n",
            400,
        ),
        refused(
            "lowercase http/1.1",
            "GET /a http/1.1\r\nHost: h\r\n\r\n",
            400,
        ),
        refused(
            "version with junk",
            "GET /a HTTP/1.1x\r\nHost: h\r\n\r\n",
            400,
        ),
        refused("HTTP/0.9 (no version)", "GET /a\r\n\r\n", 400),
        refused("two spaces", "GET  /a HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        refused(
            "binary garbage",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            400,
        ),
        forwarded(
            "a lowercase method is another method",
            "get /a HTTP/1.1\r\nHost: h\r\n\r\n",
            |m, _| assert_eq!(m.method(), "get"),
        ),
        // RFC 9112 §3.2.2: the target's authority replaces Host; the upstream is ours.
        forwarded(
            "absolute-form naming another host",
            "GET http://evil.example/x?q=1 HTTP/1.1\r\nHost: proxy.example\r\n\r\n",
            |m, _| {
                assert_eq!(m.target(), "/x?q=1");
                assert_eq!(m.one("x-forwarded-host").as_deref(), Some("evil.example"));
            },
        ),
        forwarded(
            "absolute-form https on a plain connection",
            "GET https://evil.example:8443/x HTTP/1.1\r\nHost: evil.example:8443\r\n\r\n",
            |m, cx| {
                assert_eq!(m.target(), "/x");
                // The server knows its listener is plain; the library only has the URI.
                let proto = match cx.mode {
                    Mode::Server => "http",
                    Mode::Embedded => "https",
                };
                assert_eq!(m.one("x-forwarded-proto").as_deref(), Some(proto));
            },
        ),
        refused(
            "absolute-form without Host",
            "GET http://evil.example/x HTTP/1.1\r\n\r\n",
            400,
        )
        .embedded(
            Expect::Forwarded(vec![Arc::new(|m: &Message, _: &Ctx| {
                assert_eq!(m.one("x-forwarded-host").as_deref(), Some("evil.example"));
            })]),
            After::KeptAlive,
        ),
        refused(
            "absolute-form with another scheme",
            "GET ftp://evil.example/x HTTP/1.1\r\nHost: evil.example\r\n\r\n",
            400,
        ),
        refused(
            "absolute-form with userinfo",
            "GET http://user:pw@evil.example/x HTTP/1.1\r\nHost: evil.example\r\n\r\n",
            400,
        ),
        refused(
            "authority-form on GET",
            "GET evil.example:80 HTTP/1.1\r\nHost: evil.example:80\r\n\r\n",
            400,
        ),
        refused(
            "asterisk-form on GET",
            "GET * HTTP/1.1\r\nHost: h\r\n\r\n",
            400,
        ),
        refused(
            "CONNECT, then bytes sent before the answer",
            format!(
                "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n{SMUGGLED}"
            ),
            501,
        ),
        refused("HTTP/1.1 without Host", host_lines(&[]), 400).embedded(
            Expect::Forwarded(vec![Arc::new(|m: &Message, _: &Ctx| {
                assert!(!m.has("x-forwarded-host"), "{m:?}");
            })]),
            After::KeptAlive,
        ),
        refused("two Host lines", host_lines(&["Host: a", "Host: b"]), 400),
        refused(
            "two identical Host lines",
            host_lines(&["Host: a", "Host: a"]),
            400,
        ),
        refused("Host list", host_lines(&["Host: a, b"]), 400),
        refused("Host with a path", host_lines(&["Host: h/evil"]), 400),
        refused("Host with userinfo", host_lines(&["Host: user@h"]), 400),
        refused("Host with a bad port", host_lines(&["Host: h:port"]), 400),
        refused("Host with a space", host_lines(&["Host: a b"]), 400),
        refused(
            "Host with an open bracket",
            host_lines(&["Host: [::1"]),
            400,
        ),
        forwarded("empty Host", host_lines(&["Host:"]), |m, _| {
            assert!(!m.has("x-forwarded-host"), "{m:?}");
        }),
        forwarded(
            "HTTP/1.0 without Host",
            "GET /a HTTP/1.0\r\n\r\n",
            target_is("/a"),
        )
        .closes(),
    ]
}

/// `Upgrade: h2c` and hop-by-hop fields, both ways; trailers across an HTTP/1 hop.
pub fn hop_by_hop() -> Vec<Case> {
    let trailer_body = format!("{}0\r\nX-Sum: 7\r\n\r\n", chunk("hello"));
    let trailer_reply = format!(
        "HTTP/1.1 200 OK\r\nConnection: X-Hop, keep-alive\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\nUpgrade: foo\r\nTrailer: X-Sum\r\n\
         Transfer-Encoding: chunked\r\n\r\n{}0\r\nX-Sum: 7\r\n\r\n",
        chunk("ok")
    );
    vec![
        forwarded(
            "Upgrade: h2c is neither forwarded nor answered 101",
            crlf(&[
                "GET /a HTTP/1.1",
                "Host: h",
                "Connection: Upgrade, HTTP2-Settings",
                "Upgrade: h2c",
                "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
                "",
                "",
            ]),
            |m, _| assert!(!m.has("http2-settings"), "{m:?}"),
        )
        .response(|r, _| assert_eq!(r.status(), 200)),
        forwarded(
            "Upgrade: h2c on a POST",
            crlf(&[
                "POST /a HTTP/1.1",
                "Host: h",
                "Connection: Upgrade, HTTP2-Settings",
                "Upgrade: h2c",
                "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
                "Content-Length: 5",
                "",
                "hello",
            ]),
            body_is("hello"),
        ),
        forwarded(
            "what Connection names goes, TE: trailers stays",
            crlf(&[
                "GET /a HTTP/1.1",
                "Host: h",
                "Connection: X-Drop, Keep-Alive",
                "Connection: X-Drop-Too",
                "X-Drop: 1",
                "X-Drop-Too: 1",
                "Keep-Alive: timeout=5",
                "Proxy-Connection: keep-alive",
                "TE: trailers, deflate",
                "X-Keep: 1",
                "",
                "",
            ]),
            |m, _| {
                assert!(!m.has("x-drop") && !m.has("x-drop-too"), "{m:?}");
                assert_eq!(m.one("te").as_deref(), Some("trailers"));
                assert_eq!(m.one("x-keep").as_deref(), Some("1"));
            },
        ),
        forwarded(
            "TE other than trailers goes",
            crlf(&["GET /a HTTP/1.1", "Host: h", "TE: gzip", "", ""]),
            |m, _| assert!(!m.has("te"), "{m:?}"),
        ),
        forwarded(
            "Connection naming Content-Length does not unframe the body",
            crlf(&[
                "POST /a HTTP/1.1",
                "Host: h",
                "Connection: content-length",
                "Content-Length: 5",
                "",
                "hello",
            ]),
            body_is("hello"),
        ),
        forwarded(
            "Connection naming Host leaves the target's Host",
            crlf(&["GET /a HTTP/1.1", "Host: h", "Connection: host", "", ""]),
            target_is("/a"),
        ),
        forwarded(
            "request trailers cross an HTTP/1 hop (Trailer is kept)",
            crlf(&[
                "POST /a HTTP/1.1",
                "Host: h",
                "Trailer: X-Sum",
                "Transfer-Encoding: chunked",
                "",
                &trailer_body,
            ]),
            |m, _| {
                assert_eq!(m.body, b"hello");
                assert_eq!(m.one("trailer").as_deref(), Some("X-Sum"));
                assert_eq!(m.trailer("x-sum").as_deref(), Some("7"));
            },
        ),
        forwarded(
            "a Trailer named in Connection goes",
            crlf(&[
                "POST /a HTTP/1.1",
                "Host: h",
                "Connection: trailer",
                "Trailer: X-Sum",
                "Transfer-Encoding: chunked",
                "",
                &trailer_body,
            ]),
            |m, _| {
                assert_eq!(m.body, b"hello");
                // Undeclared, the trailer field is not sent on an HTTP/1 hop.
                assert!(!m.has("trailer") && m.trailers.is_empty(), "{m:?}");
            },
        ),
        forwarded(
            "response hop-by-hop fields go, its trailers stay",
            crlf(&["GET /a HTTP/1.1", "Host: h", "TE: trailers", "", ""]),
            target_is("/a"),
        )
        .reply(trailer_reply.as_bytes())
        .response(|r, _| {
            for name in ["x-hop", "keep-alive", "proxy-connection", "upgrade", "connection"] {
                assert!(!r.has(name), "{name} in {r:?}");
            }
            assert_eq!(r.body, b"ok");
            assert_eq!(r.one("trailer").as_deref(), Some("X-Sum"));
            assert_eq!(r.trailer("x-sum").as_deref(), Some("7"));
        }),
        forwarded(
            "a response Trailer named in Connection goes",
            crlf(&["GET /a HTTP/1.1", "Host: h", "TE: trailers", "", ""]),
            target_is("/a"),
        )
        .reply(
            format!(
                "HTTP/1.1 200 OK\r\nConnection: trailer\r\nTrailer: X-Sum\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{}0\r\nX-Sum: 7\r\n\r\n",
                chunk("ok")
            )
            .as_bytes(),
        )
        .response(|r, _| {
            assert_eq!(r.body, b"ok");
            assert!(!r.has("trailer"), "{r:?}");
        }),
        forwarded(
            "a response with Content-Length and Transfer-Encoding is re-framed",
            crlf(&["GET /a HTTP/1.1", "Host: h", "", ""]),
            target_is("/a"),
        )
        .reply(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
                chunk("ok")
            )
            .as_bytes(),
        )
        .response(|r, _| assert_eq!(r.body, b"ok")),
        forwarded(
            "a response in a transfer coding nobody asked for is a bad gateway",
            crlf(&["GET /a HTTP/1.1", "Host: h", "TE: gzip", "", ""]),
            target_is("/a"),
        )
        .reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b")
        .response(|r, _| assert_eq!(r.status(), 502)),
    ]
}

// ===== The runner =====

/// Generic rules for every request the upstream received.
fn check_forwarded(m: &Message, cx: &Ctx) {
    assert!(!m.target().contains("smuggled"), "smuggled: {m:?}");
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "proxy-authorization",
    ] {
        assert!(!m.has(name), "hop-by-hop {name} forwarded: {m:?}");
    }
    if let Some(te) = m.one("te") {
        assert_eq!(te, "trailers", "{m:?}");
    }
    assert_eq!(m.one("host"), Some(cx.upstream.to_string()), "{m:?}");
}

/// Play `case` against a proxy from `start`; panics with what went wrong.
pub async fn run(case: Case, mode: Mode, start: Start) {
    let (expect, after) = match (mode, case.embedded) {
        (Mode::Embedded, Some(over)) => over,
        _ => (case.expect, case.after),
    };
    let upstream = Recorder::start(case.reply.clone()).await;
    let cx = Ctx {
        upstream: upstream.addr,
        mode,
    };
    let proxy = start(upstream.addr).await;

    let mut client = Client::connect(proxy.h1).await;
    client.send(&case.send).await;
    let head_request = case.send.starts_with(b"HEAD ");
    let expected = match &expect {
        Expect::Forwarded(checks) => checks.len(),
        _ => 1,
    };
    let mut responses = Vec::new();
    for _ in 0..expected {
        match client.response(head_request).await {
            Some(response) => responses.push(response),
            None => panic!("the connection closed after {} responses", responses.len()),
        }
    }
    let mut follow_up = None;
    if after == After::KeptAlive {
        client.send(AFTER).await;
        follow_up = client.response(false).await;
        client.finish_writing().await;
    }
    // Closed by the proxy (or, when kept alive, after the client said it was done):
    // nothing more may arrive, such as an answer to a smuggled request.
    let rest = client.rest().await;
    (proxy.stop)().await;
    let conns = upstream.finish().await;

    assert!(
        rest.is_empty(),
        "more bytes after the expected responses: {:?}",
        String::from_utf8_lossy(&rest)
    );
    let mut seen = Vec::new();
    for conn in &conns {
        if let Some(why) = &conn.malformed {
            panic!(
                "the upstream got malformed bytes ({why}): {:?}",
                String::from_utf8_lossy(&conn.bytes)
            );
        }
        if conn.unfinished {
            assert!(
                matches!(expect, Expect::RefusedInBody(_)),
                "the upstream got an unfinished request: {:?}",
                String::from_utf8_lossy(&conn.bytes)
            );
        }
        seen.extend(conn.requests.iter().cloned());
    }
    for m in &seen {
        check_forwarded(m, &cx);
    }
    if after == After::KeptAlive {
        let follow_up = follow_up.expect("no answer to the follow-up request");
        assert_eq!(follow_up.status(), 200, "follow-up: {follow_up:?}");
        let last = seen
            .pop()
            .expect("the follow-up never reached the upstream");
        assert_eq!(last.target(), "/after", "{last:?}");
    }
    match expect {
        Expect::Refused(status) | Expect::RefusedInBody(status) => {
            assert_eq!(responses[0].status(), status, "{:?}", responses[0]);
            assert!(seen.is_empty(), "the upstream got {seen:?}");
            if matches!(expect, Expect::Refused(_)) {
                let bytes: usize = conns.iter().map(|c| c.bytes.len()).sum();
                assert_eq!(bytes, 0, "the upstream got bytes: {conns:?}");
            }
        }
        Expect::Forwarded(checks) => {
            assert_eq!(
                seen.len(),
                checks.len(),
                "the upstream got {} requests: {seen:?}",
                seen.len()
            );
            for (m, check) in seen.iter().zip(&checks) {
                check(m, &cx);
            }
            if case.response.is_none() {
                for r in &responses {
                    assert_eq!(r.status(), 200, "{r:?}");
                }
            }
        }
    }
    if let Some(check) = &case.response {
        check(&responses[0], &cx);
    }
}

/// Run every case (a few at a time), then fail listing every case that failed.
pub async fn run_all(cases: Vec<Case>, mode: Mode, start: Start) {
    use futures_util::StreamExt;
    let results: Vec<(&'static str, Result<(), tokio::task::JoinError>)> =
        futures_util::stream::iter(cases)
            .map(|case| {
                let start = start.clone();
                let name = case.name;
                async move { (name, tokio::spawn(run(case, mode, start)).await) }
            })
            .buffer_unordered(4)
            .collect()
            .await;
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|(name, result)| {
            let err = result.err()?;
            let why = match err.try_into_panic() {
                Ok(panic) => panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default(),
                Err(err) => err.to_string(),
            };
            Some(format!("- {name}: {why}"))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} case(s) failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

// ===== HTTP/2 =====

/// One HTTP/2 request with extra fields the `h2` client would refuse to send.
pub struct H2Case {
    pub name: &'static str,
    pub fields: Vec<(&'static [u8], &'static [u8])>,
    /// How the proxy answers.
    pub answer: H2Answer,
    /// `None`: the upstream sees nothing; else the one request it sees.
    pub forwarded: Option<Check>,
}

/// PROTOCOL_ERROR, the code of a malformed request (RFC 9113 §8.1.1).
const PROTOCOL_ERROR: u32 = 0x1;

/// Refused: the stream reset (a malformed request is a stream error, RFC 9113 §8.1.1).
fn h2_reset(name: &'static str, fields: Vec<(&'static [u8], &'static [u8])>) -> H2Case {
    H2Case {
        name,
        fields,
        answer: H2Answer::Reset(PROTOCOL_ERROR),
        forwarded: None,
    }
}

/// Refused with the whole connection: the `h2` crate cannot decode such a field into a
/// `HeaderValue`/`HeaderName`, and treats the header block as undecodable.
fn h2_goaway(name: &'static str, fields: Vec<(&'static [u8], &'static [u8])>) -> H2Case {
    H2Case {
        answer: H2Answer::GoAway(PROTOCOL_ERROR),
        ..h2_reset(name, fields)
    }
}

/// Connection-specific fields and forbidden characters in HTTP/2 requests.
pub fn h2_cases() -> Vec<H2Case> {
    vec![
        h2_reset("connection", vec![(b"connection", b"keep-alive")]),
        h2_reset("keep-alive", vec![(b"keep-alive", b"timeout=5")]),
        h2_reset(
            "proxy-connection",
            vec![(b"proxy-connection", b"keep-alive")],
        ),
        h2_reset(
            "transfer-encoding",
            vec![(b"transfer-encoding", b"chunked")],
        ),
        h2_reset("upgrade", vec![(b"upgrade", b"websocket")]),
        h2_reset("te: gzip", vec![(b"te", b"gzip")]),
        h2_reset("te: trailers, gzip", vec![(b"te", b"trailers, gzip")]),
        h2_reset(
            "content-length without the body",
            vec![(b"content-length", b"5")],
        ),
        h2_goaway("CR in a value", vec![(b"x-a", b"a\rb")]),
        h2_goaway("LF in a value", vec![(b"x-a", b"a\nb")]),
        h2_goaway("NUL in a value", vec![(b"x-a", b"a\0b")]),
        h2_goaway(
            "CRLF and a field in a value",
            vec![(b"x-a", b"a\r\nx-b: c")],
        ),
        h2_goaway("space in a name", vec![(b"x a", b"b")]),
        H2Case {
            name: "Host other than :authority",
            fields: vec![(b"host", b"evil.example")],
            answer: H2Answer::Status(400),
            forwarded: None,
        },
        H2Case {
            name: "te: trailers",
            fields: vec![(b"te", b"trailers")],
            answer: H2Answer::Status(200),
            forwarded: Some(Arc::new(|m: &Message, _: &Ctx| {
                assert_eq!(m.one("te").as_deref(), Some("trailers"));
            })),
        },
        H2Case {
            name: "Host equal to :authority",
            fields: vec![(b"host", b"proxy.example")],
            answer: H2Answer::Status(200),
            forwarded: Some(Arc::new(|m: &Message, _: &Ctx| {
                assert_eq!(m.one("x-forwarded-host").as_deref(), Some("proxy.example"));
            })),
        },
    ]
}

/// Play one HTTP/2 case.
pub async fn run_h2(case: H2Case, mode: Mode, start: Start) {
    let upstream = Recorder::start(OK.to_vec()).await;
    let cx = Ctx {
        upstream: upstream.addr,
        mode,
    };
    let proxy = start(upstream.addr).await;
    let mut block = Vec::new();
    for (name, value) in [
        (&b":method"[..], &b"GET"[..]),
        (b":scheme", b"http"),
        (b":path", b"/h2"),
        (b":authority", b"proxy.example"),
    ]
    .into_iter()
    .chain(case.fields.iter().copied())
    {
        block.extend(literal(name, value));
    }
    let answer = bounded("an HTTP/2 answer", h2_exchange(proxy.h2, &block)).await;
    (proxy.stop)().await;
    let conns = upstream.finish().await;
    let seen: Vec<Message> = conns.iter().flat_map(|c| c.requests.clone()).collect();
    assert_eq!(answer, case.answer);
    match &case.forwarded {
        None => {
            let bytes: usize = conns.iter().map(|c| c.bytes.len()).sum();
            assert_eq!(bytes, 0, "the upstream got bytes: {conns:?}");
        }
        Some(check) => {
            assert_eq!(seen.len(), 1, "{seen:?}");
            check_forwarded(&seen[0], &cx);
            check(&seen[0], &cx);
        }
    }
}

/// Run every HTTP/2 case, then fail listing every case that failed.
pub async fn run_all_h2(cases: Vec<H2Case>, mode: Mode, start: Start) {
    let mut failed = Vec::new();
    for case in cases {
        let name = case.name;
        if let Err(err) = tokio::spawn(run_h2(case, mode, start.clone())).await {
            let why = match err.try_into_panic() {
                Ok(panic) => panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default(),
                Err(err) => err.to_string(),
            };
            failed.push(format!("- {name}: {why}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} case(s) failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
