//! The change log behind `GET /v1/events`: one numbered event per change of
//! a query's data, kept in a bounded ring so that a client reconnecting
//! with `Last-Event-ID` gets what it missed, or a full snapshot when the gap
//! is older than the ring.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use revalidate::{Change, QueryClient, QueryKey};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::broadcast;

use crate::identity::{Scopes, UserId};
use crate::upstream::Payload;

/// A change, as sent to SSE clients: a per-user query's as its action and
/// own parameters, with the short hash of its owner (and only to them).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChangeEvent {
    pub(crate) key: String,
    pub(crate) action: String,
    /// Kept as its JSON text: the ring holds a thousand events, and a
    /// parsed object costs a map node of ~600 bytes where the text of
    /// `{"id":"42"}` costs 16.
    pub(crate) params: Box<RawValue>,
    /// A per-user query's owner, short.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) user: Option<String>,
    /// Unix milliseconds.
    pub(crate) updated_at: u64,
    pub(crate) version: u64,
    /// The query's key in the cache.
    #[serde(skip)]
    pub(crate) query: QueryKey,
    /// A per-user query's owner: the one identity this event is for.
    #[serde(skip)]
    pub(crate) owner: Option<UserId>,
}

impl ChangeEvent {
    pub(crate) fn of(change: &Change, scopes: &Scopes) -> Self {
        let view = scopes.view(&change.key);
        Self {
            key: view.key,
            action: view.action,
            params: serde_json::value::to_raw_value(&view.params)
                .unwrap_or_else(|_| RawValue::NULL.to_owned()),
            user: view.user.as_ref().map(|u| u.short().to_owned()),
            updated_at: unix_ms(change.updated_at),
            version: change.version,
            query: change.key.clone(),
            owner: view.user,
        }
    }

    /// Whether the connection of `caller` may hear it.
    pub(crate) fn is_for(&self, caller: Option<&UserId>) -> bool {
        self.owner.is_none() || self.owner.as_ref() == caller
    }
}

pub(crate) fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One numbered event of the log.
pub(crate) type Logged = (u64, Arc<ChangeEvent>);

#[derive(Debug)]
struct Ring {
    /// The id the next event gets (ids start at 1).
    next: u64,
    events: VecDeque<Logged>,
    capacity: usize,
}

/// What a reconnecting client should receive.
#[derive(Debug)]
pub(crate) enum Replay {
    /// Every event after its last one.
    Events(Vec<Logged>),
    /// Its last event is older than the ring: a snapshot, then live events.
    Snapshot,
}

/// The numbered change log.
#[derive(Debug)]
pub(crate) struct EventLog {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Logged>,
}

impl EventLog {
    /// Starts logging `client`'s changes.
    ///
    /// The log listens synchronously (`QueryClient::on_change`), so a
    /// change has its id before the reader whose fetch made it is answered:
    /// a client that reads and then opens the feed does not hear of the
    /// change it was already answered with, and the log never falls behind
    /// the engine.
    pub(crate) fn start(
        client: &QueryClient<Payload>,
        capacity: usize,
        scopes: Arc<Scopes>,
    ) -> Arc<Self> {
        let log = Arc::new(Self {
            ring: Mutex::new(Ring {
                next: 1,
                events: VecDeque::with_capacity(capacity.min(4096)),
                capacity: capacity.max(1),
            }),
            tx: broadcast::Sender::new(capacity.clamp(16, 4096)),
        });
        let weak = Arc::downgrade(&log);
        client.on_change(move |change| {
            if let Some(log) = weak.upgrade() {
                log.push(ChangeEvent::of(change, &scopes));
            }
        });
        log
    }

    fn push(&self, event: ChangeEvent) {
        let mut ring = self.ring.lock();
        let id = ring.next;
        ring.next += 1;
        let entry = (id, Arc::new(event));
        if ring.events.len() == ring.capacity {
            ring.events.pop_front();
        }
        ring.events.push_back(entry.clone());
        // Sent under the lock, so live events follow the ring in id order.
        let _ = self.tx.send(entry);
    }

    /// Live events from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Logged> {
        self.tx.subscribe()
    }

    /// What a client whose last event was `last` missed.
    pub(crate) fn since(&self, last: u64) -> Replay {
        let ring = self.ring.lock();
        let oldest = ring.events.front().map_or(ring.next, |(id, _)| *id);
        if last + 1 < oldest || last >= ring.next {
            // Older than the ring, or an id this log never gave (a restart).
            return Replay::Snapshot;
        }
        Replay::Events(
            ring.events
                .iter()
                .filter(|(id, _)| *id > last)
                .cloned()
                .collect(),
        )
    }

    /// The id of the latest event (0 before the first).
    pub(crate) fn last_id(&self) -> u64 {
        self.ring.lock().next - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(n: u64) -> ChangeEvent {
        ChangeEvent {
            key: format!("k{n}"),
            action: "a".into(),
            params: RawValue::NULL.to_owned(),
            user: None,
            updated_at: n,
            version: n,
            query: QueryKey::bare("a"),
            owner: None,
        }
    }

    fn log(capacity: usize) -> EventLog {
        EventLog {
            ring: Mutex::new(Ring {
                next: 1,
                events: VecDeque::new(),
                capacity,
            }),
            tx: broadcast::Sender::new(16),
        }
    }

    #[test]
    fn replays_what_was_missed_or_asks_for_a_snapshot() {
        let log = log(3);
        for n in 1..=5 {
            log.push(change(n));
        }
        assert_eq!(log.last_id(), 5);
        let ids = |r: Replay| match r {
            Replay::Events(e) => e.into_iter().map(|(id, _)| id).collect::<Vec<_>>(),
            Replay::Snapshot => vec![0],
        };
        assert_eq!(ids(log.since(5)), Vec::<u64>::new());
        assert_eq!(ids(log.since(3)), vec![4, 5]);
        assert_eq!(ids(log.since(2)), vec![3, 4, 5], "the oldest kept is 3");
        assert_eq!(ids(log.since(1)), vec![0], "2 is gone: snapshot");
        assert_eq!(
            ids(log.since(99)),
            vec![0],
            "an id from another run: snapshot"
        );
    }
}
