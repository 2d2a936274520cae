//! The byte-level tools of the smuggling tests: a recording upstream that keeps every byte
//! it receives, a strict HTTP/1.1 message parser (what the proxy sends must be
//! unambiguous), a raw client, and hand-written HTTP/2 frames.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::PATIENCE;

/// Await `f`, or panic naming `what` after [`PATIENCE`].
pub async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(PATIENCE, f).await {
        Ok(out) => out,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

// ===== Strict HTTP/1.1 parsing =====

/// One message (request or response) as the strict parser read it.
#[derive(Clone, Default)]
pub struct Message {
    /// The request line or status line.
    pub start: String,
    /// Header lines in order: lowercased name, raw value (OWS trimmed).
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// The body came chunked.
    pub chunked: bool,
    /// Trailer lines of a chunked body.
    pub trailers: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines = |fields: &[(String, Vec<u8>)]| -> Vec<String> {
            fields
                .iter()
                .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v)))
                .collect()
        };
        f.debug_struct("Message")
            .field("start", &self.start)
            .field("headers", &lines(&self.headers))
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("chunked", &self.chunked)
            .field("trailers", &lines(&self.trailers))
            .finish()
    }
}

impl Message {
    /// The request method (first word of the start line).
    pub fn method(&self) -> &str {
        self.start.split(' ').next().unwrap_or("")
    }

    /// The request target (second word of the start line).
    pub fn target(&self) -> &str {
        self.start.split(' ').nth(1).unwrap_or("")
    }

    /// The status of a response.
    pub fn status(&self) -> u16 {
        self.target().parse().unwrap_or(0)
    }

    /// Every value of `name`, as text.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// The only value of `name`; panics when there are several.
    pub fn one(&self, name: &str) -> Option<String> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "{name} appears {} times: {self:?}",
            all.len()
        );
        all.into_iter().next()
    }

    pub fn has(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n == name)
    }

    pub fn trailer(&self, name: &str) -> Option<String> {
        self.trailers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// What the parser made of the front of a buffer.
pub enum Parsed {
    /// A whole message and the bytes it took.
    Complete(Message, usize),
    /// More bytes are needed.
    Partial,
    /// Not a well-formed message: the reason.
    Malformed(String),
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Every CR is followed by LF and every LF preceded by CR.
fn crlf_only(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && bytes[i - 1] == b'\r',
        _ => true,
    })
}

/// Parse one message off the front of `buf`, strictly: CRLF line ends, token names, no
/// obs-fold or control characters, exactly one framing (`Content-Length` of digits, or
/// `Transfer-Encoding: chunked` without extensions). `request`: a message without
/// framing has no body (a response without framing would run to the close, which the
/// caller handles with [`Parsed::Partial`] until the end).
pub fn parse(buf: &[u8], request: bool, head_only: bool) -> Parsed {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Parsed::Partial;
    };
    let head = &buf[..end + 4];
    if !crlf_only(head) {
        return Parsed::Malformed("bare CR or LF in the head".into());
    }
    // Each line ends in CR once split at LF; the piece after the last LF is empty.
    let mut lines = head[..end + 2]
        .split(|&b| b == b'\n')
        .filter_map(|l| l.strip_suffix(b"\r"));
    let start = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let words: Vec<&str> = start.splitn(3, ' ').collect();
    if words.len() < 3 || words.iter().take(2).any(|w| w.is_empty()) {
        return Parsed::Malformed(format!("start line {start:?}"));
    }
    if request && (words[2] != "HTTP/1.1" || !words[0].bytes().all(is_tchar)) {
        return Parsed::Malformed(format!("request line {start:?}"));
    }
    let mut msg = Message {
        start,
        ..Message::default()
    };
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Parsed::Malformed(format!("header line without a colon: {line:?}"));
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Parsed::Malformed(format!("header name {:?}", String::from_utf8_lossy(name)));
        }
        let value = line[colon + 1..].trim_ascii();
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Parsed::Malformed(format!("control character in {line:?}"));
        }
        msg.headers.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            value.to_vec(),
        ));
    }
    let mut at = end + 4;
    let lengths = msg.all("content-length");
    let codings = msg.all("transfer-encoding");
    if !lengths.is_empty() && !codings.is_empty() {
        return Parsed::Malformed("both Content-Length and Transfer-Encoding".into());
    }
    if head_only || (!request && bodiless_status(msg.status())) {
        return Parsed::Complete(msg, at);
    }
    if !codings.is_empty() {
        if codings != ["chunked"] {
            return Parsed::Malformed(format!("Transfer-Encoding {codings:?}"));
        }
        msg.chunked = true;
        loop {
            let Some(eol) = find(&buf[at..], b"\r\n") else {
                return Parsed::Partial;
            };
            let line = &buf[at..at + eol];
            if line.is_empty() || !line.iter().all(u8::is_ascii_hexdigit) || line.len() > 15 {
                return Parsed::Malformed(format!("chunk size line {line:?}"));
            }
            let Ok(size) = usize::from_str_radix(std::str::from_utf8(line).unwrap_or(""), 16)
            else {
                return Parsed::Malformed(format!("chunk size line {line:?}"));
            };
            at += eol + 2;
            if size == 0 {
                break;
            }
            if buf.len() < at + size + 2 {
                return Parsed::Partial;
            }
            msg.body.extend_from_slice(&buf[at..at + size]);
            if &buf[at + size..at + size + 2] != b"\r\n" {
                return Parsed::Malformed("chunk data not followed by CRLF".into());
            }
            at += size + 2;
        }
        loop {
            let Some(eol) = find(&buf[at..], b"\r\n") else {
                return Parsed::Partial;
            };
            let line = &buf[at..at + eol];
            at += eol + 2;
            if line.is_empty() {
                return Parsed::Complete(msg, at);
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Parsed::Malformed(format!("trailer line {line:?}"));
            };
            msg.trailers.push((
                String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase(),
                line[colon + 1..].trim_ascii().to_vec(),
            ));
        }
    }
    match lengths.as_slice() {
        [] if request => Parsed::Complete(msg, at),
        [] => Parsed::Partial,
        [len] => {
            let Some(len) = len
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| len.parse::<usize>().ok())
                .flatten()
            else {
                return Parsed::Malformed(format!("Content-Length {len:?}"));
            };
            if buf.len() < at + len {
                return Parsed::Partial;
            }
            msg.body = buf[at..at + len].to_vec();
            Parsed::Complete(msg, at + len)
        }
        more => Parsed::Malformed(format!("Content-Length lines {more:?}")),
    }
}

fn bodiless_status(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

// ===== Recording upstream =====

/// Everything one upstream connection received, read to its end.
#[derive(Debug)]
pub struct UpConn {
    /// Accept order, from 0.
    pub index: usize,
    pub bytes: Vec<u8>,
    /// The complete requests, in order.
    pub requests: Vec<Message>,
    /// Why parsing stopped early, if the bytes were not well-formed HTTP/1.1.
    pub malformed: Option<String>,
    /// Bytes left over at the end that did not make a whole request.
    pub unfinished: bool,
}

/// A raw TCP origin that records every byte of every connection, parses it strictly,
/// and answers each complete request: the first one with `reply`, the others with [`OK`].
///
/// [`OK`]: super::OK
pub struct Recorder {
    pub addr: SocketAddr,
    logs: mpsc::UnboundedReceiver<(Option<SocketAddr>, UpConn)>,
}

impl Recorder {
    pub async fn start(reply: Vec<u8>) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, logs) = mpsc::unbounded_channel();
        let replies = Arc::new((reply, AtomicUsize::new(0)));
        let count = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let index = count.fetch_add(1, Ordering::SeqCst);
                let (tx, replies) = (tx.clone(), replies.clone());
                tokio::spawn(async move {
                    let log = record(index, stream, &replies).await;
                    let _ = tx.send((Some(peer), log));
                });
            }
        });
        Recorder { addr, logs }
    }

    /// Once the proxy is gone (its sockets closed): every connection's log. A
    /// connection of our own, accepted after every connection queued before it, marks
    /// the end, so that none is missed.
    pub async fn finish(mut self) -> Vec<UpConn> {
        let sentinel = TcpStream::connect(self.addr).await.unwrap();
        let mark = sentinel.local_addr().unwrap();
        drop(sentinel);
        let mut logs = Vec::new();
        let mut last = None;
        bounded("the upstream connections to end", async {
            loop {
                let (peer, log) = self.logs.recv().await.expect("recorder stopped");
                if peer == Some(mark) {
                    last = Some(log.index);
                } else {
                    logs.push(log);
                }
                if last.is_some_and(|n| logs.len() == n) {
                    break;
                }
            }
        })
        .await;
        logs.sort_by_key(|l| l.index);
        logs
    }
}

async fn record(index: usize, mut stream: TcpStream, replies: &(Vec<u8>, AtomicUsize)) -> UpConn {
    let mut log = UpConn {
        index,
        bytes: Vec::new(),
        requests: Vec::new(),
        malformed: None,
        unfinished: false,
    };
    let mut at = 0;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        log.bytes.extend_from_slice(&chunk[..n]);
        while log.malformed.is_none() && at < log.bytes.len() {
            match parse(&log.bytes[at..], true, false) {
                Parsed::Complete(msg, used) => {
                    at += used;
                    log.requests.push(msg);
                    let reply = match replies.1.fetch_add(1, Ordering::SeqCst) {
                        0 => replies.0.as_slice(),
                        _ => super::OK,
                    };
                    if stream.write_all(reply).await.is_err() {
                        break;
                    }
                }
                Parsed::Partial => break,
                Parsed::Malformed(why) => log.malformed = Some(why),
            }
        }
    }
    log.unfinished = log.malformed.is_none() && at < log.bytes.len();
    log
}

// ===== Raw client =====

/// A client connection that reads strictly parsed responses.
pub struct Client<S = TcpStream> {
    pub stream: S,
    buf: Vec<u8>,
}

impl Client<TcpStream> {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Say we will send nothing more.
    pub async fn finish_writing(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

impl<S: AsyncRead + Unpin> Client<S> {
    /// More bytes; `false` at the end of the stream (a reset counts as the end).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match bounded("bytes from the proxy", self.stream.read(&mut chunk)).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next response (interim 1xx responses skipped), or `None` if the connection
    /// ended first; what arrived is in the panic message when it is not HTTP.
    pub async fn response(&mut self, head_request: bool) -> Option<Message> {
        loop {
            match parse(&self.buf, false, head_request) {
                Parsed::Complete(msg, used) => {
                    self.buf.drain(..used);
                    if (100..200).contains(&msg.status()) && msg.status() != 101 {
                        continue;
                    }
                    return Some(msg);
                }
                Parsed::Malformed(why) => panic!(
                    "malformed response ({why}): {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Parsed::Partial => {
                    if !self.fill().await {
                        if self.buf.is_empty() {
                            return None;
                        }
                        // A response without framing runs to the close.
                        let mut with_len = self.buf.clone();
                        if let Some(end) = find(&with_len, b"\r\n\r\n") {
                            let body_len = with_len.len() - end - 4;
                            let cl = format!("content-length: {body_len}\r\n");
                            with_len.splice(end + 2..end + 2, cl.bytes());
                            if let Parsed::Complete(msg, _) = parse(&with_len, false, false) {
                                self.buf.clear();
                                return Some(msg);
                            }
                        }
                        panic!(
                            "connection ended inside a response: {:?}",
                            String::from_utf8_lossy(&self.buf)
                        );
                    }
                }
            }
        }
    }

    /// Everything until the peer closes, what is buffered included.
    pub async fn rest(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    /// Read exactly `n` more bytes.
    pub async fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }
}

// ===== HTTP/2 frames by hand =====

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// One frame: type, flags, stream id, payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `high`.
fn hpack_int(out: &mut Vec<u8>, high: u8, n: u8, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// HPACK "literal header field without indexing — new name", no Huffman coding: any
/// bytes at all can be written, which the `h2` client would refuse to send.
pub fn literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    hpack_int(&mut out, 0x00, 7, name.len());
    out.extend_from_slice(name);
    hpack_int(&mut out, 0x00, 7, value.len());
    out.extend_from_slice(value);
    out
}

/// How the server answered stream 1.
#[derive(Debug, PartialEq, Eq)]
pub enum H2Answer {
    /// Response headers with this `:status` (0: not one of the static-table statuses).
    Status(u16),
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY with this error code.
    GoAway(u32),
    /// The connection ended without an answer.
    Closed,
}

/// The `:status` of a header block whose first field is an indexed static-table
/// status (`h2` encodes 200, 204, 206, 304, 400, 404 and 500 that way).
fn static_status(block: &[u8]) -> u16 {
    match block.first() {
        Some(0x88) => 200,
        Some(0x89) => 204,
        Some(0x8a) => 206,
        Some(0x8b) => 304,
        Some(0x8c) => 400,
        Some(0x8d) => 404,
        Some(0x8e) => 500,
        _ => 0,
    }
}

/// Open an h2c prior-knowledge connection, send one request on stream 1 (its header
/// block is `fields`, already HPACK-encoded, ending the stream), and read until the
/// server answers it.
pub async fn h2_exchange(addr: SocketAddr, fields: &[u8]) -> H2Answer {
    let mut client = Client::connect(addr).await;
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, fields));
    client.send(&out).await;
    loop {
        let Some(head) = client.exact(9).await else {
            return H2Answer::Closed;
        };
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let Some(payload) = client.exact(len).await else {
            return H2Answer::Closed;
        };
        match kind {
            SETTINGS if flags & ACK == 0 => client.send(&frame(SETTINGS, ACK, 0, &[])).await,
            HEADERS if stream == 1 => return H2Answer::Status(static_status(&payload)),
            RST_STREAM if stream == 1 => {
                return H2Answer::Reset(u32::from_be_bytes(payload[..4].try_into().unwrap()));
            }
            GOAWAY => {
                return H2Answer::GoAway(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
            }
            _ => {}
        }
    }
}
