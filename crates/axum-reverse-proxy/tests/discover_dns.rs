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
