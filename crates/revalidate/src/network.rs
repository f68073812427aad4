//! `NetworkMonitor`: is the source reachable?
//!
//! Three things can move the state: the application (`set_online`, e.g. from
//! `navigator.onLine` or an OS event), a reachability probe the refresh
//! service runs, and the engine itself, which goes offline after its
//! client's `offline_after_errors` network-class failures in a row. While offline the
//! engine makes no fetches at all; cached reads go on as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::watch;

/// Why the network is considered offline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OfflineReason {
    /// The application said so.
    Manual,
    /// Too many network errors in a row.
    Errors,
    /// The reachability probe failed.
    Probe,
}

/// The network state and when it last changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct NetworkStatus {
    /// Whether fetches may be made.
    pub online: bool,
    /// Why it is offline (`None` while online).
    pub reason: Option<OfflineReason>,
    /// When the state last changed.
    #[serde(serialize_with = "ser_time")]
    pub since: SystemTime,
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(crate::rt::unix_millis(*t))
}

/// Online/offline state shared by the client, the refresh service and the
/// application. Cloning gives another handle to the same state.
///
/// ```
/// use revalidate::NetworkMonitor;
///
/// let net = NetworkMonitor::new();
/// assert!(net.is_online());
/// let mut changes = net.watch();
/// net.set_online(false);
/// assert!(!net.is_online());
/// assert!(changes.has_changed().unwrap());
/// ```
#[derive(Clone, Debug)]
pub struct NetworkMonitor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: watch::Sender<NetworkStatus>,
    consecutive_errors: AtomicU32,
    transitions: AtomicU32,
}

impl Default for NetworkMonitor {
    fn default() -> Self {
        Self::new()
    }
}

impl NetworkMonitor {
    /// A monitor that starts online.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: watch::Sender::new(NetworkStatus {
                    online: true,
                    reason: None,
                    since: crate::rt::wall_now(),
                }),
                consecutive_errors: AtomicU32::new(0),
                transitions: AtomicU32::new(0),
            }),
        }
    }

    /// Whether fetches may be made now.
    pub fn is_online(&self) -> bool {
        self.inner.state.borrow().online
    }

    /// The current state.
    pub fn status(&self) -> NetworkStatus {
        *self.inner.state.borrow()
    }

    /// A receiver that sees every change of state.
    pub fn watch(&self) -> watch::Receiver<NetworkStatus> {
        self.inner.state.subscribe()
    }

    /// Sets the state, as the application sees it.
    pub fn set_online(&self, online: bool) {
        self.set(online, OfflineReason::Manual);
    }

    /// Network-class errors in a row since the last success.
    pub fn consecutive_errors(&self) -> u32 {
        self.inner.consecutive_errors.load(Relaxed)
    }

    /// How many times the state has flipped.
    pub fn transitions(&self) -> u32 {
        self.inner.transitions.load(Relaxed)
    }

    /// Records the outcome of a probe of the source.
    pub fn probe_result(&self, reachable: bool) {
        if reachable {
            self.inner.consecutive_errors.store(0, Relaxed);
        }
        self.set(reachable, OfflineReason::Probe);
    }

    /// Records a network-class failure; returns whether it took the state
    /// offline, which `threshold` failures in a row do.
    pub(crate) fn record_network_error(&self, threshold: u32) -> bool {
        let n = self.inner.consecutive_errors.fetch_add(1, Relaxed) + 1;
        n >= threshold.max(1) && self.set(false, OfflineReason::Errors)
    }

    /// Records that the source answered (with anything, even an error status).
    /// Brings the state back online only if errors had taken it offline.
    pub(crate) fn record_reachable(&self) {
        self.inner.consecutive_errors.store(0, Relaxed);
        let tripped = self.inner.state.borrow().reason == Some(OfflineReason::Errors);
        if tripped {
            self.set(true, OfflineReason::Errors);
        }
    }

    /// Sets the state; returns whether it changed.
    fn set(&self, online: bool, reason: OfflineReason) -> bool {
        let mut flipped = false;
        let changed = self.inner.state.send_if_modified(|s| {
            if s.online == online && (online || s.reason == Some(reason)) {
                return false;
            }
            flipped = s.online != online;
            s.online = online;
            s.reason = (!online).then_some(reason);
            if flipped {
                s.since = crate::rt::wall_now();
            }
            true
        });
        if flipped {
            self.inner.transitions.fetch_add(1, Relaxed);
            let by = match reason {
                OfflineReason::Manual => "the application",
                OfflineReason::Errors => "fetch errors",
                OfflineReason::Probe => "the probe",
            };
            let state = if online { "online" } else { "offline" };
            crate::log::decision!("🌐 network {state} (by {by})");
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_trip_offline_and_success_restores() {
        let net = NetworkMonitor::new();
        assert!(!net.record_network_error(3));
        assert!(!net.record_network_error(3));
        assert!(net.record_network_error(3));
        assert!(!net.is_online());
        assert_eq!(net.status().reason, Some(OfflineReason::Errors));
        net.record_reachable();
        assert!(net.is_online());
        assert_eq!(net.consecutive_errors(), 0);
    }

    #[test]
    fn manual_offline_is_not_undone_by_a_success() {
        let net = NetworkMonitor::new();
        net.set_online(false);
        net.record_reachable();
        assert!(!net.is_online());
        net.set_online(true);
        assert!(net.is_online());
        assert_eq!(net.transitions(), 2);
    }

    #[test]
    fn threshold_is_configurable() {
        let net = NetworkMonitor::new();
        assert!(net.record_network_error(1));
        net.probe_result(true);
        assert!(net.is_online());
        assert_eq!(net.status().reason, None);
    }
}
