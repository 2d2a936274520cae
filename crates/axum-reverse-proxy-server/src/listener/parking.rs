//! Idle client connections parked outside tokio: no task, no reactor registration and no
//! buffer, until their client's next bytes arrive or they idle out.
//!
//! # Why
//!
//! An idle HTTP/1.1 connection that has given back hyper's buffers (see
//! `http::Conn::until_idle`) still costs, waiting in a task of its own: the task (512
//! bytes with tokio's header), the socket's registration in tokio's reactor (256 bytes)
//! and a timer entry. nginx keeps about 0.6 KiB per idle keep-alive connection in all;
//! those two alone are more than that.
//!
//! # How
//!
//! The lot is an epoll set of its own ([`mio::Poll`]) and one thread that waits on it.
//! A connection parks by leaving tokio's reactor ([`TokioTcpStream::into_std`]) and
//! handing its socket, its deadline and its state (`T`) to the lot, which registers the
//! socket for readability in its set (epoll reports a socket already readable at
//! registration: bytes that arrive while a connection parks are not missed); then the
//! connection's task ends. When the socket becomes readable (the next request, the
//! client's FIN or an error), the thread takes it out of the set and hands it and the
//! state to `resume` in the runtime's context, which registers it with tokio again and
//! spawns a task for it. When the deadline passes first, the socket is closed; on
//! [`ParkingLot::close`] (shutdown), all of them are.
//!
//! A thread, not a task: a task would wait on the set through tokio's `AsyncFd`, whose
//! safe constructors tokio deprecates as unsound (tokio#8587) and whose replacement is
//! `unsafe`, which this crate forbids. The thread sleeps in `epoll_wait` until a
//! socket is readable or the soonest deadline; parking takes the lot's lock, but only
//! connections idle for `release_idle_buffers_after` (1 s by default) park, so no
//! request of a busy connection ever takes it.
//!
//! Per parked connection the lot keeps the socket, its deadline and the state in a slab
//! (80 bytes here) and the deadline again in an ordered set (about 25 bytes); the
//! kernel's epoll item is not in the process's memory. Parking and resuming cost four
//! `epoll_ctl` calls, a wake-up of the thread when the deadline is the soonest, and a
//! task spawn.

use std::collections::BTreeSet;
use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use slab::Slab;
use tokio::net::TcpStream as TokioTcpStream;
use tokio::runtime::Handle;

/// How many readiness events one wait of the thread takes at most.
const EVENTS_PER_WAIT: usize = 256;

/// The token of the lot's [`Waker`]; connections' tokens are their keys in the slab.
const WAKE: Token = Token(usize::MAX);

/// A handle on the parking lot. Dropping it stops the thread, which closes what is
/// parked.
pub(crate) struct ParkingLot<T> {
    lot: Arc<Lot<T>>,
}

/// What the handle and the thread share.
struct Lot<T> {
    /// The lot's epoll set, to add and remove sockets while the thread waits on it.
    registry: Registry,
    /// Wakes the thread: the soonest deadline changed, or the lot closed.
    waker: Waker,
    state: Mutex<State<T>>,
    /// How many times the thread has computed its timeout and is about to wait: lets a
    /// test know the thread waits for a given deadline.
    #[cfg(test)]
    waits: std::sync::atomic::AtomicUsize,
}

/// The parked connections. A connection's key in `parked` is its epoll token. A key is
/// freed only with its socket out of the epoll set (deregistered, or closed before the
/// lock is released), so an event never reaches the connection that reuses its key.
struct State<T> {
    parked: Slab<Parked<T>>,
    /// (deadline, key) of every parked connection, soonest first.
    deadlines: BTreeSet<(Millis, usize)>,
    /// What deadlines count from.
    epoch: Instant,
    closed: bool,
}

/// A deadline, in milliseconds from the lot's epoch.
type Millis = u64;

/// A parked connection.
struct Parked<T> {
    socket: TcpStream,
    /// When it idles out.
    until: Millis,
    state: T,
}

impl<T> State<T> {
    fn millis(&self, at: Instant) -> Millis {
        let since = at.saturating_duration_since(self.epoch);
        Millis::try_from(since.as_millis()).unwrap_or(Millis::MAX)
    }

    fn instant(&self, millis: Millis) -> Instant {
        self.epoch + Duration::from_millis(millis)
    }
}

impl<T: Send + 'static> ParkingLot<T> {
    /// Start the lot's thread. `resume` gets each connection whose client sent something,
    /// called in the context of `runtime` (so it can register the socket and spawn).
    pub(crate) fn start(runtime: Handle, resume: fn(T, TcpStream)) -> io::Result<ParkingLot<T>> {
        let poll = Poll::new()?;
        let lot = Arc::new(Lot {
            registry: poll.registry().try_clone()?,
            waker: Waker::new(poll.registry(), WAKE)?,
            state: Mutex::new(State {
                parked: Slab::new(),
                deadlines: BTreeSet::new(),
                epoch: Instant::now(),
                closed: false,
            }),
            #[cfg(test)]
            waits: std::sync::atomic::AtomicUsize::new(0),
        });
        let thread_lot = Arc::clone(&lot);
        std::thread::Builder::new()
            .name("parking-lot".into())
            .spawn(move || thread_lot.run(poll, &runtime, resume))?;
        Ok(ParkingLot { lot })
    }

    /// Park `socket` until its next bytes arrive (then it goes to `resume` with `state`)
    /// or until `until` (then it is closed). `Err` gives the state back when it cannot
    /// park (the lot has closed, or the socket cannot move): the socket is closed then.
    pub(crate) fn park(
        &self,
        socket: TokioTcpStream,
        until: Instant,
        state: T,
    ) -> Result<(), (io::Error, T)> {
        let socket = match socket.into_std() {
            Ok(socket) => socket,
            Err(err) => return Err((err, state)),
        };
        let mut lot = self.lot.lock();
        if lot.closed {
            let err = io::Error::new(io::ErrorKind::NotConnected, "shutting down");
            return Err((err, state));
        }
        let until = lot.millis(until);
        let entry = lot.parked.vacant_entry();
        let key = entry.key();
        // Registered under the lock: the thread cannot see its event before its entry.
        let fd = socket.as_raw_fd();
        let registered =
            self.lot
                .registry
                .register(&mut SourceFd(&fd), Token(key), Interest::READABLE);
        if let Err(err) = registered {
            return Err((err, state));
        }
        entry.insert(Parked {
            socket,
            until,
            state,
        });
        let soonest = lot.deadlines.first().is_none_or(|&(at, _)| until < at);
        lot.deadlines.insert((until, key));
        drop(lot);
        if soonest {
            // The thread may be sleeping until a later deadline.
            let _ = self.lot.waker.wake();
        }
        Ok(())
    }

    /// Close every parked connection and stop the thread; later connections cannot park.
    pub(crate) fn close(&self) {
        let mut lot = self.lot.lock();
        lot.closed = true;
        lot.deadlines.clear();
        tracing::debug!(parked = lot.parked.len(), "parking lot closed");
        // Closing a socket takes it out of the epoll set.
        lot.parked.clear();
        drop(lot);
        let _ = self.lot.waker.wake();
    }
}

impl<T> Drop for ParkingLot<T> {
    fn drop(&mut self) {
        self.lot.lock().closed = true;
        let _ = self.lot.waker.wake();
    }
}

impl<T> Lot<T> {
    /// The state; a panic while it was held left it consistent (every change to it is
    /// a single insertion or removal), so a poisoned lock is taken as it is.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The thread: wait for readable sockets and deadlines until the lot closes.
    fn run(&self, mut poll: Poll, runtime: &Handle, resume: fn(T, TcpStream)) {
        let mut events = Events::with_capacity(EVENTS_PER_WAIT);
        let mut woken = Vec::new();
        loop {
            let timeout = {
                let lot = self.lock();
                if lot.closed {
                    return;
                }
                let soonest = lot.deadlines.first().map(|&(at, _)| lot.instant(at));
                // mio rounds the wait up to whole milliseconds: never early.
                soonest.map(|at| at.saturating_duration_since(Instant::now()))
            };
            #[cfg(test)]
            self.waits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    tracing::error!("parking lot: waiting failed, closing it: {err}");
                    let mut lot = self.lock();
                    lot.closed = true;
                    lot.deadlines.clear();
                    lot.parked.clear();
                    return;
                }
            }
            {
                let mut lot = self.lock();
                if lot.closed {
                    return;
                }
                for event in events.iter().filter(|event| event.token() != WAKE) {
                    let key = event.token().0;
                    let Some(parked) = lot.parked.try_remove(key) else {
                        continue;
                    };
                    lot.deadlines.remove(&(parked.until, key));
                    let fd = parked.socket.as_raw_fd();
                    match self.registry.deregister(&mut SourceFd(&fd)) {
                        Ok(()) => woken.push(parked),
                        // Dropped, and so closed, here.
                        Err(err) => tracing::debug!("cannot unpark a connection: {err}"),
                    }
                }
                let now = lot.millis(Instant::now());
                while let Some(&(at, key)) = lot.deadlines.first() {
                    if at > now {
                        break;
                    }
                    lot.deadlines.pop_first();
                    // Closed here, under the lock: see `State`.
                    drop(lot.parked.try_remove(key));
                }
                if lot.parked.capacity() > 1024 && lot.parked.len() < lot.parked.capacity() / 4 {
                    lot.parked.shrink_to_fit();
                }
            }
            // Outside the lock: spawning tasks.
            let _context = runtime.enter();
            for parked in woken.drain(..) {
                resume(parked.state, parked.socket);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;

    /// What a test parks: its connection's number, and where `resume` reports it.
    type Tag = (usize, mpsc::UnboundedSender<(usize, TcpStream)>);

    fn report((n, to): Tag, socket: TcpStream) {
        let _ = to.send((n, socket));
    }

    /// `n` connected pairs: (client, server side as tokio has it).
    async fn pairs(n: usize) -> Vec<(TcpStream, TokioTcpStream)> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut pairs = Vec::new();
        for _ in 0..n {
            let client = TcpStream::connect(addr).unwrap();
            let (server, _) = listener.accept().await.unwrap();
            pairs.push((client, server));
        }
        pairs
    }

    /// Wait (bounded) for the next resumed connection.
    async fn next(resumed: &mut mpsc::UnboundedReceiver<(usize, TcpStream)>) -> (usize, TcpStream) {
        tokio::time::timeout(Duration::from_secs(10), resumed.recv())
            .await
            .expect("no connection resumed")
            .expect("the lot is gone")
    }

    /// Whether `client`'s peer closes the connection within 10 s.
    fn closed(client: &mut TcpStream) -> bool {
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        match client.read(&mut [0u8; 1]) {
            Ok(n) => n == 0,
            Err(err) => err.kind() == io::ErrorKind::ConnectionReset,
        }
    }

    #[tokio::test]
    async fn resumes_exactly_the_connections_whose_client_sent_something() {
        let lot = ParkingLot::start(Handle::current(), report).unwrap();
        let (tx, mut resumed) = mpsc::unbounded_channel();
        let mut clients = Vec::new();
        let later = Instant::now() + Duration::from_secs(60);
        // Every third client writes nothing; of the others, one in two writes before its
        // connection parks (readable at registration: not missed either), the other
        // after all have parked, in reverse order.
        let hello = |n: usize| format!("hello {n}");
        for (n, (mut client, server)) in pairs(50).await.into_iter().enumerate() {
            if n % 3 == 1 {
                client.write_all(hello(n).as_bytes()).unwrap();
            }
            assert!(lot.park(server, later, (n, tx.clone())).is_ok());
            clients.push(client);
        }
        for n in (0..50).rev().filter(|n| n % 3 == 2) {
            clients[n].write_all(hello(n).as_bytes()).unwrap();
        }
        let mut seen = Vec::new();
        for _ in (0..50).filter(|n| n % 3 != 0) {
            let (n, socket) = next(&mut resumed).await;
            // Back in tokio, with the client's bytes unread.
            let socket = TokioTcpStream::from_std(socket).unwrap();
            socket.readable().await.unwrap();
            let mut buf = [0u8; 32];
            let got = socket.try_read(&mut buf).unwrap();
            assert_eq!(&buf[..got], hello(n).as_bytes());
            seen.push(n);
        }
        seen.sort_unstable();
        let expected: Vec<usize> = (0..50).filter(|n| n % 3 != 0).collect();
        assert_eq!(seen, expected);
        // The silent ones are still parked: nothing more comes.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), resumed.recv())
                .await
                .is_err()
        );
        assert_eq!(lot.lot.lock().parked.len(), 17);
    }

    #[tokio::test]
    async fn a_client_that_leaves_resumes_its_connection_to_see_the_end() {
        let lot = ParkingLot::start(Handle::current(), report).unwrap();
        let (tx, mut resumed) = mpsc::unbounded_channel();
        let mut pairs = pairs(1).await;
        let (client, server) = pairs.pop().unwrap();
        let later = Instant::now() + Duration::from_secs(60);
        assert!(lot.park(server, later, (7, tx)).is_ok());
        drop(client);
        let (n, socket) = next(&mut resumed).await;
        assert_eq!(n, 7);
        let socket = TokioTcpStream::from_std(socket).unwrap();
        socket.readable().await.unwrap();
        assert_eq!(socket.try_read(&mut [0u8; 8]).unwrap(), 0);
    }

    #[tokio::test]
    async fn connections_are_closed_at_their_deadlines_soonest_first() {
        let lot = ParkingLot::start(Handle::current(), report).unwrap();
        let (tx, _resumed) = mpsc::unbounded_channel();
        let mut pairs = pairs(2).await;
        let (mut late_client, late) = pairs.pop().unwrap();
        let (mut soon_client, soon) = pairs.pop().unwrap();
        let start = Instant::now();
        // The later deadline first, and the thread waiting for it: it must be woken for
        // the sooner one.
        let waits = |lot: &ParkingLot<Tag>| lot.lot.waits.load(std::sync::atomic::Ordering::SeqCst);
        let before = waits(&lot);
        assert!(
            lot.park(late, start + Duration::from_secs(60), (1, tx.clone()))
                .is_ok()
        );
        let waiting = async {
            while waits(&lot) == before {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the thread never waited for the first deadline");
        assert!(
            lot.park(soon, start + Duration::from_millis(300), (2, tx))
                .is_ok()
        );
        let (was_closed, at) =
            tokio::task::spawn_blocking(move || (closed(&mut soon_client), Instant::now()))
                .await
                .unwrap();
        assert!(was_closed);
        let took = at - start;
        assert!(took >= Duration::from_millis(300), "closed early: {took:?}");
        assert_eq!(lot.lot.lock().parked.len(), 1);
        // The other is still open: a read times out rather than seeing the end.
        late_client
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let err = late_client.read(&mut [0u8; 1]).unwrap_err();
        assert!(matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ));
    }

    #[tokio::test]
    async fn closing_the_lot_closes_what_is_parked_and_refuses_more() {
        let lot = ParkingLot::start(Handle::current(), report).unwrap();
        let (tx, _resumed) = mpsc::unbounded_channel();
        let mut pairs = pairs(2).await;
        let (_second_client, second) = pairs.pop().unwrap();
        let (mut client, server) = pairs.pop().unwrap();
        let later = Instant::now() + Duration::from_secs(60);
        assert!(lot.park(server, later, (1, tx.clone())).is_ok());
        lot.close();
        assert!(
            tokio::task::spawn_blocking(move || closed(&mut client))
                .await
                .unwrap()
        );
        let (err, (n, _)) = lot.park(second, later, (2, tx)).unwrap_err();
        assert_eq!(n, 2);
        assert_eq!(err.kind(), io::ErrorKind::NotConnected);
    }
}
