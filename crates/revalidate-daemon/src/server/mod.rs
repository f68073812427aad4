//! The HTTP API (see `docs/http-api.md`): cache-first reads, change events,
//! operations, metrics and the dashboard.

mod access;
mod admin;
mod app;
mod conn;
mod error;
mod host;
mod live;
mod openapi;
mod resources;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use revalidate::{QueryClient, RefreshController};
use tokio::sync::watch;

pub(crate) use admin::describe_metrics;
pub(crate) use app::AppRoutes;
pub(crate) use conn::{Connections, Limits, accept_loop, effective_max_connections};
pub(crate) use host::AllowedHosts;
pub(crate) use live::LiveHub;
pub(crate) use openapi::document as openapi_document;

use crate::events::EventLog;
use crate::upstream::{Payload, Upstream};

/// What the handlers share, behind one `Arc`: axum clones the state for
/// every request, and a pointer is cheaper to clone than this struct.
pub(crate) type AppState = Arc<Shared>;

/// Everything a handler needs.
pub(crate) struct Shared {
    pub(crate) client: QueryClient<Payload>,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) events: Arc<EventLog>,
    pub(crate) metrics: Option<PrometheusHandle>,
    pub(crate) refresh: Option<RefreshController>,
    /// The admin token; `None` disables the admin endpoints.
    pub(crate) admin_token: Option<String>,
    /// The environment variable that would hold it (for messages).
    pub(crate) admin_token_env: Option<String>,
    pub(crate) max_query_bytes: usize,
    /// `[server] event_data_max_bytes`.
    pub(crate) event_data_max_bytes: usize,
    /// Turns true when the daemon stops: SSE streams end.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// The `/v1/live` ticks.
    pub(crate) live: Arc<LiveHub>,
    /// The OpenAPI description, with the configured actions.
    pub(crate) openapi: serde_json::Value,
    /// The app's own paths of the declared actions.
    pub(crate) app: AppRoutes,
    /// `[server] passthrough`: other paths go upstream uncached.
    pub(crate) passthrough: bool,
    /// `[server] read_token_env`'s token: reads must carry it.
    pub(crate) read_token: Option<String>,
    /// The write-behind's figures, with `[store]`.
    pub(crate) store: Option<revalidate::PersistStatsView>,
    /// The node's tier on Redis, with `[cluster]`.
    pub(crate) cluster:
        Option<revalidate::cluster::RedisTier<Payload, crate::upstream::PayloadCodec>>,
}

/// The daemon's service: cached reads by [`resources::fast_read`], anything
/// else (a miss included) by the router of [`router`].
#[derive(Clone)]
pub(crate) struct App {
    router: Router,
    state: AppState,
    hosts: Arc<AllowedHosts>,
}

impl App {
    pub(crate) fn new(state: AppState, max_body_bytes: usize, hosts: AllowedHosts) -> Self {
        Self {
            router: router(state.clone(), max_body_bytes, hosts.clone()),
            state,
            hosts: Arc::new(hosts),
        }
    }
}

impl tower::Service<axum::http::Request<hyper::body::Incoming>> for App {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::Either<
        std::future::Ready<Result<Self::Response, Self::Error>>,
        <Router as tower::Service<axum::http::Request<hyper::body::Incoming>>>::Future,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(())) // as the router: always ready
    }

    fn call(&mut self, request: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        match resources::fast_read(&self.state, &self.hosts, &request) {
            Some(response) => futures::future::Either::Left(std::future::ready(Ok(response))),
            None => futures::future::Either::Right(self.router.call(request)),
        }
    }
}

/// The daemon's routes, behind the `Host` check. Plain cached reads do not
/// pass through it (see [`App`]): a layer or check added here for data
/// routes must also be made in [`resources::fast_read`].
pub(crate) fn router(state: AppState, max_body_bytes: usize, hosts: AllowedHosts) -> Router {
    Router::new()
        .route("/", get(admin::dashboard))
        .route("/healthz", get(admin::healthz))
        .route("/metrics", get(admin::metrics))
        .route(
            "/v1/resources/{action}",
            get(resources::read).post(resources::read_typed),
        )
        .route("/v1/events", get(live::events))
        .route("/v1/live", get(live::ticks))
        .route("/v1/invalidate", post(admin::invalidate))
        .route("/v1/stats", get(admin::stats))
        .route("/v1/queries", get(admin::queries))
        .route("/v1/network", get(admin::network))
        .route("/v1/cluster", get(admin::cluster))
        .route("/v1/openapi.json", get(openapi::openapi_json))
        .fallback(app::fallback)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(host::HostCheckLayer::new(hosts))
        .with_state(state)
}
