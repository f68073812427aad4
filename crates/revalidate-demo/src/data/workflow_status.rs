//! `workflow_status`: the live runs and the queue, advancing every bucket.

use serde_json::{Value, json};

use super::catalog::{PROCESS_COUNT, PROCESS_ID_BASE, PROCESS_KINDS};
use super::params::matches_any;
use super::{Params, Tick};
use crate::error::ApiError;
use crate::random::{Rng, hash};

/// Live runs shown at once by `workflow_status`.
const LIVE_RUNS: u64 = 8;

/// Buckets per run of a `workflow_status` slot: enough for the longest
/// process (5 steps × 4 ticks) plus a few ticks showing it completed.
const RUN_TICKS: u64 = 24;

/// `workflow_status`: the live runs and the queue; filters `process_id`,
/// `state` (`running` or `completed`).
pub(crate) fn report(params: &Params, seed: u64, tick: &Tick) -> Result<Value, ApiError> {
    let process_ids = params.texts("process_id");
    let states = params.texts("state");
    let mut runs = Vec::new();
    for slot in 0..LIVE_RUNS {
        // Each slot runs workflows one after another, one cycle of RUN_TICKS
        // buckets each: the run advances a step every few ticks and then
        // shows "completed" until the slot starts its next run.
        let position = tick.bucket + hash(seed, "run.offset", &[slot]) % RUN_TICKS;
        let cycle = position / RUN_TICKS;
        let mut rng = Rng::new(hash(seed, "run", &[slot, cycle]));
        let process = rng.below(PROCESS_COUNT);
        let steps = PROCESS_KINDS[usize::try_from(process).unwrap_or(0) % PROCESS_KINDS.len()].2;
        let ticks_per_step = 2 + rng.below(3);
        let work = steps.len() as u64 * ticks_per_step;
        let at = position % RUN_TICKS;
        let completed = at >= work;
        let current = usize::try_from(at / ticks_per_step)
            .unwrap_or(usize::MAX)
            .min(steps.len() - 1);
        let state = if completed { "completed" } else { "running" };
        let process_id = format!("PRC-{}", PROCESS_ID_BASE + process);
        if !matches_any(&process_ids, &process_id) || !matches_any(&states, state) {
            continue;
        }
        let step_states: Vec<Value> = steps
            .iter()
            .enumerate()
            .map(|(i, (name, role))| {
                let step_state = if completed || i < current {
                    "done"
                } else if i == current {
                    "in_progress"
                } else {
                    "pending"
                };
                json!({"position": i + 1, "name": name, "role": role, "state": step_state})
            })
            .collect();
        let remaining_ticks = work.saturating_sub(at);
        runs.push(json!({
            "id": format!("RUN-{}", 7000 + cycle * LIVE_RUNS + slot),
            "process_id": process_id,
            "process_name": PROCESS_KINDS[usize::try_from(process).unwrap_or(0) % PROCESS_KINDS.len()].0,
            "state": state,
            "current_step": if completed { Value::Null } else { json!(steps[current].0) },
            "progress_percent": (at.min(work) * 100) / work.max(1),
            "steps": step_states,
            "started_at": tick.wall_ms(tick.now_bucket() - i64::try_from(at).unwrap_or(0)),
            "eta_seconds": remaining_ticks * tick.period_ms / 1000,
        }));
    }
    let mut rng = Rng::new(hash(seed, "workflow_status", &[tick.bucket]));
    Ok(json!({
        "runs": runs,
        "queued": rng.below(30),
        "completed_last_hour": 40 + rng.below(60),
        "sampled_at": tick.wall_ms(tick.now_bucket()),
    }))
}
