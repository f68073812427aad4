//! When a query is next due: the one rule, used after every write and at
//! every check.
//!
//! Pure functions of the settings, the query's facts and the clock, so the
//! rule can be read (and tested) in one place.

use std::time::Duration;

use crate::fetch::FetchError;
use crate::key::QueryKey;
use crate::policy::Staleness;
use crate::rt::Stamp;
use crate::settings::RefreshSettings;

/// What the rule looks at: one query's state, read from its entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts<'a> {
    /// The query's staleness limit.
    pub(crate) staleness: Staleness,
    /// When its data was stored or confirmed; `None` without data.
    pub(crate) updated_at: Option<Stamp>,
    /// Its data version (salts the jitter, so a new value moves the deadline).
    pub(crate) version: u64,
    /// The node's own salt for the jitter (0 for a client alone): nodes of
    /// a cluster spread their deadlines for one key, so the first refreshes
    /// it and the others hear the result before their own turn.
    pub(crate) salt: u64,
    /// Marked stale by an invalidation since it was last validated.
    pub(crate) invalidated: bool,
    /// Invalidations so far.
    pub(crate) invalidations: u32,
    /// The current streak of failures, if it is failing.
    pub(crate) failing: Option<Failing<'a>>,
}

/// A query's streak of failed fetches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Failing<'a> {
    /// Failures in a row (1 after the first).
    pub(crate) attempt: u32,
    /// The last one.
    pub(crate) error: &'a FetchError,
    /// When it happened.
    pub(crate) at: Stamp,
    /// The query's invalidation count then: an invalidation since asks for
    /// a refresh at once, whatever the backoff says.
    pub(crate) invalidations: u32,
}

/// When a query is due, and whether that time is a backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Due {
    pub(crate) at: Stamp,
    /// A retry backoff is a minimum: a check never serves it early, while a
    /// natural due time may be served within the check's window.
    pub(crate) backoff: bool,
}

/// When a query falls due; `None`: not by time.
///
/// - Without data, or invalidated: now.
/// - Otherwise when its data turns stale: `updated + limit` (± jitter); at
///   once for `Always`; never for `Never`.
/// - While it is failing, not before its retry time (`retry_interval`
///   doubling per attempt, ± jitter, at least what the source asked for);
///   once retries are used up or the error is permanent, not before its next
///   natural due time counted from the failure. A failing source is backed
///   off even when the data goes stale sooner, unless invalidated since.
pub(crate) fn next_due(
    settings: &RefreshSettings,
    key: &QueryKey,
    facts: &Facts<'_>,
    now: Stamp,
) -> Option<Due> {
    let natural = match facts.updated_at {
        None => Some(now),
        Some(_) if facts.invalidated => Some(now),
        Some(updated) => after_update(
            facts.staleness,
            updated,
            key,
            facts.version ^ facts.salt,
            settings.jitter,
        ),
    };
    let Some(failing) = facts.failing else {
        return natural.map(|at| Due { at, backoff: false });
    };
    if facts.invalidations != failing.invalidations {
        return Some(Due {
            at: now,
            backoff: false,
        });
    }
    let not_before = match retry(settings, failing.attempt, failing.error, key) {
        Retry::After(delay) => Some(failing.at.add(delay)),
        Retry::GiveUp(_) => {
            after_update(facts.staleness, failing.at, key, u64::MAX, settings.jitter)
        }
    };
    match (natural, not_before) {
        (_, None) => None,
        (Some(at), Some(nb)) if at >= nb => Some(Due { at, backoff: false }),
        (_, Some(nb)) => Some(Due {
            at: nb,
            backoff: true,
        }),
    }
}

/// When data updated at `updated` falls due: `updated + limit` (± jitter);
/// at once for `Always`; never by time for `Never`. `salt` varies the jitter.
fn after_update(
    staleness: Staleness,
    updated: Stamp,
    key: &QueryKey,
    salt: u64,
    jitter: f64,
) -> Option<Stamp> {
    match staleness {
        Staleness::Never => None,
        Staleness::Always => Some(updated),
        Staleness::After(d) => Some(updated.add(jittered(d, jitter, key, salt))),
    }
}

/// What to do after the `attempt`-th failure in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Try again after this delay.
    After(Duration),
    /// Wait for the next natural due time.
    GiveUp(GiveUp),
}

/// Why a failure is not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GiveUp {
    /// The error is permanent (rejected, or not attempted).
    NotRetryable,
    /// `retry_failed_refresh` is off.
    RetriesOff,
    /// `max_retries` are used up.
    RetriesUsed,
}

/// The retry after the `attempt`-th consecutive failure (1-based): after
/// `retry_interval × 2^(attempt-1)`, ± jitter, and never sooner than what
/// the source asked for (`Retry-After`), which is honoured up to
/// `max_retry_after` so that a source cannot switch a query off.
pub(crate) fn retry(
    settings: &RefreshSettings,
    attempt: u32,
    error: &FetchError,
    key: &QueryKey,
) -> Retry {
    if !error.is_retryable() {
        return Retry::GiveUp(GiveUp::NotRetryable);
    }
    if !settings.retry_failed_refresh {
        return Retry::GiveUp(GiveUp::RetriesOff);
    }
    if attempt > settings.max_retries {
        return Retry::GiveUp(GiveUp::RetriesUsed);
    }
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    let base = settings.retry_interval.saturating_mul(factor);
    let delay = jittered(base, settings.jitter, key, u64::from(attempt) << 32);
    let asked = error
        .retry_after()
        .unwrap_or_default()
        .min(settings.max_retry_after);
    Retry::After(delay.max(asked))
}

/// Scales `d` by `1 + jitter * u` for the key's deterministic `u` in `[-1, 1)`.
fn jittered(d: Duration, jitter: f64, key: &QueryKey, salt: u64) -> Duration {
    if jitter == 0.0 || d.is_zero() {
        return d;
    }
    d.mul_f64((1.0 + jitter * spread(key, salt)).max(0.0))
}

/// A number in `[-1, 1)` derived from a key and a salt: jitter that spreads
/// keys evenly and is the same in every run and process (no random source
/// needed, and tests replay exactly).
pub(crate) fn spread(key: &QueryKey, salt: u64) -> f64 {
    let z = crate::rt::splitmix64(key.stable_hash() ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> QueryKey {
        QueryKey::bare("process.list")
    }

    fn fresh(staleness: Staleness, updated: Stamp) -> Facts<'static> {
        Facts {
            staleness,
            updated_at: Some(updated),
            version: 0,
            salt: 0,
            invalidated: false,
            invalidations: 0,
            failing: None,
        }
    }

    fn settings() -> RefreshSettings {
        RefreshSettings {
            jitter: 0.0,
            ..RefreshSettings::default()
        }
    }

    #[test]
    fn natural_due_times() {
        let s = settings();
        let t = Stamp(0);
        let due = |f: &Facts<'_>| next_due(&s, &key(), f, t).map(|d| d.at);
        assert_eq!(due(&fresh(Staleness::Never, t)), None);
        assert_eq!(due(&fresh(Staleness::Always, t)), Some(t));
        assert_eq!(
            due(&fresh(Staleness::mins(5), t)),
            Some(t.add(Duration::from_secs(300)))
        );
        let empty = Facts {
            updated_at: None,
            ..fresh(Staleness::Never, t)
        };
        assert_eq!(due(&empty), Some(t), "no data: now");
        let invalidated = Facts {
            invalidated: true,
            ..fresh(Staleness::Never, t)
        };
        assert_eq!(due(&invalidated), Some(t), "invalidated: now");
        let j = after_update(Staleness::mins(5), t, &key(), 0, 0.1).unwrap();
        let secs = j.since(t).as_secs_f64();
        assert!((270.0..=330.0).contains(&secs), "{secs}");
    }

    #[test]
    fn retry_delays_double_stop_and_honour_the_source() {
        let mut s = settings();
        let e = FetchError::failed("500");
        let delays: Vec<_> = (1..=4).map(|a| retry(&s, a, &e, &key())).collect();
        let m = |n: u64| Retry::After(Duration::from_secs(60 * n));
        assert_eq!(
            delays,
            vec![m(1), m(2), m(4), Retry::GiveUp(GiveUp::RetriesUsed)]
        );
        assert_eq!(
            retry(&s, 1, &FetchError::rejected("400"), &key()),
            Retry::GiveUp(GiveUp::NotRetryable)
        );
        let slow = FetchError::rejected("429").with_retry_after(Duration::from_secs(600));
        assert_eq!(retry(&s, 1, &slow, &key()), m(10));
        let absurd =
            FetchError::rejected("429").with_retry_after(Duration::from_secs(9_999_999_999));
        assert_eq!(
            retry(&s, 1, &absurd, &key()),
            Retry::After(s.max_retry_after),
            "a source cannot switch a query off"
        );
        s.retry_failed_refresh = false;
        assert_eq!(retry(&s, 1, &e, &key()), Retry::GiveUp(GiveUp::RetriesOff));
    }

    #[test]
    fn a_failing_query_is_backed_off_even_when_its_data_goes_stale_sooner() {
        let s = settings();
        let t = Stamp(0);
        let e = FetchError::failed("500");
        let failing = Facts {
            failing: Some(Failing {
                attempt: 1,
                error: &e,
                at: t,
                invalidations: 0,
            }),
            ..fresh(Staleness::secs(10), t)
        };
        assert_eq!(
            next_due(&s, &key(), &failing, t),
            Some(Due {
                at: t.add(Duration::from_secs(60)),
                backoff: true
            })
        );
        let slow_data = Facts {
            staleness: Staleness::mins(5),
            ..failing
        };
        assert_eq!(
            next_due(&s, &key(), &slow_data, t),
            Some(Due {
                at: t.add(Duration::from_secs(300)),
                backoff: false
            }),
            "data that goes stale after the retry time waits for that"
        );
        let invalidated_since = Facts {
            invalidated: true,
            invalidations: 1,
            ..failing
        };
        assert_eq!(
            next_due(
                &s,
                &key(),
                &invalidated_since,
                t.add(Duration::from_secs(5))
            ),
            Some(Due {
                at: t.add(Duration::from_secs(5)),
                backoff: false
            }),
            "an invalidation since the failure asks for a refresh now"
        );
        let permanent = FetchError::rejected("404");
        let never = Facts {
            staleness: Staleness::Never,
            failing: Some(Failing {
                attempt: 1,
                error: &permanent,
                at: t,
                invalidations: 0,
            }),
            ..fresh(Staleness::Never, t)
        };
        assert_eq!(next_due(&s, &key(), &never, t), None);
    }

    #[test]
    fn spread_is_deterministic_and_bounded() {
        let k = |i: u32| QueryKey::new("a", serde_json::json!(i));
        assert_eq!(spread(&k(7), 1), spread(&k(7), 1));
        let xs: Vec<f64> = (0..1000).map(|i| spread(&k(i), 0)).collect();
        assert!(xs.iter().all(|x| (-1.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.1, "{mean}");
    }
}
