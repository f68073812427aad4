//! Fuzzes `revalidate::fuzzing::record`: see that function for the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| revalidate::fuzzing::record(data));
