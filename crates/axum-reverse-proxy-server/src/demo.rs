//! The embedded demo: two upstream applications on loopback behind one balanced route,
//! run through the same configuration path as a file.

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
    let blue = spawn_upstream("blue").await?;
    let green = spawn_upstream("green").await?;
    // One pool over both upstreams, round robin: consecutive requests alternate. The
    // health check and the default outlier detection take a stopped upstream out.
    let toml = format!(
        r#"
[server]
shutdown_timeout = "5s"

[admin]
address = "127.0.0.1:0"

[listeners.demo]
address = {listen}

[pools.demo]
targets = [{blue}, {green}]
strategy = "round_robin"

[pools.demo.health_check]
path = "/health"
interval = "5s"
timeout = "1s"

[[routes]]
name = "demo"
prefix = "/"
pool = "demo"
"#,
        listen = quote(&listen.to_string()),
        blue = quote(&format!("http://{blue}")),
        green = quote(&format!("http://{green}")),
    );
    let loaded =
        config::parse("<demo>", toml, PathBuf::from("."), true).map_err(RunError::Config)?;
    server::run(loaded, None, |started: &Started| {
        let proxy = started
            .listeners
            .first()
            .map_or_else(String::new, |(_, url)| url.clone());
        println!("axum-reverse-proxy demo");
        println!("  upstream 'blue'  on http://{blue}");
        println!("  upstream 'green' on http://{green}");
        println!("  proxy            on {proxy}");
        if let Some(admin) = started.admin {
            println!("  admin            on http://{admin}");
        }
        println!();
        println!("try (round robin: the two answers come from the two upstreams):");
        println!("  curl -i {proxy}/users/42?verbose=1");
        println!("  curl -i {proxy}/users/42?verbose=1");
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
