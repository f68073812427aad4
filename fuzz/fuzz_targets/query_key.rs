//! Fuzzes `revalidate::fuzzing::query_key`: see that function for the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| revalidate::fuzzing::query_key(data));
