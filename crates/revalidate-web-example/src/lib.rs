//! The example page: the demo API's resources read through the engine in
//! the browser, with an IndexedDB store, the page's signals and the
//! decision log. Build it for wasm32 and run `wasm-bindgen --target web`
//! on it; `www/index.html` loads it and calls `start(api_base)`.
//!
//! The page shows each query's age against its staleness limit, its
//! version and status, the network state, what was restored from IndexedDB
//! and the engine's decision log; it keeps working offline and after a
//! reload without a network. Natively this library is empty (the crate's
//! binary serves the page and the demo API).

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
mod page;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
pub use page::{bench_read_path, start};
