//! The page itself.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::Duration;

use revalidate::web::{PageOptions, PageSignals, local_fetcher};
use revalidate::{
    BackgroundRefresh, FetchError, IdbStore, Persistence, Policy, QueryClient, QueryKey,
    RefreshSettings, Staleness,
};
use serde_json::{Value, json};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

/// The queries the page reads: the demo API's resources, changing at
/// different rates.
fn queries() -> Vec<QueryKey> {
    vec![
        QueryKey::bare("node.tree"),
        QueryKey::new("process.list", json!({"status": "active"})),
        QueryKey::bare("rule.list"),
        QueryKey::bare("office.list"),
        QueryKey::bare("workflow.list"),
        QueryKey::bare("notification.list"),
        QueryKey::bare("settings.get"),
        QueryKey::bare("system_health"),
        QueryKey::bare("workflow_status"),
    ]
}

/// The demo's staleness rules (as `revalidate demo` configures the daemon),
/// a little quicker so that a visitor sees refreshes.
fn policy() -> Policy {
    Policy::builder()
        .resource("node", Staleness::Never)
        .resource("process", Staleness::secs(30))
        .resource("rule", Staleness::secs(45))
        .resource("office", Staleness::mins(2))
        .resource("workflow", Staleness::secs(20))
        .resource("notification", Staleness::secs(5))
        .resource("settings", Staleness::secs(10))
        .resource("system_health", Staleness::secs(2))
        .resource("workflow_status", Staleness::secs(3))
        .build()
        .expect("a valid policy")
}

fn settings() -> RefreshSettings {
    let mut s = RefreshSettings::default();
    s.check_interval = Duration::from_secs(1);
    s.retry_interval = Duration::from_secs(2);
    s.fetch_timeout = Duration::from_secs(3);
    s.offline_after_errors = 2;
    s
}

thread_local! {
    /// The decision log, newest last.
    static LOG: RefCell<VecDeque<String>> = const { RefCell::new(VecDeque::new()) };
}

const LOG_LINES: usize = 60;

/// A `tracing` subscriber that keeps the engine's decision lines for the page.
struct DecisionLog;

impl tracing::Subscriber for DecisionLog {
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        meta.target().starts_with("revalidate") && *meta.level() <= tracing::Level::INFO
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    let _ = write!(self.0, "{value:?}");
                }
            }
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        let stamp = js_sys::Date::new_0()
            .to_iso_string()
            .as_string()
            .unwrap_or_default();
        let line = format!("{} {}", stamp.get(11..19).unwrap_or_default(), m.0);
        LOG.with(|log| {
            let mut log = log.borrow_mut();
            if log.len() == LOG_LINES {
                log.pop_front();
            }
            log.push_back(line);
        });
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// What the page knows besides the cache.
#[derive(Default)]
struct PageState {
    /// Requests sent to the API.
    fetches: Cell<u64>,
    /// What hydrate restored, or why there is no store.
    store: RefCell<String>,
    restored: Cell<Option<usize>>,
}

/// Reads one action from the demo API: `POST {api}/actions/{action}` with
/// the parameters as JSON.
async fn fetch_action(api: &str, key: &QueryKey) -> Result<Value, FetchError> {
    let window = web_sys::window().ok_or_else(|| FetchError::failed("no window"))?;
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    let headers = web_sys::Headers::new().map_err(|e| FetchError::failed(format!("{e:?}")))?;
    let _ = headers.set("Content-Type", "application/json");
    init.set_headers(&headers);
    init.set_body(&JsValue::from_str(key.params_json()));
    let url = format!("{api}/actions/{}", key.action());
    let response = JsFuture::from(window.fetch_with_str_and_init(&url, &init))
        .await
        // fetch() rejects only when the request never got an answer.
        .map_err(|e| FetchError::network(format!("{url}: {}", js_text(&e))))?;
    let response: web_sys::Response = response.unchecked_into();
    let status = response.status();
    let body = match response.text() {
        Ok(p) => JsFuture::from(p)
            .await
            .map_err(|e| FetchError::network(js_text(&e)))?
            .as_string()
            .unwrap_or_default(),
        Err(e) => return Err(FetchError::network(js_text(&e))),
    };
    match status {
        200 => serde_json::from_str(&body).map_err(|e| FetchError::bad_data(e.to_string())),
        400..=499 => Err(FetchError::rejected(body).with_status(status)),
        _ => {
            let mut err = FetchError::failed(format!("HTTP {status}")).with_status(status);
            if let Some(secs) = response
                .headers()
                .get("Retry-After")
                .ok()
                .flatten()
                .and_then(|v| v.parse::<u64>().ok())
            {
                err = err.with_retry_after(Duration::from_secs(secs));
            }
            Err(err)
        }
    }
}

fn js_text(e: &JsValue) -> String {
    js_sys::Reflect::get(e, &"message".into())
        .ok()
        .and_then(|m| m.as_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

/// Starts the page against the demo API at `api` (its base URL).
#[wasm_bindgen]
pub async fn start(api: String) -> Result<(), JsValue> {
    let _ = tracing::subscriber::set_global_default(DecisionLog);
    revalidate::set_debug(true);
    let state = Rc::new(PageState::default());
    let s = state.clone();
    let api: Rc<str> = api.trim_end_matches('/').into();
    let client: QueryClient<Value> = QueryClient::builder(local_fetcher(move |key: QueryKey| {
        let api = api.clone();
        let s = s.clone();
        async move {
            s.fetches.set(s.fetches.get() + 1);
            fetch_action(&api, &key).await
        }
    }))
    .policy(policy())
    .settings(settings())
    .map_err(|e| JsValue::from_str(&e.to_string()))?
    .build();

    // Restore what an earlier visit stored, then write behind.
    let persist = match IdbStore::open("revalidate-example").await {
        Ok(store) => match Persistence::new(store)
            .flush_every(Duration::from_millis(500))
            .buster("example-v1")
            .start(&client)
            .await
        {
            Ok((handle, report)) => {
                state.restored.set(Some(report.restored));
                *state.store.borrow_mut() = format!(
                    "IndexedDB: restored {} ({} expired, {} undecodable)",
                    report.restored, report.expired, report.undecodable
                );
                Some(handle)
            }
            Err(e) => {
                *state.store.borrow_mut() = format!("IndexedDB unusable, memory only: {e}");
                None
            }
        },
        Err(e) => {
            *state.store.borrow_mut() = format!("no IndexedDB, memory only: {e}");
            None
        }
    };

    let refresh = BackgroundRefresh::new(&client)
        .map_err(|e| JsValue::from_str(&e.to_string()))?
        .start();
    let signals = PageSignals::connect(&client, refresh.controller(), PageOptions::default())
        .map_err(|e| JsValue::from_str(&e.to_string()))?;

    // Subscribing keeps the queries active, so the service keeps them fresh;
    // reading fetches what the store did not have.
    let mut subscriptions = Vec::new();
    for key in queries() {
        subscriptions.push(client.subscribe(&key));
        let c = client.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let _ = c.get(&key).await;
        });
    }

    // Render twice a second, for the life of the page.
    let render = {
        let client = client.clone();
        let state = state.clone();
        Closure::<dyn FnMut()>::new(move || {
            let _keep = (&refresh, &signals, &subscriptions, &persist);
            render(&client, &state, persist.as_ref().map(|p| p.stats()));
        })
    };
    render_now(&client, &state);
    web_sys::window()
        .ok_or("no window")?
        .set_interval_with_callback_and_timeout_and_arguments_0(
            render.as_ref().unchecked_ref(),
            500,
        )?;
    render.forget();
    Ok(())
}

fn render_now(client: &QueryClient<Value>, state: &PageState) {
    render(client, state, None);
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn ms(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 10_000 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} s", ms / 1000)
    }
}

fn render(
    client: &QueryClient<Value>,
    state: &PageState,
    persist: Option<revalidate::PersistStats>,
) {
    let Some(document) = web_sys::window().and_then(|w| w.document()) else {
        return;
    };
    let net = client.network().status();
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<p id="network" data-online="{online}">network: <b>{word}</b>{why}</p>"#,
        online = net.online,
        word = if net.online { "online" } else { "offline" },
        why = net
            .reason
            .map(|r| format!(" ({r:?})").to_lowercase())
            .unwrap_or_default(),
    );
    let _ = write!(
        html,
        r#"<p id="store" data-restored="{restored}" data-flushes="{flushes}" data-failed="{failed}">{text}{flushed}</p>"#,
        restored = state.restored.get().map_or(-1, |n| n as i64),
        flushes = persist.map_or(0, |p| p.flushes),
        failed = persist.map_or(0, |p| p.failed_flushes),
        text = escape(&state.store.borrow()),
        flushed = persist
            .map(|p| format!(
                "; written {} in {} flushes, {} failed",
                p.written, p.flushes, p.failed_flushes
            ))
            .unwrap_or_default(),
    );
    let _ = write!(
        html,
        r#"<p id="fetches" data-count="{n}">requests to the API: {n}</p>"#,
        n = state.fetches.get()
    );
    html.push_str(
        "<table id=\"queries\"><thead><tr><th>query</th><th>age</th><th>limit</th>\
         <th>state</th><th>version</th><th>errors</th><th>data</th></tr></thead><tbody>",
    );
    let mut rows = client.queries();
    rows.sort_by_key(|q| q.key.to_string());
    for q in rows {
        let age = q.age.map(ms).unwrap_or_else(|| "–".into());
        let limit = match q.staleness.limit() {
            Some(l) => ms(l),
            None => "never".into(),
        };
        let data = q.data.as_ref().map(|v| v.to_string()).unwrap_or_default();
        let preview: String = data.chars().take(70).collect();
        let word = if q.data.is_none() {
            "loading"
        } else if q.is_stale {
            "stale"
        } else {
            "fresh"
        };
        let _ = write!(
            html,
            r#"<tr data-key="{key}" data-version="{version}" data-stale="{stale}" data-has-data="{has}" data-age-ms="{age_ms}"><td>{key}</td><td>{age}</td><td>{limit}</td><td class="{word}">{word}</td><td>{version}</td><td>{errors}</td><td><code>{preview}</code></td></tr>"#,
            key = escape(&q.key.to_string()),
            version = q.version,
            stale = q.is_stale,
            has = q.data.is_some(),
            age_ms = q.age.map_or(-1, |a| a.as_millis() as i64),
            errors = q
                .last_error
                .as_ref()
                .map(|e| format!("{} × {}", q.error_count, escape(&e.to_string())))
                .unwrap_or_default(),
            preview = escape(&preview),
        );
    }
    html.push_str("</tbody></table><h2>decision log</h2><pre id=\"log\">");
    LOG.with(|log| {
        for line in log.borrow().iter().rev() {
            html.push_str(&escape(line));
            html.push('\n');
        }
    });
    html.push_str("</pre>");
    if let Some(root) = document.get_element_by_id("app") {
        root.set_inner_html(&html);
    }
}

/// The cached read path, for `BENCHMARKS.md`: `keys` queries shaped like
/// real query keys (`process.list` + 3 canonical params), each holding the
/// JSON document `doc(i)`, read `hits` times in a shuffled order with
/// `get_cached`; the median over `walks` walks, in nanoseconds per hit, by
/// `performance.now()`. Returns `[prebuilt keys, keys built per read]`.
#[wasm_bindgen]
pub fn bench_read_path(keys: u32, hits: u32, walks: u32) -> Result<Vec<f64>, JsValue> {
    let perf = web_sys::window()
        .and_then(|w| w.performance())
        .ok_or("no performance")?;
    let client: QueryClient<Value> = QueryClient::builder(local_fetcher(|_k: QueryKey| async {
        Err::<Value, _>(FetchError::rejected("the benchmark only reads the cache"))
    }))
    .clock(revalidate::ClockSource::Coarse)
    .build();
    let params = |i: u32| json!({"status": "active", "page": i, "q": format!("q{}", i % 97)});
    let built: Vec<QueryKey> = (0..keys)
        .map(|i| QueryKey::new("process.list", params(i)))
        .collect();
    for (i, k) in built.iter().enumerate() {
        client.set_data(
            k,
            json!({"id": i, "name": format!("process {i}"), "tags": ["a", "b"]}),
        );
    }
    // The walk: a fixed shuffle (a full-period LCG over the keys).
    let order: Vec<usize> = {
        let mut x: u64 = 1;
        (0..hits)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) % u64::from(keys)) as usize
            })
            .collect()
    };
    let lookup: Vec<QueryKey> = built
        .iter()
        .map(|k| QueryKey::new(k.action(), params_of(k)))
        .collect();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut prebuilt = Vec::new();
    let mut per_read = Vec::new();
    let mut sink = 0usize;
    for _ in 0..walks {
        let t0 = perf.now();
        for &i in &order {
            sink += client
                .get_cached(&lookup[i])
                .map_or(0, |v| v.as_object().map_or(0, |o| o.len()));
        }
        prebuilt.push((perf.now() - t0) * 1e6 / f64::from(hits));
        let t0 = perf.now();
        for &i in &order {
            let key = QueryKey::new("process.list", params(i as u32));
            sink += client
                .get_cached(&key)
                .map_or(0, |v| v.as_object().map_or(0, |o| o.len()));
        }
        per_read.push((perf.now() - t0) * 1e6 / f64::from(hits));
    }
    if sink == 0 {
        return Err("no hit".into());
    }
    Ok(vec![median(prebuilt), median(per_read)])
}

/// A key's parameters as JSON (to build an equal, separate key).
fn params_of(k: &QueryKey) -> Value {
    serde_json::from_str(k.params_json()).unwrap_or(Value::Null)
}
