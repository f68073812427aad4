//! The `revalidate` daemon: the revalidate engine in front of any HTTP API,
//! with cache-first reads, Server-Sent Events on change, a live dashboard
//! and Prometheus metrics.
//!
//! This crate is the daemon's implementation; its interface is the
//! `revalidate` binary (see the repository's README and `docs/http-api.md`),
//! whose `main` is [`main`]. It is a library so that the binary stays a few
//! lines and so that fuzz targets can reach the functions that parse input
//! from outside.

mod cli;
mod config;
mod daemon;
mod demo;
mod events;
mod floor;
mod identity;
mod server;
mod upstream;

/// Runs the `revalidate` command line on the process's arguments.
///
/// Exit codes: 0 on a clean stop, 1 on a runtime failure, 2 on a
/// configuration error (every error printed with file:line:column and key).
pub fn main() -> std::process::ExitCode {
    cli::main()
}

#[doc(hidden)]
pub mod bench {
    //! The floor of `bench/http.sh` (its `floor` target, built as the
    //! example `floor`): the daemon's own runtime and accept loop serving a
    //! fixed body, so that the bench can tell the cache's cost from the HTTP
    //! stack's. Not a stable interface.

    /// Serves `body` as `application/json` at `GET /v1/resources/{action}`
    /// (and `ok` at `/healthz`) on `listen` until SIGINT or SIGTERM.
    pub fn floor(listen: std::net::SocketAddr, body: bytes::Bytes) -> std::process::ExitCode {
        crate::floor::run(listen, body)
    }
}

#[doc(hidden)]
pub mod fuzzing {
    //! Entry points for fuzz targets: the functions that read input from
    //! outside the process, callable without a network or a configuration.
    //! Not a stable interface.

    use bytes::Bytes;
    use revalidate::{FetchError, Fetched};

    /// Classifies one upstream answer exactly as the daemon does (with the
    /// default `[upstream]` settings and no configured headers): the body of
    /// a value it would cache, "not modified", or the error it would record.
    ///
    /// Header pairs that are not valid HTTP are skipped, as the HTTP client
    /// would refuse them before the classifier saw them; a status outside
    /// `100..=999` is a failed fetch.
    pub fn upstream_answer(
        status: u16,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) -> Result<Fetched<Bytes>, FetchError> {
        crate::upstream::classify::fuzz(status, headers, body)
    }

    /// Reads a daemon configuration from any text, as `check-config` does:
    /// errors (with positions inside the text, and never a secret quoted),
    /// never a panic.
    pub fn config(text: &str) {
        if let Err(errors) = crate::config::DaemonConfig::parse("fuzz.toml", text) {
            let lines = text.lines().count().max(1);
            for e in errors.errors() {
                assert!(e.line() <= lines + 1, "error line {} of {lines}", e.line());
            }
            let _ = errors.to_string();
        }
    }
}
