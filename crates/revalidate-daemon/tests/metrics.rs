//! The real `revalidate` binary's `/metrics` passes `promtool check
//! metrics` (Prometheus's own linter: help text, types, counter suffixes,
//! units in names). promtool comes with Debian's `prometheus` package, which
//! `scripts/test` installs; without it the test fails under CI and says so
//! elsewhere.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{Answer, Daemon, Upstream, config, eventually};

/// The metrics the daemon itself publishes, each of which must be described.
const DAEMON_METRICS: &[(&str, &str)] = &[
    ("revalidate_upstream_requests_total", "counter"),
    ("revalidate_bytes_saved_total", "counter"),
];

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// `promtool check metrics` over `text`: `None` when promtool is not
/// installed, else its exit code and what it printed.
fn promtool(text: &str) -> Option<(Option<i32>, String)> {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.code(), said))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let up = Upstream::start().await;
    let d = Daemon::start(&config(&up.base_url(), "item = \"200ms\"", ""));
    let get = async |path: &str| http().get(d.url(path)).send().await.unwrap();
    // A miss, a hit, a failure, and refreshes answered 304: every series
    // the daemon and the engine publish has something to show.
    assert_eq!(get("/v1/resources/item.get?id=1").await.status(), 200);
    assert_eq!(get("/v1/resources/item.get?id=1").await.status(), 200);
    up.answer("item.list", Answer::Status(500, "down".into()));
    assert_eq!(get("/v1/resources/item.list").await.status(), 502);
    eventually(
        Duration::from_secs(5),
        "a refresh answered 304",
        async || {
            let stats: Value = get("/v1/stats").await.json().await.unwrap();
            stats["bytes_saved"].as_u64().unwrap_or(0) > 0
        },
    )
    .await;

    let response = get("/metrics").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    for (name, kind) in DAEMON_METRICS {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# HELP {name} ")) && l.len() > name.len() + 12),
            "no help text for {name}:\n{text}"
        );
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} is not a {kind}:\n{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with(name) && !l.ends_with(" 0")),
            "{name} has no nonzero sample:\n{text}"
        );
    }

    let Some((code, said)) = promtool(&text) else {
        let why = "promtool is not installed (Debian: `apt-get install prometheus`; \
                   scripts/test installs it)";
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("skipping the promtool check: {why}");
        return;
    };
    assert_eq!(
        code,
        Some(0),
        "promtool check metrics found problems:\n{said}\n--- /metrics ---\n{text}"
    );
}
