//! The `axum-reverse-proxy` server; the rooms of the server are the modules below.
//!
//! This library target is not an API: it exists so that the fuzz targets in `fuzz/` can
//! reach the configuration parser (through `__fuzz`, compiled only under
//! `cfg(fuzzing)`). The binary, `main.rs`, only calls [`main`].
#![warn(rust_2018_idioms, clippy::all)]
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

mod access_log;
mod admin;
mod cli;
mod config;
mod demo;
mod handler;
mod listener;
mod reload;
mod routes;
mod server;
mod shutdown;
mod upstream;

// The configuration parser, for the fuzz targets in `fuzz/` only (cargo-fuzz sets
// `cfg(fuzzing)`): not an API.
#[cfg(fuzzing)]
#[doc(hidden)]
#[path = "fuzz.rs"]
pub mod __fuzz;

use cli::{Cli, Mode};
use server::RunError;

/// The binary's `main`: parse the command line and do what it asks.
#[doc(hidden)]
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let (loaded, path) = match cli.mode() {
        Mode::Check(path) => return check(&path),
        Mode::Config(path) => match config::load(&path) {
            Ok(loaded) => (Some(loaded), Some(path)),
            Err(errors) => return config_failed(&errors),
        },
        Mode::OneLine => match cli.one_line_config() {
            Ok(loaded) => (Some(loaded), None),
            Err(errors) => return config_failed(&errors),
        },
        Mode::Demo { .. } => (None, None),
    };
    let workers = cli.workers.map(usize::from).or_else(|| {
        loaded
            .as_ref()
            .and_then(|l| l.config.server.workers.as_ref().map(|w| *w.get_ref()))
    });
    let runtime = match runtime(workers) {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let one_line = matches!(cli.mode(), Mode::OneLine);
    let result = runtime.block_on(async move {
        match (loaded, cli.mode()) {
            (Some(loaded), _) => server::run(loaded, path, print_addresses).await,
            (None, Mode::Demo { listen }) => demo::run(listen).await,
            (None, _) => Ok(()),
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(RunError::Config(mut errors)) => {
            if one_line {
                for e in &mut errors.0 {
                    e.key = cli::flag_for(&e.key);
                }
            }
            config_failed(&errors)
        }
        Err(RunError::Runtime(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

/// The runtime: one worker thread per core, or `workers`. One worker is tokio's
/// current-thread runtime, everything on the main thread: a multi-thread runtime with
/// one worker still hands work between that worker and the thread in `block_on`, and
/// pays for synchronisation it does not need (measured with the bench's small GET on
/// one pinned core: 10–15 % less CPU per request, the same instruction count).
fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder.build()
}

fn print_addresses(started: &server::Started) {
    for (name, url) in &started.listeners {
        println!("listener {name} on {url}");
    }
    if let Some(admin) = started.admin {
        println!("admin on http://{admin}");
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let loaded = match config::load(path) {
        Ok(loaded) => loaded,
        Err(errors) => return config_failed(&errors),
    };
    // Building a pool sets up its connection pool, which wants a runtime around it.
    let c = &loaded.config;
    let summary = format!(
        "{} listener(s), {} pool(s), {} route(s)",
        c.listeners.len(),
        c.pools.len(),
        c.routes.len()
    );
    for name in c.pools.keys() {
        if !c
            .routes
            .iter()
            .any(|r| r.get_ref().pool.get_ref() == name.get_ref())
        {
            eprintln!(
                "warning: pool `{}` is not used by any route",
                name.get_ref()
            );
        }
    }
    let built = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|rt| rt.block_on(async { server::check(loaded) }));
    match built {
        Ok(Ok(())) => {
            println!("{}: configuration is valid ({summary})", path.display());
            ExitCode::SUCCESS
        }
        Ok(Err(errors)) => config_failed(&errors),
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            ExitCode::from(1)
        }
    }
}

fn config_failed(errors: &config::ConfigErrors) -> ExitCode {
    eprintln!("{errors}");
    ExitCode::from(2)
}
