//! The shared tier against a real `redis-server` (started on a free loopback
//! port with a temp dir, stopped on drop): several nodes (clients in one
//! process, each with its own tier and feed task) share one scripted source.
//! Real time: Redis keeps its own clock. Every wait is a poll with a
//! deadline.

#![cfg(feature = "redis")]

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use revalidate::cluster::{ClusterHandle, ClusterOptions, RedisTier};
use revalidate::{
    BackgroundRefresh, JsonCodec, Policy, QueryClient, QueryKey, RefreshHandle, RefreshSettings,
    Staleness,
};
use serde_json::{Value, json};
use support::{Fake, Step, key};

/// A redis-server of our own.
struct Redis {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts one, or `None` (with the reason printed) where the binary is
    /// missing outside CI; under CI a missing binary fails the test.
    fn start() -> Option<Self> {
        let port = free_port();
        Self::start_on(port)
    }

    fn start_on(port: u16) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                let why = format!("redis-server is not installed ({e}); scripts/test installs it");
                assert!(std::env::var_os("CI").is_none(), "{why}");
                eprintln!("skipped: {why}");
                return None;
            }
        };
        let redis = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = &self.dir;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One node: a client with its tier, its feed task and (optionally) a
/// refresh service.
struct Node {
    client: QueryClient<Value>,
    tier: RedisTier<Value, JsonCodec>,
    _feed: ClusterHandle,
    refresh: Option<RefreshHandle>,
}

fn options(redis: &Redis, name: &str, prefix: &str) -> ClusterOptions {
    let mut o = ClusterOptions::new(redis.url());
    o.node_id = name.to_owned();
    o.key_prefix = prefix.to_owned();
    o.lease_ttl = Duration::from_millis(800);
    o
}

async fn node(fake: &Fake, options: ClusterOptions, staleness: Staleness, refresh: bool) -> Node {
    let tier = RedisTier::new(options, JsonCodec).unwrap();
    tier.check().await.unwrap();
    let mut settings = RefreshSettings::default();
    settings.check_interval = Duration::from_millis(50);
    settings.jitter = 0.0;
    settings.retry_interval = Duration::from_millis(200);
    settings.fetch_timeout = Duration::from_secs(5);
    let client = QueryClient::builder(fake.clone())
        .policy(
            Policy::builder()
                .default_staleness(staleness)
                .build()
                .unwrap(),
        )
        .settings(settings)
        .unwrap()
        .coordinator(tier.coordinator())
        .build();
    let (feed, handle) = tier.attach(&client);
    tokio::spawn(feed);
    eventually(Duration::from_secs(5), "the node joins", || {
        tier.status().connected
    })
    .await;
    let refresh = refresh.then(|| BackgroundRefresh::new(&client).unwrap().start());
    Node {
        client,
        tier,
        _feed: handle,
        refresh,
    }
}

async fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_fetched_on_one_node_is_served_by_the_others_without_a_fetch() {
    let Some(redis) = Redis::start() else { return };
    let fake = Fake::new().latency(Duration::from_millis(5));
    let a = node(&fake, options(&redis, "a", "t1"), Staleness::mins(5), false).await;
    let b = node(&fake, options(&redis, "b", "t1"), Staleness::mins(5), false).await;
    let c = node(&fake, options(&redis, "c", "t1"), Staleness::mins(5), false).await;
    let k = key("process.list", json!({"status": "active", "page": 2}));
    let first = a.client.get_with_meta(&k).await.unwrap();
    for n in [&b, &c] {
        let hit = n.client.get_with_meta(&k).await.unwrap();
        assert_eq!(hit.value, first.value);
        assert_eq!(hit.version, first.version, "the same version on every node");
    }
    assert_eq!(fake.calls(), 1, "one upstream call for three nodes");
    assert_eq!(b.tier.status().adopted, 1);
    assert_eq!(a.client.stats().adopted, 0);
    assert_eq!(c.client.stats().adopted, 1);
    // Other applications' keys under other prefixes are untouched.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.iter().all(|k| k.starts_with("t1:")), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_refresh_each_key_about_once_per_window() {
    let Some(redis) = Redis::start() else { return };
    let fake = Fake::new().latency(Duration::from_millis(5));
    let window = Duration::from_millis(500);
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push(
            node(
                &fake,
                options(&redis, name, "t2"),
                Staleness::After(window),
                true,
            )
            .await,
        );
    }
    let keys: Vec<QueryKey> = (0..10)
        .map(|i| key("process.get", json!({"id": i})))
        .collect();
    let started = Instant::now();
    let run = Duration::from_secs(4);
    while started.elapsed() < run {
        for n in &nodes {
            for k in &keys {
                n.client.get(k).await.unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let windows = run.as_secs_f64() / window.as_secs_f64();
    for k in &keys {
        let calls = fake.calls_for(k) as f64;
        eprintln!("{k}: {calls} fetches over {windows} windows");
        assert!(
            calls <= windows * 1.2 + 1.0,
            "{k}: {calls} fetches over {windows} windows"
        );
        assert!(
            calls >= windows * 0.5,
            "{k}: only {calls} fetches: not kept fresh"
        );
    }
    for n in nodes {
        n.refresh.unwrap().shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_subscribers_on_the_other_nodes() {
    let Some(redis) = Redis::start() else { return };
    let fake = Fake::new();
    let a = node(&fake, options(&redis, "a", "t3"), Staleness::mins(5), false).await;
    let b = node(&fake, options(&redis, "b", "t3"), Staleness::mins(5), false).await;
    let k = key("settings.get", Value::Null);
    a.client.get(&k).await.unwrap();
    b.client.get(&k).await.unwrap();
    let mut sub = b.client.subscribe(&k);
    let written = a.client.set_data(&k, json!({"theme": "dark"}));
    let got = tokio::time::timeout(Duration::from_secs(3), sub.next())
        .await
        .expect("B heard the change")
        .unwrap();
    assert_eq!(got, written);
    eventually(
        Duration::from_secs(3),
        "A's version is the cluster's",
        || a.client.state(&k).unwrap().version == b.client.state(&k).unwrap().version,
    )
    .await;

    // An invalidation on B reaches A, whose active query is then refreshed
    // by one node only.
    assert_eq!(b.client.invalidate(&k), 1);
    eventually(Duration::from_secs(3), "A hears the invalidation", || {
        a.client.state(&k).unwrap().is_invalidated
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_writer_is_refused_and_versions_never_go_down() {
    let Some(redis) = Redis::start() else { return };
    let fake = Fake::new().latency(Duration::from_millis(5));
    let a = node(&fake, options(&redis, "a", "t4"), Staleness::mins(5), false).await;
    let b = node(&fake, options(&redis, "b", "t4"), Staleness::mins(5), false).await;
    let k = key("process.get", json!({"id": 7}));
    a.client.get(&k).await.unwrap();
    b.client.get(&k).await.unwrap();
    let v0 = a.client.state(&k).unwrap().version;

    // A refetches slowly: its lease (800 ms) runs out while it waits.
    fake.script(
        &k,
        [Step::After(
            Duration::from_millis(1500),
            Box::new(Step::Ok(json!({"by": "a, late"}))),
        )],
    );
    let late = tokio::spawn({
        let c = a.client.clone();
        let k = k.clone();
        async move { c.refetch(&k).await }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Meanwhile B refetches and writes a newer version.
    fake.script(&k, [Step::Ok(json!({"by": "b"}))]);
    let by_b = b.client.refetch(&k).await.unwrap();
    assert_eq!(*by_b, json!({"by": "b"}));
    let vb = b.client.state(&k).unwrap().version;
    assert!(vb > v0);
    let got = late.await.unwrap().unwrap();
    assert_eq!(
        *got,
        json!({"by": "b"}),
        "the late result is refused; A serves B's write"
    );
    assert_eq!(a.tier.status().refused, 1);
    eventually(Duration::from_secs(3), "A holds B's version", || {
        a.client.state(&k).unwrap().version == vb
    })
    .await;
    assert_eq!(*a.client.get_cached(&k).unwrap(), json!({"by": "b"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_and_restarted_empty_nodes_carry_on_then_rejoin_without_regressing() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let port = redis.port;
    let fake = Fake::new();
    let a = node(&fake, options(&redis, "a", "t5"), Staleness::mins(5), false).await;
    let b = node(&fake, options(&redis, "b", "t5"), Staleness::mins(5), false).await;
    let k = key("process.list", Value::Null);
    a.client.get(&k).await.unwrap();
    b.client.get(&k).await.unwrap();

    redis.kill();
    // Reads never fail; writes go on alone.
    let other = key("process.get", json!({"id": 1}));
    b.client.get(&other).await.unwrap();
    a.client.set_data(&k, json!({"written": "while apart"}));
    let v_apart = a.client.state(&k).unwrap().version;
    eventually(
        Duration::from_secs(5),
        "both nodes know they are alone",
        || !a.tier.status().connected && !b.tier.status().connected,
    )
    .await;
    assert!(a.client.get_cached(&k).is_some());

    // Redis comes back empty on the same port.
    let _redis = Redis::start_on(port).expect("restarted");
    eventually(Duration::from_secs(10), "both rejoin", || {
        a.tier.status().connected && b.tier.status().connected
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "B takes A's write from while apart",
        || {
            b.client
                .get_cached(&k)
                .is_some_and(|v| *v == json!({"written": "while apart"}))
        },
    )
    .await;
    let va = a.client.state(&k).unwrap().version;
    let vb = b.client.state(&k).unwrap().version;
    assert!(va >= v_apart, "A's version went down: {va} < {v_apart}");
    assert_eq!(va, vb, "the same version on both nodes");
    // Cooperation resumes: a key new to both is fetched once.
    let fresh = key("office.list", Value::Null);
    a.client.get(&fresh).await.unwrap();
    b.client.get(&fresh).await.unwrap();
    assert_eq!(fake.calls_for(&fresh), 1);
    let _ = Arc::new(());
}
