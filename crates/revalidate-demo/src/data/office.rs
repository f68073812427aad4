//! `office.list`: the offices, with head counts and case loads that move.

use serde_json::{Value, json};

use super::catalog::OFFICES;
use super::params::matches_any;
use super::process::Process;
use super::{Params, Tick, item_epoch};
use crate::error::ApiError;
use crate::random::{Rng, hash};

/// `office.list`: filters `region`, `country`.
pub(crate) fn list(params: &Params, seed: u64, tick: &Tick) -> Result<Value, ApiError> {
    let regions = params.texts("region");
    let countries = params.texts("country");
    // Where a process runs depends on the seed only, so this tick serves as
    // well as the processes' own.
    let processes = Process::all(seed, tick);
    let items: Vec<Value> = OFFICES
        .iter()
        .enumerate()
        .filter(|(_, o)| matches_any(&regions, o.5) && matches_any(&countries, o.3))
        .map(|(i, &(id, name, city, country, timezone, region))| {
            let i = i as u64;
            let mut fixed = Rng::new(hash(seed, "office", &[i]));
            let base_headcount = 40 + fixed.below(400);
            let (epoch, since) = item_epoch(seed, "office", i, tick, 4);
            let mut now = Rng::new(hash(seed, "office.epoch", &[i, epoch]));
            let hosted = processes.iter().filter(|p| p.office_id == id).count();
            json!({
                "id": id,
                "name": name,
                "city": city,
                "country": country,
                "timezone": timezone,
                "region": region,
                "headcount": base_headcount + now.below(12),
                "processes": hosted,
                "open_cases": now.below(60),
                "status": if now.chance(0.05) { "closed_today" } else { "open" },
                "updated_at": tick.wall_ms(since),
                "version": epoch + 1,
            })
        })
        .collect();
    Ok(json!({"items": items, "total": items.len()}))
}
