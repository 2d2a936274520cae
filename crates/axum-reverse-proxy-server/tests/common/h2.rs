//! A raw HTTP/2 client for abuse tests: it writes frames by hand (connection preface,
//! SETTINGS, HEADERS with HPACK literals, RST_STREAM, CONTINUATION…), so that a test can
//! do what no well-behaved client library would, and reads the server's frames back.
//!
//! Header blocks use only "literal header field without indexing — new name" with plain
//! (non-Huffman) strings (RFC 7541 §6.2.2), so they need no encoder state.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types (RFC 9113 §6).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

// Error codes (RFC 9113 §7).
pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

// Settings identifiers.
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// One frame as read from the server.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The settings of a SETTINGS frame, as (identifier, value) pairs.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }

    /// Whether a response HEADERS frame starts with `:status 200` in its indexed form
    /// (static table entry 8, the way every HPACK encoder writes it).
    pub fn is_status_200(&self) -> bool {
        self.kind == HEADERS && self.payload.first() == Some(&0x88)
    }

    /// The `:status` of a response HEADERS frame, in the forms this client can read:
    /// indexed in the static table (200, 204, 206, 304, 400, 404, 500), or a literal
    /// with an indexed name and a plain or Huffman value. A status the server already
    /// sent on the connection comes as a reference to its dynamic table: `None`.
    pub fn status(&self) -> Option<u16> {
        if self.kind != HEADERS {
            return None;
        }
        let p = &self.payload;
        let first = *p.first()?;
        let indexed = [
            (0x88, 200),
            (0x89, 204),
            (0x8a, 206),
            (0x8b, 304),
            (0x8c, 400),
            (0x8d, 404),
            (0x8e, 500),
        ];
        if let Some((_, code)) = indexed.iter().find(|(b, _)| *b == first) {
            return Some(*code);
        }
        // Literal with indexed name (any of the three literal forms), value follows.
        let value_at = 1;
        let len_byte = *p.get(value_at)?;
        let huffman = len_byte & 0x80 != 0;
        let len = usize::from(len_byte & 0x7f);
        let raw = p.get(value_at + 1..value_at + 1 + len)?;
        let text = if huffman {
            huffman_digits(raw)?
        } else {
            String::from_utf8(raw.to_vec()).ok()?
        };
        text.parse().ok()
    }
}

/// Decode a Huffman-coded string made only of digits (enough for `:status` values).
fn huffman_digits(raw: &[u8]) -> Option<String> {
    // RFC 7541 Appendix B: '0' '1' '2' are 5-bit codes 0x0..0x2, '3'..'9' 6-bit 0x19..0x1f.
    let mut bits: u64 = 0;
    let mut nbits = 0u32;
    let mut out = String::new();
    for &b in raw {
        if nbits > 32 {
            return None;
        }
        bits = (bits << 8) | u64::from(b);
        nbits += 8;
        loop {
            if nbits >= 5 {
                let code5 = (bits >> (nbits - 5)) & 0x1f;
                if code5 <= 2 {
                    out.push(char::from(b'0' + code5 as u8));
                    nbits -= 5;
                    continue;
                }
            }
            if nbits >= 6 {
                let code6 = (bits >> (nbits - 6)) & 0x3f;
                if (0x19..=0x1f).contains(&code6) {
                    out.push(char::from(b'3' + (code6 - 0x19) as u8));
                    nbits -= 6;
                    continue;
                }
            }
            break;
        }
        bits &= (1u64 << nbits) - 1;
    }
    // What is left must be padding: all ones, shorter than a byte.
    (nbits < 8 && bits == (1u64 << nbits) - 1).then_some(out)
}

/// Encode one frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame payload fits 24 bits");
    assert!(len < 1 << 24);
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A SETTINGS frame with these (identifier, value) pairs.
pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in pairs {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &payload)
}

/// A RST_STREAM frame.
pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// An HPACK integer with an `n`-bit prefix, the prefix byte's high bits set to `high`.
pub fn hpack_int(n: u32, high: u8, mut value: usize) -> Vec<u8> {
    let max = (1usize << n) - 1;
    if value < max {
        return vec![high | value as u8];
    }
    let mut out = vec![high | max as u8];
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
    out
}

/// A plain (non-Huffman) HPACK string literal.
pub fn hpack_str(s: &[u8]) -> Vec<u8> {
    let mut out = hpack_int(7, 0x00, s.len());
    out.extend_from_slice(s);
    out
}

/// One "literal header field without indexing — new name" representation.
pub fn literal(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    out.extend(hpack_str(name.as_bytes()));
    out.extend(hpack_str(value));
    out
}

/// The header block of a request: the four pseudo-headers, then `extra`.
pub fn request_block(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    block.extend(literal(":method", method.as_bytes()));
    block.extend(literal(":scheme", b"http"));
    block.extend(literal(":path", path.as_bytes()));
    block.extend(literal(":authority", b"test"));
    for (name, value) in extra {
        block.extend(literal(name, value.as_bytes()));
    }
    block
}

/// A complete GET request on `stream` in one HEADERS frame (END_STREAM | END_HEADERS).
pub fn get(stream: u32, path: &str) -> Vec<u8> {
    frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        stream,
        &request_block("GET", path, &[]),
    )
}

/// A raw HTTP/2 connection over any byte stream (or only its read half).
pub struct Conn<S> {
    io: S,
    buf: Vec<u8>,
    /// Frames read by `handshake` that were not SETTINGS.
    pending: Vec<Frame>,
}

impl<S> Conn<S> {
    /// The stream and the bytes read from it but not yet parsed (to split the stream).
    pub fn into_parts(self) -> (S, Vec<u8>) {
        assert!(self.pending.is_empty(), "unread frames would be lost");
        (self.io, self.buf)
    }

    /// Continue on `io` (e.g. a read half) after `into_parts`.
    pub fn from_parts(io: S, buf: Vec<u8>) -> Conn<S> {
        Conn {
            io,
            buf,
            pending: Vec::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> Conn<S> {
    /// The next frame, or `None` when the server closed the connection (EOF or reset).
    /// Frames read earlier by `handshake` come first.
    pub async fn read_frame(&mut self) -> Option<Frame> {
        if !self.pending.is_empty() {
            return Some(self.pending.remove(0));
        }
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let head: Vec<u8> = self.buf.drain(..9 + len).collect();
                    return Some(Frame {
                        kind: head[3],
                        flags: head[4],
                        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]])
                            & 0x7fff_ffff,
                        payload: head[9..].to_vec(),
                    });
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.io.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> Conn<S> {
    /// Write bytes (frames) and flush.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Send the preface and an empty SETTINGS frame, then read until the server's
    /// SETTINGS arrives and acknowledge it. Returns the server's settings.
    pub async fn handshake(io: S) -> (Conn<S>, Vec<(u16, u32)>) {
        let mut conn = Conn::from_parts(io, Vec::new());
        let mut hello = PREFACE.to_vec();
        hello.extend(settings(&[]));
        conn.send(&hello).await.expect("sending the preface");
        loop {
            let f = tokio::time::timeout(super::PATIENCE, conn.read_frame())
                .await
                .expect("no SETTINGS from the server in time")
                .expect("the server closed during the handshake");
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                conn.send(&frame(SETTINGS, ACK, 0, &[]))
                    .await
                    .expect("acknowledging SETTINGS");
                return (conn, f.settings());
            }
            if f.kind != SETTINGS {
                conn.pending.push(f);
            }
        }
    }

    /// The next frame other than PING (answered), SETTINGS and WINDOW_UPDATE, within
    /// `within`; `None` on EOF. Panics when nothing comes in time.
    pub async fn next_frame(&mut self, within: Duration) -> Option<Frame> {
        tokio::time::timeout(within, async {
            loop {
                let f = self.read_frame().await?;
                match f.kind {
                    PING if f.flags & ACK == 0 => {
                        let _ = self.send(&frame(PING, ACK, 0, &f.payload)).await;
                    }
                    SETTINGS | WINDOW_UPDATE | PING => {}
                    _ => return Some(f),
                }
            }
        })
        .await
        .expect("no frame from the server in time")
    }

    /// Read until the server closes the connection, answering PINGs if `answer_pings`;
    /// returns every GOAWAY frame seen on the way. Panics if the connection is not
    /// closed within `within`.
    pub async fn until_closed(&mut self, within: Duration, answer_pings: bool) -> Vec<Frame> {
        let mut goaways = Vec::new();
        tokio::time::timeout(within, async {
            while let Some(f) = self.read_frame().await {
                match f.kind {
                    PING if answer_pings && f.flags & ACK == 0 => {
                        let _ = self.send(&frame(PING, ACK, 0, &f.payload)).await;
                    }
                    GOAWAY => goaways.push(f),
                    _ => {}
                }
            }
        })
        .await
        .expect("the server did not close the connection in time");
        goaways
    }
}
