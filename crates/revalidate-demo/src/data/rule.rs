//! `rule.list` and `rule.search`: the business rules, each attached to a
//! process, switched on and off and hit more or less as buckets pass.

use serde_json::{Map, Value, json};

use super::catalog::{
    PROCESS_COUNT, PROCESS_ID_BASE, PROCESS_KINDS, REGIONS, RULE_COUNT, RULE_ID_BASE,
};
use super::params::{matches_any, paginate};
use super::{Params, Tick, item_epoch};
use crate::error::ApiError;
use crate::random::{Rng, hash};

/// Rule templates: kind, name, expression; `{amount}`, `{hours}` and
/// `{region}` are filled per rule.
#[rustfmt::skip]
const RULE_TEMPLATES: [(&str, &str, &str); 12] = [
    ("approval", "Manager approval above {amount} EUR", "amount > {amount}"),
    ("approval", "Dual sign-off for amounts over {amount} EUR", "amount >= {amount} && approvers.count < 2"),
    ("validation", "Reject submissions without a cost center", "cost_center == null"),
    ("validation", "Require an attachment for claims over {amount} EUR", "amount > {amount} && attachments.count == 0"),
    ("routing", "Route {region} requests to the regional lead", "region == \"{region}\""),
    ("escalation", "Escalate after {hours} h without response", "hours_open > {hours}"),
    ("escalation", "Notify the director when the SLA is breached", "sla.remaining_hours < 0"),
    ("notification", "Remind the assignee {hours} h before the due date", "due_in_hours <= {hours}"),
    ("validation", "Block vendors without a tax id", "vendor.tax_id == null"),
    ("routing", "Send high-priority items to the on-call queue", "priority in [\"high\", \"critical\"]"),
    ("approval", "Auto-approve below {amount} EUR", "amount < {amount}"),
    ("notification", "Weekly digest of open items", "schedule == \"weekly\""),
];

/// The index of the process rule `rule` belongs to.
pub(crate) fn rule_process(seed: u64, rule: u64) -> u64 {
    hash(seed, "rule.process", &[rule]) % PROCESS_COUNT
}

/// Rule number `index` (from 0) in the current bucket.
fn rule_at(index: u64, seed: u64, tick: &Tick) -> Value {
    let (kind, name, expression) =
        RULE_TEMPLATES[usize::try_from(index).unwrap_or(0) % RULE_TEMPLATES.len()];
    let process = rule_process(seed, index);
    let region =
        REGIONS[usize::try_from(process).unwrap_or(0) / PROCESS_KINDS.len() % REGIONS.len()];
    let mut fixed = Rng::new(hash(seed, "rule", &[index]));
    let amount = fixed
        .pick(&[500, 1000, 2500, 5000, 10000, 25000])
        .to_string();
    let hours = fixed.pick(&[4, 8, 24, 48, 72]).to_string();
    let fill = |s: &str| {
        s.replace("{amount}", &amount)
            .replace("{hours}", &hours)
            .replace("{region}", region)
    };
    let (epoch, since) = item_epoch(seed, "rule", index, tick, 6);
    let mut now = Rng::new(hash(seed, "rule.epoch", &[index, epoch]));
    json!({
        "id": format!("RUL-{}", RULE_ID_BASE + index),
        "name": fill(name),
        "kind": kind,
        "process_id": format!("PRC-{}", PROCESS_ID_BASE + process),
        "expression": fill(expression),
        "priority": 1 + fixed.below(10),
        "enabled": now.chance(0.85),
        "hits_last_24h": now.below(500),
        "updated_at": tick.wall_ms(since),
        "version": epoch + 1,
    })
}

/// Every rule, in id order.
fn rules(seed: u64, tick: &Tick) -> Vec<Value> {
    (0..RULE_COUNT).map(|j| rule_at(j, seed, tick)).collect()
}

/// `rule.list`: filters `process_id`, `kind`, `enabled`; `page`, `page_size`.
pub(crate) fn list(params: &Params, seed: u64, tick: &Tick) -> Result<Value, ApiError> {
    let process_ids = params.texts("process_id");
    let kinds = params.texts("kind");
    let enabled = params.flag("enabled")?;
    let page = params.page()?;
    let items = rules(seed, tick)
        .into_iter()
        .filter(|r| matches_any(&process_ids, r["process_id"].as_str().unwrap_or_default()))
        .filter(|r| matches_any(&kinds, r["kind"].as_str().unwrap_or_default()))
        .filter(|r| enabled.is_none_or(|e| r["enabled"] == e))
        .collect();
    let mut extra = Map::new();
    extra.insert(
        "filters".into(),
        json!({"process_id": process_ids, "kind": kinds, "enabled": enabled}),
    );
    Ok(paginate(items, page, extra))
}

/// `rule.search`: the rules containing every word of `q` (required), best
/// first: a word in the name counts double. `page`, `page_size`.
pub(crate) fn search(params: &Params, seed: u64, tick: &Tick) -> Result<Value, ApiError> {
    let q = params
        .text("q")
        .ok_or_else(|| ApiError::missing_param("q"))?;
    let terms: Vec<String> = q.split_whitespace().map(str::to_lowercase).collect();
    let page = params.page()?;
    let mut hits: Vec<(u64, Value)> = rules(seed, tick)
        .into_iter()
        .filter_map(|mut rule| {
            let field = |k: &str| rule[k].as_str().unwrap_or_default().to_lowercase();
            let name = field("name");
            let rest = [
                field("id"),
                field("kind"),
                field("expression"),
                field("process_id"),
            ]
            .join(" ");
            let mut score = 0;
            for term in &terms {
                let in_name = name.contains(term.as_str());
                if !in_name && !rest.contains(term.as_str()) {
                    return None;
                }
                score += if in_name { 2 } else { 1 };
            }
            if let Value::Object(map) = &mut rule {
                map.insert("score".into(), score.into());
            }
            Some((score, rule))
        })
        .collect();
    // Stable sort: equal scores keep id order.
    hits.sort_by_key(|(score, _)| std::cmp::Reverse(*score));
    let mut extra = Map::new();
    extra.insert("q".into(), json!(q));
    Ok(paginate(
        hits.into_iter().map(|(_, r)| r).collect(),
        page,
        extra,
    ))
}
