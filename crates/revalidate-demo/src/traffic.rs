//! A pretend application reading through the daemon, so that queries are
//! active and the dashboard has something to show.

use std::net::SocketAddr;
use std::time::Duration;

/// The pages of the pretend application, as (action, query string).
const SCREENS: &[(&str, &str)] = &[
    ("node.tree", ""),
    ("process.list", "status=active"),
    ("process.list", "status=active&page=2"),
    ("process.get", "id=PRC-1001"),
    ("rule.search", "q=invoice"),
    ("rule.list", ""),
    ("office.list", ""),
    ("workflow.list", "state=running"),
    ("notification.list", "unread=true"),
    ("settings.get", ""),
    ("system_health", ""),
    ("workflow_status", ""),
];

/// How often the pretend application looks at its screens.
const TICK: Duration = Duration::from_millis(700);

/// Reads the demo's resources from the daemon at `addr`
/// (`GET /v1/resources/…`) every 700 ms, forever: some screens on every
/// tick, others now and then, one (`rule.search`) only during the first
/// 40 ticks, so that the dashboard shows it going inactive. Answers are not looked at; a
/// daemon that is not there yet is simply tried again.
///
/// Needs a TLS crypto provider installed for reqwest when the process
/// builds reqwest with `rustls-no-provider` (as the `revalidate` binary
/// does, and installs one); it only ever speaks plain HTTP.
pub async fn simulate_traffic(addr: SocketAddr) {
    let http = reqwest::Client::new();
    let mut tick = tokio::time::interval(TICK);
    let mut n: usize = 0;
    loop {
        tick.tick().await;
        // Walk the screens at different speeds: some are read on every
        // tick, others now and then, one (rule.search) only at the start.
        for (i, (action, query)) in SCREENS.iter().enumerate() {
            let every = 1 + i % 4;
            if *action == "rule.search" && n > 40 {
                continue;
            }
            if n.is_multiple_of(every) {
                let url = format!("http://{addr}/v1/resources/{action}?{query}");
                let _ = http.get(url).send().await;
            }
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use axum::Router;
    use axum::extract::{Path, RawQuery, State};
    use axum::routing::get;
    use tokio::sync::Mutex;

    use super::*;
    use crate::DEMO_ACTIONS;

    type Seen = Arc<Mutex<BTreeSet<(String, String)>>>;

    async fn record(
        State(seen): State<Seen>,
        Path(action): Path<String>,
        RawQuery(query): RawQuery,
    ) -> &'static str {
        seen.lock()
            .await
            .insert((action, query.unwrap_or_default()));
        "{}"
    }

    #[tokio::test]
    async fn every_screen_is_read_through_the_daemon_api() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let seen = Seen::default();
        let app = Router::new()
            .route("/v1/resources/{action}", get(record))
            .with_state(Arc::clone(&seen));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let traffic = tokio::spawn(simulate_traffic(addr));

        let want: BTreeSet<(String, String)> = SCREENS
            .iter()
            .map(|(a, q)| ((*a).to_owned(), (*q).to_owned()))
            .collect();
        // Every screen is read within its period (at most 4 ticks).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while *seen.lock().await != want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "screens read: {:?}",
                seen.lock().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        traffic.abort();
        server.abort();
        // And the screens only use actions the simulated API knows.
        assert!(SCREENS.iter().all(|(a, _)| DEMO_ACTIONS.contains(a)));
    }
}
