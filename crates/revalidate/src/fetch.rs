//! The `Fetcher` trait: how the engine reaches the source (the seed's `ActionClient`).
//!
//! A fetcher turns a [`QueryKey`] into a value. It classifies its failures
//! ([`FetchErrorKind`]) so that the engine knows what to do next: retry with
//! backoff, give up until the next due time, or consider the network down.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::key::QueryKey;

/// One key to fetch, with what the cache holds for it now.
#[derive(Debug)]
pub struct FetchRequest<'a, V> {
    /// The query to fetch.
    pub key: &'a QueryKey,
    /// The cached value, if any: lets a fetcher make a conditional request
    /// (send its ETag) and answer [`Fetched::not_modified`].
    pub previous: Option<&'a Arc<V>>,
}

impl<V> Clone for FetchRequest<'_, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for FetchRequest<'_, V> {}

/// A successful fetch: a new value, or "not modified".
#[derive(Debug)]
pub struct Fetched<V> {
    pub(crate) value: Option<V>,
    pub(crate) bytes: u64,
}

impl<V> Fetched<V> {
    /// The source returned `value`.
    pub fn new(value: V) -> Self {
        Self {
            value: Some(value),
            bytes: 0,
        }
    }

    /// The source confirmed that the cached value is current (an HTTP `304`).
    /// Counts as a successful refresh; the cached value stays as it is.
    pub fn not_modified() -> Self {
        Self {
            value: None,
            bytes: 0,
        }
    }

    /// Records how many bytes the fetch transferred (for statistics).
    #[must_use]
    pub fn with_bytes(mut self, bytes: u64) -> Self {
        self.bytes = bytes;
        self
    }

    /// The fetched value; `None` for "not modified".
    pub fn value(&self) -> Option<&V> {
        self.value.as_ref()
    }

    /// Bytes transferred, as reported by the fetcher.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl<V> From<V> for Fetched<V> {
    fn from(value: V) -> Self {
        Fetched::new(value)
    }
}

/// How a fetcher sends a batch; see [`Fetcher::batching`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Batching {
    /// A batch is sent as one request per key: each counts against the
    /// concurrency limit, and the engine calls [`Fetcher::fetch`] per key.
    #[default]
    Split,
    /// A batch is sent as one request: it counts once against the limit, and
    /// the engine calls [`Fetcher::fetch_batch`].
    Combined,
}

/// Fetches values from the source. Implement it for your API client.
///
/// Only [`fetch`](Fetcher::fetch) is required. A fetcher whose source can
/// answer several keys of one action in one request overrides
/// [`fetch_batch`](Fetcher::fetch_batch) and returns [`Batching::Combined`]
/// from [`batching`](Fetcher::batching).
///
/// ```
/// use revalidate::{FetchError, FetchRequest, Fetched, Fetcher};
///
/// struct Api;
///
/// impl Fetcher<String> for Api {
///     async fn fetch(&self, req: FetchRequest<'_, String>) -> Result<Fetched<String>, FetchError> {
///         match req.key.action() {
///             "greeting" => Ok(Fetched::new("hello".to_owned())),
///             other => Err(FetchError::rejected(format!("no such action `{other}`"))),
///         }
///     }
/// }
/// ```
pub trait Fetcher<V: Send + Sync + 'static>: Send + Sync + 'static {
    /// Fetches one key.
    fn fetch(
        &self,
        request: FetchRequest<'_, V>,
    ) -> impl Future<Output = Result<Fetched<V>, FetchError>> + Send;

    /// Fetches several keys of one action; returns one result per request,
    /// in order. The default fetches them one by one, concurrently.
    fn fetch_batch(
        &self,
        requests: &[FetchRequest<'_, V>],
    ) -> impl Future<Output = Vec<Result<Fetched<V>, FetchError>>> + Send {
        futures::future::join_all(requests.iter().map(|r| self.fetch(*r)))
    }

    /// Whether [`fetch_batch`](Fetcher::fetch_batch) sends one request. The
    /// default, [`Batching::Split`], matches the default `fetch_batch`.
    fn batching(&self) -> Batching {
        Batching::Split
    }
}

/// A fetcher made from an async closure; see [`fetcher_fn`].
pub struct FnFetcher<F>(F);

impl<F> fmt::Debug for FnFetcher<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnFetcher")
    }
}

/// Makes a [`Fetcher`] from a closure taking the key.
///
/// ```
/// use revalidate::{fetcher_fn, FetchError, QueryClient, QueryKey};
///
/// # tokio_test_block_on(async {
/// let client = QueryClient::builder(fetcher_fn(|key: QueryKey| async move {
///     Ok::<_, FetchError>(format!("data for {key}"))
/// }))
/// .build();
/// let value = client.get(&QueryKey::bare("hello")).await.unwrap();
/// assert_eq!(*value, "data for hello");
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
pub fn fetcher_fn<V, F, Fut, T>(f: F) -> FnFetcher<F>
where
    F: Fn(QueryKey) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, FetchError>> + Send + 'static,
    T: Into<Fetched<V>>,
{
    FnFetcher(f)
}

impl<V, F, Fut, T> Fetcher<V> for FnFetcher<F>
where
    V: Send + Sync + 'static,
    F: Fn(QueryKey) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, FetchError>> + Send + 'static,
    T: Into<Fetched<V>>,
{
    fn fetch(
        &self,
        request: FetchRequest<'_, V>,
    ) -> impl Future<Output = Result<Fetched<V>, FetchError>> + Send {
        let fut = (self.0)(request.key.clone());
        async move { fut.await.map(Into::into) }
    }
}

/// The object-safe form of [`Fetcher`] that the engine stores.
pub(crate) trait DynFetcher<V>: Send + Sync {
    fn fetch<'a>(
        &'a self,
        request: FetchRequest<'a, V>,
    ) -> BoxFuture<'a, Result<Fetched<V>, FetchError>>;
    fn fetch_batch<'a>(
        &'a self,
        requests: &'a [FetchRequest<'a, V>],
    ) -> BoxFuture<'a, Vec<Result<Fetched<V>, FetchError>>>;
    fn batching(&self) -> Batching;
}

impl<V, F> DynFetcher<V> for F
where
    V: Send + Sync + 'static,
    F: Fetcher<V>,
{
    fn fetch<'a>(
        &'a self,
        request: FetchRequest<'a, V>,
    ) -> BoxFuture<'a, Result<Fetched<V>, FetchError>> {
        Box::pin(Fetcher::fetch(self, request))
    }
    fn fetch_batch<'a>(
        &'a self,
        requests: &'a [FetchRequest<'a, V>],
    ) -> BoxFuture<'a, Vec<Result<Fetched<V>, FetchError>>> {
        Box::pin(Fetcher::fetch_batch(self, requests))
    }
    fn batching(&self) -> Batching {
        Fetcher::batching(self)
    }
}

/// What kind of failure a [`FetchError`] is, which decides what happens next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FetchErrorKind {
    /// The source could not be reached (connection refused, DNS). Transient;
    /// several in a row mark the network offline.
    Network,
    /// The source did not answer in time. Transient: retried.
    Timeout,
    /// The source refused the request (bad parameters, forbidden). Permanent:
    /// not retried until the next due time.
    Rejected,
    /// The source failed (a server error). Transient: retried.
    Failed,
    /// The source answered with data that could not be decoded. Never cached;
    /// retried, as the source may recover.
    BadData,
    /// Not attempted: the network is offline.
    Offline,
}

impl FetchErrorKind {
    /// A short lower-case name (`"network"`, `"timeout"`, …) for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FetchErrorKind::Network => "network",
            FetchErrorKind::Timeout => "timeout",
            FetchErrorKind::Rejected => "rejected",
            FetchErrorKind::Failed => "failed",
            FetchErrorKind::BadData => "bad_data",
            FetchErrorKind::Offline => "offline",
        }
    }
}

impl fmt::Display for FetchErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a fetch failed. Cheap to clone: one failure is shared by every reader
/// that waited for the same fetch.
#[derive(Clone)]
pub struct FetchError {
    kind: FetchErrorKind,
    message: Arc<str>,
    retry_after: Option<Duration>,
    status: Option<u16>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl FetchError {
    /// Builds an error of `kind`.
    pub fn new(kind: FetchErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into().into(),
            retry_after: None,
            status: None,
            source: None,
        }
    }
    /// The source could not be reached.
    pub fn network(message: impl Into<String>) -> Self {
        Self::new(FetchErrorKind::Network, message)
    }
    /// The source did not answer in time.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(FetchErrorKind::Timeout, message)
    }
    /// The source refused the request; it will not be retried.
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(FetchErrorKind::Rejected, message)
    }
    /// The source failed; it will be retried.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(FetchErrorKind::Failed, message)
    }
    /// The source sent data that could not be decoded.
    pub fn bad_data(message: impl Into<String>) -> Self {
        Self::new(FetchErrorKind::BadData, message)
    }
    pub(crate) fn offline() -> Self {
        Self::new(
            FetchErrorKind::Offline,
            "not fetched: the network is offline",
        )
    }
    /// The engine cut a fetch off after `limit`.
    pub(crate) fn timed_out(limit: Duration) -> Self {
        Self::timeout(format!(
            "no answer within {}",
            crate::rt::compact_duration(limit)
        ))
    }

    /// Asks the engine to wait at least this long before retrying (an HTTP
    /// `Retry-After`).
    #[must_use]
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// Records the status code the source answered with, for sources that
    /// have one (HTTP). It lets a front end tell its callers what the source
    /// said without passing on the source's own words.
    #[must_use]
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Attaches the underlying error.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> FetchErrorKind {
        self.kind
    }
    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// The delay the source asked for before a retry, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
    /// The status code the source answered with, if it gave one.
    pub fn status(&self) -> Option<u16> {
        self.status
    }
    /// Whether the source could not be reached.
    pub fn is_network(&self) -> bool {
        self.kind == FetchErrorKind::Network
    }
    /// Whether the source did not answer in time.
    pub fn is_timeout(&self) -> bool {
        self.kind == FetchErrorKind::Timeout
    }
    /// Whether the source refused the request.
    pub fn is_rejected(&self) -> bool {
        self.kind == FetchErrorKind::Rejected
    }
    /// Whether the source failed.
    pub fn is_failed(&self) -> bool {
        self.kind == FetchErrorKind::Failed
    }
    /// Whether the source sent undecodable data.
    pub fn is_bad_data(&self) -> bool {
        self.kind == FetchErrorKind::BadData
    }
    /// Whether the fetch was not attempted because the network is offline.
    pub fn is_offline(&self) -> bool {
        self.kind == FetchErrorKind::Offline
    }
    /// Whether a retry may succeed: everything but `Offline`, and `Rejected`
    /// unless the source said when to come back (`Retry-After`, as with HTTP 429).
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            FetchErrorKind::Offline => false,
            FetchErrorKind::Rejected => self.retry_after.is_some(),
            _ => true,
        }
    }
}

impl fmt::Debug for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("FetchError");
        d.field("kind", &self.kind)
            .field("message", &&*self.message);
        if let Some(r) = self.retry_after {
            d.field("retry_after", &r);
        }
        if let Some(s) = self.status {
            d.field("status", &s);
        }
        d.finish()
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl PartialEq for FetchError {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.message == other.message
            && self.retry_after == other.retry_after
            && self.status == other.status
    }
}

impl std::error::Error for FetchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert!(FetchError::network("x").is_retryable());
        assert!(FetchError::timeout("x").is_retryable());
        assert!(FetchError::failed("x").is_retryable());
        assert!(FetchError::bad_data("x").is_retryable());
        assert!(!FetchError::rejected("x").is_retryable());
        assert!(!FetchError::offline().is_retryable());
        let e = FetchError::rejected("too many requests").with_retry_after(Duration::from_secs(3));
        assert!(e.is_retryable());
        assert_eq!(e.to_string(), "rejected: too many requests");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(e.status(), None);
        assert_eq!(FetchError::failed("x").with_status(503).status(), Some(503));
        let io = std::io::Error::other("boom");
        let e = FetchError::network("connect").with_source(io);
        assert_eq!(std::error::Error::source(&e).unwrap().to_string(), "boom");
    }
}
