//! When a query is next due: after an update, and after a failure.
//!
//! Pure functions of the settings, the policy and the clock, so the rules
//! can be read (and tested) in one place.

use std::time::Duration;

use crate::fetch::FetchError;
use crate::key::QueryKey;
use crate::policy::Staleness;
use crate::rt::Stamp;
use crate::schedule::spread;
use crate::settings::RefreshSettings;

/// Scales `d` by `1 + jitter * u` for the key's deterministic `u` in `[-1, 1)`.
fn jittered(d: Duration, jitter: f64, key: &QueryKey, salt: u64) -> Duration {
    if jitter == 0.0 || d.is_zero() {
        return d;
    }
    d.mul_f64((1.0 + jitter * spread(key, salt)).max(0.0))
}

/// When data updated at `updated` falls due: `updated + limit` (± jitter);
/// at once for `Always`; never by time for `Never`.
pub(crate) fn due_after_update(
    staleness: Staleness,
    updated: Stamp,
    key: &QueryKey,
    version: u64,
    jitter: f64,
) -> Option<Stamp> {
    match staleness {
        Staleness::Never => None,
        Staleness::Always => Some(updated),
        Staleness::After(d) => Some(updated.add(jittered(d, jitter, key, version))),
    }
}

/// When to retry after the `attempt`-th consecutive failure (1-based), or
/// `None` when the failure should not be retried: retries are off, the error
/// is permanent, or `max_retries` are used up.
///
/// The delay is `retry_interval × 2^(attempt-1)`, ± jitter, and never less
/// than what the source asked for (`Retry-After`).
pub(crate) fn retry_delay(
    settings: &RefreshSettings,
    attempt: u32,
    error: &FetchError,
    key: &QueryKey,
) -> Option<Duration> {
    if !settings.retry_failed_refresh || !error.is_retryable() || attempt > settings.max_retries {
        return None;
    }
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    let base = settings.retry_interval.saturating_mul(factor);
    let delay = jittered(base, settings.jitter, key, u64::from(attempt) << 32);
    Some(delay.max(error.retry_after().unwrap_or_default()))
}

/// When a failed query that will not be retried falls due again: its next
/// natural due time counted from the failure.
pub(crate) fn due_after_giving_up(
    staleness: Staleness,
    failed_at: Stamp,
    key: &QueryKey,
    jitter: f64,
) -> Option<Stamp> {
    due_after_update(staleness, failed_at, key, u64::MAX, jitter)
}

/// The earliest time a failing query may be fetched again: the retry time
/// while retries remain, then its next natural due time counted from the
/// failure. `None`: not by time (a `Never` query that used its retries).
pub(crate) fn not_before(
    settings: &RefreshSettings,
    staleness: Staleness,
    attempt: u32,
    error: &FetchError,
    failed_at: Stamp,
    key: &QueryKey,
) -> Option<Stamp> {
    match retry_delay(settings, attempt, error, key) {
        Some(delay) => Some(failed_at.add(delay)),
        None => due_after_giving_up(staleness, failed_at, key, settings.jitter),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> QueryKey {
        QueryKey::bare("process.list")
    }

    #[test]
    fn due_times() {
        let t = Stamp(0);
        assert_eq!(due_after_update(Staleness::Never, t, &key(), 0, 0.1), None);
        assert_eq!(
            due_after_update(Staleness::Always, t, &key(), 0, 0.1),
            Some(t)
        );
        let d = due_after_update(Staleness::mins(5), t, &key(), 0, 0.0).unwrap();
        assert_eq!(d, t.add(Duration::from_secs(300)));
        let j = due_after_update(Staleness::mins(5), t, &key(), 0, 0.1).unwrap();
        let secs = j.since(t).as_secs_f64();
        assert!((270.0..=330.0).contains(&secs), "{secs}");
    }

    #[test]
    fn retry_delays_double_and_stop() {
        let mut s = RefreshSettings {
            jitter: 0.0,
            ..RefreshSettings::default()
        };
        let e = FetchError::failed("500");
        let delays: Vec<_> = (1..=4).map(|a| retry_delay(&s, a, &e, &key())).collect();
        let m = |n: u64| Some(Duration::from_secs(60 * n));
        assert_eq!(delays, vec![m(1), m(2), m(4), None]);
        assert_eq!(
            retry_delay(&s, 1, &FetchError::rejected("400"), &key()),
            None
        );
        let slow = FetchError::rejected("429").with_retry_after(Duration::from_secs(600));
        assert_eq!(retry_delay(&s, 1, &slow, &key()), m(10));
        s.retry_failed_refresh = false;
        assert_eq!(retry_delay(&s, 1, &e, &key()), None);
    }
}
