//! Server-Sent Events: `GET /v1/events` (one event per change of a query's
//! data) and `GET /v1/live` (a state tick every second, for dashboards).
//!
//! One task builds each tick, once a second while anyone listens, and
//! every `/v1/live` stream sends that same text: the cost of a tick does
//! not grow with the number of subscribers, and its list of queries is
//! bounded (`[server] live_queries`, the most recently updated first), and
//! neither it nor the statistics it carries walk the cache: the engine keeps
//! the latest updates and the active count as they change.
//!
//! Every stream ends when the daemon stops, with a last `shutdown` event.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio_stream::wrappers::{BroadcastStream, WatchStream};

use super::access::Reader;
use super::admin::{cluster_json, network_json, query_json, stats_json};
use super::error::ApiError;
use super::{AppState, Shared};
use crate::events::{ChangeEvent, Replay, unix_ms};
use crate::identity::UserId;

/// What a `/v1/events` client asked for in its query string.
#[derive(Debug, Default)]
struct EventsQuery {
    /// `?action=a&action=b`: only these (empty: all).
    actions: BTreeSet<String>,
    /// `?last_event_id=N`: resume after N (a browser's `EventSource` cannot
    /// set the `Last-Event-ID` header on a new connection).
    last_event_id: Option<u64>,
    /// `?include=data`: every change carries the new value.
    include_data: bool,
}

fn events_query(query: Option<&str>) -> Result<EventsQuery, ApiError> {
    let mut q = EventsQuery::default();
    for (k, v) in super::resources::form_pairs(query.unwrap_or_default())? {
        match k.as_str() {
            "action" => {
                q.actions.insert(v);
            }
            "last_event_id" => {
                q.last_event_id = Some(v.trim().parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "last_event_id `{v}` is not an event id (a whole number)"
                    ))
                })?);
            }
            "include" => match v.as_str() {
                "data" => q.include_data = true,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "include=`{v}`: only include=data is known"
                    )));
                }
            },
            _ => {}
        }
    }
    Ok(q)
}

/// Ends `stream` when the daemon stops, with a last `shutdown` event.
fn until_shutdown(
    mut stop: watch::Receiver<bool>,
    stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let stopping = async move { super::conn::stopped(&mut stop).await };
    stream.take_until(stopping).chain(stream::once(async {
        Ok(Event::default()
            .event("shutdown")
            .data(r#"{"reason":"the daemon is stopping"}"#))
    }))
}

/// Every cached query `filter` lets through that `caller` may see; with
/// the id of the last event it covers, when that is known, so that a client
/// that resumes after it is not sent the events of another run.
fn snapshot(
    state: &AppState,
    filter: &BTreeSet<String>,
    caller: Option<&UserId>,
    id: Option<u64>,
) -> Event {
    let scopes = state.upstream.scopes();
    let queries: Vec<_> = state
        .client
        .queries()
        .into_iter()
        .filter(|q| q.data.is_some() && (filter.is_empty() || filter.contains(q.key.action())))
        .filter_map(|q| {
            let view = scopes.view(&q.key);
            if scopes.is_user(q.key.action()) && view.user.as_ref() != caller {
                return None;
            }
            let mut item = json!({
                "key": view.key,
                "action": view.action,
                "params": view.params,
                "updated_at": q.updated_at.map(unix_ms),
                "version": q.version,
            });
            if let Some(user) = &view.user {
                item["user"] = user.short().into();
            }
            Some(item)
        })
        .collect();
    let event = Event::default()
        .event("snapshot")
        .data(json!({ "queries": queries }).to_string());
    match id {
        Some(id) => event.id(id.to_string()),
        None => event,
    }
}

fn change(state: &Shared, id: u64, c: &ChangeEvent, include_data: bool) -> Event {
    let text = if include_data {
        with_data(state, c)
    } else {
        serde_json::to_string(c).unwrap_or_default()
    };
    Event::default()
        .id(id.to_string())
        .event("change")
        .data(text)
}

/// A change event with the query's value (`"data"`) when it is at most
/// `[server] event_data_max_bytes`, else with `"data_omitted": true` (the
/// client reads it).
fn with_data(state: &Shared, c: &ChangeEvent) -> String {
    #[derive(serde::Serialize)]
    struct WithData<'a> {
        #[serde(flatten)]
        change: &'a ChangeEvent,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a serde_json::value::RawValue>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        data_omitted: bool,
    }
    let value = state.client.peek(&c.query);
    let raw = value.as_ref().and_then(|(payload, _)| {
        (payload.body.len() <= state.event_data_max_bytes)
            .then(|| std::str::from_utf8(&payload.body).ok())
            .flatten()
            .and_then(|text| serde_json::from_str::<&serde_json::value::RawValue>(text).ok())
    });
    let omitted = raw.is_none();
    serde_json::to_string(&WithData {
        change: c,
        data: raw,
        data_omitted: omitted,
    })
    .unwrap_or_default()
}

/// Server-Sent Events: one `change` per change of a query's data.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(
        ("action" = Option<Vec<String>>, Query, description = "Only these actions (repeatable)"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event"),
        ("last_event_id" = Option<u64>, Query, description = "Resume after this event (for a browser's EventSource; the header wins)"),
        ("include" = Option<String>, Query, description = "`data`: each change carries the new value (up to event_data_max_bytes, else data_omitted)"),
        ("token" = Option<String>, Query, description = "The read token, when [server] read_token_env is set (an EventSource sends no headers)"),
    ),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream"),
        (status = 400, description = "A query string that is not UTF-8", body = super::openapi::ErrorBody),
        (status = 401, description = "No read token (`read_token_required`)", body = super::openapi::ErrorBody),
        (status = 421, description = "A Host not in allowed_hosts", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn events(
    State(state): State<AppState>,
    reader: Reader,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let asked = events_query(query.as_deref())?;
    let include = asked.include_data;
    let filter = Arc::new(asked.actions);
    // A per-user query's changes go to its owner's connections only.
    let me: Option<UserId> = reader.caller.map(|c| c.id);
    let wanted = {
        let filter = filter.clone();
        let me = me.clone();
        move |c: &ChangeEvent| {
            (filter.is_empty() || filter.contains(&c.action)) && c.is_for(me.as_ref())
        }
    };
    // Subscribe before reading the ring, then drop live events already replayed.
    let live = state.events.subscribe();
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(asked.last_event_id);
    let mut first: Vec<Event> = Vec::new();
    let mut seen = state.events.last_id();
    match last.map(|id| state.events.since(id)) {
        None => {}
        Some(Replay::Snapshot) => first.push(snapshot(&state, &filter, me.as_ref(), Some(seen))),
        Some(Replay::Events(missed)) => {
            for (id, c) in missed {
                seen = seen.max(id);
                if wanted(&c) {
                    first.push(change(&state, id, &c, include));
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
                Ok((id, c)) => wanted(&c).then(|| change(&state, id, &c, include)),
                // This client fell behind the live feed: resynchronise it.
                // (Without an id: events older than it may still be queued.)
                Err(_lagged) => Some(snapshot(&state, &filter, me.as_ref(), None)),
            };
            futures::future::ready(event.map(Ok))
        }
    });
    let stream = stream::iter(first.into_iter().map(Ok)).chain(live);
    Ok(
        Sse::new(until_shutdown(state.shutdown.clone(), stream)).keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .text("keep-alive"),
        ),
    )
}

/// The `/v1/live` ticks: built by one task, shared by every subscriber.
#[derive(Debug)]
pub(crate) struct LiveHub {
    /// The latest tick's text (`None` before the first).
    latest: watch::Sender<Option<Arc<str>>>,
    /// Wakes the builder when a first subscriber arrives.
    wake: Notify,
    subscribers: AtomicUsize,
    max_subscribers: usize,
    max_queries: usize,
    built: AtomicU64,
    /// How long the latest tick took to build, in microseconds.
    last_build_us: AtomicU64,
}

impl LiveHub {
    pub(crate) fn new(max_subscribers: usize, max_queries: usize) -> Self {
        Self {
            latest: watch::Sender::new(None),
            wake: Notify::new(),
            subscribers: AtomicUsize::new(0),
            max_subscribers,
            max_queries,
            built: AtomicU64::new(0),
            last_build_us: AtomicU64::new(0),
        }
    }

    /// Streams open now.
    pub(crate) fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// Ticks built since the start.
    pub(crate) fn ticks_built(&self) -> u64 {
        self.built.load(Ordering::Relaxed)
    }

    /// How long the latest tick took to build, in microseconds.
    pub(crate) fn last_build_us(&self) -> u64 {
        self.last_build_us.load(Ordering::Relaxed)
    }

    /// Builds a tick every second while anyone listens; ends with the
    /// daemon's state (or when it stops).
    pub(crate) fn start(state: &AppState) {
        let weak: Weak<Shared> = Arc::downgrade(state);
        let hub = state.live.clone();
        let mut stop = state.shutdown.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let wake = hub.wake.notified();
                if hub.subscribers() > 0 {
                    let Some(state) = weak.upgrade() else { return };
                    let started = std::time::Instant::now();
                    let tick: Arc<str> = build_tick(&state).into();
                    let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    hub.last_build_us.store(took, Ordering::Relaxed);
                    hub.built.fetch_add(1, Ordering::Relaxed);
                    hub.latest.send_replace(Some(tick));
                }
                tokio::select! {
                    _ = every.tick() => {}
                    () = wake => {}
                    () = super::conn::stopped(&mut stop) => return,
                }
            }
        });
    }
}

/// One tick: the statistics, the network, and at most `live_queries`
/// queries, the most recently updated first, with the total.
///
/// The engine reads the rows from its index of the latest updates and
/// builds their states alone, and counts active queries without a pass:
/// a tick costs the same at 10k cached queries as at 1M.
fn build_tick(state: &AppState) -> String {
    let total = state.client.len();
    let shown = state.client.recently_updated(state.live.max_queries);
    json!({
        "now": unix_ms(std::time::SystemTime::now()),
        "stats": stats_json(state),
        "network": network_json(state),
        "cluster": cluster_json(state),
        "queries": shown.iter().map(|q| query_json(state.upstream.scopes(), q)).collect::<Vec<_>>(),
        "queries_total": total,
        "queries_truncated": total > shown.len(),
    })
    .to_string()
}

/// Counts a `/v1/live` stream while it is open.
struct Subscriber(AppState);

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.live.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Server-Sent Events for dashboards: a `tick` every second.
#[utoipa::path(get, path = "/v1/live", tag = "events",
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream"),
        (status = 421, description = "A Host not in allowed_hosts", body = super::openapi::ErrorBody),
        (status = 503, description = "max_live_subscribers streams are open", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn ticks(
    State(state): State<AppState>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let hub = &state.live;
    let limit = hub.max_subscribers;
    if hub
        .subscribers
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_err()
    {
        return Err(ApiError::TooManySubscribers { limit });
    }
    let subscriber = Subscriber(state.clone());
    let latest = hub.latest.subscribe();
    if latest.borrow().is_none() {
        hub.wake.notify_one(); // the first subscriber: build one now
    }
    // The latest tick at once, then each new one.
    let ticks = WatchStream::new(latest).filter_map(move |tick| {
        let _open = &subscriber;
        futures::future::ready(tick.map(|t| Ok(Event::default().event("tick").data(&*t))))
    });
    Ok(Sse::new(until_shutdown(state.shutdown.clone(), ticks)).keep_alive(KeepAlive::default()))
}
