//! Wiring: the engine, its store, the refresh service with the upstream
//! probe, the change log and the HTTP server; then a graceful shutdown that
//! stops the service and flushes the store.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use revalidate::{
    BackgroundRefresh, ClockSource, Persistence, QueryClient, RedbStore, RefreshError,
};
use tokio::net::TcpListener;

use crate::config::{DaemonConfig, OnStoreError};
use crate::events::EventLog;
use crate::server::{self, Shared};
use crate::upstream::{PayloadCodec, Upstream, UpstreamError};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DaemonError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Store(#[from] revalidate::StoreError),
    #[error(transparent)]
    Refresh(#[from] RefreshError),
    #[error(transparent)]
    Settings(#[from] revalidate::SettingsError),
    #[error(
        "cannot listen on {addr}: {source}; choose another address with [server] listen or --listen"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// The Prometheus recorder, installed once per process.
fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("revalidate_refresh_duration_seconds".into()),
                    &buckets,
                )
                .and_then(PrometheusBuilder::install_recorder)
                .inspect(|_| server::describe_metrics())
                .map_err(|e| tracing::warn!("metrics are off: {e}"))
                .ok()
        })
        .clone()
}

/// A running daemon's address, known once it listens.
pub(crate) type OnListen = Box<dyn FnOnce(SocketAddr) + Send>;

/// Runs the daemon until `shutdown` completes. The admin token is
/// `admin_token` if given, else read from `[server] admin_token_env`.
pub(crate) async fn serve(
    config: DaemonConfig,
    admin_token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listen: Option<OnListen>,
) -> Result<(), DaemonError> {
    let upstream = Upstream::new(&config)?;
    let client: QueryClient<_> = QueryClient::builder(upstream.clone())
        .policy(config.engine.policy.clone())
        .settings(config.engine.refresh.clone())?
        .clock(ClockSource::Coarse)
        .build();

    let persist = match &config.store {
        None => None,
        Some(store) => match RedbStore::open(&store.path) {
            Ok(db) => {
                let (handle, report) = Persistence::new(db)
                    .codec(PayloadCodec)
                    .max_age(store.max_age)
                    .buster(store.buster.clone())
                    .flush_every(store.flush_every)
                    .start(&client)
                    .await?;
                tracing::info!(
                    "store {}: restored {} queries ({} expired, {} undecodable dropped{})",
                    store.path.display(),
                    report.restored,
                    report.expired,
                    report.undecodable,
                    if report.busted {
                        "; the buster changed: cache dropped"
                    } else {
                        ""
                    }
                );
                Some(handle)
            }
            Err(e) if store.on_error == OnStoreError::Memory => {
                tracing::warn!(
                    "{e}; running with a memory-only cache ([store] on_error = \"memory\")"
                );
                None
            }
            Err(e) => return Err(e.into()),
        },
    };

    let probe = {
        let upstream = upstream.clone();
        move || {
            let upstream = upstream.clone();
            async move { upstream.probe().await }
        }
    };
    let refresh = BackgroundRefresh::new(&client)?
        .with_probe(config.upstream.probe_interval, probe)
        .start();

    let admin_token = admin_token
        .or_else(|| {
            config
                .server
                .admin_token_env
                .as_deref()
                .and_then(|var| std::env::var(var).ok())
        })
        .filter(|t| !t.is_empty());
    let state = Arc::new(Shared {
        client: client.clone(),
        upstream: upstream.clone(),
        events: EventLog::start(&client, config.server.event_replay),
        metrics: metrics_handle(),
        refresh: Some(refresh.controller().clone()),
        admin_token,
        admin_token_env: config.server.admin_token_env.clone(),
        max_query_bytes: config.server.max_query_bytes,
    });
    let app = server::router(state, config.server.max_body_bytes);
    let addr = config.server.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Listen { addr, source })?;
    let local = listener.local_addr().map_err(DaemonError::Serve)?;
    tracing::info!(
        "revalidate serving {} actions from {} on http://{local}",
        upstream.actions().len(),
        config.upstream.base_url
    );
    if let Some(f) = on_listen {
        f(local);
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(DaemonError::Serve)?;

    tracing::info!("shutting down: stopping refreshes, flushing the store");
    refresh.shutdown().await;
    if let Some(p) = persist
        && let Err(e) = p.shutdown().await
    {
        tracing::error!("the final store flush failed: {e}");
    }
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn signals() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
