//! Balanced pools through the real binary, against real upstreams on 127.0.0.1:0:
//! strategies, weights, outlier ejection of a killed upstream, active health checks seen
//! in `/upstreams` and `/metrics`, and endpoint state kept across a reload.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use common::{PATIENCE, Proxy, TempDir, client, get_text};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// An upstream that answers `{"upstream": NAME}` everywhere and `/health` with 200 or
/// 503 as its switch says; it can be stopped for good.
struct Upstream {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Upstream {
    async fn start(name: &'static str) -> Upstream {
        Self::start_on("127.0.0.1:0", name).await
    }

    async fn start_on(addr: &str, name: &'static str) -> Upstream {
        let healthy = Arc::new(AtomicBool::new(true));
        let flag = healthy.clone();
        let app = Router::new()
            .route(
                "/health",
                get(move || {
                    let ok = flag.load(Ordering::SeqCst);
                    async move {
                        if ok {
                            StatusCode::OK
                        } else {
                            StatusCode::SERVICE_UNAVAILABLE
                        }
                    }
                }),
            )
            .fallback(move || async move { serde_json::json!({ "upstream": name }).to_string() });
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Upstream {
            addr,
            healthy,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Stop listening and close every connection; returns once the port is closed.
    async fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(PATIENCE, task).await;
        }
    }
}

fn config(pool: &str) -> String {
    format!(
        r#"
[admin]
address = "127.0.0.1:0"

[access_log]
output = "off"

[listeners.web]
address = "127.0.0.1:0"

[[routes]]
name = "main"
prefix = "/"
pool = "main"

{pool}
"#
    )
}

/// Which upstream answered `GET front/path` (or the status, when not 200).
async fn who(front: &str, path: &str) -> String {
    let resp = client().get(format!("{front}{path}")).send().await.unwrap();
    if resp.status() != 200 {
        return resp.status().as_u16().to_string();
    }
    let body: Value = resp.json().await.unwrap();
    body["upstream"].as_str().unwrap_or("?").to_owned()
}

async fn get_json(url: String) -> Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Poll `probe` until it returns `Some`, at most PATIENCE (the state it waits for is
/// reached by background tasks of the server: health checks, discovery, reloads).
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The endpoint of pool `main` whose URL is `url`, from `/upstreams`.
fn endpoint<'a>(upstreams: &'a Value, url: &str) -> &'a Value {
    upstreams["pools"]["main"]["endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["url"] == url))
        .unwrap_or_else(|| panic!("no endpoint {url} in {upstreams}"))
}

/// The value of the sample named exactly `name{labels}` in a text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|rest| rest.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_two_upstreams() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let dir = TempDir::new("rr");
    let path = dir.write(
        "proxy.toml",
        &config(&format!(
            "[pools.main]\ntargets = [\"{}\", \"{}\"]\nstrategy = \"round_robin\"\n",
            a.url(),
            b.url()
        )),
    );
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(who(&front, "/x").await);
    }
    assert_eq!(seen, ["a", "b", "a", "b", "a", "b"]);

    let upstreams = get_json(format!("{}/upstreams", proxy.admin_url())).await;
    assert_eq!(upstreams["pools"]["main"]["kind"], "balanced");
    for url in [a.url(), b.url()] {
        let e = endpoint(&upstreams, &url);
        assert_eq!(e["requests"], 3, "{upstreams}");
        assert_eq!(e["failures"], 0, "{upstreams}");
        assert_eq!(e["healthy"], true, "{upstreams}");
        assert_eq!(e["pending"], 0, "{upstreams}");
        assert!(e["rtt_ewma_ms"].as_f64().unwrap() > 0.0, "{upstreams}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_follows_weights() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let dir = TempDir::new("wrr");
    let path = dir.write(
        "proxy.toml",
        &config(&format!(
            "[pools.main]\ntargets = [{{ url = \"{}\", weight = 3 }}, \"{}\"]\nstrategy = \"weighted_round_robin\"\n",
            a.url(),
            b.url()
        )),
    );
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");
    let mut counts = [0usize; 2];
    for _ in 0..40 {
        match who(&front, "/").await.as_str() {
            "a" => counts[0] += 1,
            "b" => counts[1] += 1,
            other => panic!("unexpected answer {other}"),
        }
    }
    // nginx's smooth weighted round robin is exact over every cycle of 4.
    assert_eq!(counts, [30, 10]);
    let upstreams = get_json(format!("{}/upstreams", proxy.admin_url())).await;
    assert_eq!(endpoint(&upstreams, &a.url())["weight"], 3);
    assert_eq!(endpoint(&upstreams, &b.url())["weight"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_a_key_on_one_upstream() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let dir = TempDir::new("hash");
    let path = dir.write(
        "proxy.toml",
        &config(&format!(
            "[pools.main]\ntargets = [\"{}\", \"{}\"]\nstrategy = \"consistent_hash\"\nhash_key = \"path\"\n",
            a.url(),
            b.url()
        )),
    );
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");
    let mut owners = std::collections::BTreeSet::new();
    for key in 0..16 {
        let first = who(&front, &format!("/k/{key}")).await;
        for _ in 0..3 {
            assert_eq!(who(&front, &format!("/k/{key}")).await, first, "key {key}");
        }
        owners.insert(first);
    }
    assert_eq!(owners.len(), 2, "16 keys all hashed to {owners:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_upstream_is_ejected_and_traffic_moves() {
    let alive = Upstream::start("alive").await;
    let mut dead = Upstream::start("dead").await;
    let dir = TempDir::new("eject");
    let path = dir.write(
        "proxy.toml",
        &config(&format!(
            "[pools.main]\ntargets = [\"{}\", \"{}\"]\n\n[pools.main.outlier_detection]\nconsecutive_failures = 2\nbase_ejection_time = \"60s\"\n",
            alive.url(),
            dead.url()
        )),
    );
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");
    let admin = proxy.admin_url();
    // Both answer, then one dies.
    assert_eq!(who(&front, "/").await, "alive");
    assert_eq!(who(&front, "/").await, "dead");
    dead.kill().await;

    // Round robin sends every other request to the dead one until two failures in a
    // row eject it: at most four requests, two of them 502.
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(who(&front, "/").await);
    }
    assert_eq!(
        answers.iter().filter(|a| *a == "502").count(),
        2,
        "{answers:?}"
    );
    // From now on only the live upstream answers.
    for _ in 0..10 {
        assert_eq!(who(&front, "/").await, "alive");
    }

    let upstreams = get_json(format!("{admin}/upstreams")).await;
    let e = endpoint(&upstreams, &dead.url());
    assert_eq!(e["ejected"], true, "{upstreams}");
    assert_eq!(e["times_ejected"], 1, "{upstreams}");
    assert!(
        e["ejected_for_ms"].as_u64().unwrap() > 50_000,
        "{upstreams}"
    );
    assert_eq!(e["failures"], 2, "{upstreams}");
    assert_eq!(endpoint(&upstreams, &alive.url())["ejected"], false);

    let metrics = get_text(format!("{admin}/metrics")).await;
    let series = |name: &str, url: &str| format!("{name}{{pool=\"main\",endpoint=\"{url}\"}}");
    assert_eq!(
        sample(
            &metrics,
            &series("proxy_upstream_endpoint_ejected", &dead.url())
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            &series("proxy_upstream_endpoint_ejected", &alive.url())
        ),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            &series("proxy_upstream_endpoint_pending", &alive.url())
        ),
        Some(0.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_an_endpoint_out_and_back() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let dir = TempDir::new("health");
    let path = dir.write(
        "proxy.toml",
        &config(&format!(
            "[pools.main]\ntargets = [\"{}\", \"{}\"]\n\n[pools.main.health_check]\npath = \"/health\"\ninterval = \"50ms\"\ntimeout = \"50ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1\n",
            a.url(),
            b.url()
        )),
    );
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");
    let admin = proxy.admin_url();
    let healthy_series = format!(
        "proxy_upstream_endpoint_healthy{{pool=\"main\",endpoint=\"{}\"}}",
        b.url()
    );
    let upstreams = get_json(format!("{admin}/upstreams")).await;
    assert_eq!(upstreams["pools"]["main"]["health_check"], true);
    assert_eq!(endpoint(&upstreams, &b.url())["healthy"], true);

    b.set_healthy(false);
    eventually("b to be marked down in /upstreams", || async {
        let u = get_json(format!("{admin}/upstreams")).await;
        (endpoint(&u, &b.url())["healthy"] == false).then_some(())
    })
    .await;
    let metrics = get_text(format!("{admin}/metrics")).await;
    assert_eq!(sample(&metrics, &healthy_series), Some(0.0), "{metrics}");
    for _ in 0..6 {
        assert_eq!(who(&front, "/").await, "a");
    }

    b.set_healthy(true);
    eventually("b to be back in /upstreams", || async {
        let u = get_json(format!("{admin}/upstreams")).await;
        (endpoint(&u, &b.url())["healthy"] == true).then_some(())
    })
    .await;
    let metrics = get_text(format!("{admin}/metrics")).await;
    assert_eq!(sample(&metrics, &healthy_series), Some(1.0), "{metrics}");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(who(&front, "/").await);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_state_survives_a_reload_that_changes_only_routes() {
    let alive = Upstream::start("alive").await;
    let mut dead = Upstream::start("dead").await;
    let dead_url = dead.url();
    dead.kill().await;
    let pool = format!(
        "[pools.main]\ntargets = [\"{}\", \"{dead_url}\"]\n\n[pools.main.outlier_detection]\nconsecutive_failures = 1\nbase_ejection_time = \"5m\"\nmax_ejection_time = \"10m\"\n",
        alive.url(),
    );
    let dir = TempDir::new("keep");
    let path = dir.write("proxy.toml", &config(&pool));
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");
    let admin = proxy.admin_url();

    // One failure ejects the dead endpoint.
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(who(&front, "/").await);
    }
    assert_eq!(
        answers.iter().filter(|a| *a == "502").count(),
        1,
        "{answers:?}"
    );
    let before = get_json(format!("{admin}/upstreams")).await;
    assert_eq!(endpoint(&before, &dead_url)["ejected"], true, "{before}");
    let alive_requests = endpoint(&before, &alive.url())["requests"].clone();

    // A reload that adds a route and leaves the pool alone.
    let extra = "\n[[routes]]\nname = \"extra\"\nprefix = \"/extra\"\npool = \"main\"\n";
    dir.write("proxy.toml", &format!("{}{extra}", config(&pool)));
    proxy.signal("HUP");
    let (proxy, line) = proxy
        .wait_line_async(|l| l.starts_with("reloaded") || l.starts_with("reload failed"))
        .await;
    assert!(line.starts_with("reloaded"), "{line}");

    let after = get_json(format!("{admin}/upstreams")).await;
    assert_eq!(after["generation"], 2, "{after}");
    let e = endpoint(&after, &dead_url);
    assert_eq!(e["ejected"], true, "{after}");
    assert_eq!(e["times_ejected"], 1, "{after}");
    assert_eq!(
        endpoint(&after, &alive.url())["requests"],
        alive_requests,
        "{after}"
    );
    // The new route uses the same, still ejecting, pool.
    for _ in 0..4 {
        assert_eq!(who(&front, "/extra/x").await, "alive");
    }
    drop(proxy);
}
