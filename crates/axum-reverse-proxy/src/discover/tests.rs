//! Unit tests of the discovery plumbing and parsers.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::time::Duration;

use futures_util::StreamExt;
use tower::discover::Change;

use super::file::parse;
use super::publish::{Message, Publisher, Subscription, backoff};
use super::{StaticDiscovery, WeightedUrl, describe as read_value};

type Set = BTreeMap<&'static str, u32>;

fn set(entries: &[(&'static str, u32)]) -> Set {
    entries.iter().copied().collect()
}

fn describe(item: Option<Result<Change<&'static str, u32>, crate::error::BoxError>>) -> String {
    match item {
        None => "end".to_owned(),
        Some(Ok(Change::Insert(k, v))) => format!("+{k}={v}"),
        Some(Ok(Change::Remove(k))) => format!("-{k}"),
        Some(Err(e)) => format!("err:{e}"),
    }
}

async fn take(sub: &mut Subscription<Set, &'static str, u32>, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let item = tokio::time::timeout(Duration::from_secs(5), poll_fn(|cx| sub.poll_change(cx)))
            .await
            .expect("an item");
        out.push(describe(item));
    }
    out
}

async fn quiet(sub: &mut Subscription<Set, &'static str, u32>) -> bool {
    tokio::time::timeout(Duration::from_millis(50), poll_fn(|cx| sub.poll_change(cx)))
        .await
        .is_err()
}

#[tokio::test]
async fn subscribers_get_removes_then_inserts_and_clones_replay() {
    let (publisher, rx) = Publisher::<Set>::new();
    let mut sub = Subscription::new(rx, Set::clone);
    assert!(quiet(&mut sub).await, "nothing before the first set");

    publisher.publish(set(&[("a", 1), ("b", 1)]));
    assert_eq!(take(&mut sub, 2).await, ["+a=1", "+b=1"]);

    publisher.publish(set(&[("b", 2), ("c", 1)]));
    assert_eq!(take(&mut sub, 3).await, ["-a", "+b=2", "+c=1"]);

    // The same set again wakes nobody.
    publisher.publish(set(&[("b", 2), ("c", 1)]));
    assert!(quiet(&mut sub).await);

    publisher.fail(Message("boom".to_owned()));
    assert_eq!(take(&mut sub, 1).await, ["err:boom"]);

    let mut clone = sub.resubscribe();
    assert_eq!(take(&mut clone, 3).await, ["+b=2", "+c=1", "err:boom"]);
    assert!(quiet(&mut sub).await && quiet(&mut clone).await);

    // A success clears the failure; later clones do not see it.
    publisher.publish(set(&[("b", 2), ("c", 1)]));
    let mut late = sub.resubscribe();
    assert_eq!(take(&mut late, 2).await, ["+b=2", "+c=1"]);
    assert!(quiet(&mut late).await);

    drop(publisher);
    assert_eq!(take(&mut sub, 1).await, ["end"]);
}

#[tokio::test]
async fn the_publisher_sees_when_every_subscriber_is_gone() {
    let (publisher, rx) = Publisher::<Set>::new();
    let sub = Subscription::new(rx, Set::clone);
    let clone = sub.resubscribe();
    drop(sub);
    assert!(
        publisher.sleep(Duration::from_millis(1)).await,
        "a clone is alive"
    );
    drop(clone);
    assert!(!publisher.sleep(Duration::from_secs(60)).await);
}

#[test]
fn backoff_doubles_from_the_floor_up_to_the_cap() {
    let floor = Duration::from_millis(100);
    let cap = Duration::from_secs(1);
    let got: Vec<u128> = (1..=6)
        .map(|n| backoff(floor, cap, n).as_millis())
        .collect();
    assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
    assert_eq!(backoff(floor, cap, u32::MAX), cap);
    // A cap below the floor never means a shorter wait than the floor.
    assert_eq!(backoff(floor, Duration::ZERO, 3), floor);
}

#[test]
fn the_file_format() {
    let text = "\
# pool
http://10.0.0.1:8080

  https://[2001:db8::7]:8443   weight=3   # big one
http://h.example/base#frag
";
    let parsed = parse(text).unwrap();
    let got: Vec<(&str, &str, u32)> = parsed
        .iter()
        .map(|(k, v)| (k.as_str(), v.url(), v.weight()))
        .collect();
    assert_eq!(
        got,
        [
            ("http://10.0.0.1:8080", "http://10.0.0.1:8080", 1),
            (
                "http://h.example/base#frag",
                "http://h.example/base#frag",
                1
            ),
            (
                "https://[2001:db8::7]:8443",
                "https://[2001:db8::7]:8443",
                3
            ),
        ]
    );
    assert!(parse("").unwrap().is_empty());
    assert!(parse("# nothing\n\n").unwrap().is_empty());
}

#[test]
fn file_errors_name_the_line() {
    for (text, expected) in [
        ("http://a:1\nhttp://b:1 weight=x", "line 2: invalid weight"),
        ("http://a:1 weight=0", "line 1: weight"),
        ("http://a:1 wieght=2", "line 1: unexpected"),
        (
            "http://a:1\n\nhttp://a:1",
            "line 3: http://a:1 is listed twice",
        ),
        ("ftp://a:1", "line 1: endpoint URL"),
        ("/relative", "line 1: endpoint URL"),
        ("http://", "line 1: invalid endpoint URL"),
        ("http://a:99999", "line 1: invalid endpoint URL"),
    ] {
        let error = parse(text).expect_err(text);
        assert!(error.starts_with(expected), "{text:?}: {error}");
    }
}

#[test]
fn weighted_urls_are_validated() {
    assert!(WeightedUrl::new("http://a", 1).is_ok());
    assert!(WeightedUrl::new("a:80", 1).is_err());
    assert!(WeightedUrl::new("http://a", 0).is_err());
    let endpoint = WeightedUrl::new("https://a:8443/x", 7).unwrap();
    assert_eq!((endpoint.url(), endpoint.weight()), ("https://a:8443/x", 7));
    assert_eq!(endpoint.to_string(), "https://a:8443/x");
    assert_eq!(String::from(endpoint), "https://a:8443/x");
}

#[tokio::test]
async fn static_discovery_inserts_each_url_once_then_stays_pending() {
    let mut pool = StaticDiscovery::new(["http://a:1", "http://b:1", "http://a:1"]);
    let mut got = Vec::new();
    for _ in 0..2 {
        match pool.next().await {
            Some(Ok(Change::Insert(k, v))) => got.push((k, v)),
            other => panic!("unexpected {:?}", other.map(|r| r.is_ok())),
        }
    }
    assert_eq!(
        got,
        [
            ("http://a:1".to_owned(), "http://a:1".to_owned()),
            ("http://b:1".to_owned(), "http://b:1".to_owned()),
        ]
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(50), pool.next())
            .await
            .is_err(),
        "pending after the Inserts, never ended"
    );
    // A clone starts again from the first Insert.
    let mut clone = pool.clone();
    for expected in ["http://a:1", "http://b:1"] {
        assert!(matches!(clone.next().await, Some(Ok(Change::Insert(k, _))) if k == expected));
    }
}

#[cfg(feature = "etcd")]
mod etcd {
    use super::super::etcd::{drain_messages, parse_value, prefix_range};

    #[test]
    fn watch_messages_split_and_joined_across_chunks() {
        let mut buffer = Vec::new();
        let mut got = Vec::new();
        for chunk in [
            &b"{\"result\":{\"n\":1}}\n{\"res"[..],
            b"ult\":{\"n\":2}}",
            b"\n",
            b"{\"result\":{\"n\":3}}\n{\"result\":{\"n\":4}}\n",
        ] {
            buffer.extend_from_slice(chunk);
            for message in drain_messages(&mut buffer).unwrap() {
                got.push(message["result"]["n"].as_i64().unwrap());
            }
        }
        assert_eq!(got, [1, 2, 3, 4]);
        buffer.extend_from_slice(b"{]");
        assert!(drain_messages(&mut buffer).is_err());
    }

    #[test]
    fn prefix_ranges() {
        assert_eq!(prefix_range(b"/a/"), (b"/a/".to_vec(), b"/a0".to_vec()));
        assert_eq!(prefix_range(b"a\xff"), (b"a\xff".to_vec(), b"b".to_vec()));
        assert_eq!(prefix_range(b"\xff\xff"), (b"\xff\xff".to_vec(), vec![0]));
        assert_eq!(prefix_range(b""), (vec![0], vec![0]));
    }

    #[test]
    fn values_are_urls_or_json() {
        let plain = parse_value(b"  http://10.0.0.1:80\n").unwrap();
        assert_eq!((plain.url(), plain.weight()), ("http://10.0.0.1:80", 1));
        let json = parse_value(br#"{"url": "https://a:1", "weight": 4}"#).unwrap();
        assert_eq!((json.url(), json.weight()), ("https://a:1", 4));
        let no_weight = parse_value(br#"{"url": "https://a:1", "weight": null}"#).unwrap();
        assert_eq!(no_weight.weight(), 1);
        for bad in [
            &b"nope"[..],
            b"{",
            br#"{"weight": 2}"#,
            br#"{"url": "http://a", "weight": -1}"#,
            br#"{"url": "http://a", "weight": 5000000000}"#,
            br#"{"url": "http://a", "weight": 0}"#,
            b"\xff\xfe",
        ] {
            assert!(
                parse_value(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

#[test]
fn the_balancer_reads_weights_and_names_by_type() {
    let plain = read_value("http://10.0.0.1:80".to_owned());
    assert_eq!(
        (plain.url.as_str(), plain.server_name, plain.weight),
        ("http://10.0.0.1:80", None, 1)
    );
    let borrowed = read_value("http://10.0.0.2:80");
    assert_eq!(
        (borrowed.url.as_str(), borrowed.weight),
        ("http://10.0.0.2:80", 1)
    );
    let weighted = read_value(WeightedUrl::new("http://10.0.0.3:80", 7).unwrap());
    assert_eq!(
        (weighted.url.as_str(), weighted.server_name, weighted.weight),
        ("http://10.0.0.3:80", None, 7)
    );
}

#[test]
fn sources_are_send_sync_and_static() {
    fn check<T: tower::discover::Discover + Send + Sync + Clone + Unpin + 'static>() {}
    check::<super::StaticDiscovery>();
    check::<super::FileDiscovery>();
    #[cfg(feature = "dns")]
    {
        check::<super::DnsDiscovery>();
        check::<super::DnsEndpointDiscovery>();
        check::<super::StaticDnsDiscovery>();
    }
    #[cfg(feature = "etcd")]
    check::<super::EtcdDiscovery>();
}
