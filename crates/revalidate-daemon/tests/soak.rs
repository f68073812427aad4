//! The soak: the real daemon on loopback, for `SOAK_SECS` (default 60; the
//! documented long run is 600), under steady load and a seeded chaos script
//! (`SOAK_SEED`, printed at the start so that a failure can be replayed):
//!
//! - an upstream this test controls, which keeps one counter per item and
//!   so knows every value that ever existed; its outages close the port,
//!   its failure windows answer 30 % of requests with a 500;
//! - readers, a writer (the `item.bump` mutation through the daemon's app
//!   protocol, which invalidates `item.get`), invalidation storms through
//!   the admin API, SSE clients (`/v1/events`, `/v1/live`) joining and
//!   leaving;
//! - a SIGKILL of the daemon and a restart on the same store at a period.
//!
//! Checked: no answer of the daemon's own is a 5xx (only `upstream_failed`
//! and `offline`, which say the upstream failed); no value served is one the
//! upstream never had; every value announced on `/v1/events` before the
//! store's `flushes` went up by two is back after the SIGKILL (query present,
//! version not older, served from the store, value not older); the daemon's
//! counters equal what the upstream counted; fetches in flight drop to zero
//! once the load stops and every query picks up the upstream's next value;
//! the SSE subscribers go back to zero; the RSS stays within its band.
//!
//! `scripts/test soak` runs it (`SOAK_SECS=600 scripts/test soak` is the
//! long run); by hand:
//! `SOAK_SECS=600 cargo test -p revalidate-daemon --test soak -- --ignored --nocapture`.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use parking_lot::Mutex;
use serde_json::{Value, json};
use support::{Daemon, SseReader};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;

/// Items the load reads and writes (`item.get?id=0` … `id=47`).
const KEYS: u64 = 48;
/// The admin token the daemon reads from `SOAK_ADMIN_TOKEN`.
const TOKEN: &str = "soak-admin-token";
/// The upstream's failure rate in a failure window, per mille.
const FAILING: u64 = 300;
/// A daemon process's first seconds, left out of the RSS band.
const WARM_UP: Duration = Duration::from_secs(5);
/// How far above the first process's settled RSS any later sample may go.
const RSS_BAND: u64 = 24 * 1024 * 1024;

// --- a seeded generator ------------------------------------------------------

/// SplitMix64: small, seedable, good enough to draw a chaos script.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, permille: u64) -> bool {
        self.below(1000) < permille
    }
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
    fn fork(&mut self) -> Rng {
        Rng(self.next())
    }
}

// --- the upstream ------------------------------------------------------------

/// What the upstream has done, counted as it answers.
struct Books {
    values: Mutex<HashMap<String, u64>>,
    fail_permille: AtomicU64,
    rng: Mutex<Rng>,
    in_flight: AtomicUsize,
    received: AtomicU64,
    reads_ok: AtomicU64,
    reads_not_modified: AtomicU64,
    reads_failed: AtomicU64,
    mutations: AtomicU64,
    mutations_applied: AtomicU64,
    mutations_failed: AtomicU64,
}

/// A copy of the upstream's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    received: u64,
    reads_ok: u64,
    reads_not_modified: u64,
    reads_failed: u64,
    mutations: u64,
    mutations_applied: u64,
    mutations_failed: u64,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            received: self.received - o.received,
            reads_ok: self.reads_ok - o.reads_ok,
            reads_not_modified: self.reads_not_modified - o.reads_not_modified,
            reads_failed: self.reads_failed - o.reads_failed,
            mutations: self.mutations - o.mutations,
            mutations_applied: self.mutations_applied - o.mutations_applied,
            mutations_failed: self.mutations_failed - o.mutations_failed,
        }
    }
}

struct Busy(Arc<Books>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, SeqCst);
    }
}

impl Books {
    fn enter(self: &Arc<Self>) -> Busy {
        self.received.fetch_add(1, SeqCst);
        self.in_flight.fetch_add(1, SeqCst);
        Busy(self.clone())
    }
    fn fails(&self) -> bool {
        let p = self.fail_permille.load(SeqCst);
        p > 0 && self.rng.lock().chance(p)
    }
}

fn id_of(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    v["id"].as_str().unwrap_or("").to_owned()
}

fn injected() -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, r#"{"injected":true}"#).into_response()
}

async fn health(State(b): State<Arc<Books>>) -> Response {
    let _busy = b.enter();
    (StatusCode::OK, r#"{"status":"ok"}"#).into_response()
}

/// `item.get`: the item's counter, with an ETag (a 304 when it matches).
async fn read(State(b): State<Arc<Books>>, headers: HeaderMap, body: String) -> Response {
    let _busy = b.enter();
    if b.fails() {
        b.reads_failed.fetch_add(1, SeqCst);
        return injected();
    }
    let id = id_of(&body);
    let n = b.values.lock().get(&id).copied().unwrap_or(0);
    let etag = format!("\"{id}-{n}\"");
    if headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        b.reads_not_modified.fetch_add(1, SeqCst);
        return (StatusCode::NOT_MODIFIED, [("etag", etag)]).into_response();
    }
    b.reads_ok.fetch_add(1, SeqCst);
    let body = json!({ "id": id, "n": n }).to_string();
    (
        StatusCode::OK,
        [
            ("content-type", "application/json".to_owned()),
            ("etag", etag),
        ],
        body,
    )
        .into_response()
}

/// `item.bump`, the mutation: the item's counter goes up by one.
async fn bump(State(b): State<Arc<Books>>, body: String) -> Response {
    let _busy = b.enter();
    b.mutations.fetch_add(1, SeqCst);
    if b.fails() {
        b.mutations_failed.fetch_add(1, SeqCst);
        return injected();
    }
    let id = id_of(&body);
    let n = {
        let mut values = b.values.lock();
        let n = values.entry(id.clone()).or_default();
        *n += 1;
        *n
    };
    b.mutations_applied.fetch_add(1, SeqCst);
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        json!({ "id": id, "n": n }).to_string(),
    )
        .into_response()
}

async fn elsewhere(State(b): State<Arc<Books>>) -> Response {
    let _busy = b.enter();
    StatusCode::NOT_FOUND.into_response()
}

fn listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The upstream on loopback; an outage closes its port.
struct Upstream {
    addr: SocketAddr,
    books: Arc<Books>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl Upstream {
    async fn start(rng: Rng) -> Arc<Self> {
        let l = listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let up = Arc::new(Self {
            addr: l.local_addr().unwrap(),
            books: Arc::new(Books {
                values: Mutex::default(),
                fail_permille: AtomicU64::new(0),
                rng: Mutex::new(rng),
                in_flight: AtomicUsize::new(0),
                received: AtomicU64::new(0),
                reads_ok: AtomicU64::new(0),
                reads_not_modified: AtomicU64::new(0),
                reads_failed: AtomicU64::new(0),
                mutations: AtomicU64::new(0),
                mutations_applied: AtomicU64::new(0),
                mutations_failed: AtomicU64::new(0),
            }),
            stop: Mutex::new(None),
        });
        up.serve(l);
        up
    }

    fn serve(&self, l: TcpListener) {
        let (tx, rx) = oneshot::channel();
        *self.stop.lock() = Some(tx);
        let app = Router::new()
            .route("/health", any(health))
            .route("/actions/item.get", post(read))
            .route("/actions/item.bump", post(bump))
            .fallback(elsewhere)
            .with_state(self.books.clone());
        tokio::spawn(async move {
            let _ = axum::serve(l, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes the port: connections are refused until `restore`.
    async fn take_down(&self) {
        if let Some(tx) = self.stop.lock().take() {
            let _ = tx.send(());
        }
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(self.addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the upstream would not go down");
    }

    /// Listens again on the same port.
    async fn restore(&self) {
        for _ in 0..500 {
            if let Ok(l) = listener(self.addr) {
                self.serve(l);
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the upstream could not listen again on {}", self.addr);
    }

    fn set_failing(&self, permille: u64) {
        self.books.fail_permille.store(permille, SeqCst);
    }

    fn value(&self, id: &str) -> u64 {
        self.books.values.lock().get(id).copied().unwrap_or(0)
    }

    /// Every item's counter up by one, behind the daemon's back.
    fn bump_all(&self) -> HashMap<String, u64> {
        let mut values = self.books.values.lock();
        for i in 0..KEYS {
            *values.entry(i.to_string()).or_default() += 1;
        }
        values.clone()
    }

    fn counts(&self) -> Counts {
        let b = &self.books;
        Counts {
            received: b.received.load(SeqCst),
            reads_ok: b.reads_ok.load(SeqCst),
            reads_not_modified: b.reads_not_modified.load(SeqCst),
            reads_failed: b.reads_failed.load(SeqCst),
            mutations: b.mutations.load(SeqCst),
            mutations_applied: b.mutations_applied.load(SeqCst),
            mutations_failed: b.mutations_failed.load(SeqCst),
        }
    }

    /// Waits until no request is being answered and none arrives for
    /// 200 ms: what a killed daemon had sent has been counted.
    async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = self.counts();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = self.counts();
            if now == last && self.books.in_flight.load(SeqCst) == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "the upstream never settled");
            last = now;
        }
    }
}

// --- the run's shared state ------------------------------------------------------

#[derive(Default)]
struct Tally {
    reads: AtomicU64,
    reads_ok: AtomicU64,
    reads_upstream_failed: AtomicU64,
    reads_offline: AtomicU64,
    refused_while_restarting: AtomicU64,
    mutations: AtomicU64,
    mutations_acked: AtomicU64,
    mutations_upstream_failed: AtomicU64,
    mutations_no_answer: AtomicU64,
    mutations_cut_by_kill: AtomicU64,
    invalidations: AtomicU64,
    storms: AtomicU64,
    outages: AtomicU64,
    failure_windows: AtomicU64,
    kills: AtomicU64,
    sse_joins: AtomicU64,
    sse_messages: AtomicU64,
    live_rejected: AtomicU64,
    change_events: AtomicU64,
    durable_checked: AtomicU64,
    lost: AtomicU64,
}

struct Run {
    up: Arc<Upstream>,
    /// The daemon's address and its process's number (0, 1, … per restart).
    target: Mutex<(SocketAddr, u64)>,
    pid: AtomicU32,
    born: Mutex<Instant>,
    /// Set from just before a SIGKILL until the new process is checked.
    down: AtomicBool,
    stop: AtomicBool,
    tally: Tally,
    /// Per item, the highest version and value announced on `/v1/events`.
    seen: Mutex<HashMap<String, (u64, u64)>>,
    /// (process, age, VmRSS bytes).
    rss: Mutex<Vec<(u64, Duration, u64)>>,
    problems: Mutex<Vec<String>>,
}

impl Run {
    fn problem(&self, what: String) {
        eprintln!("soak: PROBLEM: {what}");
        self.problems.lock().push(what);
    }

    /// A transport error is expected only around a SIGKILL.
    fn transport_error(&self, epoch: u64, what: &str, e: &reqwest::Error) -> bool {
        if self.down.load(SeqCst) || self.target.lock().1 != epoch {
            self.tally.refused_while_restarting.fetch_add(1, SeqCst);
            true
        } else {
            self.problem(format!("{what}: {e} while the daemon is up"));
            false
        }
    }

    fn target(&self) -> (SocketAddr, u64) {
        *self.target.lock()
    }
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn json_of(http: &reqwest::Client, url: &str) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// An error answer of the upstream's, not the daemon's own: its code.
fn upstream_error(status: u16, body: &[u8]) -> Option<&'static str> {
    let v: Value = serde_json::from_slice(body).ok()?;
    match (status, v["error"].as_str()?) {
        (502 | 504, "upstream_failed") => Some("upstream_failed"),
        (503, "offline") => Some("offline"),
        _ => None,
    }
}

// --- the load ------------------------------------------------------------------

async fn reader(run: Arc<Run>, mut rng: Rng) {
    let http = http();
    while !run.stop.load(SeqCst) {
        if run.down.load(SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let (addr, epoch) = run.target();
        let id = rng.below(KEYS).to_string();
        run.tally.reads.fetch_add(1, SeqCst);
        let url = format!("http://{addr}/v1/resources/item.get?id={id}");
        let answer = match http.get(&url).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                r.bytes().await.map(|b| (status, b))
            }
            Err(e) => Err(e),
        };
        match answer {
            Err(e) => {
                run.transport_error(epoch, "a read", &e);
            }
            Ok((200, body)) => {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let n = v["n"].as_u64();
                match n {
                    Some(n) if v["id"] == id.as_str() && n <= run.up.value(&id) => {
                        run.tally.reads_ok.fetch_add(1, SeqCst);
                    }
                    _ => run.problem(format!(
                        "item {id}: served {v}, the upstream has {}",
                        run.up.value(&id)
                    )),
                }
            }
            Ok((status, body)) => match upstream_error(status, &body) {
                Some("offline") => {
                    run.tally.reads_offline.fetch_add(1, SeqCst);
                }
                Some(_) => {
                    run.tally.reads_upstream_failed.fetch_add(1, SeqCst);
                }
                None => run.problem(format!(
                    "read of item {id}: {status} {}",
                    String::from_utf8_lossy(&body)
                )),
            },
        }
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
}

/// The writer: `item.bump` through the daemon's app protocol.
async fn writer(run: Arc<Run>, mut rng: Rng) {
    let http = http();
    while !run.stop.load(SeqCst) {
        if run.down.load(SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let (addr, epoch) = run.target();
        let id = rng.below(KEYS).to_string();
        run.tally.mutations.fetch_add(1, SeqCst);
        let answer = match http
            .post(format!("http://{addr}/actions/item.bump"))
            .json(&json!({ "id": id }))
            .send()
            .await
        {
            Ok(r) => {
                let status = r.status().as_u16();
                r.bytes().await.map(|b| (status, b))
            }
            Err(e) => Err(e),
        };
        match answer {
            Err(e) => {
                if run.transport_error(epoch, "a mutation", &e) {
                    run.tally.mutations_cut_by_kill.fetch_add(1, SeqCst);
                }
            }
            Ok((200, body)) => {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                match v["n"].as_u64() {
                    Some(n) if n >= 1 && n <= run.up.value(&id) => {
                        run.tally.mutations_acked.fetch_add(1, SeqCst);
                    }
                    _ => run.problem(format!("mutation of item {id}: answered {v}")),
                }
            }
            Ok((500, body)) if body.as_ref() == br#"{"injected":true}"# => {
                run.tally.mutations_upstream_failed.fetch_add(1, SeqCst);
            }
            Ok((status, body)) => match upstream_error(status, &body) {
                Some(_) => {
                    run.tally.mutations_no_answer.fetch_add(1, SeqCst);
                }
                None => run.problem(format!(
                    "mutation of item {id}: {status} {}",
                    String::from_utf8_lossy(&body)
                )),
            },
        }
        tokio::time::sleep(rng.ms(10, 50)).await;
    }
}

/// SSE clients joining and leaving: `/v1/events` (filtered or not,
/// resuming or not) and `/v1/live`, each for 0.1–2 s.
async fn churner(run: Arc<Run>, mut rng: Rng) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    while !run.stop.load(SeqCst) {
        if run.down.load(SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let (addr, epoch) = run.target();
        let live = rng.chance(300);
        let path = if live {
            "/v1/live".to_owned()
        } else {
            match rng.below(3) {
                0 => "/v1/events".to_owned(),
                1 => "/v1/events?action=item.get".to_owned(),
                _ => format!("/v1/events?include=data&last_event_id={}", rng.below(2000)),
            }
        };
        let stay = rng.ms(100, 2000);
        let opened = tokio::time::timeout(
            Duration::from_secs(10),
            http.get(format!("http://{addr}{path}")).send(),
        )
        .await;
        let mut r = match opened {
            Err(_) => {
                run.problem(format!("{path}: no answer within 10 s"));
                continue;
            }
            Ok(Err(e)) => {
                run.transport_error(epoch, &path, &e);
                continue;
            }
            Ok(Ok(r)) => r,
        };
        let status = r.status().as_u16();
        if live && status == 503 {
            let body = r.bytes().await.unwrap_or_default();
            if String::from_utf8_lossy(&body).contains("too_many_subscribers") {
                run.tally.live_rejected.fetch_add(1, SeqCst);
            } else {
                run.problem(format!("{path}: 503 {}", String::from_utf8_lossy(&body)));
            }
            continue;
        }
        if status != 200 {
            run.problem(format!("{path}: {status}"));
            continue;
        }
        run.tally.sse_joins.fetch_add(1, SeqCst);
        let leave = tokio::time::Instant::now() + stay;
        loop {
            match tokio::time::timeout_at(leave, r.chunk()).await {
                Err(_) => break, // time to leave: the stream is dropped
                Ok(Ok(Some(chunk))) => {
                    let n = String::from_utf8_lossy(&chunk).matches("\ndata:").count();
                    run.tally.sse_messages.fetch_add(n as u64, SeqCst);
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    if !(run.down.load(SeqCst) || run.target().1 != epoch) {
                        run.problem(format!("{path}: the stream ended while the daemon is up"));
                    }
                    break;
                }
            }
        }
    }
}

/// One process's change feed, with data: what the daemon has announced.
async fn watcher(run: Arc<Run>, url: String, epoch: u64) {
    let mut sse = SseReader::open(&url, None).await;
    let mut last_id = 0;
    loop {
        let asked = Instant::now();
        let Some(ev) = sse.next(Duration::from_secs(1)).await else {
            if run.target().1 != epoch || asked.elapsed() < Duration::from_millis(900) {
                return; // the stream ended (a SIGKILL or the end)
            }
            continue;
        };
        if let Some(id) = ev.id {
            if id <= last_id {
                run.problem(format!("event id {id} after {last_id}"));
            }
            last_id = id;
        }
        if ev.event != "change" {
            continue;
        }
        run.tally.change_events.fetch_add(1, SeqCst);
        let d = &ev.data;
        match (
            d["params"]["id"].as_str(),
            d["version"].as_u64(),
            d["data"]["n"].as_u64(),
        ) {
            (Some(id), Some(version), Some(n)) => {
                let mut seen = run.seen.lock();
                let e = seen.entry(id.to_owned()).or_default();
                *e = (e.0.max(version), e.1.max(n));
            }
            _ => run.problem(format!("a change event without its data: {d}")),
        }
    }
}

async fn sampler(run: Arc<Run>) {
    while !run.stop.load(SeqCst) {
        if !run.down.load(SeqCst) {
            let (pid, epoch, age) = (
                run.pid.load(SeqCst),
                run.target().1,
                run.born.lock().elapsed(),
            );
            if let Some(rss) = vm_rss(pid) {
                run.rss.lock().push((epoch, age, rss));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `VmRSS` of `/proc/<pid>/status`, in bytes.
fn vm_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

// --- chaos -----------------------------------------------------------------------

fn daemon_config(base: &str, store: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_token_env = "SOAK_ADMIN_TOKEN"

[upstream]
base_url = "{base}"
timeout = "1s"
health_path = "/health"
probe_interval = "250ms"

[refresh]
check_interval = "100ms"
max_concurrent_refreshes = 4
retry_interval = "200ms"
max_retries = 1
inactive_after = "1h"
fetch_timeout = "2s"
jitter = 0.0

[staleness]
item = "1s"

[actions."item.get"]

[actions."item.bump"]
kind = "mutation"
invalidates = ["item.get"]

[store]
path = "{}"
flush_every = "200ms"
"#,
        store.display()
    )
}

/// An invalidation storm: 40 invalidations of every shape in about a second.
async fn storm(run: &Run, rng: &mut Rng) {
    let http = http();
    let (addr, _) = run.target();
    for _ in 0..40 {
        let body = match rng.below(4) {
            0 => json!({ "all": true }),
            1 => json!({ "action": "item.get" }),
            2 => json!({ "resource": "item" }),
            _ => json!({ "action": "item.get", "params": { "id": rng.below(KEYS).to_string() } }),
        };
        let r = http
            .post(format!("http://{addr}/v1/invalidate"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 200 => {
                let v: Value = r.json().await.unwrap_or(Value::Null);
                if v["invalidated"].as_u64().is_none() {
                    run.problem(format!("invalidate {body}: answered {v}"));
                }
                run.tally.invalidations.fetch_add(1, SeqCst);
            }
            Ok(r) => run.problem(format!("invalidate {body}: {}", r.status())),
            Err(e) => run.problem(format!("invalidate {body}: {e}")),
        }
        tokio::time::sleep(rng.ms(0, 50)).await;
    }
    run.tally.storms.fetch_add(1, SeqCst);
}

/// Waits for what the daemon has announced to be durable, SIGKILLs it,
/// starts a new one on the same store and checks that nothing durable was
/// lost. Returns the new process and the upstream's counts at its start.
async fn kill_and_restart(
    run: &Arc<Run>,
    daemon: Daemon,
    cfg: &str,
    dir: &Path,
) -> (Daemon, Counts) {
    let http = http();
    // What was announced before `flushes` is read is durable once it has
    // gone up by two.
    let durable = run.seen.lock().clone();
    let flushes = json_of(&http, &daemon.url("/v1/stats")).await["store"]["flushes"]
        .as_u64()
        .expect("the store's figures");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = json_of(&http, &daemon.url("/v1/stats")).await;
        if s["store"]["flushes"].as_u64().unwrap() >= flushes + 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the store's flushes did not go up by two within 20 s: {}",
            s["store"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    run.down.store(true, SeqCst);
    drop(daemon); // SIGKILL, and waits for it
    run.tally.kills.fetch_add(1, SeqCst);
    run.up.settle().await;
    let base = run.up.counts();
    let d = Daemon::start_with(cfg, Some(dir), &[("SOAK_ADMIN_TOKEN", TOKEN)]);

    // Before any read: every durable item is there, not older.
    let queries = json_of(&http, &d.url("/v1/queries?limit=1000")).await;
    let versions: HashMap<String, u64> = queries["queries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|q| {
            Some((
                q["params"]["id"].as_str()?.to_owned(),
                q["version"].as_u64()?,
            ))
        })
        .collect();
    for (id, (version, n)) in &durable {
        run.tally.durable_checked.fetch_add(1, SeqCst);
        let lost = |why: String| {
            run.tally.lost.fetch_add(1, SeqCst);
            run.problem(format!("item {id} (version {version}, n {n}) lost: {why}"));
        };
        match versions.get(id) {
            None => lost("not restored".into()),
            Some(v) if v < version => lost(format!("restored at version {v}")),
            Some(_) => {}
        }
        let r = http
            .get(d.url(&format!("/v1/resources/item.get?id={id}")))
            .send()
            .await
            .unwrap();
        let cache = r
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if cache.contains("miss") {
            lost(format!("a miss after the restart ({cache})"));
        } else if body["n"].as_u64().is_none_or(|got| got < *n) {
            lost(format!("served {body} after the restart"));
        }
    }

    let epoch = run.target().1 + 1;
    *run.born.lock() = Instant::now();
    run.pid.store(d.pid(), SeqCst);
    *run.target.lock() = (d.addr, epoch);
    run.down.store(false, SeqCst);
    tokio::spawn(watcher(
        run.clone(),
        d.url("/v1/events?include=data"),
        epoch,
    ));
    (d, base)
}

fn metric(text: &str, outcome: &str) -> u64 {
    let name = format!("revalidate_refreshes_total{{resource=\"item\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(name.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the soak runs for SOAK_SECS: scripts/test soak"]
async fn soak() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .map(|s| s.parse().expect("SOAK_SECS is a number of seconds"))
        .unwrap_or(60);
    assert!(secs >= 30, "SOAK_SECS: at least 30");
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .map(|s| s.parse().expect("SOAK_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("soak: SOAK_SECS={secs} SOAK_SEED={seed} (replay with both)");
    let started = Instant::now();
    let final_phase = Duration::from_secs((secs / 10).max(10));
    let chaos_end = started + Duration::from_secs(secs) - final_phase;
    let kill_every = Duration::from_secs((secs / 10).max(15));

    let mut rng = Rng(seed);
    let up = Upstream::start(rng.fork()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(&up.base_url(), &dir.path().join("cache.redb"));
    let mut daemon = Daemon::start_with(&cfg, Some(dir.path()), &[("SOAK_ADMIN_TOKEN", TOKEN)]);
    let run = Arc::new(Run {
        up: up.clone(),
        target: Mutex::new((daemon.addr, 0)),
        pid: AtomicU32::new(daemon.pid()),
        born: Mutex::new(Instant::now()),
        down: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        tally: Tally::default(),
        seen: Mutex::default(),
        rss: Mutex::default(),
        problems: Mutex::default(),
    });
    tokio::spawn(watcher(
        run.clone(),
        daemon.url("/v1/events?include=data"),
        0,
    ));
    let mut load = Vec::new();
    for _ in 0..4 {
        load.push(tokio::spawn(reader(run.clone(), rng.fork())));
    }
    load.push(tokio::spawn(writer(run.clone(), rng.fork())));
    for _ in 0..2 {
        load.push(tokio::spawn(churner(run.clone(), rng.fork())));
    }
    let sampling = tokio::spawn(sampler(run.clone()));

    // The chaos script.
    let mut next_kill = Instant::now() + kill_every;
    while Instant::now() < chaos_end {
        if Instant::now() >= next_kill {
            eprintln!("soak: {:?}: SIGKILL and restart", started.elapsed());
            (daemon, _) = kill_and_restart(&run, daemon, &cfg, dir.path()).await;
            next_kill = Instant::now() + kill_every;
            continue;
        }
        let left = chaos_end.saturating_duration_since(Instant::now());
        match rng.below(100) {
            0..25 => {
                let d = rng.ms(500, 2500).min(left);
                eprintln!("soak: {:?}: upstream outage for {d:?}", started.elapsed());
                up.take_down().await;
                run.tally.outages.fetch_add(1, SeqCst);
                tokio::time::sleep(d).await;
                up.restore().await;
            }
            25..55 => {
                let d = rng.ms(1000, 4000).min(left);
                eprintln!("soak: {:?}: 30 % failures for {d:?}", started.elapsed());
                up.set_failing(FAILING);
                run.tally.failure_windows.fetch_add(1, SeqCst);
                tokio::time::sleep(d).await;
                up.set_failing(0);
            }
            55..75 => {
                eprintln!("soak: {:?}: invalidation storm", started.elapsed());
                storm(&run, &mut rng).await;
            }
            _ => tokio::time::sleep(rng.ms(500, 2000).min(left)).await,
        }
    }

    // The last process: the counters' oracle covers all of its life. No
    // outage (refused connections are not counted upstream), failures for
    // half of it.
    eprintln!(
        "soak: {:?}: last SIGKILL and restart, then failures, a storm, calm",
        started.elapsed()
    );
    let base;
    (daemon, base) = kill_and_restart(&run, daemon, &cfg, dir.path()).await;
    up.set_failing(FAILING);
    run.tally.failure_windows.fetch_add(1, SeqCst);
    tokio::time::sleep(final_phase / 2).await;
    up.set_failing(0);
    storm(&run, &mut rng).await;
    tokio::time::sleep(final_phase / 2).await;
    run.stop.store(true, SeqCst);
    for task in load {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("a load task did not stop within 30 s")
            .expect("a load task panicked");
    }
    sampling.await.unwrap();
    eprintln!("soak: {:?}: load stopped; checking", started.elapsed());
    let http = http();
    let stats = async || json_of(&http, &daemon.url("/v1/stats")).await;

    // No stuck fetch: nothing in flight once the load stops, and every
    // query picks up the upstream's next value.
    let deadline = Instant::now() + Duration::from_secs(15);
    while stats().await["in_flight"] != 0 {
        assert!(
            Instant::now() < deadline,
            "fetches still in flight 15 s after the load stopped: {}",
            stats().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let want = up.bump_all();
    let queries = json_of(&http, &daemon.url("/v1/queries?limit=1000")).await;
    let ids: Vec<String> = queries["queries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|q| q["params"]["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids.len() as u64, KEYS, "every item is cached: {queries}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let behind: Vec<&String> = {
            let seen = run.seen.lock();
            ids.iter()
                .filter(|id| seen.get(*id).is_none_or(|(_, n)| *n < want[*id]))
                .collect()
        };
        if behind.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not refreshed within 20 s of the upstream's change: items {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &ids {
        let v = json_of(
            &http,
            &daemon.url(&format!("/v1/resources/item.get?id={id}")),
        )
        .await;
        assert_eq!(v["n"].as_u64(), Some(want[id]), "item {id}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats().await["live"]["subscribers"] != 0 {
        assert!(
            Instant::now() < deadline,
            "live subscribers left: {}",
            stats().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The daemon's counters equal the upstream's, over the last process's
    // life: read twice around the upstream's, equal both times (so nothing
    // was under way in between).
    let deadline = Instant::now() + Duration::from_secs(15);
    let (s, u) = loop {
        let before = stats().await;
        let u = up.counts() - base;
        let s = stats().await;
        let fields = [
            "upstream_requests",
            "successful_refreshes",
            "failed_refreshes",
            "not_modified",
        ];
        if fields.iter().all(|f| before[f] == s[f]) && s["in_flight"] == 0 {
            break (s, u);
        }
        assert!(Instant::now() < deadline, "the counters never settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let n = |v: &Value| v.as_u64().unwrap();
    assert_eq!(
        n(&s["upstream_requests"]),
        u.received,
        "requests the daemon counted vs the upstream: {s} {u:?}"
    );
    assert_eq!(
        n(&s["successful_refreshes"]),
        u.reads_ok + u.reads_not_modified,
        "successful fetches vs the upstream's 200s and 304s: {s} {u:?}"
    );
    assert_eq!(n(&s["not_modified"]), u.reads_not_modified, "{s} {u:?}");
    assert_eq!(
        n(&s["failed_refreshes"]),
        u.reads_failed,
        "failed fetches vs the upstream's 500s: {s} {u:?}"
    );
    let metrics = http
        .get(daemon.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        (
            metric(&metrics, "success"),
            metric(&metrics, "not_modified"),
            metric(&metrics, "failure")
        ),
        (
            n(&s["successful_refreshes"]) - n(&s["not_modified"]),
            n(&s["not_modified"]),
            n(&s["failed_refreshes"])
        ),
        "/metrics vs /v1/stats"
    );

    // The writes, over the whole run: the daemon forwards each once, never
    // retried; every acknowledged one was applied.
    let t = &run.tally;
    let total = up.counts();
    let get = |a: &AtomicU64| a.load(SeqCst);
    assert!(
        total.mutations <= get(&t.mutations),
        "the upstream got {} mutations, {} were sent: one was retried",
        total.mutations,
        get(&t.mutations)
    );
    assert!(get(&t.mutations_acked) <= total.mutations_applied);
    assert!(
        total.mutations_applied <= get(&t.mutations_acked) + get(&t.mutations_cut_by_kill),
        "applied {} mutations, acknowledged {} (+{} cut by a SIGKILL)",
        total.mutations_applied,
        get(&t.mutations_acked),
        get(&t.mutations_cut_by_kill)
    );
    assert!(get(&t.mutations_upstream_failed) <= total.mutations_failed);

    // RSS: after its warm-up, no process goes above the first one's
    // settled size (its largest sample of its first 10 s after warm-up)
    // by more than the band.
    let rss = run.rss.lock().clone();
    let settled: Vec<u64> = rss
        .iter()
        .filter(|(e, age, _)| *e == 0 && *age >= WARM_UP && *age < WARM_UP * 3)
        .map(|s| s.2)
        .collect();
    let baseline = *settled
        .iter()
        .max()
        .expect("RSS samples of the first process");
    let after: Vec<u64> = rss.iter().filter(|s| s.1 >= WARM_UP).map(|s| s.2).collect();
    let (lo, hi) = (*after.iter().min().unwrap(), *after.iter().max().unwrap());
    let mib = |b: u64| b as f64 / 1024.0 / 1024.0;

    // A graceful stop still works (and flushes).
    assert!(
        daemon.stop().success(),
        "the last process did not stop cleanly"
    );

    let problems = run.problems.lock().clone();
    eprintln!(
        "soak figures: {secs} s, seed {seed}\n\
         \x20 reads: {} ({} ok, {} upstream_failed, {} offline)\n\
         \x20 mutations: {} sent, {} acknowledged, {} failed upstream, {} without answer, {} cut by a SIGKILL\n\
         \x20 upstream: {} requests, {} injected 500s, {} outages, {} failure windows\n\
         \x20 invalidations: {} in {} storms; SSE: {} joins, {} messages, {} change events, {} /v1/live refused\n\
         \x20 SIGKILLs: {}; durable values checked after them: {}; lost: {}\n\
         \x20 requests refused around a SIGKILL: {}\n\
         \x20 RSS after warm-up: {:.1}–{:.1} MiB over {} samples (baseline {:.1} MiB, band +{:.0} MiB)\n\
         \x20 last process: {} upstream requests = {} counted upstream; {} fetches ok, {} failed\n\
         \x20 problems: {}",
        get(&t.reads),
        get(&t.reads_ok),
        get(&t.reads_upstream_failed),
        get(&t.reads_offline),
        get(&t.mutations),
        get(&t.mutations_acked),
        get(&t.mutations_upstream_failed),
        get(&t.mutations_no_answer),
        get(&t.mutations_cut_by_kill),
        total.received,
        total.reads_failed + total.mutations_failed,
        get(&t.outages),
        get(&t.failure_windows),
        get(&t.invalidations),
        get(&t.storms),
        get(&t.sse_joins),
        get(&t.sse_messages),
        get(&t.change_events),
        get(&t.live_rejected),
        get(&t.kills),
        get(&t.durable_checked),
        get(&t.lost),
        get(&t.refused_while_restarting),
        mib(lo),
        mib(hi),
        after.len(),
        mib(baseline),
        mib(RSS_BAND),
        n(&s["upstream_requests"]),
        u.received,
        n(&s["successful_refreshes"]),
        n(&s["failed_refreshes"]),
        problems.len(),
    );
    assert!(
        problems.is_empty(),
        "{} problems: {problems:#?}",
        problems.len()
    );
    assert_eq!(get(&t.lost), 0);
    assert!(get(&t.durable_checked) > 0, "no durable value was checked");
    assert!(
        hi <= baseline + RSS_BAND,
        "RSS went to {:.1} MiB, above the band (baseline {:.1} MiB + {:.0} MiB)",
        mib(hi),
        mib(baseline),
        mib(RSS_BAND)
    );
}
