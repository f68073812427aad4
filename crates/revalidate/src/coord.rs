//! Coordination: whether this node fetches a key now, and which version its
//! data gets.
//!
//! A client alone decides for itself ([`LocalCoordinator`], the default):
//! it always fetches, and it numbers its data versions itself, one more on
//! every change. Several nodes that share one source can plug a cluster
//! coordinator in here instead. Before a fetch it may answer that another
//! node's result is current and should be adopted; after a fetch it gives
//! the result a version that is the same on every node, or refuses it
//! because a newer write won meanwhile. Versions are fencing tokens: an
//! entry stores a value whose version comes from outside only if that
//! version is newer than the one it holds, so a late writer never wins.
//!
//! The client asks the coordinator only when it fetches (a miss, a refresh),
//! never on a cached read.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;

use crate::fetch::{FetchError, Fetched};
use crate::key::QueryKey;
use crate::policy::Staleness;

/// What this node holds of a key when it asks to fetch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holding {
    /// The version of the data it holds (0: none).
    pub version: u64,
    /// When that data was stored or last confirmed, if it has any.
    pub updated_at: Option<SystemTime>,
    /// The key's staleness limit.
    pub staleness: Staleness,
    /// Whether the node's entry was invalidated: data that is fresh by time
    /// alone must not be adopted then.
    pub invalidated: bool,
    /// Whether the caller asked for the source itself (a refetch): a value
    /// fresh by time elsewhere will not do.
    pub forced: bool,
    /// Whether a reader waits for this fetch (a miss, a refetch) rather than
    /// the refresh service: a reader should wait for another node's fetch in
    /// flight, the service can leave it to that node.
    pub reader: bool,
}

/// A coordinator's permission for one fetch. For a cluster it is the
/// fencing token that goes back with the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket(pub u64);

/// A value and its version from outside this node.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Remote<V> {
    /// The value.
    pub value: V,
    /// Its version, the same on every node.
    pub version: u64,
    /// When the source produced or last confirmed it.
    pub updated_at: SystemTime,
}

impl<V> Remote<V> {
    /// A value with its version and time.
    pub fn new(value: V, version: u64, updated_at: SystemTime) -> Self {
        Self {
            value,
            version,
            updated_at,
        }
    }
}

/// A coordinator's answer before a fetch.
#[derive(Debug)]
#[non_exhaustive]
pub enum Grant<V> {
    /// Fetch from the source, and hand this ticket back with the result.
    Fetch(Ticket),
    /// A value at least as new as this node's is available: store it
    /// instead of fetching.
    Adopt(Remote<V>),
    /// Another node is fetching the key: do not fetch, and look again after
    /// this long unless its result arrives first (only for the refresh
    /// service; readers are never skipped).
    Skip(std::time::Duration),
}

/// A coordinator's answer after a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Publish {
    /// Number the data here: a change bumps the entry's version by one.
    Local,
    /// The data has this version, the same on every node.
    Version(u64),
    /// A newer write won while this fetch ran: the result is not stored.
    Refused,
}

/// Decides who fetches a key and which version its data gets.
///
/// A client alone decides for itself ([`LocalCoordinator`], the default): it
/// always fetches, and numbers its data versions itself, one more on every
/// change. Several nodes sharing one source plug a cluster coordinator in
/// instead ([`QueryClientBuilder::coordinator`](crate::QueryClientBuilder::coordinator)).
/// Before a fetch it may answer that another node's value is current and
/// should be adopted; after a fetch it gives the result a version that is the
/// same on every node, or refuses it because a newer write won meanwhile.
/// Versions are fencing tokens: an entry stores a value whose version comes
/// from outside only if that version is not older than the one it holds, so
/// a late writer never wins. The client asks only when it fetches, never on
/// a cached read.
///
/// Both methods are called with the key's local flight held, so at most one
/// call per key and node is in progress. A coordinator must not fail: when
/// it cannot reach its peers it answers as [`LocalCoordinator`] would, and
/// the node carries on alone.
pub trait Coordinator<V: Send + Sync + 'static>: Send + Sync + 'static {
    /// This node would fetch `key`: may it, or is there a value to adopt?
    fn acquire(&self, key: &QueryKey, holding: &Holding) -> impl Future<Output = Grant<V>> + Send;

    /// The fetch under `ticket` ended with `result` (`previous` is what the
    /// node held before): which version does the data get?
    fn publish(
        &self,
        key: &QueryKey,
        ticket: Ticket,
        result: &Result<Fetched<V>, FetchError>,
        previous: Option<&Arc<V>>,
    ) -> impl Future<Output = Publish> + Send;

    /// The application wrote `key` here ([`QueryClient::set_data`](crate::QueryClient::set_data)):
    /// `value` is now its data at `version`. Called synchronously, after the
    /// write; a cluster coordinator hands it to its own task. Default: nothing.
    fn wrote(&self, key: &QueryKey, value: &Arc<V>, version: u64) {
        let _ = (key, value, version);
    }

    /// The application invalidated `filter` here. Default: nothing.
    fn invalidated(&self, filter: &crate::QueryFilter) {
        let _ = filter;
    }

    /// Salts this node's jitter of due times (see
    /// [`RefreshSettings::jitter`](crate::RefreshSettings::jitter)). A
    /// cluster coordinator gives each node its own, so that the nodes' due
    /// times for one key spread: the first node refreshes it and the others
    /// hear the result before their turn comes, instead of all asking at
    /// one instant. Default 0 (the same jitter on every run).
    fn jitter_salt(&self) -> u64 {
        0
    }
}

/// One node deciding for itself: every fetch is granted and versions are
/// numbered locally. The default.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalCoordinator;

impl<V: Send + Sync + 'static> Coordinator<V> for LocalCoordinator {
    fn acquire(
        &self,
        _key: &QueryKey,
        _holding: &Holding,
    ) -> impl Future<Output = Grant<V>> + Send {
        std::future::ready(Grant::Fetch(Ticket(0)))
    }

    fn publish(
        &self,
        _key: &QueryKey,
        _ticket: Ticket,
        _result: &Result<Fetched<V>, FetchError>,
        _previous: Option<&Arc<V>>,
    ) -> impl Future<Output = Publish> + Send {
        std::future::ready(Publish::Local)
    }
}

/// The object-safe form of [`Coordinator`] that the client stores.
pub(crate) trait DynCoordinator<V>: Send + Sync {
    fn jitter_salt(&self) -> u64;
    fn wrote(&self, key: &QueryKey, value: &Arc<V>, version: u64);
    fn invalidated(&self, filter: &crate::QueryFilter);
    fn acquire<'a>(&'a self, key: &'a QueryKey, holding: &'a Holding) -> BoxFuture<'a, Grant<V>>;
    fn publish<'a>(
        &'a self,
        key: &'a QueryKey,
        ticket: Ticket,
        result: &'a Result<Fetched<V>, FetchError>,
        previous: Option<&'a Arc<V>>,
    ) -> BoxFuture<'a, Publish>;
}

impl<V: Send + Sync + 'static, C: Coordinator<V>> DynCoordinator<V> for C {
    fn jitter_salt(&self) -> u64 {
        Coordinator::jitter_salt(self)
    }
    fn wrote(&self, key: &QueryKey, value: &Arc<V>, version: u64) {
        Coordinator::wrote(self, key, value, version);
    }
    fn invalidated(&self, filter: &crate::QueryFilter) {
        Coordinator::invalidated(self, filter);
    }
    fn acquire<'a>(&'a self, key: &'a QueryKey, holding: &'a Holding) -> BoxFuture<'a, Grant<V>> {
        Box::pin(Coordinator::acquire(self, key, holding))
    }
    fn publish<'a>(
        &'a self,
        key: &'a QueryKey,
        ticket: Ticket,
        result: &'a Result<Fetched<V>, FetchError>,
        previous: Option<&'a Arc<V>>,
    ) -> BoxFuture<'a, Publish> {
        Box::pin(Coordinator::publish(self, key, ticket, result, previous))
    }
}
