//! What an upstream answer means for the engine: one pure function from the
//! status, the headers and the body (or why the body could not be read) to
//! a value to cache or a classified [`FetchError`].
//!
//! Nothing here does I/O or reads the clock, so the rules can be read in one
//! place, tested on their own and fuzzed (`crate::fuzzing`).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, ETAG, HeaderMap, RETRY_AFTER};
use revalidate::{FetchError, Fetched};

use super::Payload;
use super::redact::Redactor;
use super::redirect::NotFollowed;

/// How long a `429` without a usable `Retry-After` waits.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Characters of an error body kept in the error's message.
const SNIPPET_CHARS: usize = 200;

/// Why a body could not be read in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// The upstream timeout ran out while it was read (a trickling body).
    Timeout(String),
    /// The connection failed while reading it.
    Network(String),
    /// It went on past the limit; reading stopped there.
    TooLarge,
}

/// One answer from the upstream, as received.
#[derive(Debug)]
pub(crate) struct Answer<'a> {
    pub(crate) status: StatusCode,
    pub(crate) headers: &'a HeaderMap,
    /// The body, or why it could not be read.
    pub(crate) body: Result<Bytes, BodyError>,
}

/// What the classification depends on besides the answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules<'a> {
    /// The wall-clock time of the answer (for `Retry-After` dates).
    pub(crate) now: SystemTime,
    /// The largest body accepted (`[upstream] max_response_bytes`).
    pub(crate) max_bytes: usize,
    /// Why a redirect that reached the classifier was not followed.
    pub(crate) not_followed: NotFollowed,
    /// Takes the configured header values out of the error bodies quoted.
    pub(crate) redactor: &'a Redactor,
}

/// Classifies an answer: `304` is "not modified"; a `2xx` with a JSON body
/// of at most `max_bytes` is a value; `5xx` failed (retried, honouring
/// `Retry-After`); `4xx` is rejected (`429` retried after its
/// `Retry-After`); a redirect that reaches it was not followed, and is
/// rejected; anything else failed. A `2xx` body that is not JSON, or
/// larger than `max_bytes` (by its `Content-Length` or by what was read),
/// is bad data, never cached. A body that could not be read is a timeout or
/// a network error.
pub(crate) fn classify(
    answer: Answer<'_>,
    rules: &Rules<'_>,
) -> Result<Fetched<Payload>, FetchError> {
    let Answer {
        status,
        headers,
        body,
    } = answer;
    if status == StatusCode::NOT_MODIFIED {
        return Ok(Fetched::not_modified());
    }
    let retry = retry_after(headers, rules.now);
    // An answer cut short says nothing usable, whatever its status: the
    // transport failed. No status is attached: the answer never completed.
    let code = status.as_u16();
    let too_large = |what: String| {
        FetchError::bad_data(format!(
            "upstream answered {status} with {what}, over the limit of {} bytes ([upstream] max_response_bytes)",
            rules.max_bytes
        ))
        .with_status(code)
    };
    if status.is_success()
        && let Some(declared) = content_length(headers)
        && declared > rules.max_bytes as u64
    {
        return Err(too_large(format!("a body that declares {declared} bytes")));
    }
    let body = body.map_err(|e| match e {
        BodyError::Timeout(why) => FetchError::timeout(format!("reading the body: {why}")),
        BodyError::Network(why) => FetchError::network(format!("reading the body: {why}")),
        BodyError::TooLarge => too_large("a longer body".to_owned()),
    })?;
    // The upstream's own words stay in the error's message, for the log and
    // the operator's views; callers are told the kind and the status.
    if status.is_server_error() {
        let e = FetchError::failed(format!(
            "upstream answered {status}: {}",
            snippet(&body, rules.redactor)
        ))
        .with_status(code);
        return Err(match retry {
            Some(d) => e.with_retry_after(d),
            None => e,
        });
    }
    if status.is_client_error() {
        let e = FetchError::rejected(format!(
            "upstream answered {status}: {}",
            snippet(&body, rules.redactor)
        ))
        .with_status(code);
        return Err(if status == StatusCode::TOO_MANY_REQUESTS {
            e.with_retry_after(retry.unwrap_or(DEFAULT_RETRY_AFTER))
        } else {
            e
        });
    }
    if status.is_redirection() {
        return Err(FetchError::rejected(format!(
            "upstream answered {status}, a redirect, not followed: {}",
            rules.not_followed
        ))
        .with_status(code));
    }
    if !status.is_success() {
        return Err(FetchError::failed(format!("upstream answered {status}")).with_status(code));
    }
    if body.len() > rules.max_bytes {
        return Err(too_large(format!("a body of {} bytes", body.len())));
    }
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
        return Err(FetchError::bad_data(format!(
            "upstream answered {status} with a body that is not JSON ({e})"
        ))
        .with_status(code));
    }
    let etag = headers
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = body.len() as u64;
    // A copy: the header map's values are views of the connection's read
    // buffer, which a cached payload must not keep alive.
    let content_type = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| reqwest::header::HeaderValue::from_bytes(v.as_bytes()).ok());
    Ok(Fetched::new(Payload::new(body, etag).with_content_type(content_type)).with_bytes(bytes))
}

/// The `Content-Length` header, when there is one that reads as a number.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The start of an error body, as text of at most [`SNIPPET_CHARS`]
/// characters, redacted before it is cut: a secret that the cut would
/// straddle is replaced whole, never left in part.
fn snippet(body: &[u8], redactor: &Redactor) -> String {
    // Enough bytes for the characters kept, and for a secret that starts
    // among them to end within what is redacted.
    let window = SNIPPET_CHARS * 4 + redactor.longest();
    let text = String::from_utf8_lossy(&body[..body.len().min(window)]);
    redactor.redact(&text).chars().take(SNIPPET_CHARS).collect()
}

/// A `Retry-After` header's delay (RFC 9110 §10.2.3): delta-seconds (a
/// number too large for the clock saturates; the engine cuts it to
/// `max_retry_after`), or an HTTP-date, as the time from `now` until then
/// (zero for a date past). `None` when absent or unreadable.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `crate::fuzzing::upstream_answer`: [`classify`] with the defaults, on
/// raw parts.
pub(crate) fn fuzz(
    status: u16,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> Result<Fetched<Bytes>, FetchError> {
    let Ok(status) = StatusCode::from_u16(status) else {
        return Err(FetchError::failed(format!(
            "`{status}` is not an HTTP status"
        )));
    };
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            reqwest::header::HeaderValue::from_bytes(value),
        ) {
            map.append(name, value);
        }
    }
    let redactor = Redactor::default();
    let rules = Rules {
        now: SystemTime::now(),
        max_bytes: crate::config::DEFAULT_MAX_RESPONSE_BYTES,
        not_followed: NotFollowed::Never,
        redactor: &redactor,
    };
    let answer = Answer {
        status,
        headers: &map,
        body: Ok(Bytes::copy_from_slice(body)),
    };
    classify(answer, &rules).map(|f| {
        let bytes = f.bytes();
        match f.value() {
            Some(p) => Fetched::new(p.body.clone()).with_bytes(bytes),
            None => Fetched::not_modified(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use revalidate::FetchErrorKind;

    static NOBODY: std::sync::LazyLock<Redactor> = std::sync::LazyLock::new(Redactor::default);

    fn rules() -> Rules<'static> {
        Rules {
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            max_bytes: 16,
            not_followed: NotFollowed::Never,
            redactor: &NOBODY,
        }
    }

    fn answer<'a>(status: u16, headers: &'a HeaderMap, body: &'static [u8]) -> Answer<'a> {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            body: Ok(Bytes::from_static(body)),
        }
    }

    fn kind(r: &Result<Fetched<Payload>, FetchError>) -> Option<FetchErrorKind> {
        r.as_ref().err().map(FetchError::kind)
    }

    #[test]
    fn statuses_are_classified() {
        let h = HeaderMap::new();
        let ok = classify(answer(200, &h, br#"{"a":1}"#), &rules()).unwrap();
        assert_eq!(ok.value().unwrap().body.as_ref(), br#"{"a":1}"#);
        assert_eq!(ok.bytes(), 7);
        assert!(
            classify(answer(304, &h, b""), &rules())
                .unwrap()
                .value()
                .is_none()
        );
        let cases = [
            (500, FetchErrorKind::Failed),
            (503, FetchErrorKind::Failed),
            (404, FetchErrorKind::Rejected),
            (429, FetchErrorKind::Rejected),
            (302, FetchErrorKind::Rejected),
            (308, FetchErrorKind::Rejected),
            (300, FetchErrorKind::Rejected),
            (102, FetchErrorKind::Failed),
        ];
        for (status, expected) in cases {
            let r = classify(answer(status, &h, b"nope"), &rules());
            assert_eq!(kind(&r), Some(expected), "{status}");
            assert_eq!(r.unwrap_err().status(), Some(status));
        }
        let r = classify(answer(200, &h, b"<html>"), &rules());
        assert_eq!(kind(&r), Some(FetchErrorKind::BadData));
    }

    #[test]
    fn etags_are_kept_and_429_waits_a_minute_by_default() {
        let mut h = HeaderMap::new();
        h.insert(ETAG, HeaderValue::from_static("W/\"x\""));
        let ok = classify(answer(200, &h, b"[]"), &rules()).unwrap();
        assert_eq!(
            ok.value().unwrap().upstream_etag.as_deref(),
            Some("W/\"x\"")
        );
        let r = classify(answer(429, &HeaderMap::new(), b""), &rules());
        assert_eq!(r.unwrap_err().retry_after(), Some(DEFAULT_RETRY_AFTER));
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        let r = classify(answer(503, &h, b""), &rules());
        assert_eq!(r.unwrap_err().retry_after(), Some(Duration::from_secs(7)));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = rules().now;
        let read = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, HeaderValue::from_static(v));
            retry_after(&h, now)
        };
        assert_eq!(read("120"), Some(Duration::from_secs(120)));
        assert_eq!(read(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(read("9999999999"), Some(Duration::from_secs(9_999_999_999)));
        assert_eq!(
            read("99999999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
        // 1_700_000_000 is Tue, 14 Nov 2023 22:13:20 GMT.
        assert_eq!(
            read("Tue, 14 Nov 2023 22:15:00 GMT"),
            Some(Duration::from_secs(100))
        );
        // The obsolete forms RFC 9110 still asks recipients to accept.
        assert_eq!(
            read("Tuesday, 14-Nov-23 22:15:00 GMT"),
            Some(Duration::from_secs(100))
        );
        assert_eq!(
            read("Tue Nov 14 22:15:00 2023"),
            Some(Duration::from_secs(100))
        );
        assert_eq!(read("Tue, 14 Nov 2023 22:00:00 GMT"), Some(Duration::ZERO));
        for garbage in ["", "-1", "1.5", "soon", "Tue, 14 Nov 2023"] {
            assert_eq!(read(garbage), None, "{garbage:?}");
        }
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
        // A 429 without a usable one waits the default; a dated one, its date.
        let mut h = HeaderMap::new();
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Tue, 14 Nov 2023 22:13:50 GMT"),
        );
        let e = classify(answer(429, &h, b""), &rules()).unwrap_err();
        assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("whenever"));
        let e = classify(answer(429, &h, b""), &rules()).unwrap_err();
        assert_eq!(e.retry_after(), Some(DEFAULT_RETRY_AFTER));
    }

    #[test]
    fn bodies_over_the_limit_are_bad_data() {
        let h = HeaderMap::new();
        let at_limit = classify(answer(200, &h, b"\"12345678901234\""), &rules());
        assert_eq!(at_limit.unwrap().bytes(), 16);
        let over = classify(answer(200, &h, b"\"123456789012345\""), &rules()).unwrap_err();
        assert_eq!(over.kind(), FetchErrorKind::BadData);
        assert_eq!(over.status(), Some(200));
        assert!(over.message().contains("a body of 17 bytes"), "{over}");
        // Refused on its Content-Length alone, whatever was read.
        let mut declared = HeaderMap::new();
        declared.insert(CONTENT_LENGTH, HeaderValue::from_static("104857600"));
        let e = classify(answer(200, &declared, b"{}"), &rules()).unwrap_err();
        assert!(e.message().contains("declares 104857600 bytes"), "{e}");
        assert!(e.message().contains("max_response_bytes"), "{e}");
        let stopped = Answer {
            status: StatusCode::OK,
            headers: &h,
            body: Err(BodyError::TooLarge),
        };
        assert_eq!(
            classify(stopped, &rules()).unwrap_err().kind(),
            FetchErrorKind::BadData
        );
        // An error status is classified by its status, whatever its length.
        let e = classify(answer(503, &declared, b"busy"), &rules()).unwrap_err();
        assert_eq!(e.kind(), FetchErrorKind::Failed);
    }

    #[test]
    fn body_errors_keep_their_kind_and_have_no_status() {
        let h = HeaderMap::new();
        for (error, expected) in [
            (
                BodyError::Timeout("timed out".into()),
                FetchErrorKind::Timeout,
            ),
            (BodyError::Network("reset".into()), FetchErrorKind::Network),
        ] {
            for status in [200, 500] {
                let answer = Answer {
                    status: StatusCode::from_u16(status).unwrap(),
                    headers: &h,
                    body: Err(error.clone()),
                };
                let e = classify(answer, &rules()).unwrap_err();
                assert_eq!(e.kind(), expected, "{status}");
                assert_eq!(e.status(), None);
            }
        }
    }

    #[test]
    fn snippets_are_redacted_before_they_are_cut() {
        let redactor = Redactor::new(["Bearer s3cret-token-value"]);
        let rules = Rules {
            redactor: &redactor,
            ..rules()
        };
        let h = HeaderMap::new();
        for at in [0, 150, 190, 199, 400] {
            let body = format!(
                "{}Bearer s3cret-token-value{}",
                "x".repeat(at),
                "y".repeat(300)
            );
            let body: &'static [u8] = Box::leak(body.into_bytes().into_boxed_slice());
            let e = classify(answer(500, &h, body), &rules).unwrap_err();
            assert!(!e.message().contains("s3cret"), "{at}: {}", e.message());
            if at < SNIPPET_CHARS - 10 {
                assert!(e.message().contains("[redacted]"), "{at}: {}", e.message());
            }
        }
    }

    #[test]
    fn error_bodies_are_cut_to_a_snippet() {
        let h = HeaderMap::new();
        let long: &'static [u8] = Box::leak(vec![b'x'; 10_000].into_boxed_slice());
        let e = classify(answer(500, &h, long), &rules()).unwrap_err();
        assert!(e.message().len() < SNIPPET_CHARS + 64, "{}", e.message());
    }

    #[test]
    fn the_fuzzing_entry_never_panics_on_nasty_answers() {
        let huge = vec![b'['; 100_000];
        let nested_ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        let accents = "é".repeat(300);
        let bodies: [&[u8]; 8] = [
            b"",
            b"\xff\xfe\x00",
            accents.as_bytes(),
            &huge,
            nested_ok.as_bytes(),
            b"{\"a\":",
            b"null",
            &[0xe2, 0x82],
        ];
        let headers: [&[(&str, &[u8])]; 6] = [
            &[],
            &[("retry-after", b"99999999999999999999999999")],
            &[("retry-after", b"Wed, 21 Oct 2015 07:28:00 GMT")],
            &[("retry-after", b"\xff"), ("etag", b"\x00bad")],
            &[
                ("content-length", b"18446744073709551616"),
                ("bad name", b"x"),
            ],
            &[("location", b"http://[::1"), ("retry-after", b"-1")],
        ];
        for status in [
            0,
            99,
            100,
            200,
            204,
            299,
            301,
            304,
            399,
            429,
            500,
            599,
            600,
            999,
            1000,
            u16::MAX,
        ] {
            for h in headers {
                for b in bodies {
                    let r = fuzz(status, h, b);
                    if let Ok(f) = &r
                        && let Some(body) = f.value()
                    {
                        assert!(serde_json::from_slice::<serde_json::Value>(body).is_ok());
                    }
                    if let Err(e) = &r {
                        assert!(e.message().len() < 4096, "{status}: {}", e.message());
                    }
                }
            }
        }
    }
}
