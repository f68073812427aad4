//! `revalidate`: the revalidate engine in front of any HTTP API.
//!
//! ```text
//! revalidate serve --config revalidate.toml [--profile NAME] [--debug] [--log-format json]
//! revalidate check-config revalidate.toml [--profile NAME]
//! revalidate demo
//! ```

fn main() -> std::process::ExitCode {
    revalidate_daemon::main()
}
