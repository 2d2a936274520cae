//! etcd discovery (feature `etcd`): a key prefix of an etcd v3 cluster, read and watched
//! through etcd's JSON gateway.

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tower::discover::Change;

use super::endpoint::{WeightedUrl, check_url};
use super::publish::{Message, Publisher, Subscription, backoff};
use crate::client::{ProxyConnector, default_connector};
use crate::error::BoxError;

/// A watch message larger than this is refused (and the watch restarted).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

// ===== impl EtcdDiscoveryConfig =====

/// Where the endpoints live in etcd, and how to reach it.
#[derive(Debug, Clone)]
pub struct EtcdDiscoveryConfig {
    endpoints: Vec<String>,
    prefix: String,
    min_backoff: Duration,
    max_backoff: Duration,
    request_timeout: Duration,
}

impl EtcdDiscoveryConfig {
    /// The keys under `prefix` (e.g. `/services/api/`) of the cluster reachable at
    /// `endpoints` (client URLs such as `http://10.0.0.5:2379`; tried in turn after
    /// failures). `https://` needs the `tls` or `native-tls` feature.
    pub fn new<I, S>(endpoints: I, prefix: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            endpoints: endpoints
                .into_iter()
                .map(|e| e.into().trim_end_matches('/').to_owned())
                .collect(),
            prefix: prefix.into(),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// Reconnection backoff after a failure: from `min` (default 100 ms, at least 10 ms),
    /// doubling up to `max` (default 10 s).
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min.max(Duration::from_millis(10));
        self.max_backoff = max;
        self
    }

    /// The deadline of the initial read and of the watch's first response (default 10 s).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
}

// ===== impl EtcdDiscovery =====

type EtcdSet = BTreeMap<String, WeightedUrl>;

/// The endpoints stored under a key prefix of an etcd v3 cluster, kept up to date by a
/// watch.
///
/// # Data model
///
/// Every key under the prefix is one endpoint: the stream's key is the etcd key (UTF-8),
/// its value a [`WeightedUrl`] read from the etcd value, either
///
/// - a plain URL: `http://10.0.0.1:8080` (weight 1), or
/// - a JSON object: `{"url": "http://10.0.0.1:8080", "weight": 3}` (`weight` optional,
///   a positive integer).
///
/// ```text
/// etcdctl put /services/api/node-1 http://10.0.0.1:8080
/// etcdctl put /services/api/node-2 '{"url": "http://10.0.0.2:8080", "weight": 3}'
/// ```
///
/// A put yields `Change::Insert` (replacing the key's endpoint), a delete `Change::Remove`.
/// A value that is not a valid endpoint yields an `Err` item naming the key, and that key
/// counts as absent (its previous endpoint is removed: etcd is the source of truth).
///
/// # Protocol
///
/// A background task reads the prefix (`/v3/kv/range`), publishes it, then watches it from
/// the next revision (`/v3/watch`), so no change between the read and the watch is lost.
/// When the connection fails, the watch is cancelled (for instance by compaction) or etcd
/// answers an error, the task yields one `Err` item, waits (backoff from 100 ms to 10 s by
/// default), moves on to the next configured endpoint and starts again with a full read;
/// subscribers see only the difference. Dead connections are detected by TCP keep-alive
/// (60 s), not by etcd progress notifications.
///
/// **Why the JSON gateway and not gRPC.** etcd serves its v3 API as gRPC and, on the same
/// port, as JSON over HTTP/1.1 (the gRPC gateway, `/v3/...`, keys and values in base64).
/// The gRPC client crates (`etcd-client`) generate their code from `.proto` files at build
/// time and so need `protoc` on every machine that builds this crate, and they bring a
/// second gRPC/HTTP stack. The two calls needed here (range and watch) are small JSON
/// exchanges over the hyper client this crate already has; the gateway is part of every
/// etcd v3 release since 3.3 and stable at `/v3/` since 3.4. Authentication and client
/// certificates are not supported yet.
///
/// Clones are independent subscribers (the current endpoints replayed as Inserts); the
/// task stops when the last clone is dropped. `new` must be called within a Tokio runtime.
#[derive(Clone)]
pub struct EtcdDiscovery {
    sub: EtcdSubscription,
}

struct EtcdSubscription(Subscription<EtcdSet, String, WeightedUrl>);

impl Clone for EtcdSubscription {
    fn clone(&self) -> Self {
        Self(self.0.resubscribe())
    }
}

impl EtcdDiscovery {
    /// Starts the background task (the first read starts at once).
    ///
    /// Errors: no endpoint, an endpoint that is not an `http(s)://` URL, or no Tokio
    /// runtime.
    pub fn new(config: EtcdDiscoveryConfig) -> Result<Self, BoxError> {
        if config.endpoints.is_empty() {
            return Err("etcd discovery needs at least one etcd endpoint".into());
        }
        for endpoint in &config.endpoints {
            check_url(endpoint)?;
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "etcd discovery must be started within a Tokio runtime")?;
        let (publisher, rx) = Publisher::new();
        let client = Client::builder(TokioExecutor::new()).build(default_connector());
        runtime.spawn(run(config, client, publisher));
        Ok(Self {
            sub: EtcdSubscription(Subscription::new(rx, EtcdSet::clone)),
        })
    }
}

impl fmt::Debug for EtcdDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdDiscovery").finish_non_exhaustive()
    }
}

impl Stream for EtcdDiscovery {
    type Item = Result<Change<String, WeightedUrl>, BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().sub.0.poll_change(cx)
    }
}

// ===== the task =====

type EtcdClient = Client<ProxyConnector, Full<Bytes>>;

async fn run(config: EtcdDiscoveryConfig, client: EtcdClient, publisher: Publisher<EtcdSet>) {
    let mut failures = 0u32;
    let mut turn = 0usize;
    loop {
        let base = &config.endpoints[turn % config.endpoints.len()];
        let mut session = Session {
            client: &client,
            base,
            config: &config,
            keys: BTreeMap::new(),
        };
        let outcome = tokio::select! {
            outcome = session.run(&publisher, &mut failures) => outcome,
            _ = publisher.closed() => return,
        };
        let error = match outcome {
            Ok(never) => match never {},
            Err(error) => error,
        };
        failures = failures.saturating_add(1);
        tracing::debug!(%error, endpoint = %base, failures, "etcd discovery failed");
        publisher.fail(Message(format!("etcd {base}: {error}")));
        turn = turn.wrapping_add(1);
        let delay = backoff(config.min_backoff, config.max_backoff, failures);
        if !publisher.sleep(delay).await {
            return;
        }
    }
}

/// One connection's worth of work: read, then watch until something fails.
struct Session<'a> {
    client: &'a EtcdClient,
    base: &'a str,
    config: &'a EtcdDiscoveryConfig,
    /// Every key under the prefix and what its value means.
    keys: BTreeMap<String, Result<WeightedUrl, String>>,
}

enum Never {}

impl Session<'_> {
    async fn run(
        &mut self,
        publisher: &Publisher<EtcdSet>,
        failures: &mut u32,
    ) -> Result<Never, BoxError> {
        let (key, range_end) = prefix_range(self.config.prefix.as_bytes());
        let range = json!({ "key": BASE64.encode(&key), "range_end": BASE64.encode(&range_end) });
        let response = tokio::time::timeout(
            self.config.request_timeout,
            self.call_json("/v3/kv/range", &range),
        )
        .await
        .map_err(|_| "range request timed out")??;
        let revision = revision_of(&response)?;
        let mut bad = Vec::new();
        if let Some(kvs) = response.get("kvs").and_then(Value::as_array) {
            for kv in kvs {
                if let Some(error) = self.put(kv) {
                    bad.push(error);
                }
            }
        }
        self.publish(publisher, bad);
        *failures = 0;

        let watch = json!({ "create_request": {
            "key": BASE64.encode(&key),
            "range_end": BASE64.encode(&range_end),
            "start_revision": (revision + 1).to_string(),
        }});
        let response = tokio::time::timeout(
            self.config.request_timeout,
            self.client.request(self.request("/v3/watch", &watch)?),
        )
        .await
        .map_err(|_| "watch request timed out")??;
        if !response.status().is_success() {
            return Err(format!("watch answered {}", response.status()).into());
        }
        let mut body = response.into_body();
        let mut buffer: Vec<u8> = Vec::new();
        loop {
            let frame = match body.frame().await {
                Some(frame) => frame?,
                None => return Err("the watch stream ended".into()),
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buffer.extend_from_slice(&data);
            let messages = drain_messages(&mut buffer)?;
            for message in messages {
                self.on_watch_message(publisher, &message)?;
            }
        }
    }

    fn on_watch_message(
        &mut self,
        publisher: &Publisher<EtcdSet>,
        message: &Value,
    ) -> Result<(), BoxError> {
        if let Some(error) = message.get("error") {
            return Err(format!("watch error: {error}").into());
        }
        let Some(result) = message.get("result") else {
            return Ok(());
        };
        let compacted = int_field(result, "compact_revision").unwrap_or(0);
        if compacted > 0 {
            return Err(format!("the watch fell behind compaction at revision {compacted}").into());
        }
        if result.get("canceled").and_then(Value::as_bool) == Some(true) {
            let reason = result
                .get("cancel_reason")
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            return Err(format!("etcd cancelled the watch: {reason}").into());
        }
        let Some(events) = result.get("events").and_then(Value::as_array) else {
            return Ok(());
        };
        if events.is_empty() {
            return Ok(());
        }
        let mut bad = Vec::new();
        for event in events {
            let Some(kv) = event.get("kv") else { continue };
            // Protobuf JSON omits default values: no `type` means PUT.
            match event.get("type").and_then(Value::as_str) {
                Some("DELETE") => {
                    if let Ok(key) = decode_key(kv) {
                        self.keys.remove(&key);
                    }
                }
                _ => {
                    if let Some(error) = self.put(kv) {
                        bad.push(error);
                    }
                }
            }
        }
        self.publish(publisher, bad);
        Ok(())
    }

    /// Records a key-value pair; returns why it is not an endpoint, if it is not.
    fn put(&mut self, kv: &Value) -> Option<String> {
        let key = match decode_key(kv) {
            Ok(key) => key,
            Err(error) => return Some(error),
        };
        let value = kv.get("value").and_then(Value::as_str).unwrap_or_default();
        let endpoint = BASE64
            .decode(value)
            .map_err(|e| format!("key {key}: value is not base64: {e}"))
            .and_then(|raw| parse_value(&raw).map_err(|e| format!("key {key}: {e}")));
        let error = endpoint.as_ref().err().cloned();
        self.keys.insert(key, endpoint);
        error
    }

    fn publish(&self, publisher: &Publisher<EtcdSet>, bad: Vec<String>) {
        let set = self
            .keys
            .iter()
            .filter_map(|(key, endpoint)| Some((key.clone(), endpoint.as_ref().ok()?.clone())))
            .collect();
        publisher.publish(set);
        if !bad.is_empty() {
            publisher.fail(Message(bad.join("; ")));
        }
    }

    fn request(&self, path: &str, body: &Value) -> Result<http::Request<Full<Bytes>>, BoxError> {
        Ok(http::Request::post(format!("{}{path}", self.base))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?)
    }

    async fn call_json(&self, path: &str, body: &Value) -> Result<Value, BoxError> {
        let response = self.client.request(self.request(path, body)?).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
            return Err(format!("{path} answered {status}: {text}").into());
        }
        Ok(serde_json::from_slice(&bytes)?)
    }
}

/// Takes the complete JSON values off the front of `buffer`, leaving a partial one.
pub(crate) fn drain_messages(buffer: &mut Vec<u8>) -> Result<Vec<Value>, String> {
    let mut messages = Vec::new();
    let mut values = serde_json::Deserializer::from_slice(buffer).into_iter::<Value>();
    loop {
        match values.next() {
            Some(Ok(value)) => messages.push(value),
            Some(Err(e)) if e.is_eof() => break,
            Some(Err(e)) => return Err(format!("bad watch message: {e}")),
            None => break,
        }
    }
    let consumed = values.byte_offset();
    buffer.drain(..consumed);
    if buffer.len() > MAX_MESSAGE {
        return Err("watch message too large".to_owned());
    }
    Ok(messages)
}

/// `[key, range_end)` covering every key that starts with `prefix` (all keys when empty).
pub(crate) fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (vec![0], vec![0]);
    }
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (prefix.to_vec(), end);
        }
    }
    // Only 0xff bytes: everything from the prefix on.
    (prefix.to_vec(), vec![0])
}

/// An int64 field, which protobuf JSON writes as a string.
fn int_field(value: &Value, name: &str) -> Option<i64> {
    match value.get(name)? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn revision_of(response: &Value) -> Result<i64, BoxError> {
    response
        .get("header")
        .and_then(|header| int_field(header, "revision"))
        .ok_or_else(|| "range response without a revision".into())
}

fn decode_key(kv: &Value) -> Result<String, String> {
    let raw = kv.get("key").and_then(Value::as_str).unwrap_or_default();
    let bytes = BASE64
        .decode(raw)
        .map_err(|e| format!("key {raw:?} is not base64: {e}"))?;
    String::from_utf8(bytes).map_err(|_| format!("key {raw:?} (base64) is not UTF-8"))
}

/// A value: a plain URL, or `{"url": "...", "weight": N}`.
pub(crate) fn parse_value(raw: &[u8]) -> Result<WeightedUrl, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "value is not UTF-8".to_owned())?;
    let text = text.trim();
    if !text.starts_with('{') {
        return WeightedUrl::new(text, 1).map_err(|e| e.to_string());
    }
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let url = value
        .get("url")
        .and_then(Value::as_str)
        .ok_or("JSON value without a \"url\" string")?;
    let weight = match value.get("weight") {
        None | Some(Value::Null) => 1,
        Some(weight) => weight
            .as_u64()
            .and_then(|w| u32::try_from(w).ok())
            .ok_or_else(|| format!("invalid weight {weight}"))?,
    };
    WeightedUrl::new(url, weight).map_err(|e| e.to_string())
}
