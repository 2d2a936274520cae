//! The server binary, run as a user would.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn version_and_help() {
    let bin = env!("CARGO_BIN_EXE_axum-reverse-proxy");
    let out = Command::new(bin).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("axum-reverse-proxy"));
    let out = Command::new(bin).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--upstream"));
}

#[test]
fn invalid_upstream_is_an_error() {
    let bin = env!("CARGO_BIN_EXE_axum-reverse-proxy");
    let out = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--upstream", "ftp://nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("scheme"));
}

#[tokio::test]
async fn demo_answers() {
    let bin = env!("CARGO_BIN_EXE_axum-reverse-proxy");
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The demo prints its real address, then "Ctrl-C to stop." once it is bound.
    let stdout = child.stdout.take().unwrap();
    let mut printed = String::new();
    let mut proxy = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if let Some(url) = line.trim().strip_prefix("proxy") {
            proxy = url.trim().strip_prefix("on ").map(str::to_owned);
        }
        if line.contains("Ctrl-C") {
            break;
        }
    }
    assert!(printed.contains("curl"), "{printed}");
    let proxy = proxy.unwrap_or_else(|| panic!("no proxy address in {printed}"));
    let resp = reqwest::get(format!("{proxy}/users/42?verbose=1")).await;
    let _ = child.kill();
    let _ = child.wait();
    let resp = resp.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert!(body.contains("'users' upstream"), "{body}");
    assert!(body.contains("path: /42?verbose=1"), "{body}");
    assert!(body.contains("x-forwarded-for: 127.0.0.1"), "{body}");
}
