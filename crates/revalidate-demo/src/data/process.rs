//! `process.list` and `process.get`: the business processes, every kind in
//! every region, whose status and case load move every few buckets.

use serde_json::{Map, Value, json};

use super::catalog::{
    OFFICES, PEOPLE, PROCESS_COUNT, PROCESS_ID_BASE, PROCESS_KINDS, REGIONS, RULE_COUNT,
    RULE_ID_BASE, day_ms,
};
use super::params::{matches_any, paginate};
use super::rule::rule_process;
use super::{Params, Tick, item_epoch};
use crate::error::ApiError;
use crate::random::{Rng, hash};

/// Process priorities.
const PRIORITIES: [&str; 4] = ["low", "normal", "high", "critical"];

/// One process as it is in the current bucket; the fields are those of its
/// JSON summary.
#[derive(Debug)]
pub(crate) struct Process {
    id: String,
    name: String,
    kind: usize,
    region: &'static str,
    pub(crate) office_id: &'static str,
    owner: &'static str,
    status: &'static str,
    priority: &'static str,
    open_cases: u64,
    sla_hours: u64,
    updated_at: i64,
    version: u64,
}

impl Process {
    /// Process number `index` (from 0) in the current bucket.
    pub(crate) fn at(index: u64, seed: u64, tick: &Tick) -> Self {
        let kind = usize::try_from(index).unwrap_or(0) % PROCESS_KINDS.len();
        let region =
            REGIONS[usize::try_from(index).unwrap_or(0) / PROCESS_KINDS.len() % REGIONS.len()];
        let (kind_name, ..) = PROCESS_KINDS[kind];
        // Who owns a process and where it runs rarely changes: seed only.
        let mut fixed = Rng::new(hash(seed, "process", &[index]));
        let offices: Vec<&(&str, &str, &str, &str, &str, &str)> =
            OFFICES.iter().filter(|o| o.5 == region).collect();
        let office_id = offices
            .get(fixed.below(offices.len() as u64) as usize)
            .map_or("OFF-BER", |o| o.0);
        let owner = *fixed.pick(&PEOPLE);
        let priority = *fixed.pick(&PRIORITIES);
        let sla_hours = *fixed.pick(&[8, 24, 48, 72, 120]);
        let (epoch, since) = item_epoch(seed, "process", index, tick, 4);
        let mut now = Rng::new(hash(seed, "process.epoch", &[index, epoch]));
        let status = *now.weighted(&[("active", 11), ("paused", 3), ("draft", 4), ("archived", 2)]);
        let open_cases = match status {
            "active" => 1 + now.below(40),
            "paused" => now.below(8),
            _ => 0,
        };
        Self {
            id: format!("PRC-{}", PROCESS_ID_BASE + index),
            name: format!("{kind_name} ({region})"),
            kind,
            region,
            office_id,
            owner,
            status,
            priority,
            open_cases,
            sla_hours,
            updated_at: tick.wall_ms(since),
            version: epoch + 1,
        }
    }

    /// Every process, in id order.
    pub(crate) fn all(seed: u64, tick: &Tick) -> Vec<Self> {
        (0..PROCESS_COUNT)
            .map(|i| Self::at(i, seed, tick))
            .collect()
    }

    /// The department that runs this kind of process.
    pub(crate) fn department(&self) -> &'static str {
        PROCESS_KINDS[self.kind].1
    }

    /// The steps, as (step, role).
    pub(crate) fn steps(&self) -> &'static [(&'static str, &'static str)] {
        PROCESS_KINDS[self.kind].2
    }

    /// The process as `process.list` shows it.
    pub(crate) fn summary(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "department": self.department(),
            "region": self.region,
            "office_id": self.office_id,
            "owner": self.owner,
            "status": self.status,
            "priority": self.priority,
            "open_cases": self.open_cases,
            "sla_hours": self.sla_hours,
            "step_count": self.steps().len(),
            "updated_at": self.updated_at,
            "version": self.version,
        })
    }
}

/// Accepts `PRC-1001`, `prc-1001` or `1001`.
fn parse_process_id(id: &str) -> Option<u64> {
    let digits = id
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("PRC-"))
        .map_or(id, |_| &id[4..]);
    let n = digits.parse::<u64>().ok()?;
    n.checked_sub(PROCESS_ID_BASE)
        .filter(|i| *i < PROCESS_COUNT)
}

/// `process.list`: filters `status`, `department`, `region` (each one value
/// or a list), `owner` and `q` (substrings); `page`, `page_size`.
pub(crate) fn list(params: &Params, seed: u64, tick: &Tick) -> Result<Value, ApiError> {
    let statuses = params.texts("status");
    let departments = params.texts("department");
    let regions = params.texts("region");
    let owner = params.text("owner").map(|s| s.to_lowercase());
    let q = params.text("q").map(|s| s.to_lowercase());
    let page = params.page()?;
    let items = Process::all(seed, tick)
        .into_iter()
        .filter(|p| matches_any(&statuses, p.status))
        .filter(|p| matches_any(&departments, p.department()))
        .filter(|p| matches_any(&regions, p.region))
        .filter(|p| {
            owner
                .as_ref()
                .is_none_or(|o| p.owner.to_lowercase().contains(o))
        })
        .filter(|p| q.as_ref().is_none_or(|q| p.name.to_lowercase().contains(q)))
        .map(|p| p.summary())
        .collect();
    let mut filters = Map::new();
    filters.insert("status".into(), json!(statuses));
    filters.insert("department".into(), json!(departments));
    filters.insert("region".into(), json!(regions));
    filters.insert("owner".into(), json!(owner));
    filters.insert("q".into(), json!(q));
    let mut extra = Map::new();
    extra.insert("filters".into(), Value::Object(filters));
    Ok(paginate(items, page, extra))
}

/// `process.get`: one process by `id`, with its steps and rules.
pub(crate) fn get(params: &Params, seed: u64, tick: &Tick) -> Result<Value, ApiError> {
    let id = params
        .text("id")
        .ok_or_else(|| ApiError::missing_param("id"))?;
    let index = parse_process_id(&id).ok_or_else(|| ApiError::not_found("process", &id))?;
    let process = Process::at(index, seed, tick);
    let mut fixed = Rng::new(hash(seed, "process.created", &[index]));
    let created_at = tick.anchor_ms - day_ms(30 + fixed.below(900));
    let steps: Vec<Value> = process
        .steps()
        .iter()
        .enumerate()
        .map(|(i, (name, role))| {
            json!({"position": i + 1, "name": name, "role": role, "sla_hours": 4 + fixed.below(44)})
        })
        .collect();
    let rules: Vec<String> = (0..RULE_COUNT)
        .filter(|j| rule_process(seed, *j) == index)
        .map(|j| format!("RUL-{}", RULE_ID_BASE + j))
        .collect();
    let mut doc = process.summary();
    if let Value::Object(map) = &mut doc {
        map.insert(
            "description".into(),
            json!(format!(
                "{} for the {} region, run by {} and owned by {}.",
                PROCESS_KINDS[process.kind].0,
                process.region,
                process.department(),
                process.owner
            )),
        );
        map.insert("created_at".into(), json!(created_at));
        map.insert("steps".into(), Value::Array(steps));
        map.insert("rules".into(), json!(rules));
    }
    Ok(doc)
}
