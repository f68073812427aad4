//! `GET /v1/resources/{action}?k=v…`: the cache-first read.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use headers::{ETag, Header, HeaderMapExt, IfNoneMatch};
use revalidate::{Freshness, Hit};
use serde_json::{Map, Value};

use super::AppState;
use super::access::Reader;
use super::error::ApiError;
use crate::upstream::Payload;

/// Parameters from a query string: `?a=1&b=x&b=y` → `{"a":"1","b":["x","y"]}`.
/// Values stay strings: the daemon forwards them, it does not guess types.
///
/// # Errors
///
/// A name or value whose percent-encoding is not UTF-8 (`%FF`): decoded
/// lossily, distinct queries would share one key.
pub(crate) fn params_of(query: &str) -> Result<Value, ApiError> {
    let mut map = Map::new();
    for (k, v) in form_pairs(query)? {
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
    Ok(if map.is_empty() {
        Value::Null
    } else {
        Value::Object(map)
    })
}

/// The `name=value` pairs of a query string (`application/x-www-form-urlencoded`:
/// `+` is a space, `%XX` a byte), refusing any that do not decode to UTF-8.
pub(crate) fn form_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |part: &str| String::from_utf8(percent_decode(part));
        let name = decode(name).map_err(|e| {
            ApiError::bad_request(format!(
                "the query parameter name `{}` is not UTF-8 once percent-decoded",
                String::from_utf8_lossy(e.as_bytes())
            ))
        })?;
        let value = decode(value).map_err(|_| {
            ApiError::bad_request(format!(
                "the value of the query parameter `{name}` is not UTF-8 once percent-decoded"
            ))
        })?;
        out.push((name, value));
    }
    Ok(out)
}

/// Decodes `+` and `%XX` (a `%` not followed by two hex digits stays as it
/// is, as browsers and `form_urlencoded` do).
fn percent_decode(part: &str) -> Vec<u8> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let hex = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Cache-first read of one query: the query string becomes its parameters.
#[utoipa::path(get, path = "/v1/resources/{action}", tag = "reads",
    params(
        ("action" = String, Path, description = "A configured action"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer"),
    ),
    responses(
        (status = 200, description = "The upstream's JSON body, byte for byte", content_type = "application/json", body = Object,
            headers(("Age" = u64), ("Cache-Status" = String), ("ETag" = String), ("X-Revalidate-Version" = u64))),
        (status = 304, description = "`If-None-Match` matches the ETag"),
        (status = 400, description = "A query string that is not UTF-8", body = super::openapi::ErrorBody),
        (status = 401, description = "No read token (`read_token_required`), or a per-user action without an identity (`identity_required`)", body = super::openapi::ErrorBody),
        (status = 404, description = "Not a configured action", body = super::openapi::ErrorBody),
        (status = 414, description = "The query string is too long", body = super::openapi::ErrorBody),
        (status = 421, description = "A Host not in allowed_hosts", body = super::openapi::ErrorBody),
        (status = 502, description = "Nothing cached and the upstream failed", body = super::openapi::ErrorBody),
        (status = 503, description = "Nothing cached and the upstream is offline", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn read(
    State(state): State<AppState>,
    reader: Reader,
    action: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    Conditional(condition): Conditional,
) -> Result<Response, ApiError> {
    let Path(action) = action?;
    let query = query.unwrap_or_default();
    // The common read, a shared action without parameters: its key was
    // built once at start (no key text, no hashing per hit), and its answer
    // is nobody's own, so there is nothing to seal.
    if query.is_empty()
        && let Some(key) = state.upstream.bare_key(&action)
    {
        return match state.client.get_with_meta(key).await {
            Ok(hit) => Ok(answer(&hit, condition.as_ref())),
            Err(e) => Err(ApiError::upstream(key.clone(), e)),
        };
    }
    if !state.upstream.knows(&action) {
        return Err(ApiError::unknown_action(&state.upstream, action));
    }
    if query.len() > state.max_query_bytes {
        return Err(ApiError::QueryTooLong {
            length: query.len(),
            limit: state.max_query_bytes,
        });
    }
    let key = reader.key(&state, &action, params_of(&query)?)?;
    match state.client.get_with_meta(&key).await {
        Ok(hit) => Ok(super::access::seal(
            &state,
            &action,
            answer(&hit, condition.as_ref()),
        )),
        Err(e) => Err(ApiError::upstream(key, e)),
    }
}

/// The hit of a plain read — `GET /v1/resources/{action}` of a shared action,
/// no query string, no percent-encoding, an allowed `Host`, the read token
/// if one is required — answered without axum's router (its per-request
/// boxed services, extensions and path parameters cost more than the read
/// itself). `None` for anything else, a miss included: the router's
/// [`read`] then answers it, with every check and error it always had.
pub(crate) fn fast_read<B>(
    state: &AppState,
    hosts: &super::AllowedHosts,
    request: &axum::http::Request<B>,
) -> Option<Response> {
    if request.method() != axum::http::Method::GET || request.uri().query().is_some() {
        return None;
    }
    let action = request.uri().path().strip_prefix("/v1/resources/")?;
    if action.contains(['/', '%']) {
        return None;
    }
    let key = state.upstream.bare_key(action)?;
    if !super::host::allowed(hosts, request) {
        return None;
    }
    if state.read_token.is_some() && super::access::read_token(state, request).is_err() {
        return None;
    }
    let hit = state.client.get_cached_hit(key)?;
    let condition = request.headers().typed_get::<IfNoneMatch>();
    Some(answer(&hit, condition.as_ref()))
}

/// A request's `If-None-Match`, parsed (`None`: absent, or not a valid
/// list). Reads take only this from the headers: taking the whole
/// `HeaderMap` would copy it for every request.
pub(crate) struct Conditional(pub(crate) Option<IfNoneMatch>);

impl<S: Send + Sync> FromRequestParts<S> for Conditional {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.headers.typed_get::<IfNoneMatch>()))
    }
}

/// Cache-first read of one query with typed parameters: the JSON body (any
/// JSON value; an empty body is no parameters) is the query's parameters,
/// the same key as the library's `QueryKey::new(action, params)`. `?page=2`
/// on a GET is the string `"2"`: another key than `{"page": 2}` here.
#[utoipa::path(post, path = "/v1/resources/{action}", tag = "reads",
    params(
        ("action" = String, Path, description = "A configured action"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer"),
    ),
    request_body(content = Object, description = "The parameters, any JSON value", content_type = "application/json"),
    responses(
        (status = 200, description = "The upstream's JSON body, byte for byte", content_type = "application/json", body = Object,
            headers(("Age" = u64), ("Cache-Status" = String), ("ETag" = String), ("X-Revalidate-Version" = u64))),
        (status = 304, description = "`If-None-Match` matches the ETag"),
        (status = 400, description = "A body that is not JSON (with the position of the error)", body = super::openapi::ErrorBody),
        (status = 401, description = "No read token (`read_token_required`), or a per-user action without an identity (`identity_required`)", body = super::openapi::ErrorBody),
        (status = 404, description = "Not a configured action", body = super::openapi::ErrorBody),
        (status = 413, description = "A body over max_body_bytes", body = super::openapi::ErrorBody),
        (status = 421, description = "A Host not in allowed_hosts", body = super::openapi::ErrorBody),
        (status = 502, description = "Nothing cached and the upstream failed", body = super::openapi::ErrorBody),
        (status = 503, description = "Nothing cached and the upstream is offline", body = super::openapi::ErrorBody),
    ))]
pub(crate) async fn read_typed(
    State(state): State<AppState>,
    reader: Reader,
    action: Result<Path<String>, PathRejection>,
    Conditional(condition): Conditional,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(action) = action?;
    if !state.upstream.knows(&action) {
        return Err(ApiError::unknown_action(&state.upstream, action));
    }
    let body = body?;
    let params = params_of_json(&body)?;
    let key = reader.key(&state, &action, params)?;
    match state.client.get_with_meta(&key).await {
        Ok(hit) => Ok(super::access::seal(
            &state,
            &action,
            answer(&hit, condition.as_ref()),
        )),
        Err(e) => Err(ApiError::upstream(key, e)),
    }
}

/// Parameters from a JSON body: any JSON value; empty (or only white
/// space) is no parameters.
///
/// # Errors
///
/// A body that is not JSON, with the line and column of the error.
pub(crate) fn params_of_json(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not JSON: {e} (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

/// `Cache-Status`, an RFC 9211 header `http` has no constant for.
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// The version of the value served.
const X_REVALIDATE_VERSION: HeaderName = HeaderName::from_static("x-revalidate-version");

/// `Age` values below this come from a table made once: a hit then clones
/// a shared header value instead of formatting and allocating a new one.
const AGES_PREPARED: u64 = 128;

fn age_value(seconds: u64) -> HeaderValue {
    static AGES: std::sync::LazyLock<Vec<HeaderValue>> =
        std::sync::LazyLock::new(|| (0..AGES_PREPARED).map(HeaderValue::from).collect());
    usize::try_from(seconds)
        .ok()
        .and_then(|i| AGES.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(seconds))
}

/// A cached value's answer: its body with the upstream's content type, or
/// `304` for a matching `If-None-Match`; with the cache headers either way.
/// Every header value is prepared (the payload's ETag, content type and
/// version; the table of ages): a hit formats nothing.
pub(crate) fn answer(hit: &Hit<Payload>, condition: Option<&IfNoneMatch>) -> Response {
    let status = match hit.freshness {
        Freshness::Fresh => "revalidate; hit",
        Freshness::Stale => "revalidate; hit; stale",
        _ => "revalidate; fwd=miss; stored",
    };
    let payload = &hit.value;
    let etag = payload.etag();
    let not_modified = condition.is_some_and(|c| is_not_modified(c, &etag));
    let (mut response, length) = if not_modified {
        let r = StatusCode::NOT_MODIFIED.into_response();
        (r, HeaderValue::from_static("0"))
    } else {
        let mut r = Response::new(Body::from(payload.body.clone()));
        let content_type = payload
            .content_type()
            .unwrap_or(HeaderValue::from_static("application/json"));
        r.headers_mut().insert(header::CONTENT_TYPE, content_type);
        (r, payload.content_length())
    };
    let h = response.headers_mut();
    h.insert(header::AGE, age_value(hit.age.as_secs()));
    h.insert(CACHE_STATUS, HeaderValue::from_static(status));
    h.insert(header::ETAG, etag);
    h.insert(X_REVALIDATE_VERSION, payload.version_value(hit.version));
    // What axum's router would add last, from the body's exact size; set
    // here, it is prepared, and the same on the fast path (see `fast_read`).
    h.insert(header::CONTENT_LENGTH, length);
    response
}

/// Whether `condition` (a request's `If-None-Match`) matches `etag` by the
/// weak comparison RFC 9110 (§13.1.2) requires: `W/"x"` matches our `"x"`,
/// any member of a list (or of several header lines) may match, `*` matches
/// any cached value. (A header that does not parse is no condition: see
/// [`Conditional`].)
fn is_not_modified(condition: &IfNoneMatch, etag: &HeaderValue) -> bool {
    ETag::decode(&mut std::iter::once(etag)).is_ok_and(|etag| !condition.precondition_passes(&etag))
}

#[cfg(test)]
mod tests {
    use revalidate::QueryKey;
    use serde_json::json;

    use super::*;

    #[test]
    fn query_strings_become_string_params() {
        let params_of = |q: &str| super::params_of(q).unwrap();
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
        assert_eq!(
            params_of("a=1+2&b=%E2%82%AC&c=100%&d=%zz&e"),
            json!({"a": "1 2", "b": "€", "c": "100%", "d": "%zz", "e": ""})
        );
    }

    #[test]
    fn percent_encoded_bytes_that_are_not_utf8_are_refused() {
        // Decoded lossily, `%FF` and `%FE` would both become U+FFFD: two
        // queries, one key.
        for (query, named) in [
            ("id=%FF", "`id`"),
            ("ok=1&x=%C3%28", "`x`"),
            ("%FF=1", "name"),
        ] {
            let e = params_of(query).unwrap_err();
            assert_eq!(e.code(), "bad_request");
            assert!(e.to_string().contains(named), "{query}: {e}");
        }
        // Agrees with form_urlencoded wherever that one is lossless.
        for q in ["a=b&c=d", "x=%20%2B+", "t=%E2%9C%93&t=2", "=v&k="] {
            let ours: Vec<(String, String)> = form_pairs(q).unwrap();
            let theirs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            assert_eq!(ours, theirs, "{q}");
        }
    }

    #[test]
    fn json_bodies_are_typed_params_and_errors_say_where() {
        assert_eq!(params_of_json(b"").unwrap(), Value::Null);
        assert_eq!(params_of_json(b" \n").unwrap(), Value::Null);
        assert_eq!(
            params_of_json(br#"{"page": 2, "f": {"s": [true, null]}}"#).unwrap(),
            json!({"page": 2, "f": {"s": [true, null]}})
        );
        assert_eq!(params_of_json(b"[1,2]").unwrap(), json!([1, 2]));
        let e = params_of_json(b"{\n  \"page\": 2,\n}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3, column 1"), "{e}");
        // A string 2 and a number 2 are different keys.
        assert_ne!(
            QueryKey::new("a", params_of("page=2").unwrap()),
            QueryKey::new("a", params_of_json(br#"{"page":2}"#).unwrap())
        );
    }

    #[test]
    fn if_none_match_uses_the_weak_comparison() {
        let ours = HeaderValue::from_static("\"00c0ffee\"");
        let matches = |lines: &[&str]| {
            let mut request = axum::http::HeaderMap::new();
            for line in lines {
                request.append(header::IF_NONE_MATCH, HeaderValue::from_str(line).unwrap());
            }
            // As `Conditional` reads it: a header that does not parse is none.
            request
                .typed_get::<IfNoneMatch>()
                .is_some_and(|c| is_not_modified(&c, &ours))
        };
        assert!(matches(&["\"00c0ffee\""]), "the same tag");
        assert!(matches(&["W/\"00c0ffee\""]), "a weak tag of it");
        assert!(matches(&["\"1\", W/\"00c0ffee\", \"2\""]), "in a list");
        assert!(
            matches(&["\"1\"", "\"00c0ffee\""]),
            "on another header line"
        );
        assert!(matches(&["*"]), "any value");
        assert!(!matches(&[]), "no header");
        assert!(!matches(&["\"00c0ffef\""]), "another tag");
        assert!(!matches(&["W/\"00C0FFEE\""]), "tags are case-sensitive");
        assert!(!matches(&["00c0ffee"]), "not a tag (no quotes)");
    }
}
