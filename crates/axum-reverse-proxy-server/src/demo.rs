//! The embedded demo: two upstream applications on loopback behind the proxy, run
//! through the same configuration path as a file.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::config::{self, quote};
use crate::server::{self, RunError, Started};

/// Start the demo upstreams and serve the proxy in front of them on `listen`.
pub(crate) async fn run(listen: SocketAddr) -> Result<(), RunError> {
    let users = spawn_upstream("users").await?;
    let orders = spawn_upstream("orders").await?;
    // Until the balancer lands, each upstream gets its own route.
    let toml = format!(
        r#"
[server]
shutdown_timeout = "5s"

[admin]
address = "127.0.0.1:0"

[listeners.demo]
address = {listen}

[pools.users]
targets = [{users}]

[pools.orders]
targets = [{orders}]

[[routes]]
name = "users"
prefix = "/users"
strip_prefix = true
pool = "users"

[[routes]]
name = "orders"
prefix = "/orders"
strip_prefix = true
pool = "orders"
"#,
        listen = quote(&listen.to_string()),
        users = quote(&format!("http://{users}")),
        orders = quote(&format!("http://{orders}")),
    );
    let loaded =
        config::parse("<demo>", toml, PathBuf::from("."), true).map_err(RunError::Config)?;
    server::run(loaded, None, |started: &Started| {
        let proxy = started
            .listeners
            .first()
            .map_or_else(String::new, |(_, url)| url.clone());
        println!("axum-reverse-proxy demo");
        println!("  upstream 'users'  on http://{users}");
        println!("  upstream 'orders' on http://{orders}");
        println!("  proxy             on {proxy}");
        if let Some(admin) = started.admin {
            println!("  admin             on http://{admin}");
        }
        println!();
        println!("try:");
        println!("  curl -i {proxy}/users/42?verbose=1");
        println!("  curl -i {proxy}/orders/");
        if let Some(admin) = started.admin {
            println!("  curl http://{admin}/metrics");
            println!("  curl http://{admin}/upstreams");
        }
        println!();
        println!("Ctrl-C to stop.");
    })
    .await
}

/// An upstream that says who it is and echoes what it received.
async fn spawn_upstream(name: &'static str) -> Result<SocketAddr, RunError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| RunError::Runtime(format!("cannot bind the demo upstream: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| RunError::Runtime(format!("cannot bind the demo upstream: {e}")))?;
    let app = Router::new().fallback(get(move |req: Request| async move {
        let header = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        format!(
            "hello from the '{name}' upstream\nmethod: {}\npath: {}\nx-forwarded-for: {}\nx-request-id: {}\n",
            req.method(),
            req.uri(),
            header("x-forwarded-for"),
            header("x-request-id"),
        )
    }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}
