//! `settings.get`: a user's settings, each changing on its own rhythm.

use serde_json::{Value, json};

use super::catalog::{OFFICES, PEOPLE, PROCESS_COUNT, PROCESS_ID_BASE};
use super::{Params, Tick, item_epoch};
use crate::error::ApiError;
use crate::random::{Rng, fnv1a, hash};

/// `settings.get`: the settings of `user` (default `u-demo`).
pub(crate) fn get(params: &Params, seed: u64, tick: &Tick) -> Result<Value, ApiError> {
    let user = params.text("user").unwrap_or_else(|| "u-demo".to_owned());
    let user_key = fnv1a(user.as_bytes());
    // Each setting changes on its own rhythm, so every bucket changes a few
    // of them rather than all.
    let setting = |slot: u64| {
        let (epoch, _) = item_epoch(seed, "settings", slot + user_key % 7, tick, 5);
        Rng::new(hash(seed, "settings.epoch", &[user_key, slot, epoch]))
    };
    let mut fixed = Rng::new(hash(seed, "settings.user", &[user_key]));
    let mut pick = setting(8);
    let mut favorites: Vec<String> = Vec::with_capacity(3);
    while favorites.len() < 3 {
        let id = format!("PRC-{}", PROCESS_ID_BASE + pick.below(PROCESS_COUNT));
        if !favorites.contains(&id) {
            favorites.push(id);
        }
    }
    Ok(json!({
        "user_id": user,
        "display_name": fixed.pick(&PEOPLE),
        "theme": setting(0).pick(&["light", "dark", "system"]),
        "language": setting(1).pick(&["en", "de", "fr", "es", "ja"]),
        "timezone": setting(2).pick(&OFFICES).4,
        "date_format": setting(3).pick(&["YYYY-MM-DD", "DD.MM.YYYY", "MM/DD/YYYY"]),
        "page_size": setting(4).pick(&[10, 20, 50]),
        "notifications": {
            "email": setting(5).chance(0.7),
            "push": setting(6).chance(0.5),
            "digest": setting(7).pick(&["daily", "weekly", "off"]),
        },
        "default_office": fixed.pick(&OFFICES).0,
        "favorite_processes": favorites,
        "revision": tick.bucket + 1,
        "updated_at": tick.wall_ms(tick.now_bucket()),
    }))
}
