//! Fuzzes `revalidate::fuzzing::config`: see that function for the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| revalidate::fuzzing::config(data));
