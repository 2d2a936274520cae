//! DNS-discovered pools through the real binary: a tiny DNS server on 127.0.0.1
//! (hickory-server, in-memory zone `test.`) names two upstreams, on 127.0.0.1 and
//! 127.0.0.2 with the same port, which see the DNS name as `Host`; the zone is then
//! changed and the pool follows. SRV records give weights and a name per target.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::HeaderMap;
use common::{PATIENCE, Proxy, TempDir, client};
use hickory_server::ServerFuture;
use hickory_server::authority::{AuthorityObject, Catalog, ZoneType};
use hickory_server::proto::rr::rdata::{A, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryAuthority;
use serde_json::Value;

/// The zone `test.` with `api.test.` A records for `ips` (TTL 1 s).
fn catalog(ips: &[[u8; 4]]) -> Catalog {
    let records: Vec<(&str, RData)> = ips
        .iter()
        .map(|ip| ("api.test.", RData::A(A(Ipv4Addr::from(*ip)))))
        .collect();
    catalog_of(&records)
}

/// The zone `test.` with `records` (owner name, data; TTL 1 s).
fn catalog_of(records: &[(&str, RData)]) -> Catalog {
    let origin = Name::from_ascii("test.").unwrap();
    let mut zone = InMemoryAuthority::empty(origin.clone(), ZoneType::Primary, false);
    let soa = SOA::new(
        Name::from_ascii("ns.test.").unwrap(),
        Name::from_ascii("admin.test.").unwrap(),
        1,
        60,
        60,
        60,
        1,
    );
    assert!(zone.upsert_mut(Record::from_rdata(origin.clone(), 1, RData::SOA(soa)), 1));
    for (name, data) in records {
        let record = Record::from_rdata(Name::from_ascii(name).unwrap(), 1, data.clone());
        assert!(zone.upsert_mut(record, 1));
    }
    let mut catalog = Catalog::new();
    let zone: Arc<dyn AuthorityObject> = Arc::new(zone);
    catalog.upsert(LowerName::new(&origin), vec![zone]);
    catalog
}

#[derive(Clone)]
struct Handler(Arc<RwLock<Arc<Catalog>>>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        let catalog = Arc::clone(&self.0.read().unwrap());
        catalog.handle_request(request, response).await
    }
}

async fn dns_server(catalog: Catalog) -> (SocketAddr, Arc<RwLock<Arc<Catalog>>>) {
    let zone = Arc::new(RwLock::new(Arc::new(catalog)));
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let mut server = ServerFuture::new(Handler(zone.clone()));
    server.register_socket(socket);
    tokio::spawn(async move { server.block_until_done().await });
    (addr, zone)
}

/// An upstream on `ip:port` answering `{"upstream": NAME, "host": HOST}`.
async fn upstream(addr: SocketAddr, name: &'static str) -> SocketAddr {
    upstream_on(tokio::net::TcpListener::bind(addr).await.unwrap(), name)
}

fn upstream_on(listener: tokio::net::TcpListener, name: &'static str) -> SocketAddr {
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(move |headers: HeaderMap| async move {
        let host = headers.get("host").and_then(|h| h.to_str().ok());
        serde_json::json!({ "upstream": name, "host": host }).to_string()
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

async fn upstreams(admin: &str) -> Value {
    client()
        .get(format!("{admin}/upstreams"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Wait until pool `api` lists exactly `urls` (discovery runs in the background).
async fn wait_for_endpoints(admin: &str, mut urls: Vec<String>) {
    urls.sort();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let u = upstreams(admin).await;
        let mut now: Vec<String> = u["pools"]["api"]["endpoints"]
            .as_array()
            .map(|eps| {
                eps.iter()
                    .filter_map(|e| e["url"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        now.sort();
        if now == urls {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pool never became {urls:?}; last: {u}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_pool_follows_the_zone() {
    let one = upstream("127.0.0.1:0".parse().unwrap(), "one").await;
    let port = one.port();
    let two = upstream(SocketAddr::from(([127, 0, 0, 2], port)), "two").await;
    let (dns, zone) = dns_server(catalog(&[[127, 0, 0, 1], [127, 0, 0, 2]])).await;

    let toml = format!(
        r#"
[admin]
address = "127.0.0.1:0"

[access_log]
output = "off"

[listeners.web]
address = "127.0.0.1:0"

[pools.api]
strategy = "round_robin"

[pools.api.discovery.dns]
name = "api.test"
port = {port}
record = "a"
refresh = "1s"
servers = ["{dns}"]

[[routes]]
prefix = "/"
pool = "api"
"#
    );
    let dir = TempDir::new("dns");
    let path = dir.write("proxy.toml", &toml);
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");
    let admin = proxy.admin_url();

    wait_for_endpoints(
        &admin,
        vec![format!("http://{one}"), format!("http://{two}")],
    )
    .await;
    let u = upstreams(&admin).await;
    assert_eq!(u["pools"]["api"]["kind"], "dns", "{u}");
    for endpoint in u["pools"]["api"]["endpoints"].as_array().unwrap() {
        assert_eq!(endpoint["host"], "api.test", "{u}");
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let body: Value = client()
            .get(format!("{front}/x"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen.insert(body["upstream"].as_str().unwrap().to_owned());
        // Connections go to each address; `Host` is the name that was looked up.
        assert_eq!(body["host"], format!("api.test:{port}"), "{body}");
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // The name loses one address: the pool follows at the next lookup (TTL 1 s).
    *zone.write().unwrap() = Arc::new(catalog(&[[127, 0, 0, 2]]));
    wait_for_endpoints(&admin, vec![format!("http://{two}")]).await;
    for _ in 0..4 {
        let body: Value = client()
            .get(format!("{front}/x"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["upstream"], "two");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_pool_uses_weights_and_target_names() {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    // Endpoints are listed in address order: name the upstreams in port order.
    listeners.sort_by_key(|l| l.local_addr().unwrap().port());
    let names = ["a", "b", "c"];
    let ports: Vec<u16> = listeners
        .into_iter()
        .zip(names)
        .map(|(listener, name)| upstream_on(listener, name).port())
        .collect();
    let srv = |weight, port, target: &str| {
        RData::SRV(SRV::new(
            10,
            weight,
            port,
            Name::from_ascii(target).unwrap(),
        ))
    };
    let owner = "_http._tcp.api.test.";
    let local = RData::A(A(Ipv4Addr::LOCALHOST));
    let (dns, _zone) = dns_server(catalog_of(&[
        (owner, srv(5, ports[0], "a.api.test.")),
        (owner, srv(1, ports[1], "b.api.test.")),
        (owner, srv(1, ports[2], "c.api.test.")),
        ("a.api.test.", local.clone()),
        ("b.api.test.", local.clone()),
        ("c.api.test.", local),
    ]))
    .await;

    let toml = format!(
        r#"
[admin]
address = "127.0.0.1:0"

[access_log]
output = "off"

[listeners.web]
address = "127.0.0.1:0"

[pools.api]
strategy = "weighted_round_robin"

[pools.api.discovery.dns]
name = "_http._tcp.api.test"
record = "srv"
servers = ["{dns}"]

[[routes]]
prefix = "/"
pool = "api"
"#
    );
    let dir = TempDir::new("srv");
    let path = dir.write("proxy.toml", &toml);
    let proxy = Proxy::with_config(&path);
    let front = proxy.listener_url("web");
    let admin = proxy.admin_url();
    wait_for_endpoints(
        &admin,
        ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect(),
    )
    .await;
    let u = upstreams(&admin).await;
    let weights: Vec<&Value> = u["pools"]["api"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["weight"])
        .collect();
    assert_eq!(weights, [5, 1, 1], "{u}");

    let mut order = String::new();
    for _ in 0..7 {
        let body: Value = client()
            .get(format!("{front}/x"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let name = body["upstream"].as_str().unwrap();
        let port = ports[names.iter().position(|n| *n == name).unwrap()];
        assert_eq!(body["host"], format!("{name}.api.test:{port}"), "{body}");
        order += name;
    }
    assert_eq!(order, "aabacaa");
}
