//! The pool against an in-memory upstream, where the order of events is exact: a
//! current-thread runtime, and a connector that hands out `tokio::io::duplex` pipes whose
//! far ends the test plays.

use std::sync::Arc;

use axum::body::Body;
use http::uri::Authority;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

use super::connect::Connector;
use super::pool::{Pool, PoolConfig, PoolKey, Protocol};
use crate::error::ProxyError;

fn pool() -> (Arc<Pool>, mpsc::UnboundedReceiver<DuplexStream>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Arc::new(Pool::new(Connector::pipes(tx), PoolConfig::default())),
        rx,
    )
}

fn key() -> PoolKey {
    PoolKey {
        https: false,
        authority: Authority::from_static("upstream.test"),
        server_name: None,
    }
}

fn request(method: &str) -> Request<Body> {
    let body = if method == "POST" {
        Body::from("payload")
    } else {
        Body::empty()
    };
    Request::builder()
        .method(method)
        .uri("/x")
        .header("host", "upstream.test")
        .body(body)
        .unwrap()
}

/// Read one request (head, and a `Content-Length` body) off the far end; its head.
async fn read_request(far: &mut DuplexStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = far.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the pipe closed inside a body");
                buf.extend_from_slice(&chunk[..n]);
            }
            return head;
        }
        let n = far.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the pipe closed before a request");
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn answer(far: &mut DuplexStream) {
    far.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        .await
        .unwrap();
}

async fn body(response: Response<Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// One exchange on a new connection, which then sits idle in the pool (its sender
/// ready); the far end is returned.
async fn pooled_connection(
    pool: &Arc<Pool>,
    pipes: &mut mpsc::UnboundedReceiver<DuplexStream>,
) -> DuplexStream {
    let (p, k) = (Arc::clone(pool), key());
    let first = tokio::spawn(async move { p.send(&k, request("GET"), Protocol::Auto).await });
    let mut far = pipes.recv().await.unwrap();
    read_request(&mut far).await;
    answer(&mut far).await;
    let response = first.await.unwrap().unwrap();
    assert_eq!(body(response).await, "ok");
    // Let the connection task see the end of the exchange and ask for the next request.
    assert!(
        pool.idle_ready(&key()).await,
        "the connection was not pooled"
    );
    far
}

/// Answer every request on every new pipe, counting requests by method.
fn answer_new_pipes(
    mut pipes: mpsc::UnboundedReceiver<DuplexStream>,
) -> mpsc::UnboundedReceiver<String> {
    let (seen_tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(mut far) = pipes.recv().await {
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                let head = read_request(&mut far).await;
                let _ = seen_tx.send(head);
                answer(&mut far).await;
                // Keep the pipe open until the pool lets go of it.
                let _ = far.read(&mut [0u8; 1]).await;
            });
        }
    });
    seen
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_given_back_unsent_goes_again_for_any_method() {
    let (pool, mut pipes) = pool();
    let far = pooled_connection(&pool, &mut pipes).await;
    let mut seen = answer_new_pipes(pipes);
    // The upstream closes the idle connection, and before the connection task has run
    // the next request takes it: hyper finds the connection closed before writing and
    // gives the request back. A POST goes again: nothing of it was sent.
    drop(far);
    let response = pool.send(&key(), request("POST"), Protocol::Auto).await;
    let response = response.unwrap_or_else(|e: ProxyError| panic!("{e}"));
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await, "ok");
    assert!(seen.recv().await.unwrap().starts_with("POST /x "));
    assert!(seen.try_recv().is_err(), "the upstream saw it once");
}

#[tokio::test(flavor = "current_thread")]
async fn a_written_request_goes_again_only_if_idempotent_and_bodiless() {
    for method in ["GET", "HEAD", "PUT", "DELETE", "POST", "PATCH"] {
        let (pool, mut pipes) = pool();
        let mut far = pooled_connection(&pool, &mut pipes).await;
        // The upstream reads the request, then closes without answering.
        let upstream = tokio::spawn(async move {
            let head = read_request(&mut far).await;
            drop(far);
            head
        });
        let mut seen = answer_new_pipes(pipes);
        let result = pool.send(&key(), request(method), Protocol::Auto).await;
        assert!(upstream.await.unwrap().starts_with(method));
        match method {
            "GET" | "HEAD" | "PUT" | "DELETE" => {
                let response = result.unwrap_or_else(|e| panic!("{method}: {e}"));
                assert_eq!(response.status(), StatusCode::OK, "{method}");
                assert!(seen.recv().await.unwrap().starts_with(method));
            }
            _ => {
                let err = result.expect_err(method);
                assert!(err.is_upstream(), "{method}: {err:?}");
                assert!(seen.try_recv().is_err(), "{method} was sent again");
            }
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_on_a_new_connection_is_never_sent_twice() {
    let (pool, mut pipes) = pool();
    let p = Arc::clone(&pool);
    let sent = tokio::spawn(async move { p.send(&key(), request("GET"), Protocol::Auto).await });
    let mut far = pipes.recv().await.unwrap();
    read_request(&mut far).await;
    drop(far);
    let err = sent.await.unwrap().expect_err("no answer");
    assert!(err.is_upstream(), "{err:?}");
    assert!(pipes.try_recv().is_err(), "a second connection was made");
}

#[tokio::test(flavor = "current_thread")]
async fn transfer_encoding_with_content_length_loses_the_length_and_the_connection() {
    let (pool, mut pipes) = pool();
    let p = Arc::clone(&pool);
    let sent = tokio::spawn(async move { p.send(&key(), request("GET"), Protocol::Auto).await });
    let mut far = pipes.recv().await.unwrap();
    read_request(&mut far).await;
    far.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let response = sent.await.unwrap().unwrap();
    assert!(response.headers().get("content-length").is_none());
    assert_eq!(body(response).await, "hello");
    // Not pooled: the connection closes after its body.
    let mut rest = Vec::new();
    far.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    assert!(!pool.idle_ready(&key()).await);
}

// ===== The response body idle timeout =====

mod idle {
    use std::pin::pin;
    use std::time::Duration;

    use axum::body::Body;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;
    use tokio::time::Instant;
    use tokio_stream::wrappers::ReceiverStream;

    use crate::client::idle::IdleTimeoutBody;
    use crate::error::ProxyError;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn channel_body() -> (mpsc::Sender<Result<Bytes, std::io::Error>>, Body) {
        let (tx, rx) = mpsc::channel(8);
        (tx, Body::from_stream(ReceiverStream::new(rx)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_upstream_is_cut_after_the_timeout() {
        let (tx, body) = channel_body();
        let mut body = pin!(IdleTimeoutBody::new(body, TIMEOUT));
        tx.send(Ok(Bytes::from_static(b"first"))).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "first");

        let start = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(start.elapsed(), TIMEOUT);
        let err = err.downcast::<ProxyError>().unwrap();
        assert!(err.is_timeout(), "{err:?}");
        assert!(body.frame().await.is_none(), "nothing after the cut");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_and_a_slow_reader_are_not_cut() {
        // A frame every 4 s against a 5 s timeout.
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(TIMEOUT - Duration::from_secs(1)).await;
                tx.send(Ok(Bytes::from_static(b"tick"))).await.unwrap();
            }
        });
        let collected = IdleTimeoutBody::new(body, TIMEOUT).collect().await.unwrap();
        assert_eq!(collected.to_bytes(), "tick".repeat(5));

        // Frames ready at once, read 20 s apart: the reader's pauses do not count.
        let (tx, body) = channel_body();
        for _ in 0..3 {
            tx.send(Ok(Bytes::from_static(b"x"))).await.unwrap();
        }
        drop(tx);
        let mut body = pin!(IdleTimeoutBody::new(body, TIMEOUT));
        for _ in 0..3 {
            tokio::time::sleep(4 * TIMEOUT).await;
            assert!(body.frame().await.unwrap().is_ok());
        }
        assert!(body.frame().await.is_none());
    }
}
