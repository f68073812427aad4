//! The feed task: one future that follows the cluster for a node.
//!
//! Two loops run in it side by side:
//!
//! - the **reader** joins (and rejoins) the cluster, reads the change feed
//!   and applies other nodes' changes and invalidations to the queries this
//!   node caches; after a gap (the node was disconnected longer than the
//!   feed keeps, or Redis lost its data) it reconciles every cached query by
//!   version, pushing what this node holds newer and taking what Redis holds
//!   newer;
//! - the **writer** puts this node's own writes (`set_data`) and
//!   invalidations in Redis; while the node is alone it remembers them and
//!   the reader pushes them when it rejoins.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use tokio::sync::{Notify, mpsc};

use super::{ClusterStatus, LocalWrite, Shared, digest, filter_of, unix_ms_to_time};
use crate::QueryClient;
use crate::coord::Remote;
use crate::key::QueryKey;
use crate::store::Codec;

/// How long one read of the feed blocks when nothing happens.
const BLOCK: Duration = Duration::from_millis(1000);
/// Feed entries read at once.
const BATCH: usize = 256;
/// Keys looked up per pipeline when reconciling.
const CHUNK: usize = 256;
/// Invalidations remembered while alone, at most (the oldest go first).
const PENDING_INVALIDATIONS: usize = 1024;

/// Controls a running feed task. Dropping it stops the task.
pub struct ClusterHandle {
    stop: Arc<Stop>,
    status: Box<dyn Fn() -> ClusterStatus + Send + Sync>,
}

impl std::fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHandle").finish_non_exhaustive()
    }
}

impl ClusterHandle {
    /// What the node knows of the cluster now.
    pub fn status(&self) -> ClusterStatus {
        (self.status)()
    }

    /// Stops the feed task.
    pub fn stop(&self) {
        self.stop.set();
    }
}

impl Drop for ClusterHandle {
    fn drop(&mut self) {
        self.stop.set();
    }
}

#[derive(Debug, Default)]
struct Stop {
    flag: AtomicBool,
    notify: Notify,
}

impl Stop {
    fn set(&self) {
        self.flag.store(true, Relaxed);
        self.notify.notify_waiters();
    }
    fn is_set(&self) -> bool {
        self.flag.load(Relaxed)
    }
    /// Sleeps for `d`, or less if asked to stop.
    async fn sleep(&self, d: Duration) {
        let notified = self.notify.notified();
        if self.is_set() {
            return;
        }
        tokio::select! {
            () = crate::rt::sleep(d) => {}
            () = notified => {}
        }
    }
}

pub(super) fn start<V, C>(
    shared: Arc<Shared<V, C>>,
    client: QueryClient<V>,
    writes: mpsc::UnboundedReceiver<LocalWrite<V>>,
) -> (
    impl std::future::Future<Output = ()> + Send + 'static,
    ClusterHandle,
)
where
    V: PartialEq + Send + Sync + 'static,
    C: Codec<V>,
{
    let stop = Arc::new(Stop::default());
    let handle = ClusterHandle {
        stop: stop.clone(),
        status: Box::new({
            let shared = shared.clone();
            move || shared.status()
        }),
    };
    let pending = Arc::new(parking_lot::Mutex::new(VecDeque::new()));
    let reader = Reader {
        shared: shared.clone(),
        client: client.clone(),
        stop: stop.clone(),
        pending: pending.clone(),
        last_id: None,
        epoch: None,
    };
    let writer = Writer {
        shared,
        client,
        stop,
        pending,
    };
    let task = async move {
        tokio::join!(reader.run(), writer.run(writes));
    };
    (task, handle)
}

/// A shared entry's version, update time and digest, as `HMGET` gives them.
type Shared3 = (Option<u64>, Option<u64>, Option<String>);

/// Invalidations made while alone, sent when the node rejoins.
type Pending = Arc<parking_lot::Mutex<VecDeque<String>>>;

struct Reader<V, C> {
    shared: Arc<Shared<V, C>>,
    client: QueryClient<V>,
    stop: Arc<Stop>,
    pending: Pending,
    /// The last feed entry applied.
    last_id: Option<String>,
    /// Redis's epoch when the node last joined.
    epoch: Option<String>,
}

impl<V, C> Reader<V, C>
where
    V: PartialEq + Send + Sync + 'static,
    C: Codec<V>,
{
    async fn run(mut self) {
        let mut conn: Option<MultiplexedConnection> = None;
        let mut backoff = Duration::from_millis(100);
        while !self.stop.is_set() {
            let Some(c) = conn.as_mut() else {
                match self.join().await {
                    Ok(c) => {
                        conn = Some(c);
                        backoff = Duration::from_millis(100);
                    }
                    Err(e) => {
                        self.shared.lost(&e);
                        self.stop.sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
                continue;
            };
            match self.read(c).await {
                Ok(()) => {
                    // The fetch path may have given up on Redis meanwhile
                    // (a timeout) while the feed kept working: rejoin.
                    if !self.shared.is_connected()
                        && let Err(e) = self.rejoin(c).await
                    {
                        self.shared.lost(&e);
                        conn = None;
                    }
                }
                Err(e) => {
                    self.shared.lost(&e);
                    conn = None;
                }
            }
        }
    }

    /// Connects the feed's own connection (a blocking read would hold up
    /// the fetch path's commands), finds where to resume, and rejoins.
    async fn join(&mut self) -> Result<MultiplexedConnection, redis::RedisError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(BLOCK + Duration::from_secs(2)));
        let mut conn = self
            .shared
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        self.rejoin(&mut conn).await?;
        Ok(conn)
    }

    /// Resumes from the last entry applied if the feed still holds it and
    /// Redis kept its data; else reconciles everything. Then pushes what
    /// this node wrote while alone.
    async fn rejoin(&mut self, conn: &mut MultiplexedConnection) -> Result<(), redis::RedisError> {
        let s = self.shared.clone();
        let epoch_key = s.epoch_key();
        let fresh_epoch = format!(
            "{:016x}",
            crate::rt::splitmix64(crate::rt::unix_nanos(crate::rt::wall_now()).unsigned_abs())
        );
        let _: bool = redis::cmd("SET")
            .arg(&epoch_key)
            .arg(&fresh_epoch)
            .arg("NX")
            .query_async(conn)
            .await
            .map(|r: Option<String>| r.is_some())?;
        let epoch: String = conn.get(&epoch_key).await?;
        let newest: Option<String> = newest_id(conn, &s.feed_key()).await?;
        let resumable = match (&self.epoch, &self.last_id) {
            (Some(e), Some(last)) if *e == epoch => {
                let oldest = oldest_id(conn, &s.feed_key()).await?;
                // The feed still holds the entry after ours (or nothing
                // was added since).
                match (oldest, &newest) {
                    (Some(oldest), _) => id_le(&oldest, &next_id(last)),
                    (None, _) => true,
                }
            }
            _ => false,
        };
        if !resumable {
            if self.epoch.as_ref().is_some_and(|e| *e != epoch) {
                tracing::warn!(target: "revalidate", "cluster: Redis lost its data (new epoch); reconciling every cached query by version");
            }
            self.reconcile(conn).await?;
            self.last_id = Some(newest.unwrap_or_else(|| "0-0".to_owned()));
        }
        self.epoch = Some(epoch);
        self.push_dirty(conn).await?;
        self.push_invalidations(conn).await?;
        // The fetch path's own connection reconnects lazily: make it do so
        // now, so that the first fetch after rejoining is not the one that
        // finds it broken.
        let mut ping = Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "not pinged",
        )));
        for _ in 0..5 {
            ping = redis::cmd("PING")
                .query_async::<String>(&mut s.conn.clone())
                .await;
            if ping.is_ok() {
                break;
            }
            self.stop.sleep(Duration::from_millis(100)).await;
        }
        ping?;
        s.joined();
        Ok(())
    }

    /// Every cached query against Redis, by version: this node takes what
    /// Redis holds newer and pushes what it holds newer.
    async fn reconcile(&self, conn: &mut MultiplexedConnection) -> Result<(), redis::RedisError> {
        let s = &self.shared;
        s.counters.reconciliations.fetch_add(1, Relaxed);
        let keys = self.client.inner.keys();
        for chunk in keys.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("HMGET")
                    .arg(s.key("e", key))
                    .arg("v")
                    .arg("u")
                    .arg("h");
            }
            let rows: Vec<Shared3> = pipe.query_async(conn).await?;
            for (key, row) in chunk.iter().zip(rows) {
                self.sync_one(conn, key, row).await?;
            }
        }
        Ok(())
    }

    /// One key against what Redis holds of it (its version, update time
    /// and digest): this node takes a newer version, confirms the same
    /// data, and pushes its own otherwise (`PUT` decides, atomically, what
    /// the same version with other data becomes).
    async fn sync_one(
        &self,
        conn: &mut MultiplexedConnection,
        key: &QueryKey,
        (shared_v, shared_u, shared_h): Shared3,
    ) -> Result<(), redis::RedisError> {
        let s = &self.shared;
        let (shared_v, shared_u) = (shared_v.unwrap_or(0), shared_u.unwrap_or(0));
        let Some(local) = self.client.inner.snapshot(key) else {
            return Ok(());
        };
        if shared_v > local.version {
            self.take(conn, key).await?;
            return Ok(());
        }
        let payload = match s.codec.encode(key, &local.value) {
            Ok(p) if p.len() <= s.options.max_payload_bytes => p,
            // Not shared: kept local, as on the fetch path.
            _ => {
                if shared_v == local.version && shared_v > 0 {
                    self.client
                        .inner
                        .confirm(key, shared_v, unix_ms_to_time(shared_u));
                }
                return Ok(());
            }
        };
        let local_h = digest(&payload);
        if shared_v == local.version && shared_v > 0 && shared_h.as_deref() == Some(&*local_h) {
            self.client
                .inner
                .confirm(key, shared_v, unix_ms_to_time(shared_u));
            return Ok(());
        }
        if self.put_sync(conn, key, &local, &payload).await? == "older" {
            self.take(conn, key).await?;
        }
        Ok(())
    }

    /// `PUT` in `sync` mode of this node's `local` data (`payload`): what
    /// the script answered. Two nodes apart may have given one version to
    /// different data: this node's then has the next one, as on every node
    /// that hears it.
    async fn put_sync(
        &self,
        conn: &mut MultiplexedConnection,
        key: &QueryKey,
        local: &crate::client::Snapshot<V>,
        payload: &[u8],
    ) -> Result<String, redis::RedisError> {
        let s = &self.shared;
        let (tag, numbered): (String, u64) = s
            .scripts
            .put
            .key(s.key("e", key))
            .key(s.feed_key())
            .arg(local.version)
            .arg(payload)
            .arg(digest(payload))
            .arg(key.text())
            .arg(&s.options.node_id)
            .arg(s.options.feed_len)
            .arg(entry_ttl_ms(s))
            .arg("sync")
            .arg(crate::rt::unix_millis(local.updated_at))
            .invoke_async(conn)
            .await?;
        if tag == "version" && numbered > local.version {
            self.client.inner.renumber(key, local.version, numbered);
        }
        Ok(tag)
    }

    /// Applies Redis's value of `key` here.
    async fn take(
        &self,
        conn: &mut MultiplexedConnection,
        key: &QueryKey,
    ) -> Result<bool, redis::RedisError> {
        let s = &self.shared;
        let (v, u, d): (Option<u64>, Option<u64>, Option<Vec<u8>>) = redis::cmd("HMGET")
            .arg(s.key("e", key))
            .arg("v")
            .arg("u")
            .arg("d")
            .query_async(conn)
            .await?;
        let (Some(v), Some(u), Some(d)) = (v, u, d) else {
            return Ok(false);
        };
        // The same version with other data: this node numbered its data
        // alone (Redis was away, or around a rejoin). Taking Redis's would
        // change the data under an unchanged version: push this node's
        // instead, which `PUT` gives the next version.
        if let Some(local) = self.client.inner.snapshot(key)
            && local.version == v
            && let Ok(payload) = s.codec.encode(key, &local.value)
            && payload.len() <= s.options.max_payload_bytes
            && digest(&payload) != digest(&d)
        {
            self.put_sync(conn, key, &local, &payload).await?;
            s.dirty.lock().remove(key);
            return Ok(false);
        }
        match s.codec.decode(key, &d) {
            Ok(value) => Ok(self
                .client
                .apply_remote(key, Remote::new(value, v, unix_ms_to_time(u)))),
            Err(e) => {
                tracing::warn!(target: "revalidate", "cluster: the shared value of {key} does not decode ({e}); ignored");
                Ok(false)
            }
        }
    }

    /// Pushes what this node wrote while alone (if it is still newer).
    async fn push_dirty(&self, conn: &mut MultiplexedConnection) -> Result<(), redis::RedisError> {
        let keys: Vec<QueryKey> = self.shared.dirty.lock().drain().collect();
        for (i, key) in keys.iter().enumerate() {
            let s = &self.shared;
            let found: Shared3 = redis::cmd("HMGET")
                .arg(s.key("e", key))
                .arg("v")
                .arg("u")
                .arg("h")
                .query_async(conn)
                .await
                .inspect_err(|_| {
                    // Not pushed yet: keep them for the next rejoin.
                    s.dirty.lock().extend(keys[i..].iter().cloned());
                })?;
            self.sync_one(conn, key, found)
                .await
                .inspect_err(|_| s.dirty.lock().extend(keys[i..].iter().cloned()))?;
        }
        Ok(())
    }

    async fn push_invalidations(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<(), redis::RedisError> {
        loop {
            let Some(filter) = self.pending.lock().pop_front() else {
                return Ok(());
            };
            if let Err(e) = invalidate(&self.shared, conn, &filter).await {
                self.pending.lock().push_front(filter);
                return Err(e);
            }
        }
    }

    /// One read of the feed, and what it brought applied.
    async fn read(&mut self, conn: &mut MultiplexedConnection) -> Result<(), redis::RedisError> {
        let s = self.shared.clone();
        let last = self.last_id.clone().unwrap_or_else(|| "$".to_owned());
        let options = redis::streams::StreamReadOptions::default()
            .block(usize::try_from(BLOCK.as_millis()).unwrap_or(1000))
            .count(BATCH);
        let reply: Option<redis::streams::StreamReadReply> = conn
            .xread_options(&[s.feed_key()], &[last], &options)
            .await?;
        let Some(reply) = reply else {
            return Ok(());
        };
        for stream in reply.keys {
            for entry in stream.ids {
                let origin: Option<String> = entry.get("o");
                if origin.as_deref() != Some(s.options.node_id.as_str()) {
                    self.apply(conn, &entry).await?;
                }
                self.last_id = Some(entry.id);
            }
        }
        Ok(())
    }

    /// One feed entry from another node.
    async fn apply(
        &self,
        conn: &mut MultiplexedConnection,
        entry: &redis::streams::StreamId,
    ) -> Result<(), redis::RedisError> {
        let s = &self.shared;
        let kind: Option<String> = entry.get("t");
        match kind.as_deref() {
            Some("put") => {
                let Some(text) = entry.get::<String>("k") else {
                    return Ok(());
                };
                let key = QueryKey::from_canonical_text(&text);
                if self.client.inner.contains(&key) && self.take(conn, &key).await? {
                    s.counters.events_applied.fetch_add(1, Relaxed);
                }
            }
            Some("confirm") => {
                let (Some(text), Some(v), Some(u)) = (
                    entry.get::<String>("k"),
                    entry.get::<u64>("v"),
                    entry.get::<u64>("u"),
                ) else {
                    return Ok(());
                };
                let key = QueryKey::from_canonical_text(&text);
                if self.client.inner.confirm(&key, v, unix_ms_to_time(u)) {
                    s.counters.events_applied.fetch_add(1, Relaxed);
                }
            }
            Some("inv") => {
                if let Some(filter) = entry.get::<String>("f").as_deref().and_then(filter_of) {
                    self.client.invalidate_here(&filter);
                    s.counters.events_applied.fetch_add(1, Relaxed);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

struct Writer<V, C> {
    shared: Arc<Shared<V, C>>,
    client: QueryClient<V>,
    stop: Arc<Stop>,
    pending: Pending,
}

impl<V, C> Writer<V, C>
where
    V: PartialEq + Send + Sync + 'static,
    C: Codec<V>,
{
    async fn run(self, mut writes: mpsc::UnboundedReceiver<LocalWrite<V>>) {
        loop {
            let notified = self.stop.notify.notified();
            if self.stop.is_set() {
                return;
            }
            let write = tokio::select! {
                w = writes.recv() => w,
                () = notified => return,
            };
            let Some(write) = write else { return };
            self.publish(write).await;
        }
    }

    async fn publish(&self, write: LocalWrite<V>) {
        let s = &self.shared;
        match write {
            LocalWrite::Wrote(key, value, version) => {
                if !s.is_connected() {
                    s.dirty.lock().insert(key);
                    return;
                }
                let Ok(payload) = s.codec.encode(&key, &value) else {
                    return;
                };
                if payload.len() > s.options.max_payload_bytes {
                    return;
                }
                let answer: Result<(String, u64), _> = s
                    .scripts
                    .put
                    .key(s.key("e", &key))
                    .key(s.feed_key())
                    .arg(version)
                    .arg(&payload)
                    .arg(digest(&payload))
                    .arg(key.text())
                    .arg(&s.options.node_id)
                    .arg(s.options.feed_len)
                    .arg(entry_ttl_ms(s))
                    .arg("write")
                    .arg(0)
                    .invoke_async(&mut s.conn.clone())
                    .await;
                match answer {
                    // The cluster numbered this write above what it held:
                    // the same version on every node.
                    Ok((_, numbered)) => {
                        self.client.inner.renumber(&key, version, numbered);
                    }
                    Err(e) => {
                        s.lost(&e);
                        s.dirty.lock().insert(key);
                    }
                }
            }
            LocalWrite::Invalidated(filter) => {
                if s.is_connected() {
                    match invalidate(s, &mut s.conn.clone(), &filter).await {
                        Ok(()) => return,
                        Err(e) => s.lost(&e),
                    }
                }
                let mut pending = self.pending.lock();
                if pending.len() == PENDING_INVALIDATIONS {
                    pending.pop_front();
                }
                pending.push_back(filter);
            }
        }
    }
}

/// Puts an invalidation in the feed (and marks a single shared entry stale).
async fn invalidate<V, C, Conn: redis::aio::ConnectionLike + Send>(
    s: &Shared<V, C>,
    conn: &mut Conn,
    filter: &str,
) -> Result<(), redis::RedisError> {
    let entry_key = filter
        .strip_prefix("key:")
        .map(|text| s.key("e", &QueryKey::from_canonical_text(text)));
    let is_key = entry_key.is_some();
    let _: i64 = s
        .scripts
        .invalidate
        .key(entry_key.unwrap_or_else(|| s.feed_key().into_bytes()))
        .key(s.feed_key())
        .arg(filter)
        .arg(&s.options.node_id)
        .arg(s.options.feed_len)
        .arg(if is_key { "1" } else { "0" })
        .invoke_async(conn)
        .await?;
    Ok(())
}

fn entry_ttl_ms<V, C>(s: &Shared<V, C>) -> u64 {
    u64::try_from(s.options.entry_ttl.as_millis()).unwrap_or(u64::MAX)
}

/// The id of the feed's newest entry, if any.
async fn newest_id(
    conn: &mut MultiplexedConnection,
    feed: &str,
) -> Result<Option<String>, redis::RedisError> {
    let r: redis::streams::StreamRangeReply = conn.xrevrange_count(feed, "+", "-", 1).await?;
    Ok(r.ids.into_iter().next().map(|e| e.id))
}

/// The id of the feed's oldest entry, if any.
async fn oldest_id(
    conn: &mut MultiplexedConnection,
    feed: &str,
) -> Result<Option<String>, redis::RedisError> {
    let r: redis::streams::StreamRangeReply = conn.xrange_count(feed, "-", "+", 1).await?;
    Ok(r.ids.into_iter().next().map(|e| e.id))
}

/// Stream ids `ms-seq`, compared as numbers.
fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

fn id_le(a: &str, b: &str) -> bool {
    parse_id(a) <= parse_id(b)
}

/// The smallest id after `id`.
fn next_id(id: &str) -> String {
    let (ms, seq) = parse_id(id);
    format!("{ms}-{}", seq + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_compare_as_numbers() {
        assert!(id_le("9-5", "10-0"));
        assert!(!id_le("10-1", "10-0"));
        assert_eq!(next_id("17-3"), "17-4");
        assert!(!id_le("5-0", &next_id("4-9")));
        assert!(id_le("4-10", &next_id("4-9")));
    }
}
