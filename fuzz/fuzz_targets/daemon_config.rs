//! Fuzzes `revalidate_daemon::fuzzing::config`: the daemon's own tables
//! (`[server]`, `[store]`, `[upstream]`, `[actions.*]`) never panic the reader.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        revalidate_daemon::fuzzing::config(text);
    }
});
