//! The simulated API's error answers: a status and a JSON body with an
//! `error` code, as a real business API would send them.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::config::DEMO_ACTIONS;

/// The `Retry-After` of an injected `503`, in seconds.
pub(crate) const RETRY_AFTER_SECS: u64 = 5;

/// An error answer: a status and a JSON body.
#[derive(Debug)]
pub(crate) struct ApiError {
    /// The HTTP status.
    pub(crate) status: StatusCode,
    /// The JSON body, with at least an `error` code.
    body: Value,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with this status and body, without `Retry-After`.
    pub(crate) fn new(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            body,
            retry_after: None,
        }
    }

    /// `400`: the request cannot be read.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            json!({"error": "bad_request", "message": message.into()}),
        )
    }

    /// `400`: a required parameter is absent.
    pub(crate) fn missing_param(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            json!({"error": "missing_param", "param": param, "message": format!("parameter `{param}` is required")}),
        )
    }

    /// `400`: a parameter has the wrong shape; `expected` says the right one.
    pub(crate) fn invalid_param(param: &str, expected: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_param", "param": param, "message": format!("parameter `{param}` must be {expected}")}),
        )
    }

    /// `404`: no such entity.
    pub(crate) fn not_found(kind: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            json!({"error": "not_found", "kind": kind, "id": id}),
        )
    }

    /// `404`: no such action; lists the known ones, as the daemon does.
    pub(crate) fn unknown_action(action: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            json!({"error": "unknown_action", "action": action, "known": DEMO_ACTIONS}),
        )
    }

    /// `500`: an injected or a real server error.
    pub(crate) fn internal(message: &str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "internal", "message": message}),
        )
    }

    /// `503` with `Retry-After`: an injected overload.
    pub(crate) fn unavailable() -> Self {
        Self {
            retry_after: Some(RETRY_AFTER_SECS),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({
                    "error": "unavailable",
                    "message": "simulated overload (demo failure_rate)",
                    "retry_after": RETRY_AFTER_SECS,
                }),
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
