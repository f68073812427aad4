//! The OpenAPI 3.1 description of the HTTP API, generated from the
//! handlers' `#[utoipa::path]` attributes and the schemas below, served at
//! `GET /v1/openapi.json`. The schemas describe the JSON the handlers
//! build; `scripts/test openapi` checks the two agree (schemathesis).

use axum::Json;
use axum::extract::State;
use serde_json::Value;
use utoipa::{OpenApi, ToSchema};

use super::AppState;

/// Every error answer (`docs/http-api.md`, "Errors"): a stable code, a
/// message for people, and the fields of some codes.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // a description of what ApiError::body builds
pub(crate) struct ErrorBody {
    /// The stable code to branch on.
    #[schema(example = "unknown_action")]
    error: ErrorCode,
    /// For people; may change.
    message: String,
    /// `unknown_action`: the action asked for.
    #[schema(required = false)]
    action: Option<String>,
    /// `unknown_action`: the configured actions, sorted.
    #[schema(required = false)]
    known: Option<Vec<String>>,
    /// `not_found`: the path.
    #[schema(required = false)]
    path: Option<String>,
    /// `query_too_long`: the query string's length in bytes.
    #[schema(required = false)]
    length: Option<u64>,
    /// `query_too_long` (bytes), `too_many_subscribers` (streams).
    #[schema(required = false)]
    limit: Option<u64>,
    /// `upstream_failed`, `offline`: what kind of failure.
    #[schema(required = false)]
    kind: Option<FailureKind>,
    /// `upstream_failed`: the upstream's HTTP status, `null` if it gave none.
    #[schema(required = false)]
    status: Option<u16>,
}

/// The `error` codes.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum ErrorCode {
    BadRequest,
    Unauthorized,
    AdminDisabled,
    UnknownAction,
    NotFound,
    MethodNotAllowed,
    BodyTooLarge,
    QueryTooLong,
    MisdirectedRequest,
    UpstreamFailed,
    Offline,
    MetricsUnavailable,
    TooManySubscribers,
}

/// What kind of upstream failure.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum FailureKind {
    Network,
    Timeout,
    Rejected,
    Failed,
    BadData,
    Offline,
}

/// The answer of `POST /v1/invalidate`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct Invalidated {
    /// How many queries were marked stale.
    invalidated: u64,
}

/// `GET /v1/network`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct Network {
    online: bool,
    /// `errors` or `probe` while offline.
    reason: Option<String>,
    /// Since when (Unix ms).
    since: u64,
    consecutive_errors: u64,
}

/// `GET /v1/cluster`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct Cluster {
    /// Whether `[cluster]` is configured; the other fields are there only then.
    enabled: bool,
    node_id: Option<String>,
    /// host:port/db of Redis (never the password).
    redis: Option<String>,
    /// Whether the node cooperates through Redis right now.
    connected: Option<bool>,
    /// When `connected` last changed (Unix ms).
    since: Option<u64>,
    last_error: Option<String>,
    round_trips: Option<u64>,
    leases: Option<u64>,
    adopted: Option<u64>,
    skipped: Option<u64>,
    refused: Option<u64>,
    events_applied: Option<u64>,
    reconciliations: Option<u64>,
    alone: Option<u64>,
}

/// `GET /v1/queries`: one page of the queries, in key order.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct QueriesPage {
    /// At most `limit` queries.
    queries: Vec<Query>,
    /// How many queries are cached.
    total: u64,
    /// The `after` of the next page; `null` on the last page.
    next: Option<String>,
}

/// One query of `GET /v1/queries`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct Query {
    key: String,
    action: String,
    /// The parameters: an object, or `null` for none.
    #[schema(value_type = Object, nullable)]
    params: Value,
    resource: String,
    staleness: String,
    /// `null` for `never`, `0` for `always`.
    staleness_ms: Option<u64>,
    age_ms: Option<u64>,
    updated_at: Option<u64>,
    status: QueryStatus,
    #[schema(value_type = String)]
    fetch_status: Value,
    error_count: u64,
    last_error: Option<String>,
    last_error_at: Option<u64>,
    observers: u64,
    active: bool,
    version: u64,
    next_check: Option<u64>,
    /// The cached body's size.
    bytes: Option<u64>,
}

/// A query's status.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum QueryStatus {
    Fresh,
    Stale,
    Fetching,
    Paused,
    Error,
    Empty,
}

/// `GET /v1/stats`: the engine's counters (`docs/http-api.md`), and the
/// daemon's.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct Stats {
    cached_queries: u64,
    active_queries: u64,
    in_flight: u64,
    max_concurrent_refreshes: u64,
    upstream_requests: u64,
    bytes_saved: u64,
    live: LiveStats,
    /// The store's write-behind; `null` without `[store]`.
    store: Option<StoreStats>,
    #[schema(value_type = Object)]
    cache: Value,
    #[schema(value_type = Object)]
    resources: Value,
}

/// The `/v1/live` streams.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct LiveStats {
    subscribers: u64,
    ticks_built: u64,
    /// How long the latest tick took to build (µs).
    last_build_us: u64,
}

/// The store's write-behind.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct StoreStats {
    /// Flushes that committed something (one transaction each).
    flushes: u64,
    /// Entries written.
    written: u64,
    /// Flushes that failed (their entries are retried at the next one).
    failed_flushes: u64,
    /// Queries changed since the last flush took them.
    pending: u64,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "revalidate daemon",
        description = "Cache-first reads in front of an HTTP API, change events, operations. See docs/http-api.md."
    ),
    paths(
        super::resources::read,
        super::resources::read_typed,
        super::live::events,
        super::live::ticks,
        super::admin::invalidate,
        super::admin::stats,
        super::admin::queries,
        super::admin::network,
        super::admin::cluster,
        super::admin::metrics,
        super::admin::healthz,
        super::admin::dashboard,
        openapi_json,
    ),
    components(schemas(ErrorBody, super::admin::InvalidateRequest, Invalidated, Network, Cluster, QueriesPage, Query, Stats)),
    modifiers(&BearerAuth)
)]
pub(crate) struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The description, with the configured actions as the values of
/// `/v1/resources/{action}`'s `action`.
pub(crate) fn document(actions: &[&str]) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    if let Some(params) = doc
        .pointer_mut("/paths/~1v1~1resources~1{action}/get/parameters")
        .and_then(Value::as_array_mut)
    {
        for p in params {
            if p["name"] == "action" {
                p["schema"]["enum"] = actions.iter().map(|a| Value::from(*a)).collect();
            }
        }
    }
    doc
}

/// The OpenAPI description of this API.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json")))]
pub(crate) async fn openapi_json(State(state): State<AppState>) -> Json<Value> {
    Json(state.openapi.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_is_openapi_3_1_with_every_route() {
        let doc = document(&["a.get", "b.list"]);
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        let paths: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for p in [
            "/",
            "/healthz",
            "/metrics",
            "/v1/resources/{action}",
            "/v1/events",
            "/v1/live",
            "/v1/invalidate",
            "/v1/stats",
            "/v1/queries",
            "/v1/network",
            "/v1/openapi.json",
        ] {
            assert!(paths.contains(&p), "{p} in {paths:?}");
        }
        let action = &doc["paths"]["/v1/resources/{action}"]["get"]["parameters"][0];
        assert_eq!(
            action["schema"]["enum"],
            serde_json::json!(["a.get", "b.list"])
        );
    }
}
