//! The daemon's configuration for the demo: the seed's resources with
//! durations short enough to watch, and the actions the simulated API knows.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

/// The actions the simulated API knows, in the order the demo lists them.
///
/// The resource of each is the text before the first `.` (`process.list` →
/// `process`), as in the daemon's configuration; `system_health` and
/// `workflow_status` are both action and resource.
pub const DEMO_ACTIONS: &[&str] = &[
    "node.tree",
    "process.list",
    "process.get",
    "rule.list",
    "rule.search",
    "office.list",
    "workflow.list",
    "notification.list",
    "settings.get",
    "system_health",
    "workflow_status",
];

/// The demo's configuration: the seed's resources with durations short
/// enough to watch. `{base_url}`, `{store}` and `{listen}` are filled in.
const DEMO_CONFIG: &str = r#"
[server]
listen = "{listen}"
admin_token_env = "REVALIDATE_ADMIN_TOKEN"

[store]
path = "{store}"
flush_every = "1s"

[upstream]
base_url = "{base_url}"
timeout = "3s"
health_path = "/health"
probe_interval = "2s"

[refresh]
check_interval = "2s"
max_concurrent_refreshes = 4
batch_size = 5
retry_interval = "3s"
max_retries = 3
inactive_after = "45s"
fetch_timeout = "3s"
jitter = 0.1

[staleness]
node = "never"
process = "30s"
rule = "45s"
office = "2m"
workflow = "20s"
notification = "5s"
settings = "10s"
system_health = "always"
workflow_status = "always"

[overrides]
"process.list" = "15s"
"rule.search" = "10s"
"#;

/// The daemon's configuration (TOML) for the demo: the seed's resources with
/// durations short enough to watch (a store flushed every second, checks
/// every 2 s, staleness from 5 s to 2 min), the admin token read from
/// `REVALIDATE_ADMIN_TOKEN`, the simulated API's `base_url`, the store's
/// path and the daemon's `listen` address filled in, and one
/// `[actions."…"]` table per [`DEMO_ACTIONS`].
pub fn config_toml(base_url: &str, store: &Path, listen: SocketAddr) -> String {
    let mut text = DEMO_CONFIG
        .replace("{base_url}", &toml_escape(base_url))
        .replace("{store}", &toml_escape(&store.display().to_string()))
        .replace("{listen}", &listen.to_string());
    for action in DEMO_ACTIONS {
        // Writing to a String cannot fail.
        let _ = write!(text, "\n[actions.\"{action}\"]\n");
    }
    text
}

/// `s` escaped for a TOML basic string (between double quotes): a Windows
/// path's backslashes would otherwise be read as escapes.
fn toml_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_every_action_and_fills_every_blank() {
        let text = config_toml(
            "http://127.0.0.1:9000",
            Path::new("/tmp/x/demo.redb"),
            "127.0.0.1:8787".parse().unwrap(),
        );
        for blank in ["{base_url}", "{store}", "{listen}"] {
            assert!(!text.contains(blank), "{blank} left in:\n{text}");
        }
        assert!(text.contains("base_url = \"http://127.0.0.1:9000\""));
        assert!(text.contains("path = \"/tmp/x/demo.redb\""));
        assert!(text.contains("listen = \"127.0.0.1:8787\""));
        for action in DEMO_ACTIONS {
            assert!(
                text.contains(&format!("[actions.\"{action}\"]")),
                "{action}"
            );
        }
    }

    #[test]
    fn paths_are_escaped_for_toml() {
        assert_eq!(toml_escape(r"C:\Temp\demo.redb"), r"C:\\Temp\\demo.redb");
        assert_eq!(toml_escape("a\"b"), "a\\\"b");
    }
}
