//! The `axum-reverse-proxy` server binary. Everything is in the library target
//! (`lib.rs`), which holds the server's modules.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    axum_reverse_proxy_server::main()
}
