//! Test harness for the daemon: a scriptable upstream on loopback, the real
//! `revalidate` binary started on a temporary config, and an SSE reader.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;

/// What the upstream does with an action request.
#[derive(Clone, Debug)]
pub enum Answer {
    /// 200 with a body that changes when `bump` is called for the action.
    Json,
    /// This status and body.
    Status(u16, String),
    /// 200 with a body that is not JSON.
    NotJson,
}

#[derive(Default)]
struct Shared {
    calls: Mutex<HashMap<String, u64>>,
    health_calls: AtomicU64,
    versions: Mutex<HashMap<String, u64>>,
    answers: Mutex<HashMap<String, Answer>>,
    latency_ms: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    not_modified: AtomicU64,
}

/// A scriptable upstream API on loopback.
pub struct Upstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    up: AtomicBool,
}

fn listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl Upstream {
    pub async fn start() -> Arc<Self> {
        let l = listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let up = Arc::new(Self {
            addr,
            shared: Arc::default(),
            stop: Mutex::new(None),
            up: AtomicBool::new(false),
        });
        up.serve(l);
        up
    }

    fn serve(&self, l: TcpListener) {
        let (tx, rx) = oneshot::channel();
        *self.stop.lock() = Some(tx);
        self.up.store(true, SeqCst);
        let app = Router::new()
            .route("/health", get(health))
            .route("/actions/{action}", any(action))
            .with_state(self.shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(l, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes the port: connections are refused until `restore`.
    pub async fn take_down(&self) {
        if let Some(tx) = self.stop.lock().take() {
            let _ = tx.send(());
        }
        self.up.store(false, SeqCst);
        // Let the server task close its listener.
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(self.addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the upstream would not go down");
    }

    /// Listens again on the same port.
    pub async fn restore(&self) {
        for _ in 0..200 {
            if let Ok(l) = listener(self.addr) {
                self.serve(l);
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the upstream could not listen again on {}", self.addr);
    }

    pub fn calls(&self, action: &str) -> u64 {
        self.shared.calls.lock().get(action).copied().unwrap_or(0)
    }

    pub fn action_calls(&self) -> u64 {
        self.shared.calls.lock().values().sum()
    }

    pub fn health_calls(&self) -> u64 {
        self.shared.health_calls.load(SeqCst)
    }

    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(SeqCst)
    }

    pub fn not_modified(&self) -> u64 {
        self.shared.not_modified.load(SeqCst)
    }

    /// Makes the next answers of `action` carry new data.
    pub fn bump(&self, action: &str) {
        *self
            .shared
            .versions
            .lock()
            .entry(action.to_owned())
            .or_default() += 1;
    }

    pub fn answer(&self, action: &str, answer: Answer) {
        self.shared.answers.lock().insert(action.to_owned(), answer);
    }

    pub fn set_latency(&self, d: Duration) {
        self.shared.latency_ms.store(d.as_millis() as u64, SeqCst);
    }
}

async fn health(State(s): State<Arc<Shared>>) -> &'static str {
    s.health_calls.fetch_add(1, SeqCst);
    "{\"status\":\"ok\"}"
}

struct InFlight(Arc<Shared>);
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, SeqCst);
    }
}

async fn action(
    State(s): State<Arc<Shared>>,
    UrlPath(action): UrlPath<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    *s.calls.lock().entry(action.clone()).or_default() += 1;
    let n = s.in_flight.fetch_add(1, SeqCst) + 1;
    s.max_in_flight.fetch_max(n, SeqCst);
    let _guard = InFlight(s.clone());
    let latency = s.latency_ms.load(SeqCst);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let answer = s
        .answers
        .lock()
        .get(&action)
        .cloned()
        .unwrap_or(Answer::Json);
    match answer {
        Answer::Status(code, text) => (StatusCode::from_u16(code).unwrap(), text).into_response(),
        Answer::NotJson => (StatusCode::OK, "<html>oops</html>").into_response(),
        Answer::Json => {
            let version = s.versions.lock().get(&action).copied().unwrap_or(0);
            let params: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let body =
                json!({ "action": action, "params": params, "version": version }).to_string();
            let etag = format!("\"v{version}-{}\"", body.len());
            if headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
                s.not_modified.fetch_add(1, SeqCst);
                return (StatusCode::NOT_MODIFIED, [("etag", etag)]).into_response();
            }
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
    }
}

/// The real `revalidate` binary serving a config, stopped on drop.
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_revalidate")
}

/// A config serving `actions` from `upstream`, with short timings; `extra`
/// is appended (more tables, or overriding ones).
pub fn config(upstream: &str, staleness: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[upstream]
base_url = "{upstream}"
timeout = "2s"
health_path = "/health"
probe_interval = "200ms"

[refresh]
check_interval = "100ms"
max_concurrent_refreshes = 3
retry_interval = "300ms"
max_retries = 2
inactive_after = "1h"
fetch_timeout = "2s"
jitter = 0.0

[staleness]
{staleness}

[actions."item.get"]
[actions."item.list"]
[actions."other.get"]
method = "GET"
{extra}
"#
    )
}

impl Daemon {
    /// Starts `revalidate serve` on `config` in a new temporary directory.
    pub fn start(config: &str) -> Self {
        Self::start_with(config, None, &[])
    }

    /// Starts it in `dir` (kept), with extra environment variables.
    pub fn start_with(config: &str, dir: Option<&Path>, env: &[(&str, &str)]) -> Self {
        let tmp = if dir.is_none() {
            Some(tempfile::tempdir().unwrap())
        } else {
            None
        };
        let dir = dir
            .map(Path::to_owned)
            .unwrap_or_else(|| tmp.as_ref().unwrap().path().to_owned());
        let path = dir.join("revalidate.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        // The daemon logs "… on http://ADDR" once it listens.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut sent = false;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if !sent && let Some(i) = line.find(" on http://") {
                    let addr: SocketAddr = line[i + 11..].trim().parse().unwrap();
                    let _ = tx.send(Ok(addr));
                    sent = true;
                } else if !sent && line.contains("error") {
                    let _ = tx.send(Err(line.clone()));
                }
                eprintln!("[daemon] {line}");
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(addr)) => addr,
            Ok(Err(line)) => panic!("the daemon failed to start: {line}"),
            Err(_) => panic!("the daemon did not start listening within 30 s"),
        };
        Self {
            child,
            addr,
            dir,
            _tmp: tmp,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for a graceful exit; returns its status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the daemon did not stop within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `f` every 20 ms until it returns true or `within` passes.
pub async fn eventually(within: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {within:?} waiting for: {what}");
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct Sse {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

/// Reads events from an SSE response.
pub struct SseReader {
    response: reqwest::Response,
    buf: String,
}

impl SseReader {
    pub async fn open(url: &str, last_event_id: Option<u64>) -> Self {
        let headers: Vec<(&str, String)> = last_event_id
            .map(|id| ("last-event-id", id.to_string()))
            .into_iter()
            .collect();
        Self::open_with(url, &headers).await
    }

    /// Opens `url` with these request headers.
    pub async fn open_with(url: &str, headers: &[(&str, String)]) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut req = reqwest::Client::new().get(url);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let response = req.send().await.unwrap();
        assert_eq!(response.status(), 200);
        Self {
            response,
            buf: String::new(),
        }
    }

    /// The next event, or `None` if none comes within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Sse {
                    id: None,
                    event: "message".into(),
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        ev.id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                ev.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return Some(ev);
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }
}

// --- hostile conditions: the binary with its stderr kept line by line ------

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitStatus;

/// The binary under test: `REVALIDATE_TEST_BIN` if set (to check that a
/// test fails on an older build), else this build's.
pub fn binary() -> String {
    std::env::var("REVALIDATE_TEST_BIN").unwrap_or_else(|_| bin().to_owned())
}

/// The real binary, its stderr kept line by line.
pub struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    addr: Option<SocketAddr>,
    /// The thread reading stderr; joined once the process has exited, so
    /// that its last lines are in `lines`.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    /// `revalidate serve` on `config`, written to `dir/revalidate.toml`.
    pub fn serve(config: &str, dir: &Path, env: &[(&str, &str)]) -> Self {
        let path = dir.join("revalidate.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(binary());
        cmd.args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd)
    }

    /// Runs `cmd` (the binary with its arguments), its stderr kept.
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("[daemon] {line}");
                sink.lock().push(line);
            }
        });
        Self {
            child,
            lines,
            addr: None,
            reader: Some(reader),
        }
    }

    /// Waits for the "… on http://ADDR" line; panics if the process exits.
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn listening(mut self) -> Self {
        let line = self.wait_line(" on http://", Duration::from_secs(30));
        let i = line.find(" on http://").unwrap();
        // Up to the end of the address (a JSON log line goes on after it).
        let addr: String = line[i + 11..]
            .chars()
            .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
            .collect();
        self.addr = Some(addr.parse().unwrap());
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("listening")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// The first stderr line containing `needle`, waiting up to `within`.
    pub fn wait_line(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.lines.lock().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread drain what is left.
                std::thread::sleep(Duration::from_millis(100));
                if let Some(l) = self.lines.lock().iter().find(|l| l.contains(needle)) {
                    return l.clone();
                }
                panic!("the daemon exited ({status}) before logging {needle:?}");
            }
            assert!(
                Instant::now() < deadline,
                "no line {needle:?} within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        self.lines.lock().join("\n")
    }

    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -s {name}");
    }

    /// Waits up to `within` for the process to exit.
    pub fn exit_within(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Its stderr is closed: the reader ends once it has read
                // the last lines, which the caller may look for.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn with_server(cfg: &str, lines: &str) -> String {
    cfg.replace("[server]\n", &format!("[server]\n{lines}\n"))
}

pub fn with_store(cfg: &str, store: &Path) -> String {
    format!(
        "{cfg}\n[store]\npath = \"{}\"\nflush_every = \"1h\"\n",
        store.display()
    )
}

/// A raw HTTP/1.1 request on its own connection; the status code, or
/// `None` if the connection closed without one.
pub fn raw_status(addr: SocketAddr, request: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// A raw request and its whole answer (the connection is closed after it).
pub fn raw(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the peer has closed `s`, waiting up to `within` (data that
/// arrives meanwhile is read and ignored).
pub fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true, // reset
        }
    }
    false
}
// ---------------------------------------------------------------------------
// Hostile conditions: a fault-injecting proxy, a scripted upstream, the
// daemon with its logs and pid (tests/faults.rs, tests/upstream_*.rs).
pub mod faults;
