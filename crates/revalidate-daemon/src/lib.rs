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
mod server;
mod upstream;

/// Runs the `revalidate` command line on the process's arguments.
///
/// Exit codes: 0 on a clean stop, 1 on a runtime failure, 2 on a
/// configuration error (every error printed with file:line:column and key).
pub fn main() -> std::process::ExitCode {
    cli::main()
}
