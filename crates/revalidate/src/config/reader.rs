//! A reader over spanned TOML that records every problem with its position.
//!
//! Readers ask for the keys they know (`table.duration("retry_interval")`);
//! each key asked for is remembered as known, and once reading is done every
//! key that nobody asked for is reported as unknown, with the closest known
//! key as a suggestion. Values of the wrong type are reported where they
//! stand. Reading never stops at the first problem.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::{ConfigError, ConfigErrorKind, ConfigErrors, SourceText};
use crate::policy::{DurationError, Staleness, parse_duration};
use crate::suggest::did_you_mean;

/// Parses `text` (named `name` in messages) and hands its root table to
/// `read`; afterwards reports keys nobody read. Returns `read`'s value only if
/// no problem was recorded.
///
/// This is how an application embeds revalidate's sections in its own
/// configuration file and gets the same quality of errors for its own keys:
///
/// ```
/// use revalidate::config::{self, Table};
///
/// let text = "port = 80\n[refresh]\nbatch_size = 10\n";
/// let (port, cfg) = config::read("app.toml", text, |root: &Table<'_>| {
///     let port = root.integer("port").unwrap_or(8080);
///     (port, revalidate::Config::read(root))
/// })
/// .unwrap();
/// assert_eq!(port, 80);
/// assert_eq!(cfg.refresh.batch_size, 10);
/// ```
///
/// # Errors
///
/// Every syntax error, wrong value and unknown key, each with its position.
pub fn read<T>(
    name: &str,
    text: &str,
    read: impl FnOnce(&Table<'_>) -> T,
) -> Result<T, ConfigErrors> {
    let source = SourceText::new(name, text.to_owned());
    let root = match DeTable::parse(&source.text) {
        Ok(root) => root,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim().to_owned();
            let err = source.error(
                ConfigErrorKind::Syntax,
                span,
                "",
                format!("invalid TOML: {message}"),
                None,
                None,
                None,
            );
            return Err(ConfigErrors::new(vec![err]));
        }
    };
    let doc = Doc {
        source: &source,
        state: RefCell::default(),
    };
    let table = Table {
        doc: &doc,
        path: String::new(),
        table: root.get_ref(),
        span: root.span(),
    };
    let value = read(&table);
    doc.finish(&table);
    let mut errors = std::mem::take(&mut doc.state.borrow_mut().errors);
    if errors.is_empty() {
        Ok(value)
    } else {
        errors.sort_by_key(|e| (e.line, e.column));
        errors.dedup();
        Err(ConfigErrors::new(errors))
    }
}

struct Doc<'a> {
    source: &'a SourceText,
    state: RefCell<State<'a>>,
}

#[derive(Default)]
struct State<'a> {
    /// Per table path: keys some reader asked for (present or not).
    known: BTreeMap<String, BTreeSet<String>>,
    /// Per table path: keys whose values some reader took.
    consumed: BTreeMap<String, BTreeSet<String>>,
    /// Tables handed out to readers, checked for unknown keys at the end.
    visited: Vec<(String, &'a DeTable<'a>)>,
    errors: Vec<ConfigError>,
}

impl<'a> Doc<'a> {
    fn push(&self, e: ConfigError) {
        self.state.borrow_mut().errors.push(e);
    }

    fn finish(&self, root: &Table<'a>) {
        let mut state = self.state.borrow_mut();
        let mut seen = BTreeSet::new();
        let visited = std::mem::take(&mut state.visited);
        for (path, table) in std::iter::once((root.path.clone(), root.table)).chain(visited) {
            if !seen.insert(path.clone()) {
                continue;
            }
            let consumed = state.consumed.get(&path).cloned().unwrap_or_default();
            let known = state.known.get(&path).cloned().unwrap_or_default();
            for (key, _) in table.iter() {
                let k = key.get_ref().as_ref();
                if consumed.contains(k) {
                    continue;
                }
                let full = join(&path, k);
                let where_ = if path.is_empty() {
                    "at the top level".to_owned()
                } else {
                    format!("in [{path}]")
                };
                let expected = if known.is_empty() {
                    "no keys".to_owned()
                } else {
                    known
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let help = did_you_mean(k, known.iter().map(String::as_str))
                    .map(|s| format!("did you mean `{s}`?"))
                    .or_else(|| Some("remove it, or check the spelling".to_owned()));
                let e = self.source.error(
                    ConfigErrorKind::UnknownKey,
                    key.span(),
                    &full,
                    format!("unknown key `{full}` {where_}"),
                    Some(format!("`{k}`")),
                    Some(format!("one of {expected}")),
                    help,
                );
                state.errors.push(e);
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    let key = if key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_owned()
    } else {
        format!("\"{key}\"")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// One TOML table being read. See [`read`].
pub struct Table<'a> {
    doc: &'a Doc<'a>,
    path: String,
    table: &'a DeTable<'a>,
    span: Range<usize>,
}

impl std::fmt::Debug for Table<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// One value in a table, with its key and position. See [`Table::entries`].
#[derive(Debug)]
pub struct Item<'a> {
    doc: &'a Doc<'a>,
    table: String,
    key: &'a Spanned<std::borrow::Cow<'a, str>>,
    value: &'a Spanned<DeValue<'a>>,
    path: String,
}

impl std::fmt::Debug for Doc<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doc")
            .field("file", &self.source.name)
            .finish_non_exhaustive()
    }
}

impl<'a> Table<'a> {
    /// The dotted path of this table (`""` for the root).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether the table has `key` (does not mark it as read).
    pub fn contains(&self, key: &str) -> bool {
        self.table.get(key).is_some()
    }

    /// Takes the value of `key`, remembering `key` as known.
    pub fn item(&self, key: &str) -> Option<Item<'a>> {
        let mut state = self.doc.state.borrow_mut();
        state
            .known
            .entry(self.path.clone())
            .or_default()
            .insert(key.to_owned());
        let (k, v) = self.table.get_key_value(key)?;
        state
            .consumed
            .entry(self.path.clone())
            .or_default()
            .insert(key.to_owned());
        Some(Item {
            doc: self.doc,
            table: self.path.clone(),
            key: k,
            value: v,
            path: join(&self.path, key),
        })
    }

    /// Takes every entry of a table whose keys are names chosen by the user
    /// (resources, actions, profiles); check them with [`Item::unknown_key`].
    pub fn entries(&self) -> Vec<Item<'a>> {
        let mut state = self.doc.state.borrow_mut();
        let consumed = state.consumed.entry(self.path.clone()).or_default();
        self.table
            .iter()
            .map(|(k, v)| {
                consumed.insert(k.get_ref().to_string());
                Item {
                    doc: self.doc,
                    table: self.path.clone(),
                    key: k,
                    value: v,
                    path: join(&self.path, k.get_ref()),
                }
            })
            .collect()
    }

    /// The sub-table at `key`; a non-table value there is reported.
    pub fn table(&self, key: &str) -> Option<Table<'a>> {
        self.item(key)?.as_table()
    }

    /// A string at `key`.
    pub fn string(&self, key: &str) -> Option<&'a str> {
        self.item(key)?.as_str()
    }

    /// A boolean at `key`.
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.item(key)?.as_bool()
    }

    /// An integer at `key`.
    pub fn integer(&self, key: &str) -> Option<i64> {
        self.item(key)?.as_integer()
    }

    /// A positive integer at `key` (zero and negatives are reported).
    pub fn positive(&self, key: &str) -> Option<u64> {
        self.item(key)?.as_positive()
    }

    /// A positive integer at `key`, at most `max` (a larger one is reported,
    /// naming `what` it would mean).
    pub fn positive_at_most(&self, key: &str, max: u64, what: &str) -> Option<u64> {
        let item = self.item(key)?;
        let n = item.as_positive()?;
        if n > max {
            return item.invalid(
                &format!("a whole number from 1 to {max}"),
                Some(format!("{n} {what}")),
            );
        }
        Some(n)
    }

    /// A number (integer or float) at `key`.
    pub fn number(&self, key: &str) -> Option<f64> {
        self.item(key)?.as_number()
    }

    /// A positive human duration (`"30s"`, `"5m"`) at `key`.
    pub fn duration(&self, key: &str) -> Option<Duration> {
        self.item(key)?.as_duration()
    }

    /// Reports a problem with the table itself (e.g. a missing key).
    pub fn error(&self, key: &str, message: impl Into<String>, expected: impl Into<String>) {
        let full = join(&self.path, key);
        let e = self.doc.source.error(
            ConfigErrorKind::MissingKey,
            self.span.clone(),
            &full,
            message.into(),
            None,
            Some(expected.into()),
            None,
        );
        self.doc.push(e);
    }
}

impl<'a> Item<'a> {
    /// The key as written.
    pub fn key(&self) -> &'a str {
        self.key.get_ref()
    }

    /// The dotted path of this value.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The value as a table.
    pub fn as_table(&self) -> Option<Table<'a>> {
        match self.value.get_ref() {
            DeValue::Table(t) => {
                self.doc
                    .state
                    .borrow_mut()
                    .visited
                    .push((self.path.clone(), t));
                Some(Table {
                    doc: self.doc,
                    path: self.path.clone(),
                    table: t,
                    span: self.value.span(),
                })
            }
            _ => self.wrong_type("a table"),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&'a str> {
        match self.value.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => self.wrong_type("a string"),
        }
    }

    /// The value as an array of strings (`["a", "b"]`). An element that is
    /// not a string is reported at its own position and left out.
    pub fn as_str_list(&self) -> Option<Vec<&'a str>> {
        let DeValue::Array(items) = self.value.get_ref() else {
            return self.wrong_type("an array of strings, like [\"a\", \"b\"]");
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, v) in items.iter().enumerate() {
            match v.get_ref() {
                DeValue::String(s) => out.push(s.as_ref()),
                other => {
                    let e = self.doc.source.error(
                        ConfigErrorKind::InvalidValue,
                        v.span(),
                        &format!("{}[{i}]", self.path),
                        format!("invalid value for `{}[{i}]`", self.path),
                        Some(describe(other)),
                        Some("a string".to_owned()),
                        None,
                    );
                    self.doc.push(e);
                }
            }
        }
        Some(out)
    }

    /// The value as a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self.value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => self.wrong_type("`true` or `false`"),
        }
    }

    /// The value as an integer.
    pub fn as_integer(&self) -> Option<i64> {
        match self.value.get_ref() {
            DeValue::Integer(i) => {
                match i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()) {
                    Ok(n) => Some(n),
                    Err(_) => self.invalid("an integer that fits in 64 bits", None),
                }
            }
            DeValue::String(t) if t.trim().parse::<i64>().is_ok() => self.invalid(
                "an integer",
                Some(format!("write it without quotes: {}", t.trim())),
            ),
            _ => self.wrong_type("an integer"),
        }
    }

    /// The value as a positive integer.
    pub fn as_positive(&self) -> Option<u64> {
        let n = self.as_integer()?;
        match u64::try_from(n) {
            Ok(n) if n > 0 => Some(n),
            _ => self.invalid("a positive integer (1 or more)", None),
        }
    }

    /// The value as a number.
    pub fn as_number(&self) -> Option<f64> {
        match self.value.get_ref() {
            DeValue::Float(f) => match f.as_str().replace('_', "").parse::<f64>() {
                Ok(n) if n.is_finite() => Some(n),
                _ => self.invalid("a finite number", None),
            },
            DeValue::Integer(_) => self.as_integer().map(|n| n as f64),
            _ => self.wrong_type("a number"),
        }
    }

    /// The value as a positive human duration.
    pub fn as_duration(&self) -> Option<Duration> {
        let expected =
            "a positive duration with a unit, like \"30s\", \"5m\", \"1h 30m\" or \"250ms\"";
        match self.value.get_ref() {
            DeValue::String(s) => match parse_duration(s) {
                Ok(d) => Some(d),
                Err(e) => self.invalid(expected, Some(duration_help(&e, false))),
            },
            DeValue::Integer(_) => {
                let help = self.integer_help();
                self.invalid(expected, help)
            }
            _ => self.wrong_type(expected),
        }
    }

    /// The value as a staleness: `"never"`, `"always"` or a positive duration.
    pub fn as_staleness(&self) -> Option<Staleness> {
        let expected = "\"never\", \"always\", or a positive duration like \"30s\" or \"5m\"";
        match self.value.get_ref() {
            DeValue::String(s) => match s.parse::<Staleness>() {
                Ok(st) => Some(st),
                Err(e) => {
                    let help = match s.trim().to_lowercase().as_str() {
                        "none" | "no" | "off" | "infinite" | "forever" => {
                            "to never refresh by time, write \"never\"".to_owned()
                        }
                        "0" | "now" | "immediately" | "zero" => {
                            "to refresh at every check, write \"always\"".to_owned()
                        }
                        _ => duration_help(&e, true),
                    };
                    self.invalid(expected, Some(help))
                }
            },
            DeValue::Integer(_) => {
                let help = self.integer_help();
                self.invalid(expected, help)
            }
            _ => self.wrong_type(expected),
        }
    }

    /// Reports that this entry's key is not acceptable here, suggesting the
    /// closest of `candidates`.
    pub fn unknown_key<'c>(
        &self,
        what: &str,
        candidates: impl IntoIterator<Item = &'c str> + Clone,
    ) {
        let suggestion = did_you_mean(self.key(), candidates.clone());
        let mut list: Vec<&str> = candidates.into_iter().collect();
        list.sort_unstable();
        list.dedup();
        let expected = if list.is_empty() {
            what.to_owned()
        } else {
            format!("{what}: {}", list.join(", "))
        };
        let e = self.doc.source.error(
            ConfigErrorKind::UnknownKey,
            self.key.span(),
            &self.path,
            format!("unknown key `{}` in [{}]", self.path, self.table),
            Some(format!("`{}`", self.key())),
            Some(expected),
            Some(match suggestion {
                Some(s) => format!("did you mean `{s}`?"),
                None => "remove it, or check the spelling".to_owned(),
            }),
        );
        self.doc.push(e);
    }

    /// Reports an unacceptable value with its own kind and message.
    pub fn report(
        &self,
        kind: ConfigErrorKind,
        message: String,
        expected: String,
        help: Option<String>,
    ) {
        let e = self.doc.source.error(
            kind,
            self.value.span(),
            &self.path,
            message,
            Some(describe(self.value.get_ref())),
            Some(expected),
            help,
        );
        self.doc.push(e);
    }

    /// Reports that the value is not acceptable; returns `None` for chaining.
    pub fn invalid<T>(&self, expected: &str, help: Option<String>) -> Option<T> {
        self.report(
            ConfigErrorKind::InvalidValue,
            format!("invalid value for `{}`", self.path),
            expected.to_owned(),
            help,
        );
        None
    }

    fn wrong_type<T>(&self, expected: &str) -> Option<T> {
        self.invalid(expected, None)
    }

    fn integer_help(&self) -> Option<String> {
        let n = self.as_integer_quiet()?;
        if n > 0 {
            let ms = Duration::from_millis(n.unsigned_abs());
            Some(format!(
                "durations are strings with a unit; if {n} meant milliseconds (as in the seed's TypeScript), write \"{}\"",
                crate::rt::compact_duration(ms).replace(' ', "")
            ))
        } else {
            Some("durations are strings with a unit, like \"30s\"".to_owned())
        }
    }

    fn as_integer_quiet(&self) -> Option<i64> {
        match self.value.get_ref() {
            DeValue::Integer(i) => {
                i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()
            }
            _ => None,
        }
    }
}

fn duration_help(e: &DurationError, staleness: bool) -> String {
    match e {
        DurationError::Zero if staleness => "a zero staleness is written \"always\"".to_owned(),
        DurationError::Zero => "use a positive duration".to_owned(),
        DurationError::Negative => "durations cannot be negative".to_owned(),
        DurationError::TooLong { .. } if staleness => {
            "to never refresh by time, write \"never\"".to_owned()
        }
        DurationError::TooLong { .. } => "use a duration of at most ten years".to_owned(),
        DurationError::Invalid { reason, .. } => {
            format!("{reason}; units are ms, s, m, h, d (e.g. \"90s\", \"1h 30m\")")
        }
    }
}

/// A short description of a value for "found: …".
fn describe(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("the string {s:?}"),
        DeValue::Integer(i) => format!("the integer {}", i.as_str()),
        DeValue::Float(f) => format!("the number {}", f.as_str()),
        DeValue::Boolean(b) => format!("the boolean {b}"),
        DeValue::Datetime(d) => format!("the datetime {d}"),
        DeValue::Array(_) => "an array".to_owned(),
        DeValue::Table(_) => "a table".to_owned(),
    }
}
