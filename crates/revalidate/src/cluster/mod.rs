//! The shared tier on Redis: several nodes (daemons, or instances of an
//! application) in front of one source cooperate through one Redis.
//!
//! - **One fetch per key per staleness window, cluster-wide.** Before a
//!   fetch, one script checks the shared entry and takes the key's lease in
//!   the same atomic step: a fresh shared value is adopted instead of
//!   fetched; a lease held by another node means a reader waits for that
//!   node's result and the refresh service leaves the key to it; otherwise
//!   this node takes the lease and fetches. The lease expires by itself if
//!   its holder dies.
//! - **Fencing.** Every shared entry has a version, the same on every node.
//!   A result is written only if the entry is still at the version the fetch
//!   was granted against, so a node paused past its lease cannot overwrite
//!   newer data; equal data keeps its version; versions never go down, also
//!   across a Redis that restarted empty (a node writes above the version
//!   it holds).
//! - **A durable change feed.** Every write goes to a Redis stream in the
//!   same script. Each node reads it and applies other nodes' changes and
//!   invalidations to the queries it caches (so its subscribers hear them).
//!   A node that was disconnected resumes from the last entry it applied;
//!   when that entry is gone (the stream was trimmed, or Redis lost its data)
//!   it reconciles every cached query by version.
//! - **Redis down** means each node carries on alone: it fetches and
//!   numbers versions itself, keeps serving from memory, and remembers what
//!   it wrote; when Redis returns it rejoins and reconciles.
//!
//! The cached read path never touches Redis.
//!
//! ```no_run
//! use revalidate::cluster::{ClusterOptions, RedisTier};
//! use revalidate::{fetcher_fn, FetchError, JsonCodec, QueryClient, QueryKey};
//! use serde_json::Value;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let tier = RedisTier::new(ClusterOptions::new("redis://127.0.0.1:6379/0"), JsonCodec)?;
//! tier.check().await?; // says clearly what is wrong: unreachable, password, scripting
//! let client: QueryClient<Value> = QueryClient::builder(fetcher_fn(|_k: QueryKey| async {
//!     Ok::<_, FetchError>(Value::Null)
//! }))
//! .coordinator(tier.coordinator())
//! .build();
//! let (feed, handle) = tier.attach(&client);
//! tokio::spawn(feed); // the change feed and the rejoin loop
//! # drop(handle);
//! # Ok(()) }
//! ```

mod coordinator;
mod feed;
mod scripts;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Serialize;
use tokio::sync::mpsc;

pub use coordinator::RedisCoordinator;
pub use feed::ClusterHandle;

use crate::key::QueryKey;
use crate::store::Codec;
use crate::{QueryClient, QueryFilter};
use scripts::Scripts;

/// How a node joins a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterOptions {
    /// `redis://[:password@]host:port/db` or `rediss://…` (TLS).
    pub redis_url: String,
    /// This node's name, unique in the cluster. Default: host name and pid.
    pub node_id: String,
    /// How long a lease lasts if its holder never releases it (it died).
    /// Default 10 s: a few times a typical fetch.
    pub lease_ttl: Duration,
    /// Every Redis key lives under this prefix (and nothing else is touched).
    /// Default `revalidate`.
    pub key_prefix: String,
    /// A shared entry not written for this long leaves Redis. Default 24 h,
    /// as the store's `max_age`.
    pub entry_ttl: Duration,
    /// About how many changes the feed keeps for nodes that reconnect.
    /// Default 100 000.
    pub feed_len: usize,
    /// The most bytes of one payload put in Redis; larger values stay local.
    /// Default 8 MiB.
    pub max_payload_bytes: usize,
}

impl ClusterOptions {
    /// Options for `redis_url` with the defaults.
    pub fn new(redis_url: impl Into<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            node_id: default_node_id(),
            lease_ttl: Duration::from_secs(10),
            key_prefix: "revalidate".to_owned(),
            entry_ttl: Duration::from_secs(24 * 3600),
            feed_len: 100_000,
            max_payload_bytes: 8 * 1024 * 1024,
        }
    }
}

/// The host name and process id.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "node".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Why a node cannot use its Redis.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The URL is not a Redis URL.
    #[error(
        "`{url}` is not a Redis URL ({reason}); write redis://host:port/db, or rediss:// for TLS"
    )]
    BadUrl {
        /// The URL, without its password.
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// Redis does not answer (down, wrong host or port, a firewall).
    #[error("cannot reach Redis at {target}: {reason}")]
    Unreachable {
        /// host:port/db.
        target: String,
        /// The cause.
        reason: String,
    },
    /// Redis refused the credentials.
    #[error(
        "Redis at {target} refused the credentials ({reason}); check the password in the URL (redis://:${{REDIS_PASSWORD}}@host:port/db)"
    )]
    Auth {
        /// host:port/db.
        target: String,
        /// What Redis said.
        reason: String,
    },
    /// Redis does not run Lua scripts.
    #[error(
        "Redis at {target} does not run scripts ({reason}); the cluster needs EVAL/EVALSHA (Redis 6+ or Valkey with scripting enabled)"
    )]
    NoScripting {
        /// host:port/db.
        target: String,
        /// What Redis said.
        reason: String,
    },
    /// Any other failure.
    #[error("Redis at {target}: {reason}")]
    Other {
        /// host:port/db.
        target: String,
        /// What happened.
        reason: String,
    },
}

impl ClusterError {
    /// Whether Redis could not be reached (as opposed to a configuration
    /// mistake): a node can start alone and join when it answers.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClusterError::Unreachable { .. })
    }

    fn of(target: &str, e: &redis::RedisError) -> Self {
        let target = target.to_owned();
        let reason = e.to_string();
        // A wrong password at connect is the client's own error kind (no
        // server code); a missing one, the server's NOAUTH.
        if e.kind() == redis::ErrorKind::AuthenticationFailed {
            return ClusterError::Auth { target, reason };
        }
        match e.code() {
            Some("WRONGPASS" | "NOAUTH" | "NOPERM") => {
                return ClusterError::Auth { target, reason };
            }
            Some("NOSCRIPT") => return ClusterError::NoScripting { target, reason },
            _ => {}
        }
        if reason.contains("unknown command")
            && (reason.contains("EVAL") || reason.contains("eval"))
        {
            return ClusterError::NoScripting { target, reason };
        }
        if e.is_io_error()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.is_connection_dropped()
        {
            ClusterError::Unreachable { target, reason }
        } else {
            ClusterError::Other { target, reason }
        }
    }
}

/// What a node knows of its cluster, for status pages and metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ClusterStatus {
    /// This node's id.
    pub node_id: String,
    /// host:port/db of Redis (never the password).
    pub redis: String,
    /// Whether the node cooperates through Redis right now.
    pub connected: bool,
    /// When `connected` last changed (Unix ms).
    pub since: u64,
    /// The last Redis error, if any (without credentials).
    pub last_error: Option<String>,
    /// Redis round trips made for fetches (acquire and publish).
    pub round_trips: u64,
    /// Fetches granted by the cluster (this node held the lease).
    pub leases: u64,
    /// Values adopted from the cluster instead of fetched.
    pub adopted: u64,
    /// Refreshes left to another node holding the lease.
    pub skipped: u64,
    /// Results refused because a newer write won (a late writer).
    pub refused: u64,
    /// Changes and invalidations from other nodes applied here.
    pub events_applied: u64,
    /// Full reconciliations by version (after a gap in the feed).
    pub reconciliations: u64,
    /// Fetches made alone while Redis was unreachable.
    pub alone: u64,
}

#[derive(Debug, Default)]
struct Counters {
    round_trips: AtomicU64,
    leases: AtomicU64,
    adopted: AtomicU64,
    skipped: AtomicU64,
    refused: AtomicU64,
    events_applied: AtomicU64,
    reconciliations: AtomicU64,
    alone: AtomicU64,
}

/// A write made on this node, for the feed task to put in Redis.
#[derive(Debug)]
enum LocalWrite<V> {
    Wrote(QueryKey, Arc<V>, u64),
    Invalidated(String),
}

/// What the coordinator and the feed task share.
struct Shared<V, C> {
    options: ClusterOptions,
    /// host:port/db, for messages.
    target: String,
    /// A random owner token for leases: the node id and a per-process nonce.
    owner: String,
    codec: C,
    client: redis::Client,
    /// Commands (scripts, pipelines); reconnects by itself.
    conn: ConnectionManager,
    scripts: Scripts,
    connected: AtomicBool,
    state: Mutex<State>,
    counters: Counters,
    /// Local writes for the feed task to publish.
    writes: mpsc::UnboundedSender<LocalWrite<V>>,
    writes_rx: Mutex<Option<mpsc::UnboundedReceiver<LocalWrite<V>>>>,
    /// Keys written here while Redis was unreachable: pushed on rejoin.
    dirty: Mutex<HashSet<QueryKey>>,
    /// (base version granted, version held) per key between acquire and publish.
    pending: Mutex<std::collections::HashMap<QueryKey, (u64, u64)>>,
}

#[derive(Debug)]
struct State {
    since: SystemTime,
    last_error: Option<String>,
}

/// A node's membership in a cluster on Redis. Cheap to clone.
pub struct RedisTier<V, C> {
    shared: Arc<Shared<V, C>>,
}

impl<V, C> Clone for RedisTier<V, C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<V, C> std::fmt::Debug for RedisTier<V, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("node_id", &self.shared.options.node_id)
            .field("redis", &self.shared.target)
            .finish_non_exhaustive()
    }
}

impl<V, C> RedisTier<V, C>
where
    V: PartialEq + Send + Sync + 'static,
    C: Codec<V>,
{
    /// A tier for `options`; values go to Redis through `codec`. Connects
    /// lazily: call [`check`](Self::check) to learn at once whether Redis
    /// is usable.
    ///
    /// # Errors
    ///
    /// The URL is not a Redis URL.
    pub fn new(options: ClusterOptions, codec: C) -> Result<Self, ClusterError> {
        let client =
            redis::Client::open(options.redis_url.as_str()).map_err(|e| ClusterError::BadUrl {
                url: redact_url(&options.redis_url),
                reason: e.to_string(),
            })?;
        let info = client.get_connection_info();
        let target = format!("{}/{}", info.addr(), info.redis_settings().db());
        // Short timeouts: a fetch must not wait long on a Redis that went
        // away; the node then carries on alone.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(1000)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| ClusterError::of(&target, &e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let nonce = crate::rt::splitmix64(
            crate::rt::unix_nanos(crate::rt::wall_now()).unsigned_abs()
                ^ u64::from(std::process::id()),
        );
        Ok(Self {
            shared: Arc::new(Shared {
                owner: format!("{}#{nonce:016x}", options.node_id),
                options,
                target,
                codec,
                client,
                conn,
                scripts: Scripts::new(),
                connected: AtomicBool::new(false),
                state: Mutex::new(State {
                    since: crate::rt::wall_now(),
                    last_error: None,
                }),
                counters: Counters::default(),
                writes: tx,
                writes_rx: Mutex::new(Some(rx)),
                dirty: Mutex::default(),
                pending: Mutex::default(),
            }),
        })
    }

    /// Checks that Redis answers, accepts the credentials and runs scripts.
    ///
    /// # Errors
    ///
    /// Which of those failed, naming host:port/db (never the password).
    pub async fn check(&self) -> Result<(), ClusterError> {
        self.shared.check().await
    }

    /// The coordinator to give the node's client
    /// ([`QueryClientBuilder::coordinator`](crate::QueryClientBuilder::coordinator)).
    pub fn coordinator(&self) -> RedisCoordinator<V, C> {
        RedisCoordinator {
            shared: self.shared.clone(),
        }
    }

    /// Starts following the cluster for `client` (which must use this
    /// tier's coordinator): returns the feed task, a future for the
    /// application to spawn, which reads other nodes' changes, publishes
    /// this node's writes and invalidations, and rejoins after a loss of
    /// Redis; and its handle. The task runs until the handle is dropped or
    /// shut down.
    ///
    /// # Panics
    ///
    /// If called twice on one tier.
    pub fn attach(
        &self,
        client: &QueryClient<V>,
    ) -> (
        impl std::future::Future<Output = ()> + Send + 'static,
        ClusterHandle,
    ) {
        let rx = self
            .shared
            .writes_rx
            .lock()
            .take()
            .expect("a tier follows one client: attach it once");
        feed::start(self.shared.clone(), client.clone(), rx)
    }

    /// What the node knows of the cluster now.
    pub fn status(&self) -> ClusterStatus {
        self.shared.status()
    }
}

impl<V, C> Shared<V, C> {
    fn status(&self) -> ClusterStatus {
        let state = self.state.lock();
        let c = &self.counters;
        ClusterStatus {
            node_id: self.options.node_id.clone(),
            redis: self.target.clone(),
            connected: self.connected.load(Relaxed),
            since: crate::rt::unix_millis(state.since),
            last_error: state.last_error.clone(),
            round_trips: c.round_trips.load(Relaxed),
            leases: c.leases.load(Relaxed),
            adopted: c.adopted.load(Relaxed),
            skipped: c.skipped.load(Relaxed),
            refused: c.refused.load(Relaxed),
            events_applied: c.events_applied.load(Relaxed),
            reconciliations: c.reconciliations.load(Relaxed),
            alone: c.alone.load(Relaxed),
        }
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Relaxed)
    }

    /// Marks the node alone after a Redis failure (once, with a warning).
    fn lost(&self, e: &redis::RedisError) {
        let text = ClusterError::of(&self.target, e).to_string();
        let was = self.connected.swap(false, Relaxed);
        let mut state = self.state.lock();
        if was {
            state.since = crate::rt::wall_now();
            tracing::warn!(target: "revalidate", "cluster: {text}; carrying on alone until it answers");
            metrics::gauge!("revalidate_cluster_connected").set(0.0);
        }
        state.last_error = Some(text);
    }

    /// Marks the node part of the cluster again.
    fn joined(&self) {
        if !self.connected.swap(true, Relaxed) {
            self.state.lock().since = crate::rt::wall_now();
            tracing::info!(target: "revalidate", "cluster: node {} joined through Redis at {}", self.options.node_id, self.target);
            metrics::gauge!("revalidate_cluster_connected").set(1.0);
        }
    }

    fn key(&self, kind: &str, key: &QueryKey) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.options.key_prefix.len() + 3 + key.text().len());
        k.extend_from_slice(self.options.key_prefix.as_bytes());
        k.push(b':');
        k.extend_from_slice(kind.as_bytes());
        k.push(b':');
        k.extend_from_slice(key.text().as_bytes());
        k
    }

    fn feed_key(&self) -> String {
        format!("{}:feed", self.options.key_prefix)
    }

    fn epoch_key(&self) -> String {
        format!("{}:epoch", self.options.key_prefix)
    }

    async fn check(&self) -> Result<(), ClusterError> {
        let mut conn = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| ClusterError::of(&self.target, &e))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| ClusterError::of(&self.target, &e))?;
        let one: i64 = redis::cmd("EVAL")
            .arg("return 1")
            .arg(0)
            .query_async(&mut conn)
            .await
            .map_err(|e| match ClusterError::of(&self.target, &e) {
                ClusterError::Other { target, reason } => {
                    ClusterError::NoScripting { target, reason }
                }
                other => other,
            })?;
        if one != 1 {
            return Err(ClusterError::NoScripting {
                target: self.target.clone(),
                reason: format!("EVAL 'return 1' answered {one}"),
            });
        }
        Ok(())
    }
}

/// An invalidation filter as the feed carries it (`None`: not expressible,
/// a predicate; it stays local).
fn filter_text(filter: &QueryFilter) -> Option<String> {
    Some(match filter {
        QueryFilter::All => "all".to_owned(),
        QueryFilter::Key(k) => format!("key:{}", k.text()),
        QueryFilter::Action(a) => format!("action:{a}"),
        QueryFilter::Resource(r) => format!("resource:{r}"),
        QueryFilter::Predicate(_) => return None,
    })
}

/// The filter of a feed entry.
fn filter_of(text: &str) -> Option<QueryFilter> {
    let (kind, rest) = text.split_once(':').unwrap_or((text, ""));
    Some(match kind {
        "all" => QueryFilter::All,
        "key" => QueryFilter::Key(QueryKey::from_canonical_text(rest)),
        "action" => QueryFilter::Action(rest.to_owned()),
        "resource" => QueryFilter::Resource(rest.to_owned()),
        _ => return None,
    })
}

/// A stable digest of a payload (FNV-1a, 64 bits), to tell equal data.
fn digest(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016x}")
}

/// The URL without its password, for messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://[credentials]@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

fn unix_ms_to_time(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_round_trip_and_urls_lose_their_password() {
        for f in [
            QueryFilter::All,
            QueryFilter::Action("process.list".into()),
            QueryFilter::Resource("process".into()),
            QueryFilter::Key(QueryKey::new("a", serde_json::json!({"x": 1}))),
        ] {
            let text = filter_text(&f).unwrap();
            assert_eq!(filter_text(&filter_of(&text).unwrap()).unwrap(), text);
        }
        assert!(filter_text(&QueryFilter::predicate(|_| true)).is_none());
        assert_eq!(
            redact_url("redis://:s3cret@host:6379/0"),
            "redis://[credentials]@host:6379/0"
        );
        assert_eq!(redact_url("redis://host/0"), "redis://host/0");
        assert_ne!(digest(b"a"), digest(b"b"));
    }

    #[test]
    fn a_refused_password_is_an_auth_error() {
        // What redis-rs answers to a wrong password (the AUTH at connect).
        let wrong = redis::RedisError::from((
            redis::ErrorKind::AuthenticationFailed,
            "Password authentication failed",
        ));
        assert!(matches!(
            ClusterError::of("h:1/0", &wrong),
            ClusterError::Auth { .. }
        ));
    }
}
