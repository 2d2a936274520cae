//! The command line, run as a user would: demo, one-line mode, --check, --help.

mod common;

use std::process::Command;

use common::{BIN, Proxy, client, echo};

#[test]
fn version_and_help() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("axum-reverse-proxy"));
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--check",
        "--listen",
        "--upstream",
        "--strategy",
        "--admin",
        "--workers",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}

#[test]
fn invalid_upstream_is_an_error() {
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--upstream", "ftp://nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("scheme"), "{stderr}");
    assert!(stderr.contains("`--upstream`"), "{stderr}");
}

#[tokio::test]
async fn several_upstreams_make_a_balanced_pool() {
    let one = echo("one").await;
    let two = echo("two").await;
    let (one, two) = (format!("http://{one}"), format!("http://{two}"));
    let proxy = Proxy::start(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--upstream",
        &one,
        "--upstream",
        &two,
        "--strategy",
        "round_robin",
    ]);
    let front = proxy.listener_url("main");
    let mut seen = Vec::new();
    for _ in 0..4 {
        let body: serde_json::Value = client()
            .get(format!("{front}/x"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen.push(body["upstream"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, ["one", "two", "one", "two"]);
    let upstreams: serde_json::Value = client()
        .get(format!("{}/upstreams", proxy.admin_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pool = &upstreams["pools"]["default"];
    assert_eq!(pool["kind"], "balanced", "{upstreams}");
    assert_eq!(pool["strategy"], "round_robin");
    assert_eq!(pool["endpoints"][0]["requests"], 2, "{upstreams}");
    assert_eq!(pool["endpoints"][1]["requests"], 2, "{upstreams}");
}

#[test]
fn an_invalid_second_upstream_names_the_flag() {
    let out = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:1",
            "--upstream",
            "ftp://127.0.0.1:2",
            "--strategy",
            "p2c_peak_ewma",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Errors about generated configuration name the flag, not a line.
    assert!(
        stderr.contains("error: <command line>: `--upstream`"),
        "{stderr}"
    );
}

#[test]
fn unknown_strategy_is_a_usage_error() {
    let out = Command::new(BIN)
        .args(["--upstream", "http://127.0.0.1:1", "--strategy", "fastest"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("round_robin"));
}

#[test]
fn example_config_passes_check() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/example.toml");
    let out = Command::new(BIN)
        .args(["--check", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
}

#[test]
fn discovery_pools_pass_check_offline() {
    let dir = common::TempDir::new("disc");
    let path = dir.write(
        "proxy.toml",
        r#"
[listeners.web]
address = "127.0.0.1:0"

[pools.dns]
[pools.dns.discovery.dns]
name = "api.service.internal"
port = 8080
servers = ["127.0.0.1:53"]

[pools.etcd]
[pools.etcd.discovery.etcd]
endpoints = ["http://127.0.0.1:2379"]
prefix = "/services/api/"

[[routes]]
prefix = "/"
pool = "dns"

[[routes]]
prefix = "/e"
pool = "etcd"
"#,
    );
    let out = Command::new(BIN)
        .args(["--check", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 pool(s)"));
}

#[tokio::test]
async fn demo_answers() {
    let proxy = Proxy::start(&["--listen", "127.0.0.1:0"]);
    let printed = proxy.seen.join("\n");
    let url = |label: &str| {
        proxy
            .seen
            .iter()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|rest| rest.trim().trim_start_matches("on ").to_owned())
            .unwrap_or_else(|| panic!("no {label} line in {printed}"))
    };
    let front = url("proxy");
    let admin = url("admin");
    assert!(printed.contains("curl -i"), "{printed}");
    assert!(printed.contains(&format!("{admin}/metrics")), "{printed}");

    // One balanced route over both upstreams: two requests, two upstreams.
    let mut names = Vec::new();
    for _ in 0..2 {
        let resp = client()
            .get(format!("{front}/users/42?verbose=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.text().await.unwrap();
        assert!(body.contains("path: /users/42?verbose=1"), "{body}");
        assert!(body.contains("x-forwarded-for: 127.0.0.1"), "{body}");
        let name = body
            .lines()
            .next()
            .and_then(|l| l.split('\'').nth(1))
            .unwrap_or_else(|| panic!("no upstream name in {body}"))
            .to_owned();
        names.push(name);
    }
    names.sort();
    assert_eq!(names, ["blue", "green"]);

    let metrics = client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics
            .contains(r#"proxy_requests_total{route="demo",upstream="demo",status_class="2xx"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("proxy_upstream_endpoint_healthy{pool=\"demo\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn one_line_mode_proxies_everything() {
    let upstream = echo("one").await;
    let target = format!("http://{upstream}/base");
    let proxy = Proxy::start(&["--listen", "127.0.0.1:0", "--upstream", &target]);
    let front = proxy.listener_url("main");
    let resp = client()
        .get(format!("{front}/x?y=1"))
        .header("x-request-id", "given-id-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "given-id-1");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["uri"], "/base/x?y=1");
    assert_eq!(body["headers"]["x-request-id"], "given-id-1");

    // An invalid request id is replaced by a generated one, sent both ways.
    let resp = client()
        .get(format!("{front}/"))
        .header("x-request-id", "has spaces")
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32, "{id}");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["headers"]["x-request-id"], id.as_str());

    // Repeated lines: the first is the id, and the only line sent on.
    let resp = client()
        .get(format!("{front}/"))
        .header("x-request-id", "first-1")
        .header("x-request-id", "second-2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers().get_all("x-request-id").iter().count(), 1);
    assert_eq!(resp.headers()["x-request-id"], "first-1");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["headers"]["x-request-id"], "first-1");
}
