//! The real `revalidate` binary against a real HTTP upstream on loopback,
//! started by each test on a free port: headers and 304, refresh on
//! staleness, outages, the concurrency limit, the admin token, SSE with
//! resumption, restarts from the store, and configuration errors.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Answer, Daemon, SseReader, Upstream, bin, config, eventually};

fn http() -> reqwest::Client {
    // reqwest is built without a default TLS provider (see the daemon's main).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn get(url: &str) -> reqwest::Response {
    http().get(url).send().await.unwrap()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_status_age_etag_and_304() {
    let up = Upstream::start().await;
    let d = Daemon::start(&config(&up.base_url(), "item = \"1s\"", ""));
    let url = d.url("/v1/resources/item.get?id=7&tag=a&tag=b");

    let first = get(&url).await;
    assert_eq!(first.status(), 200);
    assert_eq!(
        header(&first, "cache-status"),
        "revalidate; fwd=miss; stored"
    );
    assert_eq!(header(&first, "age"), "0");
    assert_eq!(header(&first, "content-type"), "application/json");
    let etag = header(&first, "etag").to_owned();
    let body: Value = first.json().await.unwrap();
    // The query string became the params, sent as the JSON body.
    assert_eq!(body["params"], json!({ "id": "7", "tag": ["a", "b"] }));

    let second = get(&url).await;
    assert_eq!(header(&second, "cache-status"), "revalidate; hit");
    assert_eq!(header(&second, "etag"), etag);
    assert_eq!(
        up.calls("item.get"),
        1,
        "the hit did not reach the upstream"
    );

    let not_modified = http()
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), 304);
    assert_eq!(header(&not_modified, "etag"), etag);
    assert!(not_modified.bytes().await.unwrap().is_empty());
    // If-None-Match compares weakly (RFC 9110): a weak tag of the current
    // ETag, alone or in a list, is the same version.
    for validator in [format!("W/{etag}"), format!("\"other\", W/{etag}")] {
        let weak = http()
            .get(&url)
            .header("if-none-match", &validator)
            .send()
            .await
            .unwrap();
        assert_eq!(weak.status(), 304, "If-None-Match: {validator}");
    }
    let other = http()
        .get(&url)
        .header("if-none-match", "W/\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);

    // Stale while a slow refresh is in flight: served at once, marked stale.
    up.set_latency(Duration::from_millis(1500));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let t = std::time::Instant::now();
    let stale = get(&url).await;
    // The refresh takes 1.5 s upstream: a stale read must not wait for it.
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "a stale read does not wait"
    );
    assert_eq!(header(&stale, "cache-status"), "revalidate; hit; stale");
    assert!(header(&stale, "age").parse::<u64>().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_queries_are_refreshed_and_equal_data_keeps_its_version() {
    let up = Upstream::start().await;
    let d = Daemon::start(&config(&up.base_url(), "item = \"500ms\"", ""));
    let url = d.url("/v1/resources/item.get?id=1");
    let first = get(&url).await;
    let v1 = header(&first, "x-revalidate-version").to_owned();
    // Same data on refresh: the upstream answers 304 to the stored ETag.
    eventually(Duration::from_secs(5), "a refresh", async || {
        up.calls("item.get") >= 2
    })
    .await;
    assert!(up.not_modified() >= 1, "the daemon sent If-None-Match");
    assert_eq!(header(&get(&url).await, "x-revalidate-version"), v1);
    // New data: a new version and a new ETag.
    up.bump("item.get");
    eventually(Duration::from_secs(5), "the new version", async || {
        header(&get(&url).await, "x-revalidate-version") != v1
    })
    .await;
    let body: Value = get(&url).await.json().await.unwrap();
    assert_eq!(body["version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_an_outage_only_the_probe_calls_and_everything_catches_up_after() {
    let up = Upstream::start().await;
    let d = Daemon::start(&config(&up.base_url(), "item = \"300ms\"", ""));
    let urls: Vec<String> = (0..3)
        .map(|i| d.url(&format!("/v1/resources/item.get?id={i}")))
        .collect();
    for u in &urls {
        assert_eq!(get(u).await.status(), 200);
    }
    up.take_down().await;
    let stats = async || -> Value { get(&d.url("/v1/stats")).await.json().await.unwrap() };
    eventually(Duration::from_secs(5), "offline", async || {
        let net: Value = get(&d.url("/v1/network")).await.json().await.unwrap();
        net["online"] == false
    })
    .await;
    let before = stats().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = stats().await;
    let fetches = |s: &Value| s["total_refreshes"].as_u64().unwrap();
    let requests = |s: &Value| s["upstream_requests"].as_u64().unwrap();
    assert_eq!(fetches(&during), fetches(&before), "no fetch while offline");
    assert!(
        requests(&during) > requests(&before),
        "the probe keeps trying"
    );
    assert!(during["skipped_offline"].as_u64().unwrap() >= 3);
    // A query never cached cannot be served, and is not fetched: 503.
    let miss = get(&d.url("/v1/resources/item.get?id=never-read")).await;
    assert_eq!(miss.status(), 503);
    let body: Value = miss.json().await.unwrap();
    assert_eq!(body["error"], "offline", "{body}");
    // Reads go on from the cache.
    for u in &urls {
        let r = get(u).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "cache-status"), "revalidate; hit; stale");
    }
    up.bump("item.get");
    up.restore().await;
    eventually(
        Duration::from_secs(5),
        "every query caught up",
        async || {
            let mut all = true;
            for u in &urls {
                let body: Value = get(u).await.json().await.unwrap();
                all &= body["version"] == 1;
            }
            all
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_never_sees_more_than_the_limit() {
    let up = Upstream::start().await;
    up.set_latency(Duration::from_millis(300));
    let d = Daemon::start(&config(&up.base_url(), "item = \"200ms\"", ""));
    let reads = (0..20).map(|i| {
        let url = d.url(&format!("/v1/resources/item.get?id={i}"));
        async move { get(&url).await.status() }
    });
    let statuses = futures::future::join_all(reads).await;
    assert!(statuses.iter().all(|s| *s == 200));
    // And the background refreshes of those 20 keep under it too.
    let calls = up.calls("item.get");
    eventually(Duration::from_secs(10), "refreshes", async || {
        up.calls("item.get") >= calls + 20
    })
    .await;
    assert_eq!(
        up.max_in_flight(),
        3,
        "max_concurrent_refreshes = 3, reads included"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_needs_the_admin_token() {
    let up = Upstream::start().await;
    let cfg = config(&up.base_url(), "item = \"1h\"", "");
    let open = Daemon::start(&cfg);
    let r = http()
        .post(open.url("/v1/invalidate"))
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("admin_token_env"),
        "{body}"
    );
    drop(open);

    let cfg = cfg.replace(
        "[server]",
        "[server]\nadmin_token_env = \"TEST_REVALIDATE_TOKEN\"",
    );
    let d = Daemon::start_with(&cfg, None, &[("TEST_REVALIDATE_TOKEN", "s3cret")]);
    let url = d.url("/v1/resources/item.get?id=1");
    get(&url).await;
    let post = |token: Option<&str>, body: Value| {
        let mut r = http().post(d.url("/v1/invalidate")).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(
        post(None, json!({"all": true})).await.unwrap().status(),
        401
    );
    assert_eq!(
        post(Some("wrong"), json!({"all": true}))
            .await
            .unwrap()
            .status(),
        401
    );
    up.bump("item.get");
    let ok = post(
        Some("s3cret"),
        json!({"action": "item.get", "params": {"id": "1"}}),
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<Value>().await.unwrap(), json!({"invalidated": 1}));
    let unknown = post(Some("s3cret"), json!({"action": "nope"}))
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let bad = post(Some("s3cret"), json!({"action": "item.get", "all": true}))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // The invalidated active query is refreshed promptly (its limit is 1 h).
    eventually(
        Duration::from_secs(3),
        "the refresh after invalidation",
        async || get(&url).await.json::<Value>().await.unwrap()["version"] == 1,
    )
    .await;
    assert_eq!(
        post(Some("s3cret"), json!({"resource": "item"}))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_events_only_on_change_and_resumption() {
    let up = Upstream::start().await;
    // A replay ring of 3 events, so that a gap can outgrow it.
    let cfg = config(&up.base_url(), "item = \"200ms\"\nother = \"200ms\"", "").replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nevent_replay = 3",
    );
    let d = Daemon::start(&cfg);
    let same = d.url("/v1/resources/item.get?id=1");
    let changing = d.url("/v1/resources/other.get?id=2");
    get(&same).await;
    get(&changing).await;
    let mut events = SseReader::open(&d.url("/v1/events"), None).await;
    // Refreshes of unchanged data announce nothing.
    eventually(Duration::from_secs(5), "refreshes", async || {
        up.calls("item.get") >= 4
    })
    .await;
    assert_eq!(
        events.next(Duration::from_millis(300)).await,
        None,
        "no event without a change"
    );
    up.bump("other.get");
    let e = events
        .next(Duration::from_secs(5))
        .await
        .expect("a change event");
    assert_eq!(e.event, "change");
    assert_eq!(e.data["action"], "other.get");
    assert_eq!(e.data["params"], json!({"id": "2"}));
    assert_eq!(e.data["version"], 2);
    let first_id = e.id.unwrap();

    // Filtered by action: changes of other actions are not sent.
    let mut filtered = SseReader::open(&d.url("/v1/events?action=item.get"), None).await;
    up.bump("other.get");
    let e2 = events.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(filtered.next(Duration::from_millis(300)).await, None);

    // Resuming with Last-Event-ID replays exactly what was missed.
    let mut resumed = SseReader::open(&d.url("/v1/events"), Some(first_id)).await;
    let replayed = resumed.next(Duration::from_secs(2)).await.unwrap();
    assert_eq!(replayed.id, e2.id);
    assert_eq!(replayed.data, e2.data);

    // A gap older than the replay ring (3 events) gets a snapshot.
    for _ in 0..4 {
        up.bump("other.get");
        events.next(Duration::from_secs(5)).await.expect("a change");
    }
    let mut late = SseReader::open(&d.url("/v1/events"), Some(first_id)).await;
    let snapshot = late.next(Duration::from_secs(2)).await.unwrap();
    assert_eq!(snapshot.event, "snapshot");
    let keys: Vec<&str> = snapshot.data["queries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_serves_from_the_store_without_calling_the_upstream() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("cache.redb");
    let cfg = config(
        &up.base_url(),
        "item = \"1h\"",
        &format!(
            "[store]\npath = \"{}\"\nflush_every = \"1h\"\n",
            store.display()
        ),
    );
    let mut first = Daemon::start_with(&cfg, Some(dir.path()), &[]);
    let urls: Vec<String> = (0..3)
        .map(|i| first.url(&format!("/v1/resources/item.get?id={i}")))
        .collect();
    let mut bodies = Vec::new();
    for u in &urls {
        bodies.push(get(u).await.text().await.unwrap());
    }
    // SIGTERM: a graceful stop flushes the store (the window is an hour).
    assert!(first.stop().success());
    let calls = up.action_calls();

    let second = Daemon::start_with(&cfg, Some(dir.path()), &[]);
    for (i, body) in bodies.iter().enumerate() {
        let r = get(&second.url(&format!("/v1/resources/item.get?id={i}"))).await;
        assert_eq!(header(&r, "cache-status"), "revalidate; hit");
        assert_eq!(&r.text().await.unwrap(), body);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        up.action_calls(),
        calls,
        "zero upstream calls after the restart"
    );
    let queries: Value = get(&second.url("/v1/queries")).await.json().await.unwrap();
    assert_eq!(queries["queries"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_store_flushes_went_up_by_two_a_sigkill_loses_nothing_read() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("cache.redb");
    let cfg = config(
        &up.base_url(),
        "item = \"1h\"",
        &format!(
            "[store]\npath = \"{}\"\nflush_every = \"100ms\"\n",
            store.display()
        ),
    );
    let stats =
        async |d: &Daemon| -> Value { get(&d.url("/v1/stats")).await.json().await.unwrap() };
    let first = Daemon::start_with(&cfg, Some(dir.path()), &[]);
    let mut bodies = Vec::new();
    for i in 0..3 {
        let r = get(&first.url(&format!("/v1/resources/item.get?id={i}"))).await;
        bodies.push(r.text().await.unwrap());
    }
    let seen = stats(&first).await["store"].clone();
    assert_eq!(seen["failed_flushes"], 0, "{seen}");
    let flushes = seen["flushes"].as_u64().unwrap();
    // Something keeps changing (a new query every round) so that flushes
    // have something to write.
    let mut n = 100;
    eventually(
        Duration::from_secs(10),
        "flushes to go up by two",
        async || {
            n += 1;
            get(&first.url(&format!("/v1/resources/other.get?n={n}"))).await;
            stats(&first).await["store"]["flushes"].as_u64().unwrap() >= flushes + 2
        },
    )
    .await;
    let written = stats(&first).await["store"]["written"].as_u64().unwrap();
    assert!(written >= 3, "{written}");
    // SIGKILL: no shutdown flush.
    drop(first);
    let calls = up.calls("item.get");

    let second = Daemon::start_with(&cfg, Some(dir.path()), &[]);
    for (i, body) in bodies.iter().enumerate() {
        let r = get(&second.url(&format!("/v1/resources/item.get?id={i}"))).await;
        assert_eq!(header(&r, "cache-status"), "revalidate; hit", "id={i}");
        assert_eq!(&r.text().await.unwrap(), body);
    }
    assert_eq!(up.calls("item.get"), calls, "served from the store");
    let fresh = stats(&second).await["store"].clone();
    assert_eq!(
        fresh["flushes"], 0,
        "the figures are this process's: {fresh}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_answer_in_json_and_bad_data_is_never_cached() {
    let up = Upstream::start().await;
    let d = Daemon::start(&config(&up.base_url(), "item = \"1h\"", ""));
    // Every error answer: JSON with a code and a message.
    let json_error = async |r: reqwest::Response, status: u16, code: &str| -> Value {
        assert_eq!(r.status(), status, "{code}");
        assert_eq!(header(&r, "content-type"), "application/json", "{code}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], code, "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        body
    };
    let unknown = json_error(
        get(&d.url("/v1/resources/nope.get")).await,
        404,
        "unknown_action",
    )
    .await;
    assert_eq!(unknown["action"], "nope.get");
    assert_eq!(
        unknown["known"],
        json!(["item.get", "item.list", "other.get"])
    );

    // The upstream's error body is logged, not passed on: the caller gets
    // the kind and the upstream's status.
    up.answer(
        "item.list",
        Answer::Status(503, "busy: db01 password=hunter2".into()),
    );
    let failed = json_error(
        get(&d.url("/v1/resources/item.list")).await,
        502,
        "upstream_failed",
    )
    .await;
    assert_eq!(failed["kind"], "failed");
    assert_eq!(failed["status"], 503);
    assert_eq!(failed["message"], "the upstream answered 503");
    assert!(!failed.to_string().contains("hunter2"), "{failed}");

    up.answer("item.list", Answer::NotJson);
    let garbage = json_error(
        get(&d.url("/v1/resources/item.list?x=1")).await,
        502,
        "upstream_failed",
    )
    .await;
    assert_eq!(garbage["kind"], "bad_data");
    assert_eq!(garbage["status"], 200);
    assert!(!garbage.to_string().contains("oops"), "{garbage}");
    up.answer("item.list", Answer::Json);
    let fixed = get(&d.url("/v1/resources/item.list?x=1")).await;
    assert_eq!(
        header(&fixed, "cache-status"),
        "revalidate; fwd=miss; stored",
        "garbage was not cached"
    );

    up.answer("item.list", Answer::Status(404, "no such thing".into()));
    let rejected = json_error(
        get(&d.url("/v1/resources/item.list?x=2")).await,
        502,
        "upstream_failed",
    )
    .await;
    assert_eq!(rejected["kind"], "rejected");
    assert_eq!(rejected["status"], 404);

    let long = get(&d.url(&format!("/v1/resources/item.get?q={}", "x".repeat(9000)))).await;
    let long = json_error(long, 414, "query_too_long").await;
    assert_eq!(long["limit"], 8192);

    let nothing = json_error(get(&d.url("/v1/nothing")).await, 404, "not_found").await;
    assert_eq!(nothing["path"], "/v1/nothing");
    let wrong_method = http().delete(d.url("/v1/stats")).send().await.unwrap();
    assert_eq!(header(&wrong_method, "allow"), "GET,HEAD");
    json_error(wrong_method, 405, "method_not_allowed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_errors_answer_in_json_too() {
    let up = Upstream::start().await;
    let cfg = config(&up.base_url(), "item = \"1h\"", "").replace(
        "[server]",
        "[server]\nadmin_token_env = \"TEST_REVALIDATE_TOKEN\"\nmax_body_bytes = 64",
    );
    let d = Daemon::start_with(&cfg, None, &[("TEST_REVALIDATE_TOKEN", "s3cret")]);
    let post = |body: &'static str, token: Option<&str>| {
        let mut r = http()
            .post(d.url("/v1/invalidate"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let unauthorized = post("{}", None).await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert_eq!(header(&unauthorized, "www-authenticate"), "Bearer");
    assert_eq!(
        unauthorized.json::<Value>().await.unwrap()["error"],
        "unauthorized"
    );
    // axum's own rejections come in the same shape.
    let huge = post(
        r#"{"resource": "item", "padding": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
        Some("s3cret"),
    )
    .await
    .unwrap();
    assert_eq!(huge.status(), 413);
    assert_eq!(header(&huge, "content-type"), "application/json");
    assert_eq!(
        huge.json::<Value>().await.unwrap()["error"],
        "body_too_large"
    );
    let broken = post(r#"{"action": "#, Some("s3cret")).await.unwrap();
    assert_eq!(broken.status(), 400);
    let body: Value = broken.json().await.unwrap();
    assert_eq!(body["error"], "bad_request");
    assert!(
        body["message"].as_str().unwrap().contains("expected"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_metrics_and_health_endpoints() {
    let up = Upstream::start().await;
    let d = Daemon::start(&config(&up.base_url(), "item = \"1h\"", ""));
    get(&d.url("/v1/resources/item.get?id=1")).await;
    get(&d.url("/v1/resources/item.get?id=1")).await;
    assert_eq!(get(&d.url("/healthz")).await.text().await.unwrap(), "ok");
    let queries: Value = get(&d.url("/v1/queries")).await.json().await.unwrap();
    let q = &queries["queries"][0];
    assert_eq!(q["action"], "item.get");
    assert_eq!(q["status"], "fresh");
    assert_eq!(q["staleness"], "1h");
    assert_eq!(q["staleness_ms"], 3_600_000);
    let stats: Value = get(&d.url("/v1/stats")).await.json().await.unwrap();
    assert_eq!(stats["cache"]["misses"], 1);
    assert_eq!(stats["cache"]["fresh_hits"], 1);
    assert_eq!(stats["max_concurrent_refreshes"], 3);
    assert_eq!(stats["store"], Value::Null, "no [store]: no store figures");
    let metrics = get(&d.url("/metrics")).await.text().await.unwrap();
    assert!(
        metrics.contains("revalidate_refreshes_total{resource=\"item\",outcome=\"success\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("revalidate_cache_reads_total{resource=\"item\",result=\"fresh\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("revalidate_online 1"), "{metrics}");
    let page = get(&d.url("/")).await;
    assert!(header(&page, "content-type").starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("EventSource"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_listing_comes_in_pages_in_key_order() {
    let up = Upstream::start().await;
    let d = Daemon::start(&config(&up.base_url(), "item = \"1h\"", ""));
    for i in 0..25 {
        let r = get(&d.url(&format!("/v1/resources/item.get?id={i}"))).await;
        assert_eq!(r.status(), 200);
    }
    let page = |query: String| {
        let url = d.url(&format!("/v1/queries{query}"));
        async move { get(&url).await }
    };
    // The default page holds all 25, in key order, and is the last.
    let all: Value = page(String::new()).await.json().await.unwrap();
    assert_eq!(all["total"], 25);
    assert_eq!(all["next"], Value::Null, "{all}");
    let keys = |v: &Value| -> Vec<String> {
        v["queries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["key"].as_str().unwrap().to_owned())
            .collect()
    };
    let whole = keys(&all);
    assert_eq!(whole.len(), 25);
    let mut sorted = whole.clone();
    sorted.sort();
    assert_eq!(whole, sorted, "key order");
    // Pages of 7 join up to the whole list: 7, 7, 7, 4, each with the total.
    let mut joined = Vec::new();
    let mut query = "?limit=7".to_owned();
    let mut sizes = Vec::new();
    loop {
        let p: Value = page(query.clone()).await.json().await.unwrap();
        assert_eq!(p["total"], 25, "{p}");
        sizes.push(keys(&p).len());
        joined.extend(keys(&p));
        match p["next"].as_str() {
            Some(next) => query = format!("?limit=7&after={next}"),
            None => break,
        }
    }
    assert_eq!(sizes, [7, 7, 7, 4]);
    assert_eq!(joined, whole, "no query missed or repeated");
    // A page of exactly the rest says there is no more.
    let p: Value = page("?limit=25".into()).await.json().await.unwrap();
    assert_eq!(p["next"], Value::Null, "{p}");
    // Out of bounds or not a cursor: 400 with what is accepted.
    for bad in [
        "?limit=0",
        "?limit=1001",
        "?limit=ten",
        "?after=%21%21",
        "?after=e30",
    ] {
        let r = page(bad.into()).await;
        assert_eq!(r.status(), 400, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "bad_request", "{bad}: {body}");
        let message = body["message"].as_str().unwrap();
        if bad.starts_with("?limit") {
            assert!(message.contains("1 to 1000"), "{bad}: {message}");
        } else {
            assert!(message.contains("next"), "{bad}: {message}");
        }
    }
    let top: Value = page("?limit=1000".into()).await.json().await.unwrap();
    assert_eq!(keys(&top), whole);
}

#[test]
fn bad_configs_exit_2_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[upstream]\nbase_url = \"http://127.0.0.1:9\"\n\n[refresh]\nbatch_sise = 5\n\n[actions.\"a.b\"]\n[staleness]\na = \"5 minutes please\"\n",
    )
    .unwrap();
    for args in [vec!["serve", "--config"], vec!["check-config"]] {
        let out = Command::new(bin()).args(&args).arg(&bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("bad.toml:5:1"), "{err}");
        assert!(err.contains("refresh.batch_sise"), "{err}");
        assert!(err.contains("did you mean `batch_size`?"), "{err}");
        assert!(err.contains("bad.toml:9:5"), "{err}");
        assert!(err.contains("staleness.a"), "{err}");
        assert!(err.contains("2 errors in"), "{err}");
    }
    let missing = Command::new(bin())
        .args(["check-config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let profile = dir.path().join("p.toml");
    std::fs::write(&profile, "profile = \"prodution\"\n[profiles.production.staleness]\n[upstream]\nbase_url = \"http://x\"\n[actions.a]\n").unwrap();
    let out = Command::new(bin())
        .arg("check-config")
        .arg(&profile)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean `production`?"));
}

#[test]
fn check_config_prints_the_effective_staleness_per_profile() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ok.toml");
    std::fs::write(
        &file,
        r#"profile = "production"
[upstream]
base_url = "http://127.0.0.1:9000"
[staleness]
process = "5m"
node = "never"
[profiles.development.staleness]
process = "1m"
[profiles.production.staleness]
process = "10m"
[overrides]
"process.list" = "2m"
[actions."process.list"]
[actions."process.get"]
[actions."node.tree"]
"#,
    )
    .unwrap();
    let out = Command::new(bin())
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let row = |action: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(action))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(text.contains("production (active)"), "{text}");
    assert_eq!(row("process.get"), "process.get process 5m 1m 10m");
    assert_eq!(row("process.list"), "process.list process 2m 2m 2m");
    assert_eq!(row("node.tree"), "node.tree node never never never");
}
