//! Operations: invalidation (admin token), state as JSON, Prometheus
//! metrics, health, and the dashboard page.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use revalidate::{FetchStatus, QueryFilter, QueryKey, QueryState};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, error};
use crate::events::unix_ms;
use crate::upstream::Payload;

const DASHBOARD: &str = include_str!("../../assets/dashboard.html");

pub(crate) async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// The body of `POST /v1/invalidate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InvalidateRequest {
    action: Option<String>,
    params: Option<Value>,
    resource: Option<String>,
    #[serde(default)]
    all: bool,
}

/// Compares in time independent of where the first difference is.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Checks the bearer token; `Err` is the answer to send.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(token) = &state.admin_token else {
        let var = state
            .admin_token_env
            .as_deref()
            .unwrap_or("REVALIDATE_ADMIN_TOKEN");
        let how = match &state.admin_token_env {
            Some(_) => format!(
                "set the environment variable {var} to a secret token and restart the daemon"
            ),
            None => format!(
                "set [server] admin_token_env = \"{var}\" in the configuration, export {var}=<a secret token>, and restart"
            ),
        };
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            format!("admin endpoints are disabled: {how}"),
        )));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if same_token(given.trim(), token) => Ok(()),
        _ => Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        ))),
    }
}

pub(crate) async fn invalidate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(denied) = authorize(&state, &headers) {
        return *denied;
    }
    let request: InvalidateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "expected {{\"action\": …[, \"params\": {{…}}]}}, {{\"resource\": …}} or {{\"all\": true}}: {e}"
                ),
            );
        }
    };
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
                return (
                    StatusCode::NOT_FOUND,
                    axum::Json(json!({
                        "error": "unknown_action",
                        "message": format!("`{a}` is not a configured action"),
                        "known": state.upstream.actions(),
                    })),
                )
                    .into_response();
            }
            match params {
                Some(p) => QueryFilter::Key(QueryKey::new(&a, p)),
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
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give exactly one of: \"action\" (with optional \"params\"), \"resource\", or \"all\": true",
            );
        }
    };
    let n = state.client.invalidate(filter);
    if let Some(refresh) = &state.refresh {
        // Active queries should not wait for the next deadline to be seen.
        refresh.check_now();
    }
    axum::Json(json!({ "invalidated": n })).into_response()
}

pub(crate) fn stats_json(state: &AppState) -> Value {
    let stats = state.client.stats();
    let mut v = serde_json::to_value(&stats).unwrap_or_default();
    if let Value::Object(map) = &mut v {
        map.insert("in_flight".into(), json!(state.client.fetches_in_flight()));
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

pub(crate) fn queries_json(state: &AppState) -> Value {
    let queries: Vec<Value> = state
        .client
        .queries()
        .iter()
        .map(|q| {
            json!({
                "key": q.key.to_string(),
                "action": q.key.action(),
                "params": q.key.params(),
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
        })
        .collect();
    Value::Array(queries)
}

pub(crate) async fn queries(State(state): State<AppState>) -> axum::Json<Value> {
    axum::Json(queries_json(&state))
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

pub(crate) async fn network(State(state): State<AppState>) -> axum::Json<Value> {
    axum::Json(network_json(&state))
}

pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let Some(handle) = &state.metrics else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "no metrics recorder is installed",
        );
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
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("secret", "secret"));
        assert!(!same_token("secret", "secreT"));
        assert!(!same_token("secret", "secret2"));
        assert!(!same_token("", "x"));
    }
}
