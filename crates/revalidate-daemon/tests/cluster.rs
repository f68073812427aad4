//! Several `revalidate serve` processes, one Redis: the acceptance checks of
//! "several nodes, one Redis", end to end. Each test starts its own
//! `redis-server` (a free loopback port, a temporary directory, stopped on
//! drop; under `CI` a missing binary fails the test, elsewhere the test is
//! skipped with the reason printed), real daemons, and a counting upstream
//! that knows which node asked (each node sends its name in `X-Node`) and
//! when it answered. Every wait for the engine is a poll with a deadline.
//!
//! The scenarios that measure time take turns (`SERIAL`): the machine has two
//! cores, and each scenario runs three daemons and a Redis.
//!
//! `bench_several_nodes` (ignored) is the benchmark behind `BENCHMARKS.md`'s
//! "Several nodes on Redis"; `bench/cluster.sh` runs it on a release build.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use parking_lot::Mutex;
use serde_json::{Value, json};
use support::{Proc, SseReader};

/// The scenarios that measure time run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `q`-quantile (0..=1) of `xs`, nearest rank.
fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

// --- Redis -------------------------------------------------------------------

/// A `redis-server` of the test's own, without persistence; killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    conf: Option<std::path::PathBuf>,
    args: Vec<String>,
}

impl Redis {
    /// One on a free port, or `None` (the reason printed) where
    /// `redis-server` is missing outside CI; under CI that fails the test.
    fn start() -> Option<Self> {
        Self::start_with(free_port(), None, &[])
    }

    /// On `port`, with a configuration file's text (directives a command
    /// line cannot give, like `rename-command`) and more arguments.
    fn start_with(port: u16, conf: Option<&str>, args: &[&str]) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let conf = conf.map(|text| {
            let path = dir.path().join("redis.conf");
            std::fs::write(&path, text).unwrap();
            path
        });
        let mut redis = Self {
            child: None,
            port,
            dir,
            conf,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        redis.spawn().then_some(redis)
    }

    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        if let Some(conf) = &self.conf {
            cmd.arg(conf);
        }
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let why = format!(
                    "redis-server cannot be run ({e}); `apt-get install redis-server` (scripts/test installs it)"
                );
                assert!(std::env::var_os("CI").is_none(), "{why}");
                eprintln!("skipped: {why}");
                return false;
            }
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL: Redis loses everything it held.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port, empty.
    fn restart(&mut self) {
        self.kill();
        assert!(self.spawn());
    }

    /// `redis-cli --raw` on this server: its output.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .expect("redis-cli (from redis-tools, which redis-server depends on)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

// --- The counting upstream ---------------------------------------------------

/// A request the upstream received.
#[derive(Clone, Debug)]
struct Arrival {
    key: String,
    node: String,
    at: Instant,
}

/// An answer it sent: its value `n`, when the request arrived and when the
/// answer went out.
#[derive(Clone, Debug)]
struct Answered {
    key: String,
    node: String,
    n: u64,
    arrived: Instant,
    at: Instant,
}

#[derive(Default)]
struct SourceState {
    arrivals: Mutex<Vec<Arrival>>,
    answers: Mutex<Vec<Answered>>,
    values: Mutex<HashMap<String, u64>>,
    /// Every answer a new value (`n` counts the key's requests) with the
    /// instant it was answered (`at`, Unix ms); else `n` changes only when
    /// bumped.
    changing: AtomicBool,
    /// The next request of a key waits this long before its answer.
    slow: Mutex<HashMap<String, Duration>>,
}

/// An upstream on loopback serving `POST /actions/{action}` with
/// `{"key", "n"[, "at"]}` for the parameter `id`, recording every request.
struct Source {
    addr: SocketAddr,
    state: Arc<SourceState>,
    task: tokio::task::AbortHandle,
}

impl Source {
    async fn start(changing: bool) -> Self {
        let state = Arc::new(SourceState::default());
        state.changing.store(changing, SeqCst);
        let app = axum::Router::new()
            .route("/health", get(|| async { "{\"status\":\"ok\"}" }))
            .route("/actions/{action}", post(source_action))
            .with_state(state.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        })
        .abort_handle();
        Self { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn answers(&self) -> Vec<Answered> {
        self.state.answers.lock().clone()
    }

    fn arrivals(&self) -> Vec<Arrival> {
        self.state.arrivals.lock().clone()
    }

    /// Answers for `key` (by any node) sent after `since`.
    fn fetches_since(&self, key: &str, since: Instant) -> Vec<Answered> {
        self.answers()
            .into_iter()
            .filter(|a| a.key == key && a.at >= since)
            .collect()
    }

    fn fetches(&self, key: &str) -> usize {
        self.answers().iter().filter(|a| a.key == key).count()
    }

    /// The next request of `key` is answered after `d`.
    fn slow_next(&self, key: &str, d: Duration) {
        self.state.slow.lock().insert(key.to_owned(), d);
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn source_action(
    State(s): State<Arc<SourceState>>,
    UrlPath(action): UrlPath<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let node = headers
        .get("x-node")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned();
    let params: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let id = params.get("id").and_then(Value::as_str).unwrap_or("");
    let key = format!("{action}/{id}");
    let arrived = Instant::now();
    s.arrivals.lock().push(Arrival {
        key: key.clone(),
        node: node.clone(),
        at: arrived,
    });
    let changing = s.changing.load(SeqCst);
    let n = {
        let mut values = s.values.lock();
        let n = values.entry(key.clone()).or_default();
        if changing {
            *n += 1;
        }
        *n
    };
    let slow = s.slow.lock().remove(&key);
    if let Some(d) = slow {
        tokio::time::sleep(d).await;
    }
    let body = if changing {
        json!({ "key": key, "n": n, "at": unix_ms() })
    } else {
        json!({ "key": key, "n": n })
    };
    s.answers.lock().push(Answered {
        key,
        node,
        n,
        arrived,
        at: Instant::now(),
    });
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The upstream's name of the test key `id` (the daemon's action `item.get`
/// with `?id=…`).
fn key(id: u32) -> String {
    format!("item.get/{id}")
}

// --- Nodes ---------------------------------------------------------------------

/// How the nodes of a scenario are set up.
#[derive(Clone, Debug)]
struct Setup {
    staleness: &'static str,
    check_interval: &'static str,
    lease_ttl: &'static str,
    prefix: &'static str,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            staleness: "1s",
            check_interval: "100ms",
            lease_ttl: "2s",
            prefix: "shop",
        }
    }
}

/// A daemon's configuration: `name` goes upstream in `X-Node`; with
/// `redis_url`, a `[cluster]` table.
fn node_config(source: &str, name: &str, setup: &Setup, redis_url: Option<&str>) -> String {
    let mut config = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[upstream]
base_url = "{source}"
timeout = "10s"
health_path = "/health"
probe_interval = "1s"
headers = {{ "X-Node" = "{name}" }}

[refresh]
check_interval = "{check}"
max_concurrent_refreshes = 16
retry_interval = "300ms"
inactive_after = "1h"
fetch_timeout = "10s"

[staleness]
item = "{staleness}"

[actions."item.get"]
"#,
        check = setup.check_interval,
        staleness = setup.staleness,
    );
    if let Some(url) = redis_url {
        config.push_str(&format!(
            r#"
[cluster]
redis_url = "{url}"
node_id = "{name}"
lease_ttl = "{lease}"
key_prefix = "{prefix}"
"#,
            lease = setup.lease_ttl,
            prefix = setup.prefix,
        ));
    }
    config
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// What one read of a node answered.
#[derive(Clone, Debug)]
struct Read {
    version: u64,
    n: u64,
    /// How old the value was when read (ms): from the upstream's answer
    /// (its `at`, a changing source) to the read's answer.
    age_ms: Option<f64>,
    cache_status: String,
}

/// What the tasks that read a node need: cheap to clone.
#[derive(Clone)]
struct Reader {
    name: String,
    base: String,
    http: reqwest::Client,
}

impl Reader {
    async fn read(&self, id: u32) -> Result<Read, String> {
        let url = format!("{}/v1/resources/item.get?id={id}", self.base);
        let r = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("{}: GET {url}: {e}", self.name))?;
        let status = r.status().as_u16();
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let version = header("x-revalidate-version").parse().unwrap_or(0);
        let cache_status = header("cache-status");
        let text = r.text().await.map_err(|e| format!("{}: {e}", self.name))?;
        if status != 200 {
            return Err(format!("{}: GET {url}: {status} {text}", self.name));
        }
        let body: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        let now = unix_ms();
        Ok(Read {
            version,
            n: body["n"].as_u64().unwrap_or(0),
            age_ms: body["at"].as_u64().map(|at| now.saturating_sub(at) as f64),
            cache_status,
        })
    }

    async fn json(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn text(&self, path: &str) -> String {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn cluster(&self) -> Value {
        self.json("/v1/cluster").await
    }
}

/// A running `revalidate serve`.
struct Node {
    name: String,
    proc: Proc,
    reader: Reader,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(name: &str, config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let proc = Proc::serve(config, dir.path(), env).listening();
        let reader = Reader {
            name: name.to_owned(),
            base: format!("http://{}", proc.addr()),
            http: http(),
        };
        Self {
            name: name.to_owned(),
            proc,
            reader,
            _dir: dir,
        }
    }

    async fn read(&self, id: u32) -> Read {
        self.reader.read(id).await.unwrap()
    }
}

/// Three nodes `a`, `b`, `c` on `redis` (or alone, without), once each is
/// connected.
async fn three(source: &Source, setup: &Setup, redis: Option<&Redis>) -> Vec<Node> {
    three_named(source, setup, redis, ["a", "b", "c"]).await
}

async fn three_named(
    source: &Source,
    setup: &Setup,
    redis: Option<&Redis>,
    names: [&str; 3],
) -> Vec<Node> {
    let url = redis.map(Redis::url);
    let nodes: Vec<Node> = names
        .iter()
        .map(|name| {
            Node::start(
                name,
                &node_config(&source.url(), name, setup, url.as_deref()),
                &[],
            )
        })
        .collect();
    if redis.is_some() {
        for n in &nodes {
            connected(n, true, Duration::from_secs(10)).await;
        }
    }
    nodes
}

/// Waits until the node's `/v1/cluster` says `connected == want`.
async fn connected(n: &Node, want: bool, within: Duration) {
    let r = n.reader.clone();
    support::eventually(
        within,
        &format!("{} connected={want}", n.name),
        async || r.cluster().await["connected"] == json!(want),
    )
    .await;
}

async fn until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// --- What the readers saw ------------------------------------------------------

/// A version (and value) a node showed, by a read or on its change stream.
#[derive(Clone, Debug)]
struct Sight {
    node: String,
    id: u32,
    version: u64,
    /// The value, for reads (change events do not carry it).
    n: Option<u64>,
    /// Its age when read (reads of a changing source).
    age_ms: Option<f64>,
    at: Instant,
    via: &'static str,
}

#[derive(Clone, Default)]
struct Seen {
    sights: Arc<Mutex<Vec<Sight>>>,
    failures: Arc<Mutex<Vec<String>>>,
    reads: Arc<std::sync::atomic::AtomicU64>,
}

impl Seen {
    fn all(&self) -> Vec<Sight> {
        self.sights.lock().clone()
    }

    /// No node ever showed a version lower than one it showed before: each
    /// reader reads one request after the other, and each change stream is
    /// in order, so each sequence on its own must never go down.
    fn assert_versions_never_decrease(&self) {
        let mut last: HashMap<(String, u32, &'static str), (u64, Instant)> = HashMap::new();
        let sights = self.all();
        assert!(!sights.is_empty(), "nothing seen");
        for s in &sights {
            let k = (s.node.clone(), s.id, s.via);
            if let Some((v, at)) = last.get(&k) {
                assert!(
                    s.version >= *v,
                    "{} {} of item {}: version {} after {} ({:?} later)",
                    s.node,
                    s.via,
                    s.id,
                    s.version,
                    v,
                    s.at - *at
                );
            }
            last.insert(k, (s.version, s.at));
        }
    }

    /// Every (item, version) read since `since` showed one value: on each
    /// node (`per_node`), or across all of them.
    fn assert_one_value_per_version(&self, since: Instant, per_node: bool) {
        type Values = BTreeMap<u64, Vec<(String, Duration)>>;
        let mut by: BTreeMap<(String, u32, u64), Values> = BTreeMap::new();
        for s in self.all() {
            if let (Some(n), true) = (s.n, s.at >= since) {
                let node = if per_node {
                    s.node.clone()
                } else {
                    "any".into()
                };
                by.entry((node, s.id, s.version))
                    .or_default()
                    .entry(n)
                    .or_default()
                    .push((s.node.clone(), s.at - since));
            }
        }
        for ((node, id, v), values) in by {
            assert!(
                values.len() == 1,
                "{node}: item {id} at version {v} showed several values (value: [(node, when)]): {values:?}"
            );
        }
    }
}

/// Readers and change-stream listeners on some nodes, until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    seen: Seen,
}

impl Traffic {
    /// Reads `ids` on every node of `nodes`, one round every `every`;
    /// listens to every node's `/v1/events`.
    async fn start(nodes: &[&Node], ids: &[u32], every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Seen::default();
        let mut tasks = Vec::new();
        for n in nodes {
            let r = n.reader.clone();
            let (stop2, seen2, ids) = (stop.clone(), seen.clone(), ids.to_vec());
            tasks.push(tokio::spawn(async move {
                while !stop2.load(SeqCst) {
                    for &id in &ids {
                        match r.read(id).await {
                            Ok(read) => {
                                seen2.reads.fetch_add(1, SeqCst);
                                seen2.sights.lock().push(Sight {
                                    node: r.name.clone(),
                                    id,
                                    version: read.version,
                                    n: Some(read.n),
                                    age_ms: read.age_ms,
                                    at: Instant::now(),
                                    via: "read",
                                });
                            }
                            Err(e) => seen2.failures.lock().push(e),
                        }
                    }
                    tokio::time::sleep(every).await;
                }
            }));
            tasks.push(tokio::spawn(listen(
                n.reader.clone(),
                stop.clone(),
                seen.clone(),
            )));
        }
        // The listeners are subscribed before the caller goes on.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Self { stop, tasks, seen }
    }

    async fn stop(self) -> Seen {
        self.stop.store(true, SeqCst);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self.seen
    }
}

/// Records every `change` of `r`'s `/v1/events` until `stop`.
async fn listen(r: Reader, stop: Arc<AtomicBool>, seen: Seen) {
    let mut sse = SseReader::open(&format!("{}/v1/events", r.base), None).await;
    while !stop.load(SeqCst) {
        let asked = Instant::now();
        let Some(ev) = sse.next(Duration::from_millis(200)).await else {
            if asked.elapsed() < Duration::from_millis(100) {
                // The stream ended (the node was killed).
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            continue;
        };
        if ev.event != "change" {
            continue;
        }
        let id = ev.data["params"]["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        seen.sights.lock().push(Sight {
            node: r.name.clone(),
            id,
            version: ev.data["version"].as_u64().unwrap_or(0),
            n: None,
            age_ms: None,
            at: Instant::now(),
            via: "change",
        });
    }
}

// --- The acceptance checks -----------------------------------------------------

/// Keys of "another application" under other prefixes, some looking like
/// ours: their values and time to live, as `redis-cli` shows them.
fn other_apps_keys(redis: &Redis) -> Vec<(String, String)> {
    let keys = [
        ("other:e:item.get{\"id\":\"1\"}", "HGETALL"),
        ("other:l:item.get{\"id\":\"1\"}", "GET"),
        ("other:feed", "XRANGE"),
        ("other:epoch", "GET"),
        ("shop2:e:item.get{\"id\":\"1\"}", "HGETALL"),
        ("shopfeed", "GET"),
        ("session:42", "GET"),
    ];
    keys.iter()
        .map(|(k, how)| {
            let value = if *how == "XRANGE" {
                redis.cli(&["XRANGE", k, "-", "+"])
            } else {
                redis.cli(&[how, k])
            };
            let ttl: i64 = redis.cli(&["TTL", k]).trim().parse().unwrap();
            let ttl = if ttl > 0 { "expires" } else { "kept" };
            ((*k).to_owned(), format!("{value} ({ttl})"))
        })
        .collect()
}

fn seed_other_apps(redis: &Redis) {
    let k = "other:e:item.get{\"id\":\"1\"}";
    redis.cli(&["HSET", k, "v", "99", "u", "0", "d", "theirs", "h", "x"]);
    redis.cli(&[
        "SET",
        "other:l:item.get{\"id\":\"1\"}",
        "their-node",
        "EX",
        "3600",
    ]);
    redis.cli(&["XADD", "other:feed", "*", "t", "put", "k", "theirs"]);
    redis.cli(&["SET", "other:epoch", "their-epoch"]);
    redis.cli(&["HSET", "shop2:e:item.get{\"id\":\"1\"}", "v", "7", "d", "x"]);
    redis.cli(&["SET", "shopfeed", "not ours either"]);
    redis.cli(&["SET", "session:42", "a session", "EX", "3600"]);
}

/// 10 active keys, staleness 1 s, read on all three nodes for 10 s: about
/// one upstream fetch per key per window with `[cluster]`, against about
/// three without (three nodes run alone side by side, on the same upstream,
/// in the same 10 s). Also: another application's keys in the same Redis
/// are left alone, and every key the nodes make is under their prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_keys_are_fetched_about_once_per_window_against_three_times_alone() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = Redis::start() else { return };
    seed_other_apps(&redis);
    let before = other_apps_keys(&redis);
    let source = Source::start(false).await;
    let setup = Setup::default();
    let cluster = three(&source, &setup, Some(&redis)).await;
    let alone = three_named(&source, &setup, None, ["solo-a", "solo-b", "solo-c"]).await;
    let ids: Vec<u32> = (1..=10).collect();
    let all: Vec<&Node> = cluster.iter().chain(&alone).collect();
    for n in &all {
        for &id in &ids {
            n.read(id).await;
        }
    }
    let trips_before: u64 = {
        let mut t = 0;
        for n in &cluster {
            t += n.reader.cluster().await["round_trips"].as_u64().unwrap();
        }
        t
    };
    let started = Instant::now();
    let traffic = Traffic::start(&all, &ids, Duration::from_millis(200)).await;
    let run = Duration::from_secs(10);
    tokio::time::sleep(run.saturating_sub(started.elapsed())).await;
    let elapsed = started.elapsed();
    let seen = traffic.stop().await;
    let ended = Instant::now();
    let mut trips_after = 0;
    for n in &cluster {
        let c = n.reader.cluster().await;
        eprintln!("{}: {c}", n.name);
        trips_after += c["round_trips"].as_u64().unwrap();
    }

    assert!(
        seen.failures.lock().is_empty(),
        "reads failed: {:?}",
        seen.failures.lock()
    );
    let windows = elapsed.as_secs_f64() / 1.0;
    let answers = source.answers();
    let count = |id: u32, solo: bool| {
        answers
            .iter()
            .filter(|a| {
                a.key == key(id)
                    && a.at >= started
                    && a.at <= ended
                    && a.node.starts_with("solo-") == solo
            })
            .count()
    };
    let mut together = Vec::new();
    let mut apart = Vec::new();
    for &id in &ids {
        together.push(count(id, false));
        apart.push(count(id, true));
    }
    let per_window = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len() as f64 / windows;
    let fetches_together: usize = together.iter().sum();
    let trips_per_refresh = (trips_after - trips_before) as f64 / fetches_together.max(1) as f64;
    eprintln!(
        "over {windows:.1} windows of 1 s, upstream fetches per key: with [cluster] {together:?} \
         ({:.2} per key per window), without [cluster] {apart:?} ({:.2} per key per window); \
         {:.2} Redis round trips per refresh; {} reads",
        per_window(&together),
        per_window(&apart),
        trips_per_refresh,
        seen.reads.load(SeqCst),
    );
    // Two on the node that fetches (acquire, publish); the others' now and
    // then (a due time that comes before the result reached them).
    assert!(
        trips_per_refresh <= 2.5,
        "{trips_per_refresh:.2} Redis round trips per refresh"
    );
    for (id, n) in ids.iter().zip(&together) {
        assert!(
            (*n as f64) <= windows * 1.2,
            "item {id}: {n} fetches in {windows:.1} windows with [cluster]"
        );
        assert!(
            (*n as f64) >= windows * 0.5,
            "item {id}: only {n} fetches in {windows:.1} windows: not kept fresh"
        );
    }
    assert!(
        per_window(&apart) >= 2.4 * per_window(&together),
        "without [cluster] the three nodes should fetch about three times as often"
    );

    // Another application's keys are untouched; ours are under our prefix.
    assert_eq!(other_apps_keys(&redis), before);
    let mine: Vec<String> = redis
        .cli(&["KEYS", "*"])
        .lines()
        .filter(|k| !before.iter().any(|(o, _)| o == k))
        .map(str::to_owned)
        .collect();
    assert!(!mine.is_empty());
    assert!(
        mine.iter().all(|k| k.starts_with("shop:")),
        "keys outside the prefix: {mine:?}"
    );
}

/// A key first read on node A is then read on B and C with no upstream call:
/// the same value and version everywhere, adopted from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_read_on_a_is_served_by_b_and_c_without_an_upstream_call() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = Redis::start() else { return };
    let source = Source::start(false).await;
    let setup = Setup {
        staleness: "1m",
        ..Setup::default()
    };
    let nodes = three(&source, &setup, Some(&redis)).await;
    let first = nodes[0].read(7).await;
    assert_eq!(first.cache_status, "revalidate; fwd=miss; stored");
    assert_eq!(source.fetches(&key(7)), 1);
    for n in &nodes[1..] {
        let hit = n.read(7).await;
        assert_eq!((hit.n, hit.version), (first.n, first.version), "{}", n.name);
        let c = n.reader.cluster().await;
        assert_eq!(c["adopted"], 1, "{}: {c}", n.name);
        assert_eq!(c["leases"], 0, "{}: {c}", n.name);
    }
    assert_eq!(
        source.fetches(&key(7)),
        1,
        "one upstream call for three nodes"
    );
    // And the other way round, from C.
    nodes[2].read(8).await;
    nodes[0].read(8).await;
    nodes[1].read(8).await;
    assert_eq!(source.fetches(&key(8)), 1);
}

/// The delays from the upstream's answer of a new value fetched by another
/// node to its `change` event on `on`'s stream: for each change event of
/// `on`, the latest answer of its key sent before it; changes that `on`
/// fetched itself are left out.
fn propagation_delays(source: &Source, seen: &Seen, on: &str) -> Vec<f64> {
    let answers = source.answers();
    let mut used = std::collections::HashSet::new();
    let mut delays = Vec::new();
    for s in seen.all() {
        if s.node != on || s.via != "change" {
            continue;
        }
        let Some((i, a)) = answers
            .iter()
            .enumerate()
            .filter(|(_, a)| a.key == key(s.id) && a.at <= s.at)
            .max_by_key(|(_, a)| a.at)
        else {
            continue;
        };
        if a.node != on && used.insert(i) {
            delays.push(ms(s.at - a.at));
        }
    }
    delays
}

/// The upstream changes a value; an SSE subscriber on node C receives the
/// change soon after the refresh that fetched it on another node completes.
/// Measured over 100 changes: from the instant the upstream answered the
/// new value (so the fetching node's reading of the answer and its publish
/// are counted too) to the instant the `change` event arrived on C, one
/// machine clock; p50/p99 printed, a generous bound asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_a_subscriber_on_another_node_within_milliseconds() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = Redis::start() else { return };
    let source = Source::start(true).await;
    let setup = Setup {
        staleness: "500ms",
        check_interval: "50ms",
        ..Setup::default()
    };
    let nodes = three(&source, &setup, Some(&redis)).await;
    let ids: Vec<u32> = (1..=10).collect();
    // C only listens; every node reads each key once (active for an hour:
    // the refresh services keep them fresh).
    let traffic = Traffic::start(&[&nodes[2]], &[], Duration::from_secs(1)).await;
    for n in &nodes {
        for &id in &ids {
            n.read(id).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while propagation_delays(&source, &traffic.seen, "c").len() < 100 {
        assert!(
            Instant::now() < deadline,
            "fewer than 100 changes reached C in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = traffic.stop().await;
    let delays = propagation_delays(&source, &seen, "c");
    let (p50, p99, max) = (
        quantile(&delays, 0.5),
        quantile(&delays, 0.99),
        quantile(&delays, 1.0),
    );
    eprintln!(
        "propagation to C over {} changes fetched by A or B: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
        delays.len()
    );
    seen.assert_versions_never_decrease();
    // The issue's bound is 100 ms at p99. A debug build next to three
    // daemons on two cores measures p99 34-144 ms (release, bench/cluster.sh:
    // 2.5 ms), so the bound asserted here is a generous one.
    assert!(p99 <= 500.0, "p99 {p99:.1} ms");
}

/// Waits for the first request of `key` that arrives after `since`.
async fn next_arrival(source: &Source, key: &str, since: Instant, within: Duration) -> Arrival {
    let deadline = Instant::now() + within;
    loop {
        if let Some(a) = source
            .arrivals()
            .into_iter()
            .find(|a| a.key == key && a.at >= since)
        {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "no request of {key} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// SIGKILL of the lease holder mid-fetch (a slow upstream): another node
/// refreshes the key within one `lease_ttl` plus one check of the lease
/// being taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_killed_mid_fetch_is_replaced_within_one_lease_ttl() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = Redis::start() else { return };
    let source = Source::start(true).await;
    let (lease_ttl, check) = (Duration::from_secs(1), Duration::from_millis(200));
    let setup = Setup {
        staleness: "1s",
        check_interval: "200ms",
        lease_ttl: "1s",
        ..Setup::default()
    };
    let mut nodes = three(&source, &setup, Some(&redis)).await;
    for n in &nodes {
        n.read(1).await;
    }
    let before = nodes[0].read(1).await;
    // The next fetch of the key hangs for 30 s: whoever takes the lease is
    // killed while it waits.
    let armed = Instant::now();
    source.slow_next(&key(1), Duration::from_secs(30));
    let held = next_arrival(&source, &key(1), armed, Duration::from_secs(5)).await;
    let victim = nodes.iter().position(|n| n.name == held.node).unwrap();
    nodes[victim].proc.signal("KILL");
    let killed = Instant::now();
    let dead = nodes.remove(victim);
    let retry = next_arrival(
        &source,
        &key(1),
        held.at + Duration::from_millis(1),
        Duration::from_secs(10),
    )
    .await;
    assert_ne!(retry.node, dead.name);
    let mut done = None;
    until(
        Duration::from_secs(5),
        "the other node's fetch is answered",
        || {
            done = source
                .fetches_since(&key(1), retry.at)
                .into_iter()
                .find(|a| a.node == retry.node);
            done.is_some()
        },
    )
    .await;
    let done = done.unwrap();
    let took = done.at - held.at;
    eprintln!(
        "{} took the lease and was killed {:.0} ms later; {} asked the upstream {:.0} ms after the lease was taken, and had its answer at {:.0} ms (bound: lease_ttl {} ms + one check {} ms)",
        dead.name,
        ms(killed - held.at),
        retry.node,
        ms(retry.at - held.at),
        ms(took),
        lease_ttl.as_millis(),
        check.as_millis()
    );
    assert!(
        took <= lease_ttl + check,
        "refreshed {:.0} ms after the lease was taken",
        ms(took)
    );
    // Both survivors serve the new value.
    for n in &nodes {
        let r = n.reader.clone();
        let want = done.n;
        support::eventually(
            Duration::from_secs(3),
            &format!("{} serves n={want}", n.name),
            async || {
                r.read(1)
                    .await
                    .is_ok_and(|x| x.n >= want && x.version > before.version)
            },
        )
        .await;
    }
}

/// SIGSTOP of a lease holder past its TTL; another node refreshes; SIGCONT:
/// its late result is refused (never served anywhere), and no node ever
/// shows a version lower than one it showed before (every read and every
/// change event of every node is checked), nor two values for one version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_lease_holder_is_refused_when_it_wakes_and_versions_never_go_down() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = Redis::start() else { return };
    let source = Source::start(true).await;
    let setup = Setup {
        staleness: "1s",
        check_interval: "100ms",
        lease_ttl: "1s",
        ..Setup::default()
    };
    let nodes = three(&source, &setup, Some(&redis)).await;
    let ids = [1, 2, 3];
    for n in &nodes {
        for id in ids {
            n.read(id).await;
        }
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let traffic = Traffic::start(&all, &ids, Duration::from_millis(100)).await;
    let armed = Instant::now();
    source.slow_next(&key(1), Duration::from_millis(2500));
    let held = next_arrival(&source, &key(1), armed, Duration::from_secs(5)).await;
    let paused = nodes.iter().find(|n| n.name == held.node).unwrap();
    paused.proc.signal("STOP");
    let stopped = Instant::now();
    let others: Vec<&Node> = nodes.iter().filter(|n| n.name != held.node).collect();
    // Another node refreshes once the lease ran out.
    let mut by_other = None;
    until(
        Duration::from_secs(5),
        "another node refreshes the key",
        || {
            by_other = source
                .fetches_since(&key(1), held.at)
                .into_iter()
                .find(|a| a.node != held.node);
            by_other.is_some()
        },
    )
    .await;
    let by_other = by_other.unwrap();
    // The paused node's answer (older data) has been sent meanwhile.
    let mut late = None;
    until(
        Duration::from_secs(5),
        "the paused node's answer is sent",
        || {
            late = source
                .fetches_since(&key(1), held.at)
                .into_iter()
                .find(|a| a.node == held.node && a.arrived == held.at);
            late.is_some()
        },
    )
    .await;
    let late = late.unwrap();
    assert!(late.n < by_other.n);
    for n in &others {
        let r = n.reader.clone();
        support::eventually(
            Duration::from_secs(3),
            &format!("{} serves the newer value", n.name),
            async || r.read(1).await.is_ok_and(|x| x.n >= by_other.n),
        )
        .await;
    }
    paused.proc.signal("CONT");
    eprintln!(
        "{} paused {:.0} ms; {} refreshed {:.0} ms after the lease was taken (n={} over the late n={})",
        paused.name,
        ms(stopped.elapsed()),
        by_other.node,
        ms(by_other.at - held.at),
        by_other.n,
        late.n
    );
    let r = paused.reader.clone();
    support::eventually(
        Duration::from_secs(5),
        "the late result is refused",
        async || r.cluster().await["refused"].as_u64() >= Some(1),
    )
    .await;
    support::eventually(
        Duration::from_secs(5),
        "the woken node serves the newer value",
        async || r.read(1).await.is_ok_and(|x| x.n >= by_other.n),
    )
    .await;
    // A few more windows of traffic after the wake-up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = traffic.stop().await;
    assert!(
        seen.failures
            .lock()
            .iter()
            .all(|f| f.starts_with(&paused.name)),
        "{:?}",
        seen.failures.lock()
    );
    let sights = seen.all();
    assert!(
        !sights.iter().any(|s| s.id == 1 && s.n == Some(late.n)),
        "the late value n={} was served",
        late.n
    );
    for n in &nodes {
        assert!(
            sights
                .iter()
                .any(|s| s.node == n.name && s.at > stopped + Duration::from_secs(3))
        );
    }
    seen.assert_versions_never_decrease();
    // On each node one value per version. (Across nodes not always: the
    // woken node's Redis commands in flight may time out as it wakes, and
    // it then carries on alone for a moment, numbering versions itself.)
    seen.assert_one_value_per_version(armed, true);
}

/// Redis SIGKILLed for 5 s, then restarted empty: reads never fail,
/// refreshes go on meanwhile (each node alone), the nodes rejoin and
/// cooperate again (about one fetch per key per window, a new key fetched
/// once for three nodes), and no node ever shows a lower version than it
/// showed before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_for_5_s_then_restarted_empty_costs_no_read_and_no_version() {
    let _serial = SERIAL.lock().await;
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let source = Source::start(true).await;
    let setup = Setup {
        staleness: "500ms",
        check_interval: "50ms",
        ..Setup::default()
    };
    let nodes = three(&source, &setup, Some(&redis)).await;
    let ids = [1, 2, 3, 4, 5];
    for n in &nodes {
        for id in ids {
            n.read(id).await;
        }
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let traffic = Traffic::start(&all, &ids, Duration::from_millis(100)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    redis.kill();
    let down = Instant::now();
    for n in &nodes {
        connected(n, false, Duration::from_secs(3)).await;
    }
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(down.elapsed())).await;
    let apart = source
        .answers()
        .into_iter()
        .filter(|a| a.at >= down + Duration::from_secs(1) && a.at <= down + Duration::from_secs(5))
        .collect::<Vec<_>>();
    redis.restart();
    let up = Instant::now();
    for n in &nodes {
        connected(n, true, Duration::from_secs(10)).await;
    }
    let rejoined = up.elapsed();
    // Cooperation resumes: a window to settle, then three to count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let to = Instant::now();
    nodes[0].read(9).await;
    nodes[1].read(9).await;
    nodes[2].read(9).await;
    let seen = traffic.stop().await;

    let windows = (to - from).as_secs_f64() / 0.5;
    let mut after = Vec::new();
    for id in ids {
        after.push(
            source
                .answers()
                .iter()
                .filter(|a| a.key == key(id) && a.at >= from && a.at <= to)
                .count(),
        );
    }
    eprintln!(
        "Redis down 5 s: {} reads, {} failed; {} upstream fetches in the 4 s apart (3 nodes alone); \
         rejoined {:.0} ms after Redis returned; then per key over {windows:.0} windows: {after:?}",
        seen.reads.load(SeqCst),
        seen.failures.lock().len(),
        apart.len(),
        ms(rejoined),
    );
    assert!(
        seen.failures.lock().is_empty(),
        "{:?}",
        seen.failures.lock()
    );
    assert!(
        seen.all()
            .iter()
            .filter(|s| s.via == "read" && s.at > down && s.at < up)
            .count()
            > 100,
        "reads went on while Redis was down"
    );
    for id in ids {
        for n in &nodes {
            assert!(
                apart.iter().any(|a| a.key == key(id) && a.node == n.name),
                "{} refreshed item {id} alone while Redis was down",
                n.name
            );
        }
    }
    for (id, n) in ids.iter().zip(&after) {
        assert!(
            (*n as f64) <= windows * 1.2 + 1.0,
            "item {id}: {n} fetches in {windows:.0} windows after the rejoin"
        );
    }
    assert_eq!(
        source.fetches(&key(9)),
        1,
        "a new key is fetched once for three nodes"
    );
    seen.assert_versions_never_decrease();
    // While apart each node numbered its own versions; once they are back
    // no node shows two values under one version, and after a window all
    // agree on each version's value.
    seen.assert_one_value_per_version(down, true);
    seen.assert_one_value_per_version(up + rejoined + Duration::from_millis(500), false);
}

// --- Configuration and credentials -----------------------------------------------

/// `revalidate check-config` on `config`: exit code and stdout + stderr.
fn check_config(config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("revalidate.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(support::binary())
        .arg("check-config")
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// `revalidate serve` on `config`, which must exit: its code and stderr.
fn serve_must_exit(config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::serve(config, dir.path(), env);
    let status = p
        .exit_within(Duration::from_secs(15))
        .expect("serve should exit at start");
    std::thread::sleep(Duration::from_millis(100));
    (status.code(), p.stderr())
}

/// A wrong password: `check-config` and `serve` exit 2 saying so. The right
/// one, in the URL or from the environment: the node joins, and the
/// password appears nowhere: not in its logs, `check-config`'s output,
/// `/v1/cluster`, `/v1/live` or `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_configuration_error_and_no_password_is_ever_shown() {
    const PASSWORD: &str = "s3cret-Redis-pw-1";
    const WRONG: &str = "not-the-pw-2";
    let Some(redis) = Redis::start_with(free_port(), None, &["--requirepass", PASSWORD]) else {
        return;
    };
    let source = Source::start(false).await;
    let setup = Setup::default();
    let with_url = |url: &str| node_config(&source.url(), "a", &setup, Some(url));
    let port = redis.port;

    let wrong = with_url(&format!("redis://:{WRONG}@127.0.0.1:{port}/0"));
    let (code, out) = check_config(&wrong, &[]);
    assert_eq!(code, Some(2), "check-config with a wrong password:\n{out}");
    assert!(out.contains("refused the credentials"), "{out}");
    assert!(!out.contains(WRONG), "{out}");
    let (code, log) = serve_must_exit(&wrong, &[]);
    assert_eq!(code, Some(2), "serve with a wrong password:\n{log}");
    assert!(log.contains("refused the credentials"), "{log}");
    assert!(
        log.contains(&format!("127.0.0.1:{port}")),
        "names the Redis: {log}"
    );
    assert!(!log.contains(WRONG), "{log}");
    // No password at all, against a Redis that wants one.
    let none = with_url(&redis.url());
    let (code, log) = serve_must_exit(&none, &[]);
    assert_eq!(code, Some(2), "serve without the password:\n{log}");
    assert!(log.contains("refused the credentials"), "{log}");

    let literal = with_url(&format!("redis://:{PASSWORD}@127.0.0.1:{port}/0"));
    let from_env = with_url(&format!("redis://:${{REDIS_PASSWORD}}@127.0.0.1:{port}/0"))
        .replace("node_id = \"a\"", "node_id = \"b\"");
    let env = [("REDIS_PASSWORD", PASSWORD)];
    let mut shown = Vec::new();
    for config in [&literal, &from_env] {
        let (code, out) = check_config(config, &env);
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains(&format!("127.0.0.1:{port}")), "{out}");
        shown.push(("check-config".to_owned(), out));
    }
    let nodes = [
        Node::start("a", &literal, &[]),
        Node::start("b", &from_env, &env),
    ];
    for n in &nodes {
        connected(n, true, Duration::from_secs(10)).await;
    }
    nodes[0].read(1).await;
    nodes[1].read(1).await;
    assert_eq!(source.fetches(&key(1)), 1, "the two nodes cooperate");
    for n in &nodes {
        shown.push((
            format!("{} /v1/cluster", n.name),
            n.reader.text("/v1/cluster").await,
        ));
        shown.push((
            format!("{} /metrics", n.name),
            n.reader.text("/metrics").await,
        ));
        let mut live = SseReader::open(&format!("{}/v1/live", n.reader.base), None).await;
        let tick = live.next(Duration::from_secs(5)).await.expect("a tick");
        assert!(tick.data["cluster"]["connected"] == json!(true), "{tick:?}");
        shown.push((format!("{} /v1/live", n.name), tick.data.to_string()));
    }
    let metrics = &shown.iter().find(|(w, _)| w == "a /metrics").unwrap().1;
    assert!(
        metrics.contains("revalidate_cluster_connected 1"),
        "{metrics}"
    );
    for n in &nodes {
        shown.push((format!("{} log", n.name), n.proc.stderr()));
    }
    for (what, text) in &shown {
        assert!(
            !text.contains(PASSWORD),
            "{what} shows the password:\n{text}"
        );
    }
}

/// A Redis that runs no scripts (`EVAL` and `EVALSHA` renamed away):
/// `check-config` and `serve` exit 2 naming the problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_without_scripting_is_a_configuration_error() {
    let conf = "rename-command EVAL \"\"\nrename-command EVALSHA \"\"\n";
    let Some(redis) = Redis::start_with(free_port(), Some(conf), &[]) else {
        return;
    };
    let source = Source::start(false).await;
    let config = node_config(&source.url(), "a", &Setup::default(), Some(&redis.url()));
    let (code, out) = check_config(&config, &[]);
    assert_eq!(code, Some(2), "check-config:\n{out}");
    assert!(out.contains("does not run scripts"), "{out}");
    let (code, log) = serve_must_exit(&config, &[]);
    assert_eq!(code, Some(2), "serve:\n{log}");
    assert!(log.contains("does not run scripts"), "{log}");
    assert!(log.contains(&format!("127.0.0.1:{}", redis.port)), "{log}");
}

/// Redis unreachable at start: the node starts alone (`/v1/cluster` says
/// connected=false, the log warns), serves, and joins when Redis appears:
/// what it fetched alone reaches the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_without_redis_runs_alone_then_joins_when_it_appears() {
    let _serial = SERIAL.lock().await;
    let port = free_port();
    let source = Source::start(false).await;
    let setup = Setup {
        staleness: "1m",
        ..Setup::default()
    };
    let url = format!("redis://127.0.0.1:{port}/0");
    let config = node_config(&source.url(), "a", &setup, Some(&url));
    let (code, out) = check_config(&config, &[]);
    assert_eq!(code, Some(0), "check-config with Redis down: {out}");
    let mut a = Node::start("a", &config, &[]);
    let warning = a.proc.wait_line("starting alone", Duration::from_secs(5));
    assert!(warning.contains("WARN"), "{warning}");
    let c = a.reader.cluster().await;
    assert_eq!(c["connected"], false, "{c}");
    assert!(
        c["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot reach Redis")),
        "{c}"
    );
    a.read(1).await;
    assert_eq!(source.fetches(&key(1)), 1);

    let Some(redis) = Redis::start_with(port, None, &[]) else {
        return;
    };
    connected(&a, true, Duration::from_secs(10)).await;
    let b = Node::start(
        "b",
        &node_config(&source.url(), "b", &setup, Some(&redis.url())),
        &[],
    );
    connected(&b, true, Duration::from_secs(10)).await;
    // What A fetched alone was pushed when it joined; a new key read on B
    // is not fetched again by A.
    assert_eq!(b.read(1).await.n, 0);
    b.read(2).await;
    a.read(2).await;
    assert_eq!(source.fetches(&key(1)), 1, "B adopted what A fetched alone");
    assert_eq!(source.fetches(&key(2)), 1, "A adopted what B fetched");
}

// --- The benchmark ---------------------------------------------------------------

/// Median and range of `xs`, formatted with `f`.
fn median_range(xs: &[f64], f: impl Fn(f64) -> String) -> String {
    if xs.len() == 1 {
        return f(xs[0]);
    }
    format!(
        "{} ({}–{})",
        f(quantile(xs, 0.5)),
        f(quantile(xs, 0.0)),
        f(quantile(xs, 1.0))
    )
}

/// `n` sequential reads of `id` on `r`: their latencies in µs.
async fn read_latencies(r: &Reader, id: u32, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        r.read(id).await.unwrap();
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    out
}

/// One run's figures.
#[derive(Debug, Default, Clone)]
struct BenchRun {
    calls_together: f64,
    calls_apart: f64,
    age_together: (f64, f64),
    age_apart: (f64, f64),
    hit_with: (f64, f64),
    hit_without: (f64, f64),
    redis_hit: (f64, f64),
    upstream_miss: (f64, f64),
    trips: f64,
    propagation: (f64, f64),
    samples: usize,
}

async fn bench_run(secs: u64) -> Option<BenchRun> {
    let redis = Redis::start()?;
    let source = Source::start(true).await;
    let setup = Setup::default();
    let cluster = three(&source, &setup, Some(&redis)).await;
    let alone = three_named(&source, &setup, None, ["solo-a", "solo-b", "solo-c"]).await;
    let ids: Vec<u32> = (1..=10).collect();
    let all: Vec<&Node> = cluster.iter().chain(&alone).collect();
    for n in &all {
        for &id in &ids {
            n.read(id).await;
        }
    }
    let mut trips0 = 0;
    for n in &cluster {
        trips0 += n.reader.cluster().await["round_trips"].as_u64().unwrap();
    }
    let started = Instant::now();
    let traffic = Traffic::start(&all, &ids, Duration::from_millis(100)).await;
    tokio::time::sleep(Duration::from_secs(secs).saturating_sub(started.elapsed())).await;
    let seen = traffic.stop().await;
    let ended = Instant::now();
    let mut trips1 = 0;
    for n in &cluster {
        trips1 += n.reader.cluster().await["round_trips"].as_u64().unwrap();
    }
    assert!(
        seen.failures.lock().is_empty(),
        "{:?}",
        seen.failures.lock()
    );
    let windows = (ended - started).as_secs_f64();
    let answers = source.answers();
    let in_run = |a: &&Answered| a.at >= started && a.at <= ended;
    let together = answers
        .iter()
        .filter(in_run)
        .filter(|a| !a.node.starts_with("solo-"))
        .count();
    let apart = answers
        .iter()
        .filter(in_run)
        .filter(|a| a.node.starts_with("solo-"))
        .count();
    let ages = |solo: bool| {
        let v: Vec<f64> = seen
            .all()
            .iter()
            .filter(|s| s.via == "read" && s.node.starts_with("solo-") == solo)
            .filter_map(|s| s.age_ms)
            .collect();
        (quantile(&v, 0.5), quantile(&v, 0.99))
    };
    let mut delays = Vec::new();
    for n in &cluster {
        delays.extend(propagation_delays(&source, &seen, &n.name));
    }
    let mut run = BenchRun {
        calls_together: together as f64 / ids.len() as f64 / windows,
        calls_apart: apart as f64 / ids.len() as f64 / windows,
        age_together: ages(false),
        age_apart: ages(true),
        trips: (trips1 - trips0) as f64 / together.max(1) as f64,
        propagation: (quantile(&delays, 0.5), quantile(&delays, 0.99)),
        samples: delays.len(),
        ..BenchRun::default()
    };

    // Memory hits, with and without [cluster], in alternating batches.
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        with.extend(read_latencies(&cluster[0].reader, 1, 200).await);
        without.extend(read_latencies(&alone[0].reader, 1, 200).await);
    }
    run.hit_with = (quantile(&with, 0.5), quantile(&with, 0.99));
    run.hit_without = (quantile(&without, 0.5), quantile(&without, 0.99));
    // A Redis hit: the key is in Redis (A fetched it) but not in B's memory.
    let (mut redis_hits, mut misses) = (Vec::new(), Vec::new());
    for id in 1000..1300 {
        misses.extend(read_latencies(&cluster[0].reader, id, 1).await);
        redis_hits.extend(read_latencies(&cluster[1].reader, id, 1).await);
    }
    let cold: std::collections::HashSet<String> = (1000..1300).map(key).collect();
    let fetched_by_b = source
        .answers()
        .iter()
        .filter(|a| a.node == "b" && cold.contains(&a.key))
        .count();
    assert_eq!(fetched_by_b, 0, "B's first reads were Redis hits");
    run.redis_hit = (quantile(&redis_hits, 0.5), quantile(&redis_hits, 0.99));
    run.upstream_miss = (quantile(&misses, 0.5), quantile(&misses, 0.99));
    eprintln!("run: {run:?}");
    Some(run)
}

/// The figures of `BENCHMARKS.md`'s "Several nodes on Redis": `RUNS` runs
/// (default 3) of `SECS` seconds (default 20) each, printed as a Markdown
/// table of medians and ranges. `bench/cluster.sh` runs it on a release
/// build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/cluster.sh"]
async fn bench_several_nodes() {
    let _serial = SERIAL.lock().await;
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (runs, secs) = (env("RUNS", 3), env("SECS", 20));
    let mut all = Vec::new();
    for i in 0..runs {
        eprintln!("run {}/{runs} ({secs} s)", i + 1);
        let Some(run) = bench_run(secs).await else {
            return;
        };
        all.push(run);
    }
    let col = |f: &dyn Fn(&BenchRun) -> f64| all.iter().map(f).collect::<Vec<f64>>();
    let n2 = |x: f64| format!("{x:.2}");
    let n0 = |x: f64| format!("{x:.0}");
    let n1 = |x: f64| format!("{x:.1}");
    println!(
        "| measure | 3 nodes with `[cluster]` | 3 nodes alone |\n|---|---:|---:|\n\
         | upstream calls per key per 1 s window | {} | {} |\n\
         | age at read, p50 (ms) | {} | {} |\n\
         | age at read, p99 (ms) | {} | {} |\n\
         | memory hit over HTTP, p50 (µs) | {} | {} |\n\
         | memory hit over HTTP, p99 (µs) | {} | {} |\n\
         | Redis hit (in Redis, not in the node's memory), p50 (µs) | {} | — |\n\
         | Redis hit, p99 (µs) | {} | — |\n\
         | upstream miss (for scale), p50 (µs) | {} | — |\n\
         | Redis round trips per refresh | {} | — |\n\
         | propagation to the other nodes' SSE, p50 (ms) | {} | — |\n\
         | propagation, p99 (ms) | {} | — |\n\n\
         Medians of {runs} runs of {secs} s (ranges in parentheses); {} propagation samples per run (median).",
        median_range(&col(&|r| r.calls_together), n2),
        median_range(&col(&|r| r.calls_apart), n2),
        median_range(&col(&|r| r.age_together.0), n0),
        median_range(&col(&|r| r.age_apart.0), n0),
        median_range(&col(&|r| r.age_together.1), n0),
        median_range(&col(&|r| r.age_apart.1), n0),
        median_range(&col(&|r| r.hit_with.0), n0),
        median_range(&col(&|r| r.hit_without.0), n0),
        median_range(&col(&|r| r.hit_with.1), n0),
        median_range(&col(&|r| r.hit_without.1), n0),
        median_range(&col(&|r| r.redis_hit.0), n0),
        median_range(&col(&|r| r.redis_hit.1), n0),
        median_range(&col(&|r| r.upstream_miss.0), n0),
        median_range(&col(&|r| r.trips), n2),
        median_range(&col(&|r| r.propagation.0), n1),
        median_range(&col(&|r| r.propagation.1), n1),
        quantile(&col(&|r| r.samples as f64), 0.5),
    );
}

/// Nodes whose checks fall at the same instants (started together, a check
/// interval longer than the staleness, the key read on all three at once):
/// one fetches, the others adopt its result, even when they hear it just
/// before their own turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_whose_checks_coincide_fetch_a_key_once_between_them() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = Redis::start() else { return };
    let source = Source::start(true).await;
    let setup = Setup {
        staleness: "500ms",
        check_interval: "2s",
        ..Setup::default()
    };
    let nodes = three(&source, &setup, Some(&redis)).await;
    for id in [1, 2, 3] {
        let (a, b, c) = tokio::join!(nodes[0].read(id), nodes[1].read(id), nodes[2].read(id));
        assert_eq!((a.n, b.n), (c.n, c.n));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let windows = started.elapsed().as_secs_f64() / 2.0;
    for id in [1, 2, 3] {
        let fetches = source.fetches_since(&key(id), started);
        let by: Vec<&str> = fetches.iter().map(|a| a.node.as_str()).collect();
        eprintln!(
            "item {id}: {} fetches in {windows:.0} check windows: {by:?}",
            by.len()
        );
        assert!(
            (by.len() as f64) <= windows * 1.2 + 1.0,
            "item {id}: {} fetches in {windows:.0} check windows: {by:?}",
            by.len()
        );
    }
}

/// A shared value that does not decode (another application's, or a
/// corrupted one): the node that meets it fetches, and its result replaces
/// it in Redis with a higher version, so the other nodes adopt it rather
/// than each fetch alone and number versions of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_value_that_does_not_decode_is_replaced_by_the_next_fetch() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = Redis::start() else { return };
    let source = Source::start(false).await;
    let setup = Setup {
        staleness: "1m",
        ..Setup::default()
    };
    let nodes = three(&source, &setup, Some(&redis)).await;
    let now = unix_ms().to_string();
    // The key's text has a NUL between the action and the parameters.
    let script = "redis.call('HSET', 'shop:e:item.get' .. string.char(0) .. ARGV[1], \
                  'v', 5, 'u', ARGV[2], 'd', 'not a payload', 'h', '0')";
    redis.cli(&["EVAL", script, "0", "{\"id\":\"5\"}", &now]);
    let first = nodes[0].read(5).await;
    assert_eq!(source.fetches(&key(5)), 1);
    for n in &nodes[1..] {
        let hit = n.read(5).await;
        assert_eq!((hit.n, hit.version), (first.n, first.version), "{}", n.name);
    }
    assert_eq!(
        source.fetches(&key(5)),
        1,
        "the others adopted the replacement"
    );
    assert!(
        first.version > 5,
        "above the undecodable version: {}",
        first.version
    );
}
