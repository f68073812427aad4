//! `workflow.list`: workflow instances of the processes, moving through
//! their steps.

use serde_json::{Map, Value, json};

use super::catalog::{
    PEOPLE, PROCESS_COUNT, PROCESS_ID_BASE, PROCESS_KINDS, WORKFLOW_COUNT, WORKFLOW_ID_BASE, day_ms,
};
use super::params::{matches_any, paginate};
use super::{Params, Tick, item_epoch};
use crate::error::ApiError;
use crate::random::{Rng, hash};

/// Workflow instance number `index` (from 0) in the current bucket.
fn workflow_at(index: u64, seed: u64, tick: &Tick) -> Value {
    let mut fixed = Rng::new(hash(seed, "workflow", &[index]));
    let process = fixed.below(PROCESS_COUNT);
    let kind = usize::try_from(process).unwrap_or(0) % PROCESS_KINDS.len();
    let (kind_name, _, steps) = PROCESS_KINDS[kind];
    let started_days_ago = 1 + fixed.below(20);
    let reference = format!("REQ-{:05}", 10_000 + fixed.below(90_000));
    let (epoch, since) = item_epoch(seed, "workflow", index, tick, 3);
    let mut now = Rng::new(hash(seed, "workflow.epoch", &[index, epoch]));
    let state = *now.weighted(&[
        ("running", 8),
        ("waiting", 4),
        ("completed", 5),
        ("failed", 1),
        ("cancelled", 1),
    ]);
    let step = match state {
        "completed" => steps.len(),
        _ => 1 + now.below(steps.len() as u64) as usize,
    };
    let (step_name, role) = steps[step.saturating_sub(1).min(steps.len() - 1)];
    let started_at = tick.anchor_ms - day_ms(started_days_ago);
    json!({
        "id": format!("WF-{}", WORKFLOW_ID_BASE + index),
        "process_id": format!("PRC-{}", PROCESS_ID_BASE + process),
        "title": format!("{kind_name} {reference}"),
        "reference": reference,
        "state": state,
        "step": step,
        "step_count": steps.len(),
        "current_step": step_name,
        "assignee": now.pick(&PEOPLE),
        "assignee_role": role,
        "started_at": started_at,
        "due_at": started_at + day_ms(started_days_ago + 1 + fixed.below(10)),
        "updated_at": tick.wall_ms(since),
        "version": epoch + 1,
    })
}

/// `workflow.list`: filters `state`, `process_id`, `assignee`; `page`,
/// `page_size`.
pub(crate) fn list(params: &Params, seed: u64, tick: &Tick) -> Result<Value, ApiError> {
    let states = params.texts("state");
    let process_ids = params.texts("process_id");
    let assignee = params.text("assignee").map(|s| s.to_lowercase());
    let page = params.page()?;
    let items = (0..WORKFLOW_COUNT)
        .map(|k| workflow_at(k, seed, tick))
        .filter(|w| matches_any(&states, w["state"].as_str().unwrap_or_default()))
        .filter(|w| matches_any(&process_ids, w["process_id"].as_str().unwrap_or_default()))
        .filter(|w| {
            assignee.as_ref().is_none_or(|a| {
                w["assignee"]
                    .as_str()
                    .unwrap_or_default()
                    .to_lowercase()
                    .contains(a)
            })
        })
        .collect();
    let mut extra = Map::new();
    extra.insert(
        "filters".into(),
        json!({"state": states, "process_id": process_ids, "assignee": assignee}),
    );
    Ok(paginate(items, page, extra))
}
