//! What callers and dashboards can see of a query.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::fetch::FetchError;
use crate::key::QueryKey;
use crate::policy::Staleness;

/// How a read was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Freshness {
    /// From the cache, within its staleness limit.
    Fresh,
    /// From the cache, past its staleness limit or invalidated; a refresh is
    /// on its way if a refresh service runs.
    Stale,
    /// Nothing was cached: fetched from the source for this read.
    Fetched,
}

/// A value with how it was served. See [`QueryClient::get_with_meta`](crate::QueryClient::get_with_meta).
#[derive(Debug)]
#[non_exhaustive]
pub struct Hit<V> {
    /// The value.
    pub value: Arc<V>,
    /// Fresh, stale, or fetched for this read.
    pub freshness: Freshness,
    /// Time since the value was stored or last confirmed by the source.
    pub age: Duration,
    /// The data version: it changes whenever the value changes (0 if unknown).
    pub version: u64,
}

impl<V> Clone for Hit<V> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            freshness: self.freshness,
            age: self.age,
            version: self.version,
        }
    }
}

impl<V> Hit<V> {
    pub(crate) fn fetched(value: Arc<V>, version: u64) -> Self {
        Self {
            value,
            freshness: Freshness::Fetched,
            age: Duration::ZERO,
            version,
        }
    }
}

/// Whether a query is being fetched (TanStack's `fetchStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FetchStatus {
    /// No fetch in flight.
    Idle,
    /// A fetch is in flight.
    Fetching,
    /// It needs a fetch, but the network is offline.
    Paused,
}

/// A snapshot of one query's state.
#[derive(Debug)]
#[non_exhaustive]
pub struct QueryState<V> {
    /// The key.
    pub key: QueryKey,
    /// The resource type of the key's action.
    pub resource: String,
    /// The cached value, if any.
    pub data: Option<Arc<V>>,
    /// When the value was stored or last confirmed (wall clock).
    pub updated_at: Option<SystemTime>,
    /// Time since `updated_at`.
    pub age: Option<Duration>,
    /// The staleness limit that applies.
    pub staleness: Staleness,
    /// Whether the value is stale (past its limit, or invalidated).
    pub is_stale: bool,
    /// Whether it was invalidated and not refetched since.
    pub is_invalidated: bool,
    /// Fetch status.
    pub status: FetchStatus,
    /// Failed fetches in a row (0 after a success).
    pub error_count: u32,
    /// The last failure, while `error_count > 0`.
    pub last_error: Option<FetchError>,
    /// When the last failure happened.
    pub last_error_at: Option<SystemTime>,
    /// Live subscriptions.
    pub observers: usize,
    /// When it was last read (coarse: to a quarter second).
    pub last_read: SystemTime,
    /// Whether the refresh service keeps it fresh: it has a subscriber or
    /// was read within `inactive_after`.
    pub is_active: bool,
    /// The data version.
    pub version: u64,
    /// When the refresh service will look at it next, if it is scheduled.
    pub next_check: Option<SystemTime>,
}

impl<V> Clone for QueryState<V> {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            resource: self.resource.clone(),
            data: self.data.clone(),
            updated_at: self.updated_at,
            age: self.age,
            staleness: self.staleness,
            is_stale: self.is_stale,
            is_invalidated: self.is_invalidated,
            status: self.status,
            error_count: self.error_count,
            last_error: self.last_error.clone(),
            last_error_at: self.last_error_at,
            observers: self.observers,
            last_read: self.last_read,
            is_active: self.is_active,
            version: self.version,
            next_check: self.next_check,
        }
    }
}
