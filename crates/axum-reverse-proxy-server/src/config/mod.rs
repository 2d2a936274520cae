//! The configuration file: its schema, parsing with line numbers, validation, errors.
//!
//! [`load`] reads a file, parses it (unknown keys are errors) and validates it; every
//! error names the file, line, key and a fix. Building the services it describes
//! (which can fail too, e.g. on an unreadable certificate) is done by
//! [`crate::reload::Snapshot::build`], which reports through the same [`Locator`].

use std::path::{Path, PathBuf};
use std::time::SystemTime;

mod errors;
mod schema;
mod units;
mod validate;

pub(crate) use errors::{ConfigError, ConfigErrors, Locator};
pub(crate) use schema::*;
pub(crate) use validate::{normalize_prefix, parse_status_range};

/// A parsed and validated configuration, with what is needed to report on it later.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub(crate) config: Config,
    /// The file's name as shown in errors.
    pub(crate) file: String,
    /// The text it was parsed from, for line numbers.
    pub(crate) source: String,
    /// Relative paths (certificates, log file) are resolved from here.
    pub(crate) base_dir: PathBuf,
    /// Errors about generated text (command line, demo) carry no line numbers.
    pub(crate) generated: bool,
}

impl Loaded {
    pub(crate) fn locator(&self) -> Locator<'_> {
        Locator {
            file: &self.file,
            source: &self.source,
        }
    }

    /// Resolve a path from the file against the file's folder.
    pub(crate) fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.base_dir.join(path)
        }
    }

    /// Turn errors about generated text into errors without places.
    pub(crate) fn place(&self, mut errors: Vec<ConfigError>) -> ConfigErrors {
        if self.generated {
            for e in &mut errors {
                e.line = 0;
                e.column = 0;
            }
        }
        ConfigErrors(errors)
    }
}

/// Parse and validate `source`, shown in errors as `file`.
pub(crate) fn parse(
    file: &str,
    source: String,
    base_dir: PathBuf,
    generated: bool,
) -> Result<Loaded, ConfigErrors> {
    let mut loaded = Loaded {
        config: Config::empty(),
        file: file.to_owned(),
        source,
        base_dir,
        generated,
    };
    let parsed: Result<Config, _> = toml::from_str(&loaded.source);
    match parsed {
        Ok(config) => loaded.config = config,
        Err(err) => {
            let e = errors::from_toml(&loaded.locator(), &err);
            return Err(loaded.place(vec![e]));
        }
    }
    let problems = validate::validate(&loaded.config, &loaded.locator());
    if !problems.is_empty() {
        return Err(loaded.place(problems));
    }
    Ok(loaded)
}

/// Read, parse and validate the file at `path`.
pub(crate) fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let file = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|err| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read the file: {err}"),
            hint: "check the path and its permissions".to_owned(),
        }])
    })?;
    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_owned);
    parse(&file, source, base_dir, false)
}

/// What identifies a version of the file on disk, to notice changes by polling.
pub(crate) fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Config {
    fn empty() -> Config {
        Config {
            server: ServerConfig::default(),
            admin: None,
            access_log: AccessLogConfig::default(),
            listeners: Default::default(),
            pools: Default::default(),
            routes: Vec::new(),
        }
    }
}

/// Quote a string for generated TOML (JSON string escapes are valid TOML).
pub(crate) fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../../config/example.toml");

    #[test]
    fn no_input_makes_it_panic() {
        // Every prefix of a real file, and some odd inputs: errors, never panics.
        let mut cut = 0;
        while cut <= EXAMPLE.len() {
            if EXAMPLE.is_char_boundary(cut) {
                let _ = parse("x.toml", EXAMPLE[..cut].to_owned(), ".".into(), false);
            }
            cut += 7;
        }
        for odd in [
            "\u{0}",
            "[[",
            "a = [",
            "[listeners.x]\naddress = \"\u{1F600}\"",
            "\"\"\"",
            "=\n=",
        ] {
            assert!(parse("x.toml", odd.to_owned(), ".".into(), false).is_err());
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let loaded = parse(
            "x.toml",
            "[listeners.l]\naddress = \"127.0.0.1:0\"\n[pools.p]\ntargets = [\"http://a:1\"]\n[pools.p.retry]\n[pools.p.retry.budget]\n[pools.p.health_check]\n[pools.p.outlier_detection]\n[[routes]]\npool = \"p\"\n".to_owned(),
            ".".into(),
            false,
        )
        .unwrap();
        let c = &loaded.config;
        let json = serde_json::to_value(c).unwrap();
        let s = &json["server"];
        assert_eq!(s["shutdown_timeout"], "30s");
        assert_eq!(s["max_header_bytes"], 65536);
        assert_eq!(s["header_read_timeout"], "10s");
        assert_eq!(s["idle_timeout"], "1m");
        assert_eq!(s["release_idle_buffers_after"], "1s");
        assert_eq!(s["max_connections"], 10000);
        assert_eq!(s["max_header_count"], 100);
        assert_eq!(s["max_uri_bytes"], 8192);
        assert_eq!(s["http2_max_concurrent_streams"], 128);
        assert_eq!(s["http2_max_reset_streams"], 100);
        assert_eq!(json["access_log"]["format"], "text");
        assert_eq!(json["access_log"]["output"], "stdout");
        let l = &json["listeners"]["l"];
        assert_eq!(
            (l["http2"].as_bool(), l["h2c"].as_bool()),
            (Some(true), Some(false))
        );
        let p = &json["pools"]["p"];
        assert_eq!(p["strategy"], "round_robin");
        assert_eq!(p["host"], "replace");
        assert_eq!(p["x_forwarded"], "append");
        assert_eq!(p["trusted_proxies"], "all");
        assert_eq!(p["retry"]["attempts"], 3);
        assert_eq!(p["retry"]["delay"], "500ms");
        assert_eq!(p["retry"]["max_replay_body_bytes"], 65536);
        assert_eq!(p["retry"]["budget"]["ttl"], "10s");
        assert_eq!(p["retry"]["budget"]["min_per_second"], 10);
        let h = &p["health_check"];
        assert_eq!(h["path"], "/health");
        assert_eq!(h["interval"], "10s");
        assert_eq!(h["timeout"], "2s");
        assert_eq!(h["expected_status"], "200-399");
        let o = &p["outlier_detection"];
        assert_eq!(o["consecutive_failures"], 5);
        assert_eq!(o["max_ejection_time"], "5m");
        assert_eq!(o["max_ejection_percent"], 50);
        let r = &json["routes"][0];
        assert_eq!(r["prefix"], "/");
        assert_eq!(r["strip_prefix"], false);
    }
}
