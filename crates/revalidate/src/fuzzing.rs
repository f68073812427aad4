//! Entry points for the fuzz targets in `fuzz/`: each feeds untrusted bytes
//! to one parser and checks the invariants that must hold for any input.
//! Not part of the API: hidden, and free to change.

use serde_json::Value;

use crate::key::QueryKey;
use crate::store::record::{self, Record};

/// The configuration reader on any text: it returns errors (with
/// positions inside the text), never panics.
pub fn config(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Err(errors) = crate::Config::from_toml("fuzz.toml", text) {
        let lines = text.lines().count().max(1);
        for e in errors.errors() {
            assert!(e.line() <= lines + 1, "error line {} of {lines}", e.line());
        }
        let _ = errors.to_string();
    }
}

/// Key canonicalisation on any JSON: canonical text is a fixed point (the
/// key of its own parameters is the same key), carries no raw NUL in the
/// parameters, and survives the store's key encoding.
pub fn query_key(bytes: &[u8]) {
    let Ok(params) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    let key = QueryKey::new("fuzz.action", params);
    let again = QueryKey::new("fuzz.action", key.params());
    assert_eq!(key, again, "canonical params are a fixed point");
    assert_eq!(key.params_json(), again.params_json());
    assert!(!key.params_json().contains('\0'), "no raw NUL in params");
    let stored = record::key_bytes(&key);
    let back = record::key_of(&stored).expect("a stored key reads back");
    assert_eq!(back, key, "store keys round-trip");
}

/// The store's record decoding on any bytes: an error, never a panic; and a
/// record that decodes re-encodes to an equal record. (Random bytes rarely
/// carry a valid checksum: the fields are fuzzed through format 1, which
/// has none, and the re-encoded format 2 record must verify.)
pub fn record(bytes: &[u8]) {
    const KEY: &[u8] = b"fuzz.action\0{}";
    if let Ok((rec, payload)) = Record::decode_borrowed(KEY, bytes) {
        let whole = Record {
            payload: payload.to_vec(),
            ..rec
        };
        let encoded = whole.encode(KEY);
        let (again, payload) =
            Record::decode_borrowed(KEY, &encoded).expect("re-encoded record decodes");
        assert_eq!(payload, whole.payload.as_slice());
        assert_eq!(
            (
                again.version,
                again.updated_at_unix_nanos,
                again.invalidated,
                again.errors
            ),
            (
                whole.version,
                whole.updated_at_unix_nanos,
                whole.invalidated,
                whole.errors
            )
        );
        assert_eq!(
            again.last_error.map(|e| e.kind),
            whole.last_error.map(|e| e.kind)
        );
    }
    // A store key: the key text comes back byte for byte.
    if let Ok(key) = record::key_of(bytes) {
        assert_eq!(record::key_bytes(&key), bytes);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_entry_points_hold_on_samples() {
        for sample in [
            &b""[..],
            b"{",
            b"[[[[",
            b"\x01\x00",
            b"null",
            b"{\"a\":1.0,\"b\":[2e3]}",
        ] {
            super::config(sample);
            super::query_key(sample);
            super::record(sample);
        }
        super::config(b"[refresh]\ncheck_interval = \"0s\"\n[staleness]\nx = 5\n");
    }
}
