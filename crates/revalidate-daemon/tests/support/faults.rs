//! Hostile conditions for the integration tests, all on loopback:
//!
//! - [`FaultProxy`]: a real TCP proxy between the daemon and an upstream
//!   that adds latency, trickles, resets, truncates, swallows or refuses
//!   connections, globally or per connection;
//! - [`Scripted`]: an upstream whose every answer is a closure of the test's
//!   (streamed bodies, odd headers, redirects), recording what it was sent
//!   (raw paths, headers);
//! - [`Proc`]: the real daemon binary with its stderr kept in a file and its
//!   pid known (for `/proc/<pid>/status`), for tests that read its logs or
//!   its memory.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::AbortHandle;

/// A listener on `addr` with `SO_REUSEADDR`, so that a closed port can be
/// listened on again at once.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

// ---------------------------------------------------------------------------
// The fault-injecting proxy
// ---------------------------------------------------------------------------

/// What the proxy does to a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: bytes pass both ways as they come.
    Pass,
    /// Each answer of the upstream is held back this long before its first
    /// byte (an answer: what the upstream sends after a request).
    Latency(Duration),
    /// The upstream's answer's head passes at once, and its body `bytes` at
    /// a time, one piece every `every`.
    Trickle { bytes: usize, every: Duration },
    /// The answer's head and `after` bytes of its body are passed on, then
    /// the connection is reset (RST: `SO_LINGER` 0, then closed).
    ResetMidBody { after: usize },
    /// The answer's head and `after` bytes of its body are passed on, then
    /// the connection is closed cleanly (FIN): a truncated body.
    Truncate { after: usize },
    /// Connections are accepted and read, and never answered.
    Blackhole,
    /// The port is closed: connections are refused. As a per-connection
    /// script entry (the port is open then), the connection is reset as
    /// soon as it is accepted.
    Refuse,
}

struct ProxyInner {
    target: SocketAddr,
    fault: Mutex<Fault>,
    script: Mutex<VecDeque<Fault>>,
    live: Mutex<Vec<AbortHandle>>,
    acceptor: Mutex<Option<AbortHandle>>,
    accepted: AtomicU64,
}

/// A TCP proxy on a free loopback port in front of `target`.
pub struct FaultProxy {
    pub addr: SocketAddr,
    inner: Arc<ProxyInner>,
}

impl FaultProxy {
    /// Starts passing connections to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let l = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let proxy = Self {
            addr: l.local_addr().unwrap(),
            inner: Arc::new(ProxyInner {
                target,
                fault: Mutex::new(Fault::Pass),
                script: Mutex::new(VecDeque::new()),
                live: Mutex::new(Vec::new()),
                acceptor: Mutex::new(None),
                accepted: AtomicU64::new(0),
            }),
        };
        proxy.accept_on(l);
        proxy
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(SeqCst)
    }

    fn accept_on(&self, l: TcpListener) {
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = l.accept().await else {
                    continue;
                };
                inner.accepted.fetch_add(1, SeqCst);
                let fault = inner
                    .script
                    .lock()
                    .pop_front()
                    .unwrap_or_else(|| inner.fault.lock().clone());
                let target = inner.target;
                let conn = tokio::spawn(async move {
                    let _ = connection(client, target, fault).await;
                });
                let mut live = inner.live.lock();
                live.retain(|h| !h.is_finished());
                live.push(conn.abort_handle());
            }
        });
        *self.inner.acceptor.lock() = Some(task.abort_handle());
    }

    /// Applies `fault` from now on, to new connections and (by closing them)
    /// to the connections already open, which a client would otherwise
    /// keep using. Returns when the port is in the state the fault asks for.
    pub async fn set(&self, fault: Fault) {
        let was_refusing = *self.inner.fault.lock() == Fault::Refuse;
        *self.inner.fault.lock() = fault.clone();
        for conn in self.inner.live.lock().drain(..) {
            conn.abort();
        }
        match (was_refusing, fault == Fault::Refuse) {
            (false, true) => {
                if let Some(a) = self.inner.acceptor.lock().take() {
                    a.abort();
                }
                let deadline = Instant::now() + Duration::from_secs(5);
                while TcpStream::connect(self.addr).await.is_ok() {
                    assert!(Instant::now() < deadline, "the proxy port would not close");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            (true, false) => {
                let deadline = Instant::now() + Duration::from_secs(5);
                let l = loop {
                    match listen(self.addr) {
                        Ok(l) => break l,
                        Err(e) => {
                            assert!(Instant::now() < deadline, "cannot listen again: {e}");
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                };
                self.accept_on(l);
            }
            _ => {}
        }
    }

    /// The next new connections get these faults, one each, in order; then
    /// the global fault applies again. The connections already open are
    /// closed, so that the next request needs a new one.
    pub fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        self.inner.script.lock().extend(faults);
        for conn in self.inner.live.lock().drain(..) {
            conn.abort();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(a) = self.inner.acceptor.lock().take() {
            a.abort();
        }
        for conn in self.inner.live.lock().drain(..) {
            conn.abort();
        }
    }
}

/// One proxied connection.
async fn connection(client: TcpStream, target: SocketAddr, fault: Fault) -> std::io::Result<()> {
    match fault {
        Fault::Refuse => {
            client.set_zero_linger()?;
            drop(client);
            return Ok(());
        }
        Fault::Blackhole => {
            let mut client = client;
            let mut sink = [0u8; 4096];
            while client.read(&mut sink).await? > 0 {}
            // The client gave up; it never got a byte.
            return Ok(());
        }
        _ => {}
    }
    if let Fault::ResetMidBody { .. } = fault {
        // Closing the socket then sends RST instead of FIN.
        client.set_zero_linger()?;
    }
    let upstream = TcpStream::connect(target).await?;
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_upstream, mut to_upstream) = upstream.into_split();
    // Requests pass untouched; `asked` tells the answer pump that what the
    // upstream sends next is a new answer.
    let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let requests = tokio::spawn({
        let asked = asked.clone();
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = from_client.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                // Before the upstream can see the request, let alone answer.
                asked.store(true, SeqCst);
                if to_upstream.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = to_upstream.shutdown().await;
        }
    });
    let mut buf = vec![0u8; 16 * 1024];
    let mut head = Vec::new();
    // Body bytes passed on so far; `None` until the answer's head ended.
    let mut body: Option<usize> = None;
    loop {
        let n = from_upstream.read(&mut buf).await?;
        if n == 0 {
            let _ = to_client.shutdown().await;
            break;
        }
        if asked.swap(false, SeqCst)
            && let Fault::Latency(d) = fault
        {
            tokio::time::sleep(d).await;
        }
        let mut chunk = &buf[..n];
        // How many bytes of this chunk belong to the answer's head.
        let head_part = match body {
            Some(_) => 0,
            None => {
                let start = head.len();
                head.extend_from_slice(chunk);
                match find(&head, b"\r\n\r\n") {
                    Some(end) => {
                        body = Some(0);
                        end + 4 - start
                    }
                    None => chunk.len(),
                }
            }
        };
        if let (Fault::ResetMidBody { after } | Fault::Truncate { after }, Some(seen)) =
            (&fault, body)
        {
            let room = after.saturating_sub(seen);
            let body_part = chunk.len() - head_part;
            if body_part >= room {
                chunk = &chunk[..head_part + room];
                to_client.write_all(chunk).await?;
                to_client.flush().await?;
                if let Fault::ResetMidBody { .. } = fault {
                    // No FIN first: the socket closes (with RST) when the
                    // reading half goes with the request pump.
                    to_client.forget();
                } else {
                    to_client.shutdown().await?;
                }
                requests.abort();
                return Ok(());
            }
        }
        if let Some(seen) = body.as_mut() {
            *seen += chunk.len() - head_part;
        }
        match fault {
            Fault::Trickle { bytes, every } => {
                to_client.write_all(&chunk[..head_part]).await?;
                for piece in chunk[head_part..].chunks(bytes.max(1)) {
                    to_client.write_all(piece).await?;
                    to_client.flush().await?;
                    tokio::time::sleep(every).await;
                }
            }
            _ => to_client.write_all(chunk).await?,
        }
    }
    requests.abort();
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// The scripted upstream
// ---------------------------------------------------------------------------

/// One request as the scripted upstream received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    /// The request target as sent, percent-encoding and all.
    pub raw_path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    /// The path without the query string, as sent.
    pub fn path(&self) -> &str {
        self.raw_path.split('?').next().unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

type Script = Arc<dyn Fn(&Received) -> Response + Send + Sync>;

struct ScriptedInner {
    script: Mutex<Script>,
    received: Mutex<Vec<Received>>,
}

/// An upstream on a free loopback port answering every request with the
/// test's closure (`/health` included), and recording every request.
pub struct Scripted {
    pub addr: SocketAddr,
    inner: Arc<ScriptedInner>,
    task: AbortHandle,
}

impl Scripted {
    /// Starts answering with `script`.
    pub async fn start(script: impl Fn(&Received) -> Response + Send + Sync + 'static) -> Self {
        let l = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let inner = Arc::new(ScriptedInner {
            script: Mutex::new(Arc::new(script)),
            received: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(scripted)
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        })
        .abort_handle();
        Self { addr, inner, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers with `script` from now on.
    pub fn set(&self, script: impl Fn(&Received) -> Response + Send + Sync + 'static) {
        *self.inner.script.lock() = Arc::new(script);
    }

    /// Every request received so far, `/health` included.
    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().clone()
    }

    /// Requests received so far whose path starts with `prefix`.
    pub fn hits(&self, prefix: &str) -> usize {
        self.inner
            .received
            .lock()
            .iter()
            .filter(|r| r.path().starts_with(prefix))
            .count()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn scripted(State(inner): State<Arc<ScriptedInner>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let received = Received {
        method: parts.method.to_string(),
        raw_path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers: parts.headers,
        body,
    };
    inner.received.lock().push(received.clone());
    let script = inner.script.lock().clone();
    script(&received)
}

/// `200` with this JSON text.
pub fn json(body: impl Into<String>) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.into(),
    )
        .into_response()
}

/// This status and text body.
pub fn status(code: u16, body: impl Into<String>) -> Response {
    (StatusCode::from_u16(code).unwrap(), body.into()).into_response()
}

/// `200` with a JSON array of `total` bytes or a little more, produced
/// while it is sent (never held in memory at once), with a
/// `Content-Length` when `declare_length`, else chunked.
pub fn streamed_json(total: usize, declare_length: bool) -> Response {
    const PIECE: usize = 64 * 1024;
    let filler = Bytes::from("0,".repeat(PIECE / 2));
    let pieces = total.div_ceil(PIECE);
    let chunks = std::iter::once(Bytes::from_static(b"["))
        .chain(std::iter::repeat_n(filler, pieces))
        .chain(std::iter::once(Bytes::from_static(b"0]")));
    let length = 1 + pieces * PIECE + 2;
    let body = Body::from_stream(futures::stream::iter(chunks.map(Ok::<_, Infallible>)));
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    if declare_length {
        response
            .headers_mut()
            .insert("content-length", length.to_string().parse().unwrap());
    }
    response
}

// ---------------------------------------------------------------------------
// The daemon binary with its logs and pid
// ---------------------------------------------------------------------------

/// The real `revalidate serve`, its stderr written to `stderr.log` in its
/// directory; killed on drop.
pub struct Proc {
    child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Proc {
    /// Starts `revalidate serve --config <config> <args>` in a new temporary
    /// directory. `RUST_LOG` is unset unless given in `env`, so `--debug`
    /// chooses the filter.
    pub fn start(config: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let path = dir.join("revalidate.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join("stderr.log");
        let mut cmd = Command::new(super::bin());
        cmd.args(["serve", "--config"])
            .arg(&path)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(i) = text.find(" on http://") {
                let rest = &text[i + 11..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                    .unwrap_or(rest.len());
                if end < rest.len() {
                    break rest[..end].parse().unwrap();
                }
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the daemon exited with {status} before listening:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not listen within 30 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            child,
            addr,
            dir,
            log,
            _tmp: tmp,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
    pub fn proc_status_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in /proc/<pid>/status"));
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap();
        kb * 1024
    }

    /// Sends SIGTERM and waits for a graceful exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not stop within 15 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The directory's path for a file.
    pub fn file(&self, name: impl AsRef<Path>) -> PathBuf {
        self.dir.join(name)
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
