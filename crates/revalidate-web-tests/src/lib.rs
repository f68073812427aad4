//! The engine in headless Chromium. The tests are in `tests/` and build only
//! for `wasm32-unknown-unknown`; run them with `scripts/test wasm`.
//!
//! - `engine` — reads and single-flight, a refresh cycle, retries, offline
//!   pause and catch-up, timeouts, on the browser's clock and timers (a
//!   manual clock where the engine allows);
//! - `idb` — the IndexedDB store: round trip, persistence, `max_age`, the
//!   buster, undecodable entries, a blocked upgrade, reopening;
//! - `signals` — `online`/`offline` and `visibilitychange`;
//! - `reload` — run twice with one browser profile: the second page hydrates
//!   what the first wrote.
