//! The runner: etcd, four churned upstreams, the fault upstream and the proxy as child
//! processes; the churn (etcd registrations, drains, restarts, crashes, configuration
//! reloads); RSS and fd samples of the proxy; the verdict.

use std::fmt::Write as _;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

use crate::Rng;
use crate::load::Load;
use crate::report::Stats;

/// Growth of the proxy's RSS between the end of warm-up and the end that fails the run.
const MAX_RSS_GROWTH: f64 = 0.10;
/// How long a deregistered upstream keeps running before it is stopped.
const DRAIN: Duration = Duration::from_secs(5);
/// How long a crashed upstream stays dead (still registered) before it restarts.
const CRASH_DOWN: Duration = Duration::from_secs(3);
/// A churn action this often.
const CHURN_EVERY: Duration = Duration::from_secs(2);
/// A configuration reload this often.
const RELOAD_EVERY: Duration = Duration::from_secs(15);
const UPSTREAMS: usize = 4;

pub struct Options {
    proxy_bin: PathBuf,
    etcd_bin: String,
    workdir: PathBuf,
    seconds: u64,
    warmup: Option<u64>,
    seed: u64,
    scale: f64,
    sample_every: u64,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            proxy_bin: PathBuf::new(),
            etcd_bin: "etcd".to_owned(),
            workdir: PathBuf::new(),
            seconds: 600,
            warmup: None,
            seed: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1),
            scale: 1.0,
            sample_every: 1,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or(format!("{flag} needs a value"))?;
            let bad = |_| format!("bad value for {flag}: {value}");
            match flag.as_str() {
                "--proxy-bin" => o.proxy_bin = value.into(),
                "--etcd-bin" => o.etcd_bin = value.clone(),
                "--workdir" => o.workdir = value.into(),
                "--seconds" => o.seconds = value.parse().map_err(bad)?,
                "--warmup" => o.warmup = Some(value.parse().map_err(bad)?),
                "--seed" => o.seed = value.parse().map_err(bad)?,
                "--scale" => o.scale = value.parse().map_err(|_| format!("bad --scale {value}"))?,
                "--sample-every" => o.sample_every = value.parse().map_err(bad)?,
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        if o.proxy_bin.as_os_str().is_empty() || o.workdir.as_os_str().is_empty() {
            return Err("--proxy-bin and --workdir are required".to_owned());
        }
        if o.seconds < 10 {
            return Err("--seconds must be at least 10".to_owned());
        }
        o.sample_every = o.sample_every.max(1);
        Ok(o)
    }

    /// The RSS baseline is taken this far in: 60 s, or a third of a short run.
    fn warmup(&self) -> u64 {
        self.warmup
            .unwrap_or(if self.seconds >= 180 {
                60
            } else {
                self.seconds / 3
            })
            .min(self.seconds - 1)
    }
}

/// Run the soak; the process exit code (0 pass, 1 fail, 2 setup error, 130 interrupted).
pub async fn run(options: Options) -> i32 {
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    // Dropping `soak` (on a signal or past the hard limit) drops the children, which
    // kills them. Setup, the load's own deadlines and the shutdown fit well within it.
    let limit = Duration::from_secs(options.seconds + 240);
    tokio::select! {
        code = tokio::time::timeout(limit, soak(&options)) => code.unwrap_or_else(|_| {
            eprintln!("bench-soak: still running {} s past the end: giving up", limit.as_secs() - options.seconds);
            1
        }),
        _ = interrupt.recv() => { eprintln!("bench-soak: interrupted"); 130 }
        _ = terminate.recv() => { eprintln!("bench-soak: terminated"); 130 }
    }
}

struct Ports {
    proxy: u16,
    admin: u16,
    etcd: u16,
    etcd_peer: u16,
    fault: u16,
    refused: u16,
    upstreams: Vec<u16>,
}

async fn soak(o: &Options) -> i32 {
    match soak_inner(o).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench-soak: setup failed: {e}");
            2
        }
    }
}

async fn soak_inner(o: &Options) -> Result<i32, String> {
    std::fs::create_dir_all(&o.workdir).map_err(|e| format!("{}: {e}", o.workdir.display()))?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let ports = Ports {
        proxy: free_port()?,
        admin: free_port()?,
        etcd: free_port()?,
        etcd_peer: free_port()?,
        fault: free_port()?,
        refused: free_port()?,
        upstreams: (0..UPSTREAMS)
            .map(|_| free_port())
            .collect::<Result<_, _>>()?,
    };
    println!(
        "seed {}, {} s, RSS baseline at {} s, workdir {}",
        o.seed,
        o.seconds,
        o.warmup(),
        o.workdir.display()
    );

    // etcd, on loopback, in the work directory.
    let mut etcd = start_etcd(o, &ports)?;
    let etcd_addr = SocketAddr::from(([127, 0, 0, 1], ports.etcd));
    wait_for(Duration::from_secs(20), || async {
        etcd_call(etcd_addr, "/v3/kv/range", r#"{"key":"AA=="}"#.to_owned())
            .await
            .is_ok()
    })
    .await
    .map_err(|_| "etcd did not answer in 20 s (see etcd.log)".to_owned())?;
    if let Ok(Some(status)) = etcd.try_wait() {
        return Err(format!("etcd exited: {status}"));
    }

    // The upstreams, all registered.
    let _fault = start_child(&exe, &["fault-upstream", &addr(ports.fault)], &o.workdir).await?;
    let mut churn = Churn::new(&exe, &ports, etcd_addr, o.seed, &o.workdir);
    for i in 0..UPSTREAMS {
        churn.start(i).await?;
        churn.register(i).await?;
    }

    // The proxy.
    let config_path = o.workdir.join("soak.toml");
    write_config(&config_path, &ports, 1)?;
    let mut proxy = start_proxy(o, &config_path).await?;
    let pid = proxy.id().ok_or("the proxy has no pid")?;
    let proxy_addr = SocketAddr::from(([127, 0, 0, 1], ports.proxy));
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], ports.admin));
    wait_for(Duration::from_secs(10), || async {
        let text = http_get(admin_addr, "/upstreams").await.unwrap_or_default();
        text.matches("\"healthy\"").count() >= 2 * UPSTREAMS
    })
    .await
    .map_err(|_| "the proxy's etcd pools did not fill in 10 s".to_owned())?;
    println!(
        "proxy pid {pid} on {proxy_addr} (admin {admin_addr}), etcd on {etcd_addr}, \
         upstreams on {:?}, fault upstream on {}",
        ports.upstreams, ports.fault
    );

    // Load, churn, samples.
    let start = Instant::now();
    let deadline = start + Duration::from_secs(o.seconds);
    let stats = Arc::new(Stats::new(start));
    churn.stats = Some(Arc::clone(&stats));
    churn.start = start;
    let load = Arc::new(Load::new(
        proxy_addr,
        Arc::clone(&stats),
        deadline,
        o.scale,
        o.seed,
    ));
    let workers = load.spawn();
    let mut samples = vec![Sample::take(pid, 0.0)];
    let mut next_sample = start + Duration::from_secs(o.sample_every);
    let mut next_churn = start + CHURN_EVERY;
    let mut next_reload = start + RELOAD_EVERY;
    let mut generation = 1u64;
    let mut proxy_died = None;
    let mut last_progress = start;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = Instant::now();
        if let Ok(Some(status)) = proxy.try_wait() {
            proxy_died = Some(status.to_string());
            break;
        }
        if now >= next_sample || now >= deadline {
            samples.push(Sample::take(pid, (now - start).as_secs_f64()));
            next_sample += Duration::from_secs(o.sample_every);
        }
        if now >= deadline {
            break;
        }
        churn.advance().await;
        if now >= next_churn {
            churn.act().await;
            next_churn += CHURN_EVERY;
        }
        if now >= next_reload {
            generation += 1;
            if let Err(e) = write_config(&config_path, &ports, generation) {
                eprintln!("bench-soak: {e}");
            }
            churn.events.reloads += 1;
            churn.note(format!("configuration generation {generation} written"));
            next_reload += RELOAD_EVERY;
        }
        if now - last_progress >= Duration::from_secs(30) {
            last_progress = now;
            let s = samples.last().expect("a sample");
            println!(
                "t={:>4.0}s requests {} unexpected {} rss {} KiB fds {}",
                (now - start).as_secs_f64(),
                stats.total(),
                stats.unexpected(),
                s.rss_kib,
                s.fds
            );
        }
    }
    let elapsed = start.elapsed();

    // Let the requests in flight finish (each has its own deadline).
    let finish = Instant::now() + Duration::from_secs(20);
    for worker in workers {
        let left = finish.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, worker).await.is_err() {
            eprintln!("bench-soak: a load worker did not finish");
        }
    }
    let metrics = http_get(admin_addr, "/metrics").await.unwrap_or_default();
    let upstreams = http_get(admin_addr, "/upstreams").await.unwrap_or_default();
    let _ = std::fs::write(o.workdir.join("metrics.txt"), &metrics);
    let _ = std::fs::write(o.workdir.join("upstreams.json"), &upstreams);
    let idle = Sample::take(pid, start.elapsed().as_secs_f64());

    // Stop the proxy the way an operator would.
    let shutdown = if proxy_died.is_none() {
        send_signal(pid, "TERM");
        match tokio::time::timeout(Duration::from_secs(15), proxy.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            _ => {
                let _ = proxy.start_kill();
                "did not exit in 15 s after SIGTERM (killed)".to_owned()
            }
        }
    } else {
        "-".to_owned()
    };
    churn.stop_all().await;

    // ===== the report =====
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n== soak summary: {:.0} s of load, seed {} ==\n",
        elapsed.as_secs_f64(),
        o.seed
    );
    out.push_str(&stats.table());
    let e = &churn.events;
    let _ = writeln!(
        out,
        "\nchurn: {} registrations, {} deregistrations, {} re-keys, {} drained restarts, \
         {} crashes (SIGKILL while registered), {} kills of deregistered upstreams, \
         {} configuration reloads written",
        e.registrations,
        e.deregistrations,
        e.rekeys,
        e.restarts,
        e.crashes,
        e.quiet_kills,
        e.reloads
    );
    let _ = writeln!(
        out,
        "proxy metrics at the end: {}",
        metric_summary(&metrics)
    );

    let csv: String = samples
        .iter()
        .map(|s| format!("{:.1},{},{},{}\n", s.t, s.rss_kib, s.fds, s.threads))
        .collect();
    let _ = std::fs::write(
        o.workdir.join("rss.csv"),
        format!("t,rss_kib,fds,threads\n{csv}"),
    );
    let every = (10 / o.sample_every as usize).max(1);
    let shown: Vec<Sample> = samples
        .iter()
        .enumerate()
        .filter(|(i, _)| i % every == 0 || *i == samples.len() - 1)
        .map(|(_, s)| *s)
        .collect();
    let _ = writeln!(
        out,
        "\nproxy RSS / fds every {} s (sampled every {} s: rss.csv):",
        every as u64 * o.sample_every,
        o.sample_every
    );
    for chunk in shown.chunks(6) {
        let line: Vec<String> = chunk
            .iter()
            .map(|s| format!("{:>4.0}s {:>6} KiB {:>3} fd", s.t, s.rss_kib, s.fds))
            .collect();
        let _ = writeln!(out, "  {}", line.join(" | "));
    }
    // The RSS of this ~20 MB process swings by a megabyte or two from one second to the
    // next (bodies in flight, allocator caches), so single samples compare the swing, not
    // the level: compare the median of the samples of the minute after warm-up with the
    // median of the last minute (each window a fifth of the time after warm-up at most).
    let warmup = o.warmup() as f64;
    let last = samples.last().copied().expect("a sample");
    let first = samples[0];
    let after_warmup: Vec<Sample> = samples.iter().filter(|s| s.t >= warmup).copied().collect();
    let window = (60 / o.sample_every as usize).clamp(1, (after_warmup.len() / 5).max(1));
    let median = |s: &[Sample]| {
        let mut v: Vec<u64> = s.iter().map(|s| s.rss_kib).collect();
        v.sort_unstable();
        v[v.len() / 2] as f64
    };
    let growth = (after_warmup.len() >= 2).then(|| {
        let base = median(&after_warmup[..window]);
        let end = median(&after_warmup[after_warmup.len() - window..]);
        let _ = writeln!(
            out,
            "RSS: start {} KiB; after warm-up {:.0} KiB (median of {window} samples from {:.0} s); \
             end {:.0} KiB (median of the last {window}, to {:.0} s): {:+.1} % (limit +{:.0} %); \
             single samples {} KiB at {:.0} s and {} KiB at {:.0} s; after the load stopped {} KiB",
            first.rss_kib,
            base,
            after_warmup[0].t,
            end,
            last.t,
            (end - base) / base * 100.0,
            MAX_RSS_GROWTH * 100.0,
            after_warmup[0].rss_kib,
            after_warmup[0].t,
            last.rss_kib,
            last.t,
            idle.rss_kib
        );
        (end - base) / base.max(1.0)
    });
    let _ = writeln!(
        out,
        "fds: start {}, end {}, after the load stopped {}; threads: start {}, end {}",
        first.fds, last.fds, idle.fds, first.threads, last.threads
    );
    let _ = writeln!(out, "proxy shutdown (SIGTERM): {shutdown}");

    let mut failures = Vec::new();
    let unexpected = stats.unexpected();
    if unexpected > 0 {
        failures.push(format!("{unexpected} unexpected error(s)"));
    }
    if let Some(status) = &proxy_died {
        failures.push(format!("the proxy exited during the run: {status}"));
    }
    match growth {
        Some(g) if g > MAX_RSS_GROWTH => {
            failures.push(format!("RSS grew {:.1} % after warm-up", g * 100.0));
        }
        Some(_) => {}
        None => failures.push("no RSS sample after warm-up".to_owned()),
    }
    if stats.total() == 0 {
        failures.push("no request was made".to_owned());
    }
    if failures.is_empty() {
        let _ = writeln!(out, "\nverdict: PASS");
    } else {
        let _ = writeln!(out, "\nverdict: FAIL ({})", failures.join("; "));
    }
    print!("{out}");
    let _ = std::fs::write(o.workdir.join("summary.txt"), &out);
    Ok(if failures.is_empty() { 0 } else { 1 })
}

// ===== the churn =====

#[derive(Default)]
struct Events {
    registrations: u64,
    deregistrations: u64,
    rekeys: u64,
    restarts: u64,
    crashes: u64,
    quiet_kills: u64,
    reloads: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Live,
    /// Deregistered; stopped with SIGTERM at `until`.
    Draining {
        until: Instant,
    },
    /// SIGTERM sent at `since`; waiting for it to exit.
    Stopping {
        since: Instant,
    },
    /// Not running; restarted at `until`.
    Down {
        until: Instant,
    },
}

struct Upstream {
    name: String,
    port: u16,
    child: Option<Child>,
    state: State,
    registered: bool,
    /// etcd key suffix; bumped by re-keys.
    generation: u32,
    /// Register again once restarted (a drained restart).
    register_on_start: bool,
    /// Since when it is deregistered (killing it is quiet only after `DRAIN`).
    deregistered_at: Option<Instant>,
}

struct Churn {
    exe: PathBuf,
    workdir: PathBuf,
    etcd: SocketAddr,
    ups: Vec<Upstream>,
    rng: Rng,
    events: Events,
    stats: Option<Arc<Stats>>,
    /// `churn.log`: every action with its time, to match against failures.
    log: Option<File>,
    start: Instant,
}

impl Churn {
    fn new(exe: &Path, ports: &Ports, etcd: SocketAddr, seed: u64, workdir: &Path) -> Churn {
        Churn {
            exe: exe.to_owned(),
            workdir: workdir.to_owned(),
            etcd,
            ups: ports
                .upstreams
                .iter()
                .enumerate()
                .map(|(i, &port)| Upstream {
                    name: format!("u{i}"),
                    port,
                    child: None,
                    state: State::Down {
                        until: Instant::now(),
                    },
                    registered: false,
                    generation: 0,
                    register_on_start: false,
                    deregistered_at: None,
                })
                .collect(),
            rng: Rng::new(seed ^ 0xc0ff_ee00),
            events: Events::default(),
            stats: None,
            log: log_file(workdir, "churn.log").ok(),
            start: Instant::now(),
        }
    }

    fn note(&mut self, what: String) {
        use std::io::Write as _;
        let t = Instant::now()
            .saturating_duration_since(self.start)
            .as_secs_f64();
        if let Some(log) = self.log.as_mut() {
            let _ = writeln!(log, "t={t:.3}s {what}");
        }
    }

    /// Endpoints registered and running: what the pools can serve from.
    fn serving(&self) -> usize {
        self.ups
            .iter()
            .filter(|u| u.registered && u.state == State::Live)
            .count()
    }

    fn keys(&self, i: usize) -> [String; 2] {
        let u = &self.ups[i];
        [
            format!("/soak/h1/{}-{}", u.name, u.generation),
            format!("/soak/h2/{}-{}", u.name, u.generation),
        ]
    }

    async fn start(&mut self, i: usize) -> Result<(), String> {
        let (port, name) = (self.ups[i].port, self.ups[i].name.clone());
        let child =
            start_child(&self.exe, &["upstream", &addr(port), &name], &self.workdir).await?;
        let u = &mut self.ups[i];
        u.child = Some(child);
        u.state = State::Live;
        Ok(())
    }

    async fn register(&mut self, i: usize) -> Result<(), String> {
        let url = format!("http://127.0.0.1:{}", self.ups[i].port);
        for key in self.keys(i) {
            etcd_put(self.etcd, &key, &url).await?;
        }
        self.ups[i].registered = true;
        self.ups[i].deregistered_at = None;
        self.events.registrations += 1;
        self.note(format!("register {}", self.keys(i).join(" ")));
        Ok(())
    }

    async fn deregister(&mut self, i: usize) -> Result<(), String> {
        for key in self.keys(i) {
            etcd_delete(self.etcd, &key).await?;
        }
        self.ups[i].registered = false;
        self.ups[i].deregistered_at = Some(Instant::now());
        self.events.deregistrations += 1;
        self.note(format!("deregister {}", self.keys(i).join(" ")));
        Ok(())
    }

    /// Timed transitions: drains that are over, stops that finished, restarts due.
    async fn advance(&mut self) {
        let now = Instant::now();
        for i in 0..self.ups.len() {
            match self.ups[i].state {
                State::Draining { until } if now >= until => {
                    if let Some(pid) = self.ups[i].child.as_ref().and_then(Child::id) {
                        send_signal(pid, "TERM");
                    }
                    self.ups[i].state = State::Stopping { since: now };
                    let name = self.ups[i].name.clone();
                    self.note(format!("SIGTERM {name} (drained)"));
                }
                State::Stopping { since } => {
                    let u = &mut self.ups[i];
                    let exited = match u.child.as_mut() {
                        Some(child) => child.try_wait().map(|s| s.is_some()).unwrap_or(true),
                        None => true,
                    };
                    if exited {
                        u.child = None;
                        u.state = State::Down {
                            until: now + Duration::from_secs(1),
                        };
                    } else if now - since > Duration::from_secs(12) {
                        eprintln!("bench-soak: {} ignored SIGTERM; killing it", u.name);
                        if let Some(child) = u.child.as_mut() {
                            let _ = child.kill().await;
                        }
                    }
                }
                State::Down { until } if now >= until => {
                    let name = self.ups[i].name.clone();
                    self.note(format!("start {name}"));
                    if let Err(e) = self.start(i).await {
                        eprintln!("bench-soak: restarting {}: {e}", self.ups[i].name);
                        self.ups[i].state = State::Down {
                            until: now + Duration::from_secs(1),
                        };
                        continue;
                    }
                    if self.ups[i].register_on_start {
                        self.ups[i].register_on_start = false;
                        if let Err(e) = self.register(i).await {
                            eprintln!("bench-soak: {e}");
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// One random change, never leaving fewer than two endpoints serving.
    async fn act(&mut self) {
        let live_registered: Vec<usize> = (0..self.ups.len())
            .filter(|&i| self.ups[i].registered && self.ups[i].state == State::Live)
            .collect();
        let live_unregistered: Vec<usize> = (0..self.ups.len())
            .filter(|&i| !self.ups[i].registered && self.ups[i].state == State::Live)
            .collect();
        let crashed_now = self
            .ups
            .iter()
            .any(|u| u.registered && matches!(u.state, State::Down { .. }));
        let can_lose_one = self.serving() >= 3;
        let roll = self.rng.below(12);
        let pick = |rng: &mut Rng, from: &[usize]| from[rng.below(from.len() as u64) as usize];
        let result = match roll {
            // Register an upstream that is up but not in etcd.
            0..=1 if !live_unregistered.is_empty() => {
                let i = pick(&mut self.rng, &live_unregistered);
                self.register(i).await
            }
            // Deregister one (it keeps running: pure discovery churn).
            2..=3 if can_lose_one => {
                let i = pick(&mut self.rng, &live_registered);
                self.deregister(i).await
            }
            // Deregister, drain, stop with SIGTERM, restart, register again.
            4..=5 if can_lose_one => {
                let i = pick(&mut self.rng, &live_registered);
                let r = self.deregister(i).await;
                self.ups[i].state = State::Draining {
                    until: Instant::now() + DRAIN,
                };
                self.ups[i].register_on_start = true;
                self.events.restarts += 1;
                let name = self.ups[i].name.clone();
                self.note(format!("drain {name} for a restart"));
                r
            }
            // Crash: SIGKILL a registered upstream; it stays in etcd while it is down.
            6..=7 if can_lose_one && !crashed_now => {
                let i = pick(&mut self.rng, &live_registered);
                let before = Instant::now();
                if let Some(child) = self.ups[i].child.as_mut() {
                    let _ = child.kill().await;
                }
                if let Some(stats) = &self.stats {
                    stats.crash(before, Instant::now());
                }
                let u = &mut self.ups[i];
                u.child = None;
                u.state = State::Down {
                    until: Instant::now() + CRASH_DOWN,
                };
                self.events.crashes += 1;
                let name = self.ups[i].name.clone();
                self.note(format!("SIGKILL {name} (crash, stays registered)"));
                Ok(())
            }
            // Same URL under a new key: the endpoint is replaced.
            8..=9 if !live_registered.is_empty() => {
                let i = pick(&mut self.rng, &live_registered);
                let url = format!("http://127.0.0.1:{}", self.ups[i].port);
                let old = self.keys(i);
                self.ups[i].generation += 1;
                let mut r = Ok(());
                for key in self.keys(i) {
                    r = r.and(etcd_put(self.etcd, &key, &url).await);
                }
                for key in old {
                    r = r.and(etcd_delete(self.etcd, &key).await);
                }
                self.events.rekeys += 1;
                self.note(format!("re-key {}", self.keys(i).join(" ")));
                r
            }
            // SIGKILL an upstream that was deregistered long enough ago to carry nothing.
            _ => {
                let quiet: Vec<usize> = live_unregistered
                    .iter()
                    .copied()
                    .filter(|&i| {
                        self.ups[i]
                            .deregistered_at
                            .is_some_and(|at| at.elapsed() > DRAIN)
                    })
                    .collect();
                if quiet.is_empty() {
                    return;
                }
                let i = pick(&mut self.rng, &quiet);
                if let Some(child) = self.ups[i].child.as_mut() {
                    let _ = child.kill().await;
                }
                let u = &mut self.ups[i];
                u.child = None;
                u.state = State::Down {
                    until: Instant::now() + Duration::from_secs(2),
                };
                self.events.quiet_kills += 1;
                let name = self.ups[i].name.clone();
                self.note(format!("SIGKILL {name} (deregistered, quiet)"));
                Ok(())
            }
        };
        if let Err(e) = result {
            eprintln!("bench-soak: churn: {e}");
        }
    }

    async fn stop_all(&mut self) {
        for u in &mut self.ups {
            if let Some(child) = u.child.as_mut() {
                let _ = child.kill().await;
            }
            u.child = None;
        }
    }
}

// ===== processes =====

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

fn log_file(workdir: &Path, name: &str) -> Result<File, String> {
    File::options()
        .create(true)
        .append(true)
        .open(workdir.join(name))
        .map_err(|e| format!("{name}: {e}"))
}

/// Start `exe ARGS…` (one of our upstreams) and wait for its `listening on` line. Its
/// stdin stays open: the child exits when we do.
async fn start_child(exe: &Path, args: &[&str], workdir: &Path) -> Result<Child, String> {
    let mut last = String::new();
    for _ in 0..20 {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file(workdir, "upstreams.log")?)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await;
        if let Ok(Ok(Some(line))) = line
            && line.starts_with("listening on")
        {
            return Ok(child);
        }
        // Most likely the port is still taken: try again shortly.
        let _ = child.kill().await;
        last = format!("{args:?} did not start (see upstreams.log)");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(last)
}

fn start_etcd(o: &Options, p: &Ports) -> Result<Child, String> {
    let client = format!("http://127.0.0.1:{}", p.etcd);
    let peer = format!("http://127.0.0.1:{}", p.etcd_peer);
    let data = o.workdir.join("etcd-data");
    let _ = std::fs::remove_dir_all(&data);
    Command::new(&o.etcd_bin)
        .arg("--name=soak")
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=soak={peer}"))
        .arg("--log-level=warn")
        .stdin(Stdio::null())
        .stdout(log_file(&o.workdir, "etcd.log")?)
        .stderr(log_file(&o.workdir, "etcd.log")?)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{}: {e} (install etcd-server)", o.etcd_bin))
}

/// Start the proxy on `config` and wait for `ready`; its later stdout goes to proxy.out.
async fn start_proxy(o: &Options, config: &Path) -> Result<Child, String> {
    let mut child = Command::new(&o.proxy_bin)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file(&o.workdir, "proxy.log")?)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{}: {e}", o.proxy_bin.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let mut out = tokio::fs::File::create(o.workdir.join("proxy.out"))
        .await
        .map_err(|e| e.to_string())?;
    let ready = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = out.write_all(format!("{line}\n").as_bytes()).await;
            if line.starts_with("ready") {
                return true;
            }
        }
        false
    })
    .await;
    if ready != Ok(true) {
        return Err("the proxy did not print `ready` (see proxy.log)".to_owned());
    }
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = out.write_all(format!("{line}\n").as_bytes()).await;
        }
    });
    Ok(child)
}

fn send_signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

async fn wait_for<F, Fut>(limit: Duration, mut check: F) -> Result<(), ()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(())
}

// ===== the proxy's configuration =====

/// The soak configuration, generation `generation`. Every reload changes a response
/// header of the `churn` route (pools kept); every other one also changes the
/// `churn_h2` pool's timeout, so that pool is built anew with a fresh etcd watch.
fn config_text(p: &Ports, generation: u64) -> String {
    let h2_timeout = if generation.is_multiple_of(2) {
        "31s"
    } else {
        "30s"
    };
    let churned = |name: &str, prefix: &str, strategy: &str, extra: &str| {
        format!(
            r#"
[pools.{name}]
strategy = "{strategy}"
{extra}
[pools.{name}.discovery.etcd]
endpoints = ["http://127.0.0.1:{etcd}"]
prefix = "{prefix}"

[pools.{name}.retry]
attempts = 4
delay = "20ms"
max_delay = "200ms"
idempotent = true

[pools.{name}.retry.budget]
min_per_second = 100
ratio = 1.0

[pools.{name}.outlier_detection]
consecutive_failures = 3
base_ejection_time = "5s"
max_ejection_time = "30s"

[pools.{name}.health_check]
path = "/health"
interval = "1s"
timeout = "500ms"
healthy_threshold = 1
unhealthy_threshold = 2
"#,
            etcd = p.etcd
        )
    };
    format!(
        r#"# Written by bench-soak (generation {generation}).
[server]
shutdown_timeout = "5s"

[admin]
address = "127.0.0.1:{admin}"

[access_log]
output = "off"

[listeners.soak]
address = "127.0.0.1:{proxy}"
h2c = true
{churn}{churn_h2}
[pools.faulty]
targets = ["http://127.0.0.1:{fault}"]
timeout = "1s"

[pools.refused]
targets = ["http://127.0.0.1:{refused}"]

[pools.refused.retry]
attempts = 2
delay = "10ms"

[[routes]]
name = "churn"
prefix = "/"
pool = "churn"

[routes.response_headers]
set = {{ "x-soak-config" = "{generation}" }}

[[routes]]
name = "churn_h2"
prefix = "/h2up"
strip_prefix = true
pool = "churn_h2"

[[routes]]
name = "faults"
prefix = "/f"
pool = "faulty"

[[routes]]
name = "refused"
prefix = "/f/refuse"
pool = "refused"
"#,
        admin = p.admin,
        proxy = p.proxy,
        fault = p.fault,
        refused = p.refused,
        churn = churned("churn", "/soak/h1/", "round_robin", "timeout = \"10s\""),
        churn_h2 = churned(
            "churn_h2",
            "/soak/h2/",
            "p2c_peak_ewma",
            &format!("h2c = true\ntimeout = \"{h2_timeout}\"")
        ),
    )
}

/// Write the configuration atomically (the proxy polls the file's modification time).
fn write_config(path: &Path, p: &Ports, generation: u64) -> Result<(), String> {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, config_text(p, generation)).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

// ===== HTTP to etcd and the admin listener =====

async fn http_call(addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<String, String> {
    let call = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        if status.is_success() {
            Ok(text)
        } else {
            Err(format!("{status}: {text}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .map_err(|_| "no answer in 5 s".to_owned())?
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let req = Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))
        .expect("request");
    http_call(addr, req).await
}

async fn etcd_call(etcd: SocketAddr, path: &str, json: String) -> Result<String, String> {
    let req = Request::post(path)
        .header(hyper::header::HOST, etcd.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(json)))
        .expect("request");
    http_call(etcd, req)
        .await
        .map_err(|e| format!("etcd {path}: {e}"))
}

async fn etcd_put(etcd: SocketAddr, key: &str, value: &str) -> Result<(), String> {
    let json = format!(
        r#"{{"key":"{}","value":"{}"}}"#,
        BASE64.encode(key),
        BASE64.encode(value)
    );
    etcd_call(etcd, "/v3/kv/put", json).await.map(drop)
}

async fn etcd_delete(etcd: SocketAddr, key: &str) -> Result<(), String> {
    let json = format!(r#"{{"key":"{}"}}"#, BASE64.encode(key));
    etcd_call(etcd, "/v3/kv/deleterange", json).await.map(drop)
}

/// Requests by status class, retries and reloads, from the proxy's `/metrics`.
fn metric_summary(metrics: &str) -> String {
    let mut classes: std::collections::BTreeMap<String, f64> = Default::default();
    let mut retries = 0.0;
    let mut reloads: std::collections::BTreeMap<String, f64> = Default::default();
    for line in metrics.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        let label = |name: &str| {
            series
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("")
                .to_owned()
        };
        if series.starts_with("proxy_requests_total{") {
            *classes.entry(label("status_class")).or_default() += value;
        } else if series.starts_with("proxy_retries_total") {
            retries += value;
        } else if series.starts_with("proxy_config_reloads_total") {
            *reloads.entry(label("result")).or_default() += value;
        }
    }
    let classes: Vec<String> = classes.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let reloads: Vec<String> = reloads.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!(
        "requests by status class [{}], retries {retries}, reloads [{}]",
        classes.join(", "),
        reloads.join(", ")
    )
}

// ===== samples =====

#[derive(Clone, Copy, Debug)]
struct Sample {
    t: f64,
    rss_kib: u64,
    fds: usize,
    threads: u64,
}

impl Sample {
    fn take(pid: u32, t: f64) -> Sample {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0);
        Sample {
            t,
            rss_kib: field("VmRSS:"),
            fds,
            threads: field("Threads:"),
        }
    }
}
