//! WebSocket echo load: CONNS connections, each sending a SIZE-byte binary message and
//! waiting for its echo before the next, for SECONDS. Prints `messages N errors E`
//! (messages echoed, connections that failed).
//!
//! `bench-ws ws://ADDR/PATH CONNS SECONDS [SIZE]` (SIZE defaults to 32).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().expect("URL");
    let conns: usize = args
        .next()
        .expect("CONNS")
        .parse()
        .expect("CONNS is a number");
    let seconds: u64 = args
        .next()
        .expect("SECONDS")
        .parse()
        .expect("SECONDS is a number");
    let size: usize = args
        .next()
        .map_or(32, |s| s.parse().expect("SIZE is a number"));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let sessions: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(session(url.clone(), size, deadline)))
        .collect();
    let (mut messages, mut errors) = (0u64, 0u64);
    for session in sessions {
        match session.await {
            Ok(Ok(n)) => messages += n,
            Ok(Err((n, err))) => {
                messages += n;
                errors += 1;
                eprintln!("{err}");
            }
            Err(err) => {
                errors += 1;
                eprintln!("{err}");
            }
        }
    }
    println!("messages {messages} errors {errors}");
}

/// One connection's echoes until `deadline`; the count, with the error that ended it early.
async fn session(url: String, size: usize, deadline: Instant) -> Result<u64, (u64, String)> {
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let tcp = TcpStream::connect(&addr)
        .await
        .map_err(|e| (0, format!("connect: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
        .await
        .map_err(|e| (0, format!("handshake: {e}")))?;
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let mut echoed = 0;
    while Instant::now() < deadline {
        ws.send(Message::Binary(payload.clone()))
            .await
            .map_err(|e| (echoed, format!("send: {e}")))?;
        match ws.next().await {
            Some(Ok(Message::Binary(echo))) if echo.len() == size => echoed += 1,
            Some(Ok(other)) => return Err((echoed, format!("unexpected message: {other:?}"))),
            Some(Err(e)) => return Err((echoed, format!("receive: {e}"))),
            None => return Err((echoed, "closed by the peer".into())),
        }
    }
    let _ = ws.close(None).await;
    Ok(echoed)
}
