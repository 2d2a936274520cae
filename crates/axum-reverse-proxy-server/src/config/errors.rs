//! Configuration errors: each names the file, the line, the key, and how to fix it.

use std::fmt;
use std::ops::Range;

/// One problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigError {
    /// The file, as given on the command line (or `<command line>`, `<demo>`).
    pub(crate) file: String,
    /// 1-based line and column; 0 when the problem has no place in the file.
    pub(crate) line: usize,
    pub(crate) column: usize,
    /// Dotted key path (`pools.api.targets`).
    pub(crate) key: String,
    pub(crate) message: String,
    pub(crate) hint: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        } else {
            write!(f, "{}: ", self.file)?;
        }
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        write!(f, "{}", self.message)?;
        if !self.hint.is_empty() {
            write!(f, "\n  hint: {}", self.hint)?;
        }
        Ok(())
    }
}

/// Every problem found, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigErrors(pub(crate) Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, err) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {err}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Finds lines, columns and keys for byte offsets in one source text.
pub(crate) struct Locator<'a> {
    pub(crate) file: &'a str,
    pub(crate) source: &'a str,
}

impl Locator<'_> {
    /// 1-based (line, column) of a byte offset; (0, 0) for an empty span at 0 (a default).
    pub(crate) fn position(&self, span: &Range<usize>) -> (usize, usize) {
        if span.start == 0 && span.end == 0 {
            return (0, 0);
        }
        let at = span.start.min(self.source.len());
        let before = self.source.get(..at).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        (line, column)
    }

    pub(crate) fn error(
        &self,
        span: &Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = self.position(span);
        ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            key: key.into(),
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// The key path at a byte offset, guessed from the source: the nearest table header
    /// above it and the `key =` on its line. Used for errors the TOML parser reports.
    pub(crate) fn key_at(&self, offset: usize) -> String {
        let offset = offset.min(self.source.len());
        let before = self.source.get(..offset).unwrap_or("");
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line_end = self
            .source
            .get(offset..)
            .and_then(|s| s.find('\n'))
            .map_or(self.source.len(), |i| offset + i);
        let line = self.source.get(line_start..line_end).unwrap_or("").trim();
        let header_of = |l: &str| -> Option<String> {
            let l = l.trim();
            if !l.starts_with('[') {
                return None;
            }
            let inner = l.trim_start_matches('[');
            let end = inner.find(']')?;
            Some(inner[..end].trim().to_owned())
        };
        if let Some(header) = header_of(line) {
            return header;
        }
        let table = before
            .get(..line_start)
            .unwrap_or("")
            .lines()
            .rev()
            .find_map(header_of);
        let key = line
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_owned())
            .filter(|k| !k.is_empty() && !k.starts_with('#'));
        match (table, key) {
            (Some(t), Some(k)) => format!("{t}.{k}"),
            (Some(t), None) => t,
            (None, Some(k)) => k,
            (None, None) => String::new(),
        }
    }
}

/// Turn a TOML parse or type error into a located error with a hint.
pub(crate) fn from_toml(loc: &Locator<'_>, err: &toml::de::Error) -> ConfigError {
    // An empty span at offset 0 would read as "no place" (a default value): the parser's
    // errors always have one, the first character at least.
    let span = match err.span() {
        Some(span) if span.is_empty() && span.start == 0 => 0..1,
        Some(span) => span,
        None => 0..0,
    };
    let message = err.message().trim().to_owned();
    let mut key = loc.key_at(span.start);
    let hint = if let Some(field) = between(&message, "unknown field `", "`") {
        if !key.ends_with(field) {
            key = if key.is_empty() {
                field.to_owned()
            } else {
                format!("{key}.{field}")
            };
        }
        "remove the key or fix its spelling; the keys allowed here are listed above (see README: Configuration reference)".to_owned()
    } else if let Some(field) = between(&message, "missing field `", "`") {
        key = if key.is_empty() {
            field.to_owned()
        } else {
            format!("{key}.{field}")
        };
        format!("add `{field} = ...` to this table")
    } else if message.starts_with("unknown variant") {
        "use one of the values listed above".to_owned()
    } else if message.starts_with("invalid type") {
        "change the value to the expected type (strings are quoted, numbers are not)".to_owned()
    } else if message.contains("socket address") {
        "write an IP address and a port, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"".to_owned()
    } else if message.starts_with("invalid duration") || message.starts_with("invalid size") {
        "see the examples in the message".to_owned()
    } else if message.contains("duplicate key") {
        "each key may appear once per table; remove one of them".to_owned()
    } else {
        "check the TOML syntax near this place (strings quoted, one `key = value` per line)"
            .to_owned()
    };
    let message = if err.span().is_none() {
        // No place: keep the parser's full text.
        err.to_string().trim().to_owned()
    } else {
        message
    };
    loc.error(&span, key, message, hint)
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = &text[text.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syntax_error_at_the_first_character_has_a_place() {
        // Found by the `config` fuzz target: the span was 0..0, shown as no place.
        let source = ",[server]\n";
        let err = toml::from_str::<toml::Table>(source).unwrap_err();
        let loc = Locator {
            file: "x.toml",
            source,
        };
        let e = from_toml(&loc, &err);
        assert_eq!((e.line, e.column), (1, 1), "{e}");
    }
}
