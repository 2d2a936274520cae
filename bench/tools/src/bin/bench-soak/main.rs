//! The soak test (`bench/soak.sh`): mixed load through the release server while its
//! upstreams churn, with faults injected, checking that clients see no unexpected error and
//! that the proxy's memory stays flat.
//!
//! ```text
//! bench-soak run --proxy-bin PATH --workdir DIR [--seconds N] [--warmup S] [--seed X]
//! bench-soak upstream ADDR NAME     # the soak upstream (started by `run`)
//! bench-soak fault-upstream ADDR    # the misbehaving upstream (started by `run`)
//! ```
//!
//! The rooms: `run.rs` starts etcd, the upstreams and the proxy, and drives the churn;
//! `load.rs` sends the traffic and classifies every outcome; `report.rs` keeps the counts
//! and prints the summary; `upstream.rs` is both upstreams.

mod load;
mod report;
mod run;
mod upstream;

/// The small response body.
pub const SMALL: &[u8] = b"hello, world\n";
pub const MIB: usize = 1024 * 1024;

/// `len` bytes of a pattern that shows misplaced or repeated chunks: byte `i` is `i % 251`
/// (a prime, so no power-of-two chunk lines up with it).
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A small xorshift generator: reproducible choices from a printed seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: bench-soak run --proxy-bin PATH --workdir DIR [--seconds N] [--warmup S] [--seed X]\n\
         \x20      bench-soak upstream ADDR NAME\n\
         \x20      bench-soak fault-upstream ADDR"
    );
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The upstreams are many small processes: one thread each. The runner has two.
    let runtime = match args.first().map(String::as_str) {
        Some("run") => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    }
    .expect("runtime");
    match args.first().map(String::as_str) {
        Some("upstream") if args.len() == 3 => {
            runtime.block_on(upstream::serve(args[1].clone(), args[2].clone()));
        }
        Some("fault-upstream") if args.len() == 2 => {
            runtime.block_on(upstream::serve_faults(args[1].clone()));
        }
        Some("run") => {
            let options = run::Options::parse(&args[1..]).unwrap_or_else(|e| {
                eprintln!("bench-soak: {e}");
                usage()
            });
            let code = runtime.block_on(run::run(options));
            // Child processes are killed on drop; leave without waiting for stray tasks.
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            std::process::exit(code);
        }
        _ => usage(),
    }
}
