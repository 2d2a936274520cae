//! Counting outcomes and printing the summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The kinds of traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    KeepAlive,
    Post,
    NewConn,
    H2,
    Stream,
    WebSocket,
    Fault,
}

impl Class {
    pub const ALL: [Class; 7] = [
        Class::KeepAlive,
        Class::Post,
        Class::NewConn,
        Class::H2,
        Class::Stream,
        Class::WebSocket,
        Class::Fault,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::KeepAlive => "keep-alive GET",
            Class::Post => "16 KiB POST",
            Class::NewConn => "new-conn GET",
            Class::H2 => "h2c GET",
            Class::Stream => "1 MiB GET",
            Class::WebSocket => "WebSocket session",
            Class::Fault => "fault routes",
        }
    }
}

/// How one request (or WebSocket session) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Ok,
    /// Failed on a route whose only upstream is in a fault mode.
    Expected,
    /// Failed while in flight at the moment one of the churned upstreams was SIGKILLed.
    InFlightAtCrash,
    Unexpected,
}

impl Verdict {
    fn name(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Expected => "expected",
            Verdict::InFlightAtCrash => "in flight at a crash",
            Verdict::Unexpected => "UNEXPECTED",
        }
    }
}

/// Why a request failed: a short kind (counted) and the detail (logged).
#[derive(Debug)]
pub struct Failure {
    pub kind: String,
    pub detail: String,
}

impl Failure {
    pub fn new(kind: impl Into<String>, detail: impl Into<String>) -> Failure {
        Failure {
            kind: kind.into(),
            detail: detail.into(),
        }
    }

    /// Name the request in the detail: `GET /h2up/small: …`.
    pub fn at(self, what: &str) -> Failure {
        Failure {
            kind: self.kind,
            detail: format!("{what}: {}", self.detail),
        }
    }
}

#[derive(Default)]
struct PerClass {
    counts: BTreeMap<Verdict, u64>,
    /// Latency of successful requests.
    ok_time: Duration,
    max_ok_time: Duration,
}

#[derive(Default)]
struct Inner {
    classes: BTreeMap<Class, PerClass>,
    errors: BTreeMap<(Verdict, Class, String), u64>,
    /// The first unexpected failures, with their time since the start.
    first_unexpected: Vec<String>,
}

/// Outcomes of the whole run.
pub struct Stats {
    start: Instant,
    inner: Mutex<Inner>,
    /// Instants (just before, just after) each churned upstream was SIGKILLed.
    crashes: Mutex<Vec<(Instant, Instant)>>,
}

const KEEP_UNEXPECTED: usize = 40;

impl Stats {
    pub fn new(start: Instant) -> Stats {
        Stats {
            start,
            inner: Mutex::default(),
            crashes: Mutex::default(),
        }
    }

    pub fn crash(&self, before: Instant, after: Instant) {
        self.crashes.lock().unwrap().push((before, after));
    }

    fn overlaps_crash(&self, began: Instant, ended: Instant) -> bool {
        self.crashes
            .lock()
            .unwrap()
            .iter()
            .any(|&(before, after)| began <= after && ended >= before)
    }

    /// Record a request to a churned route (every failure is unexpected unless it was in
    /// flight when an upstream was killed).
    pub fn churned(&self, class: Class, began: Instant, result: Result<(), Failure>) {
        let ended = Instant::now();
        let verdict = match &result {
            Ok(()) => Verdict::Ok,
            Err(_) if self.overlaps_crash(began, ended) => Verdict::InFlightAtCrash,
            Err(_) => Verdict::Unexpected,
        };
        self.record(class, began, ended, verdict, result.err());
    }

    /// Record a request to a fault route: `expected` says whether this failure is one the
    /// fault explains.
    pub fn fault(&self, began: Instant, result: Result<(), (Failure, bool)>) {
        let ended = Instant::now();
        let (verdict, failure) = match result {
            Ok(()) => (Verdict::Ok, None),
            Err((failure, true)) => (Verdict::Expected, Some(failure)),
            Err((failure, false)) => (Verdict::Unexpected, Some(failure)),
        };
        self.record(Class::Fault, began, ended, verdict, failure);
    }

    fn record(
        &self,
        class: Class,
        began: Instant,
        ended: Instant,
        verdict: Verdict,
        failure: Option<Failure>,
    ) {
        let mut inner = self.inner.lock().unwrap();
        let per = inner.classes.entry(class).or_default();
        *per.counts.entry(verdict).or_default() += 1;
        if verdict == Verdict::Ok {
            let took = ended - began;
            per.ok_time += took;
            per.max_ok_time = per.max_ok_time.max(took);
        }
        if let Some(failure) = failure {
            if verdict == Verdict::Unexpected && inner.first_unexpected.len() < KEEP_UNEXPECTED {
                let line = format!(
                    "  t={:.3}s (began {:.3}s) {}: {}: {}",
                    (ended - self.start).as_secs_f64(),
                    (began - self.start).as_secs_f64(),
                    class.name(),
                    failure.kind,
                    failure.detail
                );
                eprintln!("unexpected:{line}");
                inner.first_unexpected.push(line);
            }
            *inner
                .errors
                .entry((verdict, class, failure.kind))
                .or_default() += 1;
        }
    }

    pub fn unexpected(&self) -> u64 {
        let inner = self.inner.lock().unwrap();
        inner
            .classes
            .values()
            .map(|p| p.counts.get(&Verdict::Unexpected).copied().unwrap_or(0))
            .sum()
    }

    pub fn total(&self) -> u64 {
        let inner = self.inner.lock().unwrap();
        inner.classes.values().flat_map(|p| p.counts.values()).sum()
    }

    /// The table of outcomes per class, then the errors by kind.
    pub fn table(&self) -> String {
        let inner = self.inner.lock().unwrap();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| class | requests | ok | expected | in flight at a crash | unexpected | mean ok ms | max ok ms |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        let mut totals = [0u64; 5];
        for class in Class::ALL {
            let Some(per) = inner.classes.get(&class) else {
                continue;
            };
            let get = |v| per.counts.get(&v).copied().unwrap_or(0);
            let row = [
                per.counts.values().sum(),
                get(Verdict::Ok),
                get(Verdict::Expected),
                get(Verdict::InFlightAtCrash),
                get(Verdict::Unexpected),
            ];
            for (t, r) in totals.iter_mut().zip(row) {
                *t += r;
            }
            let mean = if row[1] > 0 {
                per.ok_time.as_secs_f64() * 1000.0 / row[1] as f64
            } else {
                0.0
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {:.2} | {:.1} |",
                class.name(),
                row[0],
                row[1],
                row[2],
                row[3],
                row[4],
                mean,
                per.max_ok_time.as_secs_f64() * 1000.0
            );
        }
        let _ = writeln!(
            out,
            "| **total** | {} | {} | {} | {} | {} | | |",
            totals[0], totals[1], totals[2], totals[3], totals[4]
        );
        out.push('\n');
        if inner.errors.is_empty() {
            out.push_str("errors by kind: none\n");
        } else {
            out.push_str("errors by kind:\n");
            for ((verdict, class, kind), n) in &inner.errors {
                let _ = writeln!(
                    out,
                    "  {:<20} {:<18} {kind}: {n}",
                    verdict.name(),
                    class.name()
                );
            }
        }
        if !inner.first_unexpected.is_empty() {
            out.push_str("first unexpected failures:\n");
            for line in &inner.first_unexpected {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}
