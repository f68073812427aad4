//! The simulated API's HTTP side: the routes, the middleware that counts,
//! delays and fails requests, and the answers (`200` with an `ETag`, `304`
//! for a matching `If-None-Match`, JSON errors).

use std::hash::{DefaultHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use headers::{ETag, HeaderMapExt, IfNoneMatch};
use serde_json::{Value, json};
use tokio::time::Instant;
use tower_http::cors::{Any, CorsLayer};
use tracing::{debug, error};

use crate::DemoConfig;
use crate::data::{Action, Clock, Params, render};
use crate::error::ApiError;
use crate::random::{Rng, mix};

/// Share of injected failures that are `503` with `Retry-After` rather than
/// `500`, so that the daemon's `Retry-After` handling runs too.
const UNAVAILABLE_SHARE: f64 = 0.2;

/// State shared by the request handlers and the handle.
#[derive(Debug)]
pub(crate) struct Shared {
    /// [`DemoConfig::seed`].
    pub(crate) seed: u64,
    /// [`DemoConfig::failure_rate`], clamped to `0..=1`.
    pub(crate) failure_rate: f64,
    /// [`DemoConfig::latency`], as `(min, max)`.
    pub(crate) latency: (Duration, Duration),
    /// Time buckets count from here, on tokio's clock.
    pub(crate) started: Instant,
    /// Wall-clock milliseconds at `started`; only used to make timestamps in
    /// the data look current.
    pub(crate) anchor_ms: i64,
    /// Requests received so far; also the sequence number of the next one.
    pub(crate) calls: AtomicU64,
    /// Set while the port is closed for an outage.
    pub(crate) in_outage: AtomicBool,
}

impl Shared {
    /// Normalises the configuration: failure rate clamped, latency ordered.
    pub(crate) fn new(config: &DemoConfig) -> Self {
        let failure_rate = if config.failure_rate.is_nan() {
            0.0
        } else {
            config.failure_rate.clamp(0.0, 1.0)
        };
        let (a, b) = config.latency;
        // A clock before 1970 is a broken host, not a reason to refuse the demo.
        let anchor_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Self {
            seed: config.seed,
            failure_rate,
            latency: (a.min(b), a.max(b)),
            started: Instant::now(),
            anchor_ms,
            calls: AtomicU64::new(0),
            in_outage: AtomicBool::new(false),
        }
    }

    /// The clock reading that the data of a request depends on.
    pub(crate) fn clock(&self) -> Clock {
        let elapsed = Instant::now().saturating_duration_since(self.started);
        Clock {
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            anchor_ms: self.anchor_ms,
        }
    }

    /// A latency drawn uniformly from the configured range.
    pub(crate) fn latency_sample(&self, rng: &mut Rng) -> Duration {
        let (min, max) = self.latency;
        let spread = max - min;
        min + spread.mul_f64(rng.unit())
    }

    /// The failure injected into this request, if any. One draw decides both
    /// whether and how, so the total share stays exactly `failure_rate`.
    pub(crate) fn roll_failure(&self, rng: &mut Rng) -> Option<ApiError> {
        let draw = rng.unit();
        if draw >= self.failure_rate {
            return None;
        }
        Some(if draw < self.failure_rate * UNAVAILABLE_SHARE {
            ApiError::unavailable()
        } else {
            ApiError::internal("simulated failure (demo failure_rate)")
        })
    }
}

/// The routes, behind the middleware that counts, delays and fails requests,
/// all behind CORS.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/actions/{action}", get(get_action).post(post_action))
        .fallback(unknown_path)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            simulate,
        ))
        .layer(cors())
        .with_state(shared)
}

/// Any page may read the simulated API (the browser example is served from
/// another origin). Preflights are answered here, outside the simulation:
/// they are neither counted, delayed nor failed. Errors carry the headers
/// too, so that a page sees a `503` as a `503`, not as a network error.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
        .allow_headers([header::CONTENT_TYPE, header::IF_NONE_MATCH])
        .expose_headers([header::ETAG, header::RETRY_AFTER])
        .max_age(Duration::from_secs(600))
}

/// Counts the request, waits its latency and, for actions, maybe fails it.
async fn simulate(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let sequence = shared.calls.fetch_add(1, Ordering::Relaxed);
    // One stream per request, keyed by its sequence number, keeps a run
    // reproducible for a given seed whatever the concurrency.
    let mut rng = Rng::new(mix(shared.seed, sequence));
    let delay = shared.latency_sample(&mut rng);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if request.uri().path().starts_with("/actions/")
        && let Some(failure) = shared.roll_failure(&mut rng)
    {
        debug!(path = request.uri().path(), status = %failure.status, "demo upstream: injected failure");
        return failure.into_response();
    }
    next.run(request).await
}

/// `GET /health`: answered whenever the port is open.
async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Any other path: `404` in JSON, like every other error of this API.
async fn unknown_path(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        json!({"error": "not_found", "path": request.uri().path()}),
    )
}

/// `POST /actions/{action}`: parameters from the JSON body.
async fn post_action(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = Action::parse(&name)
        .ok_or_else(|| ApiError::unknown_action(&name))
        .and_then(|action| {
            let params = Params::from_body(&body)?;
            render(action, &params, shared.seed, &shared.clock())
        });
    respond(&name, result, &headers)
}

/// `GET /actions/{action}`: parameters from the query string.
async fn get_action(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let result = Action::parse(&name)
        .ok_or_else(|| ApiError::unknown_action(&name))
        .and_then(|action| {
            let Query(pairs) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
            let params = Params::from_query(pairs);
            render(action, &params, shared.seed, &shared.clock())
        });
    respond(&name, result, &headers)
}

/// Turns a rendered document into `200` with an `ETag`, or `304` when the
/// client already has it.
fn respond(action: &str, result: Result<Value, ApiError>, headers: &HeaderMap) -> Response {
    let value = match result {
        Ok(value) => value,
        Err(err) => {
            debug!(action, status = %err.status, "demo upstream: request refused");
            return err.into_response();
        }
    };
    let body = match serde_json::to_vec(&value) {
        Ok(body) => body,
        Err(err) => {
            error!(action, error = %err, "demo upstream: cannot serialize a document");
            return ApiError::internal("cannot serialize the document").into_response();
        }
    };
    let tag = entity_tag(&body);
    let (Ok(etag), Ok(etag_value)) = (tag.parse::<ETag>(), HeaderValue::from_str(&tag)) else {
        error!(action, tag, "demo upstream: invalid ETag");
        return ApiError::internal("invalid ETag").into_response();
    };
    if is_not_modified(headers, &etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response();
    }
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, etag_value),
            // The ETag is the contract; caches in between must revalidate.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from(body),
    )
        .into_response()
}

/// A strong validator of a body: the quoted hex of its 64-bit SipHash.
///
/// Only this process ever compares the simulated API's tags (the demo's
/// store lives and dies with it), so std's hasher, stable within a build,
/// serves; the daemon derives its own tags of its own bodies.
fn entity_tag(body: &[u8]) -> String {
    let mut hasher = DefaultHasher::new();
    hasher.write(body);
    format!("\"{:016x}\"", hasher.finish())
}

/// Whether the request's `If-None-Match` matches `etag` by the weak
/// comparison of RFC 9110 §13.1.2 (so a `W/` tag from an intermediary
/// matches too; `*` matches any current body). Unreadable headers match
/// nothing.
fn is_not_modified(request: &HeaderMap, etag: &ETag) -> bool {
    request
        .typed_get::<IfNoneMatch>()
        .is_some_and(|condition| !condition.precondition_passes(etag))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{ANY_PORT, get, post, quiet};
    use crate::{DEMO_ACTIONS, DemoConfig, DemoUpstream};

    #[tokio::test]
    async fn known_action_answers_json_with_an_etag() {
        let up = DemoUpstream::start(ANY_PORT, quiet(1)).await.expect("bind");
        let reply = post(
            up.addr(),
            "process.list",
            r#"{"status":"active","page":"2","page_size":5}"#,
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let etag = reply.etag();
        assert_eq!(
            etag,
            entity_tag(&reply.body),
            "the ETag is the hash of the body"
        );
        assert!(etag.len() == 18 && etag.starts_with('"') && etag.ends_with('"'));
        let body = reply.json();
        assert_eq!(body["page"], 2);
        let items = body["items"].as_array().expect("items");
        assert!(!items.is_empty() && items.len() <= 5);
        assert!(items.iter().all(|p| p["status"] == "active"));
        assert_eq!(
            up.base_url(),
            format!("http://127.0.0.1:{}", up.addr().port())
        );
        up.shutdown().await;
    }

    #[tokio::test]
    async fn if_none_match_answers_304_without_a_body() {
        let up = DemoUpstream::start(ANY_PORT, quiet(2)).await.expect("bind");
        let path = "/actions/office.list?region=EMEA";
        let first = get(up.addr(), path, &[]).await;
        assert_eq!(first.status, 200);
        let etag = first.etag();
        let weak = format!("W/{etag}");
        let listed = format!("\"0000000000000000\", {etag}");
        for validator in [etag.as_str(), weak.as_str(), listed.as_str()] {
            let again = get(up.addr(), path, &[("If-None-Match", validator)]).await;
            assert_eq!(again.status, 304, "If-None-Match: {validator}");
            assert!(again.body.is_empty());
            assert_eq!(again.etag(), etag);
        }
        let other = get(
            up.addr(),
            path,
            &[("If-None-Match", "\"0000000000000000\"")],
        )
        .await;
        assert_eq!(other.status, 200);
        up.shutdown().await;
    }

    #[tokio::test]
    async fn unknown_actions_and_paths_answer_404_json() {
        let up = DemoUpstream::start(ANY_PORT, quiet(3)).await.expect("bind");
        let reply = post(up.addr(), "process.delete", "{}").await;
        assert_eq!(reply.status, 404);
        let body = reply.json();
        assert_eq!(body["error"], "unknown_action");
        assert_eq!(body["action"], "process.delete");
        assert_eq!(body["known"], json!(DEMO_ACTIONS));
        let reply = get(up.addr(), "/nothing/here", &[]).await;
        assert_eq!(reply.status, 404);
        assert_eq!(reply.json()["error"], "not_found");
        up.shutdown().await;
    }

    #[tokio::test]
    async fn bad_bodies_and_params_answer_4xx_json() {
        let up = DemoUpstream::start(ANY_PORT, quiet(4)).await.expect("bind");
        let addr = up.addr();
        for (action, body, status, error) in [
            ("process.list", r#"{"status":"#, 400, "bad_request"),
            ("process.list", "[1,2]", 400, "bad_request"),
            ("process.list", r#"{"page":"two"}"#, 400, "invalid_param"),
            ("process.get", "{}", 400, "missing_param"),
            ("rule.search", "", 400, "missing_param"),
            ("process.get", r#"{"id":"PRC-9999"}"#, 404, "not_found"),
        ] {
            let reply = post(addr, action, body).await;
            assert_eq!(reply.status, status, "{action} {body}");
            assert_eq!(reply.json()["error"], error, "{action} {body}");
        }
        // An empty body is no parameters, not an error.
        assert_eq!(post(addr, "process.list", "").await.status, 200);
        assert_eq!(post(addr, "settings.get", "null").await.status, 200);
        up.shutdown().await;
    }

    #[tokio::test]
    async fn get_query_and_post_body_give_the_same_document() {
        let up = DemoUpstream::start(ANY_PORT, quiet(5)).await.expect("bind");
        let addr = up.addr();
        let by_get = get(
            addr,
            "/actions/process.list?status=active&page=1&q=approval",
            &[],
        )
        .await;
        let by_post = post(
            addr,
            "process.list",
            r#"{"q":"approval","page":1,"status":"active"}"#,
        )
        .await;
        assert_eq!(by_get.status, 200);
        assert_eq!(by_get.etag(), by_post.etag());
        // A repeated name is a list of values.
        let both = get(
            addr,
            "/actions/process.list?status=active&status=draft&page_size=100",
            &[],
        )
        .await;
        let statuses: Vec<Value> = both.json()["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|p| p["status"].clone())
            .collect();
        assert!(statuses.contains(&json!("active")) && statuses.contains(&json!("draft")));
        assert!(statuses.iter().all(|s| s == "active" || s == "draft"));
        up.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn data_changes_at_each_resource_rate() {
        let up = DemoUpstream::start(ANY_PORT, quiet(6)).await.expect("bind");
        let addr = up.addr();
        let tags = async || {
            let mut tags = Vec::new();
            for action in [
                "system_health",
                "node.tree",
                "process.list",
                "notification.list",
            ] {
                let reply = post(addr, action, "{}").await;
                assert_eq!(reply.status, 200, "{action}");
                tags.push(reply.etag());
            }
            tags
        };
        let start = tags().await;
        assert_eq!(start, tags().await, "same bucket, same documents");
        tokio::time::advance(Duration::from_secs(5)).await;
        let seconds_later = tags().await;
        assert_ne!(
            seconds_later[0], start[0],
            "system_health changes within seconds"
        );
        assert_eq!(seconds_later[1], start[1], "node.tree never changes");
        tokio::time::advance(Duration::from_secs(3600)).await;
        let hour_later = tags().await;
        assert_eq!(hour_later[1], start[1], "node.tree never changes");
        assert_ne!(
            hour_later[2], start[2],
            "process.list changes within minutes"
        );
        assert_ne!(
            hour_later[3], start[3],
            "notification.list changes within a minute"
        );
        up.shutdown().await;
    }

    #[tokio::test]
    async fn failure_rate_one_fails_every_action_but_not_health() {
        let config = DemoConfig {
            failure_rate: 1.0,
            ..quiet(7)
        };
        let up = DemoUpstream::start(ANY_PORT, config).await.expect("bind");
        let (mut internal, mut unavailable) = (0, 0);
        for _ in 0..20 {
            let reply = post(up.addr(), "node.tree", "{}").await;
            match reply.status {
                500 => internal += 1,
                503 => {
                    unavailable += 1;
                    assert_eq!(reply.header("retry-after"), Some("5"));
                }
                other => panic!("expected a server error, got {other}"),
            }
            assert!(reply.json()["error"].is_string());
        }
        assert!(
            internal > unavailable && unavailable > 0,
            "{internal} × 500, {unavailable} × 503"
        );
        let health = get(up.addr(), "/health", &[]).await;
        assert_eq!(health.status, 200);
        assert_eq!(health.json(), json!({"status": "ok"}));
        assert_eq!(up.calls(), 21);
        up.shutdown().await;
    }

    #[test]
    fn injected_failures_keep_to_the_configured_rate() {
        let shared = Shared::new(&DemoConfig {
            failure_rate: 0.03,
            ..quiet(12)
        });
        let runs = 200_000;
        let (mut internal, mut unavailable) = (0_u32, 0_u32);
        for n in 0..runs {
            let mut rng = Rng::new(mix(12, n));
            match shared.roll_failure(&mut rng).map(|e| e.status.as_u16()) {
                Some(500) => internal += 1,
                Some(503) => unavailable += 1,
                Some(other) => panic!("unexpected status {other}"),
                None => {}
            }
        }
        let rate = f64::from(internal + unavailable) / runs as f64;
        assert!((0.027..0.033).contains(&rate), "failure rate {rate}");
        let share = f64::from(unavailable) / f64::from(internal + unavailable);
        assert!((0.15..0.25).contains(&share), "503 share {share}");
    }

    #[test]
    fn latency_stays_in_the_configured_range() {
        let shared = Shared::new(&DemoConfig {
            // Given backwards on purpose: the range is normalised.
            latency: (Duration::from_millis(120), Duration::from_millis(20)),
            ..quiet(13)
        });
        let mut rng = Rng::new(13);
        let samples: Vec<Duration> = (0..10_000)
            .map(|_| shared.latency_sample(&mut rng))
            .collect();
        assert!(
            samples
                .iter()
                .all(|d| (Duration::from_millis(20)..=Duration::from_millis(120)).contains(d))
        );
        let mean = samples.iter().sum::<Duration>() / 10_000;
        assert!(
            (Duration::from_millis(65)..Duration::from_millis(75)).contains(&mean),
            "{mean:?}"
        );
    }

    #[tokio::test]
    async fn any_page_may_read_it_cors() {
        let up = DemoUpstream::start(ANY_PORT, quiet(14))
            .await
            .expect("bind");
        let origin = [("Origin", "http://127.0.0.1:9")];
        let preflight = crate::testing::send(
            up.addr(),
            "OPTIONS",
            "/actions/process.list",
            &[
                origin[0],
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "content-type"),
            ],
            None,
        )
        .await
        .expect("a reply");
        assert_eq!(preflight.status, 200);
        assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));
        let methods = preflight
            .header("access-control-allow-methods")
            .unwrap_or_default();
        assert!(
            methods.contains("POST") && methods.contains("GET"),
            "{methods}"
        );
        let allowed = preflight
            .header("access-control-allow-headers")
            .unwrap_or_default();
        assert!(allowed.contains("content-type"), "{allowed}");
        assert_eq!(up.calls(), 0, "a preflight is not a call to the API");

        let reply = get(up.addr(), "/actions/office.list", &origin).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
        let exposed = reply
            .header("access-control-expose-headers")
            .unwrap_or_default();
        assert!(exposed.contains("etag"), "{exposed}");
        let missing = get(up.addr(), "/nothing", &origin).await;
        assert_eq!(missing.status, 404);
        assert_eq!(
            missing.header("access-control-allow-origin"),
            Some("*"),
            "errors too"
        );
        up.shutdown().await;
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let etag: ETag = "\"00ff\"".parse().unwrap();
        let matches = |values: &[&str]| {
            let mut request = HeaderMap::new();
            for v in values {
                request.append(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
            }
            is_not_modified(&request, &etag)
        };
        assert!(matches(&["\"00ff\""]));
        assert!(matches(&["W/\"00ff\""]));
        assert!(matches(&["\"aa\", \"00ff\""]));
        assert!(matches(&["\"aa\"", "W/\"00ff\""]), "several header lines");
        assert!(matches(&["*"]));
        assert!(!matches(&["\"00fe\""]));
        assert!(!matches(&["00ff"]), "not a tag");
        assert!(!matches(&[]), "no header");
    }
}
