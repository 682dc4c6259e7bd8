//! Configuration errors that point at the file, line, key and the allowed values.

use std::fmt;
use std::ops::Range;

/// One problem in a configuration file.
///
/// Its [`Display`](fmt::Display) form is meant to be shown to an operator as it is:
///
/// ```text
/// httpd.toml:3:15: server.enforcement: invalid value "kernal"; allowed: user, kernel, auto
///   |
/// 3 | enforcement = "kernal"
///   |               ^^^^^^^^
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file, as given (or `<embedded default>`).
    pub file: String,
    /// 1-based line of the offending key or value (0 when the problem has no place).
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The dotted key (`listener[0].class[1].prefixes`), or empty for a syntax error.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// The values that would be accepted, if there is a short list.
    pub allowed: Option<String>,
    snippet: Option<(String, usize, usize)>,
}

impl Diagnostic {
    /// A diagnostic at byte range `span` of `source`.
    pub(crate) fn at(
        file: &str,
        source: &str,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
        allowed: Option<String>,
    ) -> Diagnostic {
        let (line, column, snippet) = match span {
            Some(span) => {
                let start = floor_char_boundary(source, span.start.min(source.len()));
                let end = floor_char_boundary(source, span.end.min(source.len())).max(start);
                let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
                let line_end = source[start..]
                    .find('\n')
                    .map_or(source.len(), |i| start + i);
                let line_no = source[..start].matches('\n').count() + 1;
                let col = source[line_start..start].chars().count() + 1;
                let text = source[line_start..line_end]
                    .trim_end_matches('\r')
                    .to_string();
                let width = source[start..end.min(line_end)].chars().count().max(1);
                (line_no, col, Some((text, col, width)))
            }
            None => (0, 0, None),
        };
        Diagnostic {
            file: file.to_string(),
            line,
            column,
            key: key.into(),
            message: message.into(),
            allowed,
            snippet,
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        f.write_str(": ")?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)?;
        if let Some(a) = &self.allowed {
            write!(f, "; allowed: {a}")?;
        }
        if let Some((text, col, width)) = &self.snippet {
            let num = self.line.to_string();
            let pad = " ".repeat(num.len());
            write!(
                f,
                "\n{pad} |\n{num} | {text}\n{pad} | {}{}",
                " ".repeat(col - 1),
                "^".repeat(*width)
            )?;
        }
        Ok(())
    }
}

/// A configuration that could not be loaded: every problem found, in file order.
///
/// Loading never stops at the first semantic problem, so an operator sees them all at once;
/// a TOML syntax error stops parsing and is reported alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    diagnostics: Vec<Diagnostic>,
}

impl ConfigError {
    pub(crate) fn new(mut diagnostics: Vec<Diagnostic>) -> ConfigError {
        diagnostics.sort_by_key(|d| (d.line, d.column));
        ConfigError { diagnostics }
    }

    /// A problem reading the file itself.
    pub(crate) fn io(file: &str, err: &std::io::Error) -> ConfigError {
        ConfigError::new(vec![Diagnostic::at(
            file,
            "",
            None,
            "",
            format!("cannot read the configuration file: {err}"),
            None,
        )])
    }

    /// The problems, in file order.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        if self.diagnostics.len() > 1 {
            write!(
                f,
                "\n{} problems in the configuration",
                self.diagnostics.len()
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Collects diagnostics for one file.
pub(crate) struct Sink<'a> {
    pub(crate) file: &'a str,
    pub(crate) source: &'a str,
    pub(crate) found: Vec<Diagnostic>,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(file: &'a str, source: &'a str) -> Self {
        Sink {
            file,
            source,
            found: Vec::new(),
        }
    }

    pub(crate) fn error(
        &mut self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
        allowed: Option<&str>,
    ) {
        let d = Diagnostic::at(
            self.file,
            self.source,
            span,
            key,
            message,
            allowed.map(str::to_string),
        );
        self.found.push(d);
    }

    pub(crate) fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.found.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError::new(self.found))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_the_caret_under_the_value() {
        let src = "[server]\nenforcement = \"kernal\"\n";
        let start = src.find("\"kernal\"").unwrap();
        let d = Diagnostic::at(
            "x.toml",
            src,
            Some(start..start + 8),
            "server.enforcement",
            "invalid value \"kernal\"",
            Some("user, kernel, auto".into()),
        );
        assert_eq!((d.line, d.column), (2, 15));
        let text = d.to_string();
        assert!(text.starts_with("x.toml:2:15: server.enforcement: invalid value \"kernal\"; allowed: user, kernel, auto"), "{text}");
        assert!(text.ends_with("  |               ^^^^^^^^"), "{text}");
    }

    #[test]
    fn spans_out_of_range_or_inside_a_char_are_safe() {
        let src = "é = 1";
        let d = Diagnostic::at("f", src, Some(1..100), "k", "m", None);
        assert_eq!(d.line, 1);
        let d = Diagnostic::at("f", "", Some(5..6), "k", "m", None);
        assert_eq!((d.line, d.column), (1, 1));
    }
}
