//! Every kind of configuration error names the file, the line, the key and a fix, and
//! exits with code 2 — for `--check` and for `--config` alike.

mod common;

use std::process::Command;

use common::{BIN, TempDir};

struct Case {
    name: &'static str,
    toml: &'static str,
    /// `file:line:` is checked with the temp file's path.
    line: usize,
    key: &'static str,
    message: &'static str,
    hint: &'static str,
}

const BASE: &str = r#"[listeners.web]
address = "127.0.0.1:0"

[pools.app]
targets = ["http://127.0.0.1:3000"]

[[routes]]
prefix = "/"
pool = "app"
"#;

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "unknown key",
            toml: "[server]\nmax_conections = 5\n",
            line: 2,
            key: "server.max_conections",
            message: "unknown field `max_conections`",
            hint: "hint: remove the key or fix its spelling",
        },
        Case {
            name: "syntax",
            toml: "[listeners.web\naddress = \"127.0.0.1:0\"\n",
            line: 1,
            key: "",
            message: "expected `]`",
            hint: "hint: check the TOML syntax",
        },
        Case {
            name: "wrong type",
            toml: "[server]\nmax_connections = \"many\"\n",
            line: 2,
            key: "server.max_connections",
            message: "invalid type",
            hint: "hint: change the value to the expected type",
        },
        Case {
            name: "bad duration",
            toml: "[server]\nidle_timeout = \"5 parsecs\"\n",
            line: 2,
            key: "server.idle_timeout",
            message: "invalid duration `5 parsecs`",
            hint: "hint:",
        },
        Case {
            name: "bad address",
            toml: "[listeners.web]\naddress = \"localhost:http\"\n",
            line: 2,
            key: "listeners.web.address",
            message: "socket address",
            hint: "hint: write an IP address and a port",
        },
        Case {
            name: "unknown strategy",
            toml: "[pools.app]\ntargets = [\"http://a:1\"]\nstrategy = \"fastest\"\n",
            line: 3,
            key: "pools.app.strategy",
            message: "unknown variant `fastest`",
            hint: "hint: use one of the values listed above",
        },
        Case {
            name: "missing pool key in a route",
            toml: "[listeners.web]\naddress = \"127.0.0.1:0\"\n\n[[routes]]\nprefix = \"/\"\n",
            line: 4,
            key: "routes.pool",
            message: "missing field `pool`",
            hint: "hint: add `pool = ...`",
        },
    ]
}

/// Semantic errors, found after parsing, still point at their line: appended to BASE.
fn semantic_cases() -> Vec<Case> {
    vec![
        Case {
            name: "route to an unknown pool",
            toml: "\n[[routes]]\nprefix = \"/api\"\npool = \"ap\"\n",
            line: 13,
            key: "routes[1].pool",
            message: "no pool is named `ap`",
            hint: "hint: the pools are: app",
        },
        Case {
            name: "invalid target URL",
            toml: "\n[pools.bad]\ntargets = [\"ftp://x\"]\n",
            line: 12,
            key: "pools.bad.targets[0]",
            message: "scheme",
            hint: "hint: write an absolute http:// or https:// URL",
        },
        Case {
            name: "etcd authentication",
            toml: "\n[pools.e]\n[pools.e.discovery.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\nprefix = \"/svc/\"\nusername = \"u\"\npassword = \"p\"\n",
            line: 12,
            key: "pools.e.discovery.etcd.username",
            message: "etcd authentication is not supported yet",
            hint: "hint: remove username and password",
        },
        Case {
            name: "DNS name server without port",
            toml: "\n[pools.d]\n[pools.d.discovery.dns]\nname = \"api.internal\"\nport = 80\nservers = [\"127.0.0.1:0\"]\n",
            line: 15,
            key: "pools.d.discovery.dns.servers",
            message: "a name server needs a port",
            hint: "hint: write e.g.",
        },
        Case {
            name: "consistent hash without key",
            toml: "\n[pools.h]\ntargets = [\"http://a:1\"]\nstrategy = \"consistent_hash\"\n",
            line: 13,
            key: "pools.h.hash_key",
            message: "consistent_hash needs a hash key",
            hint: "hint: add hash_key",
        },
        Case {
            name: "bad trusted proxies",
            toml: "\n[pools.t]\ntargets = [\"http://a:1\"]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
            line: 13,
            key: "pools.t.trusted_proxies",
            message: "not a network or address",
            hint: "hint: write networks",
        },
        Case {
            name: "bad header name",
            toml: "\n[[routes]]\nprefix = \"/h\"\npool = \"app\"\n[routes.request_headers]\nremove = [\"bad header\"]\n",
            line: 15,
            key: "routes[1].request_headers.remove",
            message: "`bad header` is not a header name",
            hint: "hint: header names are tokens",
        },
        Case {
            name: "a header rule removing Upgrade",
            toml: "\n[[routes]]\nprefix = \"/h\"\npool = \"app\"\n[routes.request_headers]\nremove = [\"Upgrade\"]\n",
            line: 15,
            key: "routes[1].request_headers.remove",
            message: "`Upgrade` is a hop-by-hop header the proxy manages",
            hint: "hint: remove this entry",
        },
        Case {
            name: "a header rule setting Connection",
            toml: "\n[[routes]]\nprefix = \"/h\"\npool = \"app\"\n[routes.response_headers]\nset = { connection = \"close\" }\n",
            line: 15,
            key: "routes[1].response_headers.set",
            message: "`connection` is a hop-by-hop header the proxy manages",
            hint: "hint: remove this entry",
        },
        Case {
            name: "a zero upgrade idle timeout",
            toml: "\n[pools.ws]\ntargets = [\"http://127.0.0.1:3001\"]\nupgrade_idle_timeout = \"0s\"\n",
            line: 11,
            key: "pools.ws.upgrade_idle_timeout",
            message: "must be longer than 0",
            hint: "hint: remove the key to keep idle WebSockets open",
        },
        Case {
            name: "a zero WebSocket connect timeout",
            toml: "\n[pools.ws]\ntargets = [\"http://127.0.0.1:3001\"]\nwebsocket_connect_timeout = \"0ms\"\n",
            line: 11,
            key: "pools.ws.websocket_connect_timeout",
            message: "must be longer than 0",
            hint: "hint: remove the key for the default of 5s",
        },
        Case {
            name: "duplicate route",
            toml: "\n[[routes]]\nprefix = \"/\"\npool = \"app\"\n",
            line: 12,
            key: "routes[1].prefix",
            message: "already routed by routes[0]",
            hint: "hint: merge the two routes",
        },
        Case {
            name: "missing certificate file",
            toml: "\n[listeners.tls]\naddress = \"127.0.0.1:0\"\n[[listeners.tls.tls.certificates]]\nserver_names = [\"a.test\"]\ncert = \"nope.pem\"\nkey = \"nope.key\"\n",
            line: 15,
            key: "listeners.tls.tls.certificates[0].cert",
            message: "cannot read certificates from",
            hint: "hint: give a readable PEM file",
        },
    ]
}

fn run(flag: &str, case: &Case, toml: &str) {
    let dir = TempDir::new("cfgerr");
    let path = dir.write("proxy.toml", toml);
    let out = Command::new(BIN)
        .args([flag, path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ctx = format!("case `{}` with {flag}:\n{toml}\n---\n{stderr}", case.name);
    assert_eq!(out.status.code(), Some(2), "{ctx}");
    let place = format!("error: {}:{}:", path.display(), case.line);
    assert!(stderr.contains(&place), "expected `{place}` in {ctx}");
    if !case.key.is_empty() {
        assert!(
            stderr.contains(&format!("`{}`", case.key)),
            "key missing in {ctx}"
        );
    }
    assert!(stderr.contains(case.message), "message missing in {ctx}");
    assert!(stderr.contains(case.hint), "hint missing in {ctx}");
    assert!(!stderr.contains("panicked"), "{ctx}");
}

#[test]
fn parse_errors_name_file_line_key_and_hint() {
    for case in cases() {
        run("--check", &case, case.toml);
    }
}

#[test]
fn semantic_errors_keep_their_line() {
    for case in semantic_cases() {
        let toml = format!("{BASE}{}", case.toml);
        run("--check", &case, &toml);
        // Running the file fails the same way, before binding anything.
        run("--config", &case, &toml);
    }
}

#[test]
fn all_semantic_errors_are_reported_at_once() {
    let dir = TempDir::new("cfgerr-many");
    let toml = format!("{BASE}\n[[routes]]\nprefix = \"nope\"\npool = \"missing\"\n");
    let path = dir.write("proxy.toml", &toml);
    let out = Command::new(BIN)
        .args(["--check", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr.matches("error: ").count(), 2, "{stderr}");
    assert!(stderr.contains("no pool is named `missing`"), "{stderr}");
    assert!(stderr.contains("`nope` is not a path prefix"), "{stderr}");
}

#[test]
fn a_missing_file_is_an_error() {
    let out = Command::new(BIN)
        .args(["--check", "/nonexistent/proxy.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/proxy.toml: cannot read the file"),
        "{stderr}"
    );
    assert!(stderr.contains("hint: check the path"), "{stderr}");
}

#[test]
fn an_address_in_use_is_a_runtime_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = TempDir::new("cfgerr-bind");
    let toml = BASE.replace("127.0.0.1:0", &addr.to_string());
    let path = dir.write("proxy.toml", &toml);
    let out = Command::new(BIN)
        .args(["--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:2: cannot listen on {addr}", path.display())),
        "{stderr}"
    );
}
