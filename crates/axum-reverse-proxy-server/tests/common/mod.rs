//! Helpers shared by the integration tests: run the real binary, read what it prints,
//! send it signals, and start small upstreams on 127.0.0.1:0.
#![allow(dead_code)]

pub mod h2;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::routing::any;

pub const BIN: &str = env!("CARGO_BIN_EXE_axum-reverse-proxy");

/// How long any single expected event may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The binary, running, with its stdout lines delivered as they come.
pub struct Proxy {
    child: Option<Child>,
    pid: u32,
    lines: mpsc::Receiver<String>,
    /// Everything printed on stdout so far (for failure messages).
    pub seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Proxy {
    /// Start the binary with `args` and wait for its `ready` line.
    pub fn start(args: &[&str]) -> Proxy {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning the server binary");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut proxy = Proxy {
            pid: child.id(),
            child: Some(child),
            lines,
            seen: Vec::new(),
            stderr,
        };
        proxy.wait_line(|l| l.starts_with("ready"));
        proxy
    }

    /// Start with `--config path`.
    pub fn with_config(path: &Path) -> Proxy {
        Proxy::start(&["--config", path.to_str().unwrap()])
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Block until a stdout line satisfies `pred`; return it. Panics after PATIENCE.
    pub fn wait_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "expected line never came.\nstdout:\n{}\nstderr:\n{}",
                    self.seen.join("\n"),
                    self.stderr()
                ),
            }
        }
    }

    /// Async-friendly `wait_line` (runs on a blocking thread).
    pub async fn wait_line_async(
        mut self,
        pred: impl Fn(&str) -> bool + Send + 'static,
    ) -> (Proxy, String) {
        tokio::task::spawn_blocking(move || {
            let line = self.wait_line(pred);
            (self, line)
        })
        .await
        .unwrap()
    }

    /// Async-friendly `wait_exit` (runs on a blocking thread).
    pub async fn wait_exit_async(mut self) -> (Proxy, ExitStatus) {
        tokio::task::spawn_blocking(move || {
            let status = self.wait_exit();
            (self, status)
        })
        .await
        .unwrap()
    }

    /// The URL printed for listener `name` (`listener NAME on URL`).
    pub fn listener_url(&self, name: &str) -> String {
        let prefix = format!("listener {name} on ");
        self.seen
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
            .unwrap_or_else(|| panic!("no listener {name} in {:?}", self.seen))
    }

    /// The admin URL printed at start.
    pub fn admin_url(&self) -> String {
        self.seen
            .iter()
            .find_map(|l| l.strip_prefix("admin on ").map(str::to_owned))
            .unwrap_or_else(|| panic!("no admin line in {:?}", self.seen))
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Send a signal by name (`HUP`, `TERM`) with the system's `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Wait for the process to exit (bounded by PATIENCE).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .expect("the process was already waited for");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let Ok(status) = rx.recv_timeout(PATIENCE) else {
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
            panic!("the server did not exit; stdout:\n{}", self.seen.join("\n"));
        };
        // The pipe closes with the process: collect the remaining lines.
        while let Ok(line) = self.lines.recv_timeout(PATIENCE) {
            self.seen.push(line);
        }
        status.unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "arp-test-{tag}-{}-{}",
            std::process::id(),
            fastrand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Write `name` atomically (write a temporary file, then rename), as editors and
    /// deploy tools do, so a reload never reads half a file.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fastrand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Serve `app` on 127.0.0.1:0 in the current runtime.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

/// An upstream answering `NAME PATH?QUERY` plus the headers it was sent, as JSON lines.
pub async fn echo(name: &'static str) -> SocketAddr {
    serve(Router::new().fallback(any(move |req: Request| async move {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    serde_json::Value::String(v.to_str().unwrap_or("?").to_owned()),
                )
            })
            .collect();
        serde_json::json!({
            "upstream": name,
            "uri": req.uri().to_string(),
            "headers": headers,
        })
        .to_string()
    })))
    .await
}

/// A minimal listener/pool/route config routing everything to `upstream`, with an admin
/// listener and the access log as JSON on stdout.
pub fn simple_config(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[admin]
address = "127.0.0.1:0"

[access_log]
format = "json"

[listeners.web]
address = "127.0.0.1:0"

[pools.main]
targets = ["http://{upstream}"]

[[routes]]
name = "main"
prefix = "/"
pool = "main"
{extra}
"#
    )
}

/// A config with one TLS listener, `secure`, presenting `{cert}.pem`/`{cert}.key` (beside
/// the config file) for `name`, and everything routed to `upstream`; `head` goes first
/// (a `[server]` table, `[admin]`…).
pub fn tls_config(head: &str, name: &str, cert: &str, upstream: SocketAddr) -> String {
    format!(
        r#"
{head}

[listeners.secure]
address = "127.0.0.1:0"

[[listeners.secure.tls.certificates]]
server_names = ["{name}"]
cert = "{cert}.pem"
key = "{cert}.key"
default = true

[pools.main]
targets = ["http://{upstream}"]

[[routes]]
pool = "main"
"#
    )
}

/// A client with no proxy settings from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// An upstream whose response body at `path` is driven by the test: each `Bytes` sent on
/// the returned channel becomes a chunk, and dropping the sender ends the body. Only the
/// first request gets the stream.
pub async fn driven_stream(
    path: &'static str,
) -> (SocketAddr, tokio::sync::mpsc::Sender<axum::body::Bytes>) {
    use axum::body::{Body, Bytes};
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let rx = Arc::new(Mutex::new(Some(rx)));
    let app = Router::new().route(
        path,
        axum::routing::get(move || {
            let rx = rx.lock().unwrap().take();
            async move {
                let Some(rx) = rx else {
                    return Body::from("stream already taken");
                };
                Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv()
                        .await
                        .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
                }))
            }
        }),
    );
    (serve(app).await, tx)
}

/// The body of a GET of `url`, as text.
pub async fn get_text(url: String) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The admin API's `/metrics` text.
pub async fn metrics(proxy: &Proxy) -> String {
    get_text(format!("{}/metrics", proxy.admin_url())).await
}

/// Which upstream answered `url`: the `upstream` field of an [`echo`] upstream's JSON.
pub async fn upstream_of(url: &str) -> String {
    let resp = client().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    body["upstream"].as_str().unwrap().to_owned()
}
