//! `revalidate`: the revalidate engine in front of any HTTP API.
//!
//! ```text
//! revalidate serve --config revalidate.toml [--profile NAME] [--debug] [--log-format json]
//! revalidate check-config revalidate.toml [--profile NAME]
//! revalidate demo
//! ```

/// jemalloc, with its background thread on: a burst of connections (each
/// with its read and write buffers) is given back to the system some
/// seconds after they close, where glibc's allocator kept the high-water
/// mark for the life of the process.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    revalidate_daemon::main()
}
