//! The page's signals: `online`/`offline` and `visibilitychange`.
#![cfg(all(target_arch = "wasm32", target_os = "unknown"))]

mod support;

use std::cell::Cell;
use std::rc::Rc;

use revalidate::web::{PageOptions, PageSignals, pause_clock, resume_clock};
use revalidate::{BackgroundRefresh, OfflineReason, QueryClient, QueryKey, RefreshHandle};
use support::{advance, counting_client, secs, settings, settle};
use wasm_bindgen::JsValue;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

fn window() -> web_sys::Window {
    web_sys::window().unwrap()
}

fn fire(target: &web_sys::EventTarget, event: &str) {
    target
        .dispatch_event(&web_sys::Event::new(event).unwrap())
        .unwrap();
}

/// Makes `document.hidden` say `hidden` (headless Chromium's page is always
/// visible), then fires `visibilitychange`.
fn set_hidden(hidden: bool) {
    let document = window().document().unwrap();
    let descriptor = js_sys::Object::new();
    js_sys::Reflect::set(&descriptor, &"value".into(), &JsValue::from_bool(hidden)).unwrap();
    js_sys::Reflect::set(&descriptor, &"configurable".into(), &JsValue::TRUE).unwrap();
    js_sys::Object::define_property(&document, &"hidden".into(), &descriptor);
    assert_eq!(document.hidden(), hidden);
    fire(&document, "visibilitychange");
}

struct Page {
    calls: Rc<Cell<u32>>,
    client: QueryClient<String>,
    refresh: Option<RefreshHandle>,
    signals: PageSignals,
    key: QueryKey,
}

/// A client with one query read at t=0 (stale at 10 s), its refresh
/// service, and the page's signals.
async fn page(options: PageOptions) -> Page {
    pause_clock();
    let calls = Rc::new(Cell::new(0));
    let client = counting_client(calls.clone(), |_| None, settings());
    let key = QueryKey::bare("r.page");
    client.get(&key).await.unwrap();
    let refresh = BackgroundRefresh::new(&client).unwrap().start();
    let signals = PageSignals::connect(&client, refresh.controller(), options).unwrap();
    Page {
        calls,
        client,
        refresh: Some(refresh),
        signals,
        key,
    }
}

impl Page {
    async fn close(mut self) {
        self.refresh.take().unwrap().shutdown().await;
        drop(self.signals);
        set_hidden(false);
        resume_clock();
    }
}

#[wasm_bindgen_test]
async fn offline_and_online_events_drive_the_network() {
    let p = page(PageOptions::default()).await;
    assert!(p.client.network().is_online(), "starts online");
    fire(&window(), "offline");
    let status = p.client.network().status();
    assert!(!status.online);
    assert_eq!(status.reason, Some(OfflineReason::Manual));
    advance(secs(30.0)).await;
    assert_eq!(p.calls.get(), 1, "offline: no refresh");
    assert!(p.client.state(&p.key).unwrap().is_stale);
    assert!(p.client.get_cached(&p.key).is_some(), "the data stays");
    fire(&window(), "online");
    settle().await;
    assert!(p.client.network().is_online());
    assert_eq!(p.calls.get(), 2, "online: caught up at once");
    assert_eq!(p.signals.checks().0, 1);
    p.close().await;
}

#[wasm_bindgen_test]
async fn a_hidden_page_pauses_refreshes_and_catches_up_when_visible() {
    let p = page(PageOptions::default()).await;
    set_hidden(true);
    let controller = p.refresh.as_ref().unwrap().controller().clone();
    assert!(controller.is_paused());
    advance(secs(15.0)).await;
    advance(secs(15.0)).await;
    assert_eq!(p.calls.get(), 1, "hidden: no refresh");
    set_hidden(false);
    settle().await;
    assert!(!controller.is_paused());
    assert_eq!(
        p.calls.get(),
        2,
        "visible: the stale query is refreshed at once"
    );
    p.close().await;
}

#[wasm_bindgen_test]
async fn refresh_when_hidden_keeps_refreshing() {
    let p = page(PageOptions::default().refresh_when_hidden(true)).await;
    set_hidden(true);
    assert!(!p.refresh.as_ref().unwrap().controller().is_paused());
    advance(secs(10.5)).await;
    assert_eq!(p.calls.get(), 2, "refreshed while hidden");
    p.close().await;
}

/// Becoming visible checks at once, ahead of the window; again within the
/// throttle (5 s) it does not, and the next window serves it.
#[wasm_bindgen_test]
async fn visibility_checks_are_throttled() {
    let p = page(PageOptions::default()).await;
    // A check runs (and refreshes) as soon as something is due.
    p.client.invalidate(p.key.clone());
    settle().await;
    assert_eq!(p.calls.get(), 2);
    // Due again: the next check would wait for the 1 s window...
    p.client.invalidate(p.key.clone());
    settle().await;
    assert_eq!(p.calls.get(), 2, "within the window");
    // ...but the page becoming visible checks now.
    fire(&window().document().unwrap(), "visibilitychange");
    settle().await;
    assert_eq!(p.calls.get(), 3, "visible: checked at once");
    p.client.invalidate(p.key.clone());
    fire(&window().document().unwrap(), "visibilitychange");
    settle().await;
    assert_eq!(p.calls.get(), 3, "throttled: no second check within 5 s");
    assert_eq!(p.signals.checks(), (1, 1));
    advance(secs(1.1)).await;
    assert_eq!(p.calls.get(), 4, "the window's check serves it");
    advance(secs(5.0)).await;
    fire(&window().document().unwrap(), "visibilitychange");
    assert_eq!(p.signals.checks(), (2, 1), "5 s later, a check again");
    p.close().await;
}

#[wasm_bindgen_test]
async fn dropped_signals_stop_listening() {
    let p = page(PageOptions::default()).await;
    let client = p.client.clone();
    p.close().await;
    fire(&window(), "offline");
    assert!(client.network().is_online(), "no listener left");
}
