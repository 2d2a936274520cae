//! Request smuggling and message framing through the server binary: every case of the
//! table shared with the library's tests (`crates/axum-reverse-proxy/tests/
//! smuggling_cases`), HTTP/1 on a plain listener and HTTP/2 on an h2c one, each against a
//! fresh proxy process and a fresh recording upstream.

mod common;
#[path = "../../axum-reverse-proxy/tests/smuggling_cases/mod.rs"]
mod smuggling_cases;

use std::net::SocketAddr;
use std::sync::Arc;

use common::{PATIENCE, Proxy, TempDir};
use smuggling_cases::{Client, Message, Mode, OK, Recorder, Running, Start, run_all, run_all_h2};

/// One plain listener, one h2c listener, everything to `upstream`.
fn config(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[server]
workers = 1

[access_log]
output = "off"

[listeners.web]
address = "127.0.0.1:0"

[listeners.h2c]
address = "127.0.0.1:0"
h2c = true

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

/// Start the binary on `config`; stopping it kills the process, which closes its sockets.
async fn start_server(config: String) -> Running {
    let dir = TempDir::new("smuggling");
    let path = dir.write("proxy.toml", &config);
    let proxy = tokio::task::spawn_blocking(move || Proxy::with_config(&path))
        .await
        .unwrap();
    let addr =
        |name: &str| -> SocketAddr { proxy.listener_url(name)["http://".len()..].parse().unwrap() };
    Running {
        h1: addr("web"),
        h2: addr("h2c"),
        stop: Box::new(move || {
            Box::pin(async move {
                tokio::task::spawn_blocking(move || drop((proxy, dir)))
                    .await
                    .unwrap();
            })
        }),
    }
}

fn server() -> Start {
    Arc::new(|upstream| Box::pin(start_server(config(upstream, ""))))
}

#[tokio::test]
async fn framing() {
    run_all(smuggling_cases::framing(), Mode::Server, server()).await;
}

#[tokio::test]
async fn chunks() {
    run_all(smuggling_cases::chunks(), Mode::Server, server()).await;
}

#[tokio::test]
async fn head() {
    run_all(smuggling_cases::head(), Mode::Server, server()).await;
}

#[tokio::test]
async fn request_line_and_host() {
    run_all(smuggling_cases::request_line(), Mode::Server, server()).await;
}

#[tokio::test]
async fn hop_by_hop() {
    run_all(smuggling_cases::hop_by_hop(), Mode::Server, server()).await;
}

#[tokio::test]
async fn h2() {
    run_all_h2(smuggling_cases::h2_cases(), Mode::Server, server()).await;
}

// ===== The server's own rules =====

/// Every request the upstream received, once the proxy is stopped.
async fn seen_by(upstream: Recorder) -> Vec<Message> {
    let conns = upstream.finish().await;
    for conn in &conns {
        assert!(conn.malformed.is_none() && !conn.unfinished, "{conn:?}");
    }
    conns.into_iter().flat_map(|c| c.requests).collect()
}

#[tokio::test]
async fn connection_cannot_name_away_what_the_route_or_the_proxy_adds() {
    let upstream = Recorder::start(OK.to_vec()).await;
    let rules = r#"
[routes.request_headers]
set = { "x-env" = "prod" }
add = { "x-added" = "proxy" }
"#;
    let proxy = start_server(config(upstream.addr, rules)).await;
    let mut client = Client::connect(proxy.h1).await;
    client
        .send(
            b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: x-env, X-Added, x-request-id, x-client\r\n\
              X-Env: client\r\nX-Added: client\r\nX-Request-Id: client-id\r\nX-Client: 1\r\n\r\n",
        )
        .await;
    let response = client.response(false).await.unwrap();
    assert_eq!(response.status(), 200, "{response:?}");
    (proxy.stop)().await;
    let seen = seen_by(upstream).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    let m = &seen[0];
    // The client's own values were hop-by-hop; the route's are not.
    assert_eq!(m.all("x-env"), ["prod"]);
    assert_eq!(m.all("x-added"), ["proxy"]);
    assert!(!m.has("x-client") && !m.has("connection"), "{m:?}");
    let id = m.one("x-request-id").expect("no request id upstream");
    assert_ne!(id, "client-id");
    assert_eq!(response.one("x-request-id"), Some(id));
}

#[tokio::test]
async fn absolute_form_is_routed_by_its_authority_to_our_upstreams() {
    let (good, other) = (
        Recorder::start(OK.to_vec()).await,
        Recorder::start(OK.to_vec()).await,
    );
    let config = format!(
        r#"
[server]
workers = 1

[access_log]
output = "off"

[listeners.web]
address = "127.0.0.1:0"

[listeners.h2c]
address = "127.0.0.1:0"
h2c = true

[pools.good]
targets = ["http://{}"]

[pools.other]
targets = ["http://{}"]

[[routes]]
hosts = ["good.example"]
pool = "good"

[[routes]]
pool = "other"
"#,
        good.addr, other.addr
    );
    let proxy = start_server(config).await;
    let mut client = Client::connect(proxy.h1).await;
    // RFC 9112 §3.2.2: the target's authority wins over Host, for routing too; neither
    // host named is ever connected to.
    client
        .send(b"GET http://good.example/x HTTP/1.1\r\nHost: other.example\r\n\r\n")
        .await;
    assert_eq!(client.response(false).await.unwrap().status(), 200);
    client
        .send(b"GET http://other.example/y HTTP/1.1\r\nHost: good.example\r\n\r\n")
        .await;
    assert_eq!(client.response(false).await.unwrap().status(), 200);
    (proxy.stop)().await;
    let (good_addr, other_addr) = (good.addr, other.addr);
    let (good, other) = (seen_by(good).await, seen_by(other).await);
    assert_eq!(good.len(), 1, "{good:?}");
    assert_eq!(good[0].target(), "/x");
    assert_eq!(good[0].one("host"), Some(good_addr.to_string()));
    assert_eq!(
        good[0].one("x-forwarded-host").as_deref(),
        Some("good.example")
    );
    assert_eq!(other.len(), 1, "{other:?}");
    assert_eq!(other[0].target(), "/y");
    assert_eq!(other[0].one("host"), Some(other_addr.to_string()));
    assert_eq!(
        other[0].one("x-forwarded-host").as_deref(),
        Some("other.example")
    );
}
