//! The floor of `bench/http.sh`: the daemon's HTTP stack — the same
//! runtime, the same accept loop with its limits, an axum `Router` — serving
//! one fixed body from memory, with no cache, no middleware and no
//! extractor. What revalidate costs per request beyond it is what its own
//! read path costs.

use std::net::SocketAddr;
use std::process::ExitCode;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::DaemonConfig;
use crate::server::{self, Connections, Limits};

/// Serves `body` as `application/json` at `GET /v1/resources/{action}` and
/// `ok` at `GET /healthz` on `listen` until SIGINT or SIGTERM, with the
/// `[server]` defaults of `revalidate serve` (connection cap, timeouts).
pub(crate) fn run(listen: SocketAddr, body: Bytes) -> ExitCode {
    // The defaults `serve` would use, read the way it reads them.
    let config = match DaemonConfig::parse(
        "floor.toml",
        "[upstream]\nbase_url = \"http://127.0.0.1:9\"\n[actions.\"item\"]\nmethod = \"GET\"\n",
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let s = &config.server;
    let limits = Limits {
        header_read_timeout: s.header_read_timeout,
        idle_timeout: s.idle_timeout,
    };
    let (max_connections, _) = server::effective_max_connections(s.max_connections);
    let rt = crate::cli::runtime();
    let result = rt.block_on(async move {
        let json = HeaderValue::from_static("application/json");
        let app = Router::new()
            .route(
                "/v1/resources/{action}",
                get(move || {
                    let body = body.clone();
                    let json = json.clone();
                    async move { ([(header::CONTENT_TYPE, json)], body).into_response() }
                }),
            )
            .route("/healthz", get(|| async { "ok" }));
        let listener = TcpListener::bind(listen).await?;
        let (stop, stopping) = watch::channel(false);
        let accept = tokio::spawn(server::accept_loop(
            listener,
            app,
            limits,
            Connections::new(max_connections),
            stopping,
        ));
        let _ = crate::daemon::signals().recv().await;
        stop.send_replace(true);
        let _ = accept.await;
        Ok::<(), std::io::Error>(())
    });
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            ExitCode::from(1)
        }
    }
}
