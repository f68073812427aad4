//! `GET /v1/resources/{action}?k=v…`: the cache-first read.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use revalidate::{Freshness, Hit, QueryKey};
use serde_json::{Map, Value};

use super::AppState;
use super::error::ApiError;
use crate::upstream::Payload;

/// Parameters from a query string: `?a=1&b=x&b=y` → `{"a":"1","b":["x","y"]}`.
/// Values stay strings: the daemon forwards them, it does not guess types.
pub(crate) fn params_of(query: &str) -> Value {
    let mut map = Map::new();
    for (k, v) in form_pairs(query) {
        match map.get_mut(&k) {
            None => {
                map.insert(k, Value::String(v));
            }
            Some(Value::Array(items)) => items.push(Value::String(v)),
            Some(first) => {
                let first = first.take();
                map.insert(k, Value::Array(vec![first, Value::String(v)]));
            }
        }
    }
    if map.is_empty() {
        Value::Null
    } else {
        Value::Object(map)
    }
}

fn form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned()))
}

pub(crate) async fn read(
    State(state): State<AppState>,
    action: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(action) = action?;
    if !state.upstream.knows(&action) {
        return Err(ApiError::unknown_action(&state.upstream, action));
    }
    let query = query.unwrap_or_default();
    if query.len() > state.max_query_bytes {
        return Err(ApiError::QueryTooLong {
            length: query.len(),
            limit: state.max_query_bytes,
        });
    }
    let key = QueryKey::new(&action, params_of(&query));
    match state.client.get_with_meta(&key).await {
        Ok(hit) => Ok(answer(&hit, &headers)),
        Err(e) => Err(ApiError::upstream(key, e)),
    }
}

fn answer(hit: &Hit<Payload>, request: &HeaderMap) -> Response {
    let status = match hit.freshness {
        Freshness::Fresh => "revalidate; hit",
        Freshness::Stale => "revalidate; hit; stale",
        _ => "revalidate; fwd=miss; stored",
    };
    let payload = &hit.value;
    let not_modified = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().as_bytes() == payload.etag.as_bytes() || t.trim() == "*")
        });
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Response::new(Body::from(payload.body.clone()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    let h = response.headers_mut();
    h.insert(header::AGE, HeaderValue::from(hit.age.as_secs()));
    h.insert("cache-status", HeaderValue::from_static(status));
    h.insert(header::ETAG, payload.etag.clone());
    h.insert("x-revalidate-version", HeaderValue::from(hit.version));
    response
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn query_strings_become_string_params() {
        assert_eq!(params_of(""), Value::Null);
        assert_eq!(
            params_of("status=active&page=2"),
            json!({"page": "2", "status": "active"})
        );
        assert_eq!(
            params_of("tag=a&tag=b&tag=c"),
            json!({"tag": ["a", "b", "c"]})
        );
        assert_eq!(
            params_of("q=hello%20world&x=%2F..%2F"),
            json!({"q": "hello world", "x": "/../"})
        );
    }
}
