//! The helper of `bench/scale.sh` and `bench/fanout.sh`: a fast bench
//! upstream, a concurrent cache filler, and a Server-Sent Events fan-out
//! client. Not part of the daemon; built with
//! `cargo build --release -p revalidate-daemon --example scale_bench`
//! (apart from the binary, so that dev-dependency features stay out of it).
//!
//! ```text
//! scale_bench upstream                      # prints its port, serves until killed
//! scale_bench fill URL FROM TO CONCURRENCY  # GET item.get?id=FROM..TO once each
//! scale_bench fanout URL SUBSCRIBERS ROUNDS ADMIN_TOKEN  # ROUNDS per line on stdin
//! ```
//!
//! The upstream answers every request with a distinct ~1 KB JSON body (the
//! request's path, query and body are in it), so that every key is its own
//! entry; a path with `id=hot` also carries a counter, so that each fetch of
//! it is a change. Python's servers answer a few thousand requests a
//! second: filling a million keys through one would take the bench's whole
//! budget.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The size of every body the upstream sends.
const BODY_BYTES: usize = 1024;

fn usage() -> ! {
    eprintln!(
        "usage: scale_bench upstream | fill URL FROM TO CONCURRENCY | fanout URL SUBSCRIBERS ROUNDS ADMIN_TOKEN"
    );
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| usage())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("upstream") => upstream().await,
        Some("fill") => {
            fill(arg(&args, 2), arg(&args, 3), arg(&args, 4), arg(&args, 5)).await;
        }
        Some("fanout") => {
            fanout(arg(&args, 2), arg(&args, 3), arg(&args, 4), arg(&args, 5)).await;
        }
        _ => usage(),
    }
}

/// A ~1 KB JSON document naming `target`, padded to [`BODY_BYTES`].
fn body_for(target: &str, counter: u64) -> Bytes {
    let head = format!(r#"{{"target":{target:?},"n":{counter},"pad":""#);
    let mut body = String::with_capacity(BODY_BYTES);
    body.push_str(&head);
    let pad = BODY_BYTES.saturating_sub(head.len() + 2);
    body.extend(std::iter::repeat_n('x', pad));
    body.push_str("\"}");
    Bytes::from(body)
}

async fn upstream() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    println!("{}", listener.local_addr().expect("addr").port());
    let hot = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let hot = hot.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let hot = hot.clone();
                async move {
                    // The daemon sends an action's parameters as a JSON body
                    // (POST, the default) or a query string (GET): both go
                    // into the answer, so that every key's body is its own.
                    let path = req
                        .uri()
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .to_owned();
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let target = format!("{path} {}", String::from_utf8_lossy(&body));
                    let n = if target.contains("id=hot") || target.contains(r#""id":"hot""#) {
                        hot.fetch_add(1, Ordering::Relaxed) + 1
                    } else {
                        0
                    };
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(body_for(&target, n)))
                            .expect("response"),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Reads `item.get?id=FROM..TO` once each through `concurrency` keep-alive
/// connections: each read of a new key is a miss, a fetch and a new entry.
async fn fill(url: String, from: u64, to: u64, concurrency: usize) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let next = Arc::new(AtomicU64::new(from));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, failed, url) =
                (client.clone(), next.clone(), failed.clone(), url.clone());
            tokio::spawn(async move {
                loop {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    if id >= to {
                        return;
                    }
                    let ok = match client
                        .get(format!("{url}/v1/resources/item.get?id={id}"))
                        .send()
                        .await
                    {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let took = started.elapsed().as_secs_f64();
    let n = to.saturating_sub(from);
    println!(
        r#"{{"filled":{n},"failed":{},"seconds":{took:.2},"per_second":{:.0}}}"#,
        failed.load(Ordering::Relaxed),
        n as f64 / took
    );
}

/// Opens a `/v1/events` stream on a raw connection and reports the instant
/// of each `change` event it reads. Raw, because 10,000 of them must fit in
/// one process next to wrk on one core: a socket, a task and a 4 KB buffer
/// each.
async fn subscriber(
    addr: String,
    ready: tokio::sync::mpsc::Sender<()>,
    seen: tokio::sync::mpsc::UnboundedSender<Instant>,
) -> std::io::Result<()> {
    let mut s = TcpStream::connect(&addr).await?;
    s.write_all(
        format!(
            "GET /v1/events?action=item.get HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut buf = vec![0u8; 4096];
    let mut head = Vec::new();
    // The response head first: the stream counts as ready once it is 200.
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            if !head.starts_with(b"HTTP/1.1 200") {
                return Err(std::io::Error::other(
                    String::from_utf8_lossy(&head[..end]).into_owned(),
                ));
            }
            head.drain(..end + 4);
            break;
        }
    }
    let _ = ready.send(()).await;
    // Then count `event: change` lines; a line may straddle two reads, so
    // the last few bytes of each read are kept for the next.
    const MARK: &[u8] = b"event: change";
    let mut carry = head;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let now = Instant::now();
        carry.extend_from_slice(&buf[..n]);
        let mut from = 0;
        while let Some(at) = carry[from..].windows(MARK.len()).position(|w| w == MARK) {
            let _ = seen.send(now);
            from += at + MARK.len();
        }
        let keep = carry.len().saturating_sub(MARK.len());
        carry.drain(..keep.max(from));
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Connects `subscribers` change streams, then `rounds` times changes one
/// query (invalidate + read of `item.get?id=hot`, whose upstream body
/// changes at every fetch) and measures from the trigger to each stream's
/// `change` event.
async fn fanout(url: String, subscribers: usize, rounds: usize, token: String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let addr = url.trim_start_matches("http://").to_owned();
    let http = reqwest::Client::new();
    let hot = format!("{url}/v1/resources/item.get?id=hot");
    // The hot query exists (and is read) before anyone subscribes.
    http.get(&hot).send().await.expect("first read");
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(subscribers.max(1));
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    // Connect in waves, so that the listen backlog never overflows.
    let wave = 500;
    let mut ready = 0usize;
    for first in (0..subscribers).step_by(wave) {
        for _ in first..(first + wave).min(subscribers) {
            let (addr, ready_tx, seen_tx) = (addr.clone(), ready_tx.clone(), seen_tx.clone());
            tokio::spawn(async move {
                if let Err(e) = subscriber(addr, ready_tx, seen_tx).await {
                    eprintln!("subscriber: {e}");
                }
            });
        }
        let target = (first + wave).min(subscribers);
        while ready < target {
            match tokio::time::timeout(Duration::from_secs(30), ready_rx.recv()).await {
                Ok(Some(())) => ready += 1,
                _ => {
                    eprintln!("only {ready} of {subscribers} streams opened");
                    std::process::exit(1);
                }
            }
        }
    }
    eprintln!(
        "connected {ready} streams in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    println!(r#"{{"connected":{ready}}}"#);
    // A batch of rounds per line on stdin (the script times reads beside
    // some of them), until stdin closes.
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut round = 0;
    while let Ok(Some(_)) = lines.next_line().await {
        for _ in 0..rounds {
            round += 1;
            one_round(&http, &url, &hot, &token, round, ready, &mut seen_rx).await;
        }
    }
}

/// One change, and the time until each of the `ready` streams saw it.
async fn one_round(
    http: &reqwest::Client,
    url: &str,
    hot: &str,
    token: &str,
    round: usize,
    ready: usize,
    seen_rx: &mut tokio::sync::mpsc::UnboundedReceiver<Instant>,
) {
    // Let the previous round's stragglers and the event ring settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while seen_rx.try_recv().is_ok() {}
    let t0 = Instant::now();
    let r = http
        .post(format!("{url}/v1/invalidate"))
        .bearer_auth(token)
        .json(&serde_json::json!({"action": "item.get", "params": {"id": "hot"}}))
        .send()
        .await
        .expect("invalidate");
    assert!(r.status().is_success(), "invalidate: {}", r.status());
    // A stale read starts the refresh at once (the check may be later).
    http.get(hot).send().await.expect("read");
    let mut ms = Vec::with_capacity(ready);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ms.len() < ready {
        match tokio::time::timeout_at(deadline, seen_rx.recv()).await {
            Ok(Some(at)) => ms.push(at.saturating_duration_since(t0).as_secs_f64() * 1000.0),
            _ => break,
        }
    }
    ms.sort_by(f64::total_cmp);
    println!(
        r#"{{"round":{round},"delivered":{},"of":{ready},"p50_ms":{:.2},"p99_ms":{:.2},"max_ms":{:.2}}}"#,
        ms.len(),
        percentile(&ms, 0.50),
        percentile(&ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN),
    );
}
