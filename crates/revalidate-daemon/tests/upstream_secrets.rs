//! Secrets the daemon sends upstream are never printed: not credentials in
//! `base_url` (refused), not header values in configuration errors or in
//! `check-config`.

mod support;

use std::process::Command;

use support::bin;

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
        out.contains("upstream: http://127.0.0.1:9/ (1 actions)"),
        "{out}"
    );
    assert!(!out.contains("lit-secret-value"), "{out}");
    assert!(!out.contains("env-secret-value"), "{out}");
}
