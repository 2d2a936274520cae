//! The admin listener: `/metrics`, `/health`, `/upstreams`, `/config`.
//!
//! Bind it to a private address: `/config` shows the whole active configuration (with
//! secrets redacted) and `/upstreams` every endpoint.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::server::Shared;

pub(crate) mod histogram;
pub(crate) mod metrics;

/// The admin router.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/health", get(health))
        .route("/upstreams", get(upstreams))
        .route("/config", get(config))
        .with_state(shared)
}

async fn metrics_text(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared
            .metrics
            .encode_with(&shared.active.load().pools, &shared.tunnels),
    )
        .into_response()
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    if shared.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        "ok\n".into_response()
    }
}

async fn upstreams(State(shared): State<Arc<Shared>>) -> Response {
    let snapshot = shared.active.load();
    let now = tokio::time::Instant::now();
    let pools: serde_json::Map<String, Value> = snapshot
        .pools
        .iter()
        .map(|(name, pool)| {
            let endpoints: Vec<Value> = pool
                .endpoints()
                .into_iter()
                .map(|e| {
                    let url = without_userinfo(&e.url).unwrap_or(e.url);
                    match e.stats {
                        // A plain proxy to one target keeps no endpoint state.
                        None => json!({
                            "url": url,
                            "weight": e.weight,
                            "healthy": true,
                            "ejected": false,
                        }),
                        Some(s) => json!({
                            "url": url,
                            // The DNS name sent as `Host`/SNI, when not the URL's host.
                            "host": s.host,
                            "weight": e.weight,
                            "healthy": s.healthy,
                            "ejected": s.ejected_until.is_some(),
                            "ejected_for_ms": s.ejected_until.map(|t| {
                                u64::try_from(t.saturating_duration_since(now).as_millis())
                                    .unwrap_or(u64::MAX)
                            }),
                            "times_ejected": s.times_ejected,
                            "pending": s.pending,
                            "rtt_ewma_ms": s.rtt_ewma.as_secs_f64() * 1000.0,
                            "requests": s.requests,
                            "failures": s.failures,
                            "consecutive_failures": s.consecutive_failures,
                        }),
                    }
                })
                .collect();
            (
                name.clone(),
                json!({
                    "kind": pool.kind(),
                    "strategy": pool.strategy.name(),
                    "retries": pool.config.retry.is_some(),
                    "health_check": pool.config.health_check.is_some(),
                    "endpoints": endpoints,
                }),
            )
        })
        .collect();
    axum::Json(json!({
        "generation": snapshot.generation,
        "pools": pools,
    }))
    .into_response()
}

async fn config(State(shared): State<Arc<Shared>>) -> Response {
    let snapshot = shared.active.load();
    let mut value = serde_json::to_value(&snapshot.loaded.config).unwrap_or(Value::Null);
    redact(&mut value, false);
    axum::Json(json!({
        "generation": snapshot.generation,
        "file": snapshot.loaded.file,
        "config": value,
    }))
    .into_response()
}

/// Keys whose values are never shown.
const SECRET_KEYS: &[&str] = &["password", "secret", "token"];
/// Header names whose configured values are never shown.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// Replace secret values by `"<redacted>"`. `in_header_map` is true inside the `set` and
/// `add` tables of header rules, whose keys are header names.
pub(crate) fn redact(value: &mut Value, in_header_map: bool) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                let lower = key.to_ascii_lowercase();
                if (SECRET_KEYS.contains(&lower.as_str())
                    || (in_header_map && SECRET_HEADERS.contains(&lower.as_str())))
                    && !v.is_null()
                {
                    *v = Value::String("<redacted>".to_owned());
                } else {
                    redact(v, key == "set" || key == "add");
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                redact(v, false);
            }
        }
        Value::String(text) => {
            if let Some(clean) = without_userinfo(text) {
                *text = clean;
            }
        }
        _ => {}
    }
}

/// `http://user:pass@host/x` → `http://<redacted>@host/x`; `None` when there is no
/// userinfo to hide.
pub(crate) fn without_userinfo(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (_, host) = authority.rsplit_once('@')?;
    Some(format!("{scheme}://<redacted>@{host}{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        let mut v = json!({
            "routes": [{"request_headers": {"set": {"Authorization": "Bearer x", "x-env": "prod"}}}],
            "pools": {"a": {"discovery": {"etcd": {"password": "hunter2", "username": "u"}}}},
            "listeners": {"l": {"tls": {"certificates": [{"key": "/etc/key.pem"}]}}},
        });
        redact(&mut v, false);
        let s = v.to_string();
        assert!(!s.contains("Bearer"), "{s}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(
            s.contains("prod") && s.contains("/etc/key.pem") && s.contains("\"u\""),
            "{s}"
        );
    }
}
