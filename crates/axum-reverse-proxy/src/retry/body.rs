//! Replay buffering: a request body that can be sent again after a failed attempt.
//!
//! The client's body is not read ahead of the first attempt. Instead, every attempt gets an
//! [`AttemptBody`] reading through one shared [`Tee`]: the first attempt pulls frames from the
//! client and each data frame is also recorded (a cheap `Bytes` clone, no copy) as long as the
//! recording stays within the cap. A later attempt first replays the recorded frames, then
//! continues pulling from the client where the previous attempt stopped, recording as it goes.
//! Trailers are recorded and replayed too.
//!
//! So the body of every attempt is exactly the client's body, byte for byte, and matches the
//! original `Content-Length`. Whenever that can no longer be guaranteed (bytes went past the
//! cap, or the client's body failed), [`Replay::replay`] refuses and the request is not retried.
//! A body no attempt has started to read is always replayable, whatever its size: a connect
//! failure never reads the body, so large uploads are retried after one at no cost.
//!
//! Each replay starts a new generation; the body handed to an earlier attempt (which may still
//! be held by a connection task) then fails on its next poll instead of competing for frames.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use axum::body::Body;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::error::BoxError;

// ===== impl Replay =====

/// The request body of one logical request, shared by all of its attempts.
pub(crate) struct Replay {
    /// `None` for a body that was already complete and empty.
    shared: Option<Arc<Mutex<Tee>>>,
}

impl Replay {
    /// Wraps the client's body: returns the replay handle and the body of the first attempt.
    ///
    /// At most `max_bytes` of body data are kept for replay.
    pub(crate) fn new(body: Body, max_bytes: usize) -> (Replay, Body) {
        if body.is_end_stream() {
            return (Replay { shared: None }, Body::empty());
        }
        // A body announced as larger than the cap is forwarded without recording anything;
        // it stays replayable only until its first byte is read.
        let max = u64::try_from(max_bytes).unwrap_or(u64::MAX);
        let recording = body.size_hint().lower() <= max;
        let tee = Tee {
            source: Some(body),
            recorded: Vec::new(),
            recorded_len: 0,
            trailers: None,
            max_bytes,
            recording,
            lost: false,
            failed: false,
            generation: 0,
        };
        let shared = Arc::new(Mutex::new(tee));
        let first = AttemptBody::new(shared.clone(), 0);
        (
            Replay {
                shared: Some(shared),
            },
            Body::new(first),
        )
    }

    /// A body for the next attempt, identical to the client's, or `None` if that can no
    /// longer be produced. Bodies handed to earlier attempts stop working.
    pub(crate) fn replay(&self) -> Option<Body> {
        let Some(shared) = &self.shared else {
            return Some(Body::empty());
        };
        let mut tee = lock(shared);
        if tee.lost || tee.failed {
            return None;
        }
        tee.generation = tee.generation.wrapping_add(1);
        let generation = tee.generation;
        drop(tee);
        Some(Body::new(AttemptBody::new(shared.clone(), generation)))
    }
}

// ===== impl Tee =====

/// State shared by the attempts of one request.
struct Tee {
    /// The part of the client's body that no attempt has read yet; `None` once it has
    /// ended or failed.
    source: Option<Body>,
    /// Data frames read from the client so far, in order (while `recording`).
    recorded: Vec<Bytes>,
    /// Total length of `recorded`.
    recorded_len: usize,
    /// The client's trailers, once read (while `recording`).
    trailers: Option<HeaderMap>,
    max_bytes: usize,
    /// Frames read from the client are still being kept.
    recording: bool,
    /// Some frame was read from the client and not kept: the body can no longer be replayed.
    lost: bool,
    /// The client's body returned an error.
    failed: bool,
    /// Only the attempt body of this generation may read.
    generation: u64,
}

impl Tee {
    /// Keeps a copy of `frame`, just read from the client, if it fits under the cap;
    /// otherwise stops recording for good.
    fn record(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            if data.is_empty() {
                return;
            }
            let fits = self
                .recorded_len
                .checked_add(data.len())
                .is_some_and(|len| len <= self.max_bytes);
            if self.recording && fits {
                self.recorded.push(data.clone());
                self.recorded_len += data.len();
                return;
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            if self.recording {
                self.trailers = Some(trailers.clone());
                return;
            }
        } else {
            // A frame kind this version of http-body does not know: it cannot be replayed.
        }
        self.recording = false;
        self.lost = true;
        self.recorded = Vec::new();
        self.recorded_len = 0;
    }
}

// ===== impl AttemptBody =====

/// The request body of one attempt: recorded frames first, then the rest of the client's body.
struct AttemptBody {
    shared: Arc<Mutex<Tee>>,
    generation: u64,
    /// Index of the next recorded frame to replay.
    next: usize,
    /// Bytes of the recording this attempt has already yielded.
    replayed: usize,
    trailers_sent: bool,
}

impl AttemptBody {
    fn new(shared: Arc<Mutex<Tee>>, generation: u64) -> Self {
        AttemptBody {
            shared,
            generation,
            next: 0,
            replayed: 0,
            trailers_sent: false,
        }
    }
}

impl HttpBody for AttemptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut tee = lock(&this.shared);
        if tee.generation != this.generation {
            return Poll::Ready(Some(Err(Superseded.into())));
        }

        if let Some(chunk) = tee.recorded.get(this.next) {
            let chunk = chunk.clone();
            this.next += 1;
            this.replayed += chunk.len();
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }

        if let Some(source) = tee.source.as_mut() {
            match ready!(Pin::new(source).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // This attempt was caught up with the recording, and stays so (the
                    // recording either grew by this frame or was dropped).
                    tee.record(&frame);
                    this.next = tee.recorded.len();
                    this.replayed = tee.recorded_len;
                    if frame.is_trailers() {
                        this.trailers_sent = true;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Some(Err(err)) => {
                    tee.source = None;
                    tee.failed = true;
                    return Poll::Ready(Some(Err(err.into())));
                }
                None => tee.source = None,
            }
        }

        if !this.trailers_sent
            && let Some(trailers) = &tee.trailers
        {
            this.trailers_sent = true;
            return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        let tee = lock(&self.shared);
        if tee.generation != self.generation || self.next < tee.recorded.len() {
            return false;
        }
        let trailers_done = self.trailers_sent || tee.trailers.is_none();
        match &tee.source {
            Some(source) => source.is_end_stream() && trailers_done,
            None => tee.failed || trailers_done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        let tee = lock(&self.shared);
        let source = match &tee.source {
            Some(source) => source.size_hint(),
            None => SizeHint::with_exact(0),
        };
        let left = tee.recorded_len.saturating_sub(self.replayed);
        let left = u64::try_from(left).unwrap_or(u64::MAX);
        let lower = source.lower().saturating_add(left);
        match source.upper().map(|upper| upper.saturating_add(left)) {
            Some(upper) if upper == lower => SizeHint::with_exact(upper),
            Some(upper) => {
                let mut hint = SizeHint::new();
                hint.set_upper(upper.max(lower));
                hint.set_lower(lower);
                hint
            }
            None => {
                let mut hint = SizeHint::new();
                hint.set_lower(lower);
                hint
            }
        }
    }
}

impl fmt::Debug for AttemptBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptBody")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Locks the shared state. A panic in another attempt's poll cannot leave it inconsistent
/// in a way that matters here, so poisoning is ignored.
fn lock(shared: &Mutex<Tee>) -> MutexGuard<'_, Tee> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The error an earlier attempt's body returns once a retry has taken over the request body.
#[derive(Debug)]
struct Superseded;

impl fmt::Display for Superseded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body taken over by a retry")
    }
}

impl StdError for Superseded {}
