//! The real daemon against an upstream answering bodies over
//! `[upstream] max_response_bytes`: refused as bad data before they are
//! read (a `Content-Length` over the limit) or as soon as they pass it
//! (chunked), never cached, the last good value kept, and the daemon's
//! memory unmoved by a 100 MB answer.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::faults::{Proc, Scripted, json, streamed_json};
use support::{Daemon, eventually};

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn get(url: &str) -> reqwest::Response {
    http().get(url).send().await.unwrap()
}

fn config(base: &str, upstream_extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[upstream]
base_url = "{base}"
timeout = "20s"
probe_interval = "1h"
{upstream_extra}

[refresh]
check_interval = "50ms"
retry_interval = "200ms"
max_retries = 1
inactive_after = "1h"
fetch_timeout = "30s"
jitter = 0.0

[staleness]
big = "1h"
over = "300ms"
edge = "1h"

[actions."big.sized"]
[actions."big.chunked"]
[actions."over.get"]
[actions."over.chunked"]
[actions."edge.get"]
"#
    )
}

async fn json_of(url: &str) -> Value {
    get(url).await.json().await.unwrap()
}

/// A JSON text of exactly `n` bytes (`n` ≥ 2).
fn json_of_size(n: usize) -> String {
    format!("\"{}\"", "x".repeat(n - 2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_answer_is_refused_without_being_held_in_memory() {
    const HUNDRED_MB: usize = 100 << 20;
    let up = Scripted::start(|r| match r.path() {
        "/actions/big.sized" => streamed_json(HUNDRED_MB, true),
        "/actions/big.chunked" => streamed_json(HUNDRED_MB, false),
        _ => json("{}"),
    })
    .await;
    // The default limit, 8 MiB.
    let d = Proc::start(&config(&up.base_url(), ""), &[], &[]);
    assert_eq!(
        get(&d.url("/v1/resources/edge.get")).await.status(),
        200,
        "a small answer passes"
    );
    let before = d.proc_status_bytes("VmHWM");

    for action in ["big.sized", "big.chunked"] {
        let r = get(&d.url(&format!("/v1/resources/{action}"))).await;
        assert_eq!(r.status(), 502, "{action}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["kind"], "bad_data", "{action}: {body}");
        assert_eq!(body["status"], 200, "{action}: {body}");
    }
    let grown = d.proc_status_bytes("VmHWM").saturating_sub(before);
    assert!(
        grown < 40 << 20,
        "the daemon's peak RSS grew by {} MiB reading 100 MB answers",
        grown >> 20
    );
    let stats = json_of(&d.url("/v1/stats")).await;
    assert!(stats["bad_data"].as_u64().unwrap() >= 2, "{stats}");
    let queries = json_of(&d.url("/v1/queries")).await;
    for q in queries["queries"].as_array().unwrap() {
        if q["action"].as_str().unwrap().starts_with("big.") {
            assert_eq!(q["bytes"], Value::Null, "nothing cached: {q}");
            let e = q["last_error"].as_str().unwrap();
            assert!(e.starts_with("bad_data:") && e.contains("8388608"), "{e}");
        }
    }
    // The sized answer was refused on its Content-Length, before reading.
    assert!(d.log().contains("declares 104857603 bytes"), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_a_configured_limit_are_bad_data_and_the_last_good_value_stays() {
    const LIMIT: usize = 64 * 1024;
    let up = Scripted::start(|r| match r.path() {
        "/actions/over.chunked" => streamed_json(LIMIT * 2, false),
        // Exactly at the limit: accepted.
        "/actions/edge.get" => json(json_of_size(LIMIT)),
        _ => json(r#"{"v":"small"}"#),
    })
    .await;
    let d = Daemon::start(&config(
        &up.base_url(),
        &format!("max_response_bytes = {LIMIT}"),
    ));

    let edge = get(&d.url("/v1/resources/edge.get")).await;
    assert_eq!(edge.status(), 200);
    assert_eq!(edge.bytes().await.unwrap().len(), LIMIT);

    // A miss over the limit (chunked: caught while reading) is a 502.
    let miss = get(&d.url("/v1/resources/over.chunked")).await;
    assert_eq!(miss.status(), 502);
    assert_eq!(miss.json::<Value>().await.unwrap()["kind"], "bad_data");

    // A cached query whose upstream starts answering over the limit keeps
    // its last good value, and the refresh counts as bad data.
    let url = d.url("/v1/resources/over.get");
    let good = get(&url).await.text().await.unwrap();
    assert_eq!(good, r#"{"v":"small"}"#);
    let stats = json_of(&d.url("/v1/stats")).await;
    let bad_before = stats["bad_data"].as_u64().unwrap();
    up.set(|r| match r.path() {
        "/actions/over.get" => json(json_of_size(LIMIT + 1)),
        _ => json("{}"),
    });
    eventually(Duration::from_secs(5), "a refused refresh", async || {
        let queries = json_of(&d.url("/v1/queries")).await;
        queries["queries"].as_array().unwrap().iter().any(|q| {
            q["action"] == "over.get"
                && q["last_error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("bad_data:"))
        })
    })
    .await;
    assert_eq!(get(&url).await.text().await.unwrap(), good);
    let stats = json_of(&d.url("/v1/stats")).await;
    assert!(stats["bad_data"].as_u64().unwrap() > bad_before, "{stats}");
}

#[test]
fn max_response_bytes_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    for (value, expect) in [
        ("0", "upstream.max_response_bytes"),
        ("2_000_000_000", "at most 1073741824"),
        ("\"8MiB\"", "upstream.max_response_bytes"),
    ] {
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            format!(
                "[upstream]\nbase_url = \"http://127.0.0.1:9\"\nmax_response_bytes = {value}\n[actions.a]\n"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(support::bin())
            .arg("check-config")
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value}: {err}");
        assert!(err.contains("c.toml:3:"), "{value}: {err}");
        assert!(err.contains(expect), "{value}: {err}");
    }
}
