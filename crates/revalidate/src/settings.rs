//! `RefreshSettings`: the seed's `REFRESH_SETTINGS`, plus what production needs.

use std::time::Duration;

/// How the background refresh service paces itself.
///
/// Field names and defaults follow the seed's `REFRESH_SETTINGS`; the fields
/// after `max_retries` are additions. Load them from the `[refresh]` table of a
/// [`Config`](crate::Config), or adjust the defaults in code:
///
/// ```
/// use revalidate::RefreshSettings;
/// use std::time::Duration;
///
/// let mut settings = RefreshSettings::default();
/// assert_eq!(settings.check_interval, Duration::from_secs(30));
/// settings.batch_size = 10;
/// settings.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RefreshSettings {
    /// How often the staleness monitor looks for due queries; also the
    /// coalescing window: what falls due within one window goes out together.
    /// Default 30 s.
    pub check_interval: Duration,
    /// Requests to the source in flight at once, at most. Default 3.
    pub max_concurrent_refreshes: usize,
    /// Keys of one action sent in one batch, at most. Default 5.
    pub batch_size: usize,
    /// Whether failed refreshes are retried with backoff. Default true.
    pub retry_failed_refresh: bool,
    /// Delay before the first retry; each further retry doubles it. Default 1 min.
    pub retry_interval: Duration,
    /// Retries after a failure before waiting for the next natural due time. Default 3.
    pub max_retries: u32,
    /// The longest wait before a retry that the source may ask for (an HTTP
    /// `Retry-After`); longer requests are cut to this, so that a source
    /// cannot switch a query off for good. Default 1 h.
    pub max_retry_after: Duration,
    /// A query with no subscriber and no read for this long is not refreshed.
    /// Default 10 min.
    pub inactive_after: Duration,
    /// A fetch that takes longer than this is cut off and counted as a
    /// timeout. Default 30 s.
    pub fetch_timeout: Duration,
    /// Spread of due times, as a fraction of the staleness limit (0.1: ±10 %),
    /// so that queries loaded together do not all refresh in the same instant.
    /// Also applied to retry delays. Default 0.1.
    pub jitter: f64,
    /// Consecutive network-class errors after which the source is considered
    /// offline. Default 3.
    pub offline_after_errors: u32,
    /// On shutdown, how long in-flight fetches may take to finish before they
    /// are cancelled. Default 5 s.
    pub shutdown_grace: Duration,
}

impl Default for RefreshSettings {
    fn default() -> Self {
        Self {
            check_interval: Duration::from_secs(30),
            max_concurrent_refreshes: 3,
            batch_size: 5,
            retry_failed_refresh: true,
            retry_interval: Duration::from_secs(60),
            max_retries: 3,
            max_retry_after: Duration::from_secs(3600),
            inactive_after: Duration::from_secs(600),
            fetch_timeout: Duration::from_secs(30),
            jitter: 0.1,
            offline_after_errors: 3,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// A [`RefreshSettings`] value that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid refresh setting `{field}`: {problem}")]
pub struct SettingsError {
    /// The field's name, as in the `[refresh]` table.
    pub field: &'static str,
    /// What is wrong and what is accepted.
    pub problem: &'static str,
}

/// The jitter fractions that keep every due time in the future.
pub(crate) const JITTER: std::ops::RangeInclusive<f64> = 0.0..=0.5;

impl RefreshSettings {
    /// Checks that every field is usable.
    ///
    /// # Errors
    ///
    /// Zero intervals, limits or sizes, and a jitter outside `0.0..=0.5`.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let err = |field, problem| Err(SettingsError { field, problem });
        if self.check_interval.is_zero() {
            return err("check_interval", "must be a positive duration");
        }
        if self.max_concurrent_refreshes == 0 {
            return err("max_concurrent_refreshes", "must be at least 1");
        }
        if self.batch_size == 0 {
            return err("batch_size", "must be at least 1");
        }
        if self.retry_interval.is_zero() {
            return err("retry_interval", "must be a positive duration");
        }
        if self.inactive_after.is_zero() {
            return err("inactive_after", "must be a positive duration");
        }
        if self.fetch_timeout.is_zero() {
            return err("fetch_timeout", "must be a positive duration");
        }
        if !JITTER.contains(&self.jitter) {
            return err("jitter", "must be a fraction from 0.0 to 0.5");
        }
        if self.offline_after_errors == 0 {
            return err("offline_after_errors", "must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seeds() {
        let s = RefreshSettings::default();
        assert_eq!(s.check_interval, Duration::from_secs(30));
        assert_eq!(s.max_concurrent_refreshes, 3);
        assert_eq!(s.batch_size, 5);
        assert!(s.retry_failed_refresh);
        assert_eq!(s.retry_interval, Duration::from_secs(60));
        assert_eq!(s.max_retries, 3);
        s.validate().unwrap();
    }

    #[test]
    fn validation() {
        let s = RefreshSettings {
            batch_size: 0,
            ..RefreshSettings::default()
        };
        assert_eq!(s.validate().unwrap_err().field, "batch_size");
        let s = RefreshSettings {
            jitter: 0.9,
            ..RefreshSettings::default()
        };
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "invalid refresh setting `jitter`: must be a fraction from 0.0 to 0.5"
        );
    }
}
