//! Configuration errors: each names the YAML path and, where known, the line; validation
//! collects all of them so `gateway check` reports every mistake at once.

use std::fmt;

use super::lines::LineIndex;

/// One mistake in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// YAML path such as `routes[2].upstream`; empty for whole-file problems.
    pub path: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.path.is_empty(), self.line) {
            (false, Some(line)) => write!(f, "{} (line {line}): {}", self.path, self.message),
            (false, None) => write!(f, "{}: {}", self.path, self.message),
            (true, Some(line)) => write!(f, "line {line}: {}", self.message),
            (true, None) => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every mistake found; never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// A single error without a line, e.g. for an unreadable file.
    pub fn single(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            path: path.into(),
            line: None,
            message: message.into(),
        }])
    }
}

/// Collects errors while parsing and validating, attaching lines from the index.
pub(crate) struct Errors<'a> {
    lines: &'a LineIndex,
    pub(crate) list: Vec<ConfigError>,
}

impl<'a> Errors<'a> {
    pub(crate) fn new(lines: &'a LineIndex) -> Self {
        Errors {
            lines,
            list: Vec::new(),
        }
    }

    /// Records an error at `path`, with the line of the path or its nearest parent.
    pub(crate) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let line = self.lines.line_of(&path);
        self.list.push(ConfigError {
            path,
            line,
            message: message.into(),
        });
    }

    pub(crate) fn lines(&self) -> &'a LineIndex {
        self.lines
    }

    /// Records an error whose line is already known.
    pub(crate) fn add_at(&mut self, path: String, line: Option<usize>, message: String) {
        self.list.push(ConfigError {
            path,
            line,
            message,
        });
    }

    /// Number of errors so far; lets a caller tell whether a sub-check added any.
    pub(crate) fn count(&self) -> usize {
        self.list.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_with_and_without_line() {
        let e = ConfigError {
            path: "routes[2].upstream".into(),
            line: Some(14),
            message: "unknown upstream \"ap\" (known: app)".into(),
        };
        assert_eq!(
            e.to_string(),
            "routes[2].upstream (line 14): unknown upstream \"ap\" (known: app)"
        );
        let e2 = ConfigError {
            line: None,
            ..e.clone()
        };
        assert_eq!(
            e2.to_string(),
            "routes[2].upstream: unknown upstream \"ap\" (known: app)"
        );
        let all = ConfigErrors(vec![e, e2]);
        assert_eq!(all.to_string().lines().count(), 2);
        assert_eq!(ConfigErrors::single("", "boom").to_string(), "boom");
    }

    #[test]
    fn collector_attaches_lines() {
        let idx = LineIndex::build("server:\n  idle_timeout: 0s\n");
        let mut errs = Errors::new(&idx);
        errs.add("server.idle_timeout", "must be > 0");
        errs.add("server.nope", "x");
        errs.add("other", "y");
        let lines: Vec<_> = errs.list.iter().map(|e| e.line).collect();
        assert_eq!(lines, [Some(2), Some(1), None]);
        assert_eq!(errs.count(), 3);
    }
}
