//! `system_health`: machine and service metrics, new every bucket.

use serde_json::{Value, json};

use super::params::matches_any;
use super::{Params, Tick};
use crate::error::ApiError;
use crate::random::{Rng, hash};

/// Services in the health report, with their typical latency in ms.
const SERVICES: [(&str, f64); 5] = [
    ("api", 12.0),
    ("database", 4.0),
    ("cache", 0.8),
    ("search", 25.0),
    ("mail", 60.0),
];

/// `system_health`: machine and service metrics; `service` filters the
/// services.
pub(crate) fn report(params: &Params, seed: u64, tick: &Tick) -> Result<Value, ApiError> {
    let wanted = params.texts("service");
    let b = tick.bucket as f64;
    let mut rng = Rng::new(hash(seed, "system_health", &[tick.bucket]));
    // Slow waves plus noise look like a real machine's graphs.
    let cpu = (38.0 + 22.0 * (b * 0.07).sin() + rng.range(-6.0, 6.0)).clamp(1.0, 99.0);
    let memory = (57.0 + 9.0 * (b * 0.013).sin() + rng.range(-2.0, 2.0)).clamp(5.0, 98.0);
    let memory_total_mb = 16_384.0;
    let spike = if rng.chance(0.05) { 300.0 } else { 0.0 };
    let queue = (40.0 + 60.0 * (b * 0.11).sin() + rng.range(-15.0, 15.0) + spike)
        .max(0.0)
        .round() as u64;
    let workers_total = 16_u64;
    let workers_busy = ((cpu / 100.0) * workers_total as f64).round() as u64;
    let status = if cpu > 85.0 || queue > 250 {
        "degraded"
    } else {
        "ok"
    };
    let services: Vec<Value> = SERVICES
        .iter()
        .filter(|(name, _)| matches_any(&wanted, name))
        .map(|&(name, base)| {
            let degraded = rng.chance(0.03);
            let latency = base * rng.range(0.7, 1.6) * if degraded { 8.0 } else { 1.0 };
            json!({
                "name": name,
                "status": if degraded { "degraded" } else { "up" },
                "latency_ms": round1(latency),
            })
        })
        .collect();
    let uptime_base = hash(seed, "uptime", &[]) % (30 * 86_400);
    Ok(json!({
        "status": status,
        "cpu_percent": round1(cpu),
        "memory_percent": round1(memory),
        "memory_used_mb": (memory_total_mb * memory / 100.0).round() as u64,
        "memory_total_mb": memory_total_mb as u64,
        "queue_depth": queue,
        "workers": {"busy": workers_busy, "total": workers_total},
        "requests_per_second": round1(120.0 + cpu * 4.0 + rng.range(-20.0, 20.0)),
        "error_rate_percent": round1(rng.range(0.0, 1.5)),
        "uptime_seconds": uptime_base + tick.bucket * tick.period_ms / 1000,
        "services": services,
        "sampled_at": tick.wall_ms(tick.now_bucket()),
    }))
}

/// Rounded to one decimal, as a dashboard would show it.
fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
