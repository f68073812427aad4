//! Stores: where the cache survives restarts (the seed's IndexedDB).
//!
//! A [`Store`] is a small durable key-value store: it applies batches of
//! puts and deletes atomically, lists every record, and keeps a few named
//! metadata values. What a record holds (payload, timestamps, version,
//! error state) is decided by [`Persistence`](crate::Persistence), the same
//! for every store; values become bytes through a [`Codec`].
//!
//! Two stores ship: [`MemoryStore`] (tests, and apps that want the
//! write-behind machinery without a disk) and, with the `redb` feature (on by
//! default), `RedbStore`: an embedded, ACID, crash-safe file.

mod codec;
#[cfg(all(feature = "web", target_arch = "wasm32", target_os = "unknown"))]
mod idb;
pub(crate) mod record;
#[cfg(feature = "redb")]
mod redb;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

pub use codec::{Codec, CodecError, JsonCodec};
#[cfg(all(feature = "web", target_arch = "wasm32", target_os = "unknown"))]
pub use idb::IdbStore;
#[cfg(all(feature = "web", target_arch = "wasm32", target_os = "unknown"))]
#[doc(hidden)]
pub use idb::dom_error as idb_error;
#[cfg(feature = "redb")]
pub use redb::RedbStore;

/// A stored record: its key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// One atomic change to a store: everything in it is applied, or nothing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Batch {
    /// Drop every record first (a cache buster changed).
    pub clear: bool,
    /// Records to write, by key.
    pub puts: Vec<KeyValue>,
    /// Records to delete, by key.
    pub deletes: Vec<Vec<u8>>,
    /// Metadata values to set.
    pub meta: Vec<(String, Vec<u8>)>,
}

impl Batch {
    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        !self.clear && self.puts.is_empty() && self.deletes.is_empty() && self.meta.is_empty()
    }
}

/// A durable key-value store for the cache.
///
/// Implementations do their I/O off the async threads (the redb store uses
/// `spawn_blocking`), so that a flush never stalls the application.
pub trait Store: Send + Sync + 'static {
    /// Applies `batch` atomically.
    fn apply(&self, batch: Batch) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every record, as `(key, value)` pairs.
    fn scan(&self) -> impl Future<Output = Result<Vec<KeyValue>, StoreError>> + Send;

    /// The records whose keys come after `after` (from the first one when
    /// `None`), in key order, `limit` of them, or fewer at the end: hydrate
    /// reads a store a page at a time with it, so that a million records
    /// never sit in memory at once beside the cache they fill. Pages may
    /// come from different snapshots of the store.
    ///
    /// The provided implementation reads every record with
    /// [`scan`](Self::scan) and returns all those after `after` at once
    /// (however many that is); callers take any page whose length is not
    /// `limit` as the last one. Stores that can read a range override it.
    fn scan_page(
        &self,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<KeyValue>, StoreError>> + Send {
        let _ = limit;
        async move {
            let mut all = self.scan().await?;
            all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            if let Some(after) = after {
                all.retain(|(k, _)| *k > after);
            }
            Ok(all)
        }
    }

    /// How many records the store holds, if it knows without reading them
    /// (`None` otherwise, the provided implementation): hydrate sizes the
    /// cache's map with it once, instead of growing it step by step.
    fn count_hint(&self) -> impl Future<Output = Result<Option<usize>, StoreError>> + Send {
        async { Ok(None) }
    }

    /// A metadata value set by an earlier batch.
    fn meta(&self, name: &str) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// Told by hydrate that a record it read was damaged: the file was
    /// changed by other means. A store with a file stops writing to it, so
    /// that it can be moved aside as it was found, and fails every later
    /// operation as corrupt. The provided implementation does nothing.
    fn quarantine(&self) {}
}

/// What kind of failure a [`StoreError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// Another process has the store open.
    Locked,
    /// The operating system refused access to the file.
    PermissionDenied,
    /// The file is not a valid store, or is damaged beyond repair.
    Corrupt,
    /// Any other input/output failure.
    Io,
}

/// A store failure, naming the path and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", kind_text(*.kind), path.as_ref().map(|p| format!(" `{}`", p.display())).unwrap_or_default())]
pub struct StoreError {
    kind: StoreErrorKind,
    path: Option<PathBuf>,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

fn kind_text(kind: StoreErrorKind) -> &'static str {
    match kind {
        StoreErrorKind::Locked => "store is locked by another process",
        StoreErrorKind::PermissionDenied => "permission denied for store",
        StoreErrorKind::Corrupt => "store is corrupt",
        StoreErrorKind::Io => "store I/O failed",
    }
}

impl StoreError {
    /// Builds an error.
    pub fn new(kind: StoreErrorKind, path: Option<&Path>, message: impl Into<String>) -> Self {
        Self {
            kind,
            path: path.map(Path::to_owned),
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying error.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
    /// The store's path, if it has one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
    /// Whether another process holds the store.
    pub fn is_locked(&self) -> bool {
        self.kind == StoreErrorKind::Locked
    }
    /// Whether access was denied.
    pub fn is_permission_denied(&self) -> bool {
        self.kind == StoreErrorKind::PermissionDenied
    }
    /// Whether the file is damaged or not a store.
    pub fn is_corrupt(&self) -> bool {
        self.kind == StoreErrorKind::Corrupt
    }
}

/// A store in memory: survives nothing, but counts the batches it applies,
/// which makes it the store for tests.
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    meta: Mutex<BTreeMap<String, Vec<u8>>>,
    batches: AtomicU64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Batches applied so far (one per flush that had something to write).
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Records held now.
    pub fn len(&self) -> usize {
        self.records.lock().len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.lock().is_empty()
    }
}

impl Store for MemoryStore {
    async fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let mut records = self.records.lock();
        if batch.clear {
            records.clear();
        }
        for (k, v) in batch.puts {
            records.insert(k, v);
        }
        for k in batch.deletes {
            records.remove(&k);
        }
        self.meta.lock().extend(batch.meta);
        self.batches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn scan(&self) -> Result<Vec<KeyValue>, StoreError> {
        Ok(self
            .records
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn scan_page(
        &self,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(self
            .records
            .lock()
            .range((from, Bound::Unbounded))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn count_hint(&self) -> Result<Option<usize>, StoreError> {
        Ok(Some(self.len()))
    }

    async fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.lock().get(name).cloned())
    }
}

impl<S: Store> Store for std::sync::Arc<S> {
    fn apply(&self, batch: Batch) -> impl Future<Output = Result<(), StoreError>> + Send {
        S::apply(self, batch)
    }
    fn scan(&self) -> impl Future<Output = Result<Vec<KeyValue>, StoreError>> + Send {
        S::scan(self)
    }
    fn scan_page(
        &self,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<KeyValue>, StoreError>> + Send {
        S::scan_page(self, after, limit)
    }
    fn count_hint(&self) -> impl Future<Output = Result<Option<usize>, StoreError>> + Send {
        S::count_hint(self)
    }
    fn meta(&self, name: &str) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send {
        S::meta(self, name)
    }
    fn quarantine(&self) {
        S::quarantine(self);
    }
}
