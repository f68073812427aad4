//! Callers, for per-user data (`scope = "user"`).
//!
//! The daemon knows a caller by `[identity]`: their own `Authorization`
//! header, or a header a trusted gateway set. A user-scoped query is keyed
//! by a keyed hash of that identity (HMAC-SHA-256 with a secret of the
//! process's, or `[identity] secret_env`'s so that keys survive restarts),
//! never by the credential itself; the credential stays in this module's
//! memory only, to fetch and refresh the user's queries upstream as that
//! user. Nothing here is ever logged, stored or shown but the hash.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use parking_lot::Mutex;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use revalidate::{QueryFilter, QueryKey};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::config::{DaemonConfig, IdentitySource, Scope};

/// A caller's identity, as keys and events carry it: 32 hex digits of a
/// keyed hash.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct UserId(pub(crate) String);

impl UserId {
    /// The first 8 digits, for dashboards.
    pub(crate) fn short(&self) -> &str {
        &self.0[..8.min(self.0.len())]
    }
}

/// Who is calling: their id, and the credential to fetch as them.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub(crate) id: UserId,
    credential: (HeaderName, HeaderValue),
}

/// The credentials of the callers seen, in memory only.
pub(crate) struct Identities {
    source: IdentitySource,
    key: ring::hmac::Key,
    credentials: Mutex<HashMap<UserId, (HeaderName, HeaderValue)>>,
    /// Users whose credential the upstream refused, for the daemon to drop
    /// their queries.
    revoked: Mutex<HashSet<UserId>>,
    revoked_wake: Notify,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identities")
            .field("source", &self.source)
            .field("credentials", &self.len())
            .finish_non_exhaustive()
    }
}

/// The parameter names that wrap a user-scoped query's own parameters.
const USER: &str = "~user";
const PARAMS: &str = "~params";

impl Identities {
    /// Identities from `source`, hashed with `secret` (a random one of this
    /// process's when `None`).
    pub(crate) fn new(source: IdentitySource, secret: Option<&[u8]>) -> Self {
        let key = match secret {
            Some(s) => ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s),
            None => {
                ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
                    .expect("the system's random source works")
            }
        };
        Self {
            source,
            key,
            credentials: Mutex::default(),
            revoked: Mutex::default(),
            revoked_wake: Notify::new(),
        }
    }

    /// Whether the identity is the caller's `Authorization` header (then
    /// that header is not also a read token).
    pub(crate) fn uses_authorization(&self) -> bool {
        self.source == IdentitySource::Authorization
    }

    /// The identity header, when a gateway sets it: a request from anyone
    /// else carrying it must not pass it on.
    pub(crate) fn gateway_header(&self) -> Option<&str> {
        match &self.source {
            IdentitySource::Header { name, .. } => Some(name),
            IdentitySource::Authorization => None,
        }
    }

    /// The caller of a request, if it carries an identity: its
    /// `Authorization` (any scheme), or the configured header when the peer
    /// is a trusted proxy.
    pub(crate) fn caller(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<Caller> {
        let (name, value) = match &self.source {
            IdentitySource::Authorization => (AUTHORIZATION, headers.get(AUTHORIZATION)?.clone()),
            IdentitySource::Header {
                name,
                trusted_proxies,
            } => {
                let peer = peer?.ip();
                if !trusted_proxies
                    .iter()
                    .any(|(net, bits)| contains(*net, *bits, peer))
                {
                    return None;
                }
                let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                let value = headers.get(&name)?.clone();
                (name, value)
            }
        };
        if value.as_bytes().iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let tag = ring::hmac::sign(&self.key, value.as_bytes());
        let id = UserId(
            tag.as_ref()[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        );
        // A request's header value is a view of the connection's read
        // buffer (8 KiB and more): kept as it is for background refreshes,
        // every identity would hold a whole buffer. A copy of its own.
        let mut value = HeaderValue::from_bytes(value.as_bytes())
            .expect("the bytes of a valid header value are one");
        value.set_sensitive(true);
        Some(Caller {
            id,
            credential: (name, value),
        })
    }

    /// Keeps `caller`'s credential to fetch their queries in the background.
    pub(crate) fn remember(&self, caller: &Caller) {
        self.credentials
            .lock()
            .insert(caller.id.clone(), caller.credential.clone());
    }

    /// The credential to fetch as `id`, if the daemon has it.
    pub(crate) fn credential(&self, id: &UserId) -> Option<(HeaderName, HeaderValue)> {
        self.credentials.lock().get(id).cloned()
    }

    /// Drops `id`'s credential (the upstream refused it) and queues the
    /// user for [`revoked`](Self::revoked).
    pub(crate) fn forget(&self, id: &UserId) {
        self.credentials.lock().remove(id);
        if self.revoked.lock().insert(id.clone()) {
            self.revoked_wake.notify_one();
        }
    }

    /// The users forgotten since the last call, waiting for one if none is.
    pub(crate) async fn revoked(&self) -> Vec<UserId> {
        loop {
            let wake = self.revoked_wake.notified();
            let users: Vec<UserId> = self.revoked.lock().drain().collect();
            if !users.is_empty() {
                return users;
            }
            wake.await;
        }
    }

    /// Credentials held now.
    pub(crate) fn len(&self) -> usize {
        self.credentials.lock().len()
    }
}

/// Which actions hold per-user data: `scope` on the action, else its
/// resource's `[scope]`, else shared.
#[derive(Debug, Default)]
pub(crate) struct Scopes {
    user: HashSet<String>,
}

impl Scopes {
    pub(crate) fn new(config: &DaemonConfig) -> Self {
        let policy = &config.engine.policy;
        let user = config
            .actions
            .iter()
            .filter(|(name, a)| {
                let scope = a
                    .scope
                    .or_else(|| config.scopes.get(policy.resource(name)).copied());
                scope == Some(Scope::User)
            })
            .map(|(name, _)| name.clone())
            .collect();
        Self { user }
    }

    /// Whether `action` is per-user.
    pub(crate) fn is_user(&self, action: &str) -> bool {
        self.user.contains(action)
    }

    /// Whose query `key` is: `None` for shared data.
    pub(crate) fn owner(&self, key: &QueryKey) -> Option<UserId> {
        if self.is_user(key.action()) {
            split_user_key(key).map(|(user, _)| user)
        } else {
            None
        }
    }

    /// How `key` is shown outside (events, `/v1/queries`, the dashboard):
    /// a user's query as its action and own parameters, with the short
    /// hash of its owner.
    pub(crate) fn view(&self, key: &QueryKey) -> KeyView {
        if self.is_user(key.action())
            && let Some((user, params)) = split_user_key(key)
        {
            let own = QueryKey::new(key.action(), params.clone());
            return KeyView {
                key: own.to_string(),
                action: key.action().to_owned(),
                params,
                user: Some(user),
            };
        }
        KeyView {
            key: key.to_string(),
            action: key.action().to_owned(),
            params: key.params(),
            user: None,
        }
    }

    /// The queries of `user`.
    pub(crate) fn of_user(self: &std::sync::Arc<Self>, user: UserId) -> QueryFilter {
        let scopes = self.clone();
        QueryFilter::predicate(move |key| scopes.owner(key).as_ref() == Some(&user))
    }
}

/// A query's key as shown outside.
#[derive(Debug, Clone)]
pub(crate) struct KeyView {
    /// The key's text (a user's query: without the owner).
    pub(crate) key: String,
    pub(crate) action: String,
    pub(crate) params: Value,
    /// The owner of a user's query.
    pub(crate) user: Option<UserId>,
}

/// The key of `action` with `params` for `user`.
pub(crate) fn user_key(action: &str, user: &UserId, params: Value) -> QueryKey {
    QueryKey::new(action, json!({ USER: user.0, PARAMS: params }))
}

/// The user and own parameters of a user-scoped query's key (the caller
/// knows the action is user-scoped: a shared action's parameters are never
/// read this way, whatever they hold).
pub(crate) fn split_user_key(key: &QueryKey) -> Option<(UserId, Value)> {
    let Value::Object(mut map) = key.params() else {
        return None;
    };
    let Some(Value::String(user)) = map.remove(USER) else {
        return None;
    };
    Some((UserId(user), map.remove(PARAMS).unwrap_or(Value::Null)))
}

/// Whether `addr` is in the network `net/bits`.
fn contains(net: IpAddr, bits: u8, addr: IpAddr) -> bool {
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V4(a)) => n
            .to_ipv4_mapped()
            .is_some_and(|n| contains(IpAddr::V4(n), bits.saturating_sub(96), IpAddr::V4(a))),
        (IpAddr::V4(_), IpAddr::V6(a)) => a
            .to_ipv4_mapped()
            .is_some_and(|a| contains(net, bits, IpAddr::V4(a))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    #[test]
    fn callers_are_keyed_by_a_hash_never_by_their_credential() {
        let ids = Identities::new(IdentitySource::Authorization, Some(b"secret"));
        let a = ids
            .caller(&headers("authorization", "Bearer alice-token"), None)
            .unwrap();
        let b = ids
            .caller(&headers("authorization", "Bearer bob-token"), None)
            .unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.0.len(), 32);
        assert!(!a.id.0.contains("alice"));
        let again = ids
            .caller(&headers("authorization", "Bearer alice-token"), None)
            .unwrap();
        assert_eq!(a.id, again.id, "stable for one secret");
        let other = Identities::new(IdentitySource::Authorization, Some(b"another"));
        assert_ne!(
            other
                .caller(&headers("authorization", "Bearer alice-token"), None)
                .unwrap()
                .id,
            a.id
        );
        assert!(ids.caller(&HeaderMap::new(), None).is_none());
        let key = user_key("settings.get", &a.id, json!({"x": 1}));
        assert!(!key.to_string().contains("alice"));
        assert_eq!(split_user_key(&key), Some((a.id.clone(), json!({"x": 1}))));
        ids.remember(&a);
        assert!(ids.credential(&a.id).unwrap().1.is_sensitive());
        ids.forget(&a.id);
        ids.forget(&a.id);
        assert!(ids.credential(&a.id).is_none());
        let revoked = futures::executor::block_on(ids.revoked());
        assert_eq!(revoked, vec![a.id.clone()], "once, however often forgotten");
    }

    #[test]
    fn a_gateway_header_counts_only_from_a_trusted_proxy() {
        let ids = Identities::new(
            IdentitySource::Header {
                name: "x-user-id".into(),
                trusted_proxies: vec![
                    ("10.1.0.0".parse().unwrap(), 16),
                    ("::1".parse().unwrap(), 128),
                ],
            },
            Some(b"k"),
        );
        let h = headers("x-user-id", "u-17");
        let from = |ip: &str| ids.caller(&h, Some(SocketAddr::new(ip.parse().unwrap(), 1)));
        assert!(from("10.1.200.3").is_some());
        assert!(from("::1").is_some());
        assert!(from("10.2.0.1").is_none());
        assert!(from("127.0.0.1").is_none());
        assert!(ids.caller(&h, None).is_none());
        assert!(contains(
            "0.0.0.0".parse().unwrap(),
            0,
            "8.8.8.8".parse().unwrap()
        ));
    }
}
