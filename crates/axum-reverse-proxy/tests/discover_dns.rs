//! DNS discovery against a real DNS server on 127.0.0.1: hickory-server answering from an
//! in-memory zone that the tests swap between lookups, counting the queries it receives.
#![cfg(feature = "dns")]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum_reverse_proxy::discover::{DnsEndpointDiscovery, DnsRecordTypes};
use axum_reverse_proxy::{DnsDiscovery, DnsDiscoveryConfig, StaticDnsDiscovery};
use futures_util::{Stream, StreamExt};
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::proto::xfer::Protocol;
use hickory_server::ServerFuture;
use hickory_server::authority::{AuthorityObject, Catalog, ZoneType};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryAuthority;
use tower::discover::Change;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ===== test DNS server =====

/// One record of the zone `test.`: owner name, TTL, data.
type Rec = (&'static str, u32, RData);

fn a(ip: [u8; 4]) -> RData {
    RData::A(A(Ipv4Addr::from(ip)))
}

fn aaaa(ip: &str) -> RData {
    RData::AAAA(AAAA(ip.parse::<Ipv6Addr>().unwrap()))
}

fn srv(priority: u16, weight: u16, port: u16, target: &str) -> RData {
    RData::SRV(SRV::new(
        priority,
        weight,
        port,
        Name::from_ascii(target).unwrap(),
    ))
}

fn catalog(records: &[Rec]) -> Catalog {
    let origin = Name::from_ascii("test.").unwrap();
    let mut zone = InMemoryAuthority::empty(origin.clone(), ZoneType::Primary, false);
    let soa = SOA::new(
        Name::from_ascii("ns.test.").unwrap(),
        Name::from_ascii("admin.test.").unwrap(),
        1,
        60,
        60,
        60,
        // Negative answers are cached for 1 s.
        1,
    );
    assert!(zone.upsert_mut(Record::from_rdata(origin.clone(), 1, RData::SOA(soa)), 1));
    for (name, ttl, data) in records {
        let record = Record::from_rdata(Name::from_ascii(name).unwrap(), *ttl, data.clone());
        assert!(zone.upsert_mut(record, 1));
    }
    let mut catalog = Catalog::new();
    let zone: Arc<dyn AuthorityObject> = Arc::new(zone);
    catalog.upsert(LowerName::new(&origin), vec![zone]);
    catalog
}

struct Shared {
    catalog: RwLock<Arc<Catalog>>,
    queries: AtomicUsize,
}

#[derive(Clone)]
struct Handler(Arc<Shared>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        self.0.queries.fetch_add(1, Ordering::SeqCst);
        let catalog = Arc::clone(&self.0.catalog.read().unwrap());
        catalog.handle_request(request, response).await
    }
}

struct TestDns {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl TestDns {
    async fn start(records: &[Rec]) -> Self {
        let shared = Arc::new(Shared {
            catalog: RwLock::new(Arc::new(catalog(records))),
            queries: AtomicUsize::new(0),
        });
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut server = ServerFuture::new(Handler(Arc::clone(&shared)));
        server.register_socket(socket);
        tokio::spawn(async move { server.block_until_done().await });
        Self { addr, shared }
    }

    fn set(&self, records: &[Rec]) {
        *self.shared.catalog.write().unwrap() = Arc::new(catalog(records));
    }

    fn queries(&self) -> usize {
        self.shared.queries.load(Ordering::SeqCst)
    }

    fn resolver_config(&self) -> ResolverConfig {
        let server = NameServerConfig::new(self.addr, Protocol::Udp);
        ResolverConfig::from_parts(None, vec![], vec![server])
    }

    fn resolver_opts(&self) -> ResolverOpts {
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 1;
        opts
    }

    /// A config for `name` on port 8080 that asks only this server.
    fn config(&self, name: &str) -> DnsDiscoveryConfig {
        DnsDiscoveryConfig::new(name, 8080)
            .with_resolver_config(self.resolver_config())
            .with_resolver_opts(self.resolver_opts())
    }
}

// ===== helpers =====

async fn next<S, K, V>(stream: &mut S) -> Result<Change<K, V>, BoxError>
where
    S: Stream<Item = Result<Change<K, V>, BoxError>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("no discovery item within 10 s")
        .expect("the discovery stream ended")
}

fn insert(ip: &str, url: &str) -> (IpAddr, String) {
    (ip.parse().unwrap(), url.to_owned())
}

/// The next `n` items, all of which must be Inserts.
async fn inserts<S>(stream: &mut S, n: usize) -> Vec<(IpAddr, String)>
where
    S: Stream<Item = Result<Change<IpAddr, String>, BoxError>> + Unpin,
{
    let mut out = Vec::new();
    for _ in 0..n {
        match next(stream).await {
            Ok(Change::Insert(ip, url)) => out.push((ip, url)),
            Ok(Change::Remove(ip)) => panic!("unexpected Remove({ip})"),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    out
}

fn describe(item: &Result<Change<IpAddr, String>, BoxError>) -> String {
    match item {
        Ok(Change::Insert(ip, url)) => format!("Insert({ip}, {url})"),
        Ok(Change::Remove(ip)) => format!("Remove({ip})"),
        Err(e) => format!("Err({e})"),
    }
}

/// Waits (bounded) until `cond` holds, checking every 20 ms.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ===== tests =====

#[tokio::test]
async fn a_records_become_inserts_and_the_first_lookup_happens_once() {
    let dns = TestDns::start(&[
        ("web.test.", 300, a([10, 0, 0, 2])),
        ("web.test.", 300, a([10, 0, 0, 1])),
    ])
    .await;
    // resolver_config alone is honoured (1.3 ignored it without resolver_opts).
    let config = DnsDiscoveryConfig::new("web.test.", 8080)
        .with_resolver_config(dns.resolver_config())
        .with_refresh_interval(Duration::from_secs(3600));
    let mut discovery = DnsDiscovery::new(config).unwrap();
    assert_eq!(
        inserts(&mut discovery, 2).await,
        [
            insert("10.0.0.1", "http://10.0.0.1:8080"),
            insert("10.0.0.2", "http://10.0.0.2:8080"),
        ]
    );
    // Waiting for something that must not happen: a second lookup.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dns.queries(), 1, "the first lookup must happen once");
    assert!(
        tokio::time::timeout(Duration::from_millis(100), discovery.next())
            .await
            .is_err(),
        "nothing changed, nothing must be emitted"
    );
}

#[tokio::test]
async fn https_scheme_and_explicit_a_records() {
    let dns = TestDns::start(&[("web.test.", 300, a([10, 0, 0, 9]))]).await;
    let mut discovery = DnsDiscovery::new(
        dns.config("web.test.")
            .with_https(true)
            .with_record_types(DnsRecordTypes::A),
    )
    .unwrap();
    assert_eq!(
        inserts(&mut discovery, 1).await,
        [insert("10.0.0.9", "https://10.0.0.9:8080")]
    );
}

#[tokio::test]
async fn aaaa_records_give_bracketed_urls() {
    let dns = TestDns::start(&[
        ("v6.test.", 300, aaaa("2001:db8::5")),
        ("v6.test.", 300, aaaa("::1")),
    ])
    .await;
    let mut discovery = DnsDiscovery::new(
        dns.config("v6.test.")
            .with_record_types(DnsRecordTypes::Aaaa),
    )
    .unwrap();
    let got = inserts(&mut discovery, 2).await;
    assert_eq!(
        got,
        [
            insert("::1", "http://[::1]:8080"),
            insert("2001:db8::5", "http://[2001:db8::5]:8080"),
        ]
    );
    for (_, url) in got {
        let uri: http::Uri = url.parse().expect("a valid URI");
        assert!(uri.host().is_some_and(|h| h.starts_with('[')), "{url}");
    }
}

#[tokio::test]
async fn both_families_or_the_resolver_default() {
    let records = [
        ("dual.test.", 300, a([10, 0, 0, 4])),
        ("dual.test.", 300, aaaa("2001:db8::4")),
        ("only4.test.", 300, a([10, 0, 0, 5])),
    ];
    let dns = TestDns::start(&records).await;
    let mut both = DnsDiscovery::new(
        dns.config("dual.test.")
            .with_record_types(DnsRecordTypes::Both),
    )
    .unwrap();
    assert_eq!(
        inserts(&mut both, 2).await,
        [
            insert("10.0.0.4", "http://10.0.0.4:8080"),
            insert("2001:db8::4", "http://[2001:db8::4]:8080"),
        ]
    );
    // A name with A records only is fine when both families are asked for.
    let mut only4 = DnsDiscovery::new(
        dns.config("only4.test.")
            .with_record_types(DnsRecordTypes::Both),
    )
    .unwrap();
    assert_eq!(
        inserts(&mut only4, 1).await,
        [insert("10.0.0.5", "http://10.0.0.5:8080")]
    );
    // 1.3's default: hickory's Ipv4thenIpv6 strategy, so only the A record.
    let mut default = DnsDiscovery::new(dns.config("dual.test.")).unwrap();
    assert_eq!(
        inserts(&mut default, 1).await,
        [insert("10.0.0.4", "http://10.0.0.4:8080")]
    );
}

#[tokio::test]
async fn srv_records_use_targets_ports_weights_and_the_best_priority() {
    let records = [
        ("_http._tcp.svc.test.", 300, srv(10, 5, 8001, "a.svc.test.")),
        ("_http._tcp.svc.test.", 300, srv(10, 1, 8002, "b.svc.test.")),
        (
            "_http._tcp.svc.test.",
            300,
            srv(20, 1, 9000, "backup.svc.test."),
        ),
        ("a.svc.test.", 300, a([10, 0, 1, 1])),
        ("b.svc.test.", 300, a([10, 0, 1, 2])),
        ("backup.svc.test.", 300, a([10, 0, 1, 3])),
    ];
    let dns = TestDns::start(&records).await;
    let settings = dns.config("_http._tcp.svc.test.").with_srv(true);
    let mut endpoints = DnsEndpointDiscovery::new(settings.clone()).unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        match next(&mut endpoints).await.unwrap() {
            Change::Insert(addr, endpoint) => got.push((addr, endpoint)),
            Change::Remove(addr) => panic!("unexpected Remove({addr})"),
        }
    }
    let (addr, first) = &got[0];
    assert_eq!(*addr, "10.0.1.1:8001".parse::<SocketAddr>().unwrap());
    assert_eq!(first.url(), "http://10.0.1.1:8001");
    assert_eq!(first.hostname(), "a.svc.test");
    assert_eq!((first.weight(), first.priority()), (5, 10));
    let (addr, second) = &got[1];
    assert_eq!(*addr, "10.0.1.2:8002".parse::<SocketAddr>().unwrap());
    assert_eq!(second.weight(), 1);
    assert_eq!(String::from(second.clone()), "http://10.0.1.2:8002");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), endpoints.next())
            .await
            .is_err(),
        "the priority-20 backup must not be used while priority 10 resolves"
    );

    // The 1.3-shaped stream of the same settings: keyed by IP, the SRV port in the URL.
    let mut by_ip = DnsDiscovery::new(settings).unwrap();
    assert_eq!(
        inserts(&mut by_ip, 2).await,
        [
            insert("10.0.1.1", "http://10.0.1.1:8001"),
            insert("10.0.1.2", "http://10.0.1.2:8002"),
        ]
    );
}

#[tokio::test]
async fn srv_falls_back_to_the_next_priority() {
    let records = [
        (
            "_http._tcp.svc.test.",
            300,
            srv(10, 1, 8001, "gone.svc.test."),
        ),
        (
            "_http._tcp.svc.test.",
            300,
            srv(20, 1, 9000, "backup.svc.test."),
        ),
        ("backup.svc.test.", 300, a([10, 0, 1, 3])),
    ];
    let dns = TestDns::start(&records).await;
    let mut discovery =
        DnsDiscovery::new(dns.config("_http._tcp.svc.test.").with_srv(true)).unwrap();
    assert_eq!(
        inserts(&mut discovery, 1).await,
        [insert("10.0.1.3", "http://10.0.1.3:9000")]
    );
}

#[tokio::test]
async fn a_short_ttl_drives_the_next_lookup_and_changes_are_removes_then_inserts() {
    let dns = TestDns::start(&[
        ("web.test.", 1, a([10, 0, 0, 1])),
        ("web.test.", 1, a([10, 0, 0, 2])),
    ])
    .await;
    // An hour between refreshes: only the 1 s TTL can bring the next lookup forward.
    let config = dns
        .config("web.test.")
        .with_refresh_interval(Duration::from_secs(3600))
        .with_min_refresh(Duration::from_millis(50));
    let mut discovery = DnsDiscovery::new(config).unwrap();
    inserts(&mut discovery, 2).await;
    let mut late = discovery.clone();

    dns.set(&[
        ("web.test.", 1, a([10, 0, 0, 2])),
        ("web.test.", 1, a([10, 0, 0, 3])),
    ]);
    let started = tokio::time::Instant::now();
    let first = next(&mut discovery).await;
    assert!(
        matches!(&first, Ok(Change::Remove(ip)) if *ip == IpAddr::from([10, 0, 0, 1])),
        "got {}",
        describe(&first)
    );
    assert_eq!(
        inserts(&mut discovery, 1).await,
        [insert("10.0.0.3", "http://10.0.0.3:8080")]
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // The clone made before the change is its own subscriber: it replays the set it sees.
    let mut replayed = inserts(&mut late, 2).await;
    replayed.sort();
    assert_eq!(
        replayed,
        [
            insert("10.0.0.2", "http://10.0.0.2:8080"),
            insert("10.0.0.3", "http://10.0.0.3:8080"),
        ]
    );
}

#[tokio::test]
async fn without_ttl_the_refresh_interval_bypasses_the_cache() {
    let dns = TestDns::start(&[("web.test.", 300, a([10, 0, 0, 1]))]).await;
    let config = dns
        .config("web.test.")
        .with_refresh_interval(Duration::from_millis(200))
        .with_min_refresh(Duration::from_millis(50))
        .with_respect_ttl(false);
    let mut discovery = DnsDiscovery::new(config).unwrap();
    inserts(&mut discovery, 1).await;
    dns.set(&[("web.test.", 300, a([10, 0, 0, 7]))]);
    let first = next(&mut discovery).await;
    assert!(
        matches!(first, Ok(Change::Remove(_))),
        "got {}",
        describe(&first)
    );
    assert_eq!(
        inserts(&mut discovery, 1).await,
        [insert("10.0.0.7", "http://10.0.0.7:8080")]
    );
}

#[tokio::test]
async fn nxdomain_is_an_error_item_and_the_previous_set_is_kept() {
    let dns = TestDns::start(&[("web.test.", 1, a([10, 0, 0, 1]))]).await;
    let config = dns
        .config("web.test.")
        .with_refresh_interval(Duration::from_secs(3600))
        .with_min_refresh(Duration::from_millis(50));
    let mut discovery = DnsDiscovery::new(config).unwrap();
    inserts(&mut discovery, 1).await;

    dns.set(&[("other.test.", 1, a([10, 0, 0, 9]))]);
    let failed = next(&mut discovery).await;
    let Err(error) = failed else {
        panic!("expected an error, got {}", describe(&failed))
    };
    assert!(error.to_string().contains("web.test"), "{error}");

    // A clone made while the lookups fail gets the kept set, then the failure.
    let mut clone = discovery.clone();
    assert_eq!(
        inserts(&mut clone, 1).await,
        [insert("10.0.0.1", "http://10.0.0.1:8080")]
    );
    assert!(next(&mut clone).await.is_err());

    // Back with a different set: the kept endpoint is removed only now. Failed rounds
    // while the negative answer is cached may still yield errors, never a Remove.
    dns.set(&[("web.test.", 1, a([10, 0, 0, 2]))]);
    let mut item = next(&mut discovery).await;
    while item.is_err() {
        item = next(&mut discovery).await;
    }
    assert!(
        matches!(&item, Ok(Change::Remove(ip)) if *ip == IpAddr::from([10, 0, 0, 1])),
        "got {}",
        describe(&item)
    );
    assert_eq!(
        inserts(&mut discovery, 1).await,
        [insert("10.0.0.2", "http://10.0.0.2:8080")]
    );
}

#[tokio::test]
async fn errors_back_off_instead_of_spinning() {
    let dns = TestDns::start(&[]).await;
    // No negative cache: every round is a query.
    let mut uncached = dns.resolver_opts();
    uncached.cache_size = 0;
    let config = dns
        .config("missing.test.")
        .with_resolver_opts(uncached)
        .with_record_types(DnsRecordTypes::A)
        .with_refresh_interval(Duration::from_secs(3600))
        .with_min_refresh(Duration::from_millis(100));
    let mut discovery = DnsDiscovery::new(config).unwrap();
    assert!(next(&mut discovery).await.is_err());
    // One query per round, rounds at 0, 0.1, 0.3 and 0.7 s (backoff 100, 200, 400, 800 ms):
    // 4 queries in 1.2 s (12 without the doubling).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let queries = dns.queries();
    assert!((2..=4).contains(&queries), "{queries} queries in 1.2 s");
}

#[tokio::test]
async fn dropping_every_clone_stops_the_task() {
    let dns = TestDns::start(&[("web.test.", 1, a([10, 0, 0, 1]))]).await;
    let config = dns
        .config("web.test.")
        .with_refresh_interval(Duration::from_millis(100))
        .with_min_refresh(Duration::from_millis(50))
        .with_respect_ttl(false);
    let mut discovery = DnsDiscovery::new(config).unwrap();
    inserts(&mut discovery, 1).await;
    let clone = discovery.clone();
    let endpoints = discovery.endpoints();
    drop(discovery);
    // The clones keep it alive: queries go on.
    let seen = dns.queries();
    eventually("lookups go on while a clone lives", || {
        dns.queries() >= seen + 3
    })
    .await;
    drop(clone);
    eventually("lookups go on while an endpoint stream lives", || {
        dns.queries() >= seen + 5
    })
    .await;
    drop(endpoints);
    // One lookup may already be in flight.
    let at_drop = dns.queries() + 1;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        dns.queries() <= at_drop,
        "{} queries after the last handle was dropped",
        dns.queries() - at_drop + 1
    );
}

#[tokio::test]
async fn static_dns_discovery_looks_up_once_for_all_clones_then_ends() {
    let dns = TestDns::start(&[
        ("web.test.", 300, a([10, 0, 0, 1])),
        ("web.test.", 300, aaaa("2001:db8::1")),
    ])
    .await;
    let discovery = StaticDnsDiscovery::new(
        dns.config("web.test.")
            .with_record_types(DnsRecordTypes::Both),
    )
    .unwrap();
    let mut first = discovery.clone();
    let mut second = discovery;
    let expected = [
        insert("10.0.0.1", "http://10.0.0.1:8080"),
        insert("2001:db8::1", "http://[2001:db8::1]:8080"),
    ];
    assert_eq!(inserts(&mut first, 2).await, expected);
    assert!(first.next().await.is_none(), "the stream ends");
    // A clone of a finished stream replays from the start.
    let mut replay = first.clone();
    assert_eq!(inserts(&mut replay, 2).await, expected);
    assert!(replay.next().await.is_none());
    assert_eq!(inserts(&mut second, 2).await, expected);
    assert!(second.next().await.is_none());
    // One A and one AAAA query, shared by both clones.
    assert_eq!(dns.queries(), 2);

    fn send_static<T: Send + Sync + 'static>(_: &T) {}
    send_static(&first);
}

#[tokio::test]
async fn static_dns_discovery_failure_is_one_error_then_the_end() {
    let dns = TestDns::start(&[]).await;
    let mut discovery = StaticDnsDiscovery::new(dns.config("missing.test.")).unwrap();
    let item = next(&mut discovery).await;
    assert!(item.is_err(), "got {}", describe(&item));
    assert!(discovery.next().await.is_none());
}

#[test]
fn dns_discovery_outside_a_runtime_is_an_error_not_a_panic() {
    let config = DnsDiscoveryConfig::new("web.test.", 80)
        .with_resolver_config(ResolverConfig::from_parts(None, vec![], vec![]));
    let error = DnsDiscovery::new(config).expect_err("an error");
    assert!(error.to_string().contains("Tokio runtime"), "{error}");
}

#[test]
fn the_1_3_config_is_unchanged() {
    // A struct literal with exactly 1.3's fields still compiles.
    let config = DnsDiscoveryConfig {
        hostname: "web.test".to_owned(),
        port: 80,
        refresh_interval: Duration::from_secs(30),
        use_https: false,
        resolver_config: None,
        resolver_opts: None,
    };
    let defaults = DnsDiscoveryConfig::new("web.test", 80);
    assert_eq!(defaults.refresh_interval, config.refresh_interval);
    assert!(!defaults.use_https);
}

#[test]
fn static_dns_discovery_is_built_outside_a_runtime_and_polled_inside() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dns = runtime.block_on(TestDns::start(&[("web.test.", 300, a([10, 0, 0, 1]))]));
    let mut discovery = StaticDnsDiscovery::new(dns.config("web.test.")).unwrap();
    let got = runtime.block_on(inserts(&mut discovery, 1));
    assert_eq!(got, [insert("10.0.0.1", "http://10.0.0.1:8080")]);
}

// ===== through the proxy: Host and TLS name, weights =====

mod proxied {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::extract::Request as AxumRequest;
    use axum_reverse_proxy::discover::DnsEndpointDiscovery;
    use axum_reverse_proxy::{
        DiscoverableBalancedProxy, DnsDiscovery, DnsDiscoveryConfig, EndpointStats, HostBehaviour,
        LoadBalancingStrategy, ProxyPolicy,
    };
    use futures_util::StreamExt;
    use http::{Request, Response, StatusCode};
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    use tokio::net::TcpListener;
    use tower::ServiceExt;
    use tower::discover::Change;

    use super::{Rec, TestDns, a, srv};

    /// What an upstream saw: its name, and the `Host` of each request.
    type Hosts = Arc<Mutex<Vec<(&'static str, String)>>>;

    /// A plain-HTTP upstream on `bind` that answers its name and records the `Host`.
    async fn upstream(bind: SocketAddr, name: &'static str, seen: &Hosts) -> SocketAddr {
        upstream_on(TcpListener::bind(bind).await.unwrap(), name, seen)
    }

    fn upstream_on(listener: TcpListener, name: &'static str, seen: &Hosts) -> SocketAddr {
        let seen = Arc::clone(seen);
        let app = Router::new().fallback(move |req: AxumRequest| {
            let seen = Arc::clone(&seen);
            async move {
                let host = req
                    .headers()
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                seen.lock().unwrap().push((name, host));
                name
            }
        });
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    fn config(dns: &TestDns, name: &str, port: u16) -> DnsDiscoveryConfig {
        DnsDiscoveryConfig::new(name, port)
            .with_resolver_config(dns.resolver_config())
            .with_resolver_opts(dns.resolver_opts())
    }

    async fn hit<S>(proxy: &S, host: Option<&str>) -> (StatusCode, String)
    where
        S: tower::Service<
                Request<Body>,
                Response = Response<Body>,
                Error = std::convert::Infallible,
            > + Clone,
    {
        let mut req = Request::builder().uri("/x");
        if let Some(host) = host {
            req = req.header("host", host);
        }
        let response = proxy
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    /// Wait, by yielding (never sleeping), until `endpoints` gives `n` endpoints.
    async fn wait_for(endpoints: impl Fn() -> Vec<EndpointStats>, n: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while endpoints().len() != n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("never {n} endpoints: {:?}", endpoints()));
    }

    #[tokio::test]
    async fn host_is_the_dns_name_and_connections_go_to_each_address() {
        let seen = Hosts::default();
        let one = upstream("127.0.0.1:0".parse().unwrap(), "one", &seen).await;
        let port = one.port();
        upstream(SocketAddr::from(([127, 0, 0, 2], port)), "two", &seen).await;
        let dns = TestDns::start(&[
            ("backend.test.", 300, a([127, 0, 0, 1])),
            ("backend.test.", 300, a([127, 0, 0, 2])),
        ])
        .await;
        let discovery = DnsDiscovery::new(config(&dns, "backend.test.", port)).unwrap();
        let proxy = DiscoverableBalancedProxy::new("/", discovery.endpoints());
        proxy.start_discovery().await;
        wait_for(|| proxy.endpoints(), 2).await;
        let stats = proxy.endpoints();
        assert_eq!(stats[0].url, format!("http://127.0.0.1:{port}"));
        assert_eq!(stats[0].host.as_deref(), Some("backend.test"));
        assert_eq!(stats[1].url, format!("http://127.0.0.2:{port}"));

        let mut bodies = Vec::new();
        for _ in 0..4 {
            let (status, body) = hit(&proxy, Some("public.example")).await;
            assert_eq!(status, StatusCode::OK);
            bodies.push(body);
        }
        assert_eq!(bodies, ["one", "two", "one", "two"]);
        let expected = format!("backend.test:{port}");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 4);
        assert!(seen.iter().all(|(_, host)| *host == expected), "{seen:?}");

        // The 1.3-shaped stream of the same lookups names the IP.
        let seen_ip = Hosts::default();
        let only = upstream("127.0.0.1:0".parse().unwrap(), "only", &seen_ip).await;
        let dns_ip = TestDns::start(&[("backend.test.", 300, a([127, 0, 0, 1]))]).await;
        let by_ip = DnsDiscovery::new(config(&dns_ip, "backend.test.", only.port())).unwrap();
        let proxy = DiscoverableBalancedProxy::new("/", by_ip);
        proxy.start_discovery().await;
        wait_for(|| proxy.endpoints(), 1).await;
        assert_eq!(proxy.endpoints()[0].host, None);
        hit(&proxy, None).await;
        assert_eq!(
            seen_ip.lock().unwrap()[0].1,
            format!("127.0.0.1:{}", only.port())
        );
    }

    #[tokio::test]
    async fn a_preserved_host_and_a_users_client_keep_their_rules() {
        let seen = Hosts::default();
        let up = upstream("127.0.0.1:0".parse().unwrap(), "up", &seen).await;
        let dns = TestDns::start(&[("backend.test.", 300, a([127, 0, 0, 1]))]).await;
        let endpoints = DnsEndpointDiscovery::new(config(&dns, "backend.test", up.port())).unwrap();

        // HostBehaviour::Preserve forwards the client's Host, as for any endpoint.
        let preserving = DiscoverableBalancedProxy::new("/", endpoints.clone())
            .with_policy(ProxyPolicy::new().with_host_behaviour(HostBehaviour::Preserve));
        preserving.start_discovery().await;
        wait_for(|| preserving.endpoints(), 1).await;
        assert_eq!(hit(&preserving, Some("public.example")).await.1, "up");

        // A user's client dials the address; Host is still the name.
        let client: Client<HttpConnector, Body> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let through_client = DiscoverableBalancedProxy::new_with_client("/", client, endpoints);
        through_client.start_discovery().await;
        wait_for(|| through_client.endpoints(), 1).await;
        assert_eq!(hit(&through_client, Some("public.example")).await.1, "up");

        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [
                ("up", "public.example".to_owned()),
                ("up", format!("backend.test:{}", up.port())),
            ]
        );
    }

    #[tokio::test]
    async fn srv_weights_give_the_smooth_weighted_order_and_each_target_its_name() {
        let seen = Hosts::default();
        let mut listeners = Vec::new();
        for _ in 0..3 {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        // Endpoints arrive in address order: name the upstreams in port order.
        listeners.sort_by_key(|l| l.local_addr().unwrap().port());
        let names = ["a", "b", "c"];
        let ports: Vec<u16> = listeners
            .into_iter()
            .zip(names)
            .map(|(listener, name)| upstream_on(listener, name, &seen).port())
            .collect();
        let backup_port = upstream("127.0.0.1:0".parse().unwrap(), "backup", &seen)
            .await
            .port();
        let owner = "_http._tcp.svc.test.";
        let records: Vec<Rec> = vec![
            (owner, 300, srv(10, 5, ports[0], "a.svc.test.")),
            (owner, 300, srv(10, 1, ports[1], "b.svc.test.")),
            (owner, 300, srv(10, 1, ports[2], "c.svc.test.")),
            (owner, 300, srv(20, 100, backup_port, "backup.svc.test.")),
            ("a.svc.test.", 300, a([127, 0, 0, 1])),
            ("b.svc.test.", 300, a([127, 0, 0, 1])),
            ("c.svc.test.", 300, a([127, 0, 0, 1])),
            ("backup.svc.test.", 300, a([127, 0, 0, 1])),
        ];
        let dns = TestDns::start(&records).await;
        let settings = config(&dns, owner, 0).with_srv(true);
        let proxy =
            DiscoverableBalancedProxy::new("/", DnsEndpointDiscovery::new(settings).unwrap())
                .with_strategy(LoadBalancingStrategy::WeightedRoundRobin);
        proxy.start_discovery().await;
        wait_for(|| proxy.endpoints(), 3).await;
        let weights: Vec<u32> = proxy.endpoints().iter().map(|s| s.weight).collect();
        assert_eq!(weights, [5, 1, 1]);

        let mut order = String::new();
        for _ in 0..14 {
            order += &hit(&proxy, None).await.1;
        }
        assert_eq!(order, "aabacaaaabacaa");
        let seen = seen.lock().unwrap().clone();
        let hosts: HashMap<&str, &str> = seen.iter().map(|(n, h)| (*n, h.as_str())).collect();
        for (port, name) in ports.iter().zip(names) {
            assert_eq!(hosts[name], format!("{name}.svc.test:{port}"));
        }
    }

    #[tokio::test]
    async fn srv_weight_zero_gets_a_very_small_share() {
        let owner = "_http._tcp.zero.test.";
        let dns = TestDns::start(&[
            (owner, 300, srv(0, 0, 8001, "z.zero.test.")),
            (owner, 300, srv(0, 3, 8002, "w.zero.test.")),
            (owner, 300, srv(1, 0, 8003, "y.zero.test.")),
            (
                "_http._tcp.backup.zero.test.",
                300,
                srv(0, 0, 8003, "y.zero.test."),
            ),
            ("z.zero.test.", 300, a([10, 0, 2, 1])),
            ("w.zero.test.", 300, a([10, 0, 2, 2])),
            ("y.zero.test.", 300, a([10, 0, 2, 3])),
            // Two targets on one address and port: one endpoint, weights added.
            (
                "_http._tcp.same.test.",
                300,
                srv(0, 2, 8004, "q.same.test."),
            ),
            (
                "_http._tcp.same.test.",
                300,
                srv(0, 3, 8004, "p.same.test."),
            ),
            ("p.same.test.", 300, a([10, 0, 3, 1])),
            ("q.same.test.", 300, a([10, 0, 3, 1])),
        ])
        .await;
        // The first `n` endpoints of `owner`: (name, SRV weight, balancer weight).
        let endpoints = async |owner: &str, n: usize| {
            let settings = config(&dns, owner, 0).with_srv(true);
            let mut stream = DnsEndpointDiscovery::new(settings).unwrap();
            let mut out = Vec::new();
            while out.len() < n {
                let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
                    .await
                    .expect("an item")
                    .expect("the stream goes on");
                match item {
                    Ok(Change::Insert(_, e)) => {
                        out.push((e.hostname().to_owned(), e.weight(), e.effective_weight()))
                    }
                    other => panic!("unexpected {:?}", other.map(|_| ())),
                }
            }
            out
        };
        // Mixed 0 and 3: ×100, 0 counts as 1. Priority 1 is a backup and stays out.
        assert_eq!(
            endpoints(owner, 2).await,
            [
                ("z.zero.test".to_owned(), 0, 1),
                ("w.zero.test".to_owned(), 3, 300)
            ]
        );
        // All 0: equal weights.
        assert_eq!(
            endpoints("_http._tcp.backup.zero.test.", 1).await,
            [("y.zero.test".to_owned(), 0, 1)]
        );
        // Two targets on one address and port: one endpoint, the first name, the sum.
        assert_eq!(
            endpoints("_http._tcp.same.test.", 1).await,
            [("p.same.test".to_owned(), 5, 5)]
        );
    }

    #[cfg(feature = "tls")]
    mod tls {
        use std::sync::atomic::{AtomicUsize, Ordering};

        use hyper::body::Incoming;
        use hyper_util::rt::TokioIo;
        use tokio_rustls::TlsAcceptor;
        use tokio_rustls::rustls::{self, pki_types};

        use super::*;

        /// What the TLS upstream saw of one request.
        #[derive(Clone, Debug, PartialEq)]
        struct Seen {
            connection: usize,
            sni: Option<String>,
            alpn: Option<Vec<u8>>,
            /// `Host`, or the `:authority` of an HTTP/2 request.
            authority: String,
        }

        struct Identity {
            cert: pki_types::CertificateDer<'static>,
            key: Vec<u8>,
        }

        fn identity(names: &[&str]) -> Identity {
            let rcgen::CertifiedKey { cert, key_pair } = rcgen::generate_simple_self_signed(
                names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
            )
            .unwrap();
            Identity {
                cert: cert.der().clone(),
                key: key_pair.serialize_der(),
            }
        }

        fn ring() -> Arc<rustls::crypto::CryptoProvider> {
            Arc::new(rustls::crypto::ring::default_provider())
        }

        /// A client config that trusts `identity`'s certificate only.
        fn trusting(identity: &Identity) -> rustls::ClientConfig {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(identity.cert.clone()).unwrap();
            rustls::ClientConfig::builder_with_provider(ring())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth()
        }

        /// An HTTPS upstream (HTTP/1.1 and HTTP/2 by ALPN) on 127.0.0.1 with `identity`,
        /// recording the SNI of each connection and the authority of each request.
        async fn tls_upstream(identity: &Identity) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
            let key = pki_types::PrivateKeyDer::Pkcs8(identity.key.clone().into());
            let mut config = rustls::ServerConfig::builder_with_provider(ring())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![identity.cert.clone()], key)
                .unwrap();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let acceptor = TlsAcceptor::from(Arc::new(config));
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
            let log = Arc::clone(&seen);
            let connections = Arc::new(AtomicUsize::new(0));
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (acceptor, log) = (acceptor.clone(), Arc::clone(&log));
                    let connection = connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let sni = tls.get_ref().1.server_name().map(str::to_owned);
                        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let authority = req
                                .headers()
                                .get("host")
                                .and_then(|h| h.to_str().ok())
                                .map(str::to_owned)
                                .or_else(|| req.uri().authority().map(|a| a.to_string()))
                                .unwrap_or_default();
                            log.lock().unwrap().push(Seen {
                                connection,
                                sni: sni.clone(),
                                alpn: alpn.clone(),
                                authority,
                            });
                            async {
                                Ok::<_, std::convert::Infallible>(Response::new("tls".to_owned()))
                            }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    });
                }
            });
            (addr, seen)
        }

        #[tokio::test]
        async fn tls_sends_and_verifies_the_dns_name() {
            let identity = identity(&["backend.test"]);
            let (addr, seen) = tls_upstream(&identity).await;
            let dns = TestDns::start(&[("backend.test.", 300, a([127, 0, 0, 1]))]).await;
            let discovery =
                DnsDiscovery::new(config(&dns, "backend.test", addr.port()).with_https(true))
                    .unwrap();
            let proxy = DiscoverableBalancedProxy::new("/", discovery.endpoints())
                .with_tls_config(trusting(&identity));
            proxy.start_discovery().await;
            wait_for(|| proxy.endpoints(), 1).await;
            assert_eq!(
                proxy.endpoints()[0].url,
                format!("https://127.0.0.1:{}", addr.port())
            );

            for _ in 0..3 {
                assert_eq!(
                    hit(&proxy, Some("public.example")).await,
                    (StatusCode::OK, "tls".to_owned())
                );
            }
            let seen = seen.lock().unwrap().clone();
            let expected = Seen {
                connection: 0,
                sni: Some("backend.test".to_owned()),
                // The pool offers h2 and http/1.1; the upstream picks h2.
                alpn: Some(b"h2".to_vec()),
                authority: format!("backend.test:{}", addr.port()),
            };
            assert_eq!(seen, [expected.clone(), expected.clone(), expected]);

            // The same upstream, trusted, but under a name its certificate does not carry:
            // verification is against the name, so the handshake fails.
            let dns = TestDns::start(&[("other.test.", 300, a([127, 0, 0, 1]))]).await;
            let discovery =
                DnsDiscovery::new(config(&dns, "other.test", addr.port()).with_https(true))
                    .unwrap();
            let proxy = DiscoverableBalancedProxy::new("/", discovery.endpoints())
                .with_tls_config(trusting(&identity));
            proxy.start_discovery().await;
            wait_for(|| proxy.endpoints(), 1).await;
            let response = proxy
                .clone()
                .oneshot(Request::new(Body::empty()))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
            let error = response
                .extensions()
                .get::<axum_reverse_proxy::ProxyError>()
                .unwrap();
            assert!(error.is_connect(), "{error:?}");
        }

        #[tokio::test]
        async fn two_names_on_one_address_never_share_a_connection() {
            let identity = identity(&["a.test", "b.test"]);
            let (addr, seen) = tls_upstream(&identity).await;
            let dns = TestDns::start(&[
                ("a.test.", 300, a([127, 0, 0, 1])),
                ("b.test.", 300, a([127, 0, 0, 1])),
            ])
            .await;
            // One proxy over both names: the two sources' keys (the same address) tagged.
            let source = |name: &'static str| {
                let endpoints =
                    DnsEndpointDiscovery::new(config(&dns, name, addr.port()).with_https(true))
                        .unwrap();
                endpoints.map(move |item| {
                    item.map(|change| match change {
                        Change::Insert(addr, e) => Change::Insert((name, addr), e),
                        Change::Remove(addr) => Change::Remove((name, addr)),
                    })
                })
            };
            let both = futures_util::stream::select(source("a.test"), source("b.test"));
            let proxy =
                DiscoverableBalancedProxy::new("/", both).with_tls_config(trusting(&identity));
            proxy.start_discovery().await;
            wait_for(|| proxy.endpoints(), 2).await;
            for _ in 0..6 {
                assert_eq!(hit(&proxy, None).await.0, StatusCode::OK);
            }
            let seen = seen.lock().unwrap().clone();
            assert_eq!(seen.len(), 6);
            let mut by_connection: HashMap<usize, String> = HashMap::new();
            for s in &seen {
                let sni = s.sni.clone().unwrap();
                assert_eq!(s.authority, format!("{sni}:{}", addr.port()), "{seen:?}");
                // Every request on a connection has that connection's name.
                assert_eq!(
                    by_connection.entry(s.connection).or_insert(sni.clone()),
                    &sni
                );
            }
            // One (reused) connection per name.
            let mut names: Vec<&String> = by_connection.values().collect();
            names.sort();
            assert_eq!(names, ["a.test", "b.test"], "{seen:?}");
        }
    }
}
