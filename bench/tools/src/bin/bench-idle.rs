//! Opens N keep-alive client connections, sends one small request on each, then holds
//! them all idle until stdin closes (or a line is read). Prints `idle N` when ready.
//!
//! `bench-idle ADDR N [PATH]`

use std::io::BufRead;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().expect("ADDR");
    let n: usize = args.next().expect("N").parse().expect("N is a number");
    let path = args.next().unwrap_or_else(|| "/small".into());
    let request = format!("GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n");
    let mut held = Vec::with_capacity(n);
    let mut buf = vec![0u8; 4096];
    for _ in 0..n {
        let mut socket = TcpStream::connect(&addr).await.expect("connect");
        socket.write_all(request.as_bytes()).await.expect("write");
        // One read is enough for a small response on loopback.
        let read = socket.read(&mut buf).await.expect("read");
        assert!(read > 0, "connection closed");
        held.push(socket);
    }
    println!("idle {}", held.len());
    let _ = std::io::stdin().lock().read_line(&mut String::new());
    drop(held);
}
