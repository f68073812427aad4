//! Fuzzes `revalidate_daemon::fuzzing::upstream_answer`: any status,
//! headers and body from the upstream are classified without a panic, and
//! a value is cached only if it is JSON within the size limit.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = u16::from_le_bytes([data[0], data[1]]) % 1000;
    let n_headers = usize::from(data[2] % 4);
    let mut rest = &data[3..];
    let mut headers = Vec::new();
    for _ in 0..n_headers {
        let Some((&len, tail)) = rest.split_first() else { break };
        let len = usize::from(len).min(tail.len());
        let (field, tail) = tail.split_at(len);
        rest = tail;
        let (name, value) = field.split_at(field.len() / 3);
        if let Ok(name) = std::str::from_utf8(name) {
            headers.push((name, value));
        }
    }
    if let Ok(fetched) = revalidate_daemon::fuzzing::upstream_answer(status, &headers, rest)
        && let Some(body) = fetched.value()
    {
        assert!(
            serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok(),
            "only JSON is cached"
        );
    }
});
