//! The daemon under hostile conditions, as a black-box probe sees it: the
//! real `revalidate` binary on loopback, raw sockets, signals, a corrupted
//! store file. Every wait has a deadline; nothing sleeps a fixed time to
//! let something happen.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use support::{
    Proc, SseReader, Upstream, binary, closed_within, config, raw, raw_status, with_server,
    with_store,
};

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn get(url: &str) -> reqwest::Response {
    http().get(url).send().await.unwrap()
}

async fn json(url: &str) -> Value {
    get(url).await.json().await.unwrap()
}

// --- 1. shutdown ----------------------------------------------------------

/// Reads three queries, opens both SSE streams and a half-sent request.
async fn busy_daemon(
    up: &Upstream,
    dir: &Path,
    server: &str,
) -> (Proc, SseReader, SseReader, TcpStream) {
    let store = dir.join("cache.redb");
    let cfg = with_store(
        &with_server(&config(&up.base_url(), "item = \"1h\"", ""), server),
        &store,
    );
    let d = Proc::serve(&cfg, dir, &[]).listening();
    for i in 0..3 {
        let r = get(&d.url(&format!("/v1/resources/item.get?id={i}"))).await;
        assert_eq!(r.status(), 200);
    }
    let events = SseReader::open(&d.url("/v1/events"), None).await;
    let mut live = SseReader::open(&d.url("/v1/live"), None).await;
    let tick = live
        .next(Duration::from_secs(5))
        .await
        .expect("a first tick");
    assert_eq!(tick.event, "tick");
    let mut half = TcpStream::connect(d.addr()).unwrap();
    half.write_all(b"GET /v1/stats HT").unwrap();
    (d, events, live, half)
}

/// What the store holds: the queries a new daemon on it restores.
async fn restored(up: &Upstream, dir: &Path) -> usize {
    let cfg = with_store(
        &config(&up.base_url(), "item = \"1h\"", ""),
        &dir.join("cache.redb"),
    );
    let mut d = Proc::serve(&cfg, dir, &[]).listening();
    let line = d.wait_line("restored", Duration::from_secs(5));
    let n = json(&d.url("/v1/queries")).await["queries"]
        .as_array()
        .unwrap()
        .len();
    assert!(line.contains(&format!("restored {n} queries")), "{line}");
    n
}

async fn saw_shutdown(sse: &mut SseReader) -> bool {
    while let Some(ev) = sse.next(Duration::from_secs(5)).await {
        if ev.event == "shutdown" {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_sse_streams_closes_half_requests_and_flushes() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let grace = Duration::from_secs(3);
    let (mut d, mut events, mut live, mut half) =
        busy_daemon(&up, dir.path(), "shutdown_grace = \"3s\"").await;
    let t = Instant::now();
    d.signal("TERM");
    assert!(
        saw_shutdown(&mut events).await,
        "/v1/events ended with a shutdown event"
    );
    assert!(
        saw_shutdown(&mut live).await,
        "/v1/live ended with a shutdown event"
    );
    let status = d
        .exit_within(grace + Duration::from_secs(3))
        .expect("the daemon exits within the grace and some slack");
    assert_eq!(status.code(), Some(0), "{}", d.stderr());
    assert!(
        t.elapsed() < grace,
        "nothing was left to wait for: {:?}",
        t.elapsed()
    );
    assert!(
        closed_within(&mut half, Duration::from_secs(1)),
        "the half-sent request was closed"
    );
    assert!(d.stderr().contains("store flushed"), "{}", d.stderr());
    assert_eq!(
        restored(&up, dir.path()).await,
        3,
        "the store holds what was read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_gets_the_grace_then_the_daemon_exits_anyway() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut d, _events, _live, _half) =
        busy_daemon(&up, dir.path(), "shutdown_grace = \"1500ms\"").await;
    // A read the upstream takes 30 s to answer: in flight at the stop.
    up.set_latency(Duration::from_secs(30));
    let url = d.url("/v1/resources/item.get?id=slow");
    let slow = tokio::spawn(async move { get(&url).await });
    support::eventually(
        Duration::from_secs(5),
        "the slow read upstream",
        async || up.calls("item.get") >= 4,
    )
    .await;
    let t = Instant::now();
    d.signal("TERM");
    let status = d
        .exit_within(Duration::from_secs(5))
        .expect("exits after the grace");
    assert_eq!(status.code(), Some(0), "{}", d.stderr());
    assert!(
        t.elapsed() >= Duration::from_millis(1400),
        "the request had its grace: {:?}",
        t.elapsed()
    );
    assert!(d.stderr().contains("shutdown_grace"), "{}", d.stderr());
    assert!(d.stderr().contains("store flushed"), "{}", d.stderr());
    slow.abort();
    up.set_latency(Duration::ZERO);
    assert_eq!(restored(&up, dir.path()).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_still_flushes() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut d, _events, _live, _half) =
        busy_daemon(&up, dir.path(), "shutdown_grace = \"1h\"").await;
    up.set_latency(Duration::from_secs(30));
    let url = d.url("/v1/resources/item.get?id=slow");
    let slow = tokio::spawn(async move { get(&url).await });
    support::eventually(
        Duration::from_secs(5),
        "the slow read upstream",
        async || up.calls("item.get") >= 4,
    )
    .await;
    d.signal("INT");
    d.wait_line("stopping:", Duration::from_secs(5));
    // The grace is an hour: only the second signal can end this.
    assert!(
        d.exit_within(Duration::from_millis(300)).is_none(),
        "waits for the request"
    );
    let t = Instant::now();
    d.signal("INT");
    let status = d
        .exit_within(Duration::from_secs(3))
        .expect("a second signal exits at once");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(status.code(), Some(0), "{}", d.stderr());
    assert!(d.stderr().contains("store flushed"), "{}", d.stderr());
    slow.abort();
    up.set_latency(Duration::ZERO);
    assert_eq!(restored(&up, dir.path()).await, 3);
}

// --- 2. a corrupted store ------------------------------------------------

/// A valid store the daemon wrote: three queries, flushed at SIGTERM.
async fn written_store(up: &Upstream, dir: &Path) -> PathBuf {
    let store = dir.join("cache.redb");
    let cfg = with_store(&config(&up.base_url(), "item = \"1h\"", ""), &store);
    let mut d = Proc::serve(&cfg, dir, &[]).listening();
    for i in 0..3 {
        assert_eq!(
            get(&d.url(&format!("/v1/resources/item.get?id={i}")))
                .await
                .status(),
            200
        );
    }
    d.signal("TERM");
    assert_eq!(
        d.exit_within(Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(0)
    );
    store
}

/// One byte flipped at offset 1000 of every 4 KiB page.
fn flip_every_page(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    for page in (0..bytes.len()).step_by(4096) {
        if let Some(b) = bytes.get_mut(page + 1000) {
            *b ^= 0xff;
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// The last 4 KiB overwritten with (seeded) noise.
fn noise_at_the_end(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let start = bytes.len().saturating_sub(4096);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in &mut bytes[start..] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(path, bytes).unwrap();
}

fn asides(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".corrupt-"))
        .collect()
}

/// A digit of the first stored body changed (`"id":"0"` to `"id":"1"`):
/// still valid JSON, still a valid redb page unless redb checks the page,
/// so only a checksum can notice.
fn change_a_body_digit(path: &Path) {
    const AT: &[u8] = b"\"params\":{\"id\":\"";
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes
        .windows(AT.len())
        .position(|w| w == AT)
        .expect("a stored body");
    assert!(bytes[at + AT.len()].is_ascii_digit());
    bytes[at + AT.len()] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// What `serve` did with a damaged store: stopped, or started.
enum Outcome {
    /// With what it wrote to stderr.
    Exited(std::process::ExitStatus, String),
    Listening(Proc),
}

fn outcome(mut d: Proc) -> Outcome {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if d.stderr().contains(" on http://") {
            return Outcome::Listening(d.listening());
        }
        if let Some(status) = d.exit_within(Duration::from_millis(20)) {
            return Outcome::Exited(status, d.stderr());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "neither listening nor exited\n{}",
            d.stderr()
        );
    }
}

/// The damaged `store` is reported as corrupt: with `on_error = "fail"`,
/// exit 1 with one line naming the path and the two ways out, the file
/// untouched; with `"memory"`, moved aside (kept) and a daemon serving from
/// memory.
async fn reported_as_corrupt(dir: &Path, store: &Path, cfg: &str, damage: &str) {
    let damaged_len = std::fs::metadata(store).unwrap().len();
    let Outcome::Exited(status, err) = outcome(Proc::serve(cfg, dir, &[])) else {
        panic!("{damage}: served from a damaged store");
    };
    assert_ne!(status.code(), Some(101), "{damage}: a panic\n{err}");
    assert_eq!(status.code(), Some(1), "{damage}\n{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{damage}: no error line\n{err}"));
    assert!(line.contains("store is corrupt"), "{damage}: {line}");
    assert!(
        line.contains(&store.display().to_string()),
        "{damage}: {line}"
    );
    assert!(
        line.contains(&format!("mv {}", store.display())),
        "{damage}: {line}"
    );
    assert!(line.contains("on_error = \"memory\""), "{damage}: {line}");
    assert!(store.exists(), "{damage}: not deleted");
    assert!(asides(dir).is_empty());

    let cfg = cfg.replace("[store]\n", "[store]\non_error = \"memory\"\n");
    let mut d = Proc::serve(&cfg, dir, &[]).listening();
    let warning = d.wait_line(".corrupt-", Duration::from_secs(1));
    let aside = asides(dir);
    assert_eq!(aside.len(), 1, "{damage}: {aside:?}");
    assert!(
        warning.contains(&aside[0].display().to_string()),
        "{damage}: {warning}"
    );
    assert!(warning.contains("memory-only"), "{damage}: {warning}");
    assert_eq!(
        std::fs::metadata(&aside[0]).unwrap().len(),
        damaged_len,
        "{damage}: kept whole"
    );
    let r = get(&d.url("/v1/resources/item.get?id=0")).await;
    assert_eq!(r.status(), 200, "{damage}");
    let queries = json(&d.url("/v1/queries")).await;
    assert_eq!(
        queries["queries"].as_array().unwrap().len(),
        1,
        "{damage}: nothing restored"
    );
    d.signal("TERM");
    let status = d.exit_within(Duration::from_secs(10)).expect("stops");
    assert_eq!(status.code(), Some(0), "{damage}\n{}", d.stderr());
}

type Damage = (&'static str, fn(&Path));

const DAMAGES: [Damage; 3] = [
    ("a flipped byte in every page", flip_every_page),
    ("noise in the last 4 KiB", noise_at_the_end),
    ("a digit of a stored body changed", change_a_body_digit),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_checked_at_open_is_reported_and_kept() {
    let up = Upstream::start().await;
    for (damage, corrupt) in DAMAGES {
        let dir = tempfile::tempdir().unwrap();
        let store = written_store(&up, dir.path()).await;
        corrupt(&store);
        let cfg = with_store(&config(&up.base_url(), "item = \"1h\"", ""), &store)
            .replace("[store]\n", "[store]\nverify_on_open = true\n");
        reported_as_corrupt(dir.path(), &store, &cfg, damage).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_never_panics_the_daemon_nor_serves_damaged_data() {
    let up = Upstream::start().await;
    for (damage, corrupt) in DAMAGES {
        let dir = tempfile::tempdir().unwrap();
        let store = written_store(&up, dir.path()).await;
        corrupt(&store);
        let cfg = with_store(&config(&up.base_url(), "item = \"1h\"", ""), &store);
        if damage.contains("digit") {
            // Damage inside a record: its checksum catches it at hydrate.
            reported_as_corrupt(dir.path(), &store, &cfg, damage).await;
            continue;
        }
        // Damage elsewhere in the file: redb finds it (a corrupt error),
        // or it touched nothing the records hold, and the daemon serves
        // them as the upstream sent them.
        match outcome(Proc::serve(&cfg, dir.path(), &[])) {
            Outcome::Exited(status, err) => {
                assert_eq!(
                    status.code(),
                    Some(1),
                    "{damage}: not a clean error exit\n{err}"
                );
                assert!(err.contains("store is corrupt"), "{damage}\n{err}");
            }
            Outcome::Listening(mut d) => {
                for i in 0..3 {
                    let url = d.url(&format!("/v1/resources/item.get?id={i}"));
                    let body: serde_json::Value = get(&url).await.json().await.unwrap();
                    assert_eq!(body["params"]["id"], i.to_string(), "{damage}: {body}");
                    assert_eq!(body["action"], "item.get", "{damage}: {body}");
                }
                d.signal("TERM");
                let status = d.exit_within(Duration::from_secs(10)).expect("stops");
                assert_eq!(status.code(), Some(0), "{damage}\n{}", d.stderr());
            }
        }
    }
}

// --- 4. timeouts and the connection cap ------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_is_closed_after_the_header_timeout() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = with_server(
        &config(&up.base_url(), "item = \"1h\"", ""),
        "header_read_timeout = \"2s\"\nidle_timeout = \"1h\"",
    );
    let d = Proc::serve(&cfg, dir.path(), &[]).listening();
    let mut s = TcpStream::connect(d.addr()).unwrap();
    let request = b"GET /v1/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa";
    let t = Instant::now();
    // One byte a second, never the end of the head.
    let mut closed_at = None;
    for b in request.iter().cycle().take(30) {
        if s.write_all(&[*b]).is_err() || closed_within(&mut s, Duration::from_secs(1)) {
            closed_at = Some(t.elapsed());
            break;
        }
    }
    let closed_at = closed_at.expect("the slowloris was never closed");
    assert!(
        closed_at >= Duration::from_millis(1900) && closed_at < Duration::from_secs(5),
        "closed after {closed_at:?}, the header timeout is 2 s"
    );
    // Honest clients are still served.
    assert_eq!(
        raw_status(d.addr(), "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        Some(200)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_but_an_sse_stream_is_not() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = with_server(
        &config(&up.base_url(), "item = \"1h\"", ""),
        "header_read_timeout = \"1h\"\nidle_timeout = \"1500ms\"",
    );
    let d = Proc::serve(&cfg, dir.path(), &[]).listening();
    let mut live = SseReader::open(&d.url("/v1/events"), None).await;

    let mut s = TcpStream::connect(d.addr()).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let t = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "the idle connection was closed"
    );
    let idle = t.elapsed();
    assert!(
        idle >= Duration::from_millis(1400) && idle < Duration::from_secs(4),
        "closed after {idle:?} idle, the idle timeout is 1.5 s"
    );
    // The SSE stream has been open longer than the idle timeout: still
    // there, it gets the next change.
    assert!(t.elapsed() > Duration::from_millis(1500));
    get(&d.url("/v1/resources/item.get?id=1")).await;
    let ev = live
        .next(Duration::from_secs(5))
        .await
        .expect("the stream is open");
    assert_eq!(ev.event, "change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_a_connection_waits_until_one_closes() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = with_server(
        &config(&up.base_url(), "item = \"1h\"", ""),
        "max_connections = 20",
    );
    let mut d = Proc::serve(&cfg, dir.path(), &[]).listening();
    assert!(
        d.wait_line("serving at most", Duration::from_secs(1))
            .contains("at most 20 connections")
    );
    // 20 keep-alive connections, each served once and held open.
    let mut held: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(d.addr()).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
            s
        })
        .collect();
    let mut extra = TcpStream::connect(d.addr()).unwrap(); // in the backlog
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    extra
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(
        matches!(extra.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "the 21st connection is not served while 20 are open"
    );
    drop(held.pop());
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = extra.read(&mut buf).expect("served once one closed");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

/// `VmRSS` of a process, in bytes.
fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kb * 1024
}

/// Lets this test process hold `n` sockets (the daemon raises its own limit).
fn raise_fd_limit(n: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let want = limit.maximum.map_or(n, |hard| hard.min(n));
    if limit.current.is_some_and(|soft| soft < want) {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want),
                maximum: limit.maximum,
            },
        )
        .expect("raise the open-file limit");
    }
}

/// A burst of SSE streams costs memory while they are open, and the daemon
/// gives it back once they close. With glibc's allocator the high-water mark
/// stayed for the life of the process (2,000 closed streams: +38 MiB, for
/// good); the daemon's allocator now returns it within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_of_a_burst_of_sse_streams_comes_back_once_they_close() {
    const STREAMS: usize = 1500;
    raise_fd_limit(STREAMS as u64 + 512);
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&up.base_url(), "item = \"1h\"", "");
    let d = Proc::serve(&cfg, dir.path(), &[]).listening();
    assert_eq!(
        raw_status(d.addr(), "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        Some(200)
    );
    let before = rss_of(d.pid());
    let streams: Vec<TcpStream> = (0..STREAMS)
        .map(|_| {
            let mut s = TcpStream::connect(d.addr()).unwrap();
            s.write_all(b"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
            s
        })
        .collect();
    let open = rss_of(d.pid());
    let grown = open.saturating_sub(before);
    assert!(
        grown > 8 << 20,
        "{STREAMS} open streams cost memory: {before} -> {open} bytes"
    );
    drop(streams);
    let pid = d.pid();
    support::eventually(
        Duration::from_secs(60),
        "at least half of the streams' memory given back",
        async || rss_of(pid) <= before + grown / 2,
    )
    .await;
    eprintln!(
        "RSS {} MiB before, {} MiB with {STREAMS} streams, {} MiB after they closed",
        before >> 20,
        open >> 20,
        rss_of(pid) >> 20
    );
}

// --- 5. the Host check ------------------------------------------------------

fn request_with_host(path: &str, host: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_is_421_everywhere_and_allowed_hosts_widen_it() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let base = config(&up.base_url(), "item = \"1h\"", "");
    let d = Proc::serve(&base, dir.path(), &[]).listening();
    let port = d.addr().port();
    for path in [
        "/v1/stats",
        "/",
        "/v1/events",
        "/v1/live",
        "/v1/resources/item.get?id=1",
        "/nope",
    ] {
        let answer = raw(d.addr(), &request_with_host(path, "rebind.evil.example"));
        assert!(answer.starts_with("HTTP/1.1 421"), "{path}: {answer}");
        assert!(
            answer.contains("content-type: application/json"),
            "{path}: {answer}"
        );
        assert!(
            answer.contains("\"error\":\"misdirected_request\""),
            "{path}: {answer}"
        );
    }
    assert_eq!(
        up.calls("item.get"),
        0,
        "a misdirected read never reaches the upstream"
    );
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "[::1]".to_owned(),
        "LOCALHOST".to_owned(),
    ] {
        assert_eq!(
            raw_status(d.addr(), &request_with_host("/healthz", &host)),
            Some(200),
            "{host}"
        );
    }
    assert_eq!(
        raw_status(d.addr(), "GET /healthz HTTP/1.0\r\n\r\n"),
        Some(421),
        "no Host at all"
    );
    drop(d);

    let cfg = with_server(
        &base,
        "allowed_hosts = [\"cache.example.com\", \"*.internal.example:8080\"]",
    );
    let d = Proc::serve(&cfg, dir.path(), &[]).listening();
    let status = |host: &str| raw_status(d.addr(), &request_with_host("/healthz", host));
    assert_eq!(status("cache.example.com"), Some(200));
    assert_eq!(status("cache.example.com:1234"), Some(200));
    assert_eq!(status("a.internal.example:8080"), Some(200));
    assert_eq!(status("a.internal.example:8081"), Some(421));
    assert_eq!(
        status("127.0.0.1"),
        Some(421),
        "a list replaces the defaults"
    );
    drop(d);

    let cfg = with_server(&base, "allowed_hosts = [\"*\"]");
    let d = Proc::serve(&cfg, dir.path(), &[]).listening();
    assert_eq!(
        raw_status(d.addr(), &request_with_host("/healthz", "anything.example")),
        Some(200)
    );
}

// --- 7. the query cap -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_keys_never_grows_the_cache_past_max_queries() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = with_server(
        &config(&up.base_url(), "item = \"1h\"", ""),
        "max_queries = 50",
    );
    let d = Proc::serve(&cfg, dir.path(), &[]).listening();
    let client = http();
    for batch in 0..6 {
        let statuses = futures::stream::iter(0..50)
            .map(|i| {
                let url = d.url(&format!("/v1/resources/item.get?flood={batch}-{i}"));
                let client = client.clone();
                async move { client.get(&url).send().await.unwrap().status() }
            })
            .buffer_unordered(1)
            .collect::<Vec<_>>()
            .await;
        assert!(statuses.iter().all(|s| *s == 200), "every read is served");
        let cached = json(&d.url("/v1/stats")).await["cached_queries"]
            .as_u64()
            .unwrap();
        assert!(
            cached <= 50,
            "batch {batch}: {cached} cached, the cap is 50"
        );
    }
    assert_eq!(up.calls("item.get"), 300);
}

// --- 6. the low ones --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_details_a_probe_found() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = with_server(
        &config(&up.base_url(), "item = \"1h\"", ""),
        "admin_token_env = \"HOSTILE_TOKEN\"",
    );
    let d = Proc::serve(&cfg, dir.path(), &[("HOSTILE_TOKEN", "s3cret")]).listening();
    // Percent-encoded bytes that are not UTF-8: 400 naming the parameter,
    // where a lossy decoding made %FF and %FE one key.
    for q in ["id=%FF", "id=%FE"] {
        let r = get(&d.url(&format!("/v1/resources/item.get?{q}"))).await;
        assert_eq!(r.status(), 400, "{q}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "bad_request");
        assert!(body["message"].as_str().unwrap().contains("`id`"), "{body}");
    }
    assert_eq!(up.calls("item.get"), 0);
    let r = get(&d.url("/v1/events?action=%FF")).await;
    assert_eq!(r.status(), 400);

    let invalidate = async |auth: &str, body: &str| {
        http()
            .post(d.url("/v1/invalidate"))
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    };
    // The auth scheme is case-insensitive.
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = invalidate(&format!("{scheme} s3cret"), r#"{"all": true}"#).await;
        assert_eq!(r.status(), 200, "{scheme}");
    }
    assert_eq!(
        invalidate("Basic s3cret", r#"{"all": true}"#)
            .await
            .status(),
        401
    );
    // params that is not an object is a mistake, not "invalidated 0".
    for params in ["[1]", "\"id=1\"", "7", "true"] {
        let r = invalidate(
            "Bearer s3cret",
            &format!(r#"{{"action": "item.get", "params": {params}}}"#),
        )
        .await;
        assert_eq!(r.status(), 400, "params {params}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains("params"),
            "{body}"
        );
    }
    get(&d.url("/v1/resources/item.get?id=1")).await;
    let r = invalidate(
        "Bearer s3cret",
        r#"{"action": "item.get", "params": {"id": "1"}}"#,
    )
    .await;
    assert_eq!(r.json::<Value>().await.unwrap()["invalidated"], 1);
}

/// Runs `revalidate ARGS FILE` on `text`; the exit code and stderr.
fn run_on(args: &[&str], dir: &Path, text: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let file = dir.join("cfg.toml");
    std::fs::write(&file, text).unwrap();
    let mut cmd = Command::new(binary());
    cmd.args(args).arg(&file).env_remove("HOSTILE_UNSET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    // `serve` with a good config would run: give it a deadline.
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (None, "still running".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn check_config_rejects_what_serve_rejects_and_both_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[upstream]\nbase_url = \"http://127.0.0.1:9\"\n";
    let missing_dir = dir.path().join("nope").join("cache.redb");
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{base}headers = {{ X-Token = \"${{HOSTILE_UNSET}}\" }}\n[actions.a]\n"),
            "cfg.toml:3:23",
        ),
        (
            format!("{base}[actions.a]\nheaders = {{ X-Evil = \"a\\r\\nInjected: 1\" }}\n"),
            "actions.a.headers.X-Evil",
        ),
        (
            format!(
                "{base}[actions.a]\n[store]\npath = \"{}\"\n",
                missing_dir.display()
            ),
            "store.path",
        ),
        (
            format!("[server]\nshutdown_grace = \"99999999999h\"\n{base}[actions.a]\n"),
            "server.shutdown_grace",
        ),
        (
            format!("[server]\nmax_connections = 99999999999999\n{base}[actions.a]\n"),
            "server.max_connections",
        ),
        (
            format!("{base}probe_interval = \"1ms\"\n[actions.a]\n"),
            "upstream.probe_interval",
        ),
        (
            format!("[store]\npath = \"x.redb\"\nmax_age = \"99999999999h\"\n{base}[actions.a]\n"),
            "store.max_age",
        ),
        (
            format!("[server]\nallowed_hosts = \"localhost\"\n{base}[actions.a]\n"),
            "server.allowed_hosts",
        ),
        (
            format!("[server]\nallowed_hosts = [\"a*b\"]\n{base}[actions.a]\n"),
            "server.allowed_hosts",
        ),
    ];
    for (text, needle) in &cases {
        for args in [&["check-config"][..], &["serve", "--config"][..]] {
            let (code, err) = run_on(args, dir.path(), text, &[]);
            assert_eq!(code, Some(2), "{args:?} on\n{text}\n{err}");
            assert!(err.contains(needle), "{args:?}: wants {needle:?} in\n{err}");
            assert!(err.contains("cfg.toml:"), "{args:?}: file:line\n{err}");
        }
    }
    // The same header, with its variable set, is fine.
    let ok = format!("{base}headers = {{ X-Token = \"${{HOSTILE_SET}}\" }}\n[actions.a]\n");
    let (code, err) = run_on(&["check-config"], dir.path(), &ok, &[("HOSTILE_SET", "v")]);
    assert_eq!(code, Some(0), "{err}");
    // check-config created no store.
    assert!(!missing_dir.parent().unwrap().exists());
}
