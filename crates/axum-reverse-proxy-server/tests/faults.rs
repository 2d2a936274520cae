//! Upstream faults and clients that go away, through the binary: what the client gets,
//! what the access log, the logs and `/metrics` say, that a concurrent client keeps
//! getting 200s, and that the server's file descriptors (`/proc/PID/fd`) come back to
//! their baseline.
//!
//! The upstreams run in this test process and count their open connections: each one is
//! exactly one descriptor in the server (its pooled end), so once the clients are gone
//! the server's count is expected at `baseline + pooled now`, the baseline being taken
//! before the first request.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use common::{PATIENCE, Proxy, TempDir, client};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

type Tx = mpsc::UnboundedSender<&'static str>;

/// Sends its word when dropped (an upstream handler cancelled by the proxy).
struct Tell(Tx, &'static str);

impl Drop for Tell {
    fn drop(&mut self) {
        let _ = self.0.send(self.1);
    }
}

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn expect(events: &mut mpsc::UnboundedReceiver<&'static str>, what: &'static str) {
    assert_eq!(within(what, events.recv()).await, Some(what));
}

/// Counts an open connection until dropped.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A hyper upstream on 127.0.0.1:0 that counts its open connections.
struct Origin {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
}

impl Origin {
    async fn start<F, Fut>(handler: F) -> Origin
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&open);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let guard = OpenGuard(Arc::clone(&counter));
                let handler = Arc::clone(&handler);
                tokio::spawn(async move {
                    let _guard = guard;
                    let svc = service_fn(move |req| {
                        let response = handler(req);
                        async move { Ok::<_, Infallible>(response.await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin { addr, open }
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// An upstream that answers a head with `Content-Length: 1000` and 10 bytes, then closes.
async fn cutting_origin() -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&open);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let guard = OpenGuard(Arc::clone(&counter));
            tokio::spawn(async move {
                let _guard = guard;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nxxxxxxxxxx")
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Origin { addr, open }
}

/// Open descriptors of process `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A client that keeps sending `GET /ok` and insists on 200.
struct Bystander {
    ok: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Bystander {
    fn start(url: String) -> Bystander {
        let ok = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ok2, stop2) = (Arc::clone(&ok), Arc::clone(&stop));
        let task = tokio::spawn(async move {
            let client = client();
            while !stop2.load(Ordering::SeqCst) {
                let res = within("a bystander request", client.get(&url).send())
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200, "the bystander got a non-200");
                within("a bystander body", res.bytes()).await.unwrap();
                ok2.fetch_add(1, Ordering::SeqCst);
            }
        });
        Bystander { ok, stop, task }
    }

    /// Wait (bounded) until two more requests succeed.
    async fn progress(&self) {
        let target = self.ok.load(Ordering::SeqCst) + 2;
        let deadline = Instant::now() + PATIENCE;
        while self.ok.load(Ordering::SeqCst) < target {
            assert!(Instant::now() < deadline, "the bystander is stuck");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        within("the bystander", self.task)
            .await
            .expect("the bystander saw a failure");
        self.ok.load(Ordering::SeqCst)
    }
}

/// The access-log line of request `id` (JSON), waiting for it.
async fn access_line(proxy: Proxy, id: &str) -> (Proxy, serde_json::Value) {
    let needle = format!("\"request_id\":\"{id}\"");
    let (proxy, line) = proxy
        .wait_line_async(move |l| l.starts_with('{') && l.contains(&needle))
        .await;
    (proxy, serde_json::from_str(&line).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_faults_are_answered_logged_and_released() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let ok = Origin::start(|_| async { Response::new(Body::from("ok")) }).await;
    let hung = Origin::start(move |_| {
        let tx = tx.clone();
        async move {
            let _cancelled = Tell(tx.clone(), "cancelled");
            let _ = tx.send("waiting");
            std::future::pending::<Response<Body>>().await
        }
    })
    .await;
    let cut = cutting_origin().await;
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let extra = format!(
        r#"
[pools.dead]
targets = ["http://{dead}"]

[pools.hung]
targets = ["http://{hung}"]
timeout = "300ms"

[pools.cut]
targets = ["http://{cut}"]

[[routes]]
name = "dead"
prefix = "/dead"
pool = "dead"

[[routes]]
name = "hung"
prefix = "/hung"
pool = "hung"

[[routes]]
name = "cut"
prefix = "/cut"
pool = "cut"
"#,
        hung = hung.addr,
        cut = cut.addr,
    );
    let dir = TempDir::new("faults");
    let path = dir.write("proxy.toml", &common::simple_config(ok.addr, &extra));
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");
    let admin = proxy.admin_url();
    let pid = proxy.pid();

    // The baseline: started, no client and no upstream connection yet.
    let base = fds(pid);
    let pooled = || ok.open() + hung.open() + cut.open();
    assert_eq!(pooled(), 0);
    let bystander = Bystander::start(format!("{front}/ok"));
    bystander.progress().await;
    let client = client();

    // Refused: 502, a generic body, the cause in the log with the request id.
    let res = client
        .get(format!("{front}/dead/x"))
        .header("x-request-id", "fault-dead")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    assert_eq!(res.headers()["x-request-id"], "fault-dead");
    let body = res.text().await.unwrap();
    assert!(!body.contains(&dead.port().to_string()), "{body}");
    let (proxy, line) = access_line(proxy, "fault-dead").await;
    assert_eq!(line["status"], 502);
    assert_eq!(
        (&line["route"], &line["upstream"]),
        (&"dead".into(), &"dead".into())
    );
    let stderr = proxy.stderr();
    let logged = stderr
        .lines()
        .find(|l| l.contains("fault-dead") && l.contains("proxy request failed"))
        .unwrap_or_else(|| panic!("no log line for the failure:\n{stderr}"));
    assert!(logged.to_lowercase().contains("refused"), "{logged}");
    bystander.progress().await;

    // Hung: 504 after the pool's timeout, and the upstream request is cancelled.
    let start = Instant::now();
    let res = client
        .get(format!("{front}/hung/x"))
        .header("x-request-id", "fault-hung")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 504);
    assert!(start.elapsed() >= Duration::from_millis(300));
    expect(&mut events, "waiting").await;
    expect(&mut events, "cancelled").await;
    let (proxy, line) = access_line(proxy, "fault-hung").await;
    assert_eq!(line["status"], 504);
    bystander.progress().await;

    // Cut mid-body: the client's body fails; the line has the bytes really sent.
    let res = client
        .get(format!("{front}/cut/x"))
        .header("x-request-id", "fault-cut")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.bytes().await.is_err(), "the cut body looked complete");
    let (proxy, line) = access_line(proxy, "fault-cut").await;
    assert_eq!(line["status"], 200);
    assert!(line["bytes_out"].as_u64().unwrap() < 1000, "{line}");
    bystander.progress().await;

    // The client goes away while the upstream works: the upstream request is
    // cancelled, and the request is still logged and counted (499, as nginx).
    let mut tcp = TcpStream::connect(front.trim_start_matches("http://"))
        .await
        .unwrap();
    tcp.write_all(b"GET /hung/gone HTTP/1.1\r\nHost: p\r\nx-request-id: fault-gone\r\n\r\n")
        .await
        .unwrap();
    expect(&mut events, "waiting").await;
    drop(tcp);
    expect(&mut events, "cancelled").await;
    let (proxy, line) = access_line(proxy, "fault-gone").await;
    assert_eq!(line["status"], 499);
    assert_eq!(line["route"], "hung");
    bystander.progress().await;

    let metrics = client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (route, class) in [
        ("dead", "5xx"),
        ("hung", "5xx"),
        ("cut", "2xx"),
        ("hung", "4xx"),
    ] {
        let series = format!(
            "proxy_requests_total{{route=\"{route}\",upstream=\"{route}\",status_class=\"{class}\"}}"
        );
        assert!(
            metrics.lines().any(|l| l.starts_with(&series)),
            "no {series} in\n{metrics}"
        );
    }

    let answered = bystander.stop().await;
    assert!(answered >= 2);
    drop(client);
    // The hung and cut connections are gone; what is left is pooled and counted.
    let deadline = Instant::now() + PATIENCE;
    while fds(pid) != base + pooled() {
        assert!(
            Instant::now() < deadline,
            "the server has {} descriptors, expected {} + {} pooled",
            fds(pid),
            base,
            pooled()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        hung.open() + cut.open(),
        0,
        "a broken connection stayed open"
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_response_stops_the_upstream_and_is_logged() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let streaming = Origin::start(move |_| {
        let tx = tx.clone();
        async move {
            let chunks = futures_util::stream::unfold(Tell(tx, "stream dropped"), |tell| async {
                Some((
                    Ok::<_, Infallible>(bytes::Bytes::from(vec![b'z'; 16 * 1024])),
                    tell,
                ))
            });
            Response::new(Body::from_stream(chunks))
        }
    })
    .await;
    let dir = TempDir::new("faults-gone");
    let path = dir.write("proxy.toml", &common::simple_config(streaming.addr, ""));
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");
    let pid = proxy.pid();
    let base = fds(pid);

    let mut tcp = TcpStream::connect(front.trim_start_matches("http://"))
        .await
        .unwrap();
    tcp.write_all(b"GET /endless HTTP/1.1\r\nHost: p\r\nx-request-id: fault-endless\r\n\r\n")
        .await
        .unwrap();
    let mut got = 0;
    let mut chunk = [0u8; 16 * 1024];
    while got < 256 * 1024 {
        let n = within("the body", tcp.read(&mut chunk)).await.unwrap();
        assert!(n > 0, "the body ended");
        got += n;
    }
    drop(tcp);
    expect(&mut events, "stream dropped").await;
    let (proxy, line) = access_line(proxy, "fault-endless").await;
    assert_eq!(line["status"], 200);
    let sent = line["bytes_out"].as_u64().unwrap();
    assert!(sent > 0, "{line}");

    // The unfinished upstream connection is closed, not pooled; nothing is left over.
    let deadline = Instant::now() + PATIENCE;
    while streaming.open() > 0 || fds(pid) != base {
        assert!(
            Instant::now() < deadline,
            "{} upstream connections open, {} descriptors (baseline {base})",
            streaming.open(),
            fds(pid)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(proxy);
}
