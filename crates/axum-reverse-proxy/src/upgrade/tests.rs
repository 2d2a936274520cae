use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use http::header::{CONNECTION, HeaderMap, HeaderValue, UPGRADE};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;

use super::detect::{Detected, Mode, Offer, detect};
use super::guard::{TunnelGuard, hold_until_body_ends};
use super::handshake::{Invalid, accept_key, client_response, prepare_request, validate};
use super::tracker::UpgradeTunnels;
use super::tunnel::{Activity, End};

fn request(method: Method, version: Version, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut builder = Request::builder()
        .method(method)
        .version(version)
        .uri("/chat");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

fn ws_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
        ("sec-websocket-protocol", "chat, superchat"),
        (
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits, x-foo",
        ),
    ]
}

fn offer_of(parts: &http::request::Parts) -> Offer {
    match detect(parts) {
        Detected::Upgrade(offer) => offer,
        other => panic!("expected an upgrade, got {other:?}"),
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

#[test]
fn accept_key_matches_rfc_6455_example() {
    // RFC 6455 §1.3.
    assert_eq!(
        accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn detects_http1_upgrades_by_token() {
    let parts = request(Method::GET, Version::HTTP_11, &ws_headers());
    let offer = offer_of(&parts);
    assert_eq!(offer.mode, Mode::Http1);
    assert_eq!(offer.protocols, ["websocket"]);
    let ws = offer.websocket.unwrap();
    assert_eq!(ws.subprotocols, ["chat", "superchat"]);
    assert_eq!(ws.extensions, ["permessage-deflate", "x-foo"]);
    assert_eq!(ws.key.unwrap(), "dGhlIHNhbXBsZSBub25jZQ==");

    // Case-insensitive, token lists, several Connection lines, custom protocols.
    let parts = request(
        Method::GET,
        Version::HTTP_11,
        &[
            ("upgrade", "Echo-Proto/1, WebSocket"),
            ("connection", "keep-alive"),
            ("connection", "UPGRADE"),
        ],
    );
    let offer = offer_of(&parts);
    assert_eq!(offer.protocols, ["Echo-Proto/1", "WebSocket"]);
    assert!(offer.websocket.is_some());
}

#[test]
fn ignores_what_is_not_an_upgrade() {
    let plain = |method, version, headers: &[(&str, &str)]| {
        matches!(detect(&request(method, version, headers)), Detected::Plain)
    };
    let ws = ws_headers();
    assert!(plain(Method::POST, Version::HTTP_11, &ws));
    assert!(plain(Method::GET, Version::HTTP_10, &ws));
    assert!(plain(Method::GET, Version::HTTP_2, &ws));
    assert!(plain(
        Method::GET,
        Version::HTTP_11,
        &[("upgrade", "websocket")]
    ));
    assert!(plain(
        Method::GET,
        Version::HTTP_11,
        &[
            ("upgrade", "websocket"),
            ("connection", "keep-alive, upgraded")
        ]
    ));
    assert!(plain(
        Method::GET,
        Version::HTTP_11,
        &[("connection", "upgrade")]
    ));
    assert!(plain(
        Method::GET,
        Version::HTTP_11,
        &[
            ("upgrade", "h2c"),
            ("connection", "upgrade, http2-settings")
        ]
    ));
}

#[test]
fn h2c_is_removed_from_a_mixed_offer() {
    let mut parts = request(
        Method::GET,
        Version::HTTP_11,
        &[("upgrade", "h2c, echo"), ("connection", "upgrade")],
    );
    let mut offer = offer_of(&parts);
    assert_eq!(offer.protocols, ["echo"]);
    prepare_request(&mut offer, &mut parts);
    assert_eq!(parts.headers[UPGRADE], "echo");
}

#[test]
fn connect_requests() {
    let parts = request(Method::CONNECT, Version::HTTP_11, &[]);
    assert!(matches!(detect(&parts), Detected::UnsupportedConnect));

    let mut parts = request(Method::CONNECT, Version::HTTP_2, &[]);
    assert!(matches!(detect(&parts), Detected::UnsupportedConnect));
    parts
        .extensions
        .insert(hyper::ext::Protocol::from_static("connect-udp"));
    assert!(matches!(detect(&parts), Detected::UnsupportedConnect));

    let mut parts = request(
        Method::CONNECT,
        Version::HTTP_2,
        &[
            ("sec-websocket-version", "13"),
            ("sec-websocket-protocol", "chat"),
        ],
    );
    parts
        .extensions
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut offer = offer_of(&parts);
    assert_eq!(offer.mode, Mode::ExtendedConnect);
    prepare_request(&mut offer, &mut parts);
    assert_eq!(parts.method, Method::GET);
    assert_eq!(parts.headers[UPGRADE], "websocket");
    assert_eq!(parts.headers[CONNECTION], "upgrade");
    let key = parts.headers["sec-websocket-key"].clone();
    assert_eq!(key.len(), 24, "16 bytes in base64");
    assert_eq!(offer.websocket.unwrap().key.unwrap(), key);
}

fn good_101() -> Vec<(&'static str, &'static str)> {
    vec![
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    ]
}

#[test]
fn validates_the_upstream_101() {
    let offer = offer_of(&request(Method::GET, Version::HTTP_11, &ws_headers()));
    let check = |extra: &[(&'static str, &'static str)], drop: &str| {
        let mut pairs = good_101();
        pairs.retain(|(name, _)| *name != drop);
        pairs.extend_from_slice(extra);
        validate(&offer, &headers(&pairs))
    };
    assert_eq!(check(&[], ""), Ok(()));
    assert_eq!(
        check(&[("sec-websocket-protocol", "superchat")], ""),
        Ok(())
    );
    assert_eq!(
        check(
            &[(
                "sec-websocket-extensions",
                "permessage-deflate; server_no_context_takeover"
            )],
            ""
        ),
        Ok(())
    );
    assert_eq!(check(&[], "upgrade"), Err(Invalid::NoUpgrade));
    assert_eq!(
        check(&[("upgrade", "other")], ""),
        Err(Invalid::UnofferedProtocol)
    );
    assert_eq!(check(&[], "sec-websocket-accept"), Err(Invalid::BadAccept));
    assert_eq!(
        check(
            &[("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")],
            ""
        ),
        Err(Invalid::BadAccept),
        "two accepts"
    );
    let mut wrong = good_101();
    wrong[2].1 = "AAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    assert_eq!(validate(&offer, &headers(&wrong)), Err(Invalid::BadAccept));
    assert_eq!(
        check(&[("sec-websocket-protocol", "Chat")], ""),
        Err(Invalid::UnofferedSubprotocol),
        "subprotocols compare case-sensitively"
    );
    assert_eq!(
        check(&[("sec-websocket-protocol", "chat, superchat")], ""),
        Err(Invalid::UnofferedSubprotocol)
    );
    assert_eq!(
        check(&[("sec-websocket-extensions", "x-bar")], ""),
        Err(Invalid::UnofferedExtension)
    );

    // Nothing offered: nothing may be chosen.
    let bare: Vec<_> = ws_headers().into_iter().take(4).collect();
    let offer = super::detect::detect(&request(Method::GET, Version::HTTP_11, &bare));
    let Detected::Upgrade(offer) = offer else {
        panic!()
    };
    assert_eq!(validate(&offer, &headers(&good_101())), Ok(()));
    let mut chosen = good_101();
    chosen.push(("sec-websocket-protocol", "chat"));
    assert_eq!(
        validate(&offer, &headers(&chosen)),
        Err(Invalid::UnofferedSubprotocol)
    );

    // A WebSocket offer without a key cannot be validated.
    let keyless: Vec<_> = ws_headers()
        .into_iter()
        .filter(|(n, _)| *n != "sec-websocket-key")
        .collect();
    let offer = super::detect::detect(&request(Method::GET, Version::HTTP_11, &keyless));
    let Detected::Upgrade(offer) = offer else {
        panic!()
    };
    assert_eq!(validate(&offer, &headers(&good_101())), Err(Invalid::NoKey));

    // Other protocols: only the Upgrade token is checked.
    let offer = super::detect::detect(&request(
        Method::GET,
        Version::HTTP_11,
        &[("upgrade", "echo-proto"), ("connection", "upgrade")],
    ));
    let Detected::Upgrade(offer) = offer else {
        panic!()
    };
    assert_eq!(
        validate(&offer, &headers(&[("upgrade", "ECHO-proto")])),
        Ok(())
    );
}

#[test]
fn client_response_keeps_end_to_end_headers() {
    let upstream = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade, x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("content-length", "0")
        .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        .header("sec-websocket-protocol", "chat")
        .header("sec-websocket-extensions", "permessage-deflate")
        .header("set-cookie", "a=b")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let h1 = client_response(Mode::Http1, upstream.clone());
    assert_eq!(h1.status(), StatusCode::SWITCHING_PROTOCOLS);
    let h = h1.headers();
    assert_eq!(h["upgrade"], "websocket");
    assert_eq!(h["connection"], "upgrade");
    assert_eq!(h["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_eq!(h["sec-websocket-protocol"], "chat");
    assert_eq!(h["sec-websocket-extensions"], "permessage-deflate");
    assert_eq!(h["set-cookie"], "a=b");
    for gone in ["x-hop", "keep-alive", "content-length"] {
        assert!(!h.contains_key(gone), "{gone}");
    }

    let h2 = client_response(Mode::ExtendedConnect, upstream);
    assert_eq!(h2.status(), StatusCode::OK);
    let h = h2.headers();
    for gone in ["upgrade", "connection", "sec-websocket-accept", "x-hop"] {
        assert!(!h.contains_key(gone), "{gone}");
    }
    assert_eq!(h["sec-websocket-protocol"], "chat");
    assert_eq!(h["set-cookie"], "a=b");
}

#[tokio::test]
async fn tunnels_count_and_drain() {
    let tunnels = UpgradeTunnels::new();
    tunnels.drained().await;
    let a = tunnels.open();
    let b = tunnels.clone().open();
    assert_eq!((tunnels.active(), tunnels.total()), (2, 2));
    let drained = tokio::spawn({
        let tunnels = tunnels.clone();
        async move { tunnels.drained().await }
    });
    a.record(10, 20);
    drop(a);
    tokio::task::yield_now().await;
    assert!(!drained.is_finished());
    drop(b);
    tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .expect("drained after the last tunnel closed")
        .unwrap();
    assert_eq!((tunnels.active(), tunnels.total()), (0, 2));
    assert_eq!(
        (tunnels.bytes_to_upstream(), tunnels.bytes_to_client()),
        (10, 20)
    );
}

#[tokio::test]
async fn close_all_reaches_open_and_later_slots() {
    let tunnels = UpgradeTunnels::new();
    let mut before = tunnels.open();
    let waiting = tokio::spawn(async move { before.closing().await });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    tunnels.close_all();
    assert!(tunnels.is_closing());
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    let mut after = tunnels.open();
    tokio::time::timeout(Duration::from_secs(5), after.closing())
        .await
        .expect("a slot opened after close_all is closing at once");
}

#[tokio::test]
async fn a_slot_waiting_for_close_all_stays_pending_until_woken_by_it() {
    let tunnels = UpgradeTunnels::new();
    let mut slot = tunnels.open();
    let (registered_tx, registered) = tokio::sync::oneshot::channel();
    let waiting = tokio::spawn(async move {
        let mut wait = Box::pin(slot.closing());
        // Polled again and again (as a tunnel's select does at each chunk): pending.
        for _ in 0..3 {
            let polled = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(wait.as_mut().poll(cx).is_pending())
            })
            .await;
            assert!(polled);
        }
        registered_tx.send(()).unwrap();
        wait.await;
    });
    registered.await.unwrap();
    // Only the waker registered at the first poll can wake the task now.
    tunnels.close_all();
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("woken by close_all")
        .unwrap();
}

struct Flag(Arc<AtomicBool>);

impl Drop for Flag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn guard_is_taken_once_and_held_until_the_body_ends() {
    let released = Arc::new(AtomicBool::new(false));
    let guard = TunnelGuard::new(Flag(Arc::clone(&released)));
    let mut first = http::Extensions::new();
    first.insert(guard.clone());
    let mut second = http::Extensions::new();
    second.insert(guard);
    let held = TunnelGuard::take(&mut first).expect("first take");
    assert!(TunnelGuard::take(&mut second).is_none(), "taken once");

    let response = hold_until_body_ends(Response::new(streaming("chunk")), held);
    assert!(!released.load(Ordering::SeqCst));
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes, "chunk");
    assert!(released.load(Ordering::SeqCst));

    // Dropping the body early releases it too.
    let released = Arc::new(AtomicBool::new(false));
    let mut ext = http::Extensions::new();
    ext.insert(TunnelGuard::new(Flag(Arc::clone(&released))));
    let held = TunnelGuard::take(&mut ext).unwrap();
    let response = hold_until_body_ends(Response::new(streaming("x")), held);
    assert!(!released.load(Ordering::SeqCst));
    drop(response);
    assert!(released.load(Ordering::SeqCst));
}

fn streaming(chunk: &'static str) -> Body {
    Body::from_stream(futures_util::stream::iter([Ok::<
        _,
        std::convert::Infallible,
    >(chunk)]))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn idle_timer_counts_from_the_last_read() {
    let activity = Activity::new();
    let watch = activity.watch(Some(ms(300)));
    tokio::pin!(watch);
    assert!(tokio::time::timeout(ms(299), &mut watch).await.is_err());
    activity.touch();
    assert!(tokio::time::timeout(ms(299), &mut watch).await.is_err());
    let end = tokio::time::timeout(ms(2), &mut watch).await;
    assert!(matches!(end, Ok(End::Idle)));
}

#[tokio::test(start_paused = true)]
async fn half_closed_tunnels_linger_ten_seconds_at_most() {
    // No idle timeout: open forever until a side ends, then 10 s of silence.
    let activity = Activity::new();
    let watch = activity.watch(None);
    tokio::pin!(watch);
    assert!(
        tokio::time::timeout(Duration::from_secs(3600), &mut watch)
            .await
            .is_err()
    );
    activity.ended();
    assert!(tokio::time::timeout(ms(9_000), &mut watch).await.is_err());
    activity.touch(); // the other direction still talks
    assert!(tokio::time::timeout(ms(9_999), &mut watch).await.is_err());
    let end = tokio::time::timeout(ms(2), &mut watch).await;
    assert!(matches!(end, Ok(End::HalfClosedIdle)));

    // A shorter idle timeout applies to the linger too.
    let activity = Activity::new();
    let watch = activity.watch(Some(ms(500)));
    tokio::pin!(watch);
    activity.ended();
    assert!(tokio::time::timeout(ms(499), &mut watch).await.is_err());
    let end = tokio::time::timeout(ms(2), &mut watch).await;
    assert!(matches!(end, Ok(End::HalfClosedIdle)));
}
