//! Routing: where a request lands upstream, for every way of mounting a proxy.
//!
//! Requests go over raw TCP so that the request target reaches the proxy byte for byte
//! (reqwest would normalise `//`, dot segments and percent-encoding), and the recording
//! origin reports the request target it saw.

mod common;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use axum_reverse_proxy::ReverseProxy;
use common::{Upstream, raw_get, raw_request, spawn_proxy};
use http::StatusCode;

// ===== Harness =====

/// How the proxy is put into the application.
#[derive(Clone, Copy, Debug)]
enum Mount {
    /// `Router::from(proxy)`.
    From,
    /// `Router::new().route("/other", …).merge(proxy)`.
    Merge,
    /// `Router::new().fallback_service(proxy)`.
    Fallback,
    /// `Router::new().nest_service("/api", proxy)`.
    NestApi,
}

fn app(mount: Mount, proxy: ReverseProxy) -> Router {
    match mount {
        Mount::From => Router::from(proxy),
        Mount::Merge => Router::new()
            .route("/other", get(|| async { "other" }))
            .merge(proxy),
        Mount::Fallback => Router::new().fallback_service(proxy),
        Mount::NestApi => Router::new().nest_service("/api", proxy),
    }
}

/// Mount a proxy at `base` → `origin + target_path`, send `GET request`, and return the
/// request target the origin saw.
async fn upstream_target(mount: Mount, base: &str, target_path: &str, request: &str) -> String {
    let mut origin = Upstream::start().await;
    let proxy = ReverseProxy::new(base, origin.url(target_path));
    let addr = spawn_proxy(app(mount, proxy)).await;
    let res = raw_get(addr, request).await;
    assert_eq!(
        res.status,
        200,
        "{mount:?} base {base:?} target {target_path:?} request {request:?}: {}",
        res.body_text()
    );
    let seen = origin.next().await.target;
    assert_eq!(
        res.header("x-upstream-target").as_deref(),
        Some(seen.as_str()),
        "the response is the origin's"
    );
    seen
}

/// Run `(base, target path, request, expected upstream target)` cases under `mount`.
async fn check(mount: Mount, cases: &[(&str, &str, &str, &str)]) {
    for &(base, target_path, request, expected) in cases {
        let seen = upstream_target(mount, base, target_path, request).await;
        assert_eq!(
            seen, expected,
            "{mount:?}: proxy at {base:?} → origin{target_path:?}, request {request:?}"
        );
    }
}

// ===== The joining matrix =====

/// Cases that hold for a proxy mounted at its own path (`From`, `merge`).
const OWN_PATH: &[(&str, &str, &str, &str)] = &[
    // base /api, target with a path, no trailing slash
    ("/api", "/bar", "/api", "/bar"),
    ("/api", "/bar", "/api/", "/bar/"),
    ("/api", "/bar", "/api/x", "/bar/x"),
    ("/api", "/bar", "/api/x/", "/bar/x/"),
    ("/api", "/bar", "/api/x?y=1&z", "/bar/x?y=1&z"),
    // target with a trailing slash
    ("/api", "/base/", "/api", "/base/"),
    ("/api", "/base/", "/api/x", "/base/x"),
    // bare target
    ("/api", "", "/api", "/"),
    ("/api", "/", "/api/x", "/x"),
    // the mount path is stripped once, not twice
    ("/api", "", "/api/api/x", "/api/x"),
    ("/api", "", "/api/api", "/api"),
    // a trailing slash on the base changes nothing
    ("/api/", "/bar", "/api", "/bar"),
    ("/api/", "/bar", "/api/", "/bar/"),
    ("/api/", "/bar", "/api/x", "/bar/x"),
    // root mounts: "/" and "" are the same
    ("/", "/api", "/", "/api"),
    ("/", "/api", "/x/", "/api/x/"),
    ("/", "", "/x?q=1", "/x?q=1"),
    ("", "/api", "/", "/api"),
    ("", "/api", "/x", "/api/x"),
    // target query first, then the request's
    ("/p", "/t?k=v", "/p?q=1", "/t?k=v&q=1"),
    ("/p", "/t?k=v", "/p/x?q=1&r=2", "/t/x?k=v&q=1&r=2"),
    ("/p", "/t?k=v", "/p/x", "/t/x?k=v"),
    ("/p", "/?k=v", "/p/x?q", "/x?k=v&q"),
    // nested mount paths
    ("/a/b", "/c", "/a/b/d", "/c/d"),
];

#[tokio::test]
async fn router_from_proxy() {
    check(Mount::From, OWN_PATH).await;
}

#[tokio::test]
async fn merged_into_a_router() {
    check(Mount::Merge, OWN_PATH).await;
}

#[tokio::test]
async fn fallback_service() {
    check(
        Mount::Fallback,
        &[
            ("/api", "/bar", "/api/x", "/bar/x"),
            ("/api", "/bar", "/api", "/bar"),
            ("/api", "/bar", "/api/", "/bar/"),
            ("/api", "", "/api/api/x", "/api/x"),
            // outside its mount path, a fallback proxy keeps the whole path
            ("/api", "/bar", "/other/x", "/bar/other/x"),
            ("/api", "/bar", "/apix", "/bar/apix"),
            ("/", "/t?k=v", "/x?q=1", "/t/x?k=v&q=1"),
        ],
    )
    .await;
}

#[tokio::test]
async fn nest_service_at_the_proxy_path() {
    check(
        Mount::NestApi,
        &[
            ("/api", "/bar", "/api/x", "/bar/x"),
            ("/api", "/bar", "/api/x/?q=1", "/bar/x/?q=1"),
            ("/api", "/bar", "/api", "/bar"),
            // axum removed `/api`; the proxy must not remove a second one
            ("/api", "/bar", "/api/api/x", "/bar/api/x"),
            ("/api", "", "/api/api", "/api"),
            // a proxy at `/` nested at `/api`
            ("/", "/bar", "/api/x", "/bar/x"),
            ("", "", "/api/x?q", "/x?q"),
        ],
    )
    .await;
}

#[tokio::test]
async fn nest_service_inside_nested_routers() {
    let mut origin = Upstream::start().await;
    let inner = Router::new().nest_service("/api", ReverseProxy::new("/api", origin.url("/b")));
    let with_param =
        Router::new().nest_service("/api", ReverseProxy::new("/api", origin.url("/p")));
    let app = Router::new()
        .nest("/v1", inner)
        .nest("/t/{tenant}", with_param);
    let addr = spawn_proxy(app).await;
    for (request, expected) in [
        ("/v1/api/x", "/b/x"),
        ("/v1/api", "/b"),
        ("/v1/api/", "/b/"),
        ("/v1/api//x?q", "/b//x?q"),
        ("/v1/api/api/x", "/b/api/x"),
        // a parameter in the nest path: axum's stripping is taken as is
        ("/t/acme/api/x", "/p/x"),
        ("/t/acme/api/api/x?q", "/p/api/x?q"),
    ] {
        let res = raw_get(addr, request).await;
        assert_eq!(res.status, 200, "{request}");
        assert_eq!(origin.next().await.target, expected, "{request}");
    }
}

#[tokio::test]
async fn slash_after_the_mount_path_is_served() {
    // `/api/` on a proxy at `/api` is the proxy's, whatever the mounting.
    for mount in [Mount::From, Mount::Merge, Mount::Fallback, Mount::NestApi] {
        let seen = upstream_target(mount, "/api", "/bar", "/api/").await;
        assert_eq!(seen, "/bar/", "{mount:?}");
    }
}

#[tokio::test]
async fn mount_path_matches_whole_segments_only() {
    let mut origin = Upstream::start().await;
    let proxy = ReverseProxy::new("/api", origin.url(""));
    let addr = spawn_proxy(app(Mount::Merge, proxy)).await;
    for path in ["/apix", "/ap", "/", "/x/api"] {
        let res = raw_get(addr, path).await;
        assert_eq!(res.status, 404, "{path} is not under /api");
    }
    let res = raw_get(addr, "/other").await;
    assert_eq!((res.status, res.body_text().as_str()), (200, "other"));
    assert!(origin.try_next().is_none());
    assert_eq!(origin.connections(), 0, "the origin was never contacted");
}

// ===== Bytes on the path are forwarded verbatim =====

#[tokio::test]
async fn encoded_and_odd_paths_are_forwarded_verbatim() {
    let paths = [
        "/a%2Fb",
        "/a%2fb",
        "/a%20b",
        "/100%25",
        "/%25%32%46",
        "//x",
        "/x//y/",
        "/a/../b",
        "/a/./b",
        "/../x",
        "/a/%2E%2E/b",
        "/caf%C3%A9",
        "/x;p=1",
        "/x?a=%2F&b=%20&c",
        "/x?",
    ];
    for path in paths {
        let expected = path;
        let request = format!("/api{path}");
        for mount in [Mount::From, Mount::NestApi] {
            let seen = upstream_target(mount, "/api", "", &request).await;
            assert_eq!(seen, expected, "{mount:?}: {request}");
        }
        let seen = upstream_target(Mount::Fallback, "/", "/t", path).await;
        assert_eq!(seen, format!("/t{expected}"), "fallback: {path}");
    }
}

// ===== Methods =====

#[tokio::test]
async fn every_method_is_forwarded() {
    let mut origin = Upstream::start_with(|req| async move {
        http::Response::builder()
            .header("x-method", req.method.as_str())
            .header("x-body", String::from_utf8(req.body).unwrap())
            .body(common::full("answer"))
            .unwrap()
    })
    .await;
    let addr = spawn_proxy(Router::from(ReverseProxy::new("/api", origin.url("/up")))).await;
    let client = common::http_client();
    let methods = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PURGE", "MKCOL",
    ];
    for name in methods {
        let method = reqwest::Method::from_bytes(name.as_bytes()).unwrap();
        let with_body = !matches!(name, "GET" | "HEAD" | "TRACE");
        let mut req = client.request(method, format!("http://{addr}/api/m?x=1"));
        if with_body {
            req = req.body(format!("body of {name}"));
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{name}");
        assert_eq!(res.headers()["x-method"], name);
        let text = res.text().await.unwrap();
        assert_eq!(text, if name == "HEAD" { "" } else { "answer" }, "{name}");

        let seen = origin.next().await;
        assert_eq!(seen.method, name);
        assert_eq!(seen.target, "/up/m?x=1");
        let expected = if with_body {
            format!("body of {name}")
        } else {
            String::new()
        };
        assert_eq!(String::from_utf8(seen.body).unwrap(), expected, "{name}");
    }
}

#[tokio::test]
async fn head_response_has_headers_and_no_body() {
    let mut origin = Upstream::start_with(|_| async {
        http::Response::builder()
            .header("content-length", "1234")
            .body(common::empty())
            .unwrap()
    })
    .await;
    let addr = spawn_proxy(Router::from(ReverseProxy::new("/", origin.url("")))).await;
    let mut client = common::RawClient::connect(addr).await;
    client
        .send(b"HEAD /h HTTP/1.1\r\nHost: proxy.example\r\n\r\n")
        .await;
    let res = client.read_response(true).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-length").as_deref(), Some("1234"));
    assert_eq!(origin.next().await.method, "HEAD");
    // The connection is still usable: no body bytes were left on it.
    client
        .send(b"GET /g HTTP/1.1\r\nHost: proxy.example\r\n\r\n")
        .await;
    let res = client.read_head().await;
    assert_eq!(res.status, 200);
    assert_eq!(origin.next().await.target, "/g");
}

// ===== State and conversions =====

#[derive(Clone)]
struct AppState {
    greeting: &'static str,
}

#[tokio::test]
async fn merges_into_a_router_with_state() {
    let mut origin = Upstream::start().await;
    let proxy = ReverseProxy::new("/api", origin.url("/v1"));
    let app: Router<AppState> = Router::new()
        .route(
            "/hello",
            get(|State(state): State<AppState>| async move { state.greeting }),
        )
        .merge(proxy);
    let addr = spawn_proxy(app.with_state(AppState { greeting: "hi" })).await;

    let res = raw_get(addr, "/hello").await;
    assert_eq!((res.status, res.body_text().as_str()), (200, "hi"));
    let res = raw_get(addr, "/api/users?id=7").await;
    assert_eq!((res.status, res.body_text().as_str()), (200, "ok"));
    assert_eq!(origin.next().await.target, "/v1/users?id=7");
}

#[tokio::test]
async fn two_proxies_in_one_router() {
    let mut a = Upstream::start().await;
    let mut b = Upstream::start().await;
    let app = Router::new()
        .merge(ReverseProxy::new("/a", a.url("/one")))
        .merge(ReverseProxy::new("/b", b.url("/two")));
    let addr = spawn_proxy(app).await;
    assert_eq!(raw_get(addr, "/a/x").await.status, 200);
    assert_eq!(raw_get(addr, "/b/y").await.status, 200);
    assert_eq!(a.next().await.target, "/one/x");
    assert_eq!(b.next().await.target, "/two/y");
    assert!(a.try_next().is_none() && b.try_next().is_none());
}

#[tokio::test]
async fn accessors_report_what_was_given() {
    let proxy = ReverseProxy::new(String::from("/api/"), "http://127.0.0.1:9/base?k=v");
    assert_eq!(proxy.path(), "/api/");
    assert_eq!(proxy.target(), "http://127.0.0.1:9/base?k=v");
    // A scheme-less target means http.
    let mut origin = Upstream::start().await;
    let proxy = ReverseProxy::new("/", origin.addr.to_string());
    let addr = spawn_proxy(Router::from(proxy)).await;
    let res = raw_request(
        addr,
        b"GET /z HTTP/1.1\r\nHost: proxy.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(origin.next().await.target, "/z");
}

// ===== Invalid targets =====

#[test]
#[should_panic(expected = "invalid proxy target \"ftp://example.com\"")]
fn new_panics_on_an_unsupported_scheme() {
    let _ = ReverseProxy::new("/", "ftp://example.com");
}

#[test]
#[should_panic(expected = "invalid proxy target")]
fn new_panics_on_garbage() {
    let _ = ReverseProxy::new("/api", "not a url at all");
}

#[test]
fn try_new_returns_an_error() {
    for bad in [
        "ftp://example.com",
        "http://",
        "not a url at all",
        "",
        "/just/a/path",
        "http://user:pass@example.com",
        "http://exa mple.com",
    ] {
        let err = ReverseProxy::try_new("/", bad).expect_err(bad);
        assert_eq!(err.target(), bad);
        let message = err.to_string();
        assert!(message.starts_with("invalid proxy target"), "{message}");
        assert!(!message.ends_with(": "), "the message says why: {message}");
    }
    for good in [
        "http://127.0.0.1:3000",
        "https://example.com/base/",
        "localhost:3000",
        "ws://127.0.0.1:1/x?y=z",
        "http://[::1]:8080",
    ] {
        let proxy = ReverseProxy::try_new("/", good).unwrap_or_else(|e| panic!("{good}: {e}"));
        assert_eq!(proxy.target(), good);
    }
}
