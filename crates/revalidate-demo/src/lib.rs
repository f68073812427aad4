//! The simulated business API, and the simulated traffic, that `revalidate
//! demo` puts around the daemon.
//!
//! `revalidate demo` has to show the whole system working with one command, on
//! a machine with no backend to point it at. This crate is that backend: a
//! small HTTP server on loopback that speaks the protocol the daemon's upstream
//! fetcher expects and serves the resources of the business app in the original
//! design: navigation nodes, processes, rules, offices, workflows,
//! notifications, user settings, system health and live workflow status.
//!
//! # Protocol
//!
//! - `POST /actions/{action}` with the parameters as a JSON object in the body
//!   (an empty body or `null` means no parameters), or `GET
//!   /actions/{action}?k=v&…` with the parameters in the query string (values
//!   are strings; a repeated name becomes an array of strings, as in the
//!   daemon's own read API). Both forms give the same body for the same
//!   parameters: numbers and booleans are accepted as JSON values or as
//!   strings.
//! - `200` answers carry a strong `ETag` (a hash of the body); an
//!   `If-None-Match` that matches it by the weak comparison of RFC 9110
//!   (`W/"…"` matches too, as do lists and `*`) gives `304` with no body.
//! - Unknown action → `404` `{"error":"unknown_action",…}`; a body that is not
//!   JSON, or JSON that is not an object → `400`; a parameter with the wrong
//!   shape → `400`; a missing entity (`process.get` with an unknown id) → `404`.
//! - `GET /health` → `200 {"status":"ok"}` while the API is up.
//!
//! # Misbehaviour, on purpose
//!
//! The daemon's worth shows when the source is imperfect, so the simulation is:
//!
//! - **Changing at different rates.** Navigation nodes never change; processes,
//!   rules, offices and workflows change every few minutes; notifications and
//!   settings every 30–45 s; system health and workflow status every 2 s. The
//!   dashboard then shows refreshes that find new data next to refreshes that
//!   find none, and the per-resource staleness rules make visible sense.
//! - **Failing sometimes.** `failure_rate` of the action requests answer `500`;
//!   one in five of those is a `503` with `Retry-After: 5` instead, so the
//!   daemon's retry and back-off paths both run. `/health` never fails this way.
//! - **Going away.** The API is up for `outage_every`, then down for
//!   `outage_for`, and so on. Down means the listening socket is closed, so new
//!   connections are refused and idle keep-alive connections are closed: the
//!   daemon sees real network errors, its reachability probe sees the source
//!   offline, and both recover when the port is bound again.
//! - **Slow.** Every request waits a latency drawn uniformly from the
//!   configured range.
//!
//! # Determinism
//!
//! A body is a pure function of the action, its parameters, the seed and the
//! current time bucket of the action's resource; the wall-clock instant the
//! server started only shifts the timestamps in it. Time buckets are measured on
//! tokio's clock, so a test on a paused clock can step through them. Which
//! requests fail, and how long each one waits, depends on the seed and the
//! request's sequence number.
//!
//! # Use
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use revalidate_demo::{DemoConfig, DemoUpstream, config_toml, upstream_addr};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let api = DemoUpstream::start(upstream_addr().await, DemoConfig::default()).await?;
//! let listen: SocketAddr = "127.0.0.1:8787".parse().unwrap();
//! // The daemon's configuration for this API, with a store and an address.
//! let _toml = config_toml(&api.base_url(), "demo.redb".as_ref(), listen);
//! // … run the daemon on it; then, to read through it like an application:
//! tokio::spawn(revalidate_demo::simulate_traffic(listen));
//! api.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! The crate knows nothing of the daemon: the `revalidate` binary depends on
//! it, not the other way round.

mod config;
mod data;
mod error;
mod outage;
mod random;
mod server;
#[cfg(test)]
mod testing;
mod traffic;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info};

pub use config::{DEMO_ACTIONS, config_toml};
pub use outage::upstream_addr;
pub use random::demo_token;
pub use traffic::simulate_traffic;

use outage::{OutageSchedule, bind, supervise};
use server::{Shared, router};

/// Settings of the simulated API.
///
/// The defaults give a lively but mostly healthy source: 3 % of action requests
/// fail, a 20 s outage follows every 3 minutes of service, and requests take
/// 20–120 ms.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Seed of every pseudo-random choice: data, failures and latencies.
    pub seed: u64,
    /// Share of action requests answered with a server error, from 0 to 1
    /// (values outside are clamped, NaN counts as 0). `/health` never fails.
    pub failure_rate: f64,
    /// How long the API stays up between outages; the first outage starts this
    /// long after [`DemoUpstream::start`]. Zero disables outages.
    pub outage_every: Duration,
    /// How long each outage lasts. Zero disables outages.
    pub outage_for: Duration,
    /// Minimum and maximum latency added to every request (swapped if given
    /// in the wrong order).
    pub latency: (Duration, Duration),
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            seed: 0x5EED_DE30,
            failure_rate: 0.03,
            outage_every: Duration::from_secs(3 * 60),
            outage_for: Duration::from_secs(20),
            latency: (Duration::from_millis(20), Duration::from_millis(120)),
        }
    }
}

/// A running simulated API.
///
/// It serves until [`shutdown`](Self::shutdown) is awaited or the handle is
/// dropped; dropping stops it in the background without waiting for requests
/// in flight.
#[derive(Debug)]
pub struct DemoUpstream {
    /// The bound address, with the real port.
    addr: SocketAddr,
    /// Counters and settings, shared with the request handlers.
    shared: Arc<Shared>,
    /// Sends `true` to stop; dropped with the handle, which also stops.
    stop: watch::Sender<bool>,
    /// The task that serves and runs the outage cycle.
    supervisor: JoinHandle<()>,
}

impl DemoUpstream {
    /// Binds `addr` (use `127.0.0.1:0` for a free port) and serves until
    /// dropped or [`shutdown`](Self::shutdown).
    ///
    /// # Errors
    ///
    /// Fails when the address cannot be bound (in use, not local, no
    /// permission). Must be called inside a tokio runtime.
    pub async fn start(addr: SocketAddr, config: DemoConfig) -> io::Result<DemoUpstream> {
        let listener = bind(addr)?;
        // Outages rebind this exact address, so a requested port 0 must be
        // pinned to the port the system chose.
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(&config));
        let schedule = OutageSchedule::from_config(&config);
        let (stop, stop_rx) = watch::channel(false);
        let supervisor = tokio::spawn(supervise(
            listener,
            addr,
            router(Arc::clone(&shared)),
            Arc::clone(&shared),
            schedule,
            stop_rx,
        ));
        info!(
            %addr,
            seed = config.seed,
            failure_rate = shared.failure_rate,
            outages = ?schedule,
            "demo upstream listening"
        );
        Ok(DemoUpstream {
            addr,
            shared,
            stop,
            supervisor,
        })
    }

    /// The address actually bound (with the real port when `:0` was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL for the daemon's `[upstream] base_url`, such as
    /// `http://127.0.0.1:9000`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far, on every path, including the ones answered
    /// with an error.
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::Relaxed)
    }

    /// Whether the API is in a simulated outage (its port is closed).
    pub fn is_in_outage(&self) -> bool {
        self.shared.in_outage.load(Ordering::SeqCst)
    }

    /// Stops serving: closes the port, lets requests in flight finish (for at
    /// most 2 s) and returns when the server task has ended.
    pub async fn shutdown(self) {
        // A send error means the supervisor is already gone; nothing to stop.
        let _ = self.stop.send(true);
        if let Err(err) = self.supervisor.await
            && err.is_panic()
        {
            error!(error = %err, "demo upstream supervisor panicked");
        }
        info!(addr = %self.addr, "demo upstream stopped");
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpStream;

    use super::*;
    use crate::testing::{ANY_PORT, get, post, quiet};

    #[tokio::test]
    async fn shutdown_closes_the_port_and_calls_count_every_path() {
        let up = DemoUpstream::start(ANY_PORT, quiet(9)).await.expect("bind");
        let addr = up.addr();
        get(addr, "/health", &[]).await;
        get(addr, "/elsewhere", &[]).await;
        post(addr, "nope", "{}").await;
        post(addr, "settings.get", r#"{"user":"u-42"}"#).await;
        assert_eq!(up.calls(), 4);
        up.shutdown().await;
        let refused = TcpStream::connect(addr)
            .await
            .expect_err("the port is closed");
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn dropping_the_handle_stops_the_server() {
        let up = DemoUpstream::start(ANY_PORT, quiet(10))
            .await
            .expect("bind");
        let addr = up.addr();
        drop(up);
        let mut refused = false;
        for _ in 0..100 {
            if TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(refused, "still listening after the handle was dropped");
    }
}
