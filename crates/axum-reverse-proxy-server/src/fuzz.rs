//! The configuration parser and the route rules, reachable from the fuzz targets in the
//! repository's `fuzz/` crate. Compiled only under `cfg(fuzzing)` (cargo-fuzz sets it),
//! hidden from the docs: not an API, and it changes without notice.

use std::path::PathBuf;

/// One configuration error, as the server would print it.
#[derive(Debug, Clone)]
pub struct ConfigError {
    /// The file name given to [`parse_config`].
    pub file: String,
    /// 1-based; 0 when the error has no place in the file.
    pub line: usize,
    /// 1-based, in characters; 0 when the error has no place in the file.
    pub column: usize,
    /// The dotted key path, possibly empty.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: String,
    /// The whole error as printed (`file:line:column: `key`: message` and the hint).
    pub display: String,
}

/// Parse and validate `source` as the file `file` (generated text, as the command line
/// and the demo make, when `generated`). `Ok` carries the configuration as the admin
/// listener's `/config` shows it (JSON, secrets redacted), or the serialisation error.
pub fn parse_config(
    file: &str,
    source: &str,
    generated: bool,
) -> Result<Result<serde_json::Value, String>, Vec<ConfigError>> {
    match crate::config::parse(file, source.to_owned(), PathBuf::from("."), generated) {
        Ok(loaded) => Ok(serde_json::to_value(&loaded.config)
            .map(|mut value| {
                crate::admin::redact(&mut value, false);
                value
            })
            .map_err(|e| e.to_string())),
        Err(errors) => Err(errors
            .0
            .into_iter()
            .map(|e| ConfigError {
                display: e.to_string(),
                file: e.file,
                line: e.line,
                column: e.column,
                key: e.key,
                message: e.message,
                hint: e.hint,
            })
            .collect()),
    }
}

/// A route prefix as the route table stores it (`/api/` → `/api`, `/` stays).
pub fn normalize_prefix(prefix: &str) -> &str {
    crate::config::normalize_prefix(prefix)
}

/// Whether a normalised prefix matches a path on a segment boundary.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    crate::routes::prefix_matches(prefix, path)
}

/// The path a `strip_prefix` route forwards.
pub fn strip(prefix: &str, path: &str) -> String {
    crate::routes::strip(prefix, path)
}
