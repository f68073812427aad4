//! `RedbStore`: the embedded on-disk store.
//!
//! redb is pure Rust, ACID, with checksummed commits and a stable file
//! format: a commit is either wholly on disk or not at all, so a process
//! killed at any moment leaves a file that opens with the last committed
//! batch. Each batch is one write transaction with immediate durability.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata, StorageError,
    TableDefinition,
};

use parking_lot::Mutex;

use super::{Batch, KeyValue, Store, StoreError, StoreErrorKind};

const ENTRIES: TableDefinition<'static, &[u8], &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("meta");

/// A store in one redb file.
///
/// A damaged file never panics the process. Opening repairs a file a crash
/// left (redb does, by itself); damage done to a closed file is reported as
/// [`StoreErrorKind::Corrupt`] naming the path, when redb meets it or, for
/// the records, when hydrate checks each record's checksum (a panic inside
/// redb becomes the same error, and the store is quarantined: nothing more
/// is written to the file). [`RedbStore::open_verified`] checks every page
/// of the file at open instead.
/// After an I/O failure (a full disk, say) the store drops its handle and
/// opens the file again at the next batch, so writing resumes once the
/// cause is gone.
///
/// ```no_run
/// use revalidate::RedbStore;
///
/// match RedbStore::open("cache.redb") {
///     Ok(store) => { /* hand it to Persistence */ }
///     Err(e) if e.is_locked() => eprintln!("another process uses the cache: {e}"),
///     Err(e) if e.is_corrupt() => {
///         let aside = RedbStore::move_aside("cache.redb").expect("renamed");
///         eprintln!("{e}; kept it as {} and starting empty", aside.display());
///     }
///     Err(e) => eprintln!("starting without a persisted cache: {e}"),
/// }
/// ```
#[derive(Clone)]
pub struct RedbStore {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    /// Whether every open checks the whole file ([`RedbStore::open_verified`]).
    verify: bool,
    /// Set once the file is known damaged: nothing opens or writes it again.
    quarantined: AtomicBool,
    /// The open database; `None` after an I/O failure or a panic inside
    /// redb, until the next operation opens the file again.
    db: Mutex<Option<Arc<Database>>>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store at `path`, creating it if needed. A file left by a
    /// process that was killed is repaired on open (redb finds it was not
    /// closed cleanly).
    ///
    /// A cleanly closed file is trusted as redb wrote it: damage done to it
    /// since (by the disk, another program) is found as its records are
    /// read, by their checksums, and a panic inside redb on a damaged page
    /// is an error too: either way a [corrupt](StoreError::is_corrupt)
    /// error. [`RedbStore::open_verified`] checks the whole file first.
    ///
    /// # Errors
    ///
    /// A typed error naming the path: locked by another process, permission
    /// denied, corrupt (with the fix: [`RedbStore::move_aside`] it), or
    /// another I/O failure. The application decides whether to stop or to
    /// run with a memory-only cache.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path.as_ref(), false)
    }

    /// Opens the store at `path` like [`RedbStore::open`], then verifies
    /// the checksum of every page of the file and rebuilds redb's
    /// allocator state, repairing what it can. It reads the whole file
    /// once more than hydrate does: 2.3 s against 0.7 ms for a cleanly
    /// closed store of a million 1 KB values (BENCHMARKS.md). For a file
    /// that may have been changed by other means since it was closed, when
    /// damage should be found before any of it is read.
    ///
    /// # Errors
    ///
    /// As [`RedbStore::open`]; damage the check finds and cannot repair is
    /// a [corrupt](StoreError::is_corrupt) error.
    pub fn open_verified(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path.as_ref(), true)
    }

    fn open_with(path: &Path, verify: bool) -> Result<Self, StoreError> {
        let db = open_database(path, verify)?;
        Ok(Self {
            shared: Arc::new(Shared {
                path: path.to_owned(),
                verify,
                quarantined: AtomicBool::new(false),
                db: Mutex::new(Some(Arc::new(db))),
            }),
        })
    }

    /// Renames a (damaged) store file to `<path>.corrupt-<unix seconds>` in
    /// the same directory, so that a new store can start at `path` and the
    /// old file stays for inspection: it is never deleted. Returns the new
    /// name.
    ///
    /// # Errors
    ///
    /// The rename failed (the error names both paths).
    pub fn move_aside(path: impl AsRef<Path>) -> Result<PathBuf, StoreError> {
        let path = path.as_ref();
        let stamp = crate::rt::unix_nanos(crate::rt::wall_now()) / 1_000_000_000;
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".corrupt-{stamp}"));
        let aside = PathBuf::from(name);
        std::fs::rename(path, &aside).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Io,
                Some(path),
                format!("cannot move it aside to `{}`: {e}", aside.display()),
            )
            .with_source(e)
        })?;
        Ok(aside)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    fn io(&self, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        io_error(&self.shared.path, e)
    }

    /// The open database, opening the file again if an earlier failure
    /// dropped it.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        if self.shared.quarantined.load(Ordering::Acquire) {
            return Err(StoreError::new(
                StoreErrorKind::Corrupt,
                Some(&self.shared.path),
                "it was found damaged and is no longer used; move the file away to start with an empty cache",
            ));
        }
        let mut db = self.shared.db.lock();
        if let Some(db) = db.as_ref() {
            return Ok(db.clone());
        }
        let fresh = Arc::new(open_database(&self.shared.path, self.shared.verify)?);
        tracing::info!(target: "revalidate", "store `{}` opened again", self.shared.path.display());
        *db = Some(fresh.clone());
        Ok(fresh)
    }

    /// Runs `op` on the database. A failure drops the handle (the next
    /// operation opens the file again: redb refuses every write after an
    /// I/O error until then); a panic inside redb becomes a corrupt-store
    /// error, and a corrupt store is quarantined.
    fn with_db<T>(
        &self,
        op: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self.db()?;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(&db)));
        drop(db);
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.is_corrupt() => {
                self.quarantine_db();
                Err(e)
            }
            Ok(Err(e)) => {
                *self.shared.db.lock() = None;
                Err(e)
            }
            Err(panic) => {
                self.quarantine_db();
                Err(panicked(&self.shared.path, &panic))
            }
        }
    }

    /// Stops using a damaged file for good. The handle is leaked, not
    /// dropped: closing would write redb's allocator state into the file
    /// (changing what should be kept as found), and redb may panic again
    /// in its drop on the state that made it panic. The file stays locked
    /// by this process until it exits (an open of the same path is
    /// refused as locked): move it aside, and open a new store.
    fn quarantine_db(&self) {
        self.shared.quarantined.store(true, Ordering::Release);
        if let Some(db) = self.shared.db.lock().take() {
            std::mem::forget(db);
        }
    }

    fn apply_blocking(&self, batch: Batch) -> Result<(), StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(|e| self.io(e))?;
            {
                let mut entries = txn.open_table(ENTRIES).map_err(|e| self.io(e))?;
                if batch.clear {
                    entries.retain(|_, _| false).map_err(|e| self.io(e))?;
                }
                for (k, v) in &batch.puts {
                    entries
                        .insert(k.as_slice(), v.as_slice())
                        .map_err(|e| self.io(e))?;
                }
                for k in &batch.deletes {
                    entries.remove(k.as_slice()).map_err(|e| self.io(e))?;
                }
                let mut meta = txn.open_table(META).map_err(|e| self.io(e))?;
                for (name, value) in &batch.meta {
                    meta.insert(name.as_str(), value.as_slice())
                        .map_err(|e| self.io(e))?;
                }
            }
            txn.commit().map_err(|e| self.io(e))
        })
    }

    fn scan_blocking(&self) -> Result<Vec<KeyValue>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(|e| self.io(e))?;
            let table = txn.open_table(ENTRIES).map_err(|e| self.io(e))?;
            let mut out = Vec::with_capacity(table.len().map_err(|e| self.io(e))? as usize);
            for row in table.iter().map_err(|e| self.io(e))? {
                let (k, v) = row.map_err(|e| self.io(e))?;
                out.push((k.value().to_vec(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    fn scan_page_blocking(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        use std::ops::Bound;
        self.with_db(|db| {
            let txn = db.begin_read().map_err(|e| self.io(e))?;
            let table = txn.open_table(ENTRIES).map_err(|e| self.io(e))?;
            let from = after.map_or(Bound::Unbounded, Bound::Excluded);
            let rows = table
                .range::<&[u8]>((from, Bound::Unbounded))
                .map_err(|e| self.io(e))?;
            let mut out = Vec::with_capacity(limit.min(4096));
            for row in rows.take(limit) {
                let (k, v) = row.map_err(|e| self.io(e))?;
                out.push((k.value().to_vec(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    fn count_blocking(&self) -> Result<usize, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(|e| self.io(e))?;
            let table = txn.open_table(ENTRIES).map_err(|e| self.io(e))?;
            let len = table.len().map_err(|e| self.io(e))?;
            Ok(usize::try_from(len).unwrap_or(usize::MAX))
        })
    }

    fn meta_blocking(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(|e| self.io(e))?;
            let table = txn.open_table(META).map_err(|e| self.io(e))?;
            Ok(table
                .get(name)
                .map_err(|e| self.io(e))?
                .map(|v| v.value().to_vec()))
        })
    }
}

/// redb's page cache. Its default, 1 GiB, fills with every page written: a
/// store of a million 1 KB values kept a second copy of them in the
/// process's memory (~1 KB of RSS per query on top of the cache's own).
/// The cache serves redb's own lookups, and the store's are few: hydrate
/// reads every record once, in key order; write-behind writes each batch
/// once and reads nothing back but the b-tree's pages on the way to each
/// leaf. The OS page cache keeps the file either way. Measured with the
/// `persist` bench (100k 1 KB writes, medians of alternating runs): 8 MiB,
/// 1 MiB and 512 KiB write the same ~31k entries/s, 256 KiB ~29k, and no
/// cache at all ~20k (every page goes to the file as soon as it is
/// touched). With `bench/scale.sh` at 10k queries, settled RSS per query:
/// 2,297 B at 8 MiB, 1,844–1,948 B at 1 MiB, 1,808–1,881 B at 512 KiB.
/// Its price, at 1M queries against 8 MiB (two alternating runs each): the
/// same fill rate, 11 B less RSS per query, a hydrate ~0.5 s longer (6.35
/// and 5.51 s against 6.01 and 4.86 s).
const CACHE_BYTES: usize = 512 << 10;

/// Opens (or creates) the database at `path`, repairing it if it was not
/// closed cleanly, and with `verify` checking every page first; then
/// creates the tables, so that readers never see them missing. Panics
/// inside redb become corrupt-store errors.
fn open_database(path: &Path, verify: bool) -> Result<Database, StoreError> {
    let open = || -> Result<Database, StoreError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(verify)
            .create(path)
            .map_err(|e| open_error(path, e))?;
        // Only a new file is written to here: a damaged one that hydrate
        // then refuses is moved aside as it was found.
        let read = db.begin_read().map_err(|e| io_error(path, e))?;
        let has_tables = read.open_table(ENTRIES).is_ok() && read.open_table(META).is_ok();
        drop(read);
        if !has_tables {
            let txn = db.begin_write().map_err(|e| io_error(path, e))?;
            txn.open_table(ENTRIES).map_err(|e| io_error(path, e))?;
            txn.open_table(META).map_err(|e| io_error(path, e))?;
            txn.commit().map_err(|e| io_error(path, e))?;
        }
        Ok(db)
    };
    std::panic::catch_unwind(open).unwrap_or_else(|panic| Err(panicked(path, &panic)))
}

/// A panic inside redb: the file holds something redb's checks did not
/// catch. Reported as corruption, with the fix.
fn panicked(path: &Path, panic: &Box<dyn std::any::Any + Send>) -> StoreError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned());
    StoreError::new(
        StoreErrorKind::Corrupt,
        Some(path),
        format!(
            "reading it failed inside redb ({what}); move the file away to start with an empty cache"
        ),
    )
}

impl Store for RedbStore {
    fn quarantine(&self) {
        self.quarantine_db();
    }

    async fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let store = self.clone();
        crate::rt::spawn_blocking(move || store.apply_blocking(batch)).await
    }

    async fn scan(&self) -> Result<Vec<KeyValue>, StoreError> {
        let store = self.clone();
        crate::rt::spawn_blocking(move || store.scan_blocking()).await
    }

    async fn scan_page(
        &self,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let store = self.clone();
        crate::rt::spawn_blocking(move || store.scan_page_blocking(after.as_deref(), limit)).await
    }

    async fn count_hint(&self) -> Result<Option<usize>, StoreError> {
        let store = self.clone();
        crate::rt::spawn_blocking(move || store.count_blocking().map(Some)).await
    }

    async fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let store = self.clone();
        let name = name.to_owned();
        crate::rt::spawn_blocking(move || store.meta_blocking(&name)).await
    }
}

fn open_error(path: &Path, e: DatabaseError) -> StoreError {
    match e {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            StoreError::new(
                StoreErrorKind::Locked,
                Some(path),
                "another process has it open; stop it, or give this one another path",
            )
            .with_source(e)
        }
        DatabaseError::Storage(StorageError::Corrupted(msg)) => StoreError::new(
            StoreErrorKind::Corrupt,
            Some(path),
            format!("{msg}; move the file away to start with an empty cache"),
        ),
        DatabaseError::UpgradeRequired(v) => StoreError::new(
            StoreErrorKind::Corrupt,
            Some(path),
            format!(
                "written in redb file format {v}, which this version does not read; move it away"
            ),
        ),
        DatabaseError::Storage(StorageError::Io(io)) => io_error(path, io),
        other => {
            StoreError::new(StoreErrorKind::Io, Some(path), other.to_string()).with_source(other)
        }
    }
}

fn io_error(path: &Path, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    let text = e.to_string();
    let kind = match find_io(&e).map(std::io::Error::kind) {
        Some(std::io::ErrorKind::PermissionDenied) => StoreErrorKind::PermissionDenied,
        // redb reports a file that is not a store ("magic number mismatch") so.
        Some(std::io::ErrorKind::InvalidData) => StoreErrorKind::Corrupt,
        _ if text.contains("orrupt") => StoreErrorKind::Corrupt,
        _ => StoreErrorKind::Io,
    };
    StoreError::new(kind, Some(path), text).with_source(e)
}

/// The `io::Error` at the root of `e`, if there is one.
fn find_io<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(puts: &[(&str, &str)], deletes: &[&str]) -> Batch {
        Batch {
            puts: puts
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            deletes: deletes.iter().map(|k| k.as_bytes().to_vec()).collect(),
            ..Batch::default()
        }
    }

    #[tokio::test]
    async fn batches_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        let store = RedbStore::open(&path).unwrap();
        store
            .apply(batch(&[("a", "1"), ("b", "2")], &[]))
            .await
            .unwrap();
        store.apply(batch(&[("c", "3")], &["a"])).await.unwrap();
        let mut meta = Batch::default();
        meta.meta.push(("buster".into(), b"v1".to_vec()));
        store.apply(meta).await.unwrap();
        drop(store);
        let store = RedbStore::open(&path).unwrap();
        let rows = store.scan().await.unwrap();
        assert_eq!(
            rows,
            vec![
                (b"b".to_vec(), b"2".to_vec()),
                (b"c".to_vec(), b"3".to_vec())
            ]
        );
        assert_eq!(store.meta("buster").await.unwrap(), Some(b"v1".to_vec()));
        let clear = Batch {
            clear: true,
            ..Batch::default()
        };
        store.apply(clear).await.unwrap();
        assert!(store.scan().await.unwrap().is_empty());
    }

    #[test]
    fn a_second_opener_is_told_the_store_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        let _first = RedbStore::open(&path).unwrap();
        let err = RedbStore::open(&path).unwrap_err();
        assert!(err.is_locked(), "{err}");
        assert_eq!(err.path(), Some(path.as_path()));
        assert!(
            err.to_string()
                .starts_with("store is locked by another process `"),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_reported_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        std::fs::write(&path, vec![0x42; 8192]).unwrap();
        let err = RedbStore::open(&path).unwrap_err();
        assert!(
            err.is_corrupt() || err.kind() == StoreErrorKind::Io,
            "{err:?}"
        );
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn a_missing_directory_is_an_io_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("cache.redb");
        let err = RedbStore::open(&path).unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Io, "{err:?}");
        assert!(err.to_string().contains("missing-dir"), "{err}");
    }
}
