//! The data of each resource: a pure function of the action, its
//! parameters, the seed and the time bucket of the action's resource.
//!
//! One module per resource builds its documents; this one names the actions,
//! turns the clock into buckets and dispatches.

mod catalog;
mod node;
mod notification;
mod office;
mod params;
mod process;
mod rule;
mod settings;
mod system_health;
mod workflow;
mod workflow_status;

use std::time::Duration;

use serde_json::Value;

pub(crate) use params::Params;

use crate::error::ApiError;
use crate::random::hash;

/// An action of the simulated API; each variant is the action named by
/// [`Action::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    NodeTree,
    ProcessList,
    ProcessGet,
    RuleList,
    RuleSearch,
    OfficeList,
    WorkflowList,
    NotificationList,
    SettingsGet,
    SystemHealth,
    WorkflowStatus,
}

impl Action {
    /// Every action, in the order of [`DEMO_ACTIONS`].
    pub(crate) const ALL: [Action; 11] = [
        Action::NodeTree,
        Action::ProcessList,
        Action::ProcessGet,
        Action::RuleList,
        Action::RuleSearch,
        Action::OfficeList,
        Action::WorkflowList,
        Action::NotificationList,
        Action::SettingsGet,
        Action::SystemHealth,
        Action::WorkflowStatus,
    ];

    /// The action's name on the wire.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Action::NodeTree => "node.tree",
            Action::ProcessList => "process.list",
            Action::ProcessGet => "process.get",
            Action::RuleList => "rule.list",
            Action::RuleSearch => "rule.search",
            Action::OfficeList => "office.list",
            Action::WorkflowList => "workflow.list",
            Action::NotificationList => "notification.list",
            Action::SettingsGet => "settings.get",
            Action::SystemHealth => "system_health",
            Action::WorkflowStatus => "workflow_status",
        }
    }

    /// The action of this name, if the API knows it.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The resource, as the daemon derives it: the text before the first `.`.
    pub(crate) fn resource(self) -> &'static str {
        let name = self.name();
        name.split_once('.').map_or(name, |(resource, _)| resource)
    }

    /// How often the resource's data moves to a new time bucket; `None` for
    /// data that never changes. Chosen to sit around the original design's
    /// staleness defaults, so a demo shows both kinds of refresh: ones that
    /// find new data and ones answered `304`.
    pub(crate) fn change_every(self) -> Option<Duration> {
        match self.resource() {
            "node" => None,
            "process" => Some(Duration::from_secs(3 * 60)),
            "rule" => Some(Duration::from_secs(4 * 60)),
            "office" => Some(Duration::from_secs(6 * 60)),
            "workflow" => Some(Duration::from_secs(2 * 60)),
            "notification" => Some(Duration::from_secs(30)),
            "settings" => Some(Duration::from_secs(45)),
            _ => Some(Duration::from_secs(2)),
        }
    }
}

/// What a request knows of time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    /// Milliseconds since the server started, on tokio's clock.
    pub(crate) elapsed_ms: u64,
    /// Wall-clock milliseconds at start, for timestamps only.
    pub(crate) anchor_ms: i64,
}

/// The time bucket a resource is in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tick {
    /// The bucket's number; 0 is the one the server started in.
    pub(crate) bucket: u64,
    /// Length of a bucket.
    pub(crate) period_ms: u64,
    /// Each resource's buckets are shifted by a seeded phase so that they do
    /// not all turn over at the same instant.
    pub(crate) phase_ms: u64,
    /// [`Clock::anchor_ms`].
    pub(crate) anchor_ms: i64,
}

impl Tick {
    /// The bucket `action`'s resource is in at `clock`; always 0 for data
    /// that never changes.
    pub(crate) fn new(seed: u64, action: Action, clock: &Clock) -> Self {
        let Some(period) = action.change_every() else {
            return Self {
                bucket: 0,
                period_ms: 1,
                phase_ms: 0,
                anchor_ms: clock.anchor_ms,
            };
        };
        let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1);
        let phase_ms = hash(seed, action.resource(), &[]) % period_ms;
        Self {
            bucket: clock.elapsed_ms.saturating_add(phase_ms) / period_ms,
            period_ms,
            phase_ms,
            anchor_ms: clock.anchor_ms,
        }
    }

    /// Wall-clock milliseconds at which `bucket` began (buckets before the
    /// first lie before the server started, which gives data a history).
    pub(crate) fn wall_ms(&self, bucket: i64) -> i64 {
        let period = i64::try_from(self.period_ms).unwrap_or(i64::MAX);
        let phase = i64::try_from(self.phase_ms).unwrap_or(0);
        self.anchor_ms
            .saturating_add(bucket.saturating_mul(period))
            .saturating_sub(phase)
    }

    /// The current bucket, signed for arithmetic with past buckets.
    pub(crate) fn now_bucket(&self) -> i64 {
        i64::try_from(self.bucket).unwrap_or(i64::MAX)
    }
}

/// The version of item `index` that the current bucket shows, and the bucket
/// in which that version appeared. Items change every 1 to `max_span`
/// buckets, so a list evolves a few items at a time instead of being redrawn;
/// the first item changes every bucket, so the list as a whole does.
pub(crate) fn item_epoch(
    seed: u64,
    salt: &str,
    index: u64,
    tick: &Tick,
    max_span: u64,
) -> (u64, i64) {
    let h = hash(seed, salt, &[index, 0x5BA4]);
    let span = if index == 0 {
        1
    } else {
        1 + h % max_span.max(1)
    };
    let offset = (h >> 32) % span;
    let epoch = (tick.bucket + offset) / span;
    let since =
        i64::try_from(epoch * span).unwrap_or(i64::MAX) - i64::try_from(offset).unwrap_or(0);
    (epoch, since)
}

// ---------------------------------------------------------------------------
// The data
// ---------------------------------------------------------------------------

/// Builds the document of `action` for these parameters at this time.
pub(crate) fn render(
    action: Action,
    params: &Params,
    seed: u64,
    clock: &Clock,
) -> Result<Value, ApiError> {
    let tick = Tick::new(seed, action, clock);
    match action {
        Action::NodeTree => node::tree(params),
        Action::ProcessList => process::list(params, seed, &tick),
        Action::ProcessGet => process::get(params, seed, &tick),
        Action::RuleList => rule::list(params, seed, &tick),
        Action::RuleSearch => rule::search(params, seed, &tick),
        Action::OfficeList => office::list(params, seed, &tick),
        Action::WorkflowList => workflow::list(params, seed, &tick),
        Action::NotificationList => notification::list(params, seed, &tick),
        Action::SettingsGet => settings::get(params, seed, &tick),
        Action::SystemHealth => system_health::report(params, seed, &tick),
        Action::WorkflowStatus => workflow_status::report(params, seed, &tick),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::DEMO_ACTIONS;

    fn at(elapsed: Duration) -> Clock {
        Clock {
            elapsed_ms: elapsed.as_millis() as u64,
            anchor_ms: 1_764_370_000_000,
        }
    }

    fn params(value: Value) -> Params {
        match value {
            Value::Object(map) => Params(map),
            other => panic!("not an object: {other}"),
        }
    }

    fn doc(action: &str, p: Value, seed: u64, elapsed: Duration) -> Value {
        let action = Action::parse(action).expect("a known action");
        render(action, &params(p), seed, &at(elapsed)).expect("a document")
    }

    #[test]
    fn demo_actions_are_the_dispatch_table() {
        let names: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
        assert_eq!(names, DEMO_ACTIONS);
        assert_eq!(Action::ProcessList.resource(), "process");
        assert_eq!(Action::SystemHealth.resource(), "system_health");
    }

    #[test]
    fn documents_depend_on_seed_params_and_bucket_only() {
        let t = Duration::from_secs(1000);
        let p = json!({"status": "active"});
        assert_eq!(
            doc("process.list", p.clone(), 1, t),
            doc("process.list", p.clone(), 1, t)
        );
        assert_ne!(
            doc("process.list", p.clone(), 1, t),
            doc("process.list", p, 2, t)
        );
        // Within one bucket of system_health (2 s), nothing moves.
        let tick = Tick::new(1, Action::SystemHealth, &at(t));
        let bucket_start = tick.bucket * tick.period_ms - tick.phase_ms;
        let early = Duration::from_millis(bucket_start);
        let late = Duration::from_millis(bucket_start + tick.period_ms - 1);
        assert_eq!(
            doc("system_health", json!({}), 1, early),
            doc("system_health", json!({}), 1, late)
        );
        assert_ne!(
            doc("system_health", json!({}), 1, late),
            doc(
                "system_health",
                json!({}),
                1,
                late + Duration::from_millis(1)
            )
        );
    }

    #[test]
    fn params_shape_the_content() {
        let t = Duration::from_secs(42);
        let page1 = doc("process.list", json!({"page": 1, "page_size": 10}), 3, t);
        let page2 = doc("process.list", json!({"page": 2, "page_size": 10}), 3, t);
        assert_eq!(page1["total"], 48);
        assert_eq!(page1["total_pages"], 5);
        assert_ne!(page1["items"][0]["id"], page2["items"][0]["id"]);
        assert_eq!(page2["items"][0]["id"], "PRC-1011");

        let one = doc("process.get", json!({"id": "PRC-1007"}), 3, t);
        assert_eq!(one["id"], "PRC-1007");
        assert!(one["steps"].as_array().is_some_and(|s| s.len() >= 3));
        assert_eq!(doc("process.get", json!({"id": 1007}), 3, t), one);

        let found = doc("rule.search", json!({"q": "approval"}), 3, t);
        let items = found["items"].as_array().expect("items");
        assert!(!items.is_empty());
        assert!(
            items
                .iter()
                .all(|r| r.to_string().to_lowercase().contains("approv"))
        );
        let none = doc("rule.search", json!({"q": "zebra"}), 3, t);
        assert_eq!(none["total"], 0);

        let emea = doc("office.list", json!({"region": "EMEA"}), 3, t);
        assert!(
            emea["items"]
                .as_array()
                .expect("items")
                .iter()
                .all(|o| o["region"] == "EMEA")
        );
        assert_ne!(
            doc("settings.get", json!({"user": "u-1"}), 3, t),
            doc("settings.get", json!({"user": "u-2"}), 3, t)
        );
        let unread = doc(
            "notification.list",
            json!({"unread": "true", "limit": 5}),
            3,
            t,
        );
        assert!(
            unread["items"]
                .as_array()
                .expect("items")
                .iter()
                .all(|n| n["read"] == false)
        );
        let sub = doc("node.tree", json!({"root": "rules"}), 3, t);
        assert_eq!(sub["nodes"][0]["id"], "rules");
    }

    #[test]
    fn every_action_renders_at_any_time() {
        let with_params = |action: &str| match action {
            "process.get" => json!({"id": "PRC-1048"}),
            "rule.search" => json!({"q": "eur"}),
            _ => json!({}),
        };
        let day = 86_400;
        for secs in [0, 1, 59, 3_599, 7 * day, 365 * day, 10 * 365 * day] {
            for action in DEMO_ACTIONS {
                let value = doc(action, with_params(action), 11, Duration::from_secs(secs));
                assert!(value.is_object(), "{action} at {secs}s");
            }
        }
    }
}
