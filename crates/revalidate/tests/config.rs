//! Configuration: the seed's file loads with every value, and every kind of
//! mistake gets a message with file, line, column, key, what was found,
//! what is accepted and a suggestion. Messages are snapshot-tested
//! (`tests/snapshots/`).

use std::time::Duration;

use revalidate::config::ConfigErrorKind;
use revalidate::{Config, RefreshSettings, Rule, Staleness};

const SEED: &str = include_str!("../examples/background-refresh.toml");

fn secs(n: u64) -> Staleness {
    Staleness::secs(n)
}

#[test]
fn the_seed_file_loads_with_every_value() {
    let cfg = Config::from_toml("background-refresh.toml", SEED).unwrap();
    let base = &cfg.policy;
    assert_eq!(base.active_profile(), None);

    // BACKGROUND_REFRESH_CONFIG
    let expected = [
        ("node", Staleness::Never),
        ("process", secs(5 * 60)),
        ("rule", secs(10 * 60)),
        ("office", secs(30 * 60)),
        ("workflow", secs(15 * 60)),
        ("notification", secs(30)),
        ("settings", secs(2 * 60)),
        ("system_health", Staleness::Always),
        ("workflow_status", Staleness::Always),
    ];
    for (resource, staleness) in expected {
        let action = format!("{resource}.get");
        assert_eq!(base.staleness(&action), staleness, "{action}");
        assert_eq!(base.staleness(resource), staleness, "{resource}");
    }
    assert_eq!(
        base.configured_resources().into_iter().collect::<Vec<_>>(),
        vec![
            "node",
            "notification",
            "office",
            "process",
            "rule",
            "settings",
            "system_health",
            "workflow",
            "workflow_status"
        ]
    );

    // PRIORITY_OVERRIDES beat the resource defaults.
    assert_eq!(
        base.explain("process.list"),
        (secs(120), Rule::Action { profile: None })
    );
    assert_eq!(base.staleness("rule.search"), secs(30));
    assert_eq!(
        base.configured_actions().into_iter().collect::<Vec<_>>(),
        vec!["process.list", "rule.search"]
    );

    // DEV_CONFIG
    let dev = base.with_profile("development").unwrap();
    for (action, staleness) in [
        ("node.tree", Staleness::Never),
        ("process.get", secs(60)),
        ("rule.get", secs(120)),
        ("notification.list", secs(10)),
        ("office.get", secs(30 * 60)), // not in DEV_CONFIG: the base value
        ("process.list", secs(120)),   // the override still wins
        ("rule.search", secs(30)),
    ] {
        assert_eq!(dev.staleness(action), staleness, "development {action}");
    }

    // PROD_CONFIG
    let prod = base.with_profile("production").unwrap();
    for (action, staleness) in [
        ("node.tree", Staleness::Never),
        ("process.get", secs(10 * 60)),
        ("rule.get", secs(30 * 60)),
        ("notification.list", secs(60)),
        ("workflow.get", secs(15 * 60)),
        ("system_health", Staleness::Always),
    ] {
        assert_eq!(prod.staleness(action), staleness, "production {action}");
    }
    assert_eq!(
        base.profiles().collect::<Vec<_>>(),
        vec!["development", "production"]
    );

    // REFRESH_SETTINGS
    let r = &cfg.refresh;
    assert_eq!(r.check_interval, Duration::from_secs(30));
    assert_eq!(r.max_concurrent_refreshes, 3);
    assert_eq!(r.batch_size, 5);
    assert!(r.retry_failed_refresh);
    assert_eq!(r.retry_interval, Duration::from_secs(60));
    assert_eq!(r.max_retries, 3);
    // Not in the file: the defaults.
    let d = RefreshSettings::default();
    assert_eq!(
        (r.inactive_after, r.fetch_timeout, r.jitter),
        (d.inactive_after, d.fetch_timeout, d.jitter)
    );
}

#[test]
fn the_file_can_select_a_profile_and_every_refresh_key() {
    let cfg = Config::from_toml(
        "app.toml",
        r#"
profile = "development"
[staleness]
default = "1m"
process = "5m"
[profiles.development.staleness]
process = "30s"
default = "10s"
[profiles.development.overrides]
"process.list" = "always"
[actions."search"]
resource = "process"
[actions."process.list"]
[actions."process.get"]
[refresh]
check_interval = "10s"
max_concurrent_refreshes = 8
batch_size = 20
retry_failed_refresh = false
retry_interval = "5s"
max_retries = 0
inactive_after = "1h"
fetch_timeout = "2s"
jitter = 0.25
offline_after_errors = 5
shutdown_grace = "1s"
"#,
    )
    .unwrap();
    let p = &cfg.policy;
    assert_eq!(p.active_profile(), Some("development"));
    assert_eq!(p.staleness("process.get"), secs(30));
    assert_eq!(
        p.staleness("search"),
        secs(30),
        "mapped to the process resource"
    );
    assert_eq!(p.staleness("process.list"), Staleness::Always);
    assert_eq!(p.staleness("other"), secs(10));
    assert_eq!(p.with_profile(None).unwrap().staleness("other"), secs(60));
    let r = &cfg.refresh;
    assert_eq!(r.check_interval, Duration::from_secs(10));
    assert_eq!(r.max_concurrent_refreshes, 8);
    assert_eq!(r.batch_size, 20);
    assert!(!r.retry_failed_refresh);
    assert_eq!(r.retry_interval, Duration::from_secs(5));
    assert_eq!(r.max_retries, 0);
    assert_eq!(r.inactive_after, Duration::from_secs(3600));
    assert_eq!(r.fetch_timeout, Duration::from_secs(2));
    assert_eq!(r.jitter, 0.25);
    assert_eq!(r.offline_after_errors, 5);
    assert_eq!(r.shutdown_grace, Duration::from_secs(1));
}

/// Loads `text`, expecting errors; returns the rendered message.
fn errors(text: &str) -> String {
    Config::from_toml("revalidate.toml", text)
        .unwrap_err()
        .to_string()
}

#[test]
fn misspelt_resource_suggests_the_known_one() {
    let text = "[actions.\"process.list\"]\n[actions.\"node.tree\"]\n\n[staleness]\nproccess = \"5m\"\nnode = \"never\"\n";
    let err = Config::from_toml("revalidate.toml", text).unwrap_err();
    let e = err.first();
    assert_eq!(
        (e.line(), e.column(), e.key()),
        (5, 1, "staleness.proccess")
    );
    assert_eq!(e.kind(), ConfigErrorKind::UnknownKey);
    assert_eq!(e.help(), Some("did you mean `process`?"));
    insta::assert_snapshot!("misspelt_resource", err.to_string());
}

#[test]
fn resources_can_be_checked_against_the_applications_list() {
    let err = Config::from_toml_with_resources(
        "app.toml",
        "[staleness]\nproces = \"5m\"\n",
        &["process", "rule"],
    )
    .unwrap_err();
    assert_eq!(err.first().help(), Some("did you mean `process`?"));
}

#[test]
fn misspelt_profile_resource() {
    insta::assert_snapshot!(
        "misspelt_profile_resource",
        errors(
            "[staleness]\nnotification = \"30s\"\n\n[profiles.development.staleness]\nnotifcation = \"10s\"\n"
        )
    );
}

#[test]
fn unknown_profile_suggests_the_defined_one() {
    let text = "profile = \"prodution\"\n[profiles.production.staleness]\n[profiles.development.staleness]\n";
    let err = Config::from_toml("revalidate.toml", text).unwrap_err();
    assert!(err.first().is_unknown_profile());
    insta::assert_snapshot!("unknown_profile", err.to_string());
    insta::assert_snapshot!("no_profiles", errors("profile = \"production\"\n"));
}

#[test]
fn zero_negative_and_unparseable_durations_are_rejected() {
    insta::assert_snapshot!("zero_staleness", errors("[staleness]\nprocess = \"0s\"\n"));
    insta::assert_snapshot!(
        "negative_staleness",
        errors("[staleness]\nprocess = \"-5m\"\n")
    );
    insta::assert_snapshot!(
        "unparseable_staleness",
        errors("[staleness]\nprocess = \"five minutes\"\n")
    );
    insta::assert_snapshot!(
        "millisecond_integer",
        errors("[staleness]\nprocess = 300000\n")
    );
    insta::assert_snapshot!("spelled_never", errors("[staleness]\nnode = \"none\"\n"));
    insta::assert_snapshot!(
        "zero_interval",
        errors("[refresh]\nretry_interval = \"0s\"\n")
    );
}

#[test]
fn misspelt_section_and_key() {
    insta::assert_snapshot!("misspelt_section", errors("[refesh]\nbatch_size = 5\n"));
    insta::assert_snapshot!(
        "misspelt_refresh_key",
        errors("[refresh]\nbatch_sise = 5\n")
    );
}

#[test]
fn wrong_types_and_ranges() {
    insta::assert_snapshot!(
        "string_for_integer",
        errors("[refresh]\nmax_concurrent_refreshes = \"3\"\n")
    );
    insta::assert_snapshot!("zero_batch", errors("[refresh]\nbatch_size = 0\n"));
    insta::assert_snapshot!("jitter_range", errors("[refresh]\njitter = 2.0\n"));
    insta::assert_snapshot!(
        "bool_as_string",
        errors("[refresh]\nretry_failed_refresh = \"yes\"\n")
    );
}

#[test]
fn override_for_an_undeclared_action() {
    insta::assert_snapshot!(
        "undeclared_override",
        errors("[actions.\"process.list\"]\n[overrides]\n\"proces.list\" = \"2m\"\n")
    );
}

#[test]
fn syntax_errors_have_a_position() {
    let err = Config::from_toml("revalidate.toml", "[refresh\nbatch_size = 5\n").unwrap_err();
    assert!(err.first().is_syntax());
    insta::assert_snapshot!("syntax", err.to_string());
}

#[test]
fn every_problem_is_reported_at_once() {
    let err = Config::from_toml(
        "revalidate.toml",
        "[staleness]\nprocess = \"five minutes\"\n[refresh]\nbatch_size = 0\nretry_interval = \"0s\"\nbogus = 1\n",
    )
    .unwrap_err();
    assert_eq!(err.errors().len(), 4);
    let lines: Vec<usize> = err.errors().iter().map(|e| e.line()).collect();
    assert_eq!(lines, vec![2, 4, 5, 6], "in file order");
    insta::assert_snapshot!("several", err.to_string());
}

#[test]
fn an_unreadable_file_names_the_path() {
    let err = Config::load("/nonexistent/revalidate.toml").unwrap_err();
    assert!(err.first().is_io());
    assert_eq!(
        err.to_string(),
        "error: cannot read `/nonexistent/revalidate.toml`: No such file or directory (os error 2)"
    );
}

#[test]
fn the_example_file_on_disk_loads() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/background-refresh.toml"
    );
    assert_eq!(
        Config::load(path).unwrap(),
        Config::from_toml("x", SEED).unwrap()
    );
}

#[test]
fn absurd_durations_and_limits_are_mistakes_not_settings() {
    let text = r#"
[staleness]
process = "99999999999h"

[refresh]
check_interval = "1ms"
retry_interval = "99999999999h"
max_concurrent_refreshes = 99999999999999
batch_size = 1000000
max_retries = 1000
"#;
    let err = Config::from_toml("revalidate.toml", text).unwrap_err();
    let keys: Vec<&str> = err.errors().iter().map(|e| e.key()).collect();
    assert_eq!(
        keys,
        vec![
            "staleness.process",
            "refresh.check_interval",
            "refresh.retry_interval",
            "refresh.max_concurrent_refreshes",
            "refresh.batch_size",
            "refresh.max_retries",
        ]
    );
    insta::assert_snapshot!("absurd_values", err.to_string());
}
