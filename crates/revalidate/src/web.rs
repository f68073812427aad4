//! The engine in the browser (feature `web`, `wasm32-unknown-unknown`).
//!
//! The engine itself is the same code as natively: its clock is
//! `performance.now()`, its timers `setTimeout`, and
//! [`BackgroundRefresh::start`](crate::BackgroundRefresh::start) and
//! [`Persistence::start`](crate::Persistence::start) spawn on the page's event
//! loop. This module adds what only a page has:
//!
//! - [`PageSignals`] — the page's signals: the network from
//!   `navigator.onLine` and the `online`/`offline` events, activity from
//!   `visibilitychange`;
//! - [`local_fetcher`] and [`local`] — a fetcher or a future that holds
//!   JavaScript values (a `fetch()` promise), which are not `Send`, for the
//!   engine's `Send` bounds: sound on the page's one thread;
//! - [`pause_clock`], [`advance_clock`], [`resume_clock`] — a manual clock
//!   for tests, as tokio's paused clock is natively;
//! - and, in [`store`](crate::store), [`IdbStore`](crate::IdbStore).
//!
//! ```no_run
//! use revalidate::web::{PageOptions, PageSignals, local_fetcher};
//! use revalidate::{BackgroundRefresh, FetchError, QueryClient, QueryKey};
//!
//! let client: QueryClient<String> = QueryClient::builder(local_fetcher(|key: QueryKey| async move {
//!     // Await `fetch()` (a JsFuture) here.
//!     Ok::<_, FetchError>(key.to_string())
//! }))
//! .build();
//! let refresh = BackgroundRefresh::new(&client).unwrap().start();
//! let page = PageSignals::connect(&client, refresh.controller(), PageOptions::default()).unwrap();
//! // Keep `page` (and `refresh`) for as long as the page runs.
//! # drop(page);
//! ```

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use send_wrapper::SendWrapper;
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use web_sys::{Event, EventTarget};

use crate::fetch::{FetchError, FetchRequest, Fetched, Fetcher};
use crate::key::QueryKey;
use crate::network::NetworkMonitor;
use crate::refresh::RefreshController;
use crate::rt::Instant;
use crate::{QueryClient, log::decision};

/// How [`PageSignals`] follows the page.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PageOptions {
    /// At most one refresh check per this long for the page becoming visible
    /// or the network returning. Default 5 s, as SWR's `focusThrottleInterval`.
    pub throttle: Duration,
    /// Whether refreshes go on while the page is hidden. Default `false`, as
    /// SWR's `refreshWhenHidden` and TanStack Query's
    /// `refetchIntervalInBackground`: the service pauses while hidden and
    /// catches up when the page is visible again.
    pub refresh_when_hidden: bool,
    /// Whether the `online`/`offline` events set the network state. Default
    /// `true`. The engine still goes offline by itself after its client's
    /// `offline_after_errors` network failures in a row.
    pub follow_network: bool,
}

impl Default for PageOptions {
    fn default() -> Self {
        Self {
            throttle: Duration::from_secs(5),
            refresh_when_hidden: false,
            follow_network: true,
        }
    }
}

impl PageOptions {
    /// Sets [`throttle`](Self::throttle).
    pub fn throttle(mut self, every: Duration) -> Self {
        self.throttle = every;
        self
    }

    /// Sets [`refresh_when_hidden`](Self::refresh_when_hidden).
    pub fn refresh_when_hidden(mut self, on: bool) -> Self {
        self.refresh_when_hidden = on;
        self
    }

    /// Sets [`follow_network`](Self::follow_network).
    pub fn follow_network(mut self, on: bool) -> Self {
        self.follow_network = on;
        self
    }
}

/// Why [`PageSignals::connect`] could not listen to the page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PageError {
    /// Not in a page (a worker has no `document`).
    #[error("no window or document here: page signals need a browser page")]
    NoPage,
}

/// The page's signals, feeding a client's network state and its refresh
/// service. Dropping it removes its listeners.
///
/// - **Network.** The state starts online, as TanStack Query's
///   `onlineManager` does (`navigator.onLine` can say offline on a machine
///   that has a network); the `offline` event sets it offline, the `online`
///   event back online and asks for a check. Fetch errors still take it
///   offline by themselves.
/// - **Activity.** When the page becomes visible, the service checks at once
///   (what went stale is refreshed), at most once per
///   [`throttle`](PageOptions::throttle). While it is hidden the service is
///   paused, unless [`refresh_when_hidden`](PageOptions::refresh_when_hidden).
pub struct PageSignals {
    listeners: Vec<Listener>,
    state: Rc<State>,
}

/// An event listener this value added: where, for what, and the closure.
type Listener = (EventTarget, &'static str, Closure<dyn FnMut(Event)>);

struct State {
    network: NetworkMonitor,
    refresh: RefreshController,
    options: PageOptions,
    /// When a visibility or network signal last asked for a check.
    last_check: Cell<Option<Instant>>,
    /// Checks asked for and those the throttle dropped.
    checks: Cell<u64>,
    throttled: Cell<u64>,
}

impl std::fmt::Debug for PageSignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageSignals")
            .field("options", &self.state.options)
            .field("listeners", &self.listeners.len())
            .finish_non_exhaustive()
    }
}

impl PageSignals {
    /// Listens to the page for `client` and its refresh service.
    ///
    /// # Errors
    ///
    /// Not in a page (no `window` or `document`).
    pub fn connect<V>(
        client: &QueryClient<V>,
        refresh: &RefreshController,
        options: PageOptions,
    ) -> Result<Self, PageError>
    where
        V: PartialEq + Send + Sync + 'static,
    {
        let window = web_sys::window().ok_or(PageError::NoPage)?;
        let document = window.document().ok_or(PageError::NoPage)?;
        let state = Rc::new(State {
            network: client.network().clone(),
            refresh: refresh.clone(),
            options,
            last_check: Cell::new(None),
            checks: Cell::new(0),
            throttled: Cell::new(0),
        });
        let mut page = Self {
            listeners: Vec::new(),
            state: state.clone(),
        };
        if state.options.follow_network {
            let s = state.clone();
            page.listen(window.as_ref(), "online", move || s.online(true));
            let s = state.clone();
            page.listen(window.as_ref(), "offline", move || s.online(false));
        }
        let s = state.clone();
        let doc = document.clone();
        page.listen(document.as_ref(), "visibilitychange", move || {
            s.visible(!doc.hidden());
        });
        // A page opened in the background starts paused.
        if document.hidden() {
            state.visible(false);
        }
        Ok(page)
    }

    fn listen(&mut self, target: &EventTarget, event: &'static str, f: impl Fn() + 'static) {
        let closure = Closure::<dyn FnMut(Event)>::new(move |_: Event| f());
        // Adding a listener fails only for a closure that is not a function.
        let _ = target.add_event_listener_with_callback(event, closure.as_ref().unchecked_ref());
        self.listeners.push((target.clone(), event, closure));
    }

    /// Checks asked for by the page's signals so far, and how many of
    /// them the throttle dropped.
    pub fn checks(&self) -> (u64, u64) {
        (self.state.checks.get(), self.state.throttled.get())
    }
}

impl Drop for PageSignals {
    fn drop(&mut self) {
        for (target, event, closure) in self.listeners.drain(..) {
            let _ =
                target.remove_event_listener_with_callback(event, closure.as_ref().unchecked_ref());
        }
    }
}

impl State {
    fn online(&self, online: bool) {
        self.network.set_online(online);
        if online {
            self.check("the network is back");
        }
    }

    fn visible(&self, visible: bool) {
        if visible {
            if self.refresh.is_paused() {
                decision!("👀 page visible: refreshes resume");
                // A resume checks at once, whatever the throttle.
                self.refresh.set_paused(false);
                self.last_check.set(Some(Instant::now()));
                self.checks.set(self.checks.get() + 1);
            } else {
                self.check("the page is visible");
            }
        } else if !self.options.refresh_when_hidden {
            decision!("🙈 page hidden: refreshes pause");
            self.refresh.set_paused(true);
        }
    }

    /// Asks the service for a check, at most once per throttle window.
    fn check(&self, why: &str) {
        let now = Instant::now();
        if let Some(last) = self.last_check.get()
            && now.duration_since(last) < self.options.throttle
        {
            self.throttled.set(self.throttled.get() + 1);
            return;
        }
        self.last_check.set(Some(now));
        self.checks.set(self.checks.get() + 1);
        decision!("👀 {why}: checking for stale queries");
        self.refresh.check_now();
    }
}

/// Whether the page is online by the browser's word (`navigator.onLine`);
/// `true` outside a page.
pub fn navigator_online() -> bool {
    web_sys::window().is_none_or(|w| w.navigator().on_line())
}

/// A [`Fetcher`] made from a closure whose futures hold JavaScript values
/// (a `fetch()` promise, a `Response`), which are not `Send`.
///
/// The engine's bounds ask for `Send`, for native builds; in the browser
/// there is one thread, and the wrapper checks on every use that it is the
/// one it was made on.
pub fn local_fetcher<V, F, Fut, T>(f: F) -> LocalFetcher<F>
where
    F: Fn(QueryKey) -> Fut + 'static,
    Fut: Future<Output = Result<T, FetchError>> + 'static,
    T: Into<Fetched<V>>,
{
    LocalFetcher(SendWrapper::new(f))
}

/// A fetcher whose futures are not `Send`; see [`local_fetcher`].
pub struct LocalFetcher<F>(SendWrapper<F>);

impl<F> std::fmt::Debug for LocalFetcher<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalFetcher")
    }
}

impl<V, F, Fut, T> Fetcher<V> for LocalFetcher<F>
where
    V: Send + Sync + 'static,
    F: Fn(QueryKey) -> Fut + 'static,
    Fut: Future<Output = Result<T, FetchError>> + 'static,
    T: Into<Fetched<V>>,
{
    fn fetch(
        &self,
        request: FetchRequest<'_, V>,
    ) -> impl Future<Output = Result<Fetched<V>, FetchError>> + Send {
        let fut = SendWrapper::new((self.0)(request.key.clone()));
        async move { fut.await.map(Into::into) }
    }
}

/// A future that holds JavaScript values, for a bound that asks for `Send`
/// (a probe for [`BackgroundRefresh::with_probe`](crate::BackgroundRefresh::with_probe)).
/// Sound on the page's one thread; see [`local_fetcher`].
pub fn local<F: Future>(fut: F) -> impl Future<Output = F::Output> + Send {
    SendWrapper::new(fut)
}

/// Stops the engine's clock, for tests: time stands still (and no browser
/// timer runs for the engine) until [`advance_clock`] moves it or
/// [`resume_clock`] lets it run. The browser's counterpart of tokio's
/// paused clock. Process-wide: every client of the page follows it.
pub fn pause_clock() {
    crate::rt::pause();
}

/// Moves the engine's clock `d` ahead, wakes what sleeps until then
/// (refresh checks, retries, flush windows, timeouts), and yields to the
/// event loop once, so that what was woken has run (to its next wait on a
/// timer or on the network) when this returns.
pub async fn advance_clock(d: Duration) {
    crate::rt::advance(d);
    crate::rt::yield_now().await;
}

/// Lets a paused clock run again, from where it stands.
pub fn resume_clock() {
    crate::rt::resume();
}
