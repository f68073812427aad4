//! The simulated business API that `revalidate demo` puts behind the daemon.
//!
//! `revalidate demo` has to show the whole system working with one command, on
//! a machine with no backend to point it at. This module is that backend: a
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
//! - `200` answers carry a strong `ETag` (a hash of the body); a matching
//!   `If-None-Match` gives `304` with no body.
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

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, Query, Request, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Map, Value, json};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{oneshot, watch},
    task::JoinHandle,
    time::Instant,
};
use tracing::{debug, error, info, warn};

/// The actions the simulated API knows, in the order the demo lists them.
///
/// The resource of each is the text before the first `.` (`process.list` →
/// `process`), as in the daemon's configuration; `system_health` and
/// `workflow_status` are both action and resource.
pub(crate) const DEMO_ACTIONS: &[&str] = &[
    "node.tree",
    "process.list",
    "process.get",
    "rule.list",
    "rule.search",
    "office.list",
    "workflow.list",
    "notification.list",
    "settings.get",
    "system_health",
    "workflow_status",
];

/// Settings of the simulated API.
///
/// The defaults give a lively but mostly healthy source: 3 % of action requests
/// fail, a 20 s outage follows every 3 minutes of service, and requests take
/// 20–120 ms.
#[derive(Clone, Debug)]
pub(crate) struct DemoConfig {
    /// Seed of every pseudo-random choice: data, failures and latencies.
    pub(crate) seed: u64,
    /// Share of action requests answered with a server error, from 0 to 1
    /// (values outside are clamped, NaN counts as 0). `/health` never fails.
    pub(crate) failure_rate: f64,
    /// How long the API stays up between outages; the first outage starts this
    /// long after [`DemoUpstream::start`]. Zero disables outages.
    pub(crate) outage_every: Duration,
    /// How long each outage lasts. Zero disables outages.
    pub(crate) outage_for: Duration,
    /// Minimum and maximum latency added to every request (swapped if given
    /// in the wrong order).
    pub(crate) latency: (Duration, Duration),
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
pub(crate) struct DemoUpstream {
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
    pub(crate) async fn start(addr: SocketAddr, config: DemoConfig) -> io::Result<DemoUpstream> {
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
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL for the daemon's `[upstream] base_url`, such as
    /// `http://127.0.0.1:9000`.
    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far, on every path, including the ones answered
    /// with an error.
    pub(crate) fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::Relaxed)
    }

    /// Whether the API is in a simulated outage (its port is closed).
    pub(crate) fn is_in_outage(&self) -> bool {
        self.shared.in_outage.load(Ordering::SeqCst)
    }

    /// Stops serving: closes the port, lets requests in flight finish (for at
    /// most [`SHUTDOWN_GRACE`]) and returns when the server task has ended.
    pub(crate) async fn shutdown(self) {
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

/// How long [`DemoUpstream::shutdown`] waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How long to wait before trying again when the port cannot be bound back
/// after an outage.
const REBIND_RETRY: Duration = Duration::from_millis(100);

/// Share of injected failures that are `503` with `Retry-After` rather than
/// `500`, so that the daemon's `Retry-After` handling runs too.
const UNAVAILABLE_SHARE: f64 = 0.2;

/// The `Retry-After` of an injected `503`, in seconds.
const RETRY_AFTER_SECS: u64 = 5;

// ---------------------------------------------------------------------------
// Serving and outages
// ---------------------------------------------------------------------------

/// State shared by the request handlers and the handle.
#[derive(Debug)]
struct Shared {
    /// [`DemoConfig::seed`].
    seed: u64,
    /// [`DemoConfig::failure_rate`], clamped to `0..=1`.
    failure_rate: f64,
    /// [`DemoConfig::latency`], as `(min, max)`.
    latency: (Duration, Duration),
    /// Time buckets count from here, on tokio's clock.
    started: Instant,
    /// Wall-clock milliseconds at `started`; only used to make timestamps in
    /// the data look current.
    anchor_ms: i64,
    /// Requests received so far; also the sequence number of the next one.
    calls: AtomicU64,
    /// Set while the port is closed for an outage.
    in_outage: AtomicBool,
}

impl Shared {
    /// Normalises the configuration: failure rate clamped, latency ordered.
    fn new(config: &DemoConfig) -> Self {
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
    fn clock(&self) -> Clock {
        let elapsed = Instant::now().saturating_duration_since(self.started);
        Clock {
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            anchor_ms: self.anchor_ms,
        }
    }

    /// A latency drawn uniformly from the configured range.
    fn latency_sample(&self, rng: &mut Rng) -> Duration {
        let (min, max) = self.latency;
        let spread = max - min;
        min + spread.mul_f64(rng.unit())
    }

    /// The failure injected into this request, if any. One draw decides both
    /// whether and how, so the total share stays exactly `failure_rate`.
    fn roll_failure(&self, rng: &mut Rng) -> Option<ApiError> {
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

/// When the API goes down and for how long.
#[derive(Clone, Copy, Debug)]
struct OutageSchedule {
    /// Time up before each outage.
    every: Duration,
    /// Time down.
    length: Duration,
}

impl OutageSchedule {
    /// `None` when either duration is zero: no outages.
    fn from_config(config: &DemoConfig) -> Option<Self> {
        (!config.outage_every.is_zero() && !config.outage_for.is_zero()).then_some(Self {
            every: config.outage_every,
            length: config.outage_for,
        })
    }
}

/// Binds a listener that can be bound again on the same port right after it
/// is closed.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Closing the port for an outage leaves the server side of the closed
    // connections in TIME_WAIT; without SO_REUSEADDR the rebind would fail with
    // "address in use" for a minute. (On Windows the option means something
    // else, letting another socket steal the port, so it is left off there.)
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Runs the server through its up and down periods until asked to stop.
///
/// The cycle is: serve for `every`, close the port for `length`, bind it
/// again, and repeat. Down periods are measured from the planned start of the
/// outage, up periods from the moment the port is bound again, so a slow
/// rebind never shortens the time the API is up.
async fn supervise(
    first: TcpListener,
    addr: SocketAddr,
    app: Router,
    shared: Arc<Shared>,
    schedule: Option<OutageSchedule>,
    mut stop: watch::Receiver<bool>,
) {
    let mut listener = first;
    let mut up_since = shared.started;
    loop {
        let serving = Serving::start(listener, app.clone());
        let outage_at = schedule.and_then(|s| up_since.checked_add(s.every));
        if sleep_or_stop(outage_at, &mut stop).await == Wake::Stop {
            serving.shutdown().await;
            return;
        }
        // The flag goes up only once the port is really closed, so whoever
        // sees it can rely on connections being refused.
        drop(serving.close().await);
        shared.in_outage.store(true, Ordering::SeqCst);
        let back_at = schedule
            .zip(outage_at)
            .and_then(|(s, at)| at.checked_add(s.length));
        info!(
            %addr,
            down_for = ?schedule.map(|s| s.length),
            "demo upstream: simulated outage, refusing connections"
        );
        if sleep_or_stop(back_at, &mut stop).await == Wake::Stop {
            return;
        }
        listener = match rebind(addr, &mut stop).await {
            Some(listener) => listener,
            None => return,
        };
        shared.in_outage.store(false, Ordering::SeqCst);
        up_since = Instant::now();
        info!(%addr, "demo upstream: outage over, accepting connections again");
    }
}

/// Binds `addr` again after an outage, retrying until it works or a stop is
/// requested. The port can be taken meanwhile (by any socket on the host,
/// including an outgoing connection given it as an ephemeral port); the API
/// then stays down until it is free again.
async fn rebind(addr: SocketAddr, stop: &mut watch::Receiver<bool>) -> Option<TcpListener> {
    let mut attempts = 0_u64;
    loop {
        match bind(addr) {
            Ok(listener) => {
                if attempts > 0 {
                    info!(%addr, attempts, "demo upstream: port bound again");
                }
                return Some(listener);
            }
            Err(err) if attempts == 0 => {
                warn!(%addr, error = %err, "demo upstream: cannot bind its port after an outage; retrying");
            }
            Err(err) => {
                debug!(%addr, error = %err, attempts, "demo upstream: rebind failed again");
            }
        }
        attempts += 1;
        let retry_at = Instant::now().checked_add(REBIND_RETRY);
        if sleep_or_stop(retry_at, stop).await == Wake::Stop {
            return None;
        }
    }
}

/// Why [`sleep_or_stop`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    /// The deadline passed.
    Deadline,
    /// Stop was requested, or the handle dropped.
    Stop,
}

/// Waits for `deadline` (forever when `None`) or for a stop request.
async fn sleep_or_stop(deadline: Option<Instant>, stop: &mut watch::Receiver<bool>) -> Wake {
    let sleep = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = sleep => Wake::Deadline,
        // Both `shutdown()` (sends `true`) and dropping the handle (closes the
        // channel, an error here) mean stop.
        _ = stop.wait_for(|stop| *stop) => Wake::Stop,
    }
}

/// One up period: an axum server on one listener.
struct Serving {
    /// Dropping it starts axum's graceful shutdown.
    signal: oneshot::Sender<()>,
    /// Resolves when the listener has been dropped, i.e. the port is closed.
    closed: oneshot::Receiver<()>,
    /// The axum server; it ends when its last connection has closed.
    task: JoinHandle<()>,
}

impl Serving {
    /// Serves `app` on `listener` in a task of its own.
    fn start(listener: TcpListener, app: Router) -> Self {
        let (signal, signal_rx) = oneshot::channel::<()>();
        let (closed_tx, closed) = oneshot::channel();
        let listener = TrackedListener {
            inner: listener,
            _closed: closed_tx,
        };
        let task = tokio::spawn(async move {
            // Graceful shutdown, not an abort, because aborting this task would
            // leave axum's per-connection tasks serving keep-alive connections
            // through the outage; graceful shutdown closes idle ones at once and
            // the others after their request in flight.
            let server = axum::serve(listener, app).with_graceful_shutdown(async move {
                // Sent or dropped: either way it is time to stop.
                let _ = signal_rx.await;
            });
            if let Err(err) = server.await {
                error!(error = %err, "demo upstream server failed");
            }
        });
        Self {
            signal,
            closed,
            task,
        }
    }

    /// Stops accepting and returns once the listening socket is closed. The
    /// returned task ends when the last open connection has closed.
    async fn close(self) -> JoinHandle<()> {
        drop(self.signal);
        // An error only says the sender is gone, which is the event awaited.
        let _ = self.closed.await;
        self.task
    }

    /// Closes the port and waits, for at most [`SHUTDOWN_GRACE`], for the
    /// requests in flight.
    async fn shutdown(self) {
        let mut task = self.close().await;
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
            .await
            .is_err()
        {
            debug!("demo upstream: connections still open after the grace period; abandoning them");
            task.abort();
        }
    }
}

/// A listener that reports when it is dropped, which is when axum has stopped
/// accepting and the port is closed.
struct TrackedListener {
    /// The listening socket.
    inner: TcpListener,
    /// Dropped with the listener, which wakes [`Serving::closed`].
    _closed: oneshot::Sender<()>,
}

impl axum::serve::Listener for TrackedListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    fn accept(&mut self) -> impl Future<Output = (Self::Io, Self::Addr)> + Send {
        // axum's own implementation retries and logs accept errors.
        axum::serve::Listener::accept(&mut self.inner)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// The routes, behind the middleware that counts, delays and fails requests.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/actions/{action}", get(get_action).post(post_action))
        .fallback(unknown_path)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            simulate,
        ))
        .with_state(shared)
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
    let etag = etag_of(&body);
    let etag_value = match HeaderValue::from_str(&etag) {
        Ok(value) => value,
        Err(err) => {
            error!(action, error = %err, "demo upstream: invalid ETag");
            return ApiError::internal("invalid ETag").into_response();
        }
    };
    let cached = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| if_none_match_matches(v, &etag));
    if cached {
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

/// A strong validator: the quoted hex of a 64-bit hash of the body.
fn etag_of(body: &[u8]) -> String {
    format!("\"{:016x}\"", splitmix(fnv1a(body)))
}

/// `If-None-Match` uses the weak comparison (RFC 9110 §13.1.2), so a `W/`
/// prefix from an intermediary still matches; `*` matches any current body.
fn if_none_match_matches(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

/// An error answer: a status and a JSON body.
#[derive(Debug)]
struct ApiError {
    /// The HTTP status.
    status: StatusCode,
    /// The JSON body, with at least an `error` code.
    body: Value,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with this status and body, without `Retry-After`.
    fn new(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            body,
            retry_after: None,
        }
    }

    /// `400`: the request cannot be read.
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            json!({"error": "bad_request", "message": message.into()}),
        )
    }

    /// `400`: a required parameter is absent.
    fn missing_param(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            json!({"error": "missing_param", "param": param, "message": format!("parameter `{param}` is required")}),
        )
    }

    /// `400`: a parameter has the wrong shape; `expected` says the right one.
    fn invalid_param(param: &str, expected: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_param", "param": param, "message": format!("parameter `{param}` must be {expected}")}),
        )
    }

    /// `404`: no such entity.
    fn not_found(kind: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            json!({"error": "not_found", "kind": kind, "id": id}),
        )
    }

    /// `404`: no such action; lists the known ones, as the daemon does.
    fn unknown_action(action: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            json!({"error": "unknown_action", "action": action, "known": DEMO_ACTIONS}),
        )
    }

    /// `500`: an injected or a real server error.
    fn internal(message: &str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "internal", "message": message}),
        )
    }

    /// `503` with `Retry-After`: an injected overload.
    fn unavailable() -> Self {
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

// ---------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------

/// The parameters of one request, from a JSON body or a query string.
#[derive(Debug, Default)]
struct Params(Map<String, Value>);

impl Params {
    /// Parameters from a `POST` body: empty or `null` is none, an object is
    /// the parameters, anything else is a `400`.
    fn from_body(body: &[u8]) -> Result<Self, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(Value::Null) => Ok(Self::default()),
            Ok(_) => Err(ApiError::bad_request(
                "the body must be a JSON object of parameters",
            )),
            Err(err) => Err(ApiError::bad_request(format!(
                "the body is not valid JSON: {err}"
            ))),
        }
    }

    /// Query pairs, with a repeated name becoming an array of strings, as the
    /// daemon's read API maps them.
    fn from_query(pairs: Vec<(String, String)>) -> Self {
        let mut map = Map::new();
        for (key, value) in pairs {
            match map.get_mut(&key) {
                None => {
                    map.insert(key, Value::String(value));
                }
                Some(Value::Array(values)) => values.push(Value::String(value)),
                Some(existing) => {
                    let first = existing.take();
                    *existing = Value::Array(vec![first, Value::String(value)]);
                }
            }
        }
        Self(map)
    }

    /// A scalar as text (strings trimmed, numbers and booleans printed); the
    /// first element of an array; `None` when absent or empty.
    fn text(&self, key: &str) -> Option<String> {
        fn scalar(value: &Value) -> Option<String> {
            match value {
                Value::String(s) => Some(s.trim().to_owned()).filter(|s| !s.is_empty()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                Value::Array(values) => values.iter().find_map(scalar),
                Value::Null | Value::Object(_) => None,
            }
        }
        self.0.get(key).and_then(scalar)
    }

    /// Every value of a parameter that may be given once or as an array, in
    /// lower case for matching.
    fn texts(&self, key: &str) -> Vec<String> {
        match self.0.get(key) {
            Some(Value::Array(values)) => values
                .iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.trim().to_lowercase()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .filter(|s| !s.is_empty())
                .collect(),
            _ => self
                .text(key)
                .map(|s| s.to_lowercase())
                .into_iter()
                .collect(),
        }
    }

    /// A whole number in `min..=max`, `default` when absent, `400` otherwise.
    fn number(&self, key: &str, default: u64, min: u64, max: u64) -> Result<u64, ApiError> {
        let Some(text) = self.text(key) else {
            return Ok(default);
        };
        text.parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| {
                ApiError::invalid_param(key, &format!("a whole number from {min} to {max}"))
            })
    }

    /// A boolean given as JSON or as `true`/`false`/`1`/`0`/`yes`/`no`.
    fn flag(&self, key: &str) -> Result<Option<bool>, ApiError> {
        let Some(text) = self.text(key) else {
            return Ok(None);
        };
        match text.to_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(Some(true)),
            "false" | "0" | "no" => Ok(Some(false)),
            _ => Err(ApiError::invalid_param(key, "true or false")),
        }
    }

    /// `page` (from 1) and `page_size` (1–100, default 20).
    fn page(&self) -> Result<(u64, u64), ApiError> {
        Ok((
            self.number("page", 1, 1, 100_000)?,
            self.number("page_size", 20, 1, 100)?,
        ))
    }
}

/// `true` when `wanted` is empty (no filter) or contains `value`.
fn matches_any(wanted: &[String], value: &str) -> bool {
    wanted.is_empty() || wanted.iter().any(|w| w.eq_ignore_ascii_case(value))
}

/// One page of `items`, with the page, its size and the totals, merged
/// into `extra`.
fn paginate(
    items: Vec<Value>,
    (page, page_size): (u64, u64),
    mut extra: Map<String, Value>,
) -> Value {
    let total = items.len() as u64;
    let start = usize::try_from((page - 1).saturating_mul(page_size)).unwrap_or(usize::MAX);
    let size = usize::try_from(page_size).unwrap_or(usize::MAX);
    let items: Vec<Value> = items.into_iter().skip(start).take(size).collect();
    extra.insert("items".into(), Value::Array(items));
    extra.insert("page".into(), page.into());
    extra.insert("page_size".into(), page_size.into());
    extra.insert("total".into(), total.into());
    extra.insert("total_pages".into(), total.div_ceil(page_size).into());
    Value::Object(extra)
}

// ---------------------------------------------------------------------------
// Actions and time
// ---------------------------------------------------------------------------

/// An action of the simulated API; each variant is the action named by
/// [`Action::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    NodeTree,
    ProcessList,
    ProcessGet,
    RuleList,
    RuleSearch,
    OfficeList,
    WorkflowList,
    NotificationList,
    SettingsGet,
    SystemHealth,
    WorkflowStatus,
}

impl Action {
    /// Every action, in the order of [`DEMO_ACTIONS`].
    const ALL: [Action; 11] = [
        Action::NodeTree,
        Action::ProcessList,
        Action::ProcessGet,
        Action::RuleList,
        Action::RuleSearch,
        Action::OfficeList,
        Action::WorkflowList,
        Action::NotificationList,
        Action::SettingsGet,
        Action::SystemHealth,
        Action::WorkflowStatus,
    ];

    /// The action's name on the wire.
    fn name(self) -> &'static str {
        match self {
            Action::NodeTree => "node.tree",
            Action::ProcessList => "process.list",
            Action::ProcessGet => "process.get",
            Action::RuleList => "rule.list",
            Action::RuleSearch => "rule.search",
            Action::OfficeList => "office.list",
            Action::WorkflowList => "workflow.list",
            Action::NotificationList => "notification.list",
            Action::SettingsGet => "settings.get",
            Action::SystemHealth => "system_health",
            Action::WorkflowStatus => "workflow_status",
        }
    }

    /// The action of this name, if the API knows it.
    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The resource, as the daemon derives it: the text before the first `.`.
    fn resource(self) -> &'static str {
        let name = self.name();
        name.split_once('.').map_or(name, |(resource, _)| resource)
    }

    /// How often the resource's data moves to a new time bucket; `None` for
    /// data that never changes. Chosen to sit around the original design's
    /// staleness defaults, so a demo shows both kinds of refresh: ones that
    /// find new data and ones answered `304`.
    fn change_every(self) -> Option<Duration> {
        match self.resource() {
            "node" => None,
            "process" => Some(Duration::from_secs(3 * 60)),
            "rule" => Some(Duration::from_secs(4 * 60)),
            "office" => Some(Duration::from_secs(6 * 60)),
            "workflow" => Some(Duration::from_secs(2 * 60)),
            "notification" => Some(Duration::from_secs(30)),
            "settings" => Some(Duration::from_secs(45)),
            _ => Some(Duration::from_secs(2)),
        }
    }
}

/// What a request knows of time.
#[derive(Clone, Copy, Debug)]
struct Clock {
    /// Milliseconds since the server started, on tokio's clock.
    elapsed_ms: u64,
    /// Wall-clock milliseconds at start, for timestamps only.
    anchor_ms: i64,
}

/// The time bucket a resource is in.
#[derive(Clone, Copy, Debug)]
struct Tick {
    /// The bucket's number; 0 is the one the server started in.
    bucket: u64,
    /// Length of a bucket.
    period_ms: u64,
    /// Each resource's buckets are shifted by a seeded phase so that they do
    /// not all turn over at the same instant.
    phase_ms: u64,
    /// [`Clock::anchor_ms`].
    anchor_ms: i64,
}

impl Tick {
    /// The bucket `action`'s resource is in at `clock`; always 0 for data
    /// that never changes.
    fn new(seed: u64, action: Action, clock: &Clock) -> Self {
        let Some(period) = action.change_every() else {
            return Self {
                bucket: 0,
                period_ms: 1,
                phase_ms: 0,
                anchor_ms: clock.anchor_ms,
            };
        };
        let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1);
        let phase_ms = hash(seed, action.resource(), &[]) % period_ms;
        Self {
            bucket: clock.elapsed_ms.saturating_add(phase_ms) / period_ms,
            period_ms,
            phase_ms,
            anchor_ms: clock.anchor_ms,
        }
    }

    /// Wall-clock milliseconds at which `bucket` began (buckets before the
    /// first lie before the server started, which gives data a history).
    fn wall_ms(&self, bucket: i64) -> i64 {
        let period = i64::try_from(self.period_ms).unwrap_or(i64::MAX);
        let phase = i64::try_from(self.phase_ms).unwrap_or(0);
        self.anchor_ms
            .saturating_add(bucket.saturating_mul(period))
            .saturating_sub(phase)
    }

    /// The current bucket, signed for arithmetic with past buckets.
    fn now_bucket(&self) -> i64 {
        i64::try_from(self.bucket).unwrap_or(i64::MAX)
    }
}

/// The version of item `index` that the current bucket shows, and the bucket
/// in which that version appeared. Items change every 1 to `max_span`
/// buckets, so a list evolves a few items at a time instead of being redrawn;
/// the first item changes every bucket, so the list as a whole does.
fn item_epoch(seed: u64, salt: &str, index: u64, tick: &Tick, max_span: u64) -> (u64, i64) {
    let h = hash(seed, salt, &[index, 0x5BA4]);
    let span = if index == 0 {
        1
    } else {
        1 + h % max_span.max(1)
    };
    let offset = (h >> 32) % span;
    let epoch = (tick.bucket + offset) / span;
    let since =
        i64::try_from(epoch * span).unwrap_or(i64::MAX) - i64::try_from(offset).unwrap_or(0);
    (epoch, since)
}

// ---------------------------------------------------------------------------
// The data
// ---------------------------------------------------------------------------

/// Builds the document of `action` for these parameters at this time.
fn render(action: Action, params: &Params, seed: u64, clock: &Clock) -> Result<Value, ApiError> {
    let tick = Tick::new(seed, action, clock);
    match action {
        Action::NodeTree => node_tree(params),
        Action::ProcessList => process_list(params, seed, &tick),
        Action::ProcessGet => process_get(params, seed, &tick),
        Action::RuleList => rule_list(params, seed, &tick),
        Action::RuleSearch => rule_search(params, seed, &tick),
        Action::OfficeList => office_list(params, seed, &tick),
        Action::WorkflowList => workflow_list(params, seed, &tick),
        Action::NotificationList => notification_list(params, seed, &tick),
        Action::SettingsGet => settings_get(params, seed, &tick),
        Action::SystemHealth => system_health(params, seed, &tick),
        Action::WorkflowStatus => workflow_status(params, seed, &tick),
    }
}

/// A process kind: name, owning department, and its steps as (step, role).
type ProcessKind = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The kinds of process; each exists once per region.
#[rustfmt::skip]
const PROCESS_KINDS: [ProcessKind; 16] = [
    ("Invoice approval", "Finance", &[("Submit invoice", "Requester"), ("Match purchase order", "Accounts payable"), ("Manager approval", "Manager"), ("Finance approval", "Controller"), ("Schedule payment", "Treasury")]),
    ("Employee onboarding", "HR", &[("Create profile", "HR partner"), ("Prepare contract", "HR partner"), ("Order equipment", "IT support"), ("Grant access", "IT support"), ("First-day briefing", "Manager")]),
    ("Purchase order", "Procurement", &[("Draft request", "Requester"), ("Budget check", "Controller"), ("Manager approval", "Manager"), ("Send to vendor", "Buyer"), ("Confirm delivery", "Requester")]),
    ("Contract review", "Legal", &[("Upload draft", "Requester"), ("Legal review", "Counsel"), ("Negotiate changes", "Counsel"), ("Sign-off", "Director")]),
    ("Expense reimbursement", "Finance", &[("Submit receipts", "Employee"), ("Policy check", "Accounts payable"), ("Manager approval", "Manager"), ("Pay out", "Treasury")]),
    ("Vendor registration", "Procurement", &[("Collect documents", "Buyer"), ("Compliance check", "Compliance"), ("Verify bank details", "Treasury"), ("Activate vendor", "Buyer")]),
    ("Leave request", "HR", &[("Submit request", "Employee"), ("Check balance", "HR partner"), ("Manager approval", "Manager")]),
    ("Customer refund", "Customer Care", &[("Open case", "Agent"), ("Verify purchase", "Agent"), ("Approve refund", "Team lead"), ("Issue credit note", "Accounts receivable"), ("Notify customer", "Agent")]),
    ("Access request", "IT", &[("Request access", "Employee"), ("Owner approval", "System owner"), ("Security review", "Security"), ("Provision account", "IT support")]),
    ("Budget planning", "Finance", &[("Collect estimates", "Controller"), ("Department review", "Director"), ("CFO review", "CFO"), ("Publish budget", "Controller")]),
    ("Incident response", "IT", &[("Report incident", "Anyone"), ("Triage", "On-call engineer"), ("Mitigate", "On-call engineer"), ("Post-mortem", "Incident lead"), ("Close incident", "Incident lead")]),
    ("Asset disposal", "Operations", &[("Request disposal", "Employee"), ("Value assessment", "Controller"), ("Approve disposal", "Manager"), ("Wipe data", "IT support"), ("Collect asset", "Facilities")]),
    ("Travel booking", "Operations", &[("Submit trip", "Employee"), ("Policy check", "Travel desk"), ("Manager approval", "Manager"), ("Book travel", "Travel desk")]),
    ("Price change", "Sales", &[("Propose price", "Account manager"), ("Margin analysis", "Controller"), ("Sales director approval", "Sales director"), ("Publish price list", "Sales operations")]),
    ("Credit check", "Sales", &[("Request credit line", "Account manager"), ("Score customer", "Credit analyst"), ("Risk review", "Risk officer"), ("Set limit", "Credit analyst")]),
    ("Quality audit", "Operations", &[("Plan audit", "Quality lead"), ("On-site audit", "Auditor"), ("Report findings", "Auditor"), ("Corrective actions", "Site manager"), ("Close audit", "Quality lead")]),
];

/// Sales regions, for processes and offices.
const REGIONS: [&str; 3] = ["EMEA", "Americas", "APAC"];

/// Offices: id, name, city, country, time zone, region.
#[rustfmt::skip]
const OFFICES: [(&str, &str, &str, &str, &str, &str); 10] = [
    ("OFF-BER", "Berlin HQ", "Berlin", "DE", "Europe/Berlin", "EMEA"),
    ("OFF-LON", "London", "London", "GB", "Europe/London", "EMEA"),
    ("OFF-PAR", "Paris", "Paris", "FR", "Europe/Paris", "EMEA"),
    ("OFF-NBO", "Nairobi", "Nairobi", "KE", "Africa/Nairobi", "EMEA"),
    ("OFF-NYC", "New York", "New York", "US", "America/New_York", "Americas"),
    ("OFF-TOR", "Toronto", "Toronto", "CA", "America/Toronto", "Americas"),
    ("OFF-SAO", "Sao Paulo", "Sao Paulo", "BR", "America/Sao_Paulo", "Americas"),
    ("OFF-SIN", "Singapore", "Singapore", "SG", "Asia/Singapore", "APAC"),
    ("OFF-TYO", "Tokyo", "Tokyo", "JP", "Asia/Tokyo", "APAC"),
    ("OFF-SYD", "Sydney", "Sydney", "AU", "Australia/Sydney", "APAC"),
];

/// Owners, assignees and users.
const PEOPLE: [&str; 16] = [
    "Amara Okafor",
    "Lukas Schmidt",
    "Mei Tanaka",
    "Sofia Rossi",
    "Daniel Cohen",
    "Priya Nair",
    "Jonas Berg",
    "Chloe Martin",
    "Mateo Garcia",
    "Hannah Mueller",
    "Kwame Mensah",
    "Elena Petrova",
    "Liam O'Brien",
    "Aiko Sato",
    "Omar Haddad",
    "Grace Kim",
];

/// Process priorities.
const PRIORITIES: [&str; 4] = ["low", "normal", "high", "critical"];

/// Number of processes: every kind in every region.
const PROCESS_COUNT: u64 = (PROCESS_KINDS.len() * REGIONS.len()) as u64;
/// Process ids are `PRC-1001` to `PRC-1048`, the same for every seed so that
/// a demo configuration can name them.
const PROCESS_ID_BASE: u64 = 1001;
/// Number of rules.
const RULE_COUNT: u64 = 36;
/// Rule ids are `RUL-2001` to `RUL-2036`, for every seed.
const RULE_ID_BASE: u64 = 2001;
/// Number of workflow instances.
const WORKFLOW_COUNT: u64 = 40;
/// Workflow ids are `WF-5001` to `WF-5040`, for every seed.
const WORKFLOW_ID_BASE: u64 = 5001;

/// `days` in milliseconds.
fn day_ms(days: u64) -> i64 {
    i64::try_from(days * 86_400_000).unwrap_or(i64::MAX)
}

/// Rounded to one decimal, as a dashboard would show it.
fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// One process as it is in the current bucket; the fields are those of its
/// JSON summary.
#[derive(Debug)]
struct Process {
    id: String,
    name: String,
    kind: usize,
    region: &'static str,
    office_id: &'static str,
    owner: &'static str,
    status: &'static str,
    priority: &'static str,
    open_cases: u64,
    sla_hours: u64,
    updated_at: i64,
    version: u64,
}

impl Process {
    /// Process number `index` (from 0) in the current bucket.
    fn at(index: u64, seed: u64, tick: &Tick) -> Self {
        let kind = usize::try_from(index).unwrap_or(0) % PROCESS_KINDS.len();
        let region =
            REGIONS[usize::try_from(index).unwrap_or(0) / PROCESS_KINDS.len() % REGIONS.len()];
        let (kind_name, ..) = PROCESS_KINDS[kind];
        // Who owns a process and where it runs rarely changes: seed only.
        let mut fixed = Rng::new(hash(seed, "process", &[index]));
        let offices: Vec<&(&str, &str, &str, &str, &str, &str)> =
            OFFICES.iter().filter(|o| o.5 == region).collect();
        let office_id = offices
            .get(fixed.below(offices.len() as u64) as usize)
            .map_or("OFF-BER", |o| o.0);
        let owner = *fixed.pick(&PEOPLE);
        let priority = *fixed.pick(&PRIORITIES);
        let sla_hours = *fixed.pick(&[8, 24, 48, 72, 120]);
        let (epoch, since) = item_epoch(seed, "process", index, tick, 4);
        let mut now = Rng::new(hash(seed, "process.epoch", &[index, epoch]));
        let status = *now.weighted(&[("active", 11), ("paused", 3), ("draft", 4), ("archived", 2)]);
        let open_cases = match status {
            "active" => 1 + now.below(40),
            "paused" => now.below(8),
            _ => 0,
        };
        Self {
            id: format!("PRC-{}", PROCESS_ID_BASE + index),
            name: format!("{kind_name} ({region})"),
            kind,
            region,
            office_id,
            owner,
            status,
            priority,
            open_cases,
            sla_hours,
            updated_at: tick.wall_ms(since),
            version: epoch + 1,
        }
    }

    /// Every process, in id order.
    fn all(seed: u64, tick: &Tick) -> Vec<Self> {
        (0..PROCESS_COUNT)
            .map(|i| Self::at(i, seed, tick))
            .collect()
    }

    /// The department that runs this kind of process.
    fn department(&self) -> &'static str {
        PROCESS_KINDS[self.kind].1
    }

    /// The steps, as (step, role).
    fn steps(&self) -> &'static [(&'static str, &'static str)] {
        PROCESS_KINDS[self.kind].2
    }

    /// The process as `process.list` shows it.
    fn summary(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "department": self.department(),
            "region": self.region,
            "office_id": self.office_id,
            "owner": self.owner,
            "status": self.status,
            "priority": self.priority,
            "open_cases": self.open_cases,
            "sla_hours": self.sla_hours,
            "step_count": self.steps().len(),
            "updated_at": self.updated_at,
            "version": self.version,
        })
    }
}

/// Accepts `PRC-1001`, `prc-1001` or `1001`.
fn parse_process_id(id: &str) -> Option<u64> {
    let digits = id
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("PRC-"))
        .map_or(id, |_| &id[4..]);
    let n = digits.parse::<u64>().ok()?;
    n.checked_sub(PROCESS_ID_BASE)
        .filter(|i| *i < PROCESS_COUNT)
}

/// `node.tree`: the navigation; `root` selects a subtree.
fn node_tree(params: &Params) -> Result<Value, ApiError> {
    // Navigation is the app's skeleton: the same for every seed and forever.
    let tree = json!([
        {"id": "home", "label": "Home", "path": "/", "action": null, "children": []},
        {"id": "processes", "label": "Processes", "path": "/processes", "action": "process.list", "children": [
            {"id": "processes.active", "label": "Active", "path": "/processes?status=active", "action": "process.list", "children": []},
            {"id": "processes.drafts", "label": "Drafts", "path": "/processes?status=draft", "action": "process.list", "children": []},
            {"id": "processes.archive", "label": "Archive", "path": "/processes?status=archived", "action": "process.list", "children": []},
        ]},
        {"id": "rules", "label": "Rules", "path": "/rules", "action": "rule.list", "children": [
            {"id": "rules.search", "label": "Search rules", "path": "/rules/search", "action": "rule.search", "children": []},
        ]},
        {"id": "offices", "label": "Offices", "path": "/offices", "action": "office.list", "children": []},
        {"id": "workflows", "label": "Workflows", "path": "/workflows", "action": "workflow.list", "children": [
            {"id": "workflows.live", "label": "Live status", "path": "/workflows/live", "action": "workflow_status", "children": []},
        ]},
        {"id": "notifications", "label": "Notifications", "path": "/notifications", "action": "notification.list", "children": []},
        {"id": "settings", "label": "Settings", "path": "/settings", "action": "settings.get", "children": []},
        {"id": "system", "label": "System", "path": "/system", "action": "system_health", "children": []},
    ]);
    let tree = tree.as_array().map_or(&[][..], Vec::as_slice);
    match params.text("root") {
        None => Ok(json!({"nodes": tree})),
        Some(root) => find_node(tree, &root)
            .map(|n| json!({"nodes": [n]}))
            .ok_or_else(|| ApiError::not_found("node", &root)),
    }
}

/// The node `id` and its children, searched depth first.
fn find_node(nodes: &[Value], id: &str) -> Option<Value> {
    nodes.iter().find_map(|n| {
        if n["id"] == id {
            Some(n.clone())
        } else {
            n["children"].as_array().and_then(|c| find_node(c, id))
        }
    })
}

/// `process.list`: filters `status`, `department`, `region` (each one value
/// or a list), `owner` and `q` (substrings); `page`, `page_size`.
fn process_list(params: &Params, seed: u64, tick: &Tick) -> Result<Value, ApiError> {
    let statuses = params.texts("status");
    let departments = params.texts("department");
    let regions = params.texts("region");
    let owner = params.text("owner").map(|s| s.to_lowercase());
    let q = params.text("q").map(|s| s.to_lowercase());
    let page = params.page()?;
    let items = Process::all(seed, tick)
        .into_iter()
        .filter(|p| matches_any(&statuses, p.status))
        .filter(|p| matches_any(&departments, p.department()))
        .filter(|p| matches_any(&regions, p.region))
        .filter(|p| {
            owner
                .as_ref()
                .is_none_or(|o| p.owner.to_lowercase().contains(o))
        })
        .filter(|p| q.as_ref().is_none_or(|q| p.name.to_lowercase().contains(q)))
        .map(|p| p.summary())
        .collect();
    let mut filters = Map::new();
    filters.insert("status".into(), json!(statuses));
    filters.insert("department".into(), json!(departments));
    filters.insert("region".into(), json!(regions));
    filters.insert("owner".into(), json!(owner));
    filters.insert("q".into(), json!(q));
    let mut extra = Map::new();
    extra.insert("filters".into(), Value::Object(filters));
    Ok(paginate(items, page, extra))
}

/// `process.get`: one process by `id`, with its steps and rules.
fn process_get(params: &Params, seed: u64, tick: &Tick) -> Result<Value, ApiError> {
    let id = params
        .text("id")
        .ok_or_else(|| ApiError::missing_param("id"))?;
    let index = parse_process_id(&id).ok_or_else(|| ApiError::not_found("process", &id))?;
    let process = Process::at(index, seed, tick);
    let mut fixed = Rng::new(hash(seed, "process.created", &[index]));
    let created_at = tick.anchor_ms - day_ms(30 + fixed.below(900));
    let steps: Vec<Value> = process
        .steps()
        .iter()
        .enumerate()
        .map(|(i, (name, role))| {
            json!({"position": i + 1, "name": name, "role": role, "sla_hours": 4 + fixed.below(44)})
        })
        .collect();
    let rules: Vec<String> = (0..RULE_COUNT)
        .filter(|j| rule_process(seed, *j) == index)
        .map(|j| format!("RUL-{}", RULE_ID_BASE + j))
        .collect();
    let mut doc = process.summary();
    if let Value::Object(map) = &mut doc {
        map.insert(
            "description".into(),
            json!(format!(
                "{} for the {} region, run by {} and owned by {}.",
                PROCESS_KINDS[process.kind].0,
                process.region,
                process.department(),
                process.owner
            )),
        );
        map.insert("created_at".into(), json!(created_at));
        map.insert("steps".into(), Value::Array(steps));
        map.insert("rules".into(), json!(rules));
    }
    Ok(doc)
}

/// Rule templates: kind, name, expression; `{amount}`, `{hours}` and
/// `{region}` are filled per rule.
#[rustfmt::skip]
const RULE_TEMPLATES: [(&str, &str, &str); 12] = [
    ("approval", "Manager approval above {amount} EUR", "amount > {amount}"),
    ("approval", "Dual sign-off for amounts over {amount} EUR", "amount >= {amount} && approvers.count < 2"),
    ("validation", "Reject submissions without a cost center", "cost_center == null"),
    ("validation", "Require an attachment for claims over {amount} EUR", "amount > {amount} && attachments.count == 0"),
    ("routing", "Route {region} requests to the regional lead", "region == \"{region}\""),
    ("escalation", "Escalate after {hours} h without response", "hours_open > {hours}"),
    ("escalation", "Notify the director when the SLA is breached", "sla.remaining_hours < 0"),
    ("notification", "Remind the assignee {hours} h before the due date", "due_in_hours <= {hours}"),
    ("validation", "Block vendors without a tax id", "vendor.tax_id == null"),
    ("routing", "Send high-priority items to the on-call queue", "priority in [\"high\", \"critical\"]"),
    ("approval", "Auto-approve below {amount} EUR", "amount < {amount}"),
    ("notification", "Weekly digest of open items", "schedule == \"weekly\""),
];

/// The index of the process rule `rule` belongs to.
fn rule_process(seed: u64, rule: u64) -> u64 {
    hash(seed, "rule.process", &[rule]) % PROCESS_COUNT
}

/// Rule number `index` (from 0) in the current bucket.
fn rule_at(index: u64, seed: u64, tick: &Tick) -> Value {
    let (kind, name, expression) =
        RULE_TEMPLATES[usize::try_from(index).unwrap_or(0) % RULE_TEMPLATES.len()];
    let process = rule_process(seed, index);
    let region =
        REGIONS[usize::try_from(process).unwrap_or(0) / PROCESS_KINDS.len() % REGIONS.len()];
    let mut fixed = Rng::new(hash(seed, "rule", &[index]));
    let amount = fixed
        .pick(&[500, 1000, 2500, 5000, 10000, 25000])
        .to_string();
    let hours = fixed.pick(&[4, 8, 24, 48, 72]).to_string();
    let fill = |s: &str| {
        s.replace("{amount}", &amount)
            .replace("{hours}", &hours)
            .replace("{region}", region)
    };
    let (epoch, since) = item_epoch(seed, "rule", index, tick, 6);
    let mut now = Rng::new(hash(seed, "rule.epoch", &[index, epoch]));
    json!({
        "id": format!("RUL-{}", RULE_ID_BASE + index),
        "name": fill(name),
        "kind": kind,
        "process_id": format!("PRC-{}", PROCESS_ID_BASE + process),
        "expression": fill(expression),
        "priority": 1 + fixed.below(10),
        "enabled": now.chance(0.85),
        "hits_last_24h": now.below(500),
        "updated_at": tick.wall_ms(since),
        "version": epoch + 1,
    })
}

/// Every rule, in id order.
fn rules(seed: u64, tick: &Tick) -> Vec<Value> {
    (0..RULE_COUNT).map(|j| rule_at(j, seed, tick)).collect()
}

/// `rule.list`: filters `process_id`, `kind`, `enabled`; `page`, `page_size`.
fn rule_list(params: &Params, seed: u64, tick: &Tick) -> Result<Value, ApiError> {
    let process_ids = params.texts("process_id");
    let kinds = params.texts("kind");
    let enabled = params.flag("enabled")?;
    let page = params.page()?;
    let items = rules(seed, tick)
        .into_iter()
        .filter(|r| matches_any(&process_ids, r["process_id"].as_str().unwrap_or_default()))
        .filter(|r| matches_any(&kinds, r["kind"].as_str().unwrap_or_default()))
        .filter(|r| enabled.is_none_or(|e| r["enabled"] == e))
        .collect();
    let mut extra = Map::new();
    extra.insert(
        "filters".into(),
        json!({"process_id": process_ids, "kind": kinds, "enabled": enabled}),
    );
    Ok(paginate(items, page, extra))
}

/// `rule.search`: the rules containing every word of `q` (required), best
/// first: a word in the name counts double. `page`, `page_size`.
fn rule_search(params: &Params, seed: u64, tick: &Tick) -> Result<Value, ApiError> {
    let q = params
        .text("q")
        .ok_or_else(|| ApiError::missing_param("q"))?;
    let terms: Vec<String> = q.split_whitespace().map(str::to_lowercase).collect();
    let page = params.page()?;
    let mut hits: Vec<(u64, Value)> = rules(seed, tick)
        .into_iter()
        .filter_map(|mut rule| {
            let field = |k: &str| rule[k].as_str().unwrap_or_default().to_lowercase();
            let name = field("name");
            let rest = [
                field("id"),
                field("kind"),
                field("expression"),
                field("process_id"),
            ]
            .join(" ");
            let mut score = 0;
            for term in &terms {
                let in_name = name.contains(term.as_str());
                if !in_name && !rest.contains(term.as_str()) {
                    return None;
                }
                score += if in_name { 2 } else { 1 };
            }
            if let Value::Object(map) = &mut rule {
                map.insert("score".into(), score.into());
            }
            Some((score, rule))
        })
        .collect();
    // Stable sort: equal scores keep id order.
    hits.sort_by_key(|(score, _)| std::cmp::Reverse(*score));
    let mut extra = Map::new();
    extra.insert("q".into(), json!(q));
    Ok(paginate(
        hits.into_iter().map(|(_, r)| r).collect(),
        page,
        extra,
    ))
}

/// `office.list`: filters `region`, `country`.
fn office_list(params: &Params, seed: u64, tick: &Tick) -> Result<Value, ApiError> {
    let regions = params.texts("region");
    let countries = params.texts("country");
    // Where a process runs depends on the seed only, so this tick serves as
    // well as the processes' own.
    let processes = Process::all(seed, tick);
    let items: Vec<Value> = OFFICES
        .iter()
        .enumerate()
        .filter(|(_, o)| matches_any(&regions, o.5) && matches_any(&countries, o.3))
        .map(|(i, &(id, name, city, country, timezone, region))| {
            let i = i as u64;
            let mut fixed = Rng::new(hash(seed, "office", &[i]));
            let base_headcount = 40 + fixed.below(400);
            let (epoch, since) = item_epoch(seed, "office", i, tick, 4);
            let mut now = Rng::new(hash(seed, "office.epoch", &[i, epoch]));
            let hosted = processes.iter().filter(|p| p.office_id == id).count();
            json!({
                "id": id,
                "name": name,
                "city": city,
                "country": country,
                "timezone": timezone,
                "region": region,
                "headcount": base_headcount + now.below(12),
                "processes": hosted,
                "open_cases": now.below(60),
                "status": if now.chance(0.05) { "closed_today" } else { "open" },
                "updated_at": tick.wall_ms(since),
                "version": epoch + 1,
            })
        })
        .collect();
    Ok(json!({"items": items, "total": items.len()}))
}

/// Workflow instance number `index` (from 0) in the current bucket.
fn workflow_at(index: u64, seed: u64, tick: &Tick) -> Value {
    let mut fixed = Rng::new(hash(seed, "workflow", &[index]));
    let process = fixed.below(PROCESS_COUNT);
    let kind = usize::try_from(process).unwrap_or(0) % PROCESS_KINDS.len();
    let (kind_name, _, steps) = PROCESS_KINDS[kind];
    let started_days_ago = 1 + fixed.below(20);
    let reference = format!("REQ-{:05}", 10_000 + fixed.below(90_000));
    let (epoch, since) = item_epoch(seed, "workflow", index, tick, 3);
    let mut now = Rng::new(hash(seed, "workflow.epoch", &[index, epoch]));
    let state = *now.weighted(&[
        ("running", 8),
        ("waiting", 4),
        ("completed", 5),
        ("failed", 1),
        ("cancelled", 1),
    ]);
    let step = match state {
        "completed" => steps.len(),
        _ => 1 + now.below(steps.len() as u64) as usize,
    };
    let (step_name, role) = steps[step.saturating_sub(1).min(steps.len() - 1)];
    let started_at = tick.anchor_ms - day_ms(started_days_ago);
    json!({
        "id": format!("WF-{}", WORKFLOW_ID_BASE + index),
        "process_id": format!("PRC-{}", PROCESS_ID_BASE + process),
        "title": format!("{kind_name} {reference}"),
        "reference": reference,
        "state": state,
        "step": step,
        "step_count": steps.len(),
        "current_step": step_name,
        "assignee": now.pick(&PEOPLE),
        "assignee_role": role,
        "started_at": started_at,
        "due_at": started_at + day_ms(started_days_ago + 1 + fixed.below(10)),
        "updated_at": tick.wall_ms(since),
        "version": epoch + 1,
    })
}

/// `workflow.list`: filters `state`, `process_id`, `assignee`; `page`,
/// `page_size`.
fn workflow_list(params: &Params, seed: u64, tick: &Tick) -> Result<Value, ApiError> {
    let states = params.texts("state");
    let process_ids = params.texts("process_id");
    let assignee = params.text("assignee").map(|s| s.to_lowercase());
    let page = params.page()?;
    let items = (0..WORKFLOW_COUNT)
        .map(|k| workflow_at(k, seed, tick))
        .filter(|w| matches_any(&states, w["state"].as_str().unwrap_or_default()))
        .filter(|w| matches_any(&process_ids, w["process_id"].as_str().unwrap_or_default()))
        .filter(|w| {
            assignee.as_ref().is_none_or(|a| {
                w["assignee"]
                    .as_str()
                    .unwrap_or_default()
                    .to_lowercase()
                    .contains(a)
            })
        })
        .collect();
    let mut extra = Map::new();
    extra.insert(
        "filters".into(),
        json!({"state": states, "process_id": process_ids, "assignee": assignee}),
    );
    Ok(paginate(items, page, extra))
}

/// Notification kinds: kind, severity, title, message (`{process}`,
/// `{person}` and `{workflow}` are filled in).
#[rustfmt::skip]
const NOTIFICATION_KINDS: [(&str, &str, &str, &str); 6] = [
    ("approval_request", "info", "Approval needed", "{person} asks you to approve {workflow} in {process}."),
    ("comment", "info", "New comment", "{person} commented on {workflow}."),
    ("mention", "info", "You were mentioned", "{person} mentioned you in {process}."),
    ("sla_warning", "warning", "SLA at risk", "{workflow} in {process} is due in less than 4 hours."),
    ("workflow_failed", "critical", "Workflow failed", "{workflow} in {process} stopped at an automatic step."),
    ("system", "info", "Scheduled maintenance", "Reporting will be read-only tonight from 02:00 to 03:00."),
];

/// How many past notifications the list is drawn from.
const NOTIFICATION_HISTORY: i64 = 100;

/// `notification.list`: one new notification per bucket, newest first;
/// `unread`, `kind` and `limit` (default 20).
fn notification_list(params: &Params, seed: u64, tick: &Tick) -> Result<Value, ApiError> {
    let unread_only = params.flag("unread")?.unwrap_or(false);
    let kinds = params.texts("kind");
    let limit = params.number("limit", 20, 1, 100)?;
    let now = tick.now_bucket();
    let mut unread_count = 0_u64;
    let mut matching = Vec::new();
    // One notification per bucket, newest first.
    for n in (now - NOTIFICATION_HISTORY + 1..=now).rev() {
        // Buckets before the start are negative; the wrapped value is as good
        // a key as any.
        let n_key = n as u64;
        let mut rng = Rng::new(hash(seed, "notification", &[n_key]));
        let (kind, severity, title, message) = *rng.pick(&NOTIFICATION_KINDS);
        let process = rng.below(PROCESS_COUNT);
        let kind_name =
            PROCESS_KINDS[usize::try_from(process).unwrap_or(0) % PROCESS_KINDS.len()].0;
        let person = *rng.pick(&PEOPLE);
        let message = message
            .replace("{person}", person)
            .replace("{process}", kind_name)
            .replace(
                "{workflow}",
                &format!("WF-{}", WORKFLOW_ID_BASE + rng.below(WORKFLOW_COUNT)),
            );
        // People read notifications a few buckets after they arrive.
        let read = now - n >= 2 + i64::try_from(rng.below(10)).unwrap_or(0);
        if !read {
            unread_count += 1;
        }
        if (unread_only && read) || !matches_any(&kinds, kind) {
            continue;
        }
        matching.push(json!({
            "id": format!("NTF-{}", 100_000 + n),
            "kind": kind,
            "severity": severity,
            "title": title,
            "message": message,
            "process_id": format!("PRC-{}", PROCESS_ID_BASE + process),
            "created_at": tick.wall_ms(n),
            "read": read,
        }));
    }
    let total = matching.len();
    matching.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(json!({
        "items": matching,
        "total": total,
        "limit": limit,
        "unread_count": unread_count,
    }))
}

/// `settings.get`: the settings of `user` (default `u-demo`).
fn settings_get(params: &Params, seed: u64, tick: &Tick) -> Result<Value, ApiError> {
    let user = params.text("user").unwrap_or_else(|| "u-demo".to_owned());
    let user_key = fnv1a(user.as_bytes());
    // Each setting changes on its own rhythm, so every bucket changes a few
    // of them rather than all.
    let setting = |slot: u64| {
        let (epoch, _) = item_epoch(seed, "settings", slot + user_key % 7, tick, 5);
        Rng::new(hash(seed, "settings.epoch", &[user_key, slot, epoch]))
    };
    let mut fixed = Rng::new(hash(seed, "settings.user", &[user_key]));
    let mut pick = setting(8);
    let mut favorites: Vec<String> = Vec::with_capacity(3);
    while favorites.len() < 3 {
        let id = format!("PRC-{}", PROCESS_ID_BASE + pick.below(PROCESS_COUNT));
        if !favorites.contains(&id) {
            favorites.push(id);
        }
    }
    Ok(json!({
        "user_id": user,
        "display_name": fixed.pick(&PEOPLE),
        "theme": setting(0).pick(&["light", "dark", "system"]),
        "language": setting(1).pick(&["en", "de", "fr", "es", "ja"]),
        "timezone": setting(2).pick(&OFFICES).4,
        "date_format": setting(3).pick(&["YYYY-MM-DD", "DD.MM.YYYY", "MM/DD/YYYY"]),
        "page_size": setting(4).pick(&[10, 20, 50]),
        "notifications": {
            "email": setting(5).chance(0.7),
            "push": setting(6).chance(0.5),
            "digest": setting(7).pick(&["daily", "weekly", "off"]),
        },
        "default_office": fixed.pick(&OFFICES).0,
        "favorite_processes": favorites,
        "revision": tick.bucket + 1,
        "updated_at": tick.wall_ms(tick.now_bucket()),
    }))
}

/// Services in the health report, with their typical latency in ms.
const SERVICES: [(&str, f64); 5] = [
    ("api", 12.0),
    ("database", 4.0),
    ("cache", 0.8),
    ("search", 25.0),
    ("mail", 60.0),
];

/// `system_health`: machine and service metrics; `service` filters the
/// services.
fn system_health(params: &Params, seed: u64, tick: &Tick) -> Result<Value, ApiError> {
    let wanted = params.texts("service");
    let b = tick.bucket as f64;
    let mut rng = Rng::new(hash(seed, "system_health", &[tick.bucket]));
    // Slow waves plus noise look like a real machine's graphs.
    let cpu = (38.0 + 22.0 * (b * 0.07).sin() + rng.range(-6.0, 6.0)).clamp(1.0, 99.0);
    let memory = (57.0 + 9.0 * (b * 0.013).sin() + rng.range(-2.0, 2.0)).clamp(5.0, 98.0);
    let memory_total_mb = 16_384.0;
    let spike = if rng.chance(0.05) { 300.0 } else { 0.0 };
    let queue = (40.0 + 60.0 * (b * 0.11).sin() + rng.range(-15.0, 15.0) + spike)
        .max(0.0)
        .round() as u64;
    let workers_total = 16_u64;
    let workers_busy = ((cpu / 100.0) * workers_total as f64).round() as u64;
    let status = if cpu > 85.0 || queue > 250 {
        "degraded"
    } else {
        "ok"
    };
    let services: Vec<Value> = SERVICES
        .iter()
        .filter(|(name, _)| matches_any(&wanted, name))
        .map(|&(name, base)| {
            let degraded = rng.chance(0.03);
            let latency = base * rng.range(0.7, 1.6) * if degraded { 8.0 } else { 1.0 };
            json!({
                "name": name,
                "status": if degraded { "degraded" } else { "up" },
                "latency_ms": round1(latency),
            })
        })
        .collect();
    let uptime_base = hash(seed, "uptime", &[]) % (30 * 86_400);
    Ok(json!({
        "status": status,
        "cpu_percent": round1(cpu),
        "memory_percent": round1(memory),
        "memory_used_mb": (memory_total_mb * memory / 100.0).round() as u64,
        "memory_total_mb": memory_total_mb as u64,
        "queue_depth": queue,
        "workers": {"busy": workers_busy, "total": workers_total},
        "requests_per_second": round1(120.0 + cpu * 4.0 + rng.range(-20.0, 20.0)),
        "error_rate_percent": round1(rng.range(0.0, 1.5)),
        "uptime_seconds": uptime_base + tick.bucket * tick.period_ms / 1000,
        "services": services,
        "sampled_at": tick.wall_ms(tick.now_bucket()),
    }))
}

/// Live runs shown at once by `workflow_status`.
const LIVE_RUNS: u64 = 8;

/// Buckets per run of a `workflow_status` slot: enough for the longest
/// process (5 steps × 4 ticks) plus a few ticks showing it completed.
const RUN_TICKS: u64 = 24;

/// `workflow_status`: the live runs and the queue; filters `process_id`,
/// `state` (`running` or `completed`).
fn workflow_status(params: &Params, seed: u64, tick: &Tick) -> Result<Value, ApiError> {
    let process_ids = params.texts("process_id");
    let states = params.texts("state");
    let mut runs = Vec::new();
    for slot in 0..LIVE_RUNS {
        // Each slot runs workflows one after another, one cycle of RUN_TICKS
        // buckets each: the run advances a step every few ticks and then
        // shows "completed" until the slot starts its next run.
        let position = tick.bucket + hash(seed, "run.offset", &[slot]) % RUN_TICKS;
        let cycle = position / RUN_TICKS;
        let mut rng = Rng::new(hash(seed, "run", &[slot, cycle]));
        let process = rng.below(PROCESS_COUNT);
        let steps = PROCESS_KINDS[usize::try_from(process).unwrap_or(0) % PROCESS_KINDS.len()].2;
        let ticks_per_step = 2 + rng.below(3);
        let work = steps.len() as u64 * ticks_per_step;
        let at = position % RUN_TICKS;
        let completed = at >= work;
        let current = usize::try_from(at / ticks_per_step)
            .unwrap_or(usize::MAX)
            .min(steps.len() - 1);
        let state = if completed { "completed" } else { "running" };
        let process_id = format!("PRC-{}", PROCESS_ID_BASE + process);
        if !matches_any(&process_ids, &process_id) || !matches_any(&states, state) {
            continue;
        }
        let step_states: Vec<Value> = steps
            .iter()
            .enumerate()
            .map(|(i, (name, role))| {
                let step_state = if completed || i < current {
                    "done"
                } else if i == current {
                    "in_progress"
                } else {
                    "pending"
                };
                json!({"position": i + 1, "name": name, "role": role, "state": step_state})
            })
            .collect();
        let remaining_ticks = work.saturating_sub(at);
        runs.push(json!({
            "id": format!("RUN-{}", 7000 + cycle * LIVE_RUNS + slot),
            "process_id": process_id,
            "process_name": PROCESS_KINDS[usize::try_from(process).unwrap_or(0) % PROCESS_KINDS.len()].0,
            "state": state,
            "current_step": if completed { Value::Null } else { json!(steps[current].0) },
            "progress_percent": (at.min(work) * 100) / work.max(1),
            "steps": step_states,
            "started_at": tick.wall_ms(tick.now_bucket() - i64::try_from(at).unwrap_or(0)),
            "eta_seconds": remaining_ticks * tick.period_ms / 1000,
        }));
    }
    let mut rng = Rng::new(hash(seed, "workflow_status", &[tick.bucket]));
    Ok(json!({
        "runs": runs,
        "queued": rng.below(30),
        "completed_last_hour": 40 + rng.below(60),
        "sampled_at": tick.wall_ms(tick.now_bucket()),
    }))
}

// ---------------------------------------------------------------------------
// Pseudo-random numbers
// ---------------------------------------------------------------------------

/// The splitmix64 finalizer: a fast, well-mixed 64-bit hash of a 64-bit input.
const fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Combines two words into a well-mixed one.
fn mix(a: u64, b: u64) -> u64 {
    splitmix(a ^ splitmix(b))
}

/// FNV-1a: stable across runs and platforms, unlike std's `DefaultHasher`,
/// which the determinism promise needs.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

/// A hash of the seed, a salt naming what is drawn, and some numbers.
fn hash(seed: u64, salt: &str, parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(mix(seed, fnv1a(salt.as_bytes())), |h, &p| mix(h, p))
}

/// splitmix64 as a generator: tiny, fast and good enough for a simulation.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    /// A generator whose stream is fixed by `seed`.
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix(self.0)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1_u64 << 53) as f64
    }

    /// Uniform in `[0, n)`; 0 when `n` is 0. The modulo bias is below 2^-50
    /// for the small `n` used here.
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in `[lo, hi)`.
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// `true` with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// One of `items`, uniformly; `items` must not be empty.
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let i = self.below(items.len() as u64);
        &items[usize::try_from(i).unwrap_or(0)]
    }

    /// One of `items`, in proportion to its weight; `items` must not be
    /// empty.
    fn weighted<'a, T>(&mut self, items: &'a [(T, u64)]) -> &'a T {
        let total: u64 = items.iter().map(|(_, w)| w).sum();
        let mut draw = self.below(total);
        for (item, weight) in items {
            if draw < *weight {
                return item;
            }
            draw -= weight;
        }
        &items[items.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const ANY_PORT: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));

    /// No failures, no outages, no latency: only what a test turns on.
    fn quiet(seed: u64) -> DemoConfig {
        DemoConfig {
            seed,
            failure_rate: 0.0,
            outage_every: Duration::ZERO,
            outage_for: Duration::ZERO,
            latency: (Duration::ZERO, Duration::ZERO),
        }
    }

    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        fn etag(&self) -> String {
            self.header("etag").expect("an ETag header").to_owned()
        }

        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).expect("a JSON body")
        }
    }

    /// Reads one HTTP/1.1 response framed by `Content-Length`, which is how
    /// this server frames every response.
    async fn read_reply(stream: &mut TcpStream) -> io::Result<Reply> {
        let mut buf = Vec::new();
        let mut chunk = [0_u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or(io::ErrorKind::InvalidData)?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(Reply {
            status,
            headers,
            body: buf[head_end..head_end + length].to_vec(),
        })
    }

    async fn send(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> io::Result<Reply> {
        let mut stream = TcpStream::connect(addr).await?;
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(body.unwrap_or_default());
        stream.write_all(request.as_bytes()).await?;
        read_reply(&mut stream).await
    }

    async fn post(addr: SocketAddr, action: &str, body: &str) -> Reply {
        send(addr, "POST", &format!("/actions/{action}"), &[], Some(body))
            .await
            .expect("a reply")
    }

    async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
        send(addr, "GET", path, headers, None)
            .await
            .expect("a reply")
    }

    async fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn at(elapsed: Duration) -> Clock {
        Clock {
            elapsed_ms: elapsed.as_millis() as u64,
            anchor_ms: 1_764_370_000_000,
        }
    }

    fn params(value: Value) -> Params {
        match value {
            Value::Object(map) => Params(map),
            other => panic!("not an object: {other}"),
        }
    }

    fn doc(action: &str, p: Value, seed: u64, elapsed: Duration) -> Value {
        let action = Action::parse(action).expect("a known action");
        render(action, &params(p), seed, &at(elapsed)).expect("a document")
    }

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
            etag_of(&reply.body),
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

    /// Real time: the outage machinery is about sockets, not data.
    #[tokio::test]
    async fn outage_refuses_connections_then_serves_again_on_the_same_port() {
        let began = std::time::Instant::now();
        let config = DemoConfig {
            outage_every: Duration::from_millis(300),
            outage_for: Duration::from_millis(200),
            ..quiet(8)
        };
        let up = DemoUpstream::start(ANY_PORT, config).await.expect("bind");
        let addr = up.addr();
        assert!(!up.is_in_outage());
        assert_eq!(get(addr, "/health", &[]).await.status, 200);

        // A pooled keep-alive connection, idle when the outage starts.
        let mut pooled = TcpStream::connect(addr).await.expect("connect");
        pooled
            .write_all(b"GET /health HTTP/1.1\r\nHost: demo\r\n\r\n")
            .await
            .expect("write");
        assert_eq!(read_reply(&mut pooled).await.expect("reply").status, 200);

        wait_until("the outage", Duration::from_secs(1), || up.is_in_outage()).await;
        let refused = TcpStream::connect(addr)
            .await
            .expect_err("the port is closed");
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        let mut byte = [0_u8; 1];
        let closed = tokio::time::timeout(Duration::from_millis(150), pooled.read(&mut byte))
            .await
            .expect("the idle connection is closed, not left open");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

        wait_until("the end of the outage", Duration::from_secs(1), || {
            !up.is_in_outage()
        })
        .await;
        let reply = get(addr, "/actions/system_health", &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(up.addr(), addr);
        up.shutdown().await;
        assert!(
            began.elapsed() < Duration::from_secs(2),
            "{:?}",
            began.elapsed()
        );
    }

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

    #[test]
    fn demo_actions_are_the_dispatch_table() {
        let names: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
        assert_eq!(names, DEMO_ACTIONS);
        assert_eq!(Action::ProcessList.resource(), "process");
        assert_eq!(Action::SystemHealth.resource(), "system_health");
    }

    #[test]
    fn documents_depend_on_seed_params_and_bucket_only() {
        let t = Duration::from_secs(1000);
        let p = json!({"status": "active"});
        assert_eq!(
            doc("process.list", p.clone(), 1, t),
            doc("process.list", p.clone(), 1, t)
        );
        assert_ne!(
            doc("process.list", p.clone(), 1, t),
            doc("process.list", p, 2, t)
        );
        // Within one bucket of system_health (2 s), nothing moves.
        let tick = Tick::new(1, Action::SystemHealth, &at(t));
        let bucket_start = tick.bucket * tick.period_ms - tick.phase_ms;
        let early = Duration::from_millis(bucket_start);
        let late = Duration::from_millis(bucket_start + tick.period_ms - 1);
        assert_eq!(
            doc("system_health", json!({}), 1, early),
            doc("system_health", json!({}), 1, late)
        );
        assert_ne!(
            doc("system_health", json!({}), 1, late),
            doc(
                "system_health",
                json!({}),
                1,
                late + Duration::from_millis(1)
            )
        );
    }

    #[test]
    fn params_shape_the_content() {
        let t = Duration::from_secs(42);
        let page1 = doc("process.list", json!({"page": 1, "page_size": 10}), 3, t);
        let page2 = doc("process.list", json!({"page": 2, "page_size": 10}), 3, t);
        assert_eq!(page1["total"], 48);
        assert_eq!(page1["total_pages"], 5);
        assert_ne!(page1["items"][0]["id"], page2["items"][0]["id"]);
        assert_eq!(page2["items"][0]["id"], "PRC-1011");

        let one = doc("process.get", json!({"id": "PRC-1007"}), 3, t);
        assert_eq!(one["id"], "PRC-1007");
        assert!(one["steps"].as_array().is_some_and(|s| s.len() >= 3));
        assert_eq!(doc("process.get", json!({"id": 1007}), 3, t), one);

        let found = doc("rule.search", json!({"q": "approval"}), 3, t);
        let items = found["items"].as_array().expect("items");
        assert!(!items.is_empty());
        assert!(
            items
                .iter()
                .all(|r| r.to_string().to_lowercase().contains("approv"))
        );
        let none = doc("rule.search", json!({"q": "zebra"}), 3, t);
        assert_eq!(none["total"], 0);

        let emea = doc("office.list", json!({"region": "EMEA"}), 3, t);
        assert!(
            emea["items"]
                .as_array()
                .expect("items")
                .iter()
                .all(|o| o["region"] == "EMEA")
        );
        assert_ne!(
            doc("settings.get", json!({"user": "u-1"}), 3, t),
            doc("settings.get", json!({"user": "u-2"}), 3, t)
        );
        let unread = doc(
            "notification.list",
            json!({"unread": "true", "limit": 5}),
            3,
            t,
        );
        assert!(
            unread["items"]
                .as_array()
                .expect("items")
                .iter()
                .all(|n| n["read"] == false)
        );
        let sub = doc("node.tree", json!({"root": "rules"}), 3, t);
        assert_eq!(sub["nodes"][0]["id"], "rules");
    }

    #[test]
    fn every_action_renders_at_any_time() {
        let with_params = |action: &str| match action {
            "process.get" => json!({"id": "PRC-1048"}),
            "rule.search" => json!({"q": "eur"}),
            _ => json!({}),
        };
        let day = 86_400;
        for secs in [0, 1, 59, 3_599, 7 * day, 365 * day, 10 * 365 * day] {
            for action in DEMO_ACTIONS {
                let value = doc(action, with_params(action), 11, Duration::from_secs(secs));
                assert!(value.is_object(), "{action} at {secs}s");
            }
        }
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

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let tag = "\"00ff\"";
        assert!(if_none_match_matches("\"00ff\"", tag));
        assert!(if_none_match_matches("W/\"00ff\"", tag));
        assert!(if_none_match_matches("\"aa\", \"00ff\"", tag));
        assert!(if_none_match_matches("*", tag));
        assert!(!if_none_match_matches("\"00fe\"", tag));
        assert!(!if_none_match_matches("00ff", tag));
    }
}
