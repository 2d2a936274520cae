//! The access log: one line per request, written when its response body ends (or the
//! client goes away), so it carries the bytes actually sent and the whole latency. A
//! client that goes away before the response head is ready gets a line too, with status
//! 499 (nginx's "client closed request").
//!
//! Fields: `time` (UTC, RFC 3339), `request_id`, `client`, `method`, `path` (never the
//! query string: it often carries tokens), `status`, `route`, `upstream`, `latency_ms`,
//! `bytes_in`, `bytes_out`. No header value is ever logged.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use http::{HeaderValue, Method, Uri};

use crate::config::LogFormat;
use crate::handler::InFlight;
use crate::reload::Route;

/// Where lines go.
pub(crate) enum Sink {
    Off,
    Stdout,
    File(Mutex<File>),
}

/// The configured access log.
pub(crate) struct AccessLog {
    format: LogFormat,
    sink: Sink,
}

impl AccessLog {
    /// Open the log: `output` is `stdout`, `off` or a file path (created, appended to).
    pub(crate) fn open(format: LogFormat, output: &str, path: &Path) -> std::io::Result<AccessLog> {
        let sink = match output {
            "off" => Sink::Off,
            "stdout" => Sink::Stdout,
            _ => Sink::File(Mutex::new(
                OpenOptions::new().create(true).append(true).open(path)?,
            )),
        };
        Ok(AccessLog { format, sink })
    }

    /// Whether lines are written at all (if not, requests skip what only the log needs).
    pub(crate) fn is_on(&self) -> bool {
        !matches!(self.sink, Sink::Off)
    }

    /// Write `entry`'s line now.
    pub(crate) fn write(&self, entry: &Entry) {
        if !self.is_on() {
            return;
        }
        let mut line = match self.format {
            LogFormat::Json => entry.json(),
            LogFormat::Text => entry.text(),
        };
        line.push('\n');
        match &self.sink {
            Sink::Off => {}
            Sink::Stdout => {
                let _ = std::io::stdout().lock().write_all(line.as_bytes());
            }
            Sink::File(file) => {
                if let Ok(mut f) = file.lock() {
                    let _ = f.write_all(line.as_bytes());
                }
            }
        }
    }
}

/// One request's line, filled in as the request goes. Its fields are cheap to take from
/// the request (reference-counted, or copies of small values): the text is only made
/// when the line is written.
pub(crate) struct Entry {
    pub(crate) time: SystemTime,
    pub(crate) start: Instant,
    pub(crate) request_id: HeaderValue,
    pub(crate) client: SocketAddr,
    pub(crate) method: Method,
    /// The request target as received; only its path is logged.
    pub(crate) uri: Uri,
    pub(crate) status: u16,
    pub(crate) route: Option<Arc<Route>>,
    /// Bytes read from the client, when the log is on.
    pub(crate) bytes_in: Option<Arc<AtomicU64>>,
    pub(crate) bytes_out: u64,
}

impl Entry {
    fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    fn route(&self) -> &str {
        self.route.as_ref().map_or("none", |r| &r.name)
    }

    fn upstream(&self) -> &str {
        self.route.as_ref().map_or("none", |r| &r.pool)
    }

    fn bytes_in(&self) -> u64 {
        self.bytes_in
            .as_ref()
            .map_or(0, |count| count.load(Ordering::Relaxed))
    }

    fn latency_ms(&self) -> f64 {
        (self.start.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
    }

    fn json(&self) -> String {
        serde_json::json!({
            "time": rfc3339(self.time),
            "request_id": self.request_id(),
            "client": self.client.to_string(),
            "method": self.method.as_str(),
            "path": self.uri.path(),
            "status": self.status,
            "route": self.route(),
            "upstream": self.upstream(),
            "latency_ms": self.latency_ms(),
            "bytes_in": self.bytes_in(),
            "bytes_out": self.bytes_out,
        })
        .to_string()
    }

    fn text(&self) -> String {
        format!(
            "{} {} {} {:?} {} route={} upstream={} latency_ms={} bytes_in={} bytes_out={} request_id={}",
            rfc3339(self.time),
            self.client,
            self.method,
            self.uri.path(),
            self.status,
            self.route(),
            self.upstream(),
            self.latency_ms(),
            self.bytes_in(),
            self.bytes_out,
            self.request_id(),
        )
    }
}

/// Writes its entry when dropped.
struct Guard {
    entry: Entry,
    log: Arc<AccessLog>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.log.write(&self.entry);
    }
}

// ===== impl Logged =====

/// The body of every response the server sends: with the access log on, it counts what
/// it sends and writes the request's line when it ends; in any case it holds the
/// connection's in-flight mark until then.
///
/// The service's body type itself, not boxed again into a `Body` (one more allocation
/// and one more dynamic call per frame, for every request), and small: hyper moves it
/// several times per response, so the line's entry is boxed, and only when the log
/// is on.
pub(crate) struct Logged {
    inner: Body,
    line: Option<Box<Guard>>,
    /// Released after the line is written (fields drop in order).
    in_flight: Option<InFlight>,
}

impl Logged {
    pub(crate) fn wrap(
        inner: Body,
        entry: Entry,
        log: &Arc<AccessLog>,
        in_flight: InFlight,
    ) -> Logged {
        Logged {
            inner,
            line: log.is_on().then(|| {
                Box::new(Guard {
                    entry,
                    log: Arc::clone(log),
                })
            }),
            in_flight: Some(in_flight),
        }
    }

    /// A response no request line is written for (one the server limits refused).
    pub(crate) fn unlogged(inner: Body) -> Logged {
        Logged {
            inner,
            line: None,
            in_flight: None,
        }
    }
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(line)) = (frame.data_ref(), this.line.as_mut()) {
                    line.entry.bytes_out += data.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                this.line.take();
                this.in_flight.take();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ===== impl Counted =====

/// A request body that counts the bytes read from the client.
pub(crate) struct Counted<B> {
    pub(crate) inner: B,
    pub(crate) count: Arc<AtomicU64>,
}

impl<B> HttpBody for Counted<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `2026-11-27T07:01:39.123Z`.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Gregorian date of a day count since 1970-01-01, by the usual era arithmetic
/// (400-year eras of 146 097 days, years starting in March).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_676_499_123);
        assert_eq!(rfc3339(t), "2026-11-26T07:01:39.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
