//! Outages: the simulated API closes its port on a schedule and binds it
//! again, so that the daemon sees real connection failures; and the choice
//! of a port that can be bound again.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::DemoConfig;
use crate::server::Shared;

/// How long [`DemoUpstream::shutdown`](crate::DemoUpstream::shutdown) waits
/// for requests in flight.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How long to wait before trying again when the port cannot be bound back
/// after an outage.
const REBIND_RETRY: Duration = Duration::from_millis(100);

/// A free loopback port outside the ephemeral range, for
/// [`DemoUpstream::start`](crate::DemoUpstream::start): during an outage the
/// simulated API gives its port back, and an ephemeral one could be taken
/// meanwhile by an outgoing connection. Falls back to port 0 (any) when
/// 9000–9099 are all taken.
pub async fn upstream_addr() -> SocketAddr {
    for port in 9000..9100 {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if TcpListener::bind(addr).await.is_ok() {
            return addr;
        }
    }
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// When the API goes down and for how long.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OutageSchedule {
    /// Time up before each outage.
    every: Duration,
    /// Time down.
    length: Duration,
}

impl OutageSchedule {
    /// `None` when either duration is zero: no outages.
    pub(crate) fn from_config(config: &DemoConfig) -> Option<Self> {
        (!config.outage_every.is_zero() && !config.outage_for.is_zero()).then_some(Self {
            every: config.outage_every,
            length: config.outage_for,
        })
    }
}

/// Binds a listener that can be bound again on the same port right after it
/// is closed.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
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
pub(crate) async fn supervise(
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::testing::{ANY_PORT, get, quiet, read_reply, wait_until};
    use crate::{DemoConfig, DemoUpstream};

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
}
