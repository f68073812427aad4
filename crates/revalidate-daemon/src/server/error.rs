//! The daemon's error answers: one type that every handler returns, one JSON
//! shape (`docs/http-api.md`, "Errors"):
//!
//! ```json
//! {"error": "<code>", "message": "<for people>", …fields of the kind}
//! ```
//!
//! A caller learns what kind of thing went wrong, never the daemon's or the
//! upstream's internals: an upstream failure says its kind and the
//! upstream's status code, and the upstream's own words (its error body, a
//! connection error's text) go to the log.

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use revalidate::{FetchError, FetchErrorKind, QueryKey};
use serde_json::{Map, Value, json};

use crate::upstream::Upstream;

/// Why a request was not answered with what it asked for.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// `404`: the action is not in the configuration.
    #[error("`{action}` is not a configured action")]
    UnknownAction { action: String, known: Vec<String> },
    /// `404`: no route has this path.
    #[error("no route for {path}")]
    NotFound { path: String },
    /// `405`: the path exists, not with this method.
    #[error("{method} is not allowed here")]
    MethodNotAllowed { method: String },
    /// `400`: the request cannot be read; the message says what is expected.
    #[error("{message}")]
    BadRequest { message: String },
    /// `414`: the query string is longer than `[server] max_query_bytes`.
    #[error("the query string is {length} bytes; at most {limit} are accepted")]
    QueryTooLong { length: usize, limit: usize },
    /// `413`: the body is larger than `[server] max_body_bytes`.
    #[error("the request body is larger than the daemon accepts ([server] max_body_bytes)")]
    BodyTooLarge,
    /// `401`: no bearer token, or the wrong one.
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// `401`: reads need `[server] read_token_env`'s token.
    #[error(
        "this daemon's reads need its read token: send it as X-Revalidate-Token (or ?token= on /v1/events)"
    )]
    ReadTokenRequired,
    /// `401`: a per-user action, and the request carries no identity.
    #[error("`{action}` is per-user data: send your credential ({header})")]
    IdentityRequired { action: String, header: String },
    /// `403`: no admin token is configured; `env` is the variable that
    /// would hold it, when the configuration names one.
    #[error("admin endpoints are disabled: {}", enable_admin(.env.as_deref()))]
    AdminDisabled { env: Option<String> },
    /// `503`: no metrics recorder could be installed.
    #[error("no metrics recorder is installed")]
    MetricsUnavailable,
    /// `502`: nothing is cached for the query and the upstream failed.
    #[error("{}", upstream_message(.error))]
    UpstreamFailed { key: QueryKey, error: FetchError },
    /// `503`: nothing is cached for the query and the upstream is offline,
    /// so it was not asked.
    #[error("nothing is cached for this query and the upstream is offline")]
    Offline { key: QueryKey },
    /// `503`: `/v1/live` has `[server] max_live_subscribers` streams open.
    #[error(
        "{limit} live streams are open, the most this daemon serves ([server] max_live_subscribers); try again later"
    )]
    TooManySubscribers { limit: usize },
    /// `421`: the `Host` header is not in `[server] allowed_hosts` (a DNS
    /// rebinding attempt, or a name the operator has not listed).
    #[error("this daemon does not answer for the host {host:?}; add it to [server] allowed_hosts")]
    MisdirectedRequest { host: String },
}

/// How to turn the admin endpoints on.
fn enable_admin(env: Option<&str>) -> String {
    match env {
        Some(var) => {
            format!("set the environment variable {var} to a secret token and restart the daemon")
        }
        None => "set [server] admin_token_env = \"REVALIDATE_ADMIN_TOKEN\" in the configuration, \
                 export REVALIDATE_ADMIN_TOKEN=<a secret token>, and restart"
            .to_owned(),
    }
}

/// What a caller is told of an upstream failure: its kind and status, in
/// words of our own.
fn upstream_message(error: &FetchError) -> String {
    match (error.kind(), error.status()) {
        (FetchErrorKind::BadData, Some(status)) => {
            format!(
                "the upstream answered {status} with a body that is unusable (not JSON, or too large)"
            )
        }
        (FetchErrorKind::BadData, None) => {
            "the upstream's answer is unusable (not JSON, or too large)".to_owned()
        }
        (_, Some(status)) => format!("the upstream answered {status}"),
        (FetchErrorKind::Network, None) => "the upstream cannot be reached".to_owned(),
        (FetchErrorKind::Timeout, None) => "the upstream did not answer in time".to_owned(),
        (FetchErrorKind::Rejected, None) => "the upstream refused the request".to_owned(),
        _ => "the upstream request failed".to_owned(),
    }
}

impl ApiError {
    /// `404` for `action`, listing the actions `upstream` serves.
    pub(crate) fn unknown_action(upstream: &Upstream, action: impl Into<String>) -> Self {
        Self::UnknownAction {
            action: action.into(),
            known: upstream.actions().into_iter().map(str::to_owned).collect(),
        }
    }

    /// A failed read of `key`: `503 offline` when the upstream was not
    /// asked because it is offline, `502 upstream_failed` otherwise.
    pub(crate) fn upstream(key: QueryKey, error: FetchError) -> Self {
        if error.is_offline() {
            Self::Offline { key }
        } else {
            Self::UpstreamFailed { key, error }
        }
    }

    /// `400` with this message.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
        }
    }

    /// The HTTP status of the answer.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::UnknownAction { .. } | Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::QueryTooLong { .. } => StatusCode::URI_TOO_LONG,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized | Self::ReadTokenRequired | Self::IdentityRequired { .. } => {
                StatusCode::UNAUTHORIZED
            }
            Self::AdminDisabled { .. } => StatusCode::FORBIDDEN,
            Self::MetricsUnavailable | Self::Offline { .. } | Self::TooManySubscribers { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::MisdirectedRequest { .. } => StatusCode::MISDIRECTED_REQUEST,
            Self::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The answer's `error` code.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::UnknownAction { .. } => "unknown_action",
            Self::NotFound { .. } => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::BadRequest { .. } => "bad_request",
            Self::QueryTooLong { .. } => "query_too_long",
            Self::BodyTooLarge => "body_too_large",
            Self::Unauthorized => "unauthorized",
            Self::ReadTokenRequired => "read_token_required",
            Self::IdentityRequired { .. } => "identity_required",
            Self::AdminDisabled { .. } => "admin_disabled",
            Self::MetricsUnavailable => "metrics_unavailable",
            Self::UpstreamFailed { .. } => "upstream_failed",
            Self::Offline { .. } => "offline",
            Self::TooManySubscribers { .. } => "too_many_subscribers",
            Self::MisdirectedRequest { .. } => "misdirected_request",
        }
    }

    /// The answer's body: code, message, and the fields of the kind.
    pub(crate) fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("error".into(), self.code().into());
        body.insert("message".into(), self.to_string().into());
        match self {
            Self::UnknownAction { action, known } => {
                body.insert("action".into(), json!(action));
                body.insert("known".into(), json!(known));
            }
            Self::NotFound { path } => {
                body.insert("path".into(), json!(path));
            }
            Self::QueryTooLong { length, limit } => {
                body.insert("length".into(), json!(length));
                body.insert("limit".into(), json!(limit));
            }
            Self::UpstreamFailed { error, .. } => {
                body.insert("kind".into(), error.kind().as_str().into());
                body.insert("status".into(), json!(error.status()));
            }
            Self::Offline { .. } => {
                body.insert("kind".into(), FetchErrorKind::Offline.as_str().into());
            }
            Self::TooManySubscribers { limit } => {
                body.insert("limit".into(), json!(limit));
            }
            Self::IdentityRequired { action, .. } => {
                body.insert("action".into(), json!(action));
            }
            Self::MethodNotAllowed { .. }
            | Self::ReadTokenRequired
            | Self::BadRequest { .. }
            | Self::BodyTooLarge
            | Self::Unauthorized
            | Self::AdminDisabled { .. }
            | Self::MisdirectedRequest { .. }
            | Self::MetricsUnavailable => {}
        }
        Value::Object(body)
    }

    /// Logs what the answer leaves out: an upstream failure in full (its
    /// body snippet included) as a warning, the rest for debugging.
    fn log(&self) {
        let status = self.status().as_u16();
        match self {
            Self::UpstreamFailed { key, error } => tracing::warn!(
                %key,
                kind = error.kind().as_str(),
                upstream_status = error.status(),
                "answered {status} {}: {error}",
                self.code()
            ),
            Self::Offline { key } => {
                tracing::debug!(%key, "answered {status} {}: {self}", self.code());
            }
            Self::MetricsUnavailable | Self::TooManySubscribers { .. } => {
                tracing::warn!("answered {status} {}: {self}", self.code());
            }

            _ => tracing::debug!("answered {status} {}: {self}", self.code()),
        }
    }
}

impl ApiError {
    /// The answer on the app's own paths, which say what the upstream
    /// would: an upstream failure with the upstream's status (a `404` is a
    /// `404`), where the `/v1` API says `502`.
    pub(crate) fn into_app_response(self) -> Response {
        let upstream = match &self {
            Self::UpstreamFailed { error, .. } => error
                .status()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .filter(|s| s.is_client_error() || s.is_server_error()),
            _ => None,
        };
        let mut response = self.into_response();
        if let Some(status) = upstream {
            *response.status_mut() = status;
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let mut response = (self.status(), Json(self.body())).into_response();
        if response.status() == StatusCode::UNAUTHORIZED {
            // RFC 9110 §15.5.2 and RFC 6750 §3: say which scheme is wanted.
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<BytesRejection> for ApiError {
    /// A body over `DefaultBodyLimit` is `413 body_too_large`; one that
    /// could not be read is `400 bad_request`.
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::BodyTooLarge
        } else {
            tracing::debug!("the request body could not be read: {rejection}");
            Self::bad_request("the request body could not be read")
        }
    }
}

impl From<PathRejection> for ApiError {
    /// A path segment that does not decode (not UTF-8) is `400`.
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request(format!(
            "the path cannot be read: {}",
            rejection.body_text()
        ))
    }
}

/// A route's path with a method it does not serve: `405`, with axum's
/// `Allow` header.
pub(crate) async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> QueryKey {
        QueryKey::bare("item.get")
    }

    #[test]
    fn every_answer_has_the_one_shape() {
        let all = [
            ApiError::UnknownAction {
                action: "x".into(),
                known: vec!["a".into()],
            },
            ApiError::NotFound { path: "/x".into() },
            ApiError::MethodNotAllowed {
                method: "PUT".into(),
            },
            ApiError::bad_request("no"),
            ApiError::QueryTooLong {
                length: 9,
                limit: 8,
            },
            ApiError::BodyTooLarge,
            ApiError::Unauthorized,
            ApiError::ReadTokenRequired,
            ApiError::IdentityRequired {
                action: "settings.get".into(),
                header: "Authorization".into(),
            },
            ApiError::AdminDisabled { env: None },
            ApiError::MetricsUnavailable,
            ApiError::TooManySubscribers { limit: 1 },
            ApiError::MisdirectedRequest { host: "x".into() },
            ApiError::upstream(key(), FetchError::failed("boom").with_status(500)),
            ApiError::upstream(key(), FetchError::network("refused")),
        ];
        let mut codes = Vec::new();
        for e in &all {
            let body = e.body();
            assert_eq!(body["error"], e.code(), "{body}");
            assert!(
                body["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{body}"
            );
            assert!(
                e.status().is_client_error() || e.status().is_server_error(),
                "{e:?}"
            );
            codes.push(e.code());
        }
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len() - 1, "one code per kind");
    }

    #[test]
    fn upstream_failures_say_kind_and_status_never_the_upstream_words() {
        let secret = "stack trace: password=hunter2 at db.rs:42";
        let cases = [
            (
                FetchError::failed(format!("upstream answered 503: {secret}")).with_status(503),
                "failed",
                json!(503),
                "the upstream answered 503",
            ),
            (
                FetchError::rejected(format!("upstream answered 404: {secret}")).with_status(404),
                "rejected",
                json!(404),
                "the upstream answered 404",
            ),
            (
                FetchError::bad_data(format!("not JSON ({secret})")).with_status(200),
                "bad_data",
                json!(200),
                "the upstream answered 200 with a body that is unusable (not JSON, or too large)",
            ),
            (
                FetchError::network(format!("connection failed: {secret}")),
                "network",
                Value::Null,
                "the upstream cannot be reached",
            ),
            (
                FetchError::timeout(secret),
                "timeout",
                Value::Null,
                "the upstream did not answer in time",
            ),
        ];
        for (error, kind, status, message) in cases {
            let e = ApiError::upstream(key(), error);
            assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
            let body = e.body();
            assert_eq!(body["error"], "upstream_failed");
            assert_eq!(body["kind"], kind);
            assert_eq!(body["status"], status);
            assert_eq!(body["message"], message);
            assert!(!body.to_string().contains("hunter2"), "{body}");
        }
    }

    #[test]
    fn an_offline_miss_is_503_offline() {
        // The engine's offline error cannot be built outside it; its kind
        // is what decides.
        let offline = FetchError::new(FetchErrorKind::Offline, "not fetched");
        let e = ApiError::upstream(key(), offline);
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.body()["error"], "offline");
        assert_eq!(e.body()["kind"], "offline");
    }

    #[test]
    fn admin_disabled_says_how_to_enable_it() {
        let e = ApiError::AdminDisabled { env: None };
        assert!(e.to_string().contains("admin_token_env"), "{e}");
        let e = ApiError::AdminDisabled {
            env: Some("MY_TOKEN".into()),
        };
        assert!(e.to_string().contains("MY_TOKEN"), "{e}");
    }

    #[test]
    fn unauthorized_names_the_scheme() {
        let r = ApiError::Unauthorized.into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }
}
