//! `IdbStore`: the browser's store, on IndexedDB.
//!
//! The same contract as [`RedbStore`](crate::store): one record per entry
//! (the shared layout of `store/record.rs`) in the object store `entries`,
//! keyed by the key's text; the metadata (the buster) in `meta`; every
//! [`Batch`] is one `readwrite` transaction over both, so a flush is wholly
//! written or not at all, and a page closed in the middle of it loses at
//! most that window.
//!
//! Failures are [`StoreError`]s, never panics: a quota the browser will not
//! extend, a database another tab holds open at an older version (blocked),
//! storage the browser refuses (a sandboxed frame, some private modes), or
//! no IndexedDB at all. [`Persistence`](crate::Persistence) reports a failed
//! flush and retries it at the next window, so the cache goes on in memory.
//! When another tab upgrades or deletes the database, this store closes its
//! connection at once (so as not to block it) and opens it again at the next
//! batch.

use std::cell::RefCell;
use std::future::Future;
use std::path::Path;
use std::rc::Rc;

use js_sys::{Array, Uint8Array};
use send_wrapper::SendWrapper;
use tokio::sync::oneshot;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{
    DomException, Event, IdbDatabase, IdbFactory, IdbOpenDbRequest, IdbRequest, IdbTransaction,
    IdbTransactionMode,
};

use super::{Batch, KeyValue, Store, StoreError, StoreErrorKind};

const ENTRIES: &str = "entries";
const META: &str = "meta";

/// A store in one IndexedDB database of the page's origin.
///
/// ```no_run
/// use revalidate::{IdbStore, Persistence, QueryClient};
/// # async fn demo(client: QueryClient<serde_json::Value>) {
/// match IdbStore::open("revalidate").await {
///     Ok(store) => {
///         let (_persist, report) = Persistence::new(store).start(&client).await.unwrap();
///         web_sys::console::log_1(&format!("restored {}", report.restored).into());
///     }
///     // No IndexedDB, storage refused, blocked by another tab: run from memory.
///     Err(e) => web_sys::console::warn_1(&format!("no persisted cache: {e}").into()),
/// }
/// # }
/// ```
///
/// The handle is cheap to clone. Its JavaScript objects live on the page's
/// one thread; the store is `Send` and `Sync` for the engine's bounds, and
/// checks the thread on every use.
#[derive(Clone)]
pub struct IdbStore {
    shared: SendWrapper<Rc<Shared>>,
}

struct Shared {
    name: String,
    /// The open connection; `None` after a failure or a `versionchange`,
    /// until the next operation opens it again.
    db: RefCell<Option<IdbDatabase>>,
    /// Closes the connection when another tab upgrades or deletes the database.
    on_versionchange: Closure<dyn FnMut(Event)>,
}

impl std::fmt::Debug for IdbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdbStore")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl IdbStore {
    /// Opens the database `name` of this origin, creating it (and its object
    /// stores) if needed.
    ///
    /// # Errors
    ///
    /// No IndexedDB here, storage refused ([`StoreErrorKind::PermissionDenied`]),
    /// an upgrade blocked by another tab that holds the database open
    /// ([`StoreErrorKind::Locked`]), or another failure. The application then
    /// runs with a memory-only cache.
    pub async fn open(name: &str) -> Result<Self, StoreError> {
        let shared = Rc::new_cyclic(|weak: &std::rc::Weak<Shared>| {
            let weak = weak.clone();
            Shared {
                name: name.to_owned(),
                db: RefCell::new(None),
                on_versionchange: Closure::new(move |_: Event| {
                    if let Some(shared) = weak.upgrade()
                        && let Some(db) = shared.db.borrow_mut().take()
                    {
                        db.close();
                        tracing::info!(target: "revalidate", "IndexedDB `{}`: another tab changes it; closed, reopened at the next write", shared.name);
                    }
                }),
            }
        });
        shared.connection().await?;
        Ok(Self {
            shared: SendWrapper::new(shared),
        })
    }

    /// Deletes the database `name` of this origin (every persisted entry).
    ///
    /// # Errors
    ///
    /// No IndexedDB here, or the deletion failed or was blocked by a
    /// connection that does not close.
    pub async fn delete(name: &str) -> Result<(), StoreError> {
        let request = factory(name)?
            .delete_database(name)
            .map_err(|e| dom_error(name, "deleting the database", &e))?;
        match wait_open(&request).await {
            Opened::Ok(_) => Ok(()),
            Opened::Failed(e) => Err(dom_error(name, "deleting the database", &e)),
            Opened::Blocked => Err(blocked(name)),
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

impl Shared {
    /// The open connection, opening the database if needed.
    async fn connection(&self) -> Result<IdbDatabase, StoreError> {
        if let Some(db) = self.db.borrow().as_ref() {
            return Ok(db.clone());
        }
        let db = open_database(&self.name).await?;
        // Two operations may have opened it at once: keep one connection.
        if let Some(first) = self.db.borrow().as_ref() {
            db.close();
            return Ok(first.clone());
        }
        db.set_onversionchange(Some(self.on_versionchange.as_ref().unchecked_ref()));
        *self.db.borrow_mut() = Some(db.clone());
        Ok(db)
    }

    /// Forgets the connection after a failure: the next operation opens
    /// the database again.
    fn drop_connection(&self) {
        if let Some(db) = self.db.borrow_mut().take() {
            db.set_onversionchange(None);
            db.close();
        }
    }

    fn error(&self, what: &str, e: &JsValue) -> StoreError {
        let err = dom_error(&self.name, what, e);
        if err.kind() != StoreErrorKind::Locked {
            self.drop_connection();
        }
        err
    }

    fn transaction(
        &self,
        db: &IdbDatabase,
        mode: IdbTransactionMode,
    ) -> Result<IdbTransaction, StoreError> {
        let names = Array::of2(&ENTRIES.into(), &META.into());
        db.transaction_with_str_sequence_and_mode(&names, mode)
            .map_err(|e| self.error("starting a transaction", &e))
    }

    async fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let db = self.connection().await?;
        let txn = self.transaction(&db, IdbTransactionMode::Readwrite)?;
        let queued = (|| -> Result<(), JsValue> {
            let entries = txn.object_store(ENTRIES)?;
            if batch.clear {
                entries.clear()?;
            }
            for (k, v) in &batch.puts {
                entries.put_with_key(&Uint8Array::from(v.as_slice()), &js_key(k))?;
            }
            for k in &batch.deletes {
                entries.delete(&js_key(k))?;
            }
            let meta = txn.object_store(META)?;
            for (name, value) in &batch.meta {
                meta.put_with_key(&Uint8Array::from(value.as_slice()), &name.into())?;
            }
            Ok(())
        })();
        let done = TransactionDone::new(&txn);
        if let Err(e) = queued {
            let _ = txn.abort();
            return Err(self.error("writing", &e));
        }
        done.wait()
            .await
            .map_err(|e| self.error("committing a batch", &e))
    }

    async fn scan(&self) -> Result<Vec<KeyValue>, StoreError> {
        let db = self.connection().await?;
        let txn = self.transaction(&db, IdbTransactionMode::Readonly)?;
        let entries = txn
            .object_store(ENTRIES)
            .map_err(|e| self.error("reading", &e))?;
        // Keys and values of one transaction, both in key order.
        let keys = entries
            .get_all_keys()
            .map_err(|e| self.error("reading keys", &e))?;
        let values = entries
            .get_all()
            .map_err(|e| self.error("reading values", &e))?;
        let keys = request(&keys)
            .await
            .map_err(|e| self.error("reading keys", &e))?;
        let values = request(&values)
            .await
            .map_err(|e| self.error("reading values", &e))?;
        let (keys, values) = (Array::from(&keys), Array::from(&values));
        let mut out = Vec::with_capacity(keys.length() as usize);
        for (k, v) in keys.iter().zip(values.iter()) {
            let Some(key) = key_bytes(&k) else {
                tracing::warn!(target: "revalidate", "IndexedDB `{}`: skipping an entry whose key is not text: {k:?}", self.name);
                continue;
            };
            // A value that is not bytes does not decode as a record: hydrate
            // drops it (and deletes it) as undecodable.
            out.push((key, bytes_of(&v).unwrap_or_default()));
        }
        Ok(out)
    }

    async fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let db = self.connection().await?;
        let txn = self.transaction(&db, IdbTransactionMode::Readonly)?;
        let get = txn
            .object_store(META)
            .and_then(|meta| meta.get(&name.into()))
            .map_err(|e| self.error("reading metadata", &e))?;
        let value = request(&get)
            .await
            .map_err(|e| self.error("reading metadata", &e))?;
        Ok(bytes_of(&value))
    }
}

impl Drop for Shared {
    /// The last handle closes the connection (rather than leaving it to the
    /// garbage collector, where it would block another tab's upgrade).
    fn drop(&mut self) {
        self.drop_connection();
    }
}

impl Store for IdbStore {
    fn apply(&self, batch: Batch) -> impl Future<Output = Result<(), StoreError>> + Send {
        let shared = Rc::clone(&self.shared);
        SendWrapper::new(async move { shared.apply(batch).await })
    }

    fn scan(&self) -> impl Future<Output = Result<Vec<KeyValue>, StoreError>> + Send {
        let shared = Rc::clone(&self.shared);
        SendWrapper::new(async move { shared.scan().await })
    }

    fn meta(&self, name: &str) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send {
        let shared = Rc::clone(&self.shared);
        let name = name.to_owned();
        SendWrapper::new(async move { shared.meta(&name).await })
    }
}

/// The origin's IndexedDB, in a page or a worker.
fn factory(name: &str) -> Result<IdbFactory, StoreError> {
    let unavailable = |why: &str| {
        StoreError::new(
            StoreErrorKind::Io,
            Some(Path::new(name)),
            format!("IndexedDB is not available here ({why})"),
        )
    };
    let value = js_sys::Reflect::get(&js_sys::global(), &"indexedDB".into())
        .map_err(|e| dom_error(name, "reaching IndexedDB", &e))?;
    if value.is_undefined() || value.is_null() {
        return Err(unavailable("no indexedDB in this global scope"));
    }
    value
        .dyn_into::<IdbFactory>()
        .map_err(|_| unavailable("indexedDB is not an IDBFactory"))
}

/// Opens the database, creating its object stores. A database of that name
/// without them (made by something else, or an older layout) is upgraded
/// to the next version, which another tab holding it open can block.
async fn open_database(name: &str) -> Result<IdbDatabase, StoreError> {
    let mut version: Option<u32> = None;
    loop {
        let f = factory(name)?;
        let request = match version {
            None => f.open(name),
            Some(v) => f.open_with_u32(name, v),
        }
        .map_err(|e| dom_error(name, "opening", &e))?;
        let db = match wait_open(&request).await {
            Opened::Ok(db) => db
                .dyn_into::<IdbDatabase>()
                .map_err(|e| dom_error(name, "opening", &e))?,
            Opened::Failed(e) => return Err(dom_error(name, "opening", &e)),
            Opened::Blocked => return Err(blocked(name)),
        };
        let stores = db.object_store_names();
        if stores.contains(ENTRIES) && stores.contains(META) {
            return Ok(db);
        }
        // Opened without an upgrade, but the stores are missing.
        let next = db.version() as u32 + 1;
        db.close();
        if version == Some(next) {
            return Err(StoreError::new(
                StoreErrorKind::Corrupt,
                Some(Path::new(name)),
                "the database has no `entries` store even after an upgrade",
            ));
        }
        version = Some(next);
    }
}

fn blocked(name: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Locked,
        Some(Path::new(name)),
        "IndexedDB is blocked: another tab holds this database open and does not let go; \
         close that tab or reload it",
    )
}

/// A [`StoreError`] of a failed IndexedDB operation (usually a `DOMException`):
/// the kind by the exception's name, the text with what failed, the
/// browser's words and what happens next. Public for the browser suites.
#[doc(hidden)]
pub fn dom_error(db: &str, what: &str, e: &JsValue) -> StoreError {
    let (name, message) = match e.dyn_ref::<DomException>() {
        Some(ex) => (ex.name(), ex.message()),
        None => (
            String::new(),
            e.as_string().unwrap_or_else(|| format!("{e:?}")),
        ),
    };
    let (kind, advice) = match name.as_str() {
        "QuotaExceededError" => (
            StoreErrorKind::Io,
            "the browser's storage quota for this site is used up; the cache goes on in \
             memory and the write is retried",
        ),
        "SecurityError" | "NotAllowedError" => (
            StoreErrorKind::PermissionDenied,
            "the browser refuses storage to this page",
        ),
        "VersionError" | "NotFoundError" | "DataError" => (
            StoreErrorKind::Corrupt,
            "the database does not have this store's layout; delete it (IdbStore::delete)",
        ),
        _ => (StoreErrorKind::Io, ""),
    };
    let mut text = format!("IndexedDB failed {what}");
    if !name.is_empty() {
        text.push_str(&format!(" ({name})"));
    }
    if !message.is_empty() {
        text.push_str(&format!(": {message}"));
    }
    if !advice.is_empty() {
        text.push_str(&format!("; {advice}"));
    }
    StoreError::new(kind, Some(Path::new(db)), text)
}

/// A record key as IndexedDB holds it: its text (keys are the query key's
/// UTF-8 text), or the bytes when they are not text.
fn js_key(k: &[u8]) -> JsValue {
    match std::str::from_utf8(k) {
        Ok(text) => JsValue::from_str(text),
        Err(_) => Uint8Array::from(k).into(),
    }
}

fn key_bytes(k: &JsValue) -> Option<Vec<u8>> {
    k.as_string()
        .map(String::into_bytes)
        .or_else(|| bytes_of(k))
}

/// The bytes of a `Uint8Array` or `ArrayBuffer`.
fn bytes_of(v: &JsValue) -> Option<Vec<u8>> {
    if let Some(a) = v.dyn_ref::<Uint8Array>() {
        return Some(a.to_vec());
    }
    v.dyn_ref::<js_sys::ArrayBuffer>()
        .map(|b| Uint8Array::new(b).to_vec())
}

/// What an open (or delete) request did.
enum Opened {
    Ok(JsValue),
    Blocked,
    Failed(JsValue),
}

/// Waits for an open or delete request. An upgrade (a new database, or one
/// without this store's object stores) creates them, in the upgrade's own
/// transaction. A blocked request is given up; if it opens later, the
/// connection is closed at once.
async fn wait_open(request: &IdbOpenDbRequest) -> Opened {
    let (tx, rx) = oneshot::channel::<Opened>();
    let tx = Rc::new(RefCell::new(Some(tx)));
    let send = |tx: &Rc<RefCell<Option<oneshot::Sender<Opened>>>>, what: Opened| {
        if let Some(tx) = tx.borrow_mut().take() {
            let _ = tx.send(what);
        }
    };
    let req = request.clone();
    let on_success = {
        let tx = tx.clone();
        Closure::<dyn FnMut(Event)>::new(move |_: Event| {
            send(&tx, req.result().map_or_else(Opened::Failed, Opened::Ok));
        })
    };
    let req = request.clone();
    let on_upgrade = Closure::<dyn FnMut(Event)>::new(move |_: Event| {
        let Some(db) = req
            .result()
            .ok()
            .and_then(|r| r.dyn_into::<IdbDatabase>().ok())
        else {
            return;
        };
        let stores = db.object_store_names();
        for store in [ENTRIES, META] {
            // A failure aborts the upgrade, and the request fails.
            if !stores.contains(store) && db.create_object_store(store).is_err() {
                if let Some(txn) = req.transaction() {
                    let _ = txn.abort();
                }
                return;
            }
        }
    });
    let req = request.clone();
    let on_error = {
        let tx = tx.clone();
        Closure::<dyn FnMut(Event)>::new(move |_: Event| {
            let e = req
                .error()
                .ok()
                .flatten()
                .map_or_else(|| JsValue::from_str("unknown error"), JsValue::from);
            send(&tx, Opened::Failed(e));
        })
    };
    let on_blocked = {
        let tx = tx.clone();
        Closure::<dyn FnMut(Event)>::new(move |_: Event| send(&tx, Opened::Blocked))
    };
    request.set_onsuccess(Some(on_success.as_ref().unchecked_ref()));
    request.set_onupgradeneeded(Some(on_upgrade.as_ref().unchecked_ref()));
    request.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    request.set_onblocked(Some(on_blocked.as_ref().unchecked_ref()));
    let outcome = rx
        .await
        .unwrap_or_else(|_| Opened::Failed("the request was dropped".into()));
    request.set_onupgradeneeded(None);
    request.set_onerror(None);
    request.set_onblocked(None);
    if matches!(outcome, Opened::Blocked) {
        // Given up: a connection that opens after all is closed at once.
        let req = request.clone();
        let close_late = Closure::once_into_js(move |_: Event| {
            if let Some(db) = req
                .result()
                .ok()
                .and_then(|r| r.dyn_into::<IdbDatabase>().ok())
            {
                db.close();
            }
        });
        request.set_onsuccess(Some(close_late.unchecked_ref()));
    } else {
        request.set_onsuccess(None);
    }
    drop((on_success, on_upgrade, on_error, on_blocked));
    outcome
}

/// The result of a request: its value, or its error.
async fn request(req: &IdbRequest) -> Result<JsValue, JsValue> {
    let (tx, rx) = oneshot::channel::<Result<JsValue, JsValue>>();
    let tx = Rc::new(RefCell::new(Some(tx)));
    let done = {
        let tx = tx.clone();
        let req = req.clone();
        Closure::<dyn FnMut(Event)>::new(move |_: Event| {
            let outcome = match req.error() {
                Ok(Some(e)) => Err(e.into()),
                _ => req.result(),
            };
            if let Some(tx) = tx.borrow_mut().take() {
                let _ = tx.send(outcome);
            }
        })
    };
    req.set_onsuccess(Some(done.as_ref().unchecked_ref()));
    req.set_onerror(Some(done.as_ref().unchecked_ref()));
    let outcome = rx
        .await
        .unwrap_or_else(|_| Err("the request was dropped".into()));
    req.set_onsuccess(None);
    req.set_onerror(None);
    outcome
}

/// The end of a transaction: `complete`, or `abort` with its error.
struct TransactionDone {
    txn: IdbTransaction,
    rx: oneshot::Receiver<Result<(), JsValue>>,
    _on_complete: Closure<dyn FnMut(Event)>,
    _on_abort: Closure<dyn FnMut(Event)>,
}

impl TransactionDone {
    fn new(txn: &IdbTransaction) -> Self {
        let (tx, rx) = oneshot::channel::<Result<(), JsValue>>();
        let tx = Rc::new(RefCell::new(Some(tx)));
        let on_complete = {
            let tx = tx.clone();
            Closure::<dyn FnMut(Event)>::new(move |_: Event| {
                if let Some(tx) = tx.borrow_mut().take() {
                    let _ = tx.send(Ok(()));
                }
            })
        };
        let on_abort = {
            let txn = txn.clone();
            Closure::<dyn FnMut(Event)>::new(move |_: Event| {
                let e = txn.error().map_or_else(
                    || JsValue::from_str("the transaction was aborted"),
                    JsValue::from,
                );
                if let Some(tx) = tx.borrow_mut().take() {
                    let _ = tx.send(Err(e));
                }
            })
        };
        txn.set_oncomplete(Some(on_complete.as_ref().unchecked_ref()));
        txn.set_onabort(Some(on_abort.as_ref().unchecked_ref()));
        Self {
            txn: txn.clone(),
            rx,
            _on_complete: on_complete,
            _on_abort: on_abort,
        }
    }

    async fn wait(mut self) -> Result<(), JsValue> {
        let outcome = (&mut self.rx)
            .await
            .unwrap_or_else(|_| Err("the transaction was dropped".into()));
        self.txn.set_oncomplete(None);
        self.txn.set_onabort(None);
        outcome
    }
}
