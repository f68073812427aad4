//! Keeps cached resources fresh in the background.
//!
//! `revalidate` is a query cache with cache-first reads and a background
//! refresh service. Readers get the cached value at once; the service
//! watches how old each cached query is, compares it with per-resource
//! staleness rules, and refreshes what is stale through the application's
//! [`Fetcher`], politely: bounded concurrency, batches, retries with backoff,
//! nothing while offline, nothing for data nobody reads.
//!
//! # Quick start
//!
//! ```
//! use revalidate::{fetcher_fn, FetchError, Policy, QueryClient, QueryKey, Staleness};
//! use serde_json::{json, Value};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let policy = Policy::builder()
//!     .resource("node", Staleness::Never)
//!     .resource("process", Staleness::mins(5))
//!     .action("process.list", Staleness::mins(2))
//!     .build()?;
//!
//! let client: QueryClient<Value> = QueryClient::builder(fetcher_fn(|key: QueryKey| async move {
//!     // Call your API here: key.action() and key.params_json().
//!     Ok::<_, FetchError>(json!({ "from": key.to_string() }))
//! }))
//! .policy(policy)
//! .build();
//!
//! let key = QueryKey::new("process.list", json!({ "status": "active" }));
//! let value = client.get(&key).await?; // fetched once, then served from the cache
//! assert_eq!(value["from"], r#"process.list{"status":"active"}"#);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # The parts
//!
//! - [`QueryKey`] — an action name and canonical parameters.
//! - [`Policy`] and [`Staleness`] — when data goes stale, per resource and
//!   action, with named profiles. [`Config`] loads them from TOML, with the
//!   [`RefreshSettings`].
//! - [`Fetcher`] — how to reach the source (the seed's `ActionClient`).
//! - [`QueryClient`] — the cache: `get`, `get_cached`, `subscribe`, `set_data`,
//!   `invalidate`, `remove`, `state`, `stats`.
//! - [`NetworkMonitor`] — online or offline.
//! - [`BackgroundRefresh`] — the service that keeps active queries fresh,
//!   following the client's [`RefreshSettings`].
//! - [`Coordinator`] — who fetches a key and which version its data gets,
//!   for several nodes sharing one source ([`LocalCoordinator`] by default).
//! - [`Persistence`] with a [`Store`] (`RedbStore` on disk) — the cache
//!   survives restarts and works offline.
//!
//! # Consistency
//!
//! - A cached read never waits on a fetch or a lock a fetch holds, never
//!   decodes and never copies: it is a hash lookup, a reference-count
//!   increment and a clock read.
//! - One fetch per key at a time. Readers of a key with nothing cached share
//!   that fetch and its result or failure; a failure is not cached.
//! - A fetch that started before a [`QueryClient::set_data`] does not
//!   overwrite it. A fetch that started before an invalidation stores its
//!   result but leaves the query stale, so it is fetched again.
//! - A failed fetch leaves the cached value in place, with the error recorded.
//! - Subscribers are told only of real changes (`V: PartialEq`).
//!
//! # Time
//!
//! All timing runs on tokio's clock, so tests can pause and advance time.
//! The crate spawns nothing: blocking work aside, everything runs in the
//! futures the application awaits.

mod client;
#[cfg(feature = "redis")]
pub mod cluster;
pub mod config;
mod coord;
mod fetch;
#[doc(hidden)]
pub mod fuzzing;
mod key;
mod log;
#[cfg(all(test, feature = "shuttle"))]
mod model;
mod network;
mod persist;
mod policy;
mod refresh;
mod rt;
mod schedule;
mod settings;
mod stats;
pub mod store;
mod suggest;
mod sync;
#[cfg(all(feature = "web", target_arch = "wasm32", target_os = "unknown"))]
pub mod web;

pub use client::{
    Change, DEFAULT_GC_TIME, FetchStatus, Freshness, Hit, QueryClient, QueryClientBuilder,
    QueryFilter, QueryState, Subscription,
};
pub use config::Config;
pub use coord::{Coordinator, Grant, Holding, LocalCoordinator, Publish, Remote, Ticket};
pub use fetch::{
    Batching, FetchError, FetchErrorKind, FetchRequest, Fetched, Fetcher, FnFetcher, fetcher_fn,
};
pub use key::{KeyHasher, PassThroughHasher, QueryKey, default_resource};
pub use log::{debug_enabled, set_debug};
pub use network::{NetworkMonitor, NetworkStatus, OfflineReason};
pub use persist::{
    HydrateReport, PersistHandle, PersistOptions, PersistStats, PersistStatsView, Persistence,
};
pub use policy::{
    BUILT_IN_DEFAULT, DurationError, LayerBuilder, Policy, PolicyBuilder, PolicyError, Rule,
    Staleness, parse_duration,
};
#[doc(hidden)]
pub use refresh::bench as refresh_bench;
pub use refresh::{BackgroundRefresh, RefreshController, RefreshError, RefreshHandle};
pub use rt::ClockSource;
pub use settings::{RefreshSettings, SettingsError};
pub use stats::{CacheStats, ResourceStats, Stats};
#[cfg(all(feature = "web", target_arch = "wasm32", target_os = "unknown"))]
pub use store::IdbStore;
#[cfg(feature = "redb")]
pub use store::RedbStore;
pub use store::{Codec, JsonCodec, MemoryStore, Store, StoreError};

/// The README's example, compiled as a doctest so it never rots.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
