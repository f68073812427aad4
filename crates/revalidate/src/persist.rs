//! Persistence: the cache survives restarts and works offline.
//!
//! [`Persistence`] connects a [`QueryClient`] to a [`Store`]:
//!
//! - **Hydrate on start.** Every persisted query comes back with its value,
//!   wall-clock `updated_at`, version and error state, so ages are true
//!   across the restart: stale queries are refreshed first, fresh ones are
//!   not refetched, and reads are served without the fetcher, offline too.
//!   Entries older than `max_age` are dropped; a changed `buster` drops
//!   everything; an entry that does not decode is dropped with a warning
//!   and counted.
//! - **Write-behind.** Every change of an entry marks its key dirty (a map
//!   insert; never on the read path, never blocking a refresh). Once per
//!   flush window, the dirty entries are encoded and written in one store
//!   transaction, however many times each changed. A crash loses at most the
//!   last window. Shutdown flushes.
//! - **Removal** ([`QueryClient::remove`]) deletes the persisted entry.
//!   **Garbage collection does not**: a query collected from memory stays in
//!   the store, so that a restart (or an offline start) still has it, until
//!   `max_age` drops it at a later hydrate.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::client::{ChangeHook, QueryClient, Snapshot};
use crate::fetch::FetchError;
use crate::key::QueryKey;
use crate::log::decision;
use crate::rt::{from_unix_nanos, unix_nanos};
use crate::store::record::{self, Record, RecordError, StoredError};
use crate::store::{Batch, Codec, JsonCodec, Store, StoreError};

const BUSTER: &str = "buster";

/// Records read from the store at a time by hydrate: about 4 MiB of ~1 KB
/// values, few enough round trips to the store's thread.
const HYDRATE_PAGE: usize = 4096;

/// How a client is persisted.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PersistOptions {
    /// How often dirty entries are written (one transaction each time).
    /// Default 1 s: a crash loses at most this much.
    pub flush_every: Duration,
    /// Entries last updated longer ago are dropped at hydrate. Default 24 h,
    /// as TanStack Query's persister.
    pub max_age: Duration,
    /// A version string of the persisted data; when it differs from the
    /// stored one, the whole persisted cache is dropped. Change it when the
    /// shape of your values changes. Default empty.
    pub buster: String,
}

impl Default for PersistOptions {
    fn default() -> Self {
        Self {
            flush_every: Duration::from_secs(1),
            max_age: Duration::from_secs(24 * 3600),
            buster: String::new(),
        }
    }
}

/// What hydrate found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HydrateReport {
    /// Queries restored into the cache.
    pub restored: usize,
    /// Entries dropped for being older than `max_age`.
    pub expired: usize,
    /// Entries dropped because their key, record or payload did not decode.
    pub undecodable: usize,
    /// Whether a changed buster dropped the whole persisted cache.
    pub busted: bool,
    /// Queries already in the cache, left as they were.
    pub skipped: usize,
}

/// Write-behind figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PersistStats {
    /// Flushes that wrote something (one transaction each).
    pub flushes: u64,
    /// Entries written.
    pub written: u64,
    /// Entries deleted.
    pub deleted: u64,
    /// Flushes that failed (their entries are retried at the next one).
    pub failed_flushes: u64,
    /// Entries whose value could not be encoded (not persisted).
    pub unencodable: u64,
    /// Keys waiting for the next flush.
    pub pending: usize,
}

/// Persists a [`QueryClient`] in a [`Store`].
///
/// ```
/// use revalidate::{fetcher_fn, FetchError, MemoryStore, Persistence, QueryClient, QueryKey};
/// use serde_json::{json, Value};
/// use std::sync::Arc;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = Arc::new(MemoryStore::new());
/// let client: QueryClient<Value> = QueryClient::builder(fetcher_fn(|_k: QueryKey| async {
///     Ok::<_, FetchError>(json!({"rows": []}))
/// }))
/// .build();
///
/// // Restore what the store holds, then keep writing changes behind.
/// let (persist, report) = Persistence::new(store.clone()).start(&client).await?;
/// assert_eq!(report.restored, 0);
/// client.get(&QueryKey::bare("process.list")).await?;
/// persist.shutdown().await?; // flushes
/// assert_eq!(store.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
#[must_use = "persistence does nothing until it is started"]
pub struct Persistence<S, C = JsonCodec> {
    store: Arc<S>,
    codec: Arc<C>,
    options: PersistOptions,
}

impl<S: Store> Persistence<S, JsonCodec> {
    /// Persistence in `store`, with JSON as the codec.
    pub fn new(store: S) -> Self {
        Self {
            store: Arc::new(store),
            codec: Arc::new(JsonCodec),
            options: PersistOptions::default(),
        }
    }
}

impl<S: Store, C> Persistence<S, C> {
    /// Uses another codec.
    pub fn codec<C2>(self, codec: C2) -> Persistence<S, C2> {
        Persistence {
            store: self.store,
            codec: Arc::new(codec),
            options: self.options,
        }
    }

    /// Sets all options at once.
    pub fn options(mut self, options: PersistOptions) -> Self {
        self.options = options;
        self
    }

    /// How often dirty entries are written (default 1 s).
    pub fn flush_every(mut self, every: Duration) -> Self {
        self.options.flush_every = every;
        self
    }

    /// Entries older than this are dropped at hydrate (default 24 h).
    pub fn max_age(mut self, age: Duration) -> Self {
        self.options.max_age = age;
        self
    }

    /// The persisted data's version; a different stored one drops it all.
    pub fn buster(mut self, buster: impl Into<String>) -> Self {
        self.options.buster = buster.into();
        self
    }

    /// Restores the persisted queries into `client`. Queries the client
    /// already holds are left as they are.
    ///
    /// # Errors
    ///
    /// The store could not be read or pruned, or a record fails its
    /// checksum: the file was changed outside this library (disk damage,
    /// another program), so none of it is trusted further, and the error
    /// is [`StoreError::is_corrupt`]. The entries restored before it was
    /// found stay in the client: each passed its own check. Undecodable
    /// entries (an unknown format, a value the codec refuses) are not
    /// errors: they are dropped and counted.
    pub async fn hydrate<V>(&self, client: &QueryClient<V>) -> Result<HydrateReport, StoreError>
    where
        V: PartialEq + Send + Sync + 'static,
        C: Codec<V>,
    {
        let mut report = HydrateReport::default();
        let stored = self.store.meta(BUSTER).await?;
        if stored.as_deref().unwrap_or_default() != self.options.buster.as_bytes() {
            let had_data = stored.is_some() || !self.store.scan_page(None, 1).await?.is_empty();
            if had_data {
                tracing::warn!(
                    target: "revalidate",
                    "the cache buster changed to {:?}: dropping the persisted cache",
                    self.options.buster
                );
            }
            let batch = Batch {
                clear: true,
                meta: vec![(BUSTER.to_owned(), self.options.buster.as_bytes().to_vec())],
                ..Batch::default()
            };
            self.store.apply(batch).await?;
            report.busted = had_data;
            return Ok(report);
        }
        let inner = &client.inner;
        let now = inner.clock().wall_now();
        let mut prune = Batch::default();
        if let Some(n) = self.store.count_hint().await? {
            inner.reserve(n);
        }
        // A page at a time: the records read sit in memory only until their
        // page is restored (a million of ~1 KB were a second gigabyte when
        // read at once, allocated, faulted in and freed again).
        let mut after = None;
        loop {
            let page = self.store.scan_page(after.take(), HYDRATE_PAGE).await?;
            let last_page = page.len() != HYDRATE_PAGE;
            after = page.last().map(|(k, _)| k.clone());
            self.restore_page(client, page, now, &mut report, &mut prune)?;
            if last_page || after.is_none() {
                break;
            }
        }
        if !prune.is_empty() {
            self.store.apply(prune).await?;
        }
        decision!(
            "💾 restored {} queries ({} expired, {} undecodable dropped)",
            report.restored,
            report.expired,
            report.undecodable
        );
        Ok(report)
    }

    /// Restores one page of stored records into `client` (an error when
    /// one of them is damaged); what is to be
    /// deleted from the store goes into `prune`.
    fn restore_page<V>(
        &self,
        client: &QueryClient<V>,
        page: Vec<crate::store::KeyValue>,
        now: SystemTime,
        report: &mut HydrateReport,
        prune: &mut Batch,
    ) -> Result<(), StoreError>
    where
        V: PartialEq + Send + Sync + 'static,
        C: Codec<V>,
    {
        let inner = &client.inner;
        for (k, v) in page {
            // The record first: its checksum covers the key too.
            let decoded = match Record::decode_borrowed(&k, &v) {
                Err(RecordError::Damaged) => {
                    self.store.quarantine();
                    return Err(damaged(&k));
                }
                Err(e) => Err(e.to_string()),
                Ok((rec, payload)) => record::key_of(&k)
                    .map(|key| (key, rec, payload))
                    .map_err(|e| e.to_string()),
            };
            let (key, rec, payload) = match decoded {
                Ok(ok) => ok,
                Err(why) => {
                    tracing::warn!(target: "revalidate", "dropping a persisted entry that does not decode: {why}");
                    report.undecodable += 1;
                    prune.deletes.push(k);
                    continue;
                }
            };
            let updated = from_unix_nanos(rec.updated_at_unix_nanos);
            if now.duration_since(updated).unwrap_or_default() > self.options.max_age {
                report.expired += 1;
                prune.deletes.push(k);
                continue;
            }
            let value = match self.codec.decode(&key, payload) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(target: "revalidate", "dropping persisted {key}: its value does not decode: {e}");
                    report.undecodable += 1;
                    prune.deletes.push(k);
                    continue;
                }
            };
            if inner.restore(&key, snapshot_of(value, updated, rec)) {
                report.restored += 1;
            } else {
                report.skipped += 1;
            }
        }
        Ok(())
    }

    /// Hydrates `client`, then writes its changes behind in a task spawned on
    /// the current tokio runtime.
    ///
    /// # Errors
    ///
    /// Hydrate failed, or `client` is already persisted.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn start<V>(
        self,
        client: &QueryClient<V>,
    ) -> Result<(PersistHandle, HydrateReport), StoreError>
    where
        V: PartialEq + Send + Sync + 'static,
        C: Codec<V>,
    {
        let report = self.hydrate(client).await?;
        let (task, handle) = self.attach(client)?;
        crate::rt::spawn(task);
        Ok((handle, report))
    }

    /// Starts writing `client`'s changes behind without hydrating: returns
    /// the write-behind task (a future for the application to spawn) and its
    /// handle.
    ///
    /// # Errors
    ///
    /// `client` is already persisted.
    pub fn attach<V>(
        self,
        client: &QueryClient<V>,
    ) -> Result<
        (
            impl std::future::Future<Output = ()> + Send + 'static,
            PersistHandle,
        ),
        StoreError,
    >
    where
        V: PartialEq + Send + Sync + 'static,
        C: Codec<V>,
    {
        let dirty = Arc::new(Dirty::default());
        let hook: Arc<dyn ChangeHook<V>> = dirty.clone();
        if !client.inner.attach_hook(hook) {
            return Err(StoreError::new(
                crate::store::StoreErrorKind::Io,
                None,
                "this client is already persisted; attach one Persistence per client",
            ));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            client: client.clone(),
            store: self.store,
            codec: self.codec,
            dirty: dirty.clone(),
            counters: counters.clone(),
        };
        let task = writer.run(self.options.flush_every, rx);
        Ok((
            task,
            PersistHandle {
                tx,
                dirty,
                counters,
            },
        ))
    }
}

/// The error for a record under `key` (as stored) that fails its checksum.
fn damaged(key: &[u8]) -> StoreError {
    let mut shown = String::from_utf8_lossy(key).replace('\0', " ");
    if shown.len() > 80 {
        let mut end = 80;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown.truncate(end);
        shown.push('…');
    }
    StoreError::new(
        crate::store::StoreErrorKind::Corrupt,
        None,
        format!(
            "the record of `{shown}` fails its checksum: the file was changed outside revalidate (disk damage or another program)"
        ),
    )
}

/// The client's snapshot of a persisted record.
fn snapshot_of<V>(value: V, updated_at: SystemTime, rec: Record) -> Snapshot<V> {
    Snapshot {
        value: Arc::new(value),
        version: rec.version,
        updated_at,
        invalidated: rec.invalidated,
        errors: rec.errors,
        last_error: rec.last_error.map(|e| {
            (
                FetchError::new(e.kind, e.message),
                from_unix_nanos(e.at_unix_nanos),
            )
        }),
    }
}

/// The record that persists a client's snapshot, and its value.
fn record_of<V>(snapshot: Snapshot<V>) -> (Arc<V>, Record) {
    let rec = Record {
        version: snapshot.version,
        updated_at_unix_nanos: unix_nanos(snapshot.updated_at),
        invalidated: snapshot.invalidated,
        errors: snapshot.errors,
        last_error: snapshot.last_error.map(|(e, at)| StoredError {
            kind: e.kind(),
            at_unix_nanos: unix_nanos(at),
            message: e.message().to_owned(),
        }),
        payload: Vec::new(),
    };
    (snapshot.value, rec)
}

/// Keys changed since the last flush: `true` to delete.
#[derive(Debug, Default)]
struct Dirty {
    keys: Mutex<HashMap<QueryKey, bool>>,
}

impl<V> ChangeHook<V> for Dirty {
    fn changed(&self, key: &QueryKey) {
        self.keys.lock().insert(key.clone(), false);
    }
    fn removed(&self, key: &QueryKey) {
        self.keys.lock().insert(key.clone(), true);
    }
}

#[derive(Debug, Default)]
struct Counters {
    flushes: AtomicU64,
    written: AtomicU64,
    deleted: AtomicU64,
    failed: AtomicU64,
    unencodable: AtomicU64,
}

enum Command {
    Flush(oneshot::Sender<Result<usize, StoreError>>),
    Shutdown(oneshot::Sender<Result<usize, StoreError>>),
}

/// Controls the write-behind task. Dropping it stops the task after a last flush.
#[derive(Debug)]
pub struct PersistHandle {
    tx: mpsc::UnboundedSender<Command>,
    dirty: Arc<Dirty>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Flush(_) => "Flush",
            Command::Shutdown(_) => "Shutdown",
        })
    }
}

impl PersistHandle {
    /// Writes every pending change now; returns how many entries it wrote
    /// or deleted.
    ///
    /// # Errors
    ///
    /// The store failed (the changes stay pending), or the task is gone.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        self.ask(Command::Flush).await
    }

    /// Flushes and stops the write-behind task.
    ///
    /// # Errors
    ///
    /// The last flush failed.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        self.ask(Command::Shutdown).await.map(|_| ())
    }

    async fn ask(
        &self,
        cmd: fn(oneshot::Sender<Result<usize, StoreError>>) -> Command,
    ) -> Result<usize, StoreError> {
        let (tx, rx) = oneshot::channel();
        let gone = || {
            StoreError::new(
                crate::store::StoreErrorKind::Io,
                None,
                "the write-behind task has stopped",
            )
        };
        self.tx.send(cmd(tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Write-behind figures.
    pub fn stats(&self) -> PersistStats {
        self.stats_view().stats()
    }

    /// A view of [`stats`](Self::stats) that can be kept elsewhere (a
    /// server's stats route) while this handle keeps the only say over the
    /// task: the view neither flushes nor keeps the task running.
    pub fn stats_view(&self) -> PersistStatsView {
        PersistStatsView {
            dirty: self.dirty.clone(),
            counters: self.counters.clone(),
        }
    }
}

/// The write-behind's figures, read from anywhere; made by
/// [`PersistHandle::stats_view`].
#[derive(Clone)]
pub struct PersistStatsView {
    dirty: Arc<Dirty>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for PersistStatsView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PersistStatsView")
            .field(&self.stats())
            .finish()
    }
}

impl PersistStatsView {
    /// Write-behind figures now. A flush is counted once its transaction
    /// committed and flushes run one after another, so a change made before
    /// `flushes` was read is durable once it has gone up twice since: the
    /// second flush started after the read and wrote what was still pending.
    pub fn stats(&self) -> PersistStats {
        let c = &self.counters;
        PersistStats {
            flushes: c.flushes.load(Relaxed),
            written: c.written.load(Relaxed),
            deleted: c.deleted.load(Relaxed),
            failed_flushes: c.failed.load(Relaxed),
            unencodable: c.unencodable.load(Relaxed),
            pending: self.dirty.keys.lock().len(),
        }
    }
}

struct Writer<V, S, C> {
    client: QueryClient<V>,
    store: Arc<S>,
    codec: Arc<C>,
    dirty: Arc<Dirty>,
    counters: Arc<Counters>,
}

impl<V, S, C> Writer<V, S, C>
where
    V: PartialEq + Send + Sync + 'static,
    S: Store,
    C: Codec<V>,
{
    async fn run(self, every: Duration, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut ticker = crate::rt::interval(every);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if let Err(e) = self.flush().await {
                        tracing::warn!(target: "revalidate", "write-behind flush failed (retried next window): {e}");
                    }
                }
                cmd = rx.recv() => match cmd {
                    Some(Command::Flush(reply)) => {
                        let _ = reply.send(self.flush().await);
                    }
                    Some(Command::Shutdown(reply)) => {
                        let flushed = self.flush().await;
                        // The store closes before the answer: a process
                        // exits once shutdown returns, and a file it did
                        // not close is repaired at the next start (redb
                        // reads all of it: 2.4 s of a 1M-query start-up).
                        drop(self);
                        let _ = reply.send(flushed);
                        return;
                    }
                    // The handle was dropped: a last flush, then stop.
                    None => {
                        if let Err(e) = self.flush().await {
                            tracing::warn!(target: "revalidate", "final write-behind flush failed: {e}");
                        }
                        return;
                    }
                },
            }
        }
    }

    /// Writes the dirty entries in one batch; on failure they stay dirty
    /// (unless changed again meanwhile, which keeps the newer mark).
    async fn flush(&self) -> Result<usize, StoreError> {
        let dirty = std::mem::take(&mut *self.dirty.keys.lock());
        if dirty.is_empty() {
            return Ok(0);
        }
        let mut batch = Batch::default();
        for (key, delete) in &dirty {
            if *delete {
                batch.deletes.push(record::key_bytes(key));
                continue;
            }
            // An entry collected from memory since it changed keeps what
            // the store has (garbage collection does not delete).
            let Some((value, mut rec)) = self.client.inner.snapshot(key).map(record_of) else {
                continue;
            };
            match self.codec.encode(key, &value) {
                Ok(bytes) => {
                    rec.payload = bytes;
                    let stored = record::key_bytes(key);
                    let value = rec.encode(&stored);
                    batch.puts.push((stored, value));
                }
                Err(e) => {
                    self.counters.unencodable.fetch_add(1, Relaxed);
                    tracing::warn!(target: "revalidate", "not persisting {key}: its value does not encode: {e}");
                }
            }
        }
        let (puts, deletes) = (batch.puts.len(), batch.deletes.len());
        if batch.is_empty() {
            return Ok(0);
        }
        match self.store.apply(batch).await {
            Ok(()) => {
                let c = &self.counters;
                c.flushes.fetch_add(1, Relaxed);
                c.written.fetch_add(puts as u64, Relaxed);
                c.deleted.fetch_add(deletes as u64, Relaxed);
                Ok(puts + deletes)
            }
            Err(e) => {
                self.counters.failed.fetch_add(1, Relaxed);
                let mut keys = self.dirty.keys.lock();
                for (key, delete) in dirty {
                    keys.entry(key).or_insert(delete);
                }
                Err(e)
            }
        }
    }
}
