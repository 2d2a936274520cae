//! Checks made after parsing: references between tables, addresses, URLs, names, ranges.
//!
//! Every check reports through the [`Locator`] so that its error names the line of the
//! offending value. All problems are collected, not only the first.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum_reverse_proxy::{ReverseProxy, TrustedProxies};
use http::{HeaderName, HeaderValue};
use toml::Spanned;

use super::errors::{ConfigError, Locator};
use super::schema::{Config, HeaderRules, PoolConfig, RouteConfig, Strategy, TrustedProxiesConfig};

/// Validate `cfg`, returning every problem found.
pub(crate) fn validate(cfg: &Config, loc: &Locator<'_>) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    server(cfg, loc, &mut errors);
    listeners(cfg, loc, &mut errors);
    for (name, pool) in &cfg.pools {
        check_pool(name, pool, loc, &mut errors);
    }
    routes(cfg, loc, &mut errors);
    errors.sort_by_key(|e| (e.line == 0, e.line, e.column));
    errors
}

fn server(cfg: &Config, loc: &Locator<'_>, errors: &mut Vec<ConfigError>) {
    let s = &cfg.server;
    if let Some(workers) = &s.workers
        && !(1..=1024).contains(workers.get_ref())
    {
        errors.push(loc.error(
            &workers.span(),
            "server.workers",
            "must be between 1 and 1024",
            "remove the key to use one worker per core",
        ));
    }
    for (key, value) in [
        ("server.header_read_timeout", &s.header_read_timeout),
        ("server.idle_timeout", &s.idle_timeout),
    ] {
        if value.get_ref().0.is_zero() {
            errors.push(loc.error(
                &value.span(),
                key,
                "must be longer than 0 (every connection would be closed at once)",
                "use e.g. \"10s\"",
            ));
        }
    }
    if s.release_idle_buffers_after.get_ref().0 < std::time::Duration::from_millis(100) {
        errors.push(loc.error(
            &s.release_idle_buffers_after.span(),
            "server.release_idle_buffers_after",
            "must be at least 100ms (an idle connection checks this often)",
            "use e.g. \"1s\"; set it to idle_timeout or more to never release buffers",
        ));
    }
    if s.max_header_bytes.get_ref().0 < 8192 {
        errors.push(loc.error(
            &s.max_header_bytes.span(),
            "server.max_header_bytes",
            "must be at least 8192 bytes",
            "HTTP/1 needs room for the request line and headers; use e.g. \"64KiB\"",
        ));
    }
    if !(1..=1000).contains(s.max_header_count.get_ref()) {
        errors.push(loc.error(
            &s.max_header_count.span(),
            "server.max_header_count",
            "must be between 1 and 1000",
            "the default is 100; each request's header index is sized by it",
        ));
    }
    let uri = s.max_uri_bytes.get_ref().0;
    if !(256..=65_534).contains(&uri) {
        errors.push(loc.error(
            &s.max_uri_bytes.span(),
            "server.max_uri_bytes",
            "must be between 256 and 65534 bytes",
            "RFC 9110 recommends accepting at least 8000; the default is \"8KiB\"",
        ));
    } else if uri > s.max_header_bytes.get_ref().0 {
        errors.push(loc.error(
            &s.max_uri_bytes.span(),
            "server.max_uri_bytes",
            format!(
                "is larger than server.max_header_bytes ({} bytes), which the request line is part of",
                s.max_header_bytes.get_ref().0
            ),
            "lower max_uri_bytes or raise max_header_bytes",
        ));
    }
    if !(1..=10_000).contains(s.http2_max_concurrent_streams.get_ref()) {
        errors.push(loc.error(
            &s.http2_max_concurrent_streams.span(),
            "server.http2_max_concurrent_streams",
            "must be between 1 and 10000",
            "the default is 128; RFC 9113 recommends at least 100",
        ));
    }
    if *s.http2_max_reset_streams.get_ref() > 1_000_000 {
        errors.push(loc.error(
            &s.http2_max_reset_streams.span(),
            "server.http2_max_reset_streams",
            "must be at most 1000000",
            "the default is 100; a high value lets a client make the upstream start requests it cancels at once (rapid reset)",
        ));
    }
    if !(1..=10_000_000).contains(s.max_connections.get_ref()) {
        errors.push(loc.error(
            &s.max_connections.span(),
            "server.max_connections",
            "must be between 1 and 10000000",
            "the default is 10000",
        ));
    }
    if let Some(log) = Some(&cfg.access_log.output)
        && log.get_ref().trim().is_empty()
    {
        errors.push(loc.error(
            &log.span(),
            "access_log.output",
            "is empty",
            "write \"stdout\", \"off\", or a file path",
        ));
    }
}

fn listeners(cfg: &Config, loc: &Locator<'_>, errors: &mut Vec<ConfigError>) {
    if cfg.listeners.is_empty() {
        errors.push(loc.error(
            &(0..0),
            "listeners",
            "no listener is configured",
            "add a table such as [listeners.http] with address = \"0.0.0.0:8080\"",
        ));
    }
    let mut seen = BTreeMap::new();
    if let Some(admin) = &cfg.admin {
        seen.insert(*admin.address.get_ref(), "admin".to_owned());
    }
    for (name, l) in &cfg.listeners {
        let key = format!("listeners.{}", name.get_ref());
        let addr = *l.address.get_ref();
        if addr.port() != 0 {
            if let Some(other) = seen.get(&addr) {
                errors.push(loc.error(
                    &l.address.span(),
                    format!("{key}.address"),
                    format!("{addr} is already used by `{other}`"),
                    "give each listener its own address",
                ));
            } else {
                seen.insert(addr, key.clone());
            }
        }
        if let Some(tls) = &l.tls {
            if *l.h2c.get_ref() {
                errors.push(loc.error(
                    &l.h2c.span(),
                    format!("{key}.h2c"),
                    "h2c is HTTP/2 without TLS and cannot be set on a TLS listener",
                    "remove `h2c`; TLS listeners offer HTTP/2 by ALPN when `http2 = true`",
                ));
            }
            let certs = &tls.get_ref().certificates;
            if certs.is_empty() {
                errors.push(loc.error(
                    &tls.span(),
                    format!("{key}.tls.certificates"),
                    "a TLS listener needs at least one certificate",
                    "add [[listeners.NAME.tls.certificates]] with server_names, cert and key",
                ));
            }
            let mut names = BTreeSet::new();
            let mut defaults = 0;
            for (i, cert) in certs.iter().enumerate() {
                let ckey = format!("{key}.tls.certificates[{i}]");
                let c = cert.get_ref();
                defaults += usize::from(c.default);
                if c.server_names.is_empty() {
                    errors.push(loc.error(
                        &cert.span(),
                        format!("{ckey}.server_names"),
                        "a certificate needs at least one server name",
                        "list the names it is valid for, e.g. server_names = [\"example.com\"]",
                    ));
                }
                for sn in &c.server_names {
                    let n = sn.get_ref().to_ascii_lowercase();
                    if let Err(why) = check_host(&n) {
                        errors.push(loc.error(
                            &sn.span(),
                            format!("{ckey}.server_names"),
                            format!("`{}` {why}", sn.get_ref()),
                            "write a DNS name such as \"example.com\" or \"*.example.com\"",
                        ));
                    } else if !names.insert(n) {
                        errors.push(loc.error(
                            &sn.span(),
                            format!("{ckey}.server_names"),
                            format!("`{}` is listed for two certificates", sn.get_ref()),
                            "each server name picks exactly one certificate; remove one",
                        ));
                    }
                }
            }
            if defaults > 1 {
                errors.push(loc.error(
                    &tls.span(),
                    format!("{key}.tls.certificates"),
                    "more than one certificate has `default = true`",
                    "mark at most one certificate as the default",
                ));
            }
        }
    }
}

fn check_pool(
    name: &Spanned<String>,
    pool: &PoolConfig,
    loc: &Locator<'_>,
    errors: &mut Vec<ConfigError>,
) {
    let key = format!("pools.{}", name.get_ref());
    if let Err(why) = check_name(name.get_ref()) {
        errors.push(loc.error(
            &name.span(),
            key.clone(),
            format!("pool name {why}"),
            "use letters, digits, `-` and `_`",
        ));
    }
    match (&pool.discovery, pool.targets.is_empty()) {
        (None, true) => errors.push(loc.error(
            &name.span(),
            format!("{key}.targets"),
            "the pool has no targets and no discovery source",
            "add targets = [\"http://127.0.0.1:3000\"] or a [pools.NAME.discovery] table",
        )),
        (Some(d), false) => errors.push(loc.error(
            &d.span(),
            format!("{key}.discovery"),
            "a pool has either static targets or a discovery source, not both",
            "remove `targets` or the discovery table",
        )),
        _ => {}
    }
    let mut seen = BTreeSet::new();
    for (i, t) in pool.targets.iter().enumerate() {
        let tkey = format!("{key}.targets[{i}]");
        let target = t.get_ref();
        if let Err(err) = ReverseProxy::try_new("/", target.url.clone()) {
            errors.push(loc.error(
                &t.span(),
                tkey.clone(),
                err.to_string(),
                "write an absolute http:// or https:// URL with a host, e.g. \"http://10.0.0.1:8080\"",
            ));
        }
        if target.weight == 0 {
            errors.push(loc.error(
                &t.span(),
                format!("{tkey}.weight"),
                "weight must be at least 1",
                "remove the target instead of giving it weight 0",
            ));
        }
        if !seen.insert(target.url.as_str()) {
            errors.push(loc.error(
                &t.span(),
                tkey,
                format!("`{}` is listed twice", target.url),
                "list each target once and use `weight` to send it more traffic",
            ));
        }
    }
    if let Some(d) = &pool.discovery {
        let dkey = format!("{key}.discovery");
        let disc = d.get_ref();
        match (&disc.dns, &disc.etcd) {
            (None, None) | (Some(_), Some(_)) => errors.push(loc.error(
                &d.span(),
                dkey.clone(),
                "name exactly one discovery source",
                "write either [pools.NAME.discovery.dns] or [pools.NAME.discovery.etcd]",
            )),
            _ => {}
        }
        if let Some(dns) = &disc.dns {
            let n = dns.name.get_ref().to_ascii_lowercase();
            if n.starts_with("*.") || check_host(&n).is_err() {
                errors.push(loc.error(
                    &dns.name.span(),
                    format!("{dkey}.dns.name"),
                    format!("`{}` is not a DNS name", dns.name.get_ref()),
                    "write a name such as \"api.service.internal\"",
                ));
            }
            let scheme = dns.scheme.get_ref();
            if scheme != "http" && scheme != "https" {
                errors.push(loc.error(
                    &or(dns.scheme.span(), d.span()),
                    format!("{dkey}.dns.scheme"),
                    format!("unknown scheme `{scheme}`"),
                    "write \"http\" or \"https\"",
                ));
            }
            if dns.port.is_none() && dns.record != super::schema::DnsRecord::Srv {
                errors.push(loc.error(
                    &dns.name.span(),
                    format!("{dkey}.dns.port"),
                    "A/AAAA answers carry no port",
                    "add port = 8080 (or use record = \"srv\")",
                ));
            }
            for server in &dns.servers {
                if server.get_ref().port() == 0 {
                    errors.push(loc.error(
                        &server.span(),
                        format!("{dkey}.dns.servers"),
                        "a name server needs a port",
                        "write e.g. \"10.0.0.2:53\"",
                    ));
                }
            }
            if dns.refresh.0 < Duration::from_secs(1) {
                errors.push(loc.error(
                    &dns.name.span(),
                    format!("{dkey}.dns.refresh"),
                    "must be at least 1s",
                    "use e.g. refresh = \"30s\"",
                ));
            }
        }
        if let Some(etcd) = &disc.etcd {
            if etcd.endpoints.is_empty() {
                errors.push(loc.error(
                    &d.span(),
                    format!("{dkey}.etcd.endpoints"),
                    "no etcd endpoint",
                    "add endpoints = [\"http://127.0.0.1:2379\"]",
                ));
            }
            for ep in &etcd.endpoints {
                let url = ep.get_ref();
                if !(url.starts_with("http://") || url.starts_with("https://"))
                    || url
                        .parse::<http::Uri>()
                        .map_or(true, |u| u.host().is_none())
                {
                    errors.push(loc.error(
                        &ep.span(),
                        format!("{dkey}.etcd.endpoints"),
                        format!("`{url}` is not an http(s) URL"),
                        "write e.g. \"http://127.0.0.1:2379\"",
                    ));
                }
            }
            if etcd.prefix.get_ref().is_empty() {
                errors.push(loc.error(
                    &etcd.prefix.span(),
                    format!("{dkey}.etcd.prefix"),
                    "is empty",
                    "write the key prefix of this service, e.g. \"/services/api/\"",
                ));
            }
        }
    }
    let strategy = *pool.strategy.get_ref();
    match (&pool.hash_key, strategy) {
        (None, Strategy::ConsistentHash) => errors.push(loc.error(
            &pool.strategy.span(),
            format!("{key}.hash_key"),
            "consistent_hash needs a hash key",
            "add hash_key = \"client_ip\" (or \"path\", \"header:NAME\", \"cookie:NAME\")",
        )),
        (Some(k), Strategy::ConsistentHash) => {
            if let Err(why) = check_hash_key(k.get_ref()) {
                errors.push(loc.error(
                    &k.span(),
                    format!("{key}.hash_key"),
                    why,
                    "write \"client_ip\", \"path\", \"header:NAME\" or \"cookie:NAME\"",
                ));
            }
        }
        (Some(k), _) => errors.push(loc.error(
            &k.span(),
            format!("{key}.hash_key"),
            format!(
                "hash_key is only used by consistent_hash, not {}",
                strategy.name()
            ),
            "remove hash_key or set strategy = \"consistent_hash\"",
        )),
        (None, _) => {}
    }
    if let Some(hc) = &pool.health_check {
        let hkey = format!("{key}.health_check");
        let h = hc.get_ref();
        let at = |inner: std::ops::Range<usize>| or(inner, hc.span());
        if !h.path.get_ref().starts_with('/') {
            errors.push(loc.error(
                &at(h.path.span()),
                format!("{hkey}.path"),
                "must start with `/`",
                "write e.g. path = \"/health\"",
            ));
        }
        if h.interval.0.is_zero() {
            errors.push(loc.error(
                &hc.span(),
                format!("{hkey}.interval"),
                "must be longer than 0",
                "use e.g. interval = \"10s\"",
            ));
        }
        if h.timeout.get_ref().0.is_zero() || h.timeout.get_ref().0 > h.interval.0 {
            errors.push(loc.error(
                &at(h.timeout.span()),
                format!("{hkey}.timeout"),
                "must be longer than 0 and at most the interval",
                "use e.g. timeout = \"2s\" with interval = \"10s\"",
            ));
        }
        for (field, v) in [
            ("healthy_threshold", &h.healthy_threshold),
            ("unhealthy_threshold", &h.unhealthy_threshold),
        ] {
            if *v.get_ref() == 0 {
                errors.push(loc.error(
                    &at(v.span()),
                    format!("{hkey}.{field}"),
                    "must be at least 1",
                    "use the number of checks in a row that change the state, e.g. 2",
                ));
            }
        }
        if parse_status_range(h.expected_status.get_ref()).is_none() {
            errors.push(loc.error(
                &at(h.expected_status.span()),
                format!("{hkey}.expected_status"),
                format!("`{}` is not a status or range", h.expected_status.get_ref()),
                "write one code (\"200\") or an inclusive range (\"200-399\")",
            ));
        }
    }
    if let Some(od) = &pool.outlier_detection {
        let okey = format!("{key}.outlier_detection");
        let o = od.get_ref();
        let at = |inner: std::ops::Range<usize>| or(inner, od.span());
        if *o.consecutive_failures.get_ref() == 0 {
            errors.push(loc.error(
                &at(o.consecutive_failures.span()),
                format!("{okey}.consecutive_failures"),
                "must be at least 1",
                "the default is 5",
            ));
        }
        if o.max_ejection_time.get_ref().0 < o.base_ejection_time.0 {
            errors.push(loc.error(
                &at(o.max_ejection_time.span()),
                format!("{okey}.max_ejection_time"),
                "is shorter than base_ejection_time",
                "make max_ejection_time at least base_ejection_time",
            ));
        }
        if *o.max_ejection_percent.get_ref() > 100 {
            errors.push(loc.error(
                &at(o.max_ejection_percent.span()),
                format!("{okey}.max_ejection_percent"),
                "is a percentage and cannot exceed 100",
                "the default is 50; at least one endpoint is never ejected",
            ));
        }
    }
    if let Some(r) = &pool.retry {
        let rkey = format!("{key}.retry");
        let rc = r.get_ref();
        let at = |inner: std::ops::Range<usize>| or(inner, r.span());
        let attempts = *rc.attempts.get_ref();
        if !(1..=10).contains(&attempts) {
            errors.push(loc.error(
                &at(rc.attempts.span()),
                format!("{rkey}.attempts"),
                "must be between 1 and 10 (the first attempt included)",
                "3 is a common choice; the retry budget caps the load retries add",
            ));
        }
        if let Some(max) = rc.max_delay
            && max.0 < rc.delay.0
        {
            errors.push(loc.error(
                &r.span(),
                format!("{rkey}.max_delay"),
                "is shorter than delay",
                "make max_delay at least delay",
            ));
        }
        if let Some(b) = &rc.budget {
            let bc = b.get_ref();
            let at = |inner: std::ops::Range<usize>| or(inner, b.span());
            let ttl = bc.ttl.get_ref().0;
            if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl) {
                errors.push(loc.error(
                    &at(bc.ttl.span()),
                    format!("{rkey}.budget.ttl"),
                    "must be between 1s and 60s",
                    "the default is \"10s\"",
                ));
            }
            let ratio = *bc.ratio.get_ref();
            if !(0.0..=1000.0).contains(&ratio) {
                errors.push(loc.error(
                    &at(bc.ratio.span()),
                    format!("{rkey}.budget.ratio"),
                    "must be between 0 and 1000",
                    "0.2 allows retries of up to 20 % of requests",
                ));
            }
        }
    }
    if let Some(limit) = pool.max_body_bytes
        && limit.0 == 0
    {
        errors.push(loc.error(
            &name.span(),
            format!("{key}.max_body_bytes"),
            "must be at least 1",
            "remove the key for no pool-specific limit",
        ));
    }
    if let Some(t) = pool.timeout
        && t.0.is_zero()
    {
        errors.push(loc.error(
            &name.span(),
            format!("{key}.timeout"),
            "must be longer than 0",
            "remove the key for no deadline",
        ));
    }
    if let Some(t) = pool.websocket_connect_timeout
        && t.0.is_zero()
    {
        errors.push(loc.error(
            &name.span(),
            format!("{key}.websocket_connect_timeout"),
            "must be longer than 0 (every WebSocket handshake would time out)",
            "remove the key for the default of 5s",
        ));
    }
    if let Some(t) = pool.upgrade_idle_timeout
        && t.0.is_zero()
    {
        errors.push(loc.error(
            &name.span(),
            format!("{key}.upgrade_idle_timeout"),
            "must be longer than 0 (every WebSocket would be closed at once)",
            "remove the key to keep idle WebSockets open, or use e.g. \"5m\" (above the application's ping interval)",
        ));
    }
    if let TrustedProxiesConfig::List(list) = pool.trusted_proxies.get_ref()
        && let Err(err) = TrustedProxies::list(list)
    {
        errors.push(loc.error(
            &pool.trusted_proxies.span(),
            format!("{key}.trusted_proxies"),
            format!("not a network or address: {err}"),
            "write networks such as \"10.0.0.0/8\" or addresses such as \"127.0.0.1\"",
        ));
    }
    if let Some(s) = &pool.public_scheme
        && s.get_ref() != "http"
        && s.get_ref() != "https"
    {
        errors.push(loc.error(
            &s.span(),
            format!("{key}.public_scheme"),
            format!("unknown scheme `{}`", s.get_ref()),
            "write \"http\" or \"https\"",
        ));
    }
    if let Some(via) = &pool.via
        && (via.is_empty() || HeaderValue::from_str(via).is_err() || via.contains(','))
    {
        errors.push(loc.error(
            &name.span(),
            format!("{key}.via"),
            "is not a usable Via pseudonym",
            "use a short token such as \"edge-1\"",
        ));
    }
}

fn routes(cfg: &Config, loc: &Locator<'_>, errors: &mut Vec<ConfigError>) {
    if cfg.routes.is_empty() {
        errors.push(loc.error(
            &(0..0),
            "routes",
            "no route is configured: every request would get 404",
            "add [[routes]] with prefix = \"/\" and pool = \"NAME\"",
        ));
    }
    let pool_names: Vec<&str> = cfg.pools.keys().map(|k| k.get_ref().as_str()).collect();
    let mut seen: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        let route: &RouteConfig = r.get_ref();
        if let Some(name) = &route.name
            && let Some(first) = names.insert(name.clone(), i)
        {
            errors.push(loc.error(
                &r.span(),
                format!("{key}.name"),
                format!("routes[{first}] is already named `{name}`"),
                "route names label metrics and logs; give each route its own",
            ));
        }
        if !cfg.pools.contains_key(route.pool.get_ref().as_str()) {
            errors.push(loc.error(
                &route.pool.span(),
                format!("{key}.pool"),
                format!("no pool is named `{}`", route.pool.get_ref()),
                if pool_names.is_empty() {
                    "define it with a [pools.NAME] table".to_owned()
                } else {
                    format!("the pools are: {}", pool_names.join(", "))
                },
            ));
        }
        let prefix = route.prefix.get_ref();
        if !prefix.starts_with('/') || prefix.contains(['?', '#', ' ']) {
            errors.push(loc.error(
                &route.prefix.span(),
                format!("{key}.prefix"),
                format!("`{prefix}` is not a path prefix"),
                "start it with `/` and leave out query and fragment, e.g. \"/api\"",
            ));
        }
        for h in &route.hosts {
            if let Err(why) = check_host(&h.get_ref().to_ascii_lowercase()) {
                errors.push(loc.error(
                    &h.span(),
                    format!("{key}.hosts"),
                    format!("`{}` {why}", h.get_ref()),
                    "write a host name without port, e.g. \"api.example.com\" or \"*.example.com\"",
                ));
            }
        }
        let listener_names: Vec<String> = match &route.listeners {
            Some(ls) => {
                if ls.is_empty() {
                    errors.push(loc.error(
                        &r.span(),
                        format!("{key}.listeners"),
                        "an empty list serves the route nowhere",
                        "remove the key to serve it on every listener",
                    ));
                }
                for l in ls {
                    if !cfg.listeners.contains_key(l.get_ref().as_str()) {
                        errors.push(loc.error(
                            &l.span(),
                            format!("{key}.listeners"),
                            format!("no listener is named `{}`", l.get_ref()),
                            format!(
                                "the listeners are: {}",
                                cfg.listeners
                                    .keys()
                                    .map(|k| k.get_ref().as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ));
                    }
                }
                ls.iter().map(|l| l.get_ref().clone()).collect()
            }
            None => cfg.listeners.keys().map(|k| k.get_ref().clone()).collect(),
        };
        let hosts: Vec<String> = if route.hosts.is_empty() {
            vec!["*".to_owned()]
        } else {
            route
                .hosts
                .iter()
                .map(|h| h.get_ref().to_ascii_lowercase())
                .collect()
        };
        let norm_prefix = normalize_prefix(prefix).to_owned();
        for l in &listener_names {
            for h in &hosts {
                if let Some(first) = seen.insert((l.clone(), h.clone(), norm_prefix.clone()), i) {
                    errors.push(loc.error(
                        &route.prefix.span(),
                        format!("{key}.prefix"),
                        format!(
                            "host `{h}` and prefix `{prefix}` on listener `{l}` are already routed by routes[{first}]"
                        ),
                        "merge the two routes or change one's hosts or prefix",
                    ));
                }
            }
        }
        header_rules(
            &route.request_headers,
            &format!("{key}.request_headers"),
            loc,
            errors,
        );
        header_rules(
            &route.response_headers,
            &format!("{key}.response_headers"),
            loc,
            errors,
        );
    }
}

fn header_rules(rules: &HeaderRules, key: &str, loc: &Locator<'_>, errors: &mut Vec<ConfigError>) {
    let names = rules
        .set
        .keys()
        .map(|n| ("set", n))
        .chain(rules.add.keys().map(|n| ("add", n)))
        .chain(rules.remove.iter().map(|n| ("remove", n)));
    for (op, n) in names {
        match HeaderName::from_bytes(n.get_ref().as_bytes()) {
            Err(_) => errors.push(loc.error(
                &n.span(),
                format!("{key}.{op}"),
                format!("`{}` is not a header name", n.get_ref()),
                "header names are tokens such as \"x-request-source\"",
            )),
            // The proxy manages these: changing them would break WebSocket and other
            // upgrades (and keep-alive) on the route.
            Ok(name) if name == http::header::CONNECTION || name == http::header::UPGRADE => {
                errors.push(loc.error(
                    &n.span(),
                    format!("{key}.{op}"),
                    format!(
                        "`{}` is a hop-by-hop header the proxy manages (WebSocket upgrades need it)",
                        n.get_ref()
                    ),
                    "remove this entry",
                ));
            }
            Ok(_) => {}
        }
    }
    for v in rules.set.values().chain(rules.add.values()) {
        if HeaderValue::from_str(v.get_ref()).is_err() {
            errors.push(loc.error(
                &v.span(),
                key.to_owned(),
                "the value has characters a header cannot carry (control characters or non-ASCII)",
                "use visible ASCII characters only",
            ));
        }
    }
}

/// `inner`, or `outer` when `inner` is the empty span of a default value.
fn or(inner: std::ops::Range<usize>, outer: std::ops::Range<usize>) -> std::ops::Range<usize> {
    if inner == (0..0) { outer } else { inner }
}

/// `/api/` and `/api` are the same prefix; `/` stays `/`.
pub(crate) fn normalize_prefix(prefix: &str) -> &str {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }
}

/// A DNS name, optionally with a leading `*.` wildcard label.
pub(crate) fn check_host(host: &str) -> Result<(), &'static str> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Err("is not a host name");
    }
    if name.contains(':') {
        return Err("has a port or is an IPv6 address; hosts are matched without port");
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-');
        if !ok {
            return Err("is not a host name (wildcards are allowed only as a leading `*.`)");
        }
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err("must be non-empty letters, digits, `-`, `_` or `.`");
    }
    Ok(())
}

fn check_hash_key(key: &str) -> Result<(), String> {
    match key.split_once(':') {
        None if key == "path" || key == "client_ip" => Ok(()),
        Some(("header", name)) if HeaderName::from_bytes(name.as_bytes()).is_ok() => Ok(()),
        Some(("cookie", name)) if !name.is_empty() && !name.contains([';', '=', ' ']) => Ok(()),
        _ => Err(format!("`{key}` is not a hash key")),
    }
}

/// `"200"` or `"200-399"`, within 100..=599.
pub(crate) fn parse_status_range(text: &str) -> Option<(u16, u16)> {
    let (lo, hi) = match text.split_once('-') {
        Some((lo, hi)) => (lo.trim().parse().ok()?, hi.trim().parse().ok()?),
        None => {
            let code = text.trim().parse().ok()?;
            (code, code)
        }
    };
    ((100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi).then_some((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert!(check_host("example.com").is_ok());
        assert!(check_host("*.example.com").is_ok());
        assert!(check_host("localhost").is_ok());
        assert!(check_host("a.*.com").is_err());
        assert!(check_host("example.com:80").is_err());
        assert!(check_host("").is_err());
        assert!(check_host("-bad.com").is_err());
    }

    #[test]
    fn statuses() {
        assert_eq!(parse_status_range("200-399"), Some((200, 399)));
        assert_eq!(parse_status_range("204"), Some((204, 204)));
        assert_eq!(parse_status_range("399-200"), None);
        assert_eq!(parse_status_range("600"), None);
        assert_eq!(parse_status_range("ok"), None);
    }

    /// The errors of a minimal file with `server` as its `[server]` table.
    fn server_errors(server: &str) -> Vec<ConfigError> {
        let toml = format!(
            "[server]\n{server}\n[listeners.l]\naddress = \"127.0.0.1:0\"\n[pools.p]\ntargets = [\"http://a:1\"]\n[[routes]]\npool = \"p\"\n"
        );
        match crate::config::parse("x.toml", toml, ".".into(), false) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0,
        }
    }

    #[test]
    fn limit_keys_are_checked_at_their_line() {
        for (server, key, message) in [
            (
                "max_header_count = 0",
                "server.max_header_count",
                "between 1 and 1000",
            ),
            (
                "max_header_count = 5000",
                "server.max_header_count",
                "between 1 and 1000",
            ),
            (
                "max_uri_bytes = 100",
                "server.max_uri_bytes",
                "between 256 and 65534",
            ),
            (
                "max_uri_bytes = \"1MiB\"",
                "server.max_uri_bytes",
                "between 256 and 65534",
            ),
            (
                "max_header_bytes = 8192\nmax_uri_bytes = \"16KiB\"",
                "server.max_uri_bytes",
                "larger than server.max_header_bytes (8192 bytes)",
            ),
            (
                "http2_max_concurrent_streams = 0",
                "server.http2_max_concurrent_streams",
                "between 1 and 10000",
            ),
            (
                "http2_max_reset_streams = 2000000",
                "server.http2_max_reset_streams",
                "at most 1000000",
            ),
        ] {
            let errors = server_errors(server);
            assert_eq!(errors.len(), 1, "{server}: {errors:?}");
            let e = &errors[0];
            assert_eq!(e.key, key, "{server}");
            assert!(e.message.contains(message), "{server}: {}", e.message);
            assert!(!e.hint.is_empty(), "{server}");
            // The line of the offending value (the `[server]` header is line 1).
            assert_eq!(e.line, 1 + server.lines().count(), "{server}");
        }
        for fine in [
            "max_header_count = 1000",
            "max_uri_bytes = 256",
            "max_header_bytes = 8192\nmax_uri_bytes = 8192",
            "http2_max_concurrent_streams = 1",
            "http2_max_reset_streams = 0",
        ] {
            assert!(server_errors(fine).is_empty(), "{fine}");
        }
    }

    #[test]
    fn prefixes() {
        assert_eq!(normalize_prefix("/"), "/");
        assert_eq!(normalize_prefix("/api/"), "/api");
        assert_eq!(normalize_prefix("/api"), "/api");
    }
}
