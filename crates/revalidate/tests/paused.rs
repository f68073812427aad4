//! `RefreshController::set_paused`: while paused the service starts no
//! refreshes (a hidden browser page); the resume checks at once.

mod support;

use std::time::Duration;

use revalidate::{BackgroundRefresh, Policy, QueryClient, RefreshSettings, Staleness};
use serde_json::{Value, json};
use support::{Fake, key, settle};

fn client(fake: &Fake) -> QueryClient<Value> {
    let mut s = RefreshSettings::default();
    s.jitter = 0.0;
    s.check_interval = Duration::from_secs(1);
    QueryClient::builder(fake.clone())
        .policy(
            Policy::builder()
                .resource("notification", Staleness::secs(30))
                .build()
                .unwrap(),
        )
        .settings(s)
        .unwrap()
        .build()
}

#[tokio::test(start_paused = true)]
async fn a_paused_service_refreshes_nothing_and_catches_up_on_resume() {
    let fake = Fake::new();
    let c = client(&fake);
    let k = key("notification.list", json!({}));
    c.get(&k).await.unwrap();
    let refresh = BackgroundRefresh::new(&c).unwrap().start();
    let controller = refresh.controller().clone();
    controller.set_paused(true);
    assert!(controller.is_paused());
    tokio::time::sleep(Duration::from_secs(95)).await;
    settle().await;
    assert_eq!(fake.calls(), 1, "paused: three limits passed, no refresh");
    assert!(c.state(&k).unwrap().is_stale);
    // Reads still work, and still fetch what is not cached.
    assert!(c.get_cached(&k).is_some());
    c.get(&key("notification.list", json!({"other": 1})))
        .await
        .unwrap();
    assert_eq!(fake.calls(), 2);
    controller.set_paused(false);
    tokio::time::sleep(Duration::from_millis(50)).await;
    settle().await;
    assert_eq!(fake.calls(), 3, "resumed: the stale query at once");
    assert!(!c.state(&k).unwrap().is_stale);
    tokio::time::sleep(Duration::from_secs(31)).await;
    settle().await;
    assert!(fake.calls() >= 4, "and on schedule again afterwards");
    refresh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn check_now_while_paused_does_nothing_and_stop_still_stops() {
    let fake = Fake::new();
    let c = client(&fake);
    let k = key("notification.list", json!({}));
    c.get(&k).await.unwrap();
    let refresh = BackgroundRefresh::new(&c).unwrap().start();
    refresh.controller().set_paused(true);
    tokio::time::sleep(Duration::from_secs(40)).await;
    refresh.controller().check_now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    settle().await;
    assert_eq!(fake.calls(), 1, "no check while paused");
    refresh.shutdown().await;
}
