//! The app's own protocol: every declared action is also answered on the
//! path and method the daemon calls it with upstream (its path template
//! below `base_url`; by default `POST /actions/{action}`), so that an
//! existing client changes only its base URL.
//!
//! A query action is read cache-first and answered with the upstream's
//! body, byte for byte, and content type, plus the cache headers; a
//! failure with the upstream's status. A mutation is forwarded once,
//! uncached, and its answer returned as the upstream gave it; on a `2xx`
//! the queries its `invalidates` names are invalidated (the caller's own
//! for per-user ones) and a check runs at once, so that active queries
//! refresh and subscribers hear the changes. With `[server] passthrough`,
//! any other path is forwarded uncached; without, it is a `404`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use headers::{HeaderMapExt, IfNoneMatch};
use revalidate::{QueryFilter, QueryKey};

use super::AppState;
use super::access::Reader;
use super::error::ApiError;
use super::resources::{answer, params_of, params_of_json};
use crate::config::{self, ActionKind, DaemonConfig};
use crate::identity::{Scopes, UserId};
use crate::upstream::{Forwarded, Outgoing, Target};

/// The daemon's own paths: an action declared on one of them is read at
/// `/v1/resources/{action}` only.
fn is_daemon_path(path: &str) -> bool {
    matches!(path, "/" | "/healthz" | "/metrics") || path.starts_with("/v1/")
}

/// One action on the app's paths.
#[derive(Debug)]
struct AppAction {
    name: String,
    kind: ActionKind,
    /// For a mutation: the query actions it invalidates, and the resources.
    invalidates_actions: BTreeSet<String>,
    invalidates_resources: BTreeSet<String>,
}

/// The app's paths: `(method, path)` → action.
#[derive(Debug, Default)]
pub(crate) struct AppRoutes {
    routes: HashMap<(Method, String), AppAction>,
    /// Every app path, whatever its method (for `405`).
    paths: BTreeSet<String>,
}

impl AppRoutes {
    /// The routes of `config`'s actions. Actions that cannot be told apart
    /// (two on one method and path, such as one RPC endpoint) or that sit
    /// on a path of the daemon's own are left out, with a warning: they
    /// are read at `/v1/resources/{action}`.
    pub(crate) fn new(config: &DaemonConfig) -> Self {
        let mut routes: HashMap<(Method, String), AppAction> = HashMap::new();
        let mut clashes: BTreeSet<(Method, String)> = BTreeSet::new();
        let queries: BTreeSet<&str> = config
            .actions
            .iter()
            .filter(|(_, a)| a.kind == ActionKind::Query)
            .map(|(n, _)| n.as_str())
            .collect();
        for (name, a) in &config.actions {
            let path = a.local_path(name);
            if is_daemon_path(&path) {
                tracing::warn!(
                    "action `{name}`: its path {path} is one of the daemon's own; read it at /v1/resources/{name}"
                );
                continue;
            }
            let method = match a.method {
                config::Method::Post => Method::POST,
                config::Method::Get => Method::GET,
            };
            let (actions, resources): (Vec<&String>, Vec<&String>) = a
                .invalidates
                .iter()
                .partition(|n| queries.contains(n.as_str()));
            let route = AppAction {
                name: name.clone(),
                kind: a.kind,
                invalidates_actions: actions.into_iter().cloned().collect(),
                invalidates_resources: resources.into_iter().cloned().collect(),
            };
            let at = (method, path);
            if routes.insert(at.clone(), route).is_some() {
                clashes.insert(at);
            }
        }
        for at in clashes {
            tracing::warn!(
                "several actions are called with {} {}: the daemon cannot tell them apart there; read them at /v1/resources/{{action}}",
                at.0,
                at.1
            );
            routes.remove(&at);
        }
        let paths = routes.keys().map(|(_, p)| p.clone()).collect();
        Self { routes, paths }
    }

    fn get(&self, method: &Method, path: &str) -> Option<&AppAction> {
        // HEAD is GET without the body (hyper drops it).
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        self.routes.get(&(method.clone(), path.to_owned()))
    }
}

/// Every request no `/v1` route takes: an action on its own path, or
/// passthrough, or `404`/`405`.
pub(crate) async fn fallback(
    State(state): State<AppState>,
    reader: Reader,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(action) = state.app.get(&method, uri.path()) else {
        // `/v1/…` is the daemon's own namespace, passthrough or not.
        if state.passthrough && !is_daemon_path(uri.path()) {
            return passthrough(&state, &reader, method, &uri, &headers, body).await;
        }
        if state.app.paths.contains(uri.path()) {
            return ApiError::MethodNotAllowed {
                method: method.to_string(),
            }
            .into_response();
        }
        return ApiError::NotFound {
            path: uri.path().to_owned(),
        }
        .into_response();
    };
    let result = match action.kind {
        ActionKind::Query => read(&state, &reader, &method, &uri, &headers, action, body).await,
        ActionKind::Mutation => mutate(&state, &reader, method, &uri, &headers, action, body).await,
    };
    result.unwrap_or_else(ApiError::into_app_response)
}

/// A query action on its own path: cache-first.
async fn read(
    state: &AppState,
    reader: &Reader,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    action: &AppAction,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let params = if method == Method::POST {
        params_of_json(&body?)?
    } else {
        let query = uri.query().unwrap_or_default();
        if query.len() > state.max_query_bytes {
            return Err(ApiError::QueryTooLong {
                length: query.len(),
                limit: state.max_query_bytes,
            });
        }
        params_of(query)?
    };
    let key = reader.key(state, &action.name, params)?;
    match state.client.get_with_meta(&key).await {
        Ok(hit) => Ok(super::access::seal(
            state,
            &action.name,
            answer(&hit, headers.typed_get::<IfNoneMatch>().as_ref()),
        )),
        Err(e) => Err(ApiError::upstream(key, e)),
    }
}

/// A mutation: forwarded once; a `2xx` invalidates what it names.
async fn mutate(
    state: &AppState,
    reader: &Reader,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    action: &AppAction,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let scopes = state.upstream.scopes();
    if scopes.is_user(&action.name) {
        // A per-user write is the caller's own: it needs their identity.
        reader.key(state, &action.name, serde_json::Value::Null)?;
    }
    let answer = state
        .upstream
        .forward(Outgoing {
            method,
            target: Target::Action {
                name: &action.name,
                query: uri.query(),
            },
            headers,
            strip: &reader.private_headers(),
            body: body?,
        })
        .await
        .map_err(|e| ApiError::upstream(QueryKey::bare(&action.name), e))?;
    if answer.status.is_success() {
        let caller = reader.caller.as_ref().map(|c| c.id.clone());
        let n = invalidate(state, action, caller);
        tracing::info!(target: "revalidate", "✏️ {} answered {}: invalidated {n} queries", action.name, answer.status.as_u16());
        if let Some(refresh) = &state.refresh {
            refresh.check_now();
        }
    } else {
        tracing::info!(target: "revalidate", "✏️ {} answered {}: nothing invalidated", action.name, answer.status.as_u16());
    }
    Ok(response_of(answer))
}

/// Invalidates what `action` names: every query of the shared actions and
/// resources, and of the per-user ones the caller's (everyone's when the
/// caller has no identity: a service's write).
fn invalidate(state: &AppState, action: &AppAction, caller: Option<UserId>) -> usize {
    let client = &state.client;
    let scopes: &Arc<Scopes> = state.upstream.scopes();
    let policy = client.policy();
    let mut n = 0;
    let mut own: Vec<String> = Vec::new();
    for a in &action.invalidates_actions {
        if scopes.is_user(a) && caller.is_some() {
            own.push(a.clone());
        } else {
            n += client.invalidate(QueryFilter::Action(a.clone()));
        }
    }
    let mut own_resources: Vec<String> = Vec::new();
    for r in &action.invalidates_resources {
        let has_user_actions = state
            .upstream
            .actions()
            .iter()
            .any(|a| policy.resource(a) == r && scopes.is_user(a));
        if has_user_actions && caller.is_some() {
            own_resources.push(r.clone());
        } else {
            n += client.invalidate(QueryFilter::Resource(r.clone()));
        }
    }
    if let Some(user) = caller
        && !(own.is_empty() && own_resources.is_empty())
    {
        let scopes = scopes.clone();
        let policy = policy.clone();
        n += client.invalidate(QueryFilter::predicate(move |key| {
            let named = own.iter().any(|a| a == key.action())
                || own_resources
                    .iter()
                    .any(|r| policy.resource(key.action()) == r);
            // A shared query of a named resource; a per-user one if it is
            // the caller's.
            named
                && match scopes.owner(key) {
                    Some(owner) => owner == user,
                    None => !scopes.is_user(key.action()),
                }
        }));
    }
    n
}

/// Any other path, with `[server] passthrough`: forwarded uncached, with
/// the caller's method, headers (not the daemon's credentials) and body.
async fn passthrough(
    state: &AppState,
    reader: &Reader,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let forwarded = state
        .upstream
        .forward(Outgoing {
            method: method.clone(),
            target: Target::Path {
                path: uri.path(),
                query: uri.query(),
            },
            headers,
            strip: &reader.private_headers(),
            body,
        })
        .await;
    match forwarded {
        Ok(answer) => {
            // The path only: a query string may carry tokens.
            tracing::debug!(target: "revalidate", "↪️ passthrough {method} {} answered {}", uri.path(), answer.status.as_u16());
            response_of(answer)
        }
        Err(e) => ApiError::upstream(QueryKey::bare(uri.path()), e).into_response(),
    }
}

/// The upstream's answer, as it gave it.
fn response_of(mut answer: Forwarded) -> Response {
    let status = StatusCode::from_u16(answer.status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = std::mem::take(&mut answer.headers);
    let mut response = Response::new(Body::from_stream(answer.body()));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
