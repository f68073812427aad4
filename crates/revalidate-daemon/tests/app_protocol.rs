//! An existing app, unchanged but for its base URL: its own paths, its
//! mutations, its per-user data. The real binary against an upstream that
//! behaves like an app's API (a path prefix, its own content type, bearer
//! tokens per user).

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use parking_lot::Mutex;
use serde_json::{Value, json};
use support::{Proc, SseReader, eventually};

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Everything the app's API saw.
#[derive(Default)]
struct Seen {
    calls: Mutex<HashMap<String, u64>>,
    /// The headers of every call, by path.
    headers: Mutex<Vec<(String, HeaderMap)>>,
    /// Bumped by each successful `process.update`.
    version: Mutex<u64>,
    /// Users whose settings changed (bumped by the test).
    settings_version: Mutex<u64>,
    /// Tokens the API no longer accepts.
    revoked: Mutex<HashSet<String>>,
}

/// An app's API under `/api`: `POST /api/actions/{action}` and a few
/// other paths.
struct AppApi {
    base: String,
    seen: Arc<Seen>,
}

impl AppApi {
    async fn start() -> Self {
        let seen = Arc::new(Seen::default());
        let app = Router::new()
            .route("/api/actions/{action}", any(action))
            .route("/api/legacy/{*rest}", any(legacy))
            .route("/api", any(root))
            .with_state(seen.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/api", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        Self { base, seen }
    }

    fn calls(&self, action: &str) -> u64 {
        self.seen.calls.lock().get(action).copied().unwrap_or(0)
    }

    fn headers_of(&self, path_part: &str) -> Vec<HeaderMap> {
        self.seen
            .headers
            .lock()
            .iter()
            .filter(|(p, _)| p.contains(path_part))
            .map(|(_, h)| h.clone())
            .collect()
    }
}

/// Who a bearer token is.
fn user_of(headers: &HeaderMap) -> Option<&'static str> {
    match headers.get("authorization")?.to_str().ok()? {
        "Bearer alice-secret-token-1" => Some("alice"),
        "Bearer bob-secret-token-2" => Some("bob"),
        _ => None,
    }
}

async fn action(
    State(seen): State<Arc<Seen>>,
    Path(action): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    *seen.calls.lock().entry(action.clone()).or_default() += 1;
    seen.headers.lock().push((action.clone(), headers.clone()));
    let params: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let json = |status: StatusCode, text: String| {
        (
            status,
            [("content-type", "application/json; charset=utf-8")],
            text,
        )
            .into_response()
    };
    match action.as_str() {
        // Pretty-printed, members in the API's own order: the daemon must
        // give these bytes back as they are.
        "process.list" => json(
            StatusCode::OK,
            format!(
                "{{\n  \"version\": {},\n  \"filters\": {params},\n  \"rows\": [ {{\"id\": 2}}, {{\"id\": 1}} ]\n}}",
                *seen.version.lock()
            ),
        ),
        "process.get" => match params.get("id") {
            Some(id) => json(StatusCode::OK, format!("{{\"id\": {id}}}")),
            None => json(
                StatusCode::NOT_FOUND,
                r#"{"error":"no such process"}"#.into(),
            ),
        },
        "process.update" => {
            if params["fail"] == true {
                return json(StatusCode::CONFLICT, r#"{"error":"conflict"}"#.into());
            }
            *seen.version.lock() += 1;
            json(StatusCode::OK, r#"{"updated": true}"#.into())
        }
        "settings.get" => {
            let token = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            if seen.revoked.lock().contains(&token) {
                return json(StatusCode::UNAUTHORIZED, r#"{"error":"expired"}"#.into());
            }
            match user_of(&headers) {
                Some(user) => json(
                    StatusCode::OK,
                    json!({"user": user, "theme": format!("{user}-theme"), "params": params, "v": *seen.settings_version.lock()})
                        .to_string(),
                ),
                None => json(StatusCode::UNAUTHORIZED, r#"{"error":"who?"}"#.into()),
            }
        }
        _ => json(StatusCode::NOT_FOUND, "{}".into()),
    }
}

async fn root(State(seen): State<Arc<Seen>>, method: Method) -> StatusCode {
    *seen.calls.lock().entry(format!("{method} /")).or_default() += 1;
    StatusCode::NO_CONTENT
}

async fn legacy(
    State(seen): State<Arc<Seen>>,
    method: Method,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    *seen
        .calls
        .lock()
        .entry(format!("legacy/{rest}"))
        .or_default() += 1;
    seen.headers
        .lock()
        .push((format!("legacy/{rest}"), headers));
    (
        StatusCode::IM_A_TEAPOT,
        [("content-type", "text/plain"), ("x-legacy", "yes")],
        format!(
            "{method} {rest} {} {}",
            query.unwrap_or_default(),
            String::from_utf8_lossy(&body)
        ),
    )
        .into_response()
}

fn config(base: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{extra}

[upstream]
base_url = "{base}"
timeout = "2s"
probe_interval = "1h"

[upstream.headers]
X-Service-Key = "service-key-0000"

[refresh]
check_interval = "100ms"
retry_interval = "200ms"
max_retries = 1
inactive_after = "1h"
jitter = 0.0

[staleness]
process = "never"
settings = "300ms"

[scope]
settings = "user"

[identity]
from = "authorization"

[actions."process.list"]
[actions."process.get"]
[actions."process.update"]
kind = "mutation"
invalidates = ["process.list", "process.get"]
[actions."settings.get"]
[actions."legacy.search"]
method = "GET"
path = "/legacy/search"
"#
    )
}

fn serve(cfg: &str, args_env: &[(&str, &str)]) -> (tempfile::TempDir, Proc) {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::serve(cfg, dir.path(), args_env).listening();
    (dir, p)
}

#[tokio::test]
async fn an_existing_client_changes_only_its_base_url() {
    let api = AppApi::start().await;
    let (_dir, d) = serve(&config(&api.base, ""), &[]);
    let filters =
        json!({"status": ["running", "paused"], "page": 2, "owner": {"team": 7, "active": true}});

    // The app's own call, once on its API and once on the daemon.
    let direct = http()
        .post(format!("{}/actions/process.list", api.base))
        .json(&filters)
        .send()
        .await
        .unwrap();
    let direct_type = direct.headers()["content-type"].clone();
    let direct = direct.bytes().await.unwrap();
    let via = http()
        .post(d.url("/actions/process.list"))
        .json(&filters)
        .send()
        .await
        .unwrap();
    assert_eq!(via.status(), 200);
    assert_eq!(via.headers()["content-type"], direct_type);
    assert_eq!(
        via.headers()["cache-status"],
        "revalidate; fwd=miss; stored"
    );
    assert_eq!(via.bytes().await.unwrap(), direct, "byte for byte");
    assert_eq!(api.calls("process.list"), 2);
    // Again, members in another order: from the cache.
    let again = http()
        .post(d.url("/actions/process.list"))
        .body(r#"{"owner":{"active":true,"team":7},"page":2,"status":["running","paused"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(again.headers()["cache-status"], "revalidate; hit");
    assert_eq!(again.bytes().await.unwrap(), direct);
    assert_eq!(api.calls("process.list"), 2, "no upstream call");
    // The same key as the typed read.
    let typed = http()
        .post(d.url("/v1/resources/process.list"))
        .json(&filters)
        .send()
        .await
        .unwrap();
    assert_eq!(typed.headers()["cache-status"], "revalidate; hit");

    // The upstream's status on failure: a 404 is a 404.
    let missing = http()
        .post(d.url("/actions/process.get"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["error"],
        "upstream_failed"
    );
    // A GET action on its own path, with its query string.
    let search = http()
        .get(d.url("/legacy/search?q=a%20b"))
        .send()
        .await
        .unwrap();
    assert_eq!(search.status(), 418, "the upstream's status");
    // Not declared, no passthrough: 404 in the daemon's shape; a declared
    // path with another method: 405.
    let other = http().get(d.url("/legacy/other")).send().await.unwrap();
    assert_eq!(other.status(), 404);
    assert_eq!(other.json::<Value>().await.unwrap()["error"], "not_found");
    assert_eq!(api.calls("legacy/other"), 0);
    let wrong = http()
        .get(d.url("/actions/process.list"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 405);
}

#[tokio::test]
async fn passthrough_forwards_other_paths_uncached_without_the_daemons_credentials() {
    let api = AppApi::start().await;
    let cfg = config(
        &api.base,
        "passthrough = true\nread_token_env = \"TEST_READ_TOKEN\"",
    );
    let (_dir, d) = serve(&cfg, &[("TEST_READ_TOKEN", "read-token-xyz")]);
    // No token: refused before anything is forwarded.
    let r = http().get(d.url("/legacy/ping")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "read_token_required"
    );
    assert_eq!(api.calls("legacy/ping"), 0);
    for n in 0..2 {
        let r = http()
            .put(d.url("/legacy/ping?x=1&y=%20"))
            .header("x-revalidate-token", "read-token-xyz")
            .header("x-trace", format!("t{n}"))
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 418);
        assert_eq!(r.headers()["x-legacy"], "yes");
        assert_eq!(r.headers()["content-type"], "text/plain");
        assert_eq!(r.text().await.unwrap(), "PUT ping x=1&y=%20 payload");
    }
    assert_eq!(api.calls("legacy/ping"), 2, "never cached");
    // The daemon's own namespace is never forwarded.
    let r = http()
        .get(d.url("/v1/nothing-here"))
        .header("x-revalidate-token", "read-token-xyz")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");
    for h in api.headers_of("legacy/ping") {
        assert!(h.contains_key("x-trace"));
        assert!(
            !h.contains_key("x-service-key"),
            "the daemon's credential stays home"
        );
        assert!(!h.contains_key("x-revalidate-token"), "the read token too");
    }
    // Declared reads need the token as well; the admin token is not it.
    let r = http()
        .post(d.url("/v1/resources/process.list"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http()
        .post(d.url("/v1/resources/process.list"))
        .header("x-revalidate-token", "read-token-xyz")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The change feed takes it in the URL (EventSource sends no headers).
    let r = http().get(d.url("/v1/events")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    SseReader::open(&d.url("/v1/events?token=read-token-xyz"), None).await;
}

#[tokio::test]
async fn a_serve_with_a_missing_read_token_does_not_start() {
    let api = AppApi::start().await;
    let cfg = config(&api.base, "read_token_env = \"TEST_UNSET_READ_TOKEN\"");
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::serve(&cfg, dir.path(), &[]);
    let status = p.exit_within(Duration::from_secs(20)).expect("it exits");
    assert_eq!(status.code(), Some(2));
    assert!(
        p.stderr().contains("TEST_UNSET_READ_TOKEN"),
        "{}",
        p.stderr()
    );
}

/// The version in a cached `process.list`, read through the daemon.
async fn list_version(d: &Proc) -> u64 {
    let r = http()
        .post(d.url("/actions/process.list"))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["version"].as_u64().unwrap()
}

#[tokio::test]
async fn a_mutation_reaches_the_upstream_once_and_invalidates_what_it_names() {
    let api = AppApi::start().await;
    let (_dir, d) = serve(
        &config(&api.base, ""),
        &[("RUST_LOG", "info,revalidate=debug")],
    );
    // Without a health path the probe is a HEAD of the base URL, never a
    // call of an action (which may be a mutation).
    eventually(Duration::from_secs(5), "the first probe", async || {
        api.calls("HEAD /") >= 1
    })
    .await;
    assert_eq!(api.calls("process.update"), 0);
    assert_eq!(list_version(&d).await, 0);
    let mut feed =
        SseReader::open(&d.url("/v1/events?action=process.list&include=data"), None).await;

    let r = http()
        .post(d.url("/actions/process.update"))
        .json(&json!({"id": 1, "name": "renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    assert!(r.headers().get("cache-status").is_none(), "never cached");
    assert_eq!(r.text().await.unwrap(), r#"{"updated": true}"#);
    assert_eq!(api.calls("process.update"), 1, "exactly once");
    // The active list is refetched within a check, and subscribers hear it.
    let change = feed.next(Duration::from_secs(5)).await.expect("a change");
    assert_eq!(change.data["action"], "process.list");
    assert_eq!(change.data["data"]["version"], 1);
    assert_eq!(api.calls("process.list"), 2);
    assert_eq!(list_version(&d).await, 1);

    // A failed mutation: its status and body, nothing invalidated.
    let r = http()
        .post(d.url("/actions/process.update"))
        .json(&json!({"id": 1, "fail": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.text().await.unwrap(), r#"{"error":"conflict"}"#);
    assert_eq!(api.calls("process.update"), 2);
    let queries: Value = http()
        .get(d.url("/v1/queries"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = queries["queries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["action"] == "process.list")
        .unwrap();
    assert_eq!(list["status"], "fresh", "not invalidated: {list}");
    assert!(feed.next(Duration::from_millis(500)).await.is_none());
    assert_eq!(api.calls("process.list"), 2);
    // Mutations are not reads.
    let r = http()
        .post(d.url("/v1/resources/process.update"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

const ALICE: &str = "Bearer alice-secret-token-1";
const BOB: &str = "Bearer bob-secret-token-2";

async fn settings(d: &Proc, auth: Option<&str>) -> reqwest::Response {
    let mut r = http()
        .post(d.url("/actions/settings.get"))
        .json(&json!({"view": "compact"}));
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn per_user_data_is_each_callers_own_and_their_credentials_go_nowhere() {
    for format in ["text", "json"] {
        per_user_run(format).await;
    }
}

async fn per_user_run(format: &str) {
    let api = AppApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("cache.redb");
    let cfg = format!(
        "{}\n[store]\npath = \"{}\"\nflush_every = \"100ms\"\n",
        config(&api.base, ""),
        store.display()
    );
    std::fs::write(dir.path().join("revalidate.toml"), &cfg).unwrap();
    // `--debug` and the log format, as an operator would run it.
    let mut cmd = std::process::Command::new(support::binary());
    cmd.args(["serve", "--debug", "--log-format", format, "--config"])
        .arg(dir.path().join("revalidate.toml"));
    let d = support::Proc::spawn(cmd).listening();

    // Two users, the same action and parameters: each their own.
    let a = settings(&d, Some(ALICE)).await;
    assert_eq!(a.status(), 200);
    assert_eq!(a.headers()["cache-control"], "private, no-cache");
    assert_eq!(a.headers()["vary"], "authorization");
    let a: Value = a.json().await.unwrap();
    assert_eq!(a["user"], "alice");
    assert_eq!(
        a["params"],
        json!({"view": "compact"}),
        "own parameters upstream"
    );
    let b: Value = settings(&d, Some(BOB)).await.json().await.unwrap();
    assert_eq!(b["user"], "bob");
    assert_eq!(api.calls("settings.get"), 2);
    let again = settings(&d, Some(ALICE)).await;
    assert_eq!(again.headers()["cache-status"], "revalidate; hit");
    assert_eq!(again.json::<Value>().await.unwrap()["user"], "alice");
    // Fetched as the caller, with the caller's credential only.
    let sent: Vec<String> = api
        .headers_of("settings.get")
        .iter()
        .map(|h| h["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(sent, [ALICE, BOB]);
    // No identity: 401, nothing fetched.
    let none = settings(&d, None).await;
    assert_eq!(none.status(), 401);
    assert_eq!(
        none.json::<Value>().await.unwrap()["error"],
        "identity_required"
    );
    assert_eq!(api.calls("settings.get"), 2);

    // Change feeds: each user hears their own changes only.
    let mut feed_a = SseReader::open_with(
        &d.url("/v1/events?include=data&action=settings.get"),
        &[("authorization", ALICE.to_owned())],
    )
    .await;
    let mut feed_anon = SseReader::open(&d.url("/v1/events?include=data"), None).await;
    *api.seen.settings_version.lock() += 1;
    let e = feed_a
        .next(Duration::from_secs(3))
        .await
        .expect("alice hears her change");
    assert_eq!(e.data["data"]["user"], "alice", "{:?}", e.data);
    assert_eq!(e.data["params"], json!({"view": "compact"}));
    assert_eq!(e.data["user"].as_str().unwrap().len(), 8, "a short hash");
    while let Some(e) = feed_a.next(Duration::from_millis(300)).await {
        assert_eq!(e.data["data"]["user"], "alice", "never bob's: {:?}", e.data);
    }
    // A resumed feed replays alice's events to alice only.
    let mut replay_anon =
        SseReader::open(&d.url("/v1/events?last_event_id=0&include=data"), None).await;
    while let Some(e) = replay_anon.next(Duration::from_millis(300)).await {
        assert!(
            e.data.get("user").is_none(),
            "a per-user event to no one: {:?}",
            e.data
        );
    }
    while let Some(e) = feed_anon.next(Duration::from_millis(300)).await {
        assert!(e.data.get("user").is_none(), "{:?}", e.data);
    }
    // The dashboard feed: short hashes, no bodies.
    let mut live = SseReader::open(&d.url("/v1/live"), None).await;
    let tick = live.next(Duration::from_secs(3)).await.expect("a tick");
    let users: Vec<&Value> = tick.data["queries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| q["action"] == "settings.get")
        .map(|q| &q["user"])
        .collect();
    assert_eq!(users.len(), 2);
    assert!(
        users
            .iter()
            .all(|u| u.as_str().is_some_and(|u| u.len() == 8))
    );
    assert!(!tick.data.to_string().contains("bob-theme"));

    // A refresh answered 401 drops bob's query (and only his).
    api.seen.revoked.lock().insert(BOB.to_owned());
    *api.seen.settings_version.lock() += 1;
    eventually(
        Duration::from_secs(5),
        "bob's query is dropped",
        async || {
            let q: Value = http()
                .get(d.url("/v1/queries"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            q["queries"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|q| q["action"] == "settings.get")
                .count()
                == 1
        },
    )
    .await;
    let calls = api.calls("settings.get");
    // His refreshes stop; alice's go on.
    *api.seen.settings_version.lock() += 1;
    eventually(
        Duration::from_secs(5),
        "alice is refreshed again",
        async || {
            settings(&d, Some(ALICE))
                .await
                .json::<Value>()
                .await
                .unwrap()["v"]
                == 3
        },
    )
    .await;
    let bobs_after = api
        .headers_of("settings.get")
        .iter()
        .skip(calls as usize)
        .filter(|h| h["authorization"] == BOB)
        .count();
    assert_eq!(bobs_after, 0, "no refresh as bob after the 401");

    // Bob's credential: nowhere.
    let mut everything = String::new();
    for path in ["/metrics", "/v1/queries", "/v1/stats", "/"] {
        everything += &http()
            .get(d.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    }
    everything += &tick.data.to_string();
    let mut d = d;
    d.signal("TERM");
    assert!(d.exit_within(Duration::from_secs(20)).is_some());
    everything += &d.stderr();
    assert!(d.stderr().contains("🔒"), "the drop is logged");
    assert!(
        d.stderr().contains("refreshing settings.get"),
        "the debug log was on"
    );
    let stored = std::fs::read(&store).unwrap();
    for secret in ["bob-secret-token-2", "alice-secret-token-1"] {
        assert!(!everything.contains(secret), "{format}: {secret} leaked");
        assert!(
            !stored.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{format}: {secret} is in the store file"
        );
    }
    assert!(
        stored.windows(10).any(|w| w == b"alice-them"),
        "the user's data is stored"
    );
}
