//! Redirects from the upstream, against the real daemon: by default none is
//! followed (a 3xx is a rejected fetch, never cached), so a redirect to
//! another host, or to the daemon's own `/v1/queries`, never becomes an
//! action's value. With `[upstream] follow_redirects = "same-origin"`, up to
//! 5 hops on the same scheme, host and port are followed, for GET actions or
//! with 307/308 (which keep the method and the body).

mod support;

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::Value;
use support::Daemon;
use support::faults::{Scripted, json};

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn get(url: &str) -> reqwest::Response {
    http().get(url).send().await.unwrap()
}

fn redirect(status: u16, location: &str) -> Response {
    (
        axum::http::StatusCode::from_u16(status).unwrap(),
        [("location", location.to_owned())],
        "moved",
    )
        .into_response()
}

fn config(base: &str, follow: Option<&str>) -> String {
    let follow = follow
        .map(|f| format!("follow_redirects = \"{f}\""))
        .unwrap_or_default();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[upstream]
base_url = "{base}"
timeout = "2s"
probe_interval = "1h"
{follow}

[refresh]
check_interval = "100ms"
inactive_after = "1h"
jitter = 0.0

[staleness]
post = "1h"
get = "1h"

[actions."post.a"]
[actions."post.b"]
[actions."post.c"]
[actions."get.a"]
method = "GET"
[actions."get.b"]
method = "GET"
[actions."get.c"]
method = "GET"
[actions."get.d"]
method = "GET"
"#
    )
}

/// Reads `action` through the daemon: it must be `502 rejected` with the
/// redirect's status, and leave nothing cached.
async fn refused(d: &Daemon, action: &str, status: u16) -> String {
    let r = get(&d.url(&format!("/v1/resources/{action}?k=v"))).await;
    assert_eq!(r.status(), 502, "{action}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["kind"], "rejected", "{action}: {body}");
    assert_eq!(body["status"], status, "{action}: {body}");
    let queries: Value = get(&d.url("/v1/queries")).await.json().await.unwrap();
    let q = queries["queries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["action"] == action)
        .unwrap_or_else(|| panic!("{action} in /v1/queries: {queries}"));
    assert_eq!(q["bytes"], Value::Null, "{action} cached nothing: {q}");
    q["last_error"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_no_redirect_is_followed_nor_cached() {
    let foreign = Scripted::start(|_| json(r#"{"foreign":"secret"}"#)).await;
    let elsewhere = format!("{}/steal", foreign.base_url());
    // The daemon's own address is known once it runs.
    let own = Arc::new(Mutex::new(String::new()));
    let up = Scripted::start({
        let own = own.clone();
        move |r| match r.path() {
            "/actions/post.a" => redirect(302, &elsewhere),
            "/actions/post.b" => redirect(307, &elsewhere),
            "/actions/get.a" => redirect(301, &elsewhere),
            "/actions/get.b" => redirect(302, &own.lock()),
            // Same origin, but the default follows nothing.
            "/actions/get.c" => redirect(302, "/actions/get.d"),
            _ => json(r#"{"home":true}"#),
        }
    })
    .await;
    let d = Daemon::start(&config(&up.base_url(), None));
    *own.lock() = d.url("/v1/queries");

    for (action, status) in [
        ("post.a", 302),
        ("post.b", 307),
        ("get.a", 301),
        ("get.b", 302),
        ("get.c", 302),
    ] {
        let e = refused(&d, action, status).await;
        assert!(e.contains("follow_redirects"), "{action}: {e}");
    }
    assert_eq!(foreign.hits("/"), 0, "the foreign host was never contacted");
    assert_eq!(up.hits("/actions/get.d"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_origin_redirects_are_followed_when_asked_for() {
    let foreign = Scripted::start(|_| json(r#"{"foreign":"secret"}"#)).await;
    let elsewhere = format!("{}/steal", foreign.base_url());
    let own = Arc::new(Mutex::new(String::new()));
    let up = Scripted::start({
        let own = own.clone();
        move |r| {
            let path = r.path().to_owned();
            match path.as_str() {
                // GET: any redirect kind, relative or absolute.
                "/actions/get.a" => redirect(302, "/moved/get.a"),
                // POST: 307 keeps the method and the body.
                "/actions/post.a" => redirect(307, "/moved/post.a"),
                // POST with 302 would become a GET: refused.
                "/actions/post.b" => redirect(302, "/moved/post.b"),
                // Another origin, and the daemon itself: refused.
                "/actions/post.c" => redirect(308, &elsewhere),
                "/actions/get.b" => redirect(302, &own.lock()),
                // Five hops end in a value; a sixth is refused.
                "/actions/get.c" => redirect(302, "/chain/1"),
                "/actions/get.d" => redirect(302, "/loop/1"),
                p if p.starts_with("/chain/") => {
                    let n: u32 = p[7..].parse().unwrap();
                    if n < 5 {
                        redirect(302, &format!("/chain/{}", n + 1))
                    } else {
                        json(r#"{"after":"five hops"}"#)
                    }
                }
                p if p.starts_with("/loop/") => {
                    let n: u32 = p[6..].parse().unwrap();
                    redirect(302, &format!("/loop/{}", n + 1))
                }
                p if p.starts_with("/moved/") => json(format!(
                    r#"{{"method":"{}","body":{},"query":"{}"}}"#,
                    r.method,
                    serde_json::to_string(&String::from_utf8_lossy(&r.body)).unwrap(),
                    r.raw_path.split_once('?').map_or("", |(_, q)| q),
                )),
                _ => json("{}"),
            }
        }
    })
    .await;
    let d = Daemon::start(&config(&up.base_url(), Some("same-origin")));
    *own.lock() = d.url("/v1/queries");

    let r = get(&d.url("/v1/resources/get.a?k=v")).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["method"], "GET");

    let r = get(&d.url("/v1/resources/post.a?k=v")).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["method"], "POST");
    assert_eq!(body["body"], r#"{"k":"v"}"#, "the body went along");

    let e = refused(&d, "post.b", 302).await;
    assert!(e.contains("POST"), "{e}");
    let e = refused(&d, "post.c", 308).await;
    assert!(e.contains("another origin"), "{e}");
    let e = refused(&d, "get.b", 302).await;
    assert!(e.contains("another origin"), "{e}");
    assert_eq!(foreign.hits("/"), 0);
    assert_eq!(up.hits("/moved/post.b"), 0);

    let r = get(&d.url("/v1/resources/get.c?k=v")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["after"], "five hops");
    let e = refused(&d, "get.d", 302).await;
    assert!(e.contains("5"), "{e}");
    assert_eq!(up.hits("/loop/"), 5, "five hops followed, not a sixth");
}

#[test]
fn follow_redirects_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[upstream]\nbase_url = \"http://127.0.0.1:9\"\nfollow_redirects = \"always\"\n[actions.a]\n",
    )
    .unwrap();
    let out = std::process::Command::new(support::bin())
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("c.toml:3:20"), "{err}");
    assert!(err.contains("upstream.follow_redirects"), "{err}");
    assert!(err.contains("\"same-origin\""), "{err}");
}
