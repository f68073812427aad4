//! `RedisCoordinator`: the client's fetch path through Redis. Two round
//! trips per fetch: `ACQUIRE` before, `PUBLISH` after.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::{LocalWrite, Shared, digest, filter_text, unix_ms_to_time};
use crate::QueryFilter;
use crate::coord::{Coordinator, Grant, Holding, Publish, Remote, Ticket};
use crate::fetch::{FetchError, Fetched};
use crate::key::QueryKey;
use crate::policy::Staleness;
use crate::store::Codec;

/// A ticket the cluster granted (this node holds the lease); `Ticket(0)` is
/// a fetch this node made alone.
const LEASED: Ticket = Ticket(1);

/// A fetch made without the lease while Redis answers (a reader that waited
/// two lease times for another node's fetch, or a shared value that does
/// not decode): its result is put in Redis with a version above the shared
/// one, so that no node numbers versions on its own while the cluster does.
const APART: Ticket = Ticket(2);

/// How often a reader waiting for another node's fetch looks again.
const WAIT_STEP: Duration = Duration::from_millis(20);

/// The coordinator of a [`RedisTier`](super::RedisTier): give it to the
/// node's client.
pub struct RedisCoordinator<V, C> {
    pub(super) shared: Arc<Shared<V, C>>,
}

impl<V, C> std::fmt::Debug for RedisCoordinator<V, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCoordinator")
            .field("node_id", &self.shared.options.node_id)
            .finish_non_exhaustive()
    }
}

/// What `ACQUIRE` answered.
enum Acquired {
    Adopt(u64, u64, Vec<u8>),
    Fetch(u64),
    Busy(i64),
}

/// One value of a script's answer.
fn value<T: redis::FromRedisValue>(v: redis::Value) -> Result<T, redis::RedisError> {
    redis::from_redis_value(v).map_err(Into::into)
}

fn parse_acquired(v: redis::Value) -> Result<Acquired, redis::RedisError> {
    let (tag, rest): (String, Vec<redis::Value>) = match v {
        redis::Value::Array(mut items) if !items.is_empty() => {
            let tag = value(items.remove(0))?;
            (tag, items)
        }
        other => return Err(unexpected(&other)),
    };
    let num = |i: usize| -> Result<i64, redis::RedisError> {
        rest.get(i)
            .cloned()
            .map(value)
            .unwrap_or_else(|| Err(unexpected(&redis::Value::Nil)))
    };
    Ok(match tag.as_str() {
        "adopt" => {
            let d: Vec<u8> = rest
                .get(2)
                .cloned()
                .map(value)
                .transpose()?
                .unwrap_or_default();
            Acquired::Adopt(num(0)?.unsigned_abs(), num(1)?.unsigned_abs(), d)
        }
        "fetch" => Acquired::Fetch(num(0)?.unsigned_abs()),
        "busy" => Acquired::Busy(num(0)?),
        _ => return Err(unexpected(&redis::Value::SimpleString(tag))),
    })
}

pub(super) fn unexpected(v: &redis::Value) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected answer from a revalidate script",
        format!("{v:?}"),
    ))
}

impl<V, C> Shared<V, C>
where
    V: PartialEq + Send + Sync + 'static,
    C: Codec<V>,
{
    async fn acquire_once(
        &self,
        key: &QueryKey,
        holding: &Holding,
        no_adopt: bool,
    ) -> Result<Acquired, redis::RedisError> {
        let fresh_ms: i64 = match holding.staleness {
            Staleness::Never => -1,
            Staleness::Always => 0,
            Staleness::After(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        };
        self.counters.round_trips.fetch_add(1, Relaxed);
        let answer: redis::Value = self
            .scripts
            .acquire
            .key(self.key("e", key))
            .key(self.key("l", key))
            .arg(&self.owner)
            .arg(fresh_ms)
            .arg(u64::try_from(self.options.lease_ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(holding.version)
            .arg(if holding.invalidated || holding.forced || no_adopt {
                "1"
            } else {
                "0"
            })
            .arg(holding.updated_at.map_or(-1, |t| {
                i64::try_from(crate::rt::unix_millis(t)).unwrap_or(i64::MAX)
            }))
            .invoke_async(&mut self.conn.clone())
            .await?;
        parse_acquired(answer)
    }

    /// A fetch this node makes alone (Redis unreachable): remembered, so
    /// that its result is reconciled when the node rejoins.
    fn alone(&self) -> Grant<V> {
        self.counters.alone.fetch_add(1, Relaxed);
        Grant::Fetch(Ticket(0))
    }

    /// A fetch without the lease while Redis answers ([`APART`]).
    fn apart(&self, key: &QueryKey, holding: &Holding) -> Grant<V> {
        self.counters.alone.fetch_add(1, Relaxed);
        self.pending
            .lock()
            .insert(key.clone(), (u64::MAX, holding.version));
        Grant::Fetch(APART)
    }

    /// Puts the result of an [`APART`] fetch in Redis (`PUT` `write`: a
    /// version above the shared one) and gives its version.
    async fn put_apart(
        &self,
        key: &QueryKey,
        held: u64,
        payload: Option<Vec<u8>>,
        ok: bool,
    ) -> Publish {
        let Some(payload) = payload else {
            return Publish::Local;
        };
        self.counters.round_trips.fetch_add(1, Relaxed);
        let answer: Result<(String, u64), _> = self
            .scripts
            .put
            .key(self.key("e", key))
            .key(self.feed_key())
            .arg(held + 1)
            .arg(&payload)
            .arg(digest(&payload))
            .arg(key.text())
            .arg(&self.options.node_id)
            .arg(self.options.feed_len)
            .arg(u64::try_from(self.options.entry_ttl.as_millis()).unwrap_or(u64::MAX))
            .arg("write")
            .arg(0)
            .invoke_async(&mut self.conn.clone())
            .await;
        match answer {
            Ok((_, version)) => Publish::Version(version),
            Err(e) => {
                self.lost(&e);
                if ok {
                    self.dirty.lock().insert(key.clone());
                }
                Publish::Local
            }
        }
    }
}

impl<V, C> Coordinator<V> for RedisCoordinator<V, C>
where
    V: PartialEq + Send + Sync + 'static,
    C: Codec<V>,
{
    async fn acquire(&self, key: &QueryKey, holding: &Holding) -> Grant<V> {
        let s = &self.shared;
        if !s.is_connected() {
            return s.alone();
        }
        let give_up = crate::rt::Instant::now() + s.options.lease_ttl * 2;
        let mut no_adopt = false;
        loop {
            match s.acquire_once(key, holding, no_adopt).await {
                Err(e) => {
                    s.lost(&e);
                    return s.alone();
                }
                // This node numbered its data alone at that very version
                // (not reconciled yet): adopting the shared value would
                // change the data under an unchanged version. Fetch.
                Ok(Acquired::Adopt(version, ..))
                    if version == holding.version && s.dirty.lock().contains(key) =>
                {
                    no_adopt = true;
                }
                Ok(Acquired::Adopt(version, at_ms, payload)) => match s.codec.decode(key, &payload)
                {
                    Ok(value) => {
                        s.counters.adopted.fetch_add(1, Relaxed);
                        return Grant::Adopt(Remote::new(value, version, unix_ms_to_time(at_ms)));
                    }
                    Err(e) => {
                        tracing::warn!(target: "revalidate", "cluster: the shared value of {key} does not decode ({e}); fetching it here");
                        return s.apart(key, holding);
                    }
                },
                Ok(Acquired::Fetch(base)) => {
                    s.pending
                        .lock()
                        .insert(key.clone(), (base, holding.version));
                    s.counters.leases.fetch_add(1, Relaxed);
                    return Grant::Fetch(LEASED);
                }
                Ok(Acquired::Busy(pttl)) => {
                    let left = Duration::from_millis(pttl.max(1).unsigned_abs());
                    if !holding.reader {
                        // Its holder's result will come through the feed;
                        // look again when the lease would have run out.
                        s.counters.skipped.fetch_add(1, Relaxed);
                        return Grant::Skip(left.min(s.options.lease_ttl) + WAIT_STEP);
                    }
                    if crate::rt::Instant::now() >= give_up {
                        return s.apart(key, holding);
                    }
                    crate::rt::sleep(left.min(WAIT_STEP)).await;
                }
            }
        }
    }

    async fn publish(
        &self,
        key: &QueryKey,
        ticket: Ticket,
        result: &Result<Fetched<V>, FetchError>,
        previous: Option<&Arc<V>>,
    ) -> Publish {
        let s = &self.shared;
        if ticket != LEASED && ticket != APART {
            if result.is_ok() {
                s.dirty.lock().insert(key.clone());
            }
            return Publish::Local;
        }
        let Some((base, held)) = s.pending.lock().remove(key) else {
            return Publish::Local;
        };
        let payload = match result {
            Ok(f) => match f.value().or(previous.map(|p| &**p)) {
                Some(v) => match s.codec.encode(key, v) {
                    Ok(bytes) if bytes.len() <= s.options.max_payload_bytes => Some(bytes),
                    Ok(bytes) => {
                        tracing::debug!(target: "revalidate", "cluster: {key} is {} bytes, over max_payload_bytes: kept local", bytes.len());
                        None
                    }
                    Err(e) => {
                        tracing::warn!(target: "revalidate", "cluster: {key} does not encode ({e}): kept local");
                        None
                    }
                },
                None => None,
            },
            Err(_) => None,
        };
        if ticket == APART {
            return s.put_apart(key, held, payload, result.is_ok()).await;
        }
        let kind = if payload.is_some() { "data" } else { "fail" };
        let payload = payload.unwrap_or_default();
        s.counters.round_trips.fetch_add(1, Relaxed);
        let answer: Result<(String, u64, u64), _> = s
            .scripts
            .publish
            .key(s.key("e", key))
            .key(s.key("l", key))
            .key(s.feed_key())
            .arg(&s.owner)
            .arg(base)
            .arg(held)
            .arg(kind)
            .arg(&payload)
            .arg(digest(&payload))
            .arg(key.text())
            .arg(&s.options.node_id)
            .arg(s.options.feed_len)
            .arg(u64::try_from(s.options.entry_ttl.as_millis()).unwrap_or(u64::MAX))
            .invoke_async(&mut s.conn.clone())
            .await;
        match answer {
            Ok((tag, version, _)) if tag == "version" => Publish::Version(version),
            Ok((tag, _, _)) if tag == "refused" => {
                s.counters.refused.fetch_add(1, Relaxed);
                tracing::debug!(target: "revalidate", "cluster: a newer write of {key} won over this node's fetch");
                Publish::Refused
            }
            Ok(_) => Publish::Local,
            Err(e) => {
                s.lost(&e);
                if result.is_ok() {
                    s.dirty.lock().insert(key.clone());
                }
                Publish::Local
            }
        }
    }

    fn jitter_salt(&self) -> u64 {
        // The node id's digest: stable for a node, different between nodes.
        u64::from_str_radix(&digest(self.shared.options.node_id.as_bytes()), 16).unwrap_or(0)
    }

    fn wrote(&self, key: &QueryKey, value: &Arc<V>, version: u64) {
        let _ = self
            .shared
            .writes
            .send(LocalWrite::Wrote(key.clone(), value.clone(), version));
    }

    fn invalidated(&self, filter: &QueryFilter) {
        match filter_text(filter) {
            Some(text) => {
                let _ = self.shared.writes.send(LocalWrite::Invalidated(text));
            }
            None => {
                tracing::debug!(target: "revalidate", "cluster: a predicate invalidation stays on this node")
            }
        }
    }
}
