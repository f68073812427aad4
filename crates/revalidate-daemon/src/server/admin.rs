//! Operations: invalidation (admin token), state as JSON, Prometheus
//! metrics, health, and the dashboard page.

use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Response};
use revalidate::{FetchStatus, QueryFilter, QueryKey, QueryState};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::events::unix_ms;
use crate::identity::{Scopes, UserId};
use crate::upstream::Payload;

const DASHBOARD: &str = include_str!("../../assets/dashboard.html");

/// The dashboard.
#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, description = "The dashboard page", content_type = "text/html"),
        (status = 421, description = "A Host not in allowed_hosts", body = super::openapi::ErrorBody)))]
pub(crate) async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

/// `ok` while the daemon runs.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "ok", content_type = "text/plain", body = String),
        (status = 421, description = "A Host not in allowed_hosts", body = super::openapi::ErrorBody)))]
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// The body of `POST /v1/invalidate`: exactly one of `action` (with
/// optional `params`), `resource`, or `all: true`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InvalidateRequest {
    /// Every query of this action, or with `params` the one query.
    action: Option<String>,
    /// The parameters of one query.
    #[schema(value_type = Option<Object>)]
    params: Option<Value>,
    /// Every query of this resource type.
    resource: Option<String>,
    /// Every query.
    #[serde(default)]
    all: bool,
}

/// Checks the bearer token.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.admin_token else {
        return Err(ApiError::AdminDisabled {
            env: state.admin_token_env.clone(),
        });
    };
    match super::access::bearer(headers) {
        Some(given) if super::access::same_token(given, token) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

/// Marks queries stale; active ones are refreshed within a check interval.
#[utoipa::path(post, path = "/v1/invalidate", tag = "operations",
    request_body = InvalidateRequest,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "How many were invalidated", body = super::openapi::Invalidated),
        (status = 400, description = "Not one of the accepted bodies", body = super::openapi::ErrorBody),
        (status = 401, description = "No or a wrong bearer token", body = super::openapi::ErrorBody),
        (status = 403, description = "No admin token is configured", body = super::openapi::ErrorBody),
        (status = 404, description = "Not a configured action", body = super::openapi::ErrorBody),
        (status = 413, description = "The body is too large", body = super::openapi::ErrorBody),
        (status = 421, description = "A Host not in allowed_hosts", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn invalidate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let body = body?;
    let request: InvalidateRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "expected {{\"action\": …[, \"params\": {{…}}]}}, {{\"resource\": …}} or {{\"all\": true}}: {e}"
        ))
    })?;
    let filter = match request {
        InvalidateRequest {
            all: true,
            action: None,
            resource: None,
            params: None,
        } => QueryFilter::All,
        InvalidateRequest {
            action: Some(a),
            params,
            resource: None,
            all: false,
        } => {
            if !state.upstream.knows(&a) {
                return Err(ApiError::unknown_action(&state.upstream, a));
            }
            match params {
                Some(p @ Value::Object(_)) => QueryFilter::Key(QueryKey::new(&a, p)),
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "\"params\" is an object of parameters, like {\"status\": \"active\"}",
                    ));
                }
                None => QueryFilter::Action(a),
            }
        }
        InvalidateRequest {
            resource: Some(r),
            action: None,
            params: None,
            all: false,
        } => QueryFilter::Resource(r),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of: \"action\" (with optional \"params\"), \"resource\", or \"all\": true",
            ));
        }
    };
    let n = state.client.invalidate(filter);
    if let Some(refresh) = &state.refresh {
        // Active queries should not wait for the next deadline to be seen.
        refresh.check_now();
    }
    Ok(axum::Json(json!({ "invalidated": n })).into_response())
}

pub(crate) fn stats_json(state: &AppState) -> Value {
    let stats = state.client.stats();
    let mut v = serde_json::to_value(&stats).unwrap_or_default();
    if let Value::Object(map) = &mut v {
        map.insert("in_flight".into(), json!(state.client.fetches_in_flight()));
        map.insert("queries".into(), json!(state.client.len()));
        map.insert(
            "max_concurrent_refreshes".into(),
            json!(state.client.settings().max_concurrent_refreshes),
        );
        map.insert(
            "bytes_saved".into(),
            json!(
                state
                    .upstream
                    .bytes_saved
                    .load(std::sync::atomic::Ordering::Relaxed)
            ),
        );
        map.insert(
            "live".into(),
            json!({
                "subscribers": state.live.subscribers(),
                "ticks_built": state.live.ticks_built(),
                "last_build_us": state.live.last_build_us(),
            }),
        );
        // What the write-behind has made durable: a change seen before
        // `flushes` is read is on disk once `flushes` has gone up twice.
        map.insert(
            "store".into(),
            match &state.store {
                Some(view) => {
                    let s = view.stats();
                    json!({
                        "flushes": s.flushes,
                        "written": s.written,
                        "failed_flushes": s.failed_flushes,
                        "pending": s.pending,
                    })
                }
                None => Value::Null,
            },
        );
        map.insert(
            "upstream_requests".into(),
            json!(
                state
                    .upstream
                    .requests
                    .load(std::sync::atomic::Ordering::Relaxed)
            ),
        );
    }
    v
}

/// Counters: refreshes, reads, queries, the daemon's own.
#[utoipa::path(get, path = "/v1/stats", tag = "operations",
    responses((status = 200, description = "The counters", body = super::openapi::Stats),
        (status = 421, description = "A Host not in allowed_hosts", body = super::openapi::ErrorBody)))]
pub(crate) async fn stats(State(state): State<AppState>) -> axum::Json<Value> {
    axum::Json(stats_json(&state))
}

fn status_of(q: &QueryState<Payload>) -> &'static str {
    match q.status {
        FetchStatus::Fetching => "fetching",
        FetchStatus::Paused => "paused",
        _ if q.error_count > 0 => "error",
        _ if q.data.is_none() => "empty",
        _ if q.is_stale => "stale",
        _ => "fresh",
    }
}

/// One query, for `/v1/queries` and the dashboard: a per-user one by its
/// own parameters and the short hash of its owner.
pub(crate) fn query_json(scopes: &Scopes, q: &QueryState<Payload>) -> Value {
    let view = scopes.view(&q.key);
    json!({
                "key": view.key,
                "action": view.action,
                "params": view.params,
                "user": view.user.as_ref().map(UserId::short),
                "resource": q.resource,
                "staleness": q.staleness.to_string(),
                "staleness_ms": q.staleness.limit().map(|d| d.as_millis() as u64),
                "age_ms": q.age.map(|a| a.as_millis() as u64),
                "updated_at": q.updated_at.map(unix_ms),
                "status": status_of(q),
                "fetch_status": q.status,
                "error_count": q.error_count,
                "last_error": q.last_error.as_ref().map(ToString::to_string),
                "last_error_at": q.last_error_at.map(unix_ms),
                "observers": q.observers,
                "active": q.is_active,
                "version": q.version,
                "next_check": q.next_check.map(unix_ms),
                "bytes": q.data.as_ref().map(|d| d.body.len()),
    })
}

/// Queries in one page of `/v1/queries` when `limit` is not given.
const DEFAULT_PAGE: usize = 100;
/// The largest `limit` of `/v1/queries`: a page costs a state and a JSON
/// object per query, which is what pagination bounds.
const MAX_PAGE: usize = 1000;

/// What a `/v1/queries` client asked for: `?limit=N&after=CURSOR`.
#[derive(Debug)]
struct PageQuery {
    limit: usize,
    after: Option<QueryKey>,
}

fn page_query(query: Option<&str>) -> Result<PageQuery, ApiError> {
    let mut page = PageQuery {
        limit: DEFAULT_PAGE,
        after: None,
    };
    for (k, v) in super::resources::form_pairs(query.unwrap_or_default())? {
        match k.as_str() {
            "limit" => {
                page.limit = v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit `{v}`: a whole number from 1 to {MAX_PAGE} (default {DEFAULT_PAGE})"
                        ))
                    })?;
            }
            "after" => page.after = Some(decode_cursor(&v)?),
            _ => {}
        }
    }
    Ok(page)
}

/// The continuation token after `key`: `[action, params]` as JSON, base64url. Opaque to
/// clients; it is the engine's key (for a per-user query, with its owner's
/// keyed-hash id, never a credential), so that a page starts exactly after
/// the previous one in the engine's key order.
fn encode_cursor(key: &QueryKey) -> String {
    use base64::Engine as _;
    let text = serde_json::to_vec(&(key.action(), key.params())).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn decode_cursor(cursor: &str) -> Result<QueryKey, ApiError> {
    use base64::Engine as _;
    let bad = || {
        ApiError::bad_request(format!(
            "after `{cursor}` is not a cursor: pass the `next` of the previous page as it is"
        ))
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor.trim())
        .map_err(|_| bad())?;
    let (action, params): (String, Value) = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if action.contains('\0') {
        return Err(bad());
    }
    Ok(QueryKey::new(action, params))
}

/// One page of the cached queries in key order, with the total and the
/// cursor of the next page (`null` on the last).
fn queries_page_json(state: &AppState, page: &PageQuery) -> Value {
    let scopes = state.upstream.scopes();
    let total = state.client.len();
    // One more than asked says whether another page follows.
    let mut rows = state
        .client
        .queries_page(page.after.as_ref(), page.limit + 1);
    let next = (rows.len() > page.limit).then(|| {
        rows.truncate(page.limit);
        rows.last().map(|q| encode_cursor(&q.key))
    });
    json!({
        "queries": rows.iter().map(|q| query_json(scopes, q)).collect::<Vec<_>>(),
        "total": total,
        "next": next.flatten(),
    })
}

/// The cached queries, sorted by key, a page at a time.
#[utoipa::path(get, path = "/v1/queries", tag = "operations",
    params(
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000, description = "Queries in the page: 1 to 1000, default 100"),
        ("after" = Option<String>, Query, description = "The `next` of the previous page: the page starts after it"),
    ),
    responses((status = 200, description = "One page of the queries", body = super::openapi::QueriesPage),
        (status = 400, description = "A limit out of 1..=1000, or an `after` that is not a cursor", body = super::openapi::ErrorBody),
        (status = 421, description = "A Host not in allowed_hosts", body = super::openapi::ErrorBody)))]
pub(crate) async fn queries(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<Value>, ApiError> {
    let page = page_query(query.as_deref())?;
    Ok(axum::Json(queries_page_json(&state, &page)))
}

pub(crate) fn network_json(state: &AppState) -> Value {
    let net = state.client.network();
    let status = net.status();
    json!({
        "online": status.online,
        "reason": status.reason,
        "since": unix_ms(status.since),
        "consecutive_errors": net.consecutive_errors(),
    })
}

/// Whether the upstream is reachable.
#[utoipa::path(get, path = "/v1/network", tag = "operations",
    responses((status = 200, description = "The network state", body = super::openapi::Network),
        (status = 421, description = "A Host not in allowed_hosts", body = super::openapi::ErrorBody)))]
pub(crate) async fn network(State(state): State<AppState>) -> axum::Json<Value> {
    axum::Json(network_json(&state))
}

/// The node's part in a cluster (`[cluster]`), or `{"enabled": false}`.
pub(crate) fn cluster_json(state: &AppState) -> Value {
    match &state.cluster {
        None => json!({ "enabled": false }),
        Some(tier) => {
            let mut v = serde_json::to_value(tier.status()).unwrap_or_default();
            if let Value::Object(map) = &mut v {
                map.insert("enabled".into(), json!(true));
            }
            v
        }
    }
}

/// Whether this node cooperates with others through Redis, and how much.
#[utoipa::path(get, path = "/v1/cluster", tag = "operations",
    responses((status = 200, description = "The node's cluster state", body = super::openapi::Cluster),
        (status = 421, description = "A Host not in allowed_hosts", body = super::openapi::ErrorBody)))]
pub(crate) async fn cluster(State(state): State<AppState>) -> axum::Json<Value> {
    axum::Json(cluster_json(&state))
}

/// Gives the daemon's own metrics their `# HELP` text (the engine describes
/// its own). Called once, when the Prometheus recorder is installed.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "revalidate_upstream_requests_total",
        "Requests the daemon sent to the upstream: fetches and reachability probes."
    );
    metrics::describe_counter!(
        "revalidate_bytes_saved_total",
        "Body bytes the upstream did not send because it answered 304 Not Modified."
    );
    metrics::describe_gauge!(
        "revalidate_cluster_connected",
        "Whether this node cooperates through Redis (1) or runs alone (0); absent without [cluster]."
    );
    metrics::describe_counter!(
        "revalidate_cluster_round_trips_total",
        "Redis round trips made for fetches (acquire and publish)."
    );
    metrics::describe_counter!(
        "revalidate_cluster_refused_total",
        "Fetch results refused because a newer write won (a late writer)."
    );
    metrics::describe_counter!(
        "revalidate_cluster_events_applied_total",
        "Changes and invalidations from other nodes applied here."
    );
    metrics::describe_counter!(
        "revalidate_cluster_skipped_total",
        "Refreshes left to another node that held the key's lease."
    );
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 421, description = "A Host not in allowed_hosts", body = super::openapi::ErrorBody),
        (status = 503, description = "No metrics recorder", body = super::openapi::ErrorBody)))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let Some(handle) = &state.metrics else {
        return Err(ApiError::MetricsUnavailable);
    };
    state.client.publish_metrics();
    let saved = state
        .upstream
        .bytes_saved
        .load(std::sync::atomic::Ordering::Relaxed);
    metrics::counter!("revalidate_bytes_saved_total").absolute(saved);
    let requests = state
        .upstream
        .requests
        .load(std::sync::atomic::Ordering::Relaxed);
    metrics::counter!("revalidate_upstream_requests_total").absolute(requests);
    if let Some(tier) = &state.cluster {
        let s = tier.status();
        metrics::gauge!("revalidate_cluster_connected").set(if s.connected { 1.0 } else { 0.0 });
        metrics::counter!("revalidate_cluster_round_trips_total").absolute(s.round_trips);
        metrics::counter!("revalidate_cluster_refused_total").absolute(s.refused);
        metrics::counter!("revalidate_cluster_events_applied_total").absolute(s.events_applied);
        metrics::counter!("revalidate_cluster_skipped_total").absolute(s.skipped);
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response())
}
