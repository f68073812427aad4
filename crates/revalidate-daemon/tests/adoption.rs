//! Adopting the daemon without code changes: typed parameters, the change
//! feed for browsers. The real binary against a scriptable upstream.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Daemon, SseReader, Upstream, config, eventually};

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

#[tokio::test]
async fn typed_post_reads_are_the_librarys_keys_and_strings_are_not_numbers() {
    let up = Upstream::start().await;
    let d = Daemon::start(&config(&up.base_url(), "item = \"5m\"", ""));
    let url = d.url("/v1/resources/item.get");
    let params = json!({"page": 2, "filter": {"status": ["active", "paused"], "deep": true}});
    let r = http().post(&url).json(&params).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["params"], params, "the upstream saw typed params");
    // Members in another order, 2.0 for 2: the same key, served from cache.
    let again = http()
        .post(&url)
        .body(r#"{"filter":{"deep":true,"status":["active","paused"]},"page":2.0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(again.headers()["cache-status"], "revalidate; hit");
    assert_eq!(up.calls("item.get"), 1);
    // `?page=2` is the string "2": another key.
    let get = http().get(format!("{url}?page=2")).send().await.unwrap();
    assert_eq!(
        get.headers()["cache-status"],
        "revalidate; fwd=miss; stored"
    );
    assert_eq!(up.calls("item.get"), 2);

    // Bad JSON: 400 with where; too large: 413; both in the JSON shape.
    let bad = http()
        .post(&url)
        .body("{\n  \"page\": 2,\n}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let e: Value = bad.json().await.unwrap();
    assert_eq!(e["error"], "bad_request");
    assert!(
        e["message"].as_str().unwrap().contains("line 3, column 1"),
        "{e}"
    );
    let big = http()
        .post(&url)
        .body(format!("{{\"x\":\"{}\"}}", "a".repeat(200 * 1024)))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    assert_eq!(
        big.json::<Value>().await.unwrap()["error"],
        "body_too_large"
    );
    // An empty body is no parameters: the bare action, sent upstream as `{}`
    // like a GET read without a query string.
    let bare = http().post(&url).send().await.unwrap();
    assert_eq!(bare.json::<Value>().await.unwrap()["params"], json!({}));
    let plain = http().get(&url).send().await.unwrap();
    assert_eq!(
        plain.headers()["cache-status"],
        "revalidate; hit",
        "the same key"
    );
}

#[tokio::test]
async fn a_browser_resumes_with_last_event_id_in_the_url_and_gets_the_data_with_the_change() {
    let up = Upstream::start().await;
    let d = Daemon::start(&config(&up.base_url(), "item = \"200ms\"", ""));
    let url = d.url("/v1/resources/item.get");
    http()
        .post(&url)
        .json(&json!({"id": 1}))
        .send()
        .await
        .unwrap();
    let mut feed = SseReader::open(&d.url("/v1/events?include=data"), None).await;
    up.bump("item.get");
    let first = feed.next(Duration::from_secs(5)).await.expect("a change");
    assert_eq!(first.event, "change");
    let fresh: Value = http()
        .post(&url)
        .json(&json!({"id": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        first.data["data"], fresh,
        "the event carries what a read returns"
    );
    assert!(first.data.get("data_omitted").is_none());
    up.bump("item.get");
    let second = feed
        .next(Duration::from_secs(5))
        .await
        .expect("another change");

    // A reloaded page: a new connection, the last id in the URL only.
    let mut resumed = SseReader::open(
        &d.url(&format!(
            "/v1/events?last_event_id={}&include=data",
            first.id.unwrap()
        )),
        None,
    )
    .await;
    let replayed = resumed
        .next(Duration::from_secs(2))
        .await
        .expect("the missed change");
    assert_eq!(replayed.id, second.id, "exactly the missed events");
    assert!(
        resumed.next(Duration::from_millis(300)).await.is_none(),
        "and no more"
    );

    // Without include=data, no data.
    let mut plain = SseReader::open(
        &d.url(&format!("/v1/events?last_event_id={}", first.id.unwrap())),
        None,
    )
    .await;
    let e = plain.next(Duration::from_secs(2)).await.unwrap();
    assert!(e.data.get("data").is_none());

    // A bad id is a 400.
    let r = http()
        .get(d.url("/v1/events?last_event_id=soon"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn data_above_event_data_max_bytes_is_omitted() {
    let up = Upstream::start().await;
    let cfg = config(&up.base_url(), "item = \"200ms\"", "").replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nevent_data_max_bytes = 10",
    );
    let d = Daemon::start(&cfg);
    http()
        .post(d.url("/v1/resources/item.get"))
        .json(&json!({"id": 1}))
        .send()
        .await
        .unwrap();
    let mut feed = SseReader::open(&d.url("/v1/events?include=data"), None).await;
    up.bump("item.get");
    let e = feed.next(Duration::from_secs(5)).await.expect("a change");
    assert_eq!(e.data["data_omitted"], true);
    assert!(e.data.get("data").is_none());
    eventually(Duration::from_secs(1), "nothing else", async || true).await;
}
