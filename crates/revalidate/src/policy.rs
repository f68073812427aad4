//! Staleness policy: how old a query may get before it needs a refresh.
//!
//! A [`Policy`] answers one question, "what is the staleness limit of this
//! action?", by the seed's rules:
//!
//! 1. an exact **action override** (`"process.list" = "2m"`), else
//! 2. the **resource default** of the action's resource (`process = "5m"`), else
//! 3. the **global default**.
//!
//! Named **profiles** (`development`, `production`, …) layer over the base
//! table: at each of the three levels, the active profile's entry wins over the
//! base entry, and the levels keep their order (an action override in the base
//! table still beats a resource default in the profile).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::key::default_resource;
use crate::suggest::did_you_mean;

/// When a cached query becomes stale.
///
/// ```
/// use revalidate::Staleness;
/// use std::time::Duration;
///
/// assert_eq!("5m".parse::<Staleness>().unwrap(), Staleness::After(Duration::from_secs(300)));
/// assert_eq!("never".parse::<Staleness>().unwrap(), Staleness::Never);
/// assert_eq!(Staleness::After(Duration::from_secs(90)).to_string(), "1m 30s");
/// assert!("0s".parse::<Staleness>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Staleness {
    /// Never stale by time. An explicit invalidation still refreshes it.
    Never,
    /// Stale as soon as it is stored: refreshed at every check while active.
    Always,
    /// Stale this long after it was last updated.
    After(Duration),
}

impl Staleness {
    /// Builds `After(d)` from a number of milliseconds.
    pub const fn millis(millis: u64) -> Self {
        Staleness::After(Duration::from_millis(millis))
    }

    /// Builds `After(d)` from a number of seconds.
    pub const fn secs(secs: u64) -> Self {
        Staleness::After(Duration::from_secs(secs))
    }

    /// Builds `After(d)` from a number of minutes.
    pub const fn mins(mins: u64) -> Self {
        Staleness::After(Duration::from_secs(mins * 60))
    }

    /// The duration after which data is stale, if it is time-based.
    pub fn limit(self) -> Option<Duration> {
        match self {
            Staleness::After(d) => Some(d),
            Staleness::Always => Some(Duration::ZERO),
            Staleness::Never => None,
        }
    }

    /// Whether data of this age is stale.
    pub fn is_stale(self, age: Duration) -> bool {
        match self {
            Staleness::Never => false,
            Staleness::Always => true,
            Staleness::After(d) => age >= d,
        }
    }

    fn validate(self) -> Result<Self, DurationError> {
        match self {
            Staleness::After(d) if d.is_zero() => Err(DurationError::Zero),
            other => Ok(other),
        }
    }
}

impl fmt::Display for Staleness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Staleness::Never => f.write_str("never"),
            Staleness::Always => f.write_str("always"),
            Staleness::After(d) => f.write_str(&crate::rt::compact_duration(*d)),
        }
    }
}

impl FromStr for Staleness {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "never" => Ok(Staleness::Never),
            "always" => Ok(Staleness::Always),
            other => parse_duration(other).map(Staleness::After),
        }
    }
}

/// Why a human duration (`"30s"`, `"5m"`) was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// The duration is zero; a zero staleness is spelled `"always"`.
    #[error("a zero duration is not allowed")]
    Zero,
    /// The duration is negative.
    #[error("a negative duration is not allowed")]
    Negative,
    /// The duration is longer than any the engine accepts (ten years).
    #[error("`{text}` is longer than ten years")]
    TooLong {
        /// The text that was given.
        text: String,
    },
    /// The text is not a duration.
    #[error("`{text}` is not a duration: {reason}")]
    Invalid {
        /// The text that was given.
        text: String,
        /// What the parser found wrong with it.
        reason: String,
    },
}

/// Parses a positive human duration: `"30s"`, `"5m"`, `"1h 30m"`, `"250ms"`.
///
/// # Errors
///
/// Zero, negative, unparseable and absurd (over ten years) durations are
/// errors, never defaults.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    if t.starts_with('-') {
        return Err(DurationError::Negative);
    }
    let d = humantime::parse_duration(t).map_err(|e| DurationError::Invalid {
        text: text.to_owned(),
        reason: e.to_string(),
    })?;
    if d.is_zero() {
        return Err(DurationError::Zero);
    }
    if d > MAX_DURATION {
        return Err(DurationError::TooLong {
            text: text.to_owned(),
        });
    }
    Ok(d)
}

/// The longest duration accepted anywhere: ten years. Longer ones are
/// mistakes (`"99999999999h"`) that would overflow deadlines.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// One table of staleness rules: the base table or a profile.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Layer {
    pub(crate) resources: BTreeMap<String, Staleness>,
    pub(crate) actions: BTreeMap<String, Staleness>,
    pub(crate) default: Option<Staleness>,
}

/// Where a resolved staleness came from; see [`Policy::explain`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rule {
    /// An exact action override.
    Action {
        /// The profile that set it, or `None` for the base table.
        profile: Option<String>,
    },
    /// The default of the action's resource.
    Resource {
        /// The resource.
        resource: String,
        /// The profile that set it, or `None` for the base table.
        profile: Option<String>,
    },
    /// The configured default for everything else.
    Default {
        /// The profile that set it, or `None` for the base table.
        profile: Option<String>,
    },
    /// Nothing configured it: the library's built-in default.
    BuiltIn,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let from = |p: &Option<String>| match p {
            Some(p) => format!("profile `{p}`"),
            None => "base table".to_owned(),
        };
        match self {
            Rule::Action { profile } => write!(f, "action override ({})", from(profile)),
            Rule::Resource { resource, profile } => {
                write!(f, "resource `{resource}` ({})", from(profile))
            }
            Rule::Default { profile } => write!(f, "default ({})", from(profile)),
            Rule::BuiltIn => f.write_str("built-in default"),
        }
    }
}

/// The staleness rules of an application: per-resource defaults, per-action
/// overrides, a global default, and named profiles layered over them.
///
/// Build one in code with [`Policy::builder`] or load one from TOML with
/// [`Config`](crate::Config).
///
/// ```
/// use revalidate::{Policy, Staleness};
///
/// let policy = Policy::builder()
///     .resource("node", Staleness::Never)
///     .resource("process", Staleness::mins(5))
///     .action("process.list", Staleness::mins(2))
///     .profile("development", |p| p.resource("process", Staleness::mins(1)))
///     .build()
///     .unwrap();
///
/// assert_eq!(policy.staleness("process.get"), Staleness::mins(5));
/// assert_eq!(policy.staleness("process.list"), Staleness::mins(2));
/// assert_eq!(policy.staleness("node.tree"), Staleness::Never);
///
/// let dev = policy.with_profile("development").unwrap();
/// assert_eq!(dev.staleness("process.get"), Staleness::mins(1));
/// // The base action override still beats the profile's resource default.
/// assert_eq!(dev.staleness("process.list"), Staleness::mins(2));
///
/// let err = policy.with_profile("developmnet").unwrap_err();
/// assert_eq!(err.to_string(), "unknown profile `developmnet`; did you mean `development`?");
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    base: Layer,
    profiles: BTreeMap<String, Layer>,
    active: Option<String>,
    resource_of: HashMap<String, String>,
}

/// The staleness used when nothing is configured for an action: five
/// minutes, the seed's "moderate" business-data setting.
pub const BUILT_IN_DEFAULT: Staleness = Staleness::mins(5);

impl Policy {
    /// Starts building a policy.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder::default()
    }

    /// The staleness limit of `action` under the active profile.
    pub fn staleness(&self, action: &str) -> Staleness {
        self.explain(action).0
    }

    /// The staleness limit of `action` and the rule that decided it.
    pub fn explain(&self, action: &str) -> (Staleness, Rule) {
        let profile = self
            .active
            .as_ref()
            .and_then(|name| self.profiles.get(name).map(|l| (name, l)));
        let layers = || {
            profile
                .map(|(name, layer)| (Some(name.clone()), layer))
                .into_iter()
                .chain(std::iter::once((None, &self.base)))
        };
        for (p, layer) in layers() {
            if let Some(s) = layer.actions.get(action) {
                return (*s, Rule::Action { profile: p });
            }
        }
        let resource = self.resource(action);
        for (p, layer) in layers() {
            if let Some(s) = layer.resources.get(resource) {
                return (
                    *s,
                    Rule::Resource {
                        resource: resource.to_owned(),
                        profile: p,
                    },
                );
            }
        }
        for (p, layer) in layers() {
            if let Some(s) = layer.default {
                return (s, Rule::Default { profile: p });
            }
        }
        (BUILT_IN_DEFAULT, Rule::BuiltIn)
    }

    /// The resource type of `action`: configured, or the text before the first `.`.
    pub fn resource<'a>(&'a self, action: &'a str) -> &'a str {
        self.resource_of
            .get(action)
            .map_or_else(|| default_resource(action), String::as_str)
    }

    /// The active profile, if one is selected.
    pub fn active_profile(&self) -> Option<&str> {
        self.active.as_deref()
    }

    /// The names of the defined profiles.
    pub fn profiles(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }

    /// This policy with `profile` active (`None`: the base table alone).
    ///
    /// # Errors
    ///
    /// An unknown profile is an error, never silently ignored.
    pub fn with_profile<'a>(
        &self,
        profile: impl Into<Option<&'a str>>,
    ) -> Result<Policy, PolicyError> {
        let profile = profile.into();
        if let Some(name) = profile {
            self.check_profile(name)?;
        }
        Ok(Policy {
            active: profile.map(str::to_owned),
            ..self.clone()
        })
    }

    fn check_profile(&self, name: &str) -> Result<(), PolicyError> {
        if self.profiles.contains_key(name) {
            return Ok(());
        }
        Err(PolicyError::UnknownProfile {
            name: name.to_owned(),
            suggestion: did_you_mean(name, self.profiles()).map(str::to_owned),
            known: self.profiles().map(str::to_owned).collect(),
        })
    }

    /// Every action named anywhere in the policy (overrides in any layer, and
    /// actions with a configured resource), sorted.
    pub fn configured_actions(&self) -> BTreeSet<&str> {
        std::iter::once(&self.base)
            .chain(self.profiles.values())
            .flat_map(|l| l.actions.keys())
            .chain(self.resource_of.keys())
            .map(String::as_str)
            .collect()
    }

    /// Every resource named anywhere in the policy, sorted.
    pub fn configured_resources(&self) -> BTreeSet<&str> {
        std::iter::once(&self.base)
            .chain(self.profiles.values())
            .flat_map(|l| l.resources.keys())
            .map(String::as_str)
            .chain(self.resource_of.values().map(String::as_str))
            .collect()
    }

    pub(crate) fn from_parts(
        base: Layer,
        profiles: BTreeMap<String, Layer>,
        resource_of: HashMap<String, String>,
    ) -> Self {
        Policy {
            base,
            profiles,
            active: None,
            resource_of,
        }
    }
}

/// An invalid policy built in code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A profile was selected that is not defined.
    #[error("unknown profile `{name}`{}", match suggestion {
        Some(s) => format!("; did you mean `{s}`?"),
        None if known.is_empty() => "; no profiles are defined".to_owned(),
        None => format!("; defined profiles: {}", known.join(", ")),
    })]
    UnknownProfile {
        /// The profile asked for.
        name: String,
        /// The closest defined profile, if any is close.
        suggestion: Option<String>,
        /// The defined profiles.
        known: Vec<String>,
    },
    /// A staleness of `After(0)`; write `Staleness::Always` instead.
    #[error("staleness for `{name}` is zero; use `Staleness::Always` for \"stale at once\"")]
    ZeroDuration {
        /// The resource or action it was given for.
        name: String,
    },
}

impl PolicyError {
    /// Whether this is an unknown profile.
    pub fn is_unknown_profile(&self) -> bool {
        matches!(self, PolicyError::UnknownProfile { .. })
    }
}

/// Builds a [`Policy`] in code.
#[derive(Debug, Default, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct PolicyBuilder {
    base: LayerBuilder,
    profiles: BTreeMap<String, LayerBuilder>,
    active: Option<String>,
    resource_of: HashMap<String, String>,
}

/// The rules of one profile, configured inside [`PolicyBuilder::profile`].
#[derive(Debug, Default, Clone)]
#[must_use]
pub struct LayerBuilder {
    layer: Layer,
    zero: Vec<String>,
}

impl LayerBuilder {
    /// Sets the default staleness of a resource type.
    pub fn resource(mut self, resource: impl Into<String>, staleness: Staleness) -> Self {
        let resource = resource.into();
        self.check(&resource, staleness);
        self.layer.resources.insert(resource, staleness);
        self
    }

    /// Overrides the staleness of one exact action.
    pub fn action(mut self, action: impl Into<String>, staleness: Staleness) -> Self {
        let action = action.into();
        self.check(&action, staleness);
        self.layer.actions.insert(action, staleness);
        self
    }

    /// Sets the staleness of actions whose resource has no rule.
    pub fn default(mut self, staleness: Staleness) -> Self {
        self.check("default", staleness);
        self.layer.default = Some(staleness);
        self
    }

    fn check(&mut self, name: &str, staleness: Staleness) {
        if staleness.validate().is_err() {
            self.zero.push(name.to_owned());
        }
    }
}

impl PolicyBuilder {
    /// Sets the default staleness of a resource type in the base table.
    pub fn resource(mut self, resource: impl Into<String>, staleness: Staleness) -> Self {
        self.base = self.base.resource(resource, staleness);
        self
    }

    /// Overrides the staleness of one exact action in the base table.
    pub fn action(mut self, action: impl Into<String>, staleness: Staleness) -> Self {
        self.base = self.base.action(action, staleness);
        self
    }

    /// Sets the global default (used when neither action nor resource has a rule).
    pub fn default_staleness(mut self, staleness: Staleness) -> Self {
        self.base = self.base.default(staleness);
        self
    }

    /// Maps an action to a resource type other than the text before its first `.`.
    pub fn resource_of(mut self, action: impl Into<String>, resource: impl Into<String>) -> Self {
        self.resource_of.insert(action.into(), resource.into());
        self
    }

    /// Defines (or extends) a named profile layered over the base table.
    pub fn profile(
        mut self,
        name: impl Into<String>,
        configure: impl FnOnce(LayerBuilder) -> LayerBuilder,
    ) -> Self {
        let name = name.into();
        let layer = self.profiles.remove(&name).unwrap_or_default();
        self.profiles.insert(name, configure(layer));
        self
    }

    /// Selects the profile that [`Policy::staleness`] answers for.
    pub fn active_profile(mut self, name: impl Into<String>) -> Self {
        self.active = Some(name.into());
        self
    }

    /// Checks and builds the policy.
    ///
    /// # Errors
    ///
    /// A zero `After` duration, or an active profile that is not defined.
    pub fn build(self) -> Result<Policy, PolicyError> {
        for b in std::iter::once(&self.base).chain(self.profiles.values()) {
            if let Some(name) = b.zero.first() {
                return Err(PolicyError::ZeroDuration { name: name.clone() });
            }
        }
        let policy = Policy {
            base: self.base.layer,
            profiles: self
                .profiles
                .into_iter()
                .map(|(k, v)| (k, v.layer))
                .collect(),
            active: None,
            resource_of: self.resource_of,
        };
        match self.active {
            Some(name) => policy.with_profile(name.as_str()),
            None => Ok(policy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Policy {
        Policy::builder()
            .resource("node", Staleness::Never)
            .resource("process", Staleness::mins(5))
            .resource("system_health", Staleness::Always)
            .action("process.list", Staleness::mins(2))
            .resource_of("search", "rule")
            .default_staleness(Staleness::mins(7))
            .profile("development", |p| {
                p.resource("process", Staleness::mins(1))
                    .action("node.tree", Staleness::secs(10))
                    .default(Staleness::secs(30))
            })
            .build()
            .unwrap()
    }

    #[test]
    fn resolution_order() {
        let p = seed();
        assert_eq!(
            p.explain("process.list"),
            (Staleness::mins(2), Rule::Action { profile: None })
        );
        assert_eq!(p.staleness("process.get"), Staleness::mins(5));
        assert_eq!(p.staleness("node"), Staleness::Never);
        assert_eq!(p.staleness("system_health"), Staleness::Always);
        assert_eq!(
            p.explain("other.x"),
            (Staleness::mins(7), Rule::Default { profile: None })
        );
        assert_eq!(
            Policy::default().explain("x"),
            (BUILT_IN_DEFAULT, Rule::BuiltIn)
        );
    }

    #[test]
    fn profiles_layer_over_base() {
        let p = seed().with_profile("development").unwrap();
        let dev = Some("development".to_owned());
        assert_eq!(p.active_profile(), Some("development"));
        assert_eq!(p.staleness("process.get"), Staleness::mins(1));
        assert_eq!(p.explain("process.list").1, Rule::Action { profile: None });
        assert_eq!(
            p.explain("node.tree"),
            (
                Staleness::secs(10),
                Rule::Action {
                    profile: dev.clone()
                }
            )
        );
        assert_eq!(p.staleness("node.other"), Staleness::Never);
        assert_eq!(
            p.explain("zzz"),
            (Staleness::secs(30), Rule::Default { profile: dev })
        );
        assert_eq!(
            p.with_profile(None).unwrap().staleness("process.get"),
            Staleness::mins(5)
        );
    }

    #[test]
    fn configured_resource_mapping() {
        let p = seed();
        assert_eq!(p.resource("search"), "rule");
        assert_eq!(p.resource("rule.search"), "rule");
        assert_eq!(p.resource("system_health"), "system_health");
    }

    #[test]
    fn builder_rejects_bad_input() {
        let err = Policy::builder()
            .resource("p", Staleness::After(Duration::ZERO))
            .build();
        assert_eq!(
            err.unwrap_err(),
            PolicyError::ZeroDuration { name: "p".into() }
        );
        let err = Policy::builder()
            .active_profile("prod")
            .build()
            .unwrap_err();
        assert!(err.is_unknown_profile());
        assert_eq!(
            err.to_string(),
            "unknown profile `prod`; no profiles are defined"
        );
        let err = seed().with_profile("staging").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown profile `staging`; defined profiles: development"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0s"), Err(DurationError::Zero));
        assert_eq!(parse_duration("-5m"), Err(DurationError::Negative));
        assert!(matches!(
            parse_duration("5 mins please"),
            Err(DurationError::Invalid { .. })
        ));
        assert!(matches!(
            parse_duration("300"),
            Err(DurationError::Invalid { .. })
        ));
    }

    #[test]
    fn staleness_math() {
        assert!(Staleness::Always.is_stale(Duration::ZERO));
        assert!(!Staleness::Never.is_stale(Duration::MAX));
        assert!(Staleness::secs(1).is_stale(Duration::from_secs(1)));
    }
}
