//! Configuration errors that say where, what, and how to fix it.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// What kind of problem a [`ConfigError`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Io,
    /// The file is not valid TOML.
    Syntax,
    /// A key that nothing reads (often a typo).
    UnknownKey,
    /// A key that must be present is missing.
    MissingKey,
    /// A value of the wrong type or out of range.
    InvalidValue,
    /// `profile` names a profile that is not defined.
    UnknownProfile,
}

/// One problem in a configuration file, with its position.
///
/// Its `Display` reads like a compiler diagnostic:
///
/// ```text
/// error: unknown key `staleness.proccess`
///   --> revalidate.toml:8:1
///    |
///  8 | proccess = "5m"
///    | ^^^^^^^^
///    = found: `proccess`
///    = expected: a resource of a configured action: node, process, rule
///    = help: did you mean `process`?
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub(crate) kind: ConfigErrorKind,
    pub(crate) file: Arc<str>,
    /// 1-based line and column; 0 when the error has no position.
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) line_text: String,
    pub(crate) width: usize,
    pub(crate) key: String,
    pub(crate) message: String,
    pub(crate) found: Option<String>,
    pub(crate) expected: Option<String>,
    pub(crate) help: Option<String>,
}

impl ConfigError {
    /// What kind of problem this is.
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }
    /// The file (as given to the loader).
    pub fn file(&self) -> &str {
        &self.file
    }
    /// 1-based line of the problem (0 when there is no position, as for I/O errors).
    pub fn line(&self) -> usize {
        self.line
    }
    /// 1-based column of the problem, in characters.
    pub fn column(&self) -> usize {
        self.column
    }
    /// The dotted key path, e.g. `staleness.process` or `refresh.batch_size`.
    pub fn key(&self) -> &str {
        &self.key
    }
    /// What was found, if anything.
    pub fn found(&self) -> Option<&str> {
        self.found.as_deref()
    }
    /// What is accepted here.
    pub fn expected(&self) -> Option<&str> {
        self.expected.as_deref()
    }
    /// A suggested fix ("did you mean `process`?").
    pub fn help(&self) -> Option<&str> {
        self.help.as_deref()
    }
    /// Whether the key is not one that anything reads.
    pub fn is_unknown_key(&self) -> bool {
        self.kind == ConfigErrorKind::UnknownKey
    }
    /// Whether a value is of the wrong type or out of range.
    pub fn is_invalid_value(&self) -> bool {
        self.kind == ConfigErrorKind::InvalidValue
    }
    /// Whether the file is not valid TOML.
    pub fn is_syntax(&self) -> bool {
        self.kind == ConfigErrorKind::Syntax
    }
    /// Whether the file could not be read.
    pub fn is_io(&self) -> bool {
        self.kind == ConfigErrorKind::Io
    }
    /// Whether a named profile is not defined.
    pub fn is_unknown_profile(&self) -> bool {
        self.kind == ConfigErrorKind::UnknownProfile
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.message)?;
        // Without a position (an I/O error) the message names the file.
        if self.line > 0 {
            let n = self.line.to_string();
            let pad = " ".repeat(n.len());
            writeln!(f, "\n{pad}--> {}:{}:{}", self.file, self.line, self.column)?;
            writeln!(f, "{pad} |")?;
            writeln!(f, "{n} | {}", self.line_text)?;
            write!(
                f,
                "{pad} | {}{}",
                " ".repeat(self.column.saturating_sub(1)),
                "^".repeat(self.width.max(1))
            )?;
        }
        let pad = " ".repeat(if self.line == 0 {
            1
        } else {
            self.line.to_string().len()
        });
        for (label, text) in [
            ("found", &self.found),
            ("expected", &self.expected),
            ("help", &self.help),
        ] {
            if let Some(text) = text {
                write!(f, "\n{pad} = {label}: {text}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one configuration file (never empty).
///
/// Loading reports all problems at once, so a user fixes a file in one pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    errors: Vec<ConfigError>,
}

impl ConfigErrors {
    pub(crate) fn new(errors: Vec<ConfigError>) -> Self {
        debug_assert!(!errors.is_empty());
        Self { errors }
    }

    /// The individual problems, in file order.
    pub fn errors(&self) -> &[ConfigError] {
        &self.errors
    }

    /// The first problem.
    pub fn first(&self) -> &ConfigError {
        &self.errors[0]
    }

    /// An I/O error for a file that could not be read.
    pub fn io(file: &str, err: &std::io::Error) -> Self {
        Self::new(vec![ConfigError {
            kind: ConfigErrorKind::Io,
            file: file.into(),
            line: 0,
            column: 0,
            line_text: String::new(),
            width: 0,
            key: String::new(),
            message: format!("cannot read `{file}`: {err}"),
            found: None,
            expected: None,
            help: None,
        }])
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.into_iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n\n")?;
            }
            write!(f, "{e}")?;
        }
        if self.errors.len() > 1 {
            write!(
                f,
                "\n\n{} errors in {}",
                self.errors.len(),
                self.errors[0].file
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The text of a configuration file, with a line index for positions.
#[derive(Debug)]
pub(crate) struct SourceText {
    pub(crate) name: Arc<str>,
    pub(crate) text: String,
    line_starts: Vec<usize>,
}

impl SourceText {
    pub(crate) fn new(name: &str, text: String) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            name: name.into(),
            text,
            line_starts,
        }
    }

    /// Builds an error positioned at `span` (byte offsets).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn error(
        &self,
        kind: ConfigErrorKind,
        span: Range<usize>,
        key: &str,
        message: String,
        found: Option<String>,
        expected: Option<String>,
        help: Option<String>,
    ) -> ConfigError {
        let start = span.start.min(self.text.len());
        let line_idx = self
            .line_starts
            .partition_point(|&s| s <= start)
            .saturating_sub(1);
        let line_start = self.line_starts[line_idx];
        let line_end = self.text[line_start..]
            .find('\n')
            .map_or(self.text.len(), |i| line_start + i);
        let line_text = self.text[line_start..line_end].trim_end_matches('\r');
        let column = self.text[line_start..start].chars().count() + 1;
        // Underline the span, but only up to the end of its first line.
        let end = span.end.clamp(start, line_end);
        let width = self.text[start..end].chars().count();
        ConfigError {
            kind,
            file: self.name.clone(),
            line: line_idx + 1,
            column,
            line_text: line_text.to_owned(),
            width,
            key: key.to_owned(),
            message,
            found,
            expected,
            help,
        }
    }
}
