//! The floor of `bench/http.sh`: the daemon's HTTP stack serving one fixed
//! body from memory, without the cache (see `bench/README.md`).
//!
//! ```text
//! cargo build --release -p revalidate-daemon --example floor
//! target/release/examples/floor 127.0.0.1:8788 body.json
//! ```

/// The daemon's allocator (see `src/main.rs`), so that the floor differs
/// from `revalidate serve` by the cache alone.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(file), None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: floor LISTEN_ADDR BODY_FILE");
        return std::process::ExitCode::from(2);
    };
    let Ok(listen) = listen.parse() else {
        eprintln!("error: `{listen}` is not an address and port, like 127.0.0.1:8788");
        return std::process::ExitCode::from(2);
    };
    let body = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot read {file}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    revalidate_daemon::bench::floor(listen, body.into())
}
