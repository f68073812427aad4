//! The Lua scripts that make each cluster decision one atomic step in Redis.
//!
//! Keys (all under the configured prefix `P`):
//!
//! - `P:e:<query key>` — a hash: `v` the version, `u` when the source last
//!   answered (Redis time, Unix ms), `d` the payload (the codec's bytes),
//!   `h` its digest, `k` the query key, `o` the node that wrote it. Expires
//!   `entry_ttl` after its last write.
//! - `P:l:<query key>` — the lease: the holder node's owner token, with a
//!   time to live of `lease_ttl`.
//! - `P:feed` — the change feed, a stream trimmed to about `feed_len`
//!   entries: `t` (`put`, `confirm`, `inv`), `k` the query key, `v`, `u`,
//!   `o` the origin node, and for `inv` the filter `f`.
//! - `P:epoch` — a random id set when the first node connects to an empty
//!   Redis: a node that sees it change knows Redis lost its data.
//!
//! Time is Redis's (`TIME`), one clock for every node. Versions are fencing
//! tokens: a result is written only if the entry's version is still the one
//! the fetch was granted against, so a node paused past its lease can never
//! overwrite what another node wrote since.

use redis::Script;

/// Before a fetch: adopt the shared value if it is fresh (and at least as
/// new as the node's), else take the lease and fetch, else report the
/// holder's remaining time. One exception to adopting: a node that holds
/// the shared value already (the same version, `u` at most 50 ms, clock
/// rounding, after the node's) and asks in the last tenth of its freshness
/// is due by its own schedule (its jitter put it just before the value
/// turns stale): it fetches, where adopting what it has would only bring
/// it back at once, a round trip per window for nothing. Fetching that
/// early costs at most a tenth more fetches; any earlier, and nodes whose
/// checks fall apart could fetch a key twice per window between them.
///
/// KEYS: entry, lease. ARGV: owner, fresh_ms (-1: never stale by time),
/// lease_ttl_ms, held version, invalidated (`1`/`0`), held updated_at
/// (Unix ms, -1: none).
/// Returns `{'adopt', v, u, d}`, `{'fetch', v}` or `{'busy', pttl}`.
pub(super) const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local e = redis.call('HMGET', KEYS[1], 'v', 'u')
local v = tonumber(e[1] or '0') or 0
local u = tonumber(e[2] or '0') or 0
local fresh_ms = tonumber(ARGV[2])
local held = tonumber(ARGV[4])
local fresh = fresh_ms < 0 or now - u < fresh_ms
local holds_it = v == held and u <= tonumber(ARGV[6]) + 50
local own_turn = holds_it and fresh_ms >= 0 and (now - u) * 10 >= fresh_ms * 9
if v > 0 and v >= held and ARGV[5] == '0' and fresh and not own_turn then
  return {'adopt', v, u, redis.call('HGET', KEYS[1], 'd')}
end
local holder = redis.call('GET', KEYS[2])
if (not holder) or holder == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
  return {'fetch', v}
end
return {'busy', redis.call('PTTL', KEYS[2])}
"#;

/// After a fetch: write the result if the entry is still at the version the
/// fetch was granted against (equal data keeps its version), add it to the
/// feed, and release the lease if this node still holds it.
///
/// KEYS: entry, lease, feed. ARGV: owner, base version, held version,
/// kind (`data`/`fail`), payload, digest, query key, node id, feed length,
/// entry ttl ms. Returns `{'version', v, u}`, `{'refused', v, 0}` or
/// `{'released', 0, 0}`.
pub(super) const PUBLISH: &str = r#"
local function release()
  if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
end
if ARGV[4] == 'fail' then release() return {'released', 0, 0} end
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0') or 0
if v ~= tonumber(ARGV[2]) then release() return {'refused', v, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = tonumber(ARGV[3])
local newv, kind
if v > 0 and redis.call('HGET', KEYS[1], 'h') == ARGV[6] then
  newv = math.max(v, held)
  kind = 'confirm'
  redis.call('HSET', KEYS[1], 'v', newv, 'u', now)
else
  newv = math.max(v, held) + 1
  kind = 'put'
  redis.call('HSET', KEYS[1], 'v', newv, 'u', now, 'd', ARGV[5], 'h', ARGV[6], 'k', ARGV[7], 'o', ARGV[8])
end
redis.call('PEXPIRE', KEYS[1], ARGV[10])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[9], '*', 't', kind, 'k', ARGV[7], 'v', newv, 'u', now, 'o', ARGV[8])
release()
return {'version', newv, now}
"#;

/// A node's own write: `write` (the application's `set_data`: it wins,
/// with a version above the shared one) or `sync` (reconciliation after a
/// partition: only if the node's version is newer). Nodes apart number
/// their versions alone, so a `sync` can meet the same version with other
/// data: the node's data then gets the next version (one version, one
/// value, on every node).
///
/// KEYS: entry, feed. ARGV: node version, payload, digest, query key, node
/// id, feed length, entry ttl ms, mode (`write`/`sync`), updated_at ms (0:
/// now). Returns `{'version', v}` (the node's data is at `v` now),
/// `{'older', v}` (the shared one is newer: adopt it) or `{'same', v}`
/// (`sync` of the data Redis holds at that version).
pub(super) const PUT: &str = r#"
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0') or 0
local lv = tonumber(ARGV[1])
local newv = lv
if ARGV[8] == 'sync' and v > lv then return {'older', v} end
if ARGV[8] == 'sync' and v == lv then
  if redis.call('HGET', KEYS[1], 'h') == ARGV[3] then return {'same', v} end
  newv = v + 1
end
if ARGV[8] == 'write' then newv = math.max(v + 1, lv) end
local u = tonumber(ARGV[9])
if u == 0 then
  local t = redis.call('TIME')
  u = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
redis.call('HSET', KEYS[1], 'v', newv, 'u', u, 'd', ARGV[2], 'h', ARGV[3], 'k', ARGV[4], 'o', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 't', 'put', 'k', ARGV[4], 'v', newv, 'u', u, 'o', ARGV[5])
return {'version', newv}
"#;

/// An invalidation made on one node, for all: marks a single shared entry
/// stale (so that no node adopts it by time) and adds it to the feed.
///
/// KEYS: entry (or the feed again, for a filter wider than a key), feed.
/// ARGV: filter, node id, feed length, `1` if KEYS[1] is an entry.
pub(super) const INVALIDATE: &str = r#"
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'u', 0)
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 't', 'inv', 'f', ARGV[1], 'o', ARGV[2])
return 1
"#;

/// The scripts, hashed once.
pub(super) struct Scripts {
    pub(super) acquire: Script,
    pub(super) publish: Script,
    pub(super) put: Script,
    pub(super) invalidate: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            acquire: Script::new(ACQUIRE),
            publish: Script::new(PUBLISH),
            put: Script::new(PUT),
            invalidate: Script::new(INVALIDATE),
        }
    }
}

impl std::fmt::Debug for Scripts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scripts")
    }
}
