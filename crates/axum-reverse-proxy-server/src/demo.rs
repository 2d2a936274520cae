//! The embedded demo: two upstream applications on loopback behind the proxy.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use axum_reverse_proxy::ReverseProxy;
use tokio::net::TcpListener;

/// Start the demo upstreams and return the proxy's router.
pub(crate) async fn app(listen: SocketAddr) -> Router {
    let users = spawn_upstream("users").await;
    let orders = spawn_upstream("orders").await;
    println!("axum-reverse-proxy demo");
    println!("  upstream 'users'  on http://{users}");
    println!("  upstream 'orders' on http://{orders}");
    println!("  proxy             on http://{listen}");
    println!();
    println!("try:");
    println!("  curl -i http://{listen}/users/42?verbose=1");
    println!("  curl -i http://{listen}/orders/");
    println!("  curl -i http://{listen}/_proxy/health");
    println!();
    println!("Ctrl-C to stop.");
    Router::new()
        .merge(ReverseProxy::new("/users", format!("http://{users}")))
        .merge(ReverseProxy::new("/orders", format!("http://{orders}")))
}

/// An upstream that says who it is and echoes what it received.
async fn spawn_upstream(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback port for the demo upstream");
    let addr = listener
        .local_addr()
        .expect("local address of a bound socket");
    let app = Router::new().fallback(get(move |req: Request| async move {
        let forwarded_for = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        format!(
            "hello from the '{name}' upstream\nmethod: {}\npath: {}\nx-forwarded-for: {forwarded_for}\n",
            req.method(),
            req.uri(),
        )
    }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}
