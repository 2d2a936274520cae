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
pub(crate) use validate::normalize_prefix;

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
