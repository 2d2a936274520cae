//! The `axum-reverse-proxy` server binary. Everything is in the library target
//! (`lib.rs`), which holds the server's modules.
#![forbid(unsafe_code)]

/// mimalloc instead of the system allocator: a proxied request makes a few dozen small,
/// short-lived allocations (request and response heads, header maps, boxed bodies and
/// futures), and glibc's malloc spent about a third of the server's instructions on
/// them (see `bench/README.md`). mimalloc also returns freed pages to the system, so the
/// buffers an idle connection gives back lower the process's RSS.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    axum_reverse_proxy_server::main()
}
