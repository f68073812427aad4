//! Wiring: the engine, its store, the refresh service with the upstream
//! probe, the change log and the HTTP server; then the stop.
//!
//! Stopping (SIGINT or SIGTERM): the server stops accepting, every SSE
//! stream ends with a `shutdown` event, idle connections and half-sent
//! requests are closed, the other requests have `[server] shutdown_grace`
//! to finish; then the refresh service stops and the store is flushed. A
//! second signal skips the wait: the store is flushed and the process
//! exits. The final flush is bounded by [`FLUSH_DEADLINE`] on every path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use revalidate::cluster::{ClusterError, ClusterHandle, ClusterOptions, RedisTier};
use revalidate::{
    BackgroundRefresh, ClockSource, PersistHandle, Persistence, QueryClient, RedbStore,
    RefreshError, StoreError,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::{ClusterConfig, DaemonConfig, OnStoreError, StoreConfig, expand_env};
use crate::events::EventLog;
use crate::identity::{Identities, Scopes};
use crate::server::{self, AllowedHosts, AppRoutes, Connections, Limits, LiveHub, Shared};
use crate::upstream::{Payload, PayloadCodec, Upstream, UpstreamError};

/// The longest the final store flush may take, whatever the path.
pub(crate) const FLUSH_DEADLINE: Duration = Duration::from_secs(10);

/// The longest the refresh service may take to stop (its fetches are
/// cancelled; this bounds a fetch stuck in a blocking call).
const REFRESH_STOP_DEADLINE: Duration = Duration::from_secs(5);

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DaemonError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{}; move it away (mv {path} {path}.bad) or set [store] on_error = \"memory\"",
        one_line(.error)
    )]
    CorruptStore { error: StoreError, path: String },
    #[error(transparent)]
    Refresh(#[from] RefreshError),
    #[error(transparent)]
    Settings(#[from] revalidate::SettingsError),
    #[error("[cluster]: {0}")]
    Cluster(ClusterError),
    #[error(
        "{what} names the environment variable {var}, which is not set (or empty); export {var}=<a secret> or remove {what}"
    )]
    MissingSecret { what: &'static str, var: String },
    #[error(
        "cannot listen on {addr}: {source}; choose another address with [server] listen or --listen"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("the final store flush failed: {0}")]
    Flush(StoreError),
    #[error("the final store flush did not finish within {FLUSH_DEADLINE:?}")]
    FlushTimeout,
}

impl DaemonError {
    /// The process's exit code: 2 for a configuration the daemon cannot
    /// run with (found at start), 1 for any other failure.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::Upstream(_)
            | Self::Settings(_)
            | Self::Cluster(_)
            | Self::MissingSecret { .. } => 2,
            _ => 1,
        }
    }
}

fn one_line(e: &impl std::fmt::Display) -> String {
    e.to_string().replace(['\n', '\r'], " ")
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
                .inspect(|handle| {
                    server::describe_metrics();
                    keep_up(handle.clone());
                })
                .map_err(|e| tracing::warn!("metrics are off: {e}"))
                .ok()
        })
        .clone()
}

/// How often the recorder's histograms are drained (the exporter's own
/// default).
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Drains the recorder's histograms every [`METRICS_UPKEEP`], on a thread
/// of its own for the life of the process, like the recorder. A histogram
/// keeps each sample it records until it is drained, and only a scrape of
/// `/metrics` or this upkeep drains it: without it, a daemon that nobody
/// scrapes grew with every refresh it made (one sample each), without end.
fn keep_up(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(METRICS_UPKEEP);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no metrics upkeep thread ({e}): histograms are drained by scrapes only");
    }
}

/// A running daemon's address, known once it listens.
pub(crate) type OnListen = Box<dyn FnOnce(SocketAddr) + Send>;

/// Opens the store and restores the cache from it. A corrupt file with
/// `on_error = "memory"` is moved aside (never deleted) and the daemon runs
/// from memory; with `"fail"` it is an error that says what to do.
async fn open_store(
    store: &StoreConfig,
    client: &QueryClient<Payload>,
) -> Result<Option<PersistHandle>, DaemonError> {
    let opened = if store.verify_on_open {
        RedbStore::open_verified(&store.path)
    } else {
        RedbStore::open(&store.path)
    };
    let started = match opened {
        Ok(db) => {
            Persistence::new(db)
                .codec(PayloadCodec)
                .max_age(store.max_age)
                .buster(store.buster.clone())
                .flush_every(store.flush_every)
                .start(client)
                .await
        }
        Err(e) => Err(e),
    };
    match started {
        Ok((handle, report)) => {
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
            Ok(Some(handle))
        }
        Err(e) if store.on_error == OnStoreError::Memory => {
            let corrupt = e.is_corrupt();
            let e = one_line(&e);
            if corrupt {
                match RedbStore::move_aside(&store.path) {
                    Ok(aside) => tracing::warn!(
                        "{e}; moved it aside to `{}` (kept for inspection); running with a memory-only cache ([store] on_error = \"memory\")",
                        aside.display()
                    ),
                    Err(mv) => tracing::warn!(
                        "{e}; {}; running with a memory-only cache ([store] on_error = \"memory\")",
                        one_line(&mv)
                    ),
                }
            } else {
                tracing::warn!(
                    "{e}; running with a memory-only cache ([store] on_error = \"memory\")"
                );
            }
            Ok(None)
        }
        Err(error) if error.is_corrupt() => Err(DaemonError::CorruptStore {
            error,
            path: store.path.display().to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// The node's tier on Redis. A Redis that does not answer is not fatal:
/// the node starts alone and joins when it answers; a wrong URL, password
/// or a Redis without scripting is a configuration error.
async fn join_cluster(
    c: &ClusterConfig,
    max_payload_bytes: usize,
) -> Result<RedisTier<Payload, PayloadCodec>, DaemonError> {
    let (tier, unreachable) = cluster_tier(c, max_payload_bytes).await?;
    if let Some(e) = unreachable {
        tracing::warn!("[cluster]: {e}; starting alone, joining the cluster when Redis answers");
    }
    Ok(tier)
}

/// The tier for `[cluster]`, checked against Redis (`serve` before it
/// binds, `check-config` too): with, when Redis does not answer, why.
pub(crate) async fn cluster_tier(
    c: &ClusterConfig,
    max_payload_bytes: usize,
) -> Result<(RedisTier<Payload, PayloadCodec>, Option<ClusterError>), DaemonError> {
    let url = expand_env(&c.redis_url).map_err(|e| {
        DaemonError::Cluster(ClusterError::BadUrl {
            url: "[cluster] redis_url".to_owned(),
            reason: e,
        })
    })?;
    let mut options = ClusterOptions::new(url);
    if let Some(id) = &c.node_id {
        options.node_id = id.clone();
    }
    options.lease_ttl = c.lease_ttl;
    options.key_prefix = c.key_prefix.clone();
    options.max_payload_bytes = max_payload_bytes;
    let tier = RedisTier::new(options, PayloadCodec).map_err(DaemonError::Cluster)?;
    match tier.check().await {
        Ok(()) => Ok((tier, None)),
        Err(e) if e.is_unreachable() => Ok((tier, Some(e))),
        Err(e) => Err(DaemonError::Cluster(e)),
    }
}

/// Runs the daemon until the first of `signals`, then stops (see the
/// module's comment). The admin token is `admin_token` if given, else read
/// from `[server] admin_token_env`.
pub(crate) async fn serve(
    config: DaemonConfig,
    admin_token: Option<String>,
    mut signals: mpsc::UnboundedReceiver<()>,
    on_listen: Option<OnListen>,
) -> Result<(), DaemonError> {
    let read_token = match &config.server.read_token_env {
        // Fail closed: a configured token that is missing would open reads.
        Some(var) => Some(secret_from_env("[server] read_token_env", var)?),
        None => None,
    };
    let scopes = Arc::new(Scopes::new(&config));
    let identities = match &config.identity {
        Some(identity) => {
            let secret = match &identity.secret_env {
                Some(var) => Some(secret_from_env("[identity] secret_env", var)?),
                None => None,
            };
            Some(Arc::new(Identities::new(
                identity.source.clone(),
                secret.as_deref().map(str::as_bytes),
            )))
        }
        None => None,
    };
    let upstream = Upstream::new(&config, scopes.clone(), identities.clone())?;
    let tier = match &config.cluster {
        Some(c) => Some(join_cluster(c, config.upstream.max_response_bytes).await?),
        None => None,
    };
    let mut builder = QueryClient::builder(upstream.clone())
        .policy(config.engine.policy.clone())
        .settings(config.engine.refresh.clone())?
        .clock(ClockSource::Coarse)
        .max_queries(config.server.max_queries);
    if let Some(tier) = &tier {
        builder = builder.coordinator(tier.coordinator());
    }
    let client: QueryClient<_> = builder.build();

    let persist = match &config.store {
        None => None,
        Some(store) => open_store(store, &client).await?,
    };
    // After hydrate, so that the first reconciliation sees what the store
    // restored.
    let cluster: Option<(RedisTier<Payload, PayloadCodec>, ClusterHandle)> = tier.map(|tier| {
        let (feed, handle) = tier.attach(&client);
        tokio::spawn(feed);
        (tier, handle)
    });

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
    let (stop, stopping) = watch::channel(false);
    let state = Arc::new(Shared {
        client: client.clone(),
        upstream: upstream.clone(),
        events: EventLog::start(&client, config.server.event_replay, scopes.clone()),
        metrics: metrics_handle(),
        refresh: Some(refresh.controller().clone()),
        admin_token,
        admin_token_env: config.server.admin_token_env.clone(),
        max_query_bytes: config.server.max_query_bytes,
        event_data_max_bytes: config.server.event_data_max_bytes,
        shutdown: stopping.clone(),
        live: Arc::new(LiveHub::new(
            config.server.max_live_subscribers,
            config.server.live_queries,
        )),
        openapi: server::openapi_document(&upstream.actions()),
        app: AppRoutes::new(&config),
        passthrough: config.server.passthrough,
        read_token,
        store: persist.as_ref().map(PersistHandle::stats_view),
        cluster: cluster.as_ref().map(|(tier, _)| tier.clone()),
    });
    LiveHub::start(&state);
    if let Some(identities) = identities {
        tokio::spawn(drop_revoked(identities, scopes, client.clone()));
    }
    let hosts = AllowedHosts::new(config.server.allowed_hosts.as_deref(), config.server.listen);
    let app = server::App::new(state, config.server.max_body_bytes, hosts);
    let addr = config.server.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Listen { addr, source })?;
    let local = listener.local_addr().map_err(DaemonError::Serve)?;
    let (max_connections, nofile) =
        server::effective_max_connections(config.server.max_connections);
    if max_connections < config.server.max_connections {
        tracing::warn!(
            "serving at most {max_connections} connections at once, not {} ([server] max_connections): the open-file limit is {}",
            config.server.max_connections,
            nofile.unwrap_or_default()
        );
    } else {
        tracing::info!("serving at most {max_connections} connections at once");
    }
    let connections = Connections::new(max_connections);
    let limits = Limits {
        header_read_timeout: config.server.header_read_timeout,
        idle_timeout: config.server.idle_timeout,
    };
    let accept = tokio::spawn(server::accept_loop(
        listener,
        app,
        limits,
        connections.clone(),
        stopping,
    ));
    tracing::info!(
        "revalidate serving {} actions from {} on http://{local}",
        upstream.actions().len(),
        config.upstream.base_url
    );
    if let Some(f) = on_listen {
        f(local);
    }

    let _ = signals.recv().await;
    tracing::info!(
        "stopping: closing {} connections (at most {:?} for requests in flight; a second signal stops at once)",
        connections.open(),
        config.server.shutdown_grace
    );
    stop.send_replace(true);
    let _ = accept.await;
    // The node leaves the cluster: no more changes applied or published.
    drop(cluster);
    let forced = tokio::select! {
        () = connections.closed() => false,
        () = tokio::time::sleep(config.server.shutdown_grace) => {
            tracing::warn!(
                "{} connections still open after {:?} ([server] shutdown_grace): closing them",
                connections.open(),
                config.server.shutdown_grace
            );
            false
        }
        Some(()) = signals.recv() => {
            tracing::warn!("a second signal: flushing the store and exiting now");
            true
        }
    };
    if !forced {
        tracing::info!("stopping refreshes");
        if tokio::time::timeout(REFRESH_STOP_DEADLINE, refresh.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("the refresh service did not stop within {REFRESH_STOP_DEADLINE:?}");
        }
    }
    let Some(persist) = persist else {
        return Ok(());
    };
    tracing::info!("flushing the store");
    match tokio::time::timeout(FLUSH_DEADLINE, persist.shutdown()).await {
        Ok(Ok(())) => {
            tracing::info!("store flushed");
            Ok(())
        }
        Ok(Err(e)) => Err(DaemonError::Flush(e)),
        Err(_) => Err(DaemonError::FlushTimeout),
    }
}

/// A secret from the environment variable `var`, for `what`.
fn secret_from_env(what: &'static str, var: &str) -> Result<String, DaemonError> {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| DaemonError::MissingSecret {
            what,
            var: var.to_owned(),
        })
}

/// Drops the queries of every user whose credential the upstream refused:
/// they are never served or refreshed again (the user's next read, with a
/// credential the upstream accepts, fetches anew).
async fn drop_revoked(
    identities: Arc<Identities>,
    scopes: Arc<Scopes>,
    client: QueryClient<Payload>,
) {
    loop {
        for user in identities.revoked().await {
            let n = client.remove_where(scopes.of_user(user.clone()));
            tracing::info!(target: "revalidate", "🔒 the upstream refused the credential of user {}: dropped their {n} queries", user.short());
        }
    }
}

/// Every SIGINT (Ctrl-C) and SIGTERM, from now on (the handlers are
/// installed before this returns, so no signal in between kills the
/// process). Must be called inside the runtime.
pub(crate) fn signals() -> mpsc::UnboundedReceiver<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            tracing::warn!("cannot install signal handlers: stop the daemon with SIGKILL");
            // No signal will come: keep the channel open, so no stop either.
            tokio::spawn(async move {
                let _tx = tx;
                std::future::pending::<()>().await;
            });
            return rx;
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                if tx.send(()).is_err() {
                    return;
                }
            }
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    rx
}
