//! Decision logging in the seed's style (`🔍`, `⏰`, `🔄`, `✅`, `❌`, `📴`, `📶`).
//!
//! Every decision of the engine is a `tracing` event with target
//! `revalidate`. They are `debug` events, so `RUST_LOG=revalidate=debug`
//! shows them; [`set_debug`] (the seed's `setDebugMode(true)`) raises them to
//! `info` so that a default subscriber shows them without any filter change.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

static DEBUG: AtomicBool = AtomicBool::new(false);

/// Shows the engine's decision log at `info` level (`true`), or only at
/// `debug` level (`false`, the default). Process-wide, like the seed's
/// `BackgroundRefreshService.setDebugMode`.
pub fn set_debug(on: bool) {
    DEBUG.store(on, Relaxed);
}

/// Whether [`set_debug`] is on.
pub fn debug_enabled() -> bool {
    DEBUG.load(Relaxed)
}

/// Logs one decision: `decision!("🔄 refreshing {key}")`.
macro_rules! decision {
    ($($arg:tt)*) => {
        if $crate::log::debug_enabled() {
            ::tracing::info!(target: "revalidate", $($arg)*);
        } else {
            ::tracing::debug!(target: "revalidate", $($arg)*);
        }
    };
}
pub(crate) use decision;
