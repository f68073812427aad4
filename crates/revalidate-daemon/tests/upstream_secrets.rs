//! Secrets the daemon sends upstream are never printed nor stored: not
//! credentials in `base_url` (refused), not header values in configuration
//! errors, the start-up log or `check-config`, and not what a hostile
//! upstream echoes back of them in its error bodies — redacted from every
//! error message before anything downstream (logs in every format,
//! `/v1/queries`, `/v1/live`, `/v1/stats`, `/metrics`, 502 bodies, the store
//! file) sees it.

mod support;

use std::process::Command;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;
use support::faults::{Proc, Received, Scripted, json};
use support::{SseReader, bin, eventually};

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn text(url: &str) -> (u16, String) {
    let r = http().get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `check-config` on `toml` with `env`: its exit code and both outputs;
/// when it fails, `serve` must fail the same way, and its outputs are added.
fn check(toml: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, toml).unwrap();
    let run = |args: &[&str]| {
        let mut cmd = Command::new(bin());
        cmd.args(args).arg(&file).env("RUST_LOG", "debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, mut all) = run(&["check-config"]);
    if code != Some(0) {
        let (served, text) = run(&["serve", "--config"]);
        assert_eq!(served, code, "serve and check-config agree: {text}");
        all.push_str(&text);
    }
    (code, all)
}

#[test]
fn credentials_in_base_url_are_refused_without_being_printed() {
    for (url, secrets) in [
        (
            "http://alice:hunter2-pw@127.0.0.1:9",
            &["alice", "hunter2-pw"][..],
        ),
        (
            "https://p%40ss-w0rd-x@api.example",
            &["p%40ss-w0rd-x", "p@ss"],
        ),
    ] {
        let (code, out) = check(
            &format!("# the API\n[upstream]\nbase_url = \"{url}\"\n[actions.a]\n"),
            &[],
        );
        assert_eq!(code, Some(2), "{out}");
        assert!(out.contains("c.toml:3:12"), "{out}");
        assert!(out.contains("upstream.base_url"), "{out}");
        assert!(
            out.contains(r#"headers = { Authorization = "Basic ${UPSTREAM_AUTH}" }"#),
            "{out}"
        );
        for s in secrets {
            assert!(!out.contains(s), "`{s}` printed:\n{out}");
        }
    }
}

#[test]
fn configuration_errors_never_quote_header_values() {
    let (code, out) = check(
        r#"[upstream]
base_url = "http://127.0.0.1:9"
headers = { Authorization = "Bearer literal-tok3n-abc", "bad name" = "x" }
[actions.a]
headers = { X-Key = "k3y-literal-xyz", X-Other = 5 }
[actions.b]
headers = { X-Env = "pre-secret-part${UNCLOSED" }
"#,
        &[],
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("c.toml:3:"), "{out}");
    assert!(out.contains("c.toml:5:"), "{out}");
    assert!(out.contains("actions.b.headers.X-Env"), "{out}");
    assert!(out.contains("unclosed"), "{out}");
    for s in ["literal-tok3n-abc", "k3y-literal-xyz", "pre-secret-part"] {
        assert!(!out.contains(s), "`{s}` printed:\n{out}");
    }
}

#[test]
fn check_config_prints_no_header_value() {
    let (code, out) = check(
        "[upstream]\nbase_url = \"http://127.0.0.1:9\"\nheaders = { X-Literal = \"lit-secret-value\" }\n[actions.a]\nheaders = { Authorization = \"Bearer ${TEST_CHECK_SECRET}\" }\n",
        &[("TEST_CHECK_SECRET", "env-secret-value")],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("upstream: http://127.0.0.1:9/ (1 actions, 0 of them mutations)"),
        "{out}"
    );
    assert!(!out.contains("lit-secret-value"), "{out}");
    assert!(!out.contains("env-secret-value"), "{out}");
}

/// The secrets of the echo tests.
const TOKEN: &str = "tok-4f9c2b7e1d-0a";
const KEY: &str = "key-8a7d6c5b-x/y+z";
const BASIC_USER: &str = "svc";
const BASIC_PASSWORD: &str = "pa55-w0rd-q";

/// Every form of every secret that must be found nowhere.
fn needles() -> Vec<String> {
    let basic = format!("{BASIC_USER}:{BASIC_PASSWORD}");
    let mut out = Vec::new();
    for s in [
        TOKEN.to_owned(),
        format!("Bearer {TOKEN}"),
        KEY.to_owned(),
        basic.clone(),
        BASIC_PASSWORD.to_owned(),
        STANDARD.encode(&basic),
    ] {
        out.push(STANDARD.encode(&s).trim_end_matches('=').to_owned());
        out.push(URL_SAFE_NO_PAD.encode(&s));
        out.push(percent(&s));
        out.push(s);
    }
    out.sort();
    out.dedup();
    out
}

/// An upstream that echoes the request's secret headers back, in every
/// form, in error bodies and in a 200 body that is not JSON.
fn echo(r: &Received) -> Response {
    let auth = r.header("authorization").unwrap_or("").to_owned();
    let key = r.header("x-api-key").unwrap_or("").to_owned();
    let echoed = format!(
        "denied: authorization={auth} x-api-key={key} b64={} b64url={} pct={} pct-key={}",
        STANDARD.encode(&auth),
        URL_SAFE_NO_PAD.encode(&key),
        percent(&auth),
        percent(&key),
    );
    match r.path() {
        "/health" => json("{}"),
        "/actions/echo.fail" => {
            (axum::http::StatusCode::INTERNAL_SERVER_ERROR, echoed).into_response()
        }
        "/actions/echo.html" => (
            axum::http::StatusCode::OK,
            [("content-type", "text/html")],
            format!("<html>{echoed}</html>"),
        )
            .into_response(),
        // The secret straddles the 200th character of the body.
        "/actions/echo.edge" => (
            axum::http::StatusCode::BAD_GATEWAY,
            format!("{}{auth} {}", "x".repeat(180), "y".repeat(500)),
        )
            .into_response(),
        "/actions/echo.basic" => {
            let decoded = auth
                .strip_prefix("Basic ")
                .and_then(|b| STANDARD.decode(b).ok())
                .map(|d| String::from_utf8_lossy(&d).into_owned())
                .unwrap_or_default();
            (
                axum::http::StatusCode::UNAUTHORIZED,
                format!("bad credentials {decoded} ({auth})"),
            )
                .into_response()
        }
        _ => json(r#"{"ok":true}"#),
    }
}

fn echo_config(base: &str, store: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[store]
path = "{store}"
flush_every = "100ms"

[upstream]
base_url = "{base}"
timeout = "2s"
health_path = "/health"
probe_interval = "300ms"
headers = {{ Authorization = "Bearer ${{REVALIDATE_TEST_TOKEN}}" }}

[refresh]
check_interval = "100ms"
retry_interval = "200ms"
max_retries = 1
inactive_after = "1h"
jitter = 0.0

[staleness]
echo = "300ms"

[actions."echo.fail"]
headers = {{ X-Api-Key = "${{REVALIDATE_TEST_KEY}}" }}
[actions."echo.html"]
headers = {{ X-Api-Key = "${{REVALIDATE_TEST_KEY}}" }}
[actions."echo.edge"]
[actions."echo.basic"]
headers = {{ Authorization = "Basic ${{REVALIDATE_TEST_BASIC}}" }}
[actions."echo.later"]
headers = {{ X-Api-Key = "${{REVALIDATE_TEST_KEY}}" }}
"#
    )
}

/// Runs the daemon with `args` against the echoing upstream, collects
/// everything it shows or keeps, and looks for every form of the secrets.
async fn nothing_leaks(args: &[&str]) {
    let up = Scripted::start(echo).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("cache.redb");
    let basic = STANDARD.encode(format!("{BASIC_USER}:{BASIC_PASSWORD}"));
    let mut d = Proc::start(
        &echo_config(&up.base_url(), &store.display().to_string()),
        args,
        &[
            ("REVALIDATE_TEST_TOKEN", TOKEN),
            ("REVALIDATE_TEST_KEY", KEY),
            ("REVALIDATE_TEST_BASIC", &basic),
        ],
    );
    let mut seen = Vec::new();
    for action in ["echo.fail", "echo.html", "echo.edge", "echo.basic"] {
        let (status, body) = text(&d.url(&format!("/v1/resources/{action}"))).await;
        assert_eq!(status, 502, "{action}: {body}");
        seen.push((format!("502 of {action}"), body));
    }
    // A cached query whose refreshes then fail with the echo.
    let later = d.url("/v1/resources/echo.later");
    assert_eq!(text(&later).await.0, 200);
    up.set(|r| {
        if r.path() == "/actions/echo.later" {
            let auth = r.header("authorization").unwrap_or("").to_owned();
            let key = r.header("x-api-key").unwrap_or("").to_owned();
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!("busy; you sent {auth} and {key}"),
            )
                .into_response()
        } else {
            echo(r)
        }
    });
    eventually(Duration::from_secs(5), "the failed refresh", async || {
        let (_, q) = text(&d.url("/v1/queries")).await;
        q.contains("busy; you sent")
    })
    .await;
    assert!(
        up.received()
            .iter()
            .any(|r| r.header("authorization") == Some(&format!("Bearer {TOKEN}"))),
        "the secrets were sent: they are there to be echoed"
    );
    let (_, queries) = text(&d.url("/v1/queries")).await;
    let parsed: Value = serde_json::from_str(&queries).unwrap();
    let errors: Vec<&str> = parsed["queries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|q| q["last_error"].as_str())
        .collect();
    assert_eq!(errors.len(), 5, "{queries}");
    // All but the 200 that is not JSON, whose error quotes nothing of it.
    let redacted = errors.iter().filter(|e| e.contains("[redacted]")).count();
    assert_eq!(redacted, 4, "{errors:#?}");
    seen.push(("/v1/queries".into(), queries));
    let mut live = SseReader::open(&d.url("/v1/live"), None).await;
    let tick = live.next(Duration::from_secs(3)).await.expect("a tick");
    assert_eq!(tick.event, "tick");
    seen.push(("/v1/live".into(), tick.data.to_string()));
    seen.push(("/v1/stats".into(), text(&d.url("/v1/stats")).await.1));
    seen.push(("/metrics".into(), text(&d.url("/metrics")).await.1));
    drop(live);
    assert!(d.stop().success());
    seen.push(("the daemon's stderr".into(), d.log()));
    let stored = std::fs::read(&store).unwrap();
    assert!(
        String::from_utf8_lossy(&stored).contains("[redacted]"),
        "the store keeps the (redacted) errors"
    );
    seen.push((
        "the store file".into(),
        String::from_utf8_lossy(&stored).into_owned(),
    ));

    let mut needles = needles();
    // Nor a part of one, cut where a message was shortened.
    needles.push(TOKEN[..10].to_owned());
    let mut leaks = Vec::new();
    for (place, text) in &seen {
        for n in &needles {
            if text.contains(n.as_str()) {
                leaks.push(format!("{n:?} in {place}"));
            }
        }
    }
    assert!(leaks.is_empty(), "with {args:?}: {leaks:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_secrets_are_redacted_everywhere_text_logs() {
    nothing_leaks(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_secrets_are_redacted_everywhere_debug_logs() {
    nothing_leaks(&["--debug"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_secrets_are_redacted_everywhere_json_debug_logs() {
    nothing_leaks(&["--debug", "--log-format", "json"]).await;
}
