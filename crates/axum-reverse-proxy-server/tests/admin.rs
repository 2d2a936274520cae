//! The admin listener (/metrics, /health, /upstreams, /config), the JSON access log, and
//! routing (hosts, prefixes, header rules) as seen from outside.

mod common;

use common::{Proxy, TempDir, client, echo, get_text};

/// Every line of a Prometheus/OpenMetrics text exposition is a comment or
/// `name{labels} value`; returns the samples.
fn parse_exposition(text: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in `{line}`"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in `{line}`")),
        };
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in `{line}`"
        );
        if name_end < series.len() {
            let labels = &series[name_end..];
            assert!(labels.ends_with('}'), "unclosed labels in `{line}`");
            let inner = &labels[1..labels.len() - 1];
            for pair in split_labels(inner) {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("bad label in `{line}`"));
                assert!(!k.is_empty(), "empty label name in `{line}`");
                assert!(
                    v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                    "unquoted label value in `{line}`"
                );
            }
        }
        samples.push((series.to_owned(), value));
    }
    samples
}

/// Split `a="x",b="y,z"` on commas outside quotes.
fn split_labels(inner: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < inner.len() {
        parts.push(&inner[start..]);
    }
    parts
}

fn sample(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .map_or(0.0, |(_, v)| *v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_traffic() {
    let upstream = echo("m").await;
    let dir = TempDir::new("metrics");
    // A pool whose target refuses connections (port 1 on loopback), with retries.
    let extra = r#"
[pools.dead]
targets = ["http://127.0.0.1:1"]
[pools.dead.retry]
attempts = 3
delay = "1ms"

[[routes]]
name = "dead"
prefix = "/dead"
pool = "dead"
"#;
    let path = dir.write("proxy.toml", &common::simple_config(upstream, extra));
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");
    let admin = proxy.admin_url();

    let ok = r#"proxy_requests_total{route="main",upstream="main",status_class="2xx"}"#;
    let count = r#"proxy_request_duration_seconds_count{route="main",upstream="main"}"#;
    let before = parse_exposition(&get_text(format!("{admin}/metrics")).await);
    for _ in 0..3 {
        let resp = client().get(format!("{front}/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let text = get_text(format!("{admin}/metrics")).await;
    let after = parse_exposition(&text);
    assert_eq!(sample(&after, ok) - sample(&before, ok), 3.0, "{text}");
    assert_eq!(
        sample(&after, count) - sample(&before, count),
        3.0,
        "{text}"
    );
    assert!(
        sample(&after, r#"proxy_connections_total{listener="web"}"#) >= 1.0,
        "{text}"
    );
    assert!(
        text.contains("proxy_open_connections{listener=\"web\"}"),
        "{text}"
    );
    assert!(
        text.contains("proxy_retries_total{upstream=\"main\"}"),
        "{text}"
    );

    assert_eq!(get_text(format!("{admin}/health")).await, "ok\n");

    // Connect failures are retried (twice for three attempts) and counted.
    let resp = client().get(format!("{front}/dead")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let text = get_text(format!("{admin}/metrics")).await;
    let after = parse_exposition(&text);
    assert_eq!(
        sample(&after, r#"proxy_retries_total{upstream="dead"}"#),
        2.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &after,
            r#"proxy_requests_total{route="dead",upstream="dead",status_class="5xx"}"#
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_and_redacted_config() {
    let upstream = echo("u").await;
    let dir = TempDir::new("admin");
    let extra = r#"
[routes.request_headers]
set = { "authorization" = "Bearer config-secret-1", "x-env" = "staging" }
"#;
    let path = dir.write("proxy.toml", &common::simple_config(upstream, extra));
    let proxy = Proxy::with_config(&path);
    let admin = proxy.admin_url();

    let upstreams: serde_json::Value =
        serde_json::from_str(&get_text(format!("{admin}/upstreams")).await).unwrap();
    let endpoints = &upstreams["pools"]["main"]["endpoints"];
    assert_eq!(endpoints[0]["url"], format!("http://{upstream}"));
    assert_eq!(endpoints[0]["healthy"], true);
    assert_eq!(endpoints[0]["ejected"], false);
    assert_eq!(upstreams["pools"]["main"]["kind"], "single");
    assert_eq!(upstreams["pools"]["main"]["strategy"], "round_robin");

    let config = get_text(format!("{admin}/config")).await;
    assert!(!config.contains("config-secret-1"), "{config}");
    assert!(config.contains("<redacted>"), "{config}");
    assert!(config.contains("staging"), "{config}");

    // The header rule itself works.
    let body: serde_json::Value = client()
        .get(format!("{}/", proxy.listener_url("web")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["headers"]["authorization"], "Bearer config-secret-1");
    assert_eq!(body["headers"]["x-env"], "staging");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_log_has_the_fields_and_no_secrets() {
    let upstream = echo("log").await;
    let dir = TempDir::new("access");
    let path = dir.write("proxy.toml", &common::simple_config(upstream, ""));
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");

    let resp = client()
        .post(format!("{front}/orders/7?token=query-secret-2"))
        .header("authorization", "Bearer header-secret-3")
        .header("cookie", "sid=cookie-secret-4")
        .header("x-request-id", "log-test-1")
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sent = resp.bytes().await.unwrap().len() as u64;

    let (proxy, line) = proxy
        .wait_line_async(|l| l.starts_with('{') && l.contains("log-test-1"))
        .await;
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    for field in [
        "time",
        "request_id",
        "client",
        "method",
        "path",
        "status",
        "route",
        "upstream",
        "latency_ms",
        "bytes_in",
        "bytes_out",
    ] {
        assert!(entry.get(field).is_some(), "{field} missing in {line}");
    }
    assert_eq!(entry["method"], "POST");
    assert_eq!(entry["path"], "/orders/7");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["route"], "main");
    assert_eq!(entry["upstream"], "main");
    assert_eq!(entry["bytes_in"], 10);
    assert_eq!(entry["bytes_out"], sent);
    assert!(entry["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(entry["time"].as_str().unwrap().ends_with('Z'));
    for secret in ["query-secret-2", "header-secret-3", "cookie-secret-4"] {
        assert!(!line.contains(secret), "{secret} leaked into {line}");
        assert!(
            !proxy.stderr().contains(secret),
            "{secret} leaked into the log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_prefixes_route_requests() {
    let exact = echo("exact").await;
    let wild = echo("wild").await;
    let any = echo("any").await;
    let api = echo("api").await;
    let dir = TempDir::new("routing");
    let config = format!(
        r#"
[access_log]
output = "off"

[listeners.web]
address = "127.0.0.1:0"

[pools.exact]
targets = ["http://{exact}"]
[pools.wild]
targets = ["http://{wild}"]
[pools.any]
targets = ["http://{any}"]
[pools.api]
targets = ["http://{api}/v1"]

[[routes]]
hosts = ["shop.example.com"]
pool = "exact"

[[routes]]
hosts = ["*.example.com"]
pool = "wild"

[[routes]]
pool = "any"

[[routes]]
prefix = "/api"
strip_prefix = true
pool = "api"
[routes.response_headers]
set = {{ "x-route" = "api" }}
remove = ["content-type"]
"#
    );
    let path = dir.write("proxy.toml", &config);
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");

    let ask = |host: &'static str, path: &'static str| {
        let front = front.clone();
        async move {
            let resp = client()
                .get(format!("{front}{path}"))
                .header("host", host)
                .send()
                .await
                .unwrap();
            let headers = resp.headers().clone();
            let body: serde_json::Value =
                serde_json::from_str(&resp.text().await.unwrap()).unwrap();
            (body, headers)
        }
    };
    assert_eq!(ask("shop.example.com", "/").await.0["upstream"], "exact");
    assert_eq!(
        ask("SHOP.example.com:8080", "/x").await.0["upstream"],
        "exact"
    );
    assert_eq!(ask("www.example.com", "/api/x").await.0["upstream"], "wild");
    assert_eq!(ask("other.org", "/apix").await.0["upstream"], "any");
    let (body, headers) = ask("other.org", "/api/users?id=1").await;
    assert_eq!(body["upstream"], "api");
    assert_eq!(body["uri"], "/v1/users?id=1");
    assert_eq!(headers["x-route"], "api");
    assert!(headers.get("content-type").is_none());

    // A host without a route of its own and no matching any-host prefix gets 404.
    let dir2 = TempDir::new("routing-404");
    let only_host = config.replace("[[routes]]\npool = \"any\"\n", "");
    let path2 = dir2.write("proxy.toml", &only_host);
    let proxy2 = Proxy::with_config(&path2);
    let resp = client()
        .get(format!("{}/", proxy2.listener_url("web")))
        .header("host", "other.org")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_access_log_to_a_file() {
    let upstream = echo("file").await;
    let dir = TempDir::new("access-file");
    // A relative path is read from the config file's folder.
    let config = common::simple_config(upstream, "").replace(
        "format = \"json\"",
        "format = \"text\"\noutput = \"logs.txt\"",
    );
    let path = dir.write("proxy.toml", &config);
    let proxy = Proxy::with_config(&path);
    let resp = client()
        .get(format!(
            "{}/file/a?secret=query-secret-5",
            proxy.listener_url("web")
        ))
        .header("x-request-id", "file-log-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    // The line is written when the response body ends, before the client has it all;
    // stopping the server guarantees it is on disk.
    proxy.signal("TERM");
    let (proxy, _) = proxy.wait_line_async(|l| l == "shutdown complete").await;
    let (_, status) = proxy.wait_exit_async().await;
    assert!(status.success());
    let log = std::fs::read_to_string(dir.path("logs.txt")).unwrap();
    let line = log.lines().find(|l| l.contains("file-log-1")).expect(&log);
    assert!(
        line.contains(" GET \"/file/a\" 200 route=main upstream=main "),
        "{line}"
    );
    assert!(!line.contains("query-secret-5"), "{line}");
}
