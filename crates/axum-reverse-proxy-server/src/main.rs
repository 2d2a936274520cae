//! The `axum-reverse-proxy` server binary.
//!
//! With no arguments it runs an embedded demo: two small upstream applications on
//! loopback with the proxy in front. With `--listen ADDR --upstream URL` it proxies
//! everything on `ADDR` to `URL`.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use axum_reverse_proxy::ReverseProxy;
use clap::Parser;
use tokio::net::TcpListener;

mod demo;

/// A reverse proxy built on axum and hyper.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Upstream URL to proxy every request to. Without it, the embedded demo runs.
    #[arg(long)]
    upstream: Option<String>,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let listener = match TcpListener::bind(cli.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("error: cannot listen on {}: {err}", cli.listen);
            std::process::exit(1);
        }
    };
    let local = listener.local_addr().unwrap_or(cli.listen);
    let app = match cli.upstream {
        Some(upstream) => match ReverseProxy::try_new("/", upstream) {
            Ok(proxy) => {
                println!("proxying http://{local} -> {}", proxy.target());
                Router::from(proxy)
            }
            Err(err) => {
                eprintln!("error: {err}");
                std::process::exit(2);
            }
        },
        None => demo::app(local).await,
    };
    let app = app.route("/_proxy/health", get(|| async { "ok\n" }));
    let serve = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    if let Err(err) = serve.await {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
}
