//! The real daemon behind a fault-injecting TCP proxy on loopback, in front
//! of the scriptable upstream: for each fault (latency, a trickled body, a
//! reset or a truncation mid-body, a black hole, a refused port), the error
//! recorded for the query is of the right kind, the query is not stuck, the
//! last good value is still served and nothing bad is cached, other reads are
//! answered meanwhile, and everything recovers when the fault goes.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::faults::{Fault, FaultProxy};
use support::{Daemon, Upstream, eventually};

/// The upstream timeout of these tests.
const TIMEOUT: Duration = Duration::from_millis(800);

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn get(url: &str) -> reqwest::Response {
    http().get(url).send().await.unwrap()
}

/// `item` refreshes every `item` (the victim), `other` never by time (the
/// bystander); the probe runs once at start, so that only the queries'
/// fetches cross the proxy, and the network is not declared offline.
fn config(base: &str, item: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[upstream]
base_url = "{base}"
timeout = "{}ms"
health_path = "/health"
probe_interval = "1h"

[refresh]
check_interval = "50ms"
max_concurrent_refreshes = 3
retry_interval = "200ms"
max_retries = 1
inactive_after = "1h"
fetch_timeout = "3s"
jitter = 0.0
offline_after_errors = 1000

[staleness]
item = "{item}"
other = "1h"

[actions."item.get"]
[actions."other.get"]
"#,
        TIMEOUT.as_millis()
    )
}

struct Rig {
    up: Arc<Upstream>,
    proxy: FaultProxy,
    daemon: Daemon,
    /// Refreshed every 300 ms: the query the faults hit.
    victim: String,
    /// Cached, never refreshed: reads of it must go on during a fault.
    bystander: String,
    /// The victim's body before the fault.
    good: String,
}

impl Rig {
    async fn start(item: &str) -> Self {
        let up = Upstream::start().await;
        let proxy = FaultProxy::start(up.addr).await;
        let daemon = Daemon::start(&config(&proxy.base_url(), item));
        let victim = daemon.url("/v1/resources/item.get?id=1");
        let bystander = daemon.url("/v1/resources/other.get?id=2");
        let first = get(&victim).await;
        assert_eq!(first.status(), 200);
        let good = first.text().await.unwrap();
        assert_eq!(get(&bystander).await.status(), 200);
        Self {
            up,
            proxy,
            daemon,
            victim,
            bystander,
            good,
        }
    }

    /// The victim's entry in `/v1/queries`.
    async fn victim_state(&self) -> Value {
        let all: Value = get(&self.daemon.url("/v1/queries"))
            .await
            .json()
            .await
            .unwrap();
        all["queries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["action"] == "item.get")
            .cloned()
            .expect("the victim is cached")
    }

    /// Reads that must be answered at once from the cache while the
    /// victim's fetches suffer: the bystander, and the daemon's health.
    async fn other_reads_are_answered(&self) {
        let t = Instant::now();
        let r = get(&self.bystander).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["cache-status"],
            "revalidate; hit",
            "served from the cache"
        );
        assert_eq!(get(&self.daemon.url("/healthz")).await.status(), 200);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "other reads waited {:?}",
            t.elapsed()
        );
    }

    /// The victim serves exactly the last good body, whatever the fault.
    async fn last_good_value_is_served(&self) {
        let r = get(&self.victim).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), self.good, "nothing bad was cached");
    }

    /// Sets `fault` and checks what every fault must leave intact; the
    /// victim's error must be of `kind`.
    async fn suffer(&self, fault: Fault, kind: &str) {
        self.proxy.set(fault.clone()).await;
        // From now on, a successful refresh would bring version 1.
        self.up.bump("item.get");
        self.error_of_kind(kind, &format!("{fault:?}")).await;
        let q = self.victim_state().await;
        assert_eq!(q["version"], 1, "the fault changed no data: {q}");
        self.last_good_value_is_served().await;
        // Not stuck in "fetching": every attempt ends within the timeout.
        eventually(
            TIMEOUT + Duration::from_secs(1),
            "the victim's fetch to end",
            async || {
                let q = self.victim_state().await;
                q["fetch_status"] == "idle" && q["status"] == "error"
            },
        )
        .await;
        self.other_reads_are_answered().await;
        self.last_good_value_is_served().await;
    }

    /// Waits for the victim's last error to be of `kind`, while other reads
    /// go on being answered.
    async fn error_of_kind(&self, kind: &str, during: &str) {
        let prefix = format!("{kind}:");
        let deadline = Instant::now() + TIMEOUT + Duration::from_secs(3);
        loop {
            self.other_reads_are_answered().await;
            let q = self.victim_state().await;
            if q["last_error"]
                .as_str()
                .is_some_and(|e| e.starts_with(&prefix))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no `{kind}` error during {during}; the victim is {q}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Clears the fault: the victim catches up with the upstream's version 1.
    async fn recover(&self) {
        self.proxy.set(Fault::Pass).await;
        eventually(
            Duration::from_secs(5),
            "the victim to catch up",
            async || {
                let body: Value = get(&self.victim).await.json().await.unwrap();
                body["version"] == 1
            },
        )
        .await;
        let q = self.victim_state().await;
        assert_eq!(q["last_error"], Value::Null, "{q}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_under_the_timeout_is_slow_and_over_it_a_timeout() {
    let mut rig = Rig::start("300ms").await;
    rig.proxy
        .set(Fault::Latency(Duration::from_millis(400)))
        .await;
    rig.up.bump("item.get");
    let mut saw_fetching = false;
    eventually(Duration::from_secs(4), "a slow refresh", async || {
        rig.other_reads_are_answered().await;
        let q = rig.victim_state().await;
        saw_fetching |= q["fetch_status"] == "fetching";
        assert_eq!(q["last_error"], Value::Null, "slow is not failed: {q}");
        q["version"] == 2
    })
    .await;
    assert!(saw_fetching, "a read was answered while the refresh waited");
    let body: Value = get(&rig.victim).await.json().await.unwrap();
    assert_eq!(body["version"], 1);

    // Over the timeout: a timeout; and the data of the slow refresh stays.
    rig.good = get(&rig.victim).await.text().await.unwrap();
    rig.proxy.set(Fault::Latency(TIMEOUT * 3)).await;
    rig.up.bump("item.get");
    rig.error_of_kind("timeout", "a latency over the timeout")
        .await;
    rig.last_good_value_is_served().await;
    rig.proxy.set(Fault::Pass).await;
    eventually(Duration::from_secs(5), "the catch-up", async || {
        let body: Value = get(&rig.victim).await.json().await.unwrap();
        body["version"] == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_a_timeout() {
    let rig = Rig::start("300ms").await;
    // The head at once, then 4 bytes every 150 ms: the ~50-byte body would
    // take about 2 s, over the 800 ms timeout.
    rig.suffer(
        Fault::Trickle {
            bytes: 4,
            every: Duration::from_millis(150),
        },
        "timeout",
    )
    .await;
    rig.recover().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_body_is_a_network_error() {
    let rig = Rig::start("300ms").await;
    rig.suffer(Fault::ResetMidBody { after: 10 }, "network")
        .await;
    rig.recover().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_body_is_a_network_error() {
    let rig = Rig::start("300ms").await;
    // Shorter than its Content-Length: the connection closed early.
    rig.suffer(Fault::Truncate { after: 10 }, "network").await;
    rig.recover().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_is_a_timeout() {
    let rig = Rig::start("300ms").await;
    rig.suffer(Fault::Blackhole, "timeout").await;
    rig.recover().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_port_is_a_network_error() {
    let rig = Rig::start("300ms").await;
    rig.suffer(Fault::Refuse, "network").await;
    rig.recover().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_scripted_for_one_connection_hits_only_that_one() {
    // Nothing refreshes by time: the reads below are the only requests.
    let rig = Rig::start("1h").await;
    rig.proxy.script([Fault::Truncate { after: 5 }]);
    let miss = get(&rig.daemon.url("/v1/resources/other.get?id=3")).await;
    assert_eq!(miss.status(), 502);
    let body: Value = miss.json().await.unwrap();
    assert_eq!(body["kind"], "network", "{body}");
    // The next connection passes: the same query is fetched and cached.
    let again = get(&rig.daemon.url("/v1/resources/other.get?id=3")).await;
    assert_eq!(again.status(), 200);
    assert_eq!(
        again.headers()["cache-status"],
        "revalidate; fwd=miss; stored"
    );
    assert!(rig.proxy.accepted() >= 2);
}
