//! Action names with odd characters reach the upstream as one
//! percent-encoded path segment, exactly where `{action}` is in the path
//! template: `x\y` is `/actions/x%5Cy`, never `/actions/x/y`.

mod support;

use serde_json::Value;
use support::Daemon;
use support::faults::{Scripted, json};

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// (name as written in TOML, name, the path the upstream must see)
const ACTIONS: &[(&str, &str, &str)] = &[
    (r#""x\\y""#, r"x\y", "/actions/x%5Cy"),
    (r#""50%""#, "50%", "/actions/50%25"),
    (r#""a b""#, "a b", "/actions/a%20b"),
    (r#""semi;colon""#, "semi;colon", "/actions/semi%3Bcolon"),
    (r#""q\"uote""#, "q\"uote", "/actions/q%22uote"),
    (
        r#""plus+at@colon:""#,
        "plus+at@colon:",
        "/actions/plus%2Bat%40colon%3A",
    ),
    (r#""ü""#, "ü", "/actions/%C3%BC"),
    (r#""%2e%2E""#, "%2e%2E", "/actions/%252e%252E"),
    (r#""tilde~ok-._""#, "tilde~ok-._", "/actions/tilde~ok-._"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_action_names_are_one_encoded_segment() {
    let up = Scripted::start(|_| json("{}")).await;
    let mut actions = String::new();
    for (toml, _, _) in ACTIONS {
        actions.push_str(&format!("[actions.{toml}]\n"));
    }
    // A template with the name inside, and a GET with a query string.
    actions.push_str("[actions.\"in\\\\side\"]\npath = \"/api/{action}/run\"\n");
    actions.push_str("[actions.\"get me\"]\nmethod = \"GET\"\n");
    let d = Daemon::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"

[upstream]
base_url = "{}/base/"
probe_interval = "1h"

[refresh]
inactive_after = "1h"

{actions}
"#,
        up.base_url()
    ));
    let mut expected = Vec::new();
    for (_, name, path) in ACTIONS {
        expected.push((name.to_string(), format!("/base{path}")));
    }
    expected.push((r"in\side".to_owned(), "/base/api/in%5Cside/run".to_owned()));
    expected.push(("get me".to_owned(), "/base/actions/get%20me".to_owned()));
    let mut wrong = Vec::new();
    for (name, path) in &expected {
        let url = d.url(&format!("/v1/resources/{}?k=a%2Fb", encode(name)));
        let before = up.received().len();
        let status = http().get(&url).send().await.unwrap().status();
        let seen = up.received();
        // The health probe (`HEAD` of `base_url`, without `health_path`)
        // runs once at start and may land between two reads.
        let sent: Vec<&str> = seen[before..]
            .iter()
            .filter(|r| r.method != "HEAD")
            .map(|r| r.raw_path.as_str())
            .collect();
        let want = if name == "get me" {
            format!("{path}?k=a%2Fb")
        } else {
            path.clone()
        };
        if status != 200 || sent != [want.as_str()] {
            wrong.push(format!("{name:?}: {status}, sent {sent:?}, not {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    let queries: Value = http()
        .get(d.url("/v1/queries"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(queries["queries"].as_array().unwrap().len(), expected.len());
}
