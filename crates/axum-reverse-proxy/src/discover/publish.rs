//! The plumbing shared by every live source: one background task publishes the whole
//! endpoint set through a `tokio::sync::watch` channel, and every stream handle is a
//! subscriber that turns successive sets into `Change`s.
//!
//! Why a watch of the *set* rather than a channel of *changes*: each clone of a source can
//! then be an independent subscriber (it starts from an empty set, so the current set is
//! replayed as Inserts), nothing queues up for a slow or idle clone, and the task learns
//! that every handle is gone from `Sender::closed`, which is how it stops.

use std::collections::{BTreeMap, VecDeque};
use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tower::discover::Change;

use crate::error::BoxError;

/// A failure the task reports; `seq` tells subscribers whether they have seen it.
#[derive(Clone)]
pub(crate) struct Failure {
    seq: u64,
    error: Arc<dyn StdError + Send + Sync>,
}

/// What the task publishes.
pub(crate) struct State<M> {
    /// `None` until the first round produced a set.
    set: Option<Arc<M>>,
    /// The failure of the latest round, cleared by the next success.
    failure: Option<Failure>,
}

impl<M> Clone for State<M> {
    fn clone(&self) -> Self {
        Self {
            set: self.set.clone(),
            failure: self.failure.clone(),
        }
    }
}

// ===== impl Publisher =====

/// The task's end of the channel.
pub(crate) struct Publisher<M> {
    tx: watch::Sender<State<M>>,
    seq: AtomicU64,
}

impl<M: PartialEq + Send + Sync + 'static> Publisher<M> {
    /// A publisher and its first subscriber's receiver.
    pub(crate) fn new() -> (Self, watch::Receiver<State<M>>) {
        let (tx, rx) = watch::channel(State {
            set: None,
            failure: None,
        });
        (
            Self {
                tx,
                seq: AtomicU64::new(0),
            },
            rx,
        )
    }

    /// Publishes a successful round. Subscribers are woken only if the set changed or a
    /// failure is cleared.
    pub(crate) fn publish(&self, set: M) {
        self.tx.send_if_modified(|state| {
            let same = state.set.as_deref() == Some(&set);
            if same && state.failure.is_none() {
                return false;
            }
            if !same {
                state.set = Some(Arc::new(set));
            }
            state.failure = None;
            // Clearing a failure changes nothing a subscriber emits.
            !same
        });
    }

    /// Publishes a failed round; the previous set is kept.
    pub(crate) fn fail(&self, error: impl Into<BoxError>) {
        let failure = Failure {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            error: Arc::from(error.into()),
        };
        self.tx.send_modify(|state| state.failure = Some(failure));
    }

    /// Resolves when every subscriber is gone.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await
    }

    /// Sleeps for `delay`; `false` if every subscriber went away meanwhile.
    pub(crate) async fn sleep(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.tx.closed() => false,
        }
    }
}

// ===== impl Subscription =====

/// A stream of `Change`s over a published set, projected to `(K, V)` pairs.
pub(crate) struct Subscription<M, K, V> {
    rx: watch::Receiver<State<M>>,
    stream: WatchStream<State<M>>,
    project: fn(&M) -> BTreeMap<K, V>,
    known: BTreeMap<K, V>,
    queue: VecDeque<Result<Change<K, V>, BoxError>>,
    seen_failure: u64,
}

impl<M, K, V> Subscription<M, K, V>
where
    M: Send + Sync + 'static,
    K: Ord + Clone,
    V: PartialEq + Clone,
{
    pub(crate) fn new(rx: watch::Receiver<State<M>>, project: fn(&M) -> BTreeMap<K, V>) -> Self {
        Self {
            stream: WatchStream::new(rx.clone()),
            rx,
            project,
            known: BTreeMap::new(),
            queue: VecDeque::new(),
            seen_failure: 0,
        }
    }

    /// A new subscriber to the same task, starting from an empty set.
    pub(crate) fn resubscribe(&self) -> Self {
        Self::new(self.rx.clone(), self.project)
    }

    /// A new subscriber to the same task with another projection.
    #[cfg(feature = "dns")]
    pub(crate) fn resubscribe_as<K2, V2>(
        &self,
        project: fn(&M) -> BTreeMap<K2, V2>,
    ) -> Subscription<M, K2, V2>
    where
        K2: Ord + Clone,
        V2: PartialEq + Clone,
    {
        Subscription::new(self.rx.clone(), project)
    }

    /// Queues what a new state means for this subscriber: Removes first, then Inserts (an
    /// Insert for a known key replaces its value), then the failure if it is new.
    fn absorb(&mut self, state: &State<M>) {
        if let Some(set) = &state.set {
            let next = (self.project)(set);
            for key in self.known.keys() {
                if !next.contains_key(key) {
                    self.queue.push_back(Ok(Change::Remove(key.clone())));
                }
            }
            for (key, value) in &next {
                if self.known.get(key) != Some(value) {
                    self.queue
                        .push_back(Ok(Change::Insert(key.clone(), value.clone())));
                }
            }
            self.known = next;
        }
        if let Some(failure) = &state.failure
            && failure.seq != self.seen_failure
        {
            self.seen_failure = failure.seq;
            self.queue
                .push_back(Err(Box::new(SharedError(Arc::clone(&failure.error)))));
        }
    }

    pub(crate) fn poll_change(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Change<K, V>, BoxError>>> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Poll::Ready(Some(item));
            }
            match Pin::new(&mut self.stream).poll_next(cx) {
                Poll::Ready(Some(state)) => self.absorb(&state),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

// ===== impl SharedError =====

/// One failure handed to several subscribers.
struct SharedError(Arc<dyn StdError + Send + Sync>);

impl fmt::Debug for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl StdError for SharedError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

/// An error carrying only a message.
#[derive(Debug)]
pub(crate) struct Message(pub(crate) String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Message {}

/// Capped exponential backoff: `floor`, `2·floor`, … up to `cap`.
#[cfg(any(feature = "dns", feature = "etcd", test))]
pub(crate) fn backoff(floor: Duration, cap: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    floor.saturating_mul(factor).min(cap.max(floor))
}
