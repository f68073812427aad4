//! Loading the policy and the refresh settings from TOML.
//!
//! The file carries the seed's tables with the seed's meaning:
//!
//! ```toml
//! profile = "production"          # optional: the active profile
//!
//! [staleness]                     # BACKGROUND_REFRESH_CONFIG: resource defaults
//! default = "5m"                  # optional: anything not listed
//! node = "never"
//! process = "5m"
//! system_health = "always"
//!
//! [overrides]                     # PRIORITY_OVERRIDES: exact actions
//! "process.list" = "2m"
//!
//! [profiles.development.staleness]  # DEV_CONFIG, layered over [staleness]
//! process = "1m"
//!
//! [refresh]                       # REFRESH_SETTINGS
//! check_interval = "30s"
//! max_concurrent_refreshes = 3
//!
//! [actions."rule.search"]         # optional: declare actions
//! resource = "rule"               # default: the text before the first '.'
//! ```
//!
//! Durations are strings with a unit (`"250ms"`, `"30s"`, `"5m"`, `"1h 30m"`).
//! Every problem is reported with its file, line and column, the key, what was
//! found, what is accepted and, for a misspelt name, the likely intended one.
//! When `[actions]` declares actions (or the application passes the resources
//! it knows to [`Config::from_toml_with_resources`]), resource and action
//! names are checked against them.

mod error;
mod reader;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

pub use error::{ConfigError, ConfigErrorKind, ConfigErrors};
pub use reader::{Item, Table, read};

/// The candidate closest to `word` as a plausible typo, if any: what the
/// reader's "did you mean" messages use, for readers of other tables.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    crate::suggest::did_you_mean(word, candidates)
}

use crate::policy::{Layer, Policy};
use crate::settings::RefreshSettings;

/// A loaded configuration: the staleness policy (with its active profile
/// selected) and the refresh settings.
///
/// ```
/// use revalidate::{Config, Staleness};
///
/// let cfg = Config::from_toml("app.toml", r#"
///     profile = "development"
///     [staleness]
///     process = "5m"
///     [profiles.development.staleness]
///     process = "1m"
///     [refresh]
///     batch_size = 10
/// "#).unwrap();
/// assert_eq!(cfg.policy.staleness("process.list"), Staleness::mins(1));
/// assert_eq!(cfg.refresh.batch_size, 10);
///
/// let err = Config::from_toml("app.toml", "[refresh]\nbatch_sise = 10\n").unwrap_err();
/// assert_eq!(err.first().help(), Some("did you mean `batch_size`?"));
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// The staleness rules, with the file's `profile` active (if it names one).
    pub policy: Policy,
    /// The `[refresh]` settings, defaults for what the file leaves out.
    pub refresh: RefreshSettings,
}

impl Config {
    /// Parses a configuration. `name` is used in error messages (a path).
    ///
    /// # Errors
    ///
    /// Every problem in the file, each with its position.
    pub fn from_toml(name: &str, text: &str) -> Result<Config, ConfigErrors> {
        read(name, text, Config::read)
    }

    /// Like [`Config::from_toml`], and also checks every resource name in
    /// the file against the ones the application knows.
    ///
    /// # Errors
    ///
    /// Every problem in the file, each with its position.
    pub fn from_toml_with_resources(
        name: &str,
        text: &str,
        resources: &[&str],
    ) -> Result<Config, ConfigErrors> {
        read(name, text, |root| Config::read_with(root, resources))
    }

    /// Reads and parses a configuration file.
    ///
    /// # Errors
    ///
    /// The file cannot be read, or has problems.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigErrors> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors::io(&name, &e))?;
        Self::from_toml(&name, &text)
    }

    /// Reads revalidate's keys from a root table, for applications that embed
    /// them in their own file (see [`read`]). Problems are recorded in the
    /// reader; the returned value is meaningful only if reading succeeds.
    pub fn read(root: &Table<'_>) -> Config {
        Self::read_with(root, &[])
    }

    /// Like [`Config::read`], with the resources the application knows.
    pub fn read_with(root: &Table<'_>, known_resources: &[&str]) -> Config {
        let actions = read_actions(root);
        let declared_actions: BTreeSet<&str> = actions.keys().map(String::as_str).collect();
        let mut known: BTreeSet<String> = known_resources.iter().map(|s| (*s).to_owned()).collect();
        known.extend(actions.iter().map(|(a, r)| {
            r.clone()
                .unwrap_or_else(|| crate::key::default_resource(a).to_owned())
        }));
        let check_resources = !known.is_empty();

        let base = match root.table("staleness") {
            Some(t) => read_resources(
                &t,
                check_resources.then_some(&known),
                "`default` or a resource of an action in [actions]",
            ),
            None => Layer::default(),
        };
        let mut overrides = match root.table("overrides") {
            Some(t) => read_overrides(
                &t,
                (!declared_actions.is_empty()).then_some(&declared_actions),
            ),
            None => BTreeMap::new(),
        };
        let mut base = base;
        base.actions.append(&mut overrides);

        // A profile may only name resources the base table or [actions] knows:
        // a name found nowhere else is almost always a typo.
        let mut profile_known = known.clone();
        profile_known.extend(base.resources.keys().cloned());
        let check_profiles = !profile_known.is_empty();
        let mut profiles = BTreeMap::new();
        if let Some(t) = root.table("profiles") {
            for item in t.entries() {
                let Some(p) = item.as_table() else { continue };
                let mut layer = match p.table("staleness") {
                    Some(s) => read_resources(
                        &s,
                        check_profiles.then_some(&profile_known),
                        "`default` or a resource named in [staleness] or [actions]",
                    ),
                    None => Layer::default(),
                };
                if let Some(o) = p.table("overrides") {
                    let known_actions = (!declared_actions.is_empty()).then_some(&declared_actions);
                    layer.actions = read_overrides(&o, known_actions);
                }
                profiles.insert(item.key().to_owned(), layer);
            }
        }

        let resource_of: HashMap<String, String> = actions
            .into_iter()
            .filter_map(|(a, r)| r.map(|r| (a, r)))
            .collect();
        let mut policy = Policy::from_parts(base, profiles, resource_of);
        if let Some(item) = root.item("profile")
            && let Some(name) = item.as_str()
        {
            {
                match policy.with_profile(name) {
                    Ok(p) => policy = p,
                    Err(_) => {
                        let names: Vec<&str> = policy.profiles().collect();
                        let help = did_you_mean(name, names.iter().copied())
                            .map(|s| format!("did you mean `{s}`?"))
                            .or_else(|| {
                                Some("define it as [profiles.NAME], or remove `profile`".to_owned())
                            });
                        let expected = if names.is_empty() {
                            "a profile defined in [profiles]; none are defined".to_owned()
                        } else {
                            format!("a profile defined in [profiles]: {}", names.join(", "))
                        };
                        item.report(
                            ConfigErrorKind::UnknownProfile,
                            format!("unknown profile `{name}`"),
                            expected,
                            help,
                        );
                    }
                }
            }
        }

        let refresh = root
            .table("refresh")
            .map(|t| read_refresh(&t))
            .unwrap_or_default();
        Config { policy, refresh }
    }
}

/// `[actions.NAME]` tables: each action's optional `resource`.
fn read_actions(root: &Table<'_>) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    if let Some(t) = root.table("actions") {
        for item in t.entries() {
            if item.key().is_empty() {
                item.invalid::<()>("a non-empty action name", None);
                continue;
            }
            let resource = item
                .as_table()
                .and_then(|a| a.string("resource"))
                .map(str::to_owned);
            out.insert(item.key().to_owned(), resource);
        }
    }
    out
}

fn read_resources(t: &Table<'_>, known: Option<&BTreeSet<String>>, what: &str) -> Layer {
    let mut layer = Layer::default();
    for item in t.entries() {
        let Some(staleness) = item.as_staleness() else {
            continue;
        };
        if item.key() == "default" {
            layer.default = Some(staleness);
            continue;
        }
        if let Some(known) = known.filter(|k| !k.contains(item.key())) {
            item.unknown_key(what, known.iter().map(String::as_str));
            continue;
        }
        layer.resources.insert(item.key().to_owned(), staleness);
    }
    layer
}

fn read_overrides(
    t: &Table<'_>,
    known: Option<&BTreeSet<&str>>,
) -> BTreeMap<String, crate::policy::Staleness> {
    let mut out = BTreeMap::new();
    for item in t.entries() {
        let Some(staleness) = item.as_staleness() else {
            continue;
        };
        if let Some(known) = known.filter(|k| !k.contains(item.key())) {
            item.unknown_key("an action declared in [actions]", known.iter().copied());
            continue;
        }
        out.insert(item.key().to_owned(), staleness);
    }
    out
}

/// Bounds of the `[refresh]` keys: beyond them a value is a mistake, not a
/// setting (`max_concurrent_refreshes = 99999999999999`).
const MIN_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);
const MAX_CONCURRENCY: u64 = 10_000;
const MAX_BATCH: u64 = 10_000;
const MAX_RETRIES: u32 = 100;
const MAX_OFFLINE_AFTER: u64 = 10_000;

fn read_refresh(t: &Table<'_>) -> RefreshSettings {
    let mut s = RefreshSettings::default();
    let usize_of = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    if let Some(item) = t.item("check_interval")
        && let Some(d) = item.as_duration()
    {
        if d < MIN_CHECK_INTERVAL {
            item.invalid::<()>(
                "a duration of at least 10ms, like \"30s\"",
                Some("a check this often would keep the service busy for nothing".to_owned()),
            );
        } else {
            s.check_interval = d;
        }
    }
    if let Some(n) = t.positive_at_most(
        "max_concurrent_refreshes",
        MAX_CONCURRENCY,
        "requests in flight at once would exhaust sockets long before the source",
    ) {
        s.max_concurrent_refreshes = usize_of(n);
    }
    if let Some(n) = t.positive_at_most(
        "batch_size",
        MAX_BATCH,
        "keys in one request is not a batch a source can answer",
    ) {
        s.batch_size = usize_of(n);
    }
    if let Some(b) = t.bool("retry_failed_refresh") {
        s.retry_failed_refresh = b;
    }
    if let Some(d) = t.duration("retry_interval") {
        s.retry_interval = d;
    }
    if let Some(item) = t.item("max_retries") {
        match item.as_integer().map(u32::try_from) {
            Some(Ok(n)) if n <= MAX_RETRIES => s.max_retries = n,
            Some(_) => {
                item.invalid::<()>(&format!("a whole number from 0 to {MAX_RETRIES}"), None);
            }
            None => {}
        }
    }
    if let Some(d) = t.duration("max_retry_after") {
        s.max_retry_after = d;
    }
    if let Some(d) = t.duration("inactive_after") {
        s.inactive_after = d;
    }
    if let Some(d) = t.duration("fetch_timeout") {
        s.fetch_timeout = d;
    }
    if let Some(item) = t.item("jitter") {
        match item.as_number() {
            Some(j) if crate::settings::JITTER.contains(&j) => s.jitter = j,
            Some(_) => {
                item.invalid::<()>(
                    "a fraction from 0.0 to 0.5 (0.1 spreads due times by ±10 %)",
                    None,
                );
            }
            None => {}
        }
    }
    if let Some(n) = t.positive_at_most(
        "offline_after_errors",
        MAX_OFFLINE_AFTER,
        "errors in a row would never call the source offline",
    ) {
        s.offline_after_errors = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let Some(d) = t.duration("shutdown_grace") {
        s.shutdown_grace = d;
    }
    s
}
