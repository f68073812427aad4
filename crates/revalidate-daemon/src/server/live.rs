//! Server-Sent Events: `GET /v1/events` (one event per change of a query's
//! data) and `GET /v1/live` (a state tick every second, for dashboards).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};
use serde_json::json;
use tokio_stream::wrappers::{BroadcastStream, IntervalStream};

use super::AppState;
use super::admin::{network_json, queries_json, stats_json};
use crate::events::{ChangeEvent, Logged, Replay, unix_ms};

/// The actions a `?action=a&action=b` query asks for (empty: all).
fn action_filter(query: Option<&str>) -> BTreeSet<String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "action")
        .map(|(_, v)| v.into_owned())
        .collect()
}

fn snapshot(state: &AppState, filter: &BTreeSet<String>) -> Event {
    let queries: Vec<_> = state
        .client
        .queries()
        .into_iter()
        .filter(|q| q.data.is_some() && (filter.is_empty() || filter.contains(q.key.action())))
        .map(|q| {
            json!({
                "key": q.key.to_string(),
                "action": q.key.action(),
                "params": q.key.params(),
                "updated_at": q.updated_at.map(unix_ms),
                "version": q.version,
            })
        })
        .collect();
    Event::default()
        .event("snapshot")
        .data(json!({ "queries": queries }).to_string())
}

fn change(id: u64, c: &ChangeEvent) -> Event {
    Event::default()
        .id(id.to_string())
        .event("change")
        .data(serde_json::to_string(c).unwrap_or_default())
}

pub(crate) async fn events(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let filter = Arc::new(action_filter(query.as_deref()));
    // Subscribe before reading the ring, then drop live events already replayed.
    let live = state.events.subscribe();
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut first: Vec<Event> = Vec::new();
    let mut seen = state.events.last_id();
    match last.map(|id| state.events.since(id)) {
        None => {}
        Some(Replay::Snapshot) => first.push(snapshot(&state, &filter)),
        Some(Replay::Events(missed)) => {
            for (id, logged) in missed {
                seen = seen.max(id);
                match &*logged {
                    Logged::Change(c) if filter.is_empty() || filter.contains(&c.action) => {
                        first.push(change(id, c))
                    }
                    Logged::Change(_) => {}
                    Logged::Resync => first.push(snapshot(&state, &filter)),
                }
            }
        }
    }
    let live = BroadcastStream::new(live).filter_map({
        let state = state.clone();
        let filter = filter.clone();
        move |item| {
            let event = match item {
                Ok((id, _)) if id <= seen => None,
                Ok((id, logged)) => match &*logged {
                    Logged::Change(c) if filter.is_empty() || filter.contains(&c.action) => {
                        Some(change(id, c))
                    }
                    Logged::Change(_) => None,
                    Logged::Resync => Some(snapshot(&state, &filter)),
                },
                // This client fell behind the live feed: resynchronise it.
                Err(_lagged) => Some(snapshot(&state, &filter)),
            };
            futures::future::ready(event.map(Ok))
        }
    });
    let stream = stream::iter(first.into_iter().map(Ok)).chain(live);
    Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keep-alive"),
    )
}

pub(crate) async fn ticks(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let every = tokio::time::interval(Duration::from_secs(1));
    let stream = IntervalStream::new(every).map(move |_| {
        let tick = json!({
            "now": unix_ms(std::time::SystemTime::now()),
            "stats": stats_json(&state),
            "network": network_json(&state),
            "queries": queries_json(&state),
        });
        Ok(Event::default().event("tick").data(tick.to_string()))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
