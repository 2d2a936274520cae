//! Faults: upstreams that refuse, reset, hang or answer garbage, pooled connections that
//! die as they are reused, discovery that fails, and clients that go away. Each case
//! checks what the client gets (a status, or a connection closed without a valid end),
//! that a concurrent client keeps getting 200s through the same server, and that file
//! descriptors and tasks come back to where they were.
//!
//! # Counting
//! File descriptors are the entries of `/proc/self/fd`, which belong to the whole test
//! process: every test here takes one lock *before* it builds its runtime and releases
//! it after the runtime is gone, so no other test's sockets (or runtime) come and go
//! while one counts. Tasks are `num_alive_tasks()` of the test's own runtime.
//!
//! Pooled idle upstream connections are legitimate. While the proxy serves, each open
//! upstream connection is exactly 2 descriptors (both ends live in this process) and 2
//! tasks (the pool's connection task and the origin's; 3 over HTTP/2, where hyper runs
//! the client connection in a task of its own). The origins count their open
//! connections, so [`Scene::finish`] expects exactly the baseline, plus the server (its
//! listener, its task and axum's shutdown-signal task), plus what the open connections
//! hold. Then it shuts the server down, and with the proxies dropped the counts must be
//! back at the baseline exactly.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum_reverse_proxy::{
    BalancedProxy, DiscoverableBalancedProxy, ProxyError, ProxyPolicy, ReverseProxy,
};
use bytes::Bytes;
use common::{RawClient, RawResponse, STEP, UpBody, within};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tower::ServiceExt;
use tower::discover::Change;

// ===== Runner =====

/// Run `test` alone (see the module docs) on a two-worker runtime.
fn run(test: impl Future<Output = ()>) {
    static SERIAL: Mutex<()> = Mutex::new(());
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    logs::init();
    logs::clear();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(test);
    // The runtime (its workers, its epoll and its sockets) is gone before the lock is
    // released: locals drop in reverse order.
}

/// What the library logged, captured for the assertions on causes.
mod logs {
    use std::io::Write;
    use std::sync::{Mutex, Once, PoisonError};

    static LINES: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    struct Capture;

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            LINES
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    pub(crate) fn init() {
        static INIT: Once = Once::new();
        INIT.call_once(|| {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("axum_reverse_proxy=debug")
                .with_ansi(false)
                .with_writer(|| Capture)
                .try_init();
        });
    }

    pub(crate) fn clear() {
        LINES.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// Everything logged since the test began.
    pub(crate) fn text() -> String {
        String::from_utf8_lossy(&LINES.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

// ===== Counting =====

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    fds: usize,
    tasks: usize,
}

impl Counts {
    fn now() -> Counts {
        Counts {
            fds: std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count()),
            tasks: tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
        }
    }

    fn plus(self, fds: usize, tasks: usize) -> Counts {
        Counts {
            fds: self.fds + fds,
            tasks: self.tasks + tasks,
        }
    }
}

/// The open descriptors, for failure messages.
fn fd_list() -> String {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return String::new();
    };
    let mut list: Vec<String> = dir
        .filter_map(|e| e.ok())
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!("{}→{}", e.file_name().to_string_lossy(), target.display())
        })
        .collect();
    list.sort();
    list.join(" ")
}

/// Wait (bounded) until the counts equal `expected()`; they move as connections close.
async fn settle(what: &str, expected: impl Fn() -> Counts) {
    let deadline = Instant::now() + STEP;
    loop {
        let (want, have) = (expected(), Counts::now());
        if want == have {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: expected {want:?}, have {have:?}\nopen: {}",
            fd_list()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait (bounded) until `cond` holds.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + STEP;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ===== Events =====

type Events = mpsc::UnboundedReceiver<&'static str>;
type Tx = mpsc::UnboundedSender<&'static str>;

/// Sends its word when dropped: how an origin tells that its handler or its body stream
/// was dropped (cancelled) rather than finished.
struct Tell(Tx, &'static str);

impl Drop for Tell {
    fn drop(&mut self) {
        let _ = self.0.send(self.1);
    }
}

/// The next event must be `what`.
async fn expect(events: &mut Events, what: &'static str) {
    let got = within(what, events.recv()).await;
    assert_eq!(got, Some(what));
}

/// Wait for the event `what`, skipping others.
async fn expect_eventually(events: &mut Events, what: &'static str) {
    loop {
        match within(what, events.recv()).await {
            Some(got) if got == what => return,
            Some(_) => continue,
            None => panic!("events ended before {what}"),
        }
    }
}

// ===== Origins =====

/// What an origin's open connections hold in this process: each one is 2 descriptors
/// (its end and the pool's) and 2 tasks (its connection task and the pool's), plus one
/// more task for an HTTP/2 one (hyper runs an HTTP/2 client connection in a task of its
/// own beside the pool's).
trait Open {
    fn open(&self) -> usize;
    fn held(&self) -> Counts;
}

/// Counts an open connection until dropped.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A hyper origin (HTTP/1.1 and h2c) on 127.0.0.1:0 that counts its open connections.
struct Origin {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    open_h2: Arc<AtomicUsize>,
}

impl Open for Origin {
    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn held(&self) -> Counts {
        let (open, h2) = (self.open(), self.open_h2.load(Ordering::SeqCst));
        Counts {
            fds: 2 * open,
            tasks: 2 * open + h2,
        }
    }
}

/// Counts an open HTTP/2 connection (known at its first request) until dropped.
struct H2Guard {
    count: Arc<AtomicUsize>,
    seen: AtomicBool,
}

impl H2Guard {
    fn saw(&self, version: http::Version) {
        if version == http::Version::HTTP_2 && !self.seen.swap(true, Ordering::SeqCst) {
            self.count.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for H2Guard {
    fn drop(&mut self) {
        if self.seen.load(Ordering::SeqCst) {
            self.count.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Origin {
    async fn start<F, Fut>(handler: F) -> Origin
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<UpBody>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let open_h2 = Arc::new(AtomicUsize::new(0));
        let (open2, open_h2_2) = (Arc::clone(&open), Arc::clone(&open_h2));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                open2.fetch_add(1, Ordering::SeqCst);
                let guard = OpenGuard(Arc::clone(&open2));
                let h2 = Arc::new(H2Guard {
                    count: Arc::clone(&open_h2_2),
                    seen: AtomicBool::new(false),
                });
                let handler = Arc::clone(&handler);
                tokio::spawn(async move {
                    let _guard = guard;
                    let h2_guard = Arc::clone(&h2);
                    let svc = service_fn(move |req: Request<Incoming>| {
                        h2.saw(req.version());
                        let response = handler(req);
                        async move { Ok::<_, Infallible>(response.await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    drop(h2_guard);
                });
            }
        });
        Origin {
            addr,
            open,
            open_h2,
        }
    }

    /// An origin answering `200 ok` to everything.
    async fn ok() -> Origin {
        Origin::start(|_| async { Response::new(common::full("ok")) }).await
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A connection accepted by a [`RawOrigin`], with the bytes read and not yet used.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next request's head as text (its Content-Length or chunked body is read and
    /// dropped); `None` when the peer closed first.
    async fn request(&mut self) -> Option<String> {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end);
        let lower = head.to_ascii_lowercase();
        if let Some(len) = header_value(&lower, "content-length") {
            let len: usize = len.parse().ok()?;
            while self.buf.len() < len {
                if !self.fill().await {
                    return None;
                }
            }
            self.buf.drain(..len);
        } else if lower.contains("transfer-encoding: chunked") {
            loop {
                if let Some(i) = find(&self.buf, b"0\r\n\r\n") {
                    self.buf.drain(..i + 5);
                    break;
                }
                if !self.fill().await {
                    return None;
                }
            }
        }
        Some(head)
    }

    async fn write(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Read until the peer closes; whether it sent nothing more before closing.
    async fn eof(&mut self) -> bool {
        let had = self.buf.len();
        while self.fill().await {}
        self.buf.len() == had
    }

    /// Close with a FIN.
    async fn close(mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Close with a TCP RST (SO_LINGER 0).
    fn reset(self) {
        let _ = self.stream.set_zero_linger();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of `name` in a lowercased head.
fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// The path of a request head (`GET /path HTTP/1.1`).
fn path_of(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}

/// An origin that speaks raw bytes: `script(n, conn)` runs each accepted connection
/// (`n` counts connections from 0). It counts its open connections.
struct RawOrigin {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

impl Open for RawOrigin {
    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn held(&self) -> Counts {
        Counts {
            fds: 2 * self.open(),
            tasks: 2 * self.open(),
        }
    }
}

impl RawOrigin {
    async fn start<F, Fut>(script: F) -> RawOrigin
    where
        F: Fn(usize, Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let script = Arc::new(script);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (open2, accepted2) = (Arc::clone(&open), Arc::clone(&accepted));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                open2.fetch_add(1, Ordering::SeqCst);
                let guard = OpenGuard(Arc::clone(&open2));
                let n = accepted2.fetch_add(1, Ordering::SeqCst);
                let script = Arc::clone(&script);
                tokio::spawn(async move {
                    let _guard = guard;
                    script(
                        n,
                        Conn {
                            stream,
                            buf: Vec::new(),
                        },
                    )
                    .await;
                });
            }
        });
        RawOrigin {
            addr,
            open,
            accepted,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Tasks the proxy legitimately runs while it lives (discovery, health checks).
struct Background(usize);

impl Open for Background {
    fn open(&self) -> usize {
        0
    }

    fn held(&self) -> Counts {
        Counts {
            fds: 0,
            tasks: self.0,
        }
    }
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

// ===== The proxy under test =====

/// A router served on 127.0.0.1:0 with `ConnectInfo`, that can be shut down.
struct Served {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Served {
    async fn start(app: Router) -> Served {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Served {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stop accepting and wait for every connection to end (graceful shutdown).
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within("the proxy server to shut down", &mut self.task)
            .await
            .unwrap();
    }
}

/// A client that keeps sending `GET /ok/…` through the proxy and insists on `200 ok`.
struct Bystander {
    ok: Arc<AtomicUsize>,
    progress: Arc<Notify>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Bystander {
    fn start(url: String) -> Bystander {
        let ok = Arc::new(AtomicUsize::new(0));
        let progress = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (ok2, progress2, stop2) = (Arc::clone(&ok), Arc::clone(&progress), Arc::clone(&stop));
        let task = tokio::spawn(async move {
            let client = common::http_client();
            while !stop2.load(Ordering::SeqCst) {
                let res = within("a bystander request", client.get(&url).send())
                    .await
                    .expect("bystander request failed");
                assert_eq!(res.status(), StatusCode::OK, "the bystander got a non-200");
                let body = within("a bystander body", res.bytes()).await.unwrap();
                assert_eq!(&body[..], b"ok");
                ok2.fetch_add(1, Ordering::SeqCst);
                progress2.notify_waiters();
            }
        });
        Bystander {
            ok,
            progress,
            stop,
            task,
        }
    }

    /// Wait until the bystander completes two more requests from now: it is not held up
    /// by whatever the test is doing.
    async fn progress(&self) {
        let target = self.ok.load(Ordering::SeqCst) + 2;
        loop {
            let notified = self.progress.notified();
            if self.ok.load(Ordering::SeqCst) >= target {
                return;
            }
            within("the bystander to get more 200s", notified).await;
        }
    }

    /// Stop it; every answer it got was a 200.
    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        within("the bystander to stop", self.task)
            .await
            .expect("the bystander saw a failure");
        self.ok.load(Ordering::SeqCst)
    }
}

/// One test's world: the baseline counts (taken once the test's origins run), a proxy
/// server with the faulty routes plus `/ok` to a healthy origin, and a bystander on `/ok`.
struct Scene {
    healthy: Origin,
    base: Counts,
    proxy: Served,
    bystander: Bystander,
}

impl Scene {
    /// Start the world around `app` (the routes under test). Call it after starting the
    /// test's origins, and before anything that should count (discovery tasks…).
    async fn start(app: Router) -> Scene {
        let healthy = Origin::ok().await;
        let base = Counts::now();
        let app = app.merge(ReverseProxy::new("/ok", healthy.url()));
        let proxy = Served::start(app).await;
        let bystander = Bystander::start(proxy.url("/ok/b"));
        bystander.progress().await;
        Scene {
            healthy,
            base,
            proxy,
            bystander,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.proxy.addr
    }

    /// The end of every test: the bystander only ever got 200s; while the proxy serves,
    /// what is open beyond the baseline is the server and the pooled upstream connections
    /// (`origins` and the healthy one, see [`Open`]); once
    /// the server is shut down and the proxies dropped, exactly the baseline.
    ///
    /// Drop every proxy clone the test holds before calling this.
    async fn finish(self, origins: &[&dyn Open]) {
        let Scene {
            healthy,
            base,
            proxy,
            bystander,
        } = self;
        let ok = bystander.stop().await;
        assert!(ok >= 2, "the bystander got {ok} answers");
        // The server: its listener, its task and axum's graceful-shutdown task.
        let serving = || {
            origins
                .iter()
                .map(|o| o.held())
                .fold(base.plus(1, 2), |c, h| c.plus(h.fds, h.tasks))
                .plus(healthy.held().fds, healthy.held().tasks)
        };
        settle(
            "while serving: the listener and pooled connections",
            serving,
        )
        .await;
        let pooled = healthy.open() + origins.iter().map(|o| o.open()).sum::<usize>();
        let held = serving();
        proxy.shutdown().await;
        settle("after the proxy is dropped: the baseline", || base).await;
        assert_eq!(healthy.open(), 0);
        eprintln!(
            "counts: baseline {} fds / {} tasks; serving {} / {} ({pooled} pooled \
             connections); after {} / {}; bystander {ok} × 200",
            base.fds, base.tasks, held.fds, held.tasks, base.fds, base.tasks
        );
    }
}

// ===== Client helpers =====

/// Call a proxy in-process (bounded).
async fn call<S>(svc: &S, req: Request<Body>) -> Response<Body>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    within("the proxy's answer", svc.clone().oneshot(req))
        .await
        .unwrap()
}

/// A whole body (bounded).
async fn text(res: Response<Body>) -> Bytes {
    within("a body", res.into_body().collect())
        .await
        .unwrap()
        .to_bytes()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// The proxy's own answer: `status` with a generic body that does not name `upstream`.
fn assert_generic(res: &RawResponse, status: u16, upstream: SocketAddr) {
    assert_eq!(res.status, status, "{}", res.body_text());
    let body = res.body_text();
    assert!(!body.is_empty());
    assert!(
        !body.contains(&upstream.port().to_string()),
        "the error body names the upstream: {body}"
    );
}

/// The `ProxyError` of a proxy-made answer.
fn proxy_error(res: &Response<Body>) -> ProxyError {
    let err = res
        .extensions()
        .get::<ProxyError>()
        .cloned()
        .unwrap_or_else(|| panic!("no ProxyError on a {} answer", res.status()));
    assert_eq!(err.status(), res.status());
    err
}

/// A `200` response read to the end of its connection must not look complete: short of
/// its Content-Length, or a chunked body without its last chunk. (A body delimited by
/// the close alone could not show that it was cut, so the proxy must not send one.)
fn assert_incomplete(head: &RawResponse, rest: &[u8], what: &str) {
    assert_eq!(head.status, 200, "{what}");
    if let Some(len) = head.header("content-length") {
        let len: usize = len.trim().parse().unwrap();
        assert!(
            rest.len() < len,
            "{what}: {} of {len} bytes: looks complete",
            rest.len()
        );
    } else if head
        .header("transfer-encoding")
        .is_some_and(|te| te.contains("chunked"))
    {
        assert!(
            !chunked_complete(rest),
            "{what}: the chunked body has its last chunk: {:?}",
            String::from_utf8_lossy(rest)
        );
    } else {
        panic!("{what}: a body delimited only by the connection's close");
    }
}

/// What an HTTP/1.1 client read until the connection closed must not look like a whole
/// response: nothing at all, or a 200 whose body is cut (see [`assert_incomplete`]).
fn assert_cut(bytes: &[u8], what: &str) {
    if bytes.is_empty() {
        return;
    }
    let end = find(bytes, b"\r\n\r\n").unwrap_or_else(|| panic!("{what}: a partial head")) + 4;
    let lower = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let head = RawResponse {
        status: lower
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        headers: lower
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_owned(), v.trim().as_bytes().to_vec()))
            .collect(),
        ..RawResponse::default()
    };
    assert_incomplete(&head, &bytes[end..], what);
}

/// Whether `body` holds a chunked body up to its last (zero-size) chunk.
fn chunked_complete(mut body: &[u8]) -> bool {
    loop {
        let Some(eol) = find(body, b"\r\n") else {
            return false;
        };
        let size = String::from_utf8_lossy(&body[..eol]);
        let Ok(size) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
        else {
            return false;
        };
        if size == 0 {
            return true;
        }
        body = &body[eol + 2..];
        if body.len() < size + 2 {
            return false;
        }
        body = &body[size + 2..];
    }
}

/// Send `GET path` on a new raw HTTP/1.1 connection and read the response head.
async fn raw_head(addr: SocketAddr, path: &str) -> (RawClient, RawResponse) {
    let mut client = RawClient::connect(addr).await;
    client
        .send(format!("GET {path} HTTP/1.1\r\nHost: p\r\n\r\n").as_bytes())
        .await;
    let head = client.read_head().await;
    (client, head)
}

/// An HTTP/2 (h2c) connection to `addr`, and a handle that can cut its socket (both
/// directions), which is how these tests make an HTTP/2 client disappear: hyper keeps
/// the connection itself in a task of its own.
async fn h2_connect(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<UpBody>,
    std::net::TcpStream,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let std = stream.into_std().unwrap();
    let cut = std.try_clone().unwrap();
    let stream = TcpStream::from_std(std).unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, cut)
}

fn h2_get(path: &str) -> Request<UpBody> {
    Request::get(path).body(common::empty()).unwrap()
}

/// A body that yields `first`, waits for `cut`, then fails.
fn body_cut_after(first: &'static [u8], cut: Arc<Notify>) -> UpBody {
    let stream = async_stream::stream! {
        yield Ok::<_, common::BoxError>(Frame::data(Bytes::from_static(first)));
        cut.notified().await;
        yield Err("the origin cut its body".into());
    };
    StreamBody::new(stream).boxed()
}

// ===== Upstream refuses =====

#[test]
fn refused_connection_is_502_connect_and_leaks_nothing() {
    run(async {
        let dead = closed_port().await;
        let single = ReverseProxy::new("/f", format!("http://{dead}"));
        let balanced = BalancedProxy::new("/g".to_owned(), vec![format!("http://{dead}")]);
        let scene = Scene::start(Router::new().merge(single.clone()).merge(balanced.clone())).await;

        for i in 0..20 {
            let res = common::raw_get(scene.addr(), "/f/x").await;
            assert_generic(&res, 502, dead);
            let res = common::raw_get(scene.addr(), "/g/x").await;
            assert_generic(&res, 502, dead);
            if i % 10 == 0 {
                scene.bystander.progress().await;
            }
        }
        for res in [
            call(&single, get("/f/x")).await,
            call(&balanced, get("/g/x")).await,
        ] {
            let err = proxy_error(&res);
            assert!(err.is_connect() && !err.is_upstream(), "{err:?}");
            assert!(
                err.to_string().to_lowercase().contains("refused"),
                "the cause is kept: {err}"
            );
        }
        assert!(logs::text().contains("proxy request failed"));

        drop((single, balanced));
        scene.finish(&[]).await;
    });
}

// ===== Upstream resets mid-response =====

/// The origin sends a head and part of a body, waits for the test, then cuts.
async fn cutting_origin(cut: Arc<Notify>) -> RawOrigin {
    RawOrigin::start(move |_, mut conn| {
        let cut = Arc::clone(&cut);
        async move {
            let Some(head) = conn.request().await else {
                return;
            };
            let path = path_of(&head).to_owned();
            let start: &[u8] = match path.as_str() {
                "/cl-fin" => b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nxxxxxxxxxx",
                "/chunked-fin" | "/chunked-rst" => {
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
                }
                // Delimited by the close: only a reset can tell that it was cut.
                "/eof-rst" => b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello",
                other => panic!("unexpected path {other}"),
            };
            conn.write(start).await;
            cut.notified().await;
            if path.ends_with("-rst") {
                conn.reset();
            } else {
                conn.close().await;
            }
        }
    })
    .await
}

#[test]
fn upstream_cut_mid_body_never_looks_complete() {
    run(async {
        let cut = Arc::new(Notify::new());
        let raw = cutting_origin(Arc::clone(&cut)).await;
        let cut2 = Arc::clone(&cut);
        // A hyper origin whose body fails after one chunk: HTTP/1 closes the connection
        // without the last chunk, HTTP/2 resets the stream.
        let hyper_origin = Origin::start(move |_| {
            let cut = Arc::clone(&cut2);
            async move { Response::new(body_cut_after(b"hello", cut)) }
        })
        .await;
        let app = Router::new()
            .merge(ReverseProxy::new("/f", raw.url()))
            .merge(ReverseProxy::new("/h1", hyper_origin.url()))
            .merge(
                ReverseProxy::new("/h2", hyper_origin.url())
                    .with_policy(ProxyPolicy::new().with_h2c(true)),
            );
        let scene = Scene::start(app).await;
        let cases = [
            "/f/cl-fin",
            "/f/chunked-fin",
            "/f/chunked-rst",
            "/f/eof-rst",
            "/h1/x",
            "/h2/x",
        ];

        for path in cases {
            // An HTTP/1.1 client: the connection ends without a valid end of body.
            let (mut client, head) = raw_head(scene.addr(), path).await;
            cut.notify_one();
            let rest = client.read_to_end().await;
            assert_incomplete(&head, &rest, &format!("HTTP/1.1 {path}"));

            // An HTTP/2 client: the stream is reset, never ended cleanly.
            let mut h2 = common::h2_client(scene.addr()).await;
            let res = within("an h2 response head", h2.send_request(h2_get(path)))
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK, "HTTP/2 {path}");
            cut.notify_one();
            let body = within("the h2 body", res.into_body().collect()).await;
            assert!(body.is_err(), "HTTP/2 {path}: the cut body ended cleanly");
            drop(h2);

            // reqwest (HTTP/1.1) sees its body fail.
            let res = common::http_client()
                .get(scene.proxy.url(path))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            cut.notify_one();
            assert!(
                within("the reqwest body", res.bytes()).await.is_err(),
                "reqwest {path}: the cut body looked complete"
            );
            scene.bystander.progress().await;
        }

        // The cut connections are gone; HTTP/2 to the origin may stay pooled.
        eventually("the raw origin's connections to close", || raw.open() == 0).await;
        assert!(hyper_origin.open() <= 1);
        scene.finish(&[&raw, &hyper_origin]).await;
    });
}

// ===== Upstream hangs =====

#[test]
fn hung_upstream_is_504_and_its_request_is_cancelled() {
    run(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let hung = Origin::start(move |req| {
            let tx = tx.clone();
            async move {
                match req.uri().path() {
                    "/head" => {
                        let _cancelled = Tell(tx, "head cancelled");
                        std::future::pending::<Response<UpBody>>().await
                    }
                    _ => {
                        // Headers, one chunk, then silence.
                        let stream = async_stream::stream! {
                            let _dropped = Tell(tx, "body dropped");
                            yield Ok::<_, common::BoxError>(Frame::data(Bytes::from_static(b"first")));
                            std::future::pending::<()>().await;
                        };
                        Response::new(StreamBody::new(stream).boxed())
                    }
                }
            }
        })
        .await;
        let timeout = Duration::from_millis(300);
        let policy = ProxyPolicy::new().with_upstream_timeout(timeout);
        let h1 = ReverseProxy::new("/f", hung.url()).with_policy(policy.clone());
        let h2 = ReverseProxy::new("/h", hung.url()).with_policy(policy.clone().with_h2c(true));
        // With a body idle timeout, a body that goes silent is cut by the proxy.
        let idle = ReverseProxy::new("/i", hung.url())
            .with_policy(policy.with_upstream_body_idle_timeout(timeout));
        let scene = Scene::start(
            Router::new()
                .merge(h1.clone())
                .merge(h2.clone())
                .merge(idle.clone()),
        )
        .await;

        for prefix in ["/f", "/h"] {
            // No response head: 504 after the timeout, and the upstream request is
            // cancelled (HTTP/1: its connection closed; HTTP/2: its stream reset).
            let start = Instant::now();
            let client = common::http_client();
            let pending = tokio::spawn(
                client
                    .get(scene.proxy.url(&format!("{prefix}/head")))
                    .send(),
            );
            scene.bystander.progress().await;
            let res = within("the 504", pending).await.unwrap().unwrap();
            assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT, "{prefix}");
            assert!(start.elapsed() >= timeout);
            assert_eq!(
                within("a body", res.text()).await.unwrap(),
                "Gateway Timeout"
            );
            expect(&mut events, "head cancelled").await;

            // Headers then silence: the client gives up, and the upstream sees it.
            let (mut client, head) = raw_head(scene.addr(), &format!("{prefix}/body")).await;
            assert_eq!(head.status, 200);
            assert_eq!(client.read_chunk().await.as_deref(), Some(&b"first"[..]));
            scene.bystander.progress().await;
            drop(client);
            expect(&mut events, "body dropped").await;
        }

        // Silence after the head with a body idle timeout: the proxy cuts the response
        // (never a clean end) and closes the upstream connection.
        let start = Instant::now();
        let (mut client, head) = raw_head(scene.addr(), "/i/body").await;
        assert_eq!(client.read_chunk().await.as_deref(), Some(&b"first"[..]));
        let rest = client.read_to_end().await;
        assert!(start.elapsed() >= timeout);
        assert_incomplete(&head, &rest, "idle body");
        drop(client);
        expect(&mut events, "body dropped").await;
        let res = call(&idle, get("/i/body")).await;
        let err = within("the cut", res.into_body().collect())
            .await
            .unwrap_err();
        let err = err.into_inner().downcast::<ProxyError>().unwrap();
        assert!(err.is_timeout(), "{err:?}");
        expect(&mut events, "body dropped").await;
        assert!(logs::text().contains("upstream response body idle timeout"));

        for (proxy, path) in [(&h1, "/f/head"), (&h2, "/h/head")] {
            let res = call(proxy, get(path)).await;
            let err = proxy_error(&res);
            assert!(err.is_timeout() && !err.is_connect(), "{err:?}");
            expect(&mut events, "head cancelled").await;
        }

        // Nothing hung stays pooled over HTTP/1.1; the HTTP/2 connection may.
        eventually("the hung HTTP/1.1 connections to close", || {
            hung.open() <= 1
        })
        .await;
        drop((h1, h2, idle));
        scene.finish(&[&hung]).await;
    });
}

// ===== Malformed responses =====

#[test]
fn malformed_response_heads_are_502() {
    run(async {
        let replies: &[&[u8]] = &[
            b"garbage\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/9.9 200 OK\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"HTTP/1.1 200 OK\r\n",
            b"",
        ];
        let origin = RawOrigin::start(move |_, mut conn| async move {
            let Some(head) = conn.request().await else {
                return;
            };
            let n: usize = path_of(&head)[1..].parse().unwrap();
            conn.write(replies[n]).await;
            conn.close().await;
        })
        .await;
        let proxy = ReverseProxy::new("/f", origin.url());
        let scene = Scene::start(Router::new().merge(proxy.clone())).await;

        for (n, reply) in replies.iter().enumerate() {
            let shown = String::from_utf8_lossy(reply).into_owned();
            let res = common::raw_get(scene.addr(), &format!("/f/{n}")).await;
            assert_generic(&res, 502, origin.addr);
            let res = call(&proxy, get(&format!("/f/{n}"))).await;
            let err = proxy_error(&res);
            assert!(err.is_upstream(), "{shown:?}: {err:?}");
        }
        scene.bystander.progress().await;
        eventually("the origin's connections to close", || origin.open() == 0).await;
        drop(proxy);
        scene.finish(&[&origin]).await;
    });
}

#[test]
fn malformed_response_bodies_close_the_connection() {
    run(async {
        let replies: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nfffffffffffffffffff\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n-1\r\n",
        ];
        let (tx, mut events) = mpsc::unbounded_channel();
        let origin = RawOrigin::start(move |_, mut conn| {
            let tx = tx.clone();
            async move {
                let Some(head) = conn.request().await else {
                    return;
                };
                let n: usize = path_of(&head)[1..].parse().unwrap();
                conn.write(replies[n]).await;
                // The origin keeps its end open: only the proxy can end this.
                conn.eof().await;
                let _ = tx.send("closed by the proxy");
            }
        })
        .await;
        let proxy = ReverseProxy::new("/f", origin.url());
        let scene = Scene::start(Router::new().merge(proxy.clone())).await;

        for n in 0..replies.len() {
            // The bad framing may arrive with the head: the client may see the head and
            // a cut body, or (when the proxy fails before its head is out) nothing.
            let mut client = RawClient::connect(scene.addr()).await;
            client
                .send(format!("GET /f/{n} HTTP/1.1\r\nHost: p\r\n\r\n").as_bytes())
                .await;
            assert_cut(&client.read_to_end().await, &format!("reply {n}"));
            expect(&mut events, "closed by the proxy").await;

            let mut h2 = common::h2_client(scene.addr()).await;
            let head = within("an h2 head", h2.send_request(h2_get(&format!("/f/{n}")))).await;
            if let Ok(res) = head {
                assert!(
                    within("the h2 body", res.into_body().collect())
                        .await
                        .is_err()
                );
            }
            expect(&mut events, "closed by the proxy").await;

            let res = call(&proxy, get(&format!("/f/{n}"))).await;
            assert!(
                within("a body", res.into_body().collect()).await.is_err(),
                "reply {n}"
            );
            expect(&mut events, "closed by the proxy").await;
        }
        scene.bystander.progress().await;
        drop(proxy);
        scene.finish(&[&origin]).await;
    });
}

#[test]
fn surplus_bytes_after_a_response_never_answer_the_next_request() {
    run(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        // Every connection's first answer carries a second, unasked-for response.
        let origin = RawOrigin::start(move |_, mut conn| {
            let tx = tx.clone();
            async move {
                if conn.request().await.is_none() {
                    return;
                }
                conn.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
                      HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsmuggl",
                )
                .await;
                if conn.request().await.is_some() {
                    let _ = tx.send("reused a poisoned connection");
                    conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nreuse")
                        .await;
                }
            }
        })
        .await;
        let proxy = ReverseProxy::new("/f", origin.url());
        let scene = Scene::start(Router::new().merge(proxy.clone())).await;

        let mut client = RawClient::connect(scene.addr()).await;
        for i in 0..20 {
            client
                .send(format!("GET /f/{i} HTTP/1.1\r\nHost: p\r\n\r\n").as_bytes())
                .await;
            let res = client.read_response(false).await;
            assert_eq!((res.status, res.body_text().as_str()), (200, "ok"), "{i}");
        }
        assert!(
            events.try_recv().is_err(),
            "a poisoned connection was reused"
        );
        assert_eq!(origin.accepted(), 20);
        drop(client);
        scene.bystander.progress().await;
        eventually("the poisoned connections to close", || origin.open() == 0).await;
        drop(proxy);
        scene.finish(&[&origin]).await;
    });
}

#[test]
fn chunked_with_content_length_is_framed_once() {
    run(async {
        let origin = RawOrigin::start(|_, mut conn| async move {
            while conn.request().await.is_some() {
                conn.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
                      5\r\nhello\r\n0\r\n\r\n",
                )
                .await;
            }
        })
        .await;
        let proxy = ReverseProxy::new("/f", origin.url());
        let scene = Scene::start(Router::new().merge(proxy.clone())).await;
        let mut client = RawClient::connect(scene.addr()).await;
        for _ in 0..3 {
            client.send(b"GET /f/x HTTP/1.1\r\nHost: p\r\n\r\n").await;
            let res = client.read_response(false).await;
            if res.status == 502 {
                continue;
            }
            assert_eq!(res.status, 200);
            assert_eq!(res.body_text(), "hello", "{:?}", res.headers);
            assert_ne!(res.header("content-length").as_deref(), Some("3"));
        }
        drop(client);
        drop(proxy);
        scene.finish(&[&origin]).await;
    });
}

// ===== Pooled connections closed by the upstream =====

/// Answers requests keep-alive style until `close` is notified (or, without `close`,
/// after the first one), then closes its write side and reports whether the proxy closed
/// too or sent one more request on the closed connection.
async fn closing_origin(tx: Tx, close: Option<Arc<Notify>>) -> RawOrigin {
    RawOrigin::start(move |_, mut conn| {
        let (tx, close) = (tx.clone(), close.clone());
        async move {
            loop {
                let request = match &close {
                    None => conn.request().await,
                    Some(close) => tokio::select! {
                        request = conn.request() => request,
                        () = close.notified() => break,
                    },
                };
                if request.is_none() {
                    return;
                }
                conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                if close.is_none() {
                    break;
                }
            }
            let _ = conn.stream.shutdown().await;
            let _ = tx.send("fin sent");
            if conn.request().await.is_some() {
                let _ = tx.send("request on a closed connection");
            } else {
                let _ = tx.send("closed by the proxy");
            }
        }
    })
    .await
}

#[test]
fn pooled_connection_closed_while_idle_is_not_used() {
    run(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let origin = closing_origin(tx, None).await;
        let proxy = ReverseProxy::new("/f", origin.url());
        let scene = Scene::start(Router::new().merge(proxy.clone())).await;
        for i in 0..10 {
            let req = if i % 2 == 0 {
                get("/f/x")
            } else {
                Request::post("/f/x").body(Body::from("data")).unwrap()
            };
            let res = call(&proxy, req).await;
            assert_eq!(res.status(), StatusCode::OK, "request {i}");
            assert_eq!(text(res).await, "ok");
            expect(&mut events, "fin sent").await;
            expect(&mut events, "closed by the proxy").await;
        }
        assert_eq!(origin.accepted(), 10, "one connection per request");
        scene.bystander.progress().await;
        drop(proxy);
        scene.finish(&[&origin]).await;
    });
}

#[test]
fn pooled_connection_closed_as_it_is_reused() {
    run(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let close = Arc::new(Notify::new());
        let origin = closing_origin(tx, Some(Arc::clone(&close))).await;
        let proxy = ReverseProxy::new("/f", origin.url());
        let scene = Scene::start(Router::new().merge(proxy.clone())).await;

        let (mut unsent, mut replayed, mut failed) = (0, 0, 0);
        for i in 0..40 {
            // One pooled connection…
            let res = call(&proxy, get("/f/warm")).await;
            assert_eq!(text(res).await, "ok");
            // …that the origin closes, and at once the next request comes.
            close.notify_one();
            expect(&mut events, "fin sent").await;
            let post = i % 2 == 1;
            let req = if post {
                Request::post("/f/x").body(Body::from("data")).unwrap()
            } else {
                get("/f/x")
            };
            let res = call(&proxy, req).await;
            match within("the origin's verdict", events.recv()).await {
                // Nothing was written on the closing connection: 200 from a new one.
                Some("closed by the proxy") => {
                    unsent += 1;
                    assert_eq!(res.status(), StatusCode::OK, "request {i}");
                    assert_eq!(text(res).await, "ok");
                }
                // Written as the close crossed it: a GET is sent again on a new
                // connection (the closing one never answered it), a POST is not.
                Some("request on a closed connection") if post => {
                    failed += 1;
                    assert!(proxy_error(&res).is_upstream(), "request {i}");
                }
                Some("request on a closed connection") => {
                    replayed += 1;
                    assert_eq!(res.status(), StatusCode::OK, "request {i}");
                    assert_eq!(text(res).await, "ok");
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(events.try_recv().is_err());
        let log = logs::text();
        assert_eq!(
            log.matches("sending the idempotent request again").count(),
            replayed
        );
        eprintln!(
            "of 40: {unsent} not written on the closing connection \
             ({} given back unsent by hyper), {replayed} GETs written and sent again, \
             {failed} POSTs written and answered 502",
            log.matches("pooled connection closed before use").count()
        );
        scene.bystander.progress().await;
        drop(proxy);
        scene.finish(&[&origin]).await;
    });
}

#[test]
fn request_sent_on_a_reused_connection_is_not_replayed() {
    run(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        // The second request on a connection is read, then the connection is closed
        // without an answer.
        let origin = RawOrigin::start(move |_, mut conn| {
            let tx = tx.clone();
            async move {
                while let Some(head) = conn.request().await {
                    let _ = tx.send(if head.starts_with("POST") {
                        "POST"
                    } else {
                        "GET"
                    });
                    if path_of(&head) == "/die" {
                        conn.close().await;
                        return;
                    }
                    conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                }
            }
        })
        .await;
        let proxy = ReverseProxy::new("/f", origin.url());
        let scene = Scene::start(Router::new().merge(proxy.clone())).await;

        for (i, method) in ["POST", "GET"].into_iter().enumerate() {
            let res = call(&proxy, get("/f/warm")).await;
            assert_eq!(text(res).await, "ok");
            expect(&mut events, "GET").await;
            let req = Request::builder()
                .method(method)
                .uri("/f/die")
                .body(Body::from("payload"))
                .unwrap();
            let res = call(&proxy, req).await;
            let err = proxy_error(&res);
            assert!(err.is_upstream(), "{method}: {err:?}");
            expect(&mut events, method).await;
            assert_eq!(origin.accepted(), i + 1, "{method}: no second connection");
        }
        assert!(events.try_recv().is_err(), "a request was replayed");
        scene.bystander.progress().await;
        drop(proxy);
        scene.finish(&[&origin]).await;
    });
}

/// An origin like [`Origin::ok`] whose open connections shut down gracefully (HTTP/2:
/// GOAWAY, then close) when `goaway` is notified.
async fn going_away_origin(goaway: Arc<Notify>) -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let open_h2 = Arc::new(AtomicUsize::new(0));
    let (open2, open_h2_2) = (Arc::clone(&open), Arc::clone(&open_h2));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            open2.fetch_add(1, Ordering::SeqCst);
            let guard = OpenGuard(Arc::clone(&open2));
            let h2 = Arc::new(H2Guard {
                count: Arc::clone(&open_h2_2),
                seen: AtomicBool::new(false),
            });
            let goaway = Arc::clone(&goaway);
            tokio::spawn(async move {
                let _guard = guard;
                let h2_guard = Arc::clone(&h2);
                let svc = service_fn(move |req: Request<Incoming>| {
                    h2.saw(req.version());
                    async { Ok::<_, Infallible>(Response::new(common::full("ok"))) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    () = goaway.notified() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
                drop(h2_guard);
            });
        }
    });
    Origin {
        addr,
        open,
        open_h2,
    }
}

/// An HTTP/2 upstream shutting down gracefully (GOAWAY) as its pooled connection is
/// reused: a GET is sent again on a new connection; a POST is refused as never sent.
#[test]
fn pooled_http2_connection_going_away_as_it_is_reused() {
    run(async {
        let goaway = Arc::new(Notify::new());
        let origin = going_away_origin(Arc::clone(&goaway)).await;
        let proxy =
            ReverseProxy::new("/f", origin.url()).with_policy(ProxyPolicy::new().with_h2c(true));
        let scene = Scene::start(Router::new().merge(proxy.clone())).await;
        let mut failed = Vec::new();
        for i in 0..40 {
            let res = call(&proxy, get("/f/warm")).await;
            assert_eq!(text(res).await, "ok");
            goaway.notify_waiters();
            let req = if i % 2 == 0 {
                get("/f/x")
            } else {
                Request::post("/f/x").body(Body::from("data")).unwrap()
            };
            let res = call(&proxy, req).await;
            if res.status() != StatusCode::OK {
                // Only a POST may fail (its body was handed over): as never having
                // reached the upstream, so that a retry layer may send it again.
                let err = proxy_error(&res);
                assert!(i % 2 == 1 && err.is_connect(), "request {i}: {err:?}");
                failed.push(i);
            }
        }
        eprintln!(
            "of 40: POSTs {failed:?} refused by the GOAWAY; {} GETs sent again",
            logs::text()
                .matches("sending the idempotent request again")
                .count()
        );
        // Behind a RetryLayer, the refused POSTs are sent again (their body replayed).
        let retried = tower::Layer::layer(
            &axum_reverse_proxy::RetryLayer::with_delay(2, Duration::from_millis(1)),
            proxy.clone(),
        );
        for i in 0..20 {
            let res = call(&retried, get("/f/warm")).await;
            assert_eq!(text(res).await, "ok");
            goaway.notify_waiters();
            let req = Request::post("/f/x").body(Body::from("data")).unwrap();
            let res = call(&retried, req).await;
            assert_eq!(
                res.status(),
                StatusCode::OK,
                "POST {i} behind a retry layer"
            );
        }
        drop(retried);
        scene.bystander.progress().await;
        drop(proxy);
        scene.finish(&[&origin]).await;
    });
}

// ===== Discovery =====

type Item = Result<Change<u32, String>, std::io::Error>;

/// A discovery stream driven by the test.
fn driven_discovery() -> (
    mpsc::UnboundedSender<Item>,
    impl futures_util::Stream<Item = Item> + Send + 'static,
) {
    let (tx, rx) = mpsc::unbounded_channel::<Item>();
    (tx, tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
}

#[test]
fn discovery_errors_do_not_stop_the_proxy() {
    run(async {
        let one = Origin::start(|_| async { Response::new(common::full("one")) }).await;
        let two = Origin::start(|_| async { Response::new(common::full("two")) }).await;
        let (changes, stream) = driven_discovery();
        let proxy = DiscoverableBalancedProxy::new("/f", stream);
        let scene = Scene::start(Router::new().merge(proxy.clone())).await;
        // Nothing discovered yet: 503.
        let res = call(&proxy, get("/f/x")).await;
        assert!(proxy_error(&res).is_no_endpoint());

        proxy.start_discovery().await;
        let client = common::http_client();
        let answer = |client: reqwest::Client, url: String| async move {
            let res = client.get(url).send().await.unwrap();
            (res.status(), res.text().await.unwrap())
        };
        let url = scene.proxy.url("/f/x");
        changes.send(Ok(Change::Insert(1, one.url()))).unwrap();
        eventually("the first endpoint", || proxy.endpoints().len() == 1).await;
        assert_eq!(
            answer(client.clone(), url.clone()).await,
            (StatusCode::OK, "one".into())
        );

        // An error: logged, the set kept, the proxy serving.
        changes
            .send(Err(std::io::Error::other("registry down")))
            .unwrap();
        eventually("the error to be logged", || {
            logs::text().contains("service discovery error")
        })
        .await;
        assert!(logs::text().contains("registry down"));
        assert_eq!(
            answer(client.clone(), url.clone()).await,
            (StatusCode::OK, "one".into())
        );

        // More errors in a row (the task backs off), then more changes: applied.
        for _ in 0..3 {
            changes
                .send(Err(std::io::Error::other("still down")))
                .unwrap();
        }
        changes.send(Ok(Change::Insert(2, two.url()))).unwrap();
        changes.send(Ok(Change::Remove(1))).unwrap();
        eventually("the changes after the errors", || {
            proxy.endpoints().len() == 1 && proxy.endpoints()[0].url.contains(&two.addr.to_string())
        })
        .await;
        assert_eq!(
            answer(client.clone(), url.clone()).await,
            (StatusCode::OK, "two".into())
        );
        scene.bystander.progress().await;

        // The stream ends: discovery stops (its task ends), the last set stays.
        drop(changes);
        eventually("the discovery task to end", || {
            logs::text().contains("service discovery stream ended")
        })
        .await;
        assert_eq!(
            answer(client.clone(), url.clone()).await,
            (StatusCode::OK, "two".into())
        );
        drop(client);
        drop(proxy);
        scene.finish(&[&one, &two]).await;
    });
}

#[test]
fn a_discovery_stream_of_only_errors_backs_off_and_stops_with_the_proxy() {
    run(async {
        let polls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&polls);
        let stream = futures_util::stream::poll_fn(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            std::task::Poll::Ready(Some(Err::<Change<u32, String>, _>(std::io::Error::other(
                "always failing",
            ))))
        });
        let proxy = DiscoverableBalancedProxy::new("/f", stream);
        let scene = Scene::start(Router::new().merge(proxy.clone())).await;
        proxy.start_discovery().await;
        eventually("the errors to be logged", || {
            logs::text().contains("always failing")
        })
        .await;
        let res = call(&proxy, get("/f/x")).await;
        assert!(proxy_error(&res).is_no_endpoint());
        let res = common::raw_get(scene.addr(), "/f/x").await;
        assert_eq!(res.status, 503);
        scene.bystander.progress().await;
        // The task sleeps between rounds (each takes at most 1024 items): no spinning.
        let seen = polls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let more = polls.load(Ordering::SeqCst) - seen;
        assert!(more <= 3 * 1024, "{more} polls in 300 ms");
        drop(proxy);
        // The discovery task lives with the proxy, and ends with it.
        scene.finish(&[&Background(1)]).await;
    });
}

#[cfg(feature = "dns")]
mod dns {
    use super::*;
    use std::sync::atomic::AtomicU8;

    use axum_reverse_proxy::{DnsDiscovery, DnsDiscoveryConfig};
    use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
    use hickory_resolver::proto::xfer::Protocol;
    use hickory_server::ServerFuture;
    use hickory_server::authority::{AuthorityObject, Catalog, MessageResponseBuilder, ZoneType};
    use hickory_server::proto::op::ResponseCode;
    use hickory_server::proto::rr::rdata::{A, SOA};
    use hickory_server::proto::rr::{LowerName, Name, RData, Record};
    use hickory_server::server::{
        Request as DnsRequest, RequestHandler, ResponseHandler, ResponseInfo,
    };
    use hickory_server::store::in_memory::InMemoryAuthority;

    pub(super) const ANSWER: u8 = 0;
    pub(super) const NXDOMAIN: u8 = 1;
    pub(super) const SERVFAIL: u8 = 2;
    pub(super) const SILENT: u8 = 3;

    fn zone(with_name: bool) -> Catalog {
        let origin = Name::from_ascii("test.").unwrap();
        let mut zone = InMemoryAuthority::empty(origin.clone(), ZoneType::Primary, false);
        let soa = SOA::new(
            Name::from_ascii("ns.test.").unwrap(),
            Name::from_ascii("admin.test.").unwrap(),
            1,
            60,
            60,
            60,
            0,
        );
        assert!(zone.upsert_mut(Record::from_rdata(origin.clone(), 0, RData::SOA(soa)), 1));
        if with_name {
            let a = RData::A(A("127.0.0.1".parse().unwrap()));
            let record = Record::from_rdata(Name::from_ascii("app.test.").unwrap(), 0, a);
            assert!(zone.upsert_mut(record, 1));
        }
        let mut catalog = Catalog::new();
        let zone: Arc<dyn AuthorityObject> = Arc::new(zone);
        catalog.upsert(LowerName::new(&origin), vec![zone]);
        catalog
    }

    struct State {
        mode: AtomicU8,
        queries: AtomicUsize,
        full: Catalog,
        empty: Catalog,
    }

    #[derive(Clone)]
    struct Handler(Arc<State>);

    #[async_trait::async_trait]
    impl RequestHandler for Handler {
        async fn handle_request<R: ResponseHandler>(
            &self,
            request: &DnsRequest,
            mut response: R,
        ) -> ResponseInfo {
            self.0.queries.fetch_add(1, Ordering::SeqCst);
            match self.0.mode.load(Ordering::SeqCst) {
                ANSWER => self.0.full.handle_request(request, response).await,
                NXDOMAIN => self.0.empty.handle_request(request, response).await,
                SERVFAIL => {
                    let message = MessageResponseBuilder::from_message_request(request)
                        .error_msg(request.header(), ResponseCode::ServFail);
                    match response.send_response(message).await {
                        Ok(info) => info,
                        Err(_) => ResponseInfo::from(*request.header()),
                    }
                }
                // No answer at all.
                _ => ResponseInfo::from(*request.header()),
            }
        }
    }

    /// A DNS server on 127.0.0.1 for the zone `test.`, answering `app.test. A 127.0.0.1`
    /// (TTL 0) or failing as `mode` says.
    pub(super) struct TestDns {
        addr: SocketAddr,
        state: Arc<State>,
    }

    impl TestDns {
        pub(super) async fn start(mode: u8) -> TestDns {
            let state = Arc::new(State {
                mode: AtomicU8::new(mode),
                queries: AtomicUsize::new(0),
                full: zone(true),
                empty: zone(false),
            });
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = socket.local_addr().unwrap();
            let mut server = ServerFuture::new(Handler(Arc::clone(&state)));
            server.register_socket(socket);
            tokio::spawn(async move { server.block_until_done().await });
            TestDns { addr, state }
        }

        pub(super) fn set(&self, mode: u8) {
            self.state.mode.store(mode, Ordering::SeqCst);
        }

        pub(super) fn queries(&self) -> usize {
            self.state.queries.load(Ordering::SeqCst)
        }

        /// Discovery of `app.test.` on `port`: re-resolved every 100 ms, no cache, and a
        /// 200 ms timeout per query.
        pub(super) fn discovery(&self, port: u16) -> DnsDiscovery {
            let server = NameServerConfig::new(self.addr, Protocol::Udp);
            let mut opts = ResolverOpts::default();
            opts.timeout = Duration::from_millis(200);
            opts.attempts = 1;
            opts.cache_size = 0;
            let config = DnsDiscoveryConfig::new("app.test.", port)
                .with_resolver_config(ResolverConfig::from_parts(None, vec![], vec![server]))
                .with_resolver_opts(opts)
                .with_refresh_interval(Duration::from_millis(100))
                .with_min_refresh(Duration::from_millis(50))
                .with_respect_ttl(false);
            DnsDiscovery::new(config).unwrap()
        }
    }
}

#[cfg(feature = "dns")]
#[test]
fn dns_failures_keep_the_last_good_endpoints() {
    use dns::{ANSWER, NXDOMAIN, SERVFAIL, SILENT, TestDns};
    run(async {
        let origin = Origin::start(|_| async { Response::new(common::full("found")) }).await;
        let dns_server = TestDns::start(ANSWER).await;
        let broken = TestDns::start(SERVFAIL).await;
        let silent = TestDns::start(SILENT).await;
        let scene = Scene::start(Router::new()).await;

        let proxy = DiscoverableBalancedProxy::new("/f", dns_server.discovery(origin.addr.port()));
        let never = DiscoverableBalancedProxy::new("/s", broken.discovery(origin.addr.port()));
        let mute = DiscoverableBalancedProxy::new("/m", silent.discovery(origin.addr.port()));
        proxy.start_discovery().await;
        never.start_discovery().await;
        mute.start_discovery().await;
        eventually("the endpoint from DNS", || proxy.endpoints().len() == 1).await;
        let app = Router::new()
            .merge(proxy.clone())
            .merge(never.clone())
            .merge(mute.clone());
        let server = Served::start(app).await;
        let client = common::http_client();
        let url = server.url("/f/x");
        let found = || async {
            let res = client.get(&url).send().await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(res.text().await.unwrap(), "found");
        };
        found().await;

        // Failing lookups of every kind: the last good endpoint stays and serves.
        for mode in [SERVFAIL, NXDOMAIN, SILENT, ANSWER] {
            let seen = dns_server.queries();
            dns_server.set(mode);
            eventually("more lookups", || dns_server.queries() >= seen + 3).await;
            assert_eq!(proxy.endpoints().len(), 1, "mode {mode}");
            found().await;
            scene.bystander.progress().await;
        }
        assert!(logs::text().contains("service discovery error"));

        // Nothing ever resolved: 503, no endpoint.
        eventually("lookups on the broken servers", || {
            broken.queries() >= 2 && silent.queries() >= 1
        })
        .await;
        for path in ["/s/x", "/m/x"] {
            let res = client.get(server.url(path)).send().await.unwrap();
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        }
        let res = call(&never, get("/s/x")).await;
        assert!(proxy_error(&res).is_no_endpoint());

        drop(client);
        server.shutdown().await;
        drop((proxy, never, mute));
        // The discovery tasks and their resolvers stop with the proxies.
        scene.finish(&[&origin]).await;
    });
}

// ===== Clients that go away =====

/// An origin for the disconnect cases: `/upload` reads the body and tells how it ended,
/// `/wait` reads the request then never answers, `/stream` answers an endless body.
async fn patient_origin(tx: Tx) -> Origin {
    Origin::start(move |req| {
        let tx = tx.clone();
        async move {
            match req.uri().path() {
                "/upload" => {
                    let mut body = req.into_body();
                    let mut first = true;
                    loop {
                        match body.frame().await {
                            Some(Ok(_)) if first => {
                                first = false;
                                let _ = tx.send("receiving");
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) => {
                                let _ = tx.send("body aborted");
                                break;
                            }
                            None => {
                                let _ = tx.send("body complete");
                                break;
                            }
                        }
                    }
                    Response::new(common::full("uploaded"))
                }
                "/wait" => {
                    let _ = req.into_body().collect().await;
                    let _cancelled = Tell(tx.clone(), "wait cancelled");
                    let _ = tx.send("waiting");
                    std::future::pending::<Response<UpBody>>().await
                }
                _ => {
                    let stream = async_stream::stream! {
                        let _dropped = Tell(tx, "stream dropped");
                        let chunk = Bytes::from(vec![b'z'; 16 * 1024]);
                        loop {
                            yield Ok::<_, common::BoxError>(Frame::data(chunk.clone()));
                        }
                    };
                    Response::new(StreamBody::new(stream).boxed())
                }
            }
        }
    })
    .await
}

#[test]
fn client_gone_while_uploading_cancels_the_upstream_request() {
    run(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let origin = patient_origin(tx).await;
        let app = Router::new()
            .merge(ReverseProxy::new("/f", origin.url()))
            .merge(
                ReverseProxy::new("/h", origin.url())
                    .with_policy(ProxyPolicy::new().with_h2c(true)),
            );
        let scene = Scene::start(app).await;

        for prefix in ["/f", "/h"] {
            // HTTP/1.1, Content-Length body cut short.
            let mut client = RawClient::connect(scene.addr()).await;
            client
                .send(
                    format!(
                        "POST {prefix}/upload HTTP/1.1\r\nHost: p\r\nContent-Length: 1000000\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .await;
            client.send(&[b'u'; 64 * 1024]).await;
            expect(&mut events, "receiving").await;
            drop(client);
            expect(&mut events, "body aborted").await;

            // HTTP/1.1, chunked body without its last chunk.
            let mut client = RawClient::connect(scene.addr()).await;
            client
                .send(
                    format!(
                        "POST {prefix}/upload HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
                    )
                    .as_bytes(),
                )
                .await;
            expect(&mut events, "receiving").await;
            drop(client);
            expect(&mut events, "body aborted").await;

            // HTTP/2: the client's connection goes away mid-body.
            let (mut h2, cut) = h2_connect(scene.addr()).await;
            let (body_tx, body) = common::channel_body();
            let req = Request::post(format!("{prefix}/upload"))
                .body(body)
                .unwrap();
            let pending = tokio::spawn(h2.send_request(req));
            body_tx
                .send(Frame::data(Bytes::from_static(b"part")))
                .unwrap();
            expect(&mut events, "receiving").await;
            cut.shutdown(std::net::Shutdown::Both).unwrap();
            drop(cut);
            let _ = within("the h2 request to fail", pending).await;
            drop((body_tx, h2));
            expect(&mut events, "body aborted").await;
            scene.bystander.progress().await;
        }
        // HTTP/1.1 upstream connections with a cut body cannot be reused.
        eventually("the aborted connections to close", || origin.open() <= 1).await;
        scene.finish(&[&origin]).await;
    });
}

#[test]
fn client_gone_while_waiting_cancels_the_upstream_request() {
    run(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let origin = patient_origin(tx).await;
        let app = Router::new()
            .merge(ReverseProxy::new("/f", origin.url()))
            .merge(
                ReverseProxy::new("/h", origin.url())
                    .with_policy(ProxyPolicy::new().with_h2c(true)),
            );
        let scene = Scene::start(app).await;

        for prefix in ["/f", "/h"] {
            let mut client = RawClient::connect(scene.addr()).await;
            client
                .send(format!("GET {prefix}/wait HTTP/1.1\r\nHost: p\r\n\r\n").as_bytes())
                .await;
            expect(&mut events, "waiting").await;
            drop(client);
            expect(&mut events, "wait cancelled").await;

            let (mut h2, cut) = h2_connect(scene.addr()).await;
            let pending = tokio::spawn(h2.send_request(h2_get(&format!("{prefix}/wait"))));
            expect(&mut events, "waiting").await;
            cut.shutdown(std::net::Shutdown::Both).unwrap();
            drop(cut);
            let _ = within("the h2 request to fail", pending).await;
            drop(h2);
            expect(&mut events, "wait cancelled").await;
            scene.bystander.progress().await;
        }
        eventually("the cancelled connections to close", || origin.open() <= 1).await;
        scene.finish(&[&origin]).await;
    });
}

#[test]
fn client_gone_mid_response_stops_the_upstream_body() {
    run(async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let origin = patient_origin(tx).await;
        let app = Router::new()
            .merge(ReverseProxy::new("/f", origin.url()))
            .merge(
                ReverseProxy::new("/h", origin.url())
                    .with_policy(ProxyPolicy::new().with_h2c(true)),
            );
        let scene = Scene::start(app).await;

        for prefix in ["/f", "/h"] {
            let (mut client, head) = raw_head(scene.addr(), &format!("{prefix}/stream")).await;
            assert_eq!(head.status, 200);
            let mut got = 0;
            while got < 256 * 1024 {
                got += client.read_chunk().await.expect("more body").len();
            }
            drop(client);
            expect_eventually(&mut events, "stream dropped").await;

            let mut h2 = common::h2_client(scene.addr()).await;
            let res = within(
                "an h2 head",
                h2.send_request(h2_get(&format!("{prefix}/stream"))),
            )
            .await
            .unwrap();
            let mut body = res.into_body();
            let mut got = 0;
            while got < 256 * 1024 {
                let frame = within("h2 body", body.frame()).await.unwrap().unwrap();
                got += frame.into_data().map_or(0, |d| d.len());
            }
            drop(body);
            drop(h2);
            expect_eventually(&mut events, "stream dropped").await;
            scene.bystander.progress().await;
        }
        // The HTTP/1.1 connection of an unfinished body is closed, not pooled.
        eventually("the abandoned connections to close", || origin.open() <= 1).await;
        scene.finish(&[&origin]).await;
    });
}
