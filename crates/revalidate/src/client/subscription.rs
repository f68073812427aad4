//! `Subscription`: a stream of a query's new values.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

use super::Inner;
use crate::key::QueryKey;

/// New values of one query, one item per change of the data. Created by
/// [`QueryClient::subscribe`](crate::QueryClient::subscribe).
///
/// Values that arrive faster than the subscriber polls are coalesced: it
/// always sees the latest. The stream ends when the query is removed. While
/// it lives, the query counts as active.
pub struct Subscription<V> {
    inner: Arc<Inner<V>>,
    key: QueryKey,
    generation: u32,
    current: Option<Arc<V>>,
    /// `None` only while being dropped.
    changes: Option<WatchStream<u64>>,
}

impl<V> std::fmt::Debug for Subscription<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<V: PartialEq + Send + Sync + 'static> Subscription<V> {
    pub(super) fn new(
        inner: Arc<Inner<V>>,
        key: QueryKey,
        generation: u32,
        current: Option<Arc<V>>,
        rx: watch::Receiver<u64>,
    ) -> Self {
        Self {
            inner,
            key,
            generation,
            current,
            changes: Some(WatchStream::from_changes(rx)),
        }
    }

    /// The key watched.
    pub fn key(&self) -> &QueryKey {
        &self.key
    }

    /// The value at subscription time, or the last one this stream yielded.
    pub fn current(&self) -> Option<&Arc<V>> {
        self.current.as_ref()
    }
}

impl<V: PartialEq + Send + Sync + 'static> Stream for Subscription<V> {
    type Item = Arc<V>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Arc<V>>> {
        loop {
            let Some(changes) = self.changes.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(changes).poll_next(cx) {
                Poll::Ready(Some(_version)) => {
                    let guard = self.inner.map.guard();
                    let entry = self.inner.entry_of(&self.key, self.generation, &guard);
                    let Some(value) = entry.and_then(|e| e.data(&guard)) else {
                        continue;
                    };
                    drop(guard);
                    self.current = Some(value.clone());
                    return Poll::Ready(Some(value));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<V> Drop for Subscription<V> {
    fn drop(&mut self) {
        // With the last subscriber gone, drop the channel so the entry's
        // cold state can be freed and the query can age out. The receiver
        // goes first, under the lock: two subscriptions dropped at once
        // then cannot both see the other's receiver and keep the channel.
        let guard = self.inner.map.guard();
        if let Some(entry) = self.inner.entry_of(&self.key, self.generation, &guard) {
            let mut w = entry.lock();
            drop(self.changes.take());
            if w.get().is_some_and(|c| c.observers() == 0) {
                w.get_mut().changes = None;
                w.tidy();
                if let Some(read) = entry.mark_subscribed(&w, false) {
                    self.inner.activity.unsubscribed(entry, read);
                }
            }
        }
    }
}
