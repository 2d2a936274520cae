//! Command-line arguments and what they ask the server to do.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::config::{self, ConfigErrors, Loaded, Strategy, quote};

/// A reverse proxy built on axum and hyper.
///
/// With no arguments, an embedded demo runs: two small upstream applications on
/// loopback with the proxy in front. `--config FILE` runs a TOML configuration
/// (reloaded on SIGHUP or when the file changes); `--listen ADDR --upstream URL`
/// proxies everything on ADDR to URL without a file.
///
/// Exit codes: 0 success, 1 runtime failure (e.g. an address in use), 2 invalid
/// configuration or arguments.
#[derive(Parser, Debug)]
#[command(name = "axum-reverse-proxy", version, about, long_about)]
pub(crate) struct Cli {
    /// Run the configuration in FILE (TOML).
    #[arg(long, short = 'c', value_name = "FILE", conflicts_with_all = ["check", "upstream", "listen", "strategy", "admin"])]
    pub(crate) config: Option<PathBuf>,
    /// Validate FILE (including certificates and pools), print the result and exit.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["upstream", "listen", "strategy", "admin", "workers"])]
    pub(crate) check: Option<PathBuf>,
    /// Address to listen on (one-line mode and demo; default 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
    /// Upstream URL to proxy every request to; repeat it for a balanced pool.
    #[arg(long, value_name = "URL")]
    pub(crate) upstream: Vec<String>,
    /// Load-balancing strategy of the one-line pool.
    #[arg(long, value_name = "STRATEGY", requires = "upstream", value_parser = clap::builder::PossibleValuesParser::new(Strategy::NAMES))]
    pub(crate) strategy: Option<String>,
    /// Address of the admin listener (/metrics, /health, /upstreams, /config) in one-line mode.
    #[arg(long, value_name = "ADDR")]
    pub(crate) admin: Option<SocketAddr>,
    /// Runtime worker threads (default: one per core, or `server.workers` of the file).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) workers: Option<u16>,
}

/// What to do.
pub(crate) enum Mode {
    Demo { listen: SocketAddr },
    Check(PathBuf),
    Config(PathBuf),
    OneLine,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

impl Cli {
    pub(crate) fn mode(&self) -> Mode {
        if let Some(path) = &self.check {
            return Mode::Check(path.clone());
        }
        if let Some(path) = &self.config {
            return Mode::Config(path.clone());
        }
        if !self.upstream.is_empty() {
            return Mode::OneLine;
        }
        Mode::Demo {
            listen: self.listen.unwrap_or_else(default_listen),
        }
    }

    /// The configuration the one-line arguments describe, checked like a file.
    pub(crate) fn one_line_config(&self) -> Result<Loaded, ConfigErrors> {
        let listen = self.listen.unwrap_or_else(default_listen);
        let mut toml = String::new();
        if let Some(admin) = self.admin {
            toml.push_str(&format!(
                "[admin]\naddress = {}\n\n",
                quote(&admin.to_string())
            ));
        }
        toml.push_str(&format!(
            "[listeners.main]\naddress = {}\n\n[pools.default]\ntargets = [{}]\n",
            quote(&listen.to_string()),
            self.upstream
                .iter()
                .map(|u| quote(u))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if let Some(strategy) = &self.strategy {
            toml.push_str(&format!("strategy = {}\n", quote(strategy)));
        }
        toml.push_str("\n[[routes]]\nname = \"default\"\nprefix = \"/\"\npool = \"default\"\n");
        config::parse("<command line>", toml, PathBuf::from("."), true).map_err(|mut errors| {
            for e in &mut errors.0 {
                e.key = flag_for(&e.key);
            }
            errors
        })
    }
}

/// The flag that set a key of the generated configuration.
pub(crate) fn flag_for(key: &str) -> String {
    let flag = if key.starts_with("pools.default.targets") {
        "--upstream"
    } else if key.starts_with("pools.default.strategy") || key.starts_with("pools.default.hash_key")
    {
        "--strategy"
    } else if key.starts_with("listeners.main") {
        "--listen"
    } else if key.starts_with("admin") {
        "--admin"
    } else {
        return key.to_owned();
    };
    flag.to_owned()
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
}
