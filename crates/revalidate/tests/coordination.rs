//! The coordination seam: a scripted coordinator decides whether the client
//! fetches or adopts another node's value, and numbers versions; an entry
//! accepts a version from outside only if it is newer.

mod support;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use revalidate::{
    BackgroundRefresh, Coordinator, FetchError, Fetched, Grant, Holding, Policy, Publish,
    QueryClient, RefreshSettings, Remote, Staleness, Ticket,
};
use serde_json::{Value, json};
use support::{Fake, key};
use tokio::time::sleep;

/// Answers from a script; records what it was asked.
#[derive(Clone, Default)]
struct Scripted {
    grants: Arc<Mutex<VecDeque<Grant<Value>>>>,
    publishes: Arc<Mutex<VecDeque<Publish>>>,
    asked: Arc<Mutex<Vec<Holding>>>,
    published: Arc<Mutex<Vec<(Ticket, bool)>>>,
}

impl Scripted {
    fn grant(&self, g: Grant<Value>) {
        self.grants.lock().push_back(g);
    }
    fn publish(&self, p: Publish) {
        self.publishes.lock().push_back(p);
    }
}

impl Coordinator<Value> for Scripted {
    async fn acquire(&self, _key: &revalidate::QueryKey, holding: &Holding) -> Grant<Value> {
        self.asked.lock().push(*holding);
        self.grants
            .lock()
            .pop_front()
            .unwrap_or(Grant::Fetch(Ticket(1)))
    }

    async fn publish(
        &self,
        _key: &revalidate::QueryKey,
        ticket: Ticket,
        result: &Result<Fetched<Value>, FetchError>,
        _previous: Option<&Arc<Value>>,
    ) -> Publish {
        self.published.lock().push((ticket, result.is_ok()));
        self.publishes.lock().pop_front().unwrap_or(Publish::Local)
    }
}

fn client(fake: &Fake, coord: &Scripted) -> QueryClient<Value> {
    let policy = Policy::builder()
        .resource("process", Staleness::mins(5))
        .build()
        .unwrap();
    let mut settings = RefreshSettings::default();
    settings.jitter = 0.0;
    settings.inactive_after = Duration::from_secs(86_400);
    QueryClient::builder(fake.clone())
        .policy(policy)
        .settings(settings)
        .unwrap()
        .coordinator(coord.clone())
        .build()
}

#[tokio::test(start_paused = true)]
async fn a_miss_adopts_another_nodes_value_without_fetching() {
    let fake = Fake::new();
    let coord = Scripted::default();
    let c = client(&fake, &coord);
    let k = key("process.list", json!({"page": 1}));
    let at = SystemTime::now() - Duration::from_secs(10);
    coord.grant(Grant::Adopt(Remote::new(json!({"from": "node-b"}), 7, at)));
    let v = c.get(&k).await.unwrap();
    assert_eq!(*v, json!({"from": "node-b"}));
    assert_eq!(fake.calls(), 0, "the source is not asked");
    let state = c.state(&k).unwrap();
    assert_eq!(state.version, 7, "the version comes from outside");
    assert!(
        state.age.unwrap() >= Duration::from_secs(9),
        "the age is the other node's: {:?}",
        state.age
    );
    assert_eq!(coord.asked.lock()[0].version, 0, "nothing was held");
    let stats = c.stats();
    assert_eq!((stats.adopted, stats.total_refreshes), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn versions_from_outside_are_stored_only_when_newer() {
    let fake = Fake::new();
    let coord = Scripted::default();
    let c = client(&fake, &coord);
    let k = key("process.get", json!({"id": 1}));

    coord.publish(Publish::Version(42));
    c.get(&k).await.unwrap();
    assert_eq!(c.state(&k).unwrap().version, 42);
    let first = c.get_cached(&k).unwrap();

    // A late writer: its fetch brought new data, but the cluster numbered it
    // below what this node holds. It must not win.
    coord.publish(Publish::Version(40));
    let got = c.refetch(&k).await.unwrap();
    assert_eq!(fake.calls(), 2);
    assert!(Arc::ptr_eq(&got, &first), "the older write is refused");
    assert_eq!(c.state(&k).unwrap().version, 42, "versions never go down");

    // A refused publication stores nothing either.
    coord.publish(Publish::Refused);
    c.refetch(&k).await.unwrap();
    assert!(Arc::ptr_eq(&c.get_cached(&k).unwrap(), &first));

    // A newer one is stored, with its version.
    coord.publish(Publish::Version(43));
    let newer = c.refetch(&k).await.unwrap();
    assert!(!Arc::ptr_eq(&newer, &first));
    assert_eq!(c.state(&k).unwrap().version, 43);
    assert_eq!(
        coord.asked.lock().last().unwrap().version,
        42,
        "the holding is passed on"
    );
    assert_eq!(coord.published.lock().len(), 4, "every fetch was published");
}

#[tokio::test(start_paused = true)]
async fn the_refresh_service_adopts_too_and_an_older_adoption_is_refused() {
    let fake = Fake::new();
    let coord = Scripted::default();
    let c = client(&fake, &coord);
    let k = key("process.list", Value::Null);
    coord.publish(Publish::Version(5));
    c.get(&k).await.unwrap();
    let refresh = BackgroundRefresh::new(&c).unwrap().start();

    // Stale after five minutes: another node refreshed it meanwhile.
    coord.grant(Grant::Adopt(Remote::new(
        json!({"fresh": true}),
        6,
        SystemTime::now() + Duration::from_secs(300),
    )));
    sleep(Duration::from_secs(301)).await;
    assert_eq!(fake.calls(), 1, "adopted, not fetched");
    assert_eq!(*c.get_cached(&k).unwrap(), json!({"fresh": true}));
    assert_eq!(c.state(&k).unwrap().version, 6);
    assert!(!c.state(&k).unwrap().is_stale, "the adopted value is fresh");

    // Five minutes on, an adoption offering an older version is ignored.
    coord.grant(Grant::Adopt(Remote::new(
        json!({"stale": true}),
        3,
        SystemTime::now() + Duration::from_secs(600),
    )));
    sleep(Duration::from_secs(301)).await;
    assert_eq!(*c.get_cached(&k).unwrap(), json!({"fresh": true}));
    assert_eq!(c.state(&k).unwrap().version, 6);
    refresh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_fetch_deferred_by_going_offline_tells_the_coordinator() {
    let fake = Fake::new().latency(Duration::from_secs(1));
    let coord = Scripted::default();
    let mut settings = RefreshSettings::default();
    settings.max_concurrent_refreshes = 1;
    let c = QueryClient::builder(fake.clone())
        .settings(settings)
        .unwrap()
        .coordinator(coord.clone())
        .build();
    let slow = tokio::spawn({
        let c = c.clone();
        async move { c.get(&key("a", json!(1))).await }
    });
    tokio::task::yield_now().await;
    // The second read waits for the only permit; the source goes offline.
    let waiting = tokio::spawn({
        let c = c.clone();
        async move { c.get(&key("a", json!(2))).await }
    });
    tokio::task::yield_now().await;
    c.network().set_online(false);
    assert!(slow.await.unwrap().is_ok(), "the fetch in flight completes");
    let err = waiting.await.unwrap().unwrap_err();
    assert!(err.is_offline(), "{err}");
    assert_eq!(fake.calls(), 1);
    let published = coord.published.lock().clone();
    assert_eq!(
        published,
        vec![(Ticket(1), true), (Ticket(1), false)],
        "the unused ticket is handed back as not attempted"
    );
}
