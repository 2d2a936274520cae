//! Static sources: a fixed list ([`StaticDiscovery`]) and a watched file ([`FileDiscovery`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_util::Stream;
use tower::discover::Change;

use super::endpoint::WeightedUrl;
use super::publish::{Message, Publisher, Subscription};
use crate::error::BoxError;

// ===== impl StaticDiscovery =====

/// A fixed set of endpoint URLs: `Change::Insert(url, url)` for each distinct URL, then the
/// stream stays pending forever (it never ends, so a consumer never mistakes it for a
/// source that went away).
///
/// URLs are not validated here; the consumer rejects what it cannot use. A clone starts
/// again from the first Insert.
#[derive(Debug)]
pub struct StaticDiscovery {
    urls: Arc<[String]>,
    next: usize,
}

impl StaticDiscovery {
    /// The endpoints `urls`, duplicates removed, in their first order.
    pub fn new<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut seen = std::collections::HashSet::new();
        let urls: Vec<String> = urls
            .into_iter()
            .map(Into::into)
            .filter(|url| seen.insert(url.clone()))
            .collect();
        Self {
            urls: urls.into(),
            next: 0,
        }
    }
}

impl Clone for StaticDiscovery {
    fn clone(&self) -> Self {
        Self {
            urls: Arc::clone(&self.urls),
            next: 0,
        }
    }
}

impl Stream for StaticDiscovery {
    type Item = Result<Change<String, String>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.urls.get(this.next) {
            Some(url) => {
                this.next += 1;
                Poll::Ready(Some(Ok(Change::Insert(url.clone(), url.clone()))))
            }
            // Nothing will ever change: no waker needs registering.
            None => Poll::Pending,
        }
    }
}

// ===== impl FileDiscovery =====

type FileSet = BTreeMap<String, WeightedUrl>;

/// A file of endpoint URLs, re-read when it changes.
///
/// # Format
///
/// One endpoint per line: an absolute `http://` or `https://` URL, optionally followed by
/// `weight=N` (a positive integer, default 1). `#` at the start of a line or after
/// whitespace starts a comment; blank lines are ignored.
///
/// ```text
/// # pool "api"
/// http://10.0.0.1:8080
/// http://10.0.0.2:8080  weight=3   # bigger machine
/// https://[2001:db8::7]:8443
/// ```
///
/// # Behaviour
///
/// A background task checks the file's modification time and size every poll interval
/// (default 1 s; no inotify) and re-reads it when either changed. Keys are the URLs, values
/// [`WeightedUrl`]s; the stream yields the differences (Removes, then Inserts; a changed
/// weight is an Insert that replaces). A file that is missing, unreadable or has an invalid
/// line (duplicates included) yields one `Err` item naming the line, and the previous
/// endpoints are kept until a valid version appears: a half-edited file never empties a
/// pool. Write the file atomically (write a temporary file, then rename it) to avoid
/// reading it mid-write.
///
/// Clones are independent subscribers (the current endpoints replayed as Inserts); the
/// task stops when the last clone is dropped. `new` must be called within a Tokio runtime.
#[derive(Clone)]
pub struct FileDiscovery {
    sub: FileSubscription,
}

struct FileSubscription(Subscription<FileSet, String, WeightedUrl>);

impl Clone for FileSubscription {
    fn clone(&self) -> Self {
        Self(self.0.resubscribe())
    }
}

impl FileDiscovery {
    /// Watches `path`, checking it every second.
    pub fn new(path: impl Into<PathBuf>) -> Result<Self, BoxError> {
        Self::with_poll_interval(path, Duration::from_secs(1))
    }

    /// Watches `path`, checking it every `interval` (at least 10 ms).
    pub fn with_poll_interval(
        path: impl Into<PathBuf>,
        interval: Duration,
    ) -> Result<Self, BoxError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "file discovery must be started within a Tokio runtime")?;
        let (publisher, rx) = Publisher::new();
        runtime.spawn(watch_file(
            path.into(),
            interval.max(Duration::from_millis(10)),
            publisher,
        ));
        Ok(Self {
            sub: FileSubscription(Subscription::new(rx, FileSet::clone)),
        })
    }
}

impl fmt::Debug for FileDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileDiscovery").finish_non_exhaustive()
    }
}

impl Stream for FileDiscovery {
    type Item = Result<Change<String, WeightedUrl>, BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().sub.0.poll_change(cx)
    }
}

/// What tells that a file changed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fingerprint {
    Present {
        modified: Option<SystemTime>,
        len: u64,
    },
    Unreadable(std::io::ErrorKind),
}

fn fingerprint(path: &Path) -> Fingerprint {
    match std::fs::metadata(path) {
        Ok(meta) => Fingerprint::Present {
            modified: meta.modified().ok(),
            len: meta.len(),
        },
        Err(error) => Fingerprint::Unreadable(error.kind()),
    }
}

async fn watch_file(path: PathBuf, interval: Duration, publisher: Publisher<FileSet>) {
    let path = Arc::new(path);
    let mut last: Option<Fingerprint> = None;
    loop {
        let task_path = Arc::clone(&path);
        let previous = last.clone();
        // Metadata first; the file is read only when it changed.
        let checked = tokio::task::spawn_blocking(move || {
            let now = fingerprint(&task_path);
            if previous.as_ref() == Some(&now) {
                return (now, None);
            }
            let outcome = match &now {
                Fingerprint::Present { .. } => read_file(&task_path),
                Fingerprint::Unreadable(kind) => Err(format!(
                    "cannot read {}: {}",
                    task_path.display(),
                    std::io::Error::from(*kind)
                )
                .into()),
            };
            (now, Some(outcome))
        });
        let checked = tokio::select! {
            checked = checked => checked,
            _ = publisher.closed() => return,
        };
        match checked {
            Ok((now, Some(Ok(set)))) => {
                last = Some(now);
                publisher.publish(set);
            }
            Ok((now, Some(Err(error)))) => {
                last = Some(now);
                tracing::debug!(%error, "file discovery read failed");
                publisher.fail(error);
            }
            Ok((_, None)) => {}
            Err(join) => publisher.fail(Message(format!("file read task failed: {join}"))),
        }
        if !publisher.sleep(interval).await {
            return;
        }
    }
}

fn read_file(path: &Path) -> Result<FileSet, BoxError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// Parses the file format documented on [`FileDiscovery`].
pub(crate) fn parse(text: &str) -> Result<FileSet, String> {
    let mut set = FileSet::new();
    for (n, raw) in text.lines().enumerate() {
        let line_no = n + 1;
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        let mut tokens = line.split_whitespace();
        let Some(url) = tokens.next() else { continue };
        let mut weight = 1u32;
        for token in tokens {
            match token.strip_prefix("weight=") {
                Some(value) => {
                    weight = value
                        .parse()
                        .map_err(|_| format!("line {line_no}: invalid weight {value:?}"))?;
                }
                None => return Err(format!("line {line_no}: unexpected {token:?}")),
            }
        }
        let endpoint = WeightedUrl::new(url, weight).map_err(|e| format!("line {line_no}: {e}"))?;
        if set.insert(url.to_owned(), endpoint).is_some() {
            return Err(format!("line {line_no}: {url} is listed twice"));
        }
    }
    Ok(set)
}

fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}
