//! The layout of a persisted entry, shared by every store.
//!
//! Key: the key's text (action, NUL, canonical params). Value, little-endian:
//!
//! | field | bytes |
//! |---|---|
//! | format (2) | 1 |
//! | flags (bit 0: invalidated, bit 1: has error) | 1 |
//! | data version | 8 |
//! | updated_at, Unix nanoseconds | 8 |
//! | consecutive errors | 4 |
//! | if has error: kind, at (Unix ns), message length, message | 1 + 8 + 4 + n |
//! | payload (the codec's bytes) | all but the last 8 |
//! | checksum: XXH3-64 of the value before it, seeded with XXH3-64 of the key | 8 |
//!
//! The checksum is how a damaged file is caught: hydrate reads every
//! record, so verifying each one as it is read covers all the data a store
//! holds in one pass, where a whole-file check at open would read it all a
//! second time (a third of a million-query start-up). Seeding it with the
//! key's hash catches a record that moved under another key too.
//!
//! Format 1 (written before the checksum existed) is the same without the
//! trailer; it still reads, unverified, and is rewritten as format 2 when
//! its entry next changes. A record that does not parse, or whose checksum
//! does not match, is dropped at hydrate, never trusted.

use crate::fetch::FetchErrorKind;
use crate::key::QueryKey;

/// The format this version writes.
const FORMAT: u8 = 2;
/// The format before the checksum: read, never written.
const FORMAT_UNCHECKED: u8 = 1;
/// The checksum's length, at the end of a format 2 value.
const CHECKSUM_BYTES: usize = 8;
const INVALIDATED: u8 = 1;
const HAS_ERROR: u8 = 2;

/// A failure, as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredError {
    pub(crate) kind: FetchErrorKind,
    pub(crate) at_unix_nanos: i64,
    pub(crate) message: String,
}

/// One persisted entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) version: u64,
    pub(crate) updated_at_unix_nanos: i64,
    pub(crate) invalidated: bool,
    pub(crate) errors: u32,
    pub(crate) last_error: Option<StoredError>,
    pub(crate) payload: Vec<u8>,
}

/// Why a record or key could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecordError {
    #[error(
        "record format {0} is not known (this version reads formats {FORMAT_UNCHECKED} and {FORMAT})"
    )]
    Format(u8),
    #[error("record checksum does not match: the store file is damaged")]
    Damaged,
    #[error("record is truncated")]
    Truncated,
    #[error("record key is not a query key: {0}")]
    Key(String),
}

fn kind_code(kind: FetchErrorKind) -> u8 {
    match kind {
        FetchErrorKind::Network => 0,
        FetchErrorKind::Timeout => 1,
        FetchErrorKind::Rejected => 2,
        FetchErrorKind::Failed => 3,
        FetchErrorKind::BadData => 4,
        FetchErrorKind::Offline => 5,
    }
}

fn kind_of(code: u8) -> FetchErrorKind {
    match code {
        0 => FetchErrorKind::Network,
        1 => FetchErrorKind::Timeout,
        2 => FetchErrorKind::Rejected,
        4 => FetchErrorKind::BadData,
        5 => FetchErrorKind::Offline,
        _ => FetchErrorKind::Failed,
    }
}

/// The checksum of `value` stored under `key`.
fn checksum(key: &[u8], value: &[u8]) -> u64 {
    use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};
    xxh3_64_with_seed(value, xxh3_64(key))
}

impl Record {
    /// The value to store under `key` (the key is part of the checksum).
    pub(crate) fn encode(&self, key: &[u8]) -> Vec<u8> {
        let error_len = self.last_error.as_ref().map_or(0, |e| 13 + e.message.len());
        let mut out = Vec::with_capacity(22 + error_len + self.payload.len() + CHECKSUM_BYTES);
        out.push(FORMAT);
        let mut flags = 0;
        if self.invalidated {
            flags |= INVALIDATED;
        }
        if self.last_error.is_some() {
            flags |= HAS_ERROR;
        }
        out.push(flags);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.updated_at_unix_nanos.to_le_bytes());
        out.extend_from_slice(&self.errors.to_le_bytes());
        if let Some(e) = &self.last_error {
            out.push(kind_code(e.kind));
            out.extend_from_slice(&e.at_unix_nanos.to_le_bytes());
            let len = u32::try_from(e.message.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&e.message.as_bytes()[..len as usize]);
        }
        out.extend_from_slice(&self.payload);
        let sum = checksum(key, &out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Decodes the value stored under `key`, all but the payload, which is
    /// returned as a slice of `bytes` (the record's `payload` is left
    /// empty): hydrate hands it to the codec without copying it first.
    pub(crate) fn decode_borrowed<'a>(
        key: &[u8],
        bytes: &'a [u8],
    ) -> Result<(Record, &'a [u8]), RecordError> {
        let bytes = match bytes.first() {
            None => return Err(RecordError::Truncated),
            Some(&FORMAT) => {
                // At least the format byte before the checksum.
                let Some(split) = bytes.len().checked_sub(CHECKSUM_BYTES).filter(|&n| n > 0) else {
                    return Err(RecordError::Truncated);
                };
                let (value, sum) = bytes.split_at(split);
                let sum = u64::from_le_bytes(sum.try_into().expect("8 bytes"));
                if checksum(key, value) != sum {
                    return Err(RecordError::Damaged);
                }
                value
            }
            Some(&FORMAT_UNCHECKED) => bytes,
            Some(&other) => return Err(RecordError::Format(other)),
        };
        let mut r = Reader(&bytes[1..]);
        let flags = r.u8()?;
        let version = u64::from_le_bytes(r.array()?);
        let updated_at_unix_nanos = i64::from_le_bytes(r.array()?);
        let errors = u32::from_le_bytes(r.array()?);
        let last_error = if flags & HAS_ERROR != 0 {
            let kind = kind_of(r.u8()?);
            let at_unix_nanos = i64::from_le_bytes(r.array()?);
            let len = u32::from_le_bytes(r.array()?) as usize;
            let message = String::from_utf8_lossy(r.take(len)?).into_owned();
            Some(StoredError {
                kind,
                at_unix_nanos,
                message,
            })
        } else {
            None
        };
        let record = Record {
            version,
            updated_at_unix_nanos,
            invalidated: flags & INVALIDATED != 0,
            errors,
            last_error,
            payload: Vec::new(),
        };
        Ok((record, r.0))
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.0.len() < n {
            return Err(RecordError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }
}

/// The store key of a query key.
pub(crate) fn key_bytes(key: &QueryKey) -> Vec<u8> {
    key.text().as_bytes().to_vec()
}

/// The query key of a store key. The text was written canonical by
/// [`key_bytes`] under this record format, so it is used as it is (its
/// parameters are only checked to be JSON), which keeps hydrate fast.
pub(crate) fn key_of(bytes: &[u8]) -> Result<QueryKey, RecordError> {
    let text = std::str::from_utf8(bytes).map_err(|e| RecordError::Key(e.to_string()))?;
    if let Some((_, params)) = text.split_once('\0') {
        serde_json::from_str::<serde::de::IgnoredAny>(params)
            .map_err(|e| RecordError::Key(e.to_string()))?;
    }
    Ok(QueryKey::from_canonical_text(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"item.get\0{\"id\":1}";

    impl Record {
        fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
            let (mut record, payload) = Self::decode_borrowed(KEY, bytes)?;
            record.payload = payload.to_vec();
            Ok(record)
        }
    }

    fn sample() -> Record {
        Record {
            version: 7,
            updated_at_unix_nanos: 1_764_370_000_000_000_000,
            invalidated: true,
            errors: 2,
            last_error: Some(StoredError {
                kind: FetchErrorKind::Timeout,
                at_unix_nanos: 1_764_370_001_000_000_000,
                message: "no answer within 30s".into(),
            }),
            payload: br#"{"rows":[1,2,3]}"#.to_vec(),
        }
    }

    #[test]
    fn round_trip() {
        let r = sample();
        assert_eq!(Record::decode(&r.encode(KEY)).unwrap(), r);
        let plain = Record {
            last_error: None,
            invalidated: false,
            errors: 0,
            ..sample()
        };
        assert_eq!(Record::decode(&plain.encode(KEY)).unwrap(), plain);
    }

    #[test]
    fn format_1_still_reads() {
        // Format 2 less its checksum, under the old format byte.
        let r = sample();
        let mut old = r.encode(KEY);
        old.truncate(old.len() - CHECKSUM_BYTES);
        old[0] = FORMAT_UNCHECKED;
        assert_eq!(Record::decode(&old).unwrap(), r);
    }

    #[test]
    fn any_damage_to_a_record_or_its_key_is_caught() {
        let bytes = sample().encode(KEY);
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[at] ^= 1 << bit;
                assert!(
                    Record::decode(&damaged).is_err(),
                    "bit {bit} of byte {at} flipped"
                );
            }
        }
        assert_eq!(
            Record::decode_borrowed(b"item.get\0{\"id\":2}", &bytes).map(|_| ()),
            Err(RecordError::Damaged),
            "a record under another key"
        );
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let bytes = sample().encode(KEY);
        for cut in 0..bytes.len() {
            assert!(Record::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut future = bytes.clone();
        future[0] = 9;
        assert_eq!(Record::decode(&future), Err(RecordError::Format(9)));
    }

    #[test]
    fn keys_round_trip() {
        for key in [
            QueryKey::bare("system_health"),
            QueryKey::new(
                "process.list",
                serde_json::json!({"status": "active", "page": 2}),
            ),
        ] {
            assert_eq!(key_of(&key_bytes(&key)).unwrap(), key);
        }
        assert!(key_of(b"a\0{not json").is_err());
        assert!(key_of(&[0xff, 0xfe]).is_err());
    }
}
