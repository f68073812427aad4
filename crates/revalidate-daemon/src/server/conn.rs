//! The accept loop: hyper-util's HTTP/1 and HTTP/2 server under the
//! daemon's own limits.
//!
//! - **Connection cap.** Each connection holds one permit of
//!   `[server] max_connections`; with none left the loop stops accepting,
//!   so new connections wait in the listen backlog (the kernel completes
//!   their handshake, nothing reads them) until one closes. They are never
//!   accepted only to be closed.
//! - **Header read timeout.** From the first byte a client sends while no
//!   request of its connection is in flight, it has `header_read_timeout`
//!   to complete the request head; then the connection is closed. (hyper's
//!   own `header_read_timeout` starts when it begins to wait for a head, so
//!   on a keep-alive connection it would run through the idle time and
//!   close it at the header timeout; it is off, and this replaces it.)
//! - **Idle timeout.** A connection with no request in flight and no byte
//!   received for `idle_timeout` is closed. A request is in flight until
//!   its response body is finished, so a Server-Sent Events stream is never
//!   idle.
//! - **Shutdown.** When the stop signal comes, the loop stops accepting;
//!   connections with nothing in flight (idle, or a request half sent) are
//!   closed at once, the others finish their responses (SSE streams end by
//!   themselves) and close. [`Connections::closed`] tells when all are gone.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tower::Service;

/// The limits of the accept loop.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
}

/// Open files the process keeps for itself beyond its connections: the
/// listener, the store, the upstream's pool, the runtime, stdio.
const FD_HEADROOM: u64 = 128;

/// `configured`, lowered so that connections and `FD_HEADROOM` fit in the
/// open-file limit (raising the soft limit towards the hard one first).
/// Returns the effective cap and the soft limit it was fitted to.
pub(crate) fn effective_max_connections(configured: usize) -> (usize, Option<u64>) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let Some(mut soft) = limit.current else {
        return (configured, None); // unlimited
    };
    let want = configured as u64 + FD_HEADROOM;
    if soft < want {
        let raised = limit.maximum.map_or(want, |hard| hard.min(want));
        if raised > soft
            && setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(raised),
                    maximum: limit.maximum,
                },
            )
            .is_ok()
        {
            soft = raised;
        }
    }
    let fits = usize::try_from(soft.saturating_sub(FD_HEADROOM).max(1)).unwrap_or(usize::MAX);
    (configured.min(fits), Some(soft))
}

/// The open connections, counted by the permits they hold.
#[derive(Debug)]
pub(crate) struct Connections {
    permits: Arc<Semaphore>,
    max: usize,
}

impl Connections {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
        })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// Completes once no connection is open.
    pub(crate) async fn closed(&self) {
        let n = u32::try_from(self.max).unwrap_or(u32::MAX);
        let _all = self.permits.acquire_many(n).await;
    }
}

/// One connection's activity, shared by its I/O, its requests and its
/// watchdog. Times are milliseconds since the connection opened.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    /// Requests whose response body is not finished.
    in_flight: AtomicUsize,
    /// When it last became idle (opened, or a response finished).
    idle_since: AtomicU64,
    /// When the first byte of a request head arrived while idle (`0`: none
    /// is pending; stored as ms + 1).
    head_since: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Bytes arrived: if idle, a request head has started.
    fn received(&self) {
        if !self.busy() && self.head_since.load(Ordering::Relaxed) == 0 {
            self.head_since.store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// A request's head is complete: it is in flight until the guard drops.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// When the watchdog should close the connection, if nothing changes.
    fn deadline(&self, limits: &Limits) -> Option<u64> {
        if self.busy() {
            return None;
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        match self.head_since.load(Ordering::Relaxed) {
            0 => Some(
                self.idle_since
                    .load(Ordering::Relaxed)
                    .saturating_add(ms(limits.idle_timeout)),
            ),
            since => Some((since - 1).saturating_add(ms(limits.header_read_timeout))),
        }
    }
}

/// A request in flight; dropped when its response body is finished (or
/// abandoned).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.now_ms(), Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body holding its request's [`InFlight`] until hyper drops it
/// (finished or abandoned). A plain wrapper, not `Body::new(map_frame)`,
/// which would box every response body a second time.
struct Guarded {
    body: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The socket, telling the connection's activity when bytes arrive.
struct Tracked {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.received();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Completes once `stop` is true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// What the accept loop serves: axum's `Router` (the bench's floor), or the
/// daemon's [`App`](super::App), its `Router` with a fast path for cached
/// reads.
pub(crate) trait Serve:
    Service<Request<Incoming>, Response = Response, Error = Infallible, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Serve for S where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible, Future: Send>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Accepts connections until `stop` turns true, serving each with `app`.
pub(crate) async fn accept_loop<A: Serve>(
    listener: TcpListener,
    app: A,
    limits: Limits,
    connections: Arc<Connections>,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Our own header timeout replaces hyper's (see the module's comment).
    builder.http1().timer(hyper_util::rt::TokioTimer::new());
    builder.http1().header_read_timeout(None);
    builder.http1().keep_alive(true);
    let builder = Arc::new(builder);
    loop {
        let permit = tokio::select! {
            p = connections.permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            () = stopped(&mut stop) => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: wait a little, as axum::serve does.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => return,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, app, &builder, limits, stop).await;
            tracing::trace!(%peer, "connection closed");
            drop(permit);
        });
    }
}

async fn serve_connection<A: Serve>(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    app: A,
    builder: &auto::Builder<TokioExecutor>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Activity::new();
    let io = TokioIo::new(Tracked {
        io: stream,
        activity: activity.clone(),
    });
    let hyper_app = TowerToHyperService::new(app);
    let service = hyper::service::service_fn({
        let activity = activity.clone();
        move |mut request: hyper::Request<Incoming>| {
            // Who is on the other end, for `[identity] trusted_proxies`.
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let guard = activity.begin();
            let answer = hyper_app.call(request);
            async move {
                let response = match answer.await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                // The request stays in flight until its body is finished.
                Ok::<_, Infallible>(response.map(|body| Guarded {
                    body,
                    _in_flight: guard,
                }))
            }
        }
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    // Checks a little more often than the shortest limit, so a connection
    // closes within a quarter of its limit after it is due.
    let tick = (limits.header_read_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(25), Duration::from_secs(1));
    let mut watchdog = tokio::time::interval(tick);
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            () = stopped(&mut stop) => break,
            _ = watchdog.tick() => {
                if activity.deadline(&limits).is_some_and(|due| activity.now_ms() >= due) {
                    return; // dropping the connection closes the socket
                }
            }
        }
    }
    // Stopping.
    if !activity.busy() {
        return; // idle, or a request half sent: close at once
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}
