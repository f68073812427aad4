//! `notification.list`: one new notification per bucket, read a few
//! buckets later.

use serde_json::{Value, json};

use super::catalog::{
    PEOPLE, PROCESS_COUNT, PROCESS_ID_BASE, PROCESS_KINDS, WORKFLOW_COUNT, WORKFLOW_ID_BASE,
};
use super::params::matches_any;
use super::{Params, Tick};
use crate::error::ApiError;
use crate::random::{Rng, hash};

/// Notification kinds: kind, severity, title, message (`{process}`,
/// `{person}` and `{workflow}` are filled in).
#[rustfmt::skip]
const NOTIFICATION_KINDS: [(&str, &str, &str, &str); 6] = [
    ("approval_request", "info", "Approval needed", "{person} asks you to approve {workflow} in {process}."),
    ("comment", "info", "New comment", "{person} commented on {workflow}."),
    ("mention", "info", "You were mentioned", "{person} mentioned you in {process}."),
    ("sla_warning", "warning", "SLA at risk", "{workflow} in {process} is due in less than 4 hours."),
    ("workflow_failed", "critical", "Workflow failed", "{workflow} in {process} stopped at an automatic step."),
    ("system", "info", "Scheduled maintenance", "Reporting will be read-only tonight from 02:00 to 03:00."),
];

/// How many past notifications the list is drawn from.
const NOTIFICATION_HISTORY: i64 = 100;

/// `notification.list`: one new notification per bucket, newest first;
/// `unread`, `kind` and `limit` (default 20).
pub(crate) fn list(params: &Params, seed: u64, tick: &Tick) -> Result<Value, ApiError> {
    let unread_only = params.flag("unread")?.unwrap_or(false);
    let kinds = params.texts("kind");
    let limit = params.number("limit", 20, 1, 100)?;
    let now = tick.now_bucket();
    let mut unread_count = 0_u64;
    let mut matching = Vec::new();
    // One notification per bucket, newest first.
    for n in (now - NOTIFICATION_HISTORY + 1..=now).rev() {
        // Buckets before the start are negative; the wrapped value is as good
        // a key as any.
        let n_key = n as u64;
        let mut rng = Rng::new(hash(seed, "notification", &[n_key]));
        let (kind, severity, title, message) = *rng.pick(&NOTIFICATION_KINDS);
        let process = rng.below(PROCESS_COUNT);
        let kind_name =
            PROCESS_KINDS[usize::try_from(process).unwrap_or(0) % PROCESS_KINDS.len()].0;
        let person = *rng.pick(&PEOPLE);
        let message = message
            .replace("{person}", person)
            .replace("{process}", kind_name)
            .replace(
                "{workflow}",
                &format!("WF-{}", WORKFLOW_ID_BASE + rng.below(WORKFLOW_COUNT)),
            );
        // People read notifications a few buckets after they arrive.
        let read = now - n >= 2 + i64::try_from(rng.below(10)).unwrap_or(0);
        if !read {
            unread_count += 1;
        }
        if (unread_only && read) || !matches_any(&kinds, kind) {
            continue;
        }
        matching.push(json!({
            "id": format!("NTF-{}", 100_000 + n),
            "kind": kind,
            "severity": severity,
            "title": title,
            "message": message,
            "process_id": format!("PRC-{}", PROCESS_ID_BASE + process),
            "created_at": tick.wall_ms(n),
            "read": read,
        }));
    }
    let total = matching.len();
    matching.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(json!({
        "items": matching,
        "total": total,
        "limit": limit,
        "unread_count": unread_count,
    }))
}
