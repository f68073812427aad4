//! `revalidate-web-example [--pkg DIR] [--failure-rate F]`: runs the demo API
//! (which answers CORS) on a free loopback port, and serves the example
//! page from `DIR` (`www/` plus wasm-bindgen's output in `DIR/pkg`) on
//! another, so that the page reads the API cross-origin as a real one
//! would. Prints one JSON line, `{"page": URL, "api": URL}`, then serves
//! until interrupted.

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
mod serve;

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
fn main() -> std::process::ExitCode {
    serve::main()
}

/// In the browser the page is the library; there is nothing to run.
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
fn main() {}
