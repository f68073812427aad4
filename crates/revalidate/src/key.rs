//! Query keys: an action name plus canonical parameters.
//!
//! A key is what the seed calls `queryKey`: `["process.list", { status: "active" }]`.
//! Two keys are equal when their actions are equal and their parameters are
//! equal *as data*: object member order does not matter, and `1.0` equals `1`.
//! To make that cheap, parameters are rendered once, at construction, to a
//! canonical JSON text (sorted object members, integral floats written as
//! integers), and the key's hash is computed once from that text. Lookups then
//! hash nothing: they read the stored hash.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use serde::Serialize;
use serde_json::Value;

/// Identifies one cached query: an action (`"process.list"`) and its parameters.
///
/// Cloning a key is a reference-count increment. Keys are cheap to compare and
/// to hash: the hash is computed once, when the key is built.
///
/// ```
/// use revalidate::QueryKey;
/// use serde_json::json;
///
/// let a = QueryKey::new("process.list", json!({ "status": "active", "page": 2 }));
/// let b = QueryKey::new("process.list", json!({ "page": 2.0, "status": "active" }));
/// assert_eq!(a, b);
/// assert_eq!(a.action(), "process.list");
/// assert_eq!(a.params_json(), r#"{"page":2,"status":"active"}"#);
/// assert_eq!(a.to_string(), r#"process.list{"page":2,"status":"active"}"#);
/// ```
#[derive(Clone)]
pub struct QueryKey {
    /// Inline, so hashing a key and rejecting unequal keys never leave the
    /// map's node.
    hash: u64,
    /// The action, then (if the key has parameters) a NUL and the canonical
    /// parameter JSON. One shared allocation for both; the separator keeps
    /// the key at 24 bytes, which every map node and deadline holds.
    text: Arc<str>,
}

/// Separates the action from the parameters in a key's text. Canonical JSON
/// never contains a raw NUL (it is escaped in strings), and action names may not.
const SEPARATOR: char = '\0';

/// The process-wide seed for key hashes. Random per process so that keys built
/// from untrusted input (the daemon's URLs) cannot be chosen to collide.
fn hash_state() -> &'static foldhash::quality::RandomState {
    static STATE: OnceLock<foldhash::quality::RandomState> = OnceLock::new();
    STATE.get_or_init(foldhash::quality::RandomState::default)
}

impl QueryKey {
    /// Builds a key from an action name and JSON parameters.
    ///
    /// `Value::Null` means "no parameters" and renders as the bare action.
    ///
    /// # Panics
    ///
    /// If `action` contains a NUL character.
    pub fn new(action: impl AsRef<str>, params: Value) -> Self {
        let action = action.as_ref();
        assert!(
            !action.contains(SEPARATOR),
            "an action name may not contain a NUL character: {action:?}"
        );
        let mut text = String::with_capacity(action.len() + 32);
        text.push_str(action);
        if !params.is_null() {
            text.push(SEPARATOR);
            write_canonical(&params, &mut text);
        }
        Self::from_text(text)
    }

    /// Builds a key for an action without parameters.
    ///
    /// ```
    /// use revalidate::QueryKey;
    /// let k = QueryKey::bare("system_health");
    /// assert_eq!(k.params_json(), "");
    /// assert_eq!(k, QueryKey::new("system_health", serde_json::Value::Null));
    /// assert_eq!(k, QueryKey::from("system_health"));
    /// ```
    pub fn bare(action: impl AsRef<str>) -> Self {
        Self::new(action, Value::Null)
    }

    /// Builds a key from an action and any serializable parameters.
    ///
    /// # Errors
    ///
    /// Fails when `params` cannot be represented as JSON (for example a map
    /// with non-string keys).
    pub fn with_params<P: Serialize + ?Sized>(
        action: impl AsRef<str>,
        params: &P,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self::new(action, serde_json::to_value(params)?))
    }

    /// A key from a text built by [`QueryKey::new`] (action, NUL, canonical
    /// params), as stores keep it.
    pub(crate) fn from_canonical_text(text: &str) -> Self {
        Self::from_text(text.to_owned())
    }

    fn from_text(text: String) -> Self {
        let hash = hash_state().hash_one(text.as_bytes());
        Self {
            hash,
            text: text.into(),
        }
    }

    /// The action name, e.g. `"process.list"`.
    pub fn action(&self) -> &str {
        self.text
            .split_once(SEPARATOR)
            .map_or(&self.text, |(action, _)| action)
    }

    /// The canonical JSON of the parameters; empty when the key has none.
    ///
    /// Fetchers can send this text as a request body as it is.
    pub fn params_json(&self) -> &str {
        self.text
            .split_once(SEPARATOR)
            .map_or("", |(_, params)| params)
    }

    /// Whether the key carries parameters.
    pub fn has_params(&self) -> bool {
        !self.params_json().is_empty()
    }

    /// The parameters as a JSON value (`Value::Null` when there are none).
    ///
    /// This parses the canonical text; it is meant for fetchers and
    /// diagnostics, not for hot paths.
    pub fn params(&self) -> Value {
        if self.has_params() {
            serde_json::from_str(self.params_json()).expect("canonical params are valid JSON")
        } else {
            Value::Null
        }
    }

    /// Deserializes the parameters into a typed value.
    ///
    /// # Errors
    ///
    /// Fails when the parameters do not match `T`.
    pub fn params_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        if self.has_params() {
            serde_json::from_str(self.params_json())
        } else {
            T::deserialize(Value::Null)
        }
    }

    /// The default resource type of this key's action: the text before the
    /// first `.` (`rule.search` → `rule`; `system_health` → `system_health`).
    ///
    /// A [`Policy`](crate::Policy) may map an action to another resource.
    pub fn default_resource(&self) -> &str {
        default_resource(self.action())
    }

    /// The key's text: the action, then a NUL and the parameters if any.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// A hash of the key that is the same in every process (FNV-1a of the
    /// text). For spreading work (jitter), where runs and restarts should
    /// agree; never for maps, where keys from outside could collide on purpose.
    pub(crate) fn stable_hash(&self) -> u64 {
        self.text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }
}

/// A key's text alone, in the same order as keys: the ordered index of the
/// cache's keys holds these. 16 bytes, and no copy: it shares the key's
/// allocation (a reference count).
///
/// Comparing texts byte by byte is comparing keys: the action comes first,
/// and the separator (NUL, which no action contains) sorts below every
/// other byte, so a shorter action sorts first just as it does in
/// `(action, params)` order.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct KeyText(Arc<str>);

impl KeyText {
    /// The key again (its hash computed anew: for listings, not hot paths).
    pub(crate) fn to_key(&self) -> QueryKey {
        QueryKey {
            hash: hash_state().hash_one(self.0.as_bytes()),
            text: self.0.clone(),
        }
    }
}

impl std::borrow::Borrow<str> for KeyText {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_key(), f)
    }
}

impl QueryKey {
    /// The key's text, sharing its allocation (see [`KeyText`]).
    pub(crate) fn key_text(&self) -> KeyText {
        KeyText(self.text.clone())
    }
}

/// The resource type of an action by the default rule: the text before the
/// first `.`, or the whole action when it has no dot.
pub fn default_resource(action: &str) -> &str {
    action
        .split_once('.')
        .map_or(action, |(resource, _)| resource)
}

impl From<&str> for QueryKey {
    /// A key without parameters.
    fn from(action: &str) -> Self {
        Self::bare(action)
    }
}

impl PartialEq for QueryKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && (Arc::ptr_eq(&self.text, &other.text) || self.text == other.text)
    }
}

impl Eq for QueryKey {}

impl Hash for QueryKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialOrd for QueryKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for QueryKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.action(), self.params_json()).cmp(&(other.action(), other.params_json()))
    }
}

impl fmt::Display for QueryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.action())?;
        f.write_str(self.params_json())
    }
}

impl fmt::Debug for QueryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QueryKey({self})")
    }
}

impl Serialize for QueryKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A [`BuildHasher`] for maps keyed by [`QueryKey`]: it passes the key's
/// precomputed hash through instead of hashing again.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyHasher;

/// The [`Hasher`] of [`KeyHasher`].
#[derive(Debug, Default)]
pub struct PassThroughHasher(u64);

impl BuildHasher for KeyHasher {
    type Hasher = PassThroughHasher;
    fn build_hasher(&self) -> PassThroughHasher {
        PassThroughHasher(0)
    }
}

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `QueryKey` is meant to be hashed with this hasher, and it calls
        // `write_u64`. Anything else still gets a correct (if slow) hash.
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(buf));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = if self.0 == 0 {
            n
        } else {
            (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95)
        };
    }
}

/// Writes `value` as canonical JSON: object members sorted by key, floats
/// with an integral value written as integers, no whitespace.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            // serde_json's map may preserve insertion order (feature
            // `preserve_order`), so sort here rather than rely on it.
            members.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_string(k, out);
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        Value::Number(n) => match n.as_f64() {
            Some(f) if !n.is_i64() && !n.is_u64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
                // Exactly representable integers: `2.0` and `2` are the same data.
                #[allow(clippy::cast_possible_truncation)]
                out.push_str(&(f as i64).to_string());
            }
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => push_json_string(s, out),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Null => out.push_str("null"),
    }
}

fn push_json_string(s: &str, out: &mut String) {
    out.push_str(&serde_json::to_string(s).expect("strings always serialize"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    #[test]
    fn canonical_params_are_a_fixed_point_for_large_floats() {
        // Found by the fuzzer: without exact float parsing, `11E50` read as
        // 1.1000000000000001e51, whose text read back as 1.1e51: two keys
        // for one datum.
        for text in [
            "11E50",
            "[1.7976931348623157e308, -2.2250738585072014e-308]",
            "{\"x\": 9.0e15}",
        ] {
            let params: Value = serde_json::from_str(text).unwrap();
            let key = QueryKey::new("a", params);
            assert_eq!(key, QueryKey::new("a", key.params()), "{text}");
        }
    }

    #[test]
    fn member_order_does_not_matter() {
        let a = QueryKey::new("p.list", json!({"a": 1, "b": {"y": [1, 2], "x": null}}));
        let b = QueryKey::new("p.list", json!({"b": {"x": null, "y": [1, 2]}, "a": 1}));
        assert_eq!(a, b);
        assert_eq!(a.hash, b.hash);
        let mut m = HashMap::with_hasher(KeyHasher);
        m.insert(a, 1);
        assert_eq!(m.get(&b), Some(&1));
    }

    #[test]
    fn different_data_is_a_different_key() {
        let a = QueryKey::new("p.list", json!({"a": 1}));
        assert_ne!(a, QueryKey::new("p.list", json!({"a": 2})));
        assert_ne!(a, QueryKey::new("p.lis", json!({"a": 1})));
        assert_ne!(a, QueryKey::new("p.list", json!({"a": "1"})));
        // The action/params boundary is part of identity.
        assert_ne!(
            QueryKey::new("ab", json!(1)),
            QueryKey::new("a", json!("b1"))
        );
        assert_ne!(
            QueryKey::new("a1", Value::Null),
            QueryKey::new("a", json!(1))
        );
    }

    #[test]
    fn integral_floats_equal_integers() {
        assert_eq!(
            QueryKey::new("x", json!({"page": 2.0})),
            QueryKey::new("x", json!({"page": 2}))
        );
        assert_eq!(QueryKey::new("x", json!(1.5)).params_json(), "1.5");
    }

    #[test]
    fn resource_is_text_before_first_dot() {
        assert_eq!(QueryKey::bare("rule.search").default_resource(), "rule");
        assert_eq!(QueryKey::bare("a.b.c").default_resource(), "a");
        assert_eq!(
            QueryKey::bare("system_health").default_resource(),
            "system_health"
        );
    }

    #[test]
    fn params_round_trip() {
        #[derive(serde::Deserialize, Serialize, PartialEq, Debug)]
        struct Filter {
            status: String,
        }
        let k = QueryKey::with_params(
            "process.list",
            &Filter {
                status: "on".into(),
            },
        )
        .unwrap();
        assert_eq!(k.params(), json!({"status": "on"}));
        assert_eq!(
            k.params_as::<Filter>().unwrap(),
            Filter {
                status: "on".into()
            }
        );
        assert_eq!(QueryKey::bare("a").params(), Value::Null);
        assert_eq!(
            QueryKey::bare("a").params_as::<Option<Filter>>().unwrap(),
            None
        );
    }

    #[test]
    fn key_texts_sort_as_keys_and_round_trip() {
        let keys = [
            QueryKey::bare("a"),
            QueryKey::bare("a.b"),
            QueryKey::bare("ab"),
            QueryKey::new("a", json!(1)),
            QueryKey::new("a", json!({"x": 1})),
            QueryKey::new("a", json!({"x": "\u{0}"})),
            QueryKey::new("a.b", json!([1, 2])),
            QueryKey::new("a.", json!(null)),
            QueryKey::new("a!", json!("z")),
            QueryKey::new("b", json!(0)),
        ];
        for a in &keys {
            for b in &keys {
                assert_eq!(a.cmp(b), a.key_text().cmp(&b.key_text()), "{a:?} {b:?}");
            }
            assert_eq!(a.key_text().to_key(), *a);
            assert_eq!(a.key_text().to_key().hash, a.hash);
        }
        assert_eq!(std::mem::size_of::<KeyText>(), 16);
    }

    #[test]
    fn a_key_is_24_bytes() {
        // Every map node and every deadline holds one.
        assert_eq!(std::mem::size_of::<QueryKey>(), 24);
    }

    #[test]
    #[should_panic(expected = "may not contain a NUL")]
    fn actions_with_nul_are_refused() {
        let _ = QueryKey::bare("a\0b");
    }

    #[test]
    fn a_nul_inside_params_is_escaped() {
        let k = QueryKey::new("a", json!({"q": "x\u{0}y"}));
        assert_eq!(k.action(), "a");
        assert_eq!(k.params(), json!({"q": "x\u{0}y"}));
    }

    #[test]
    fn strings_are_escaped() {
        let k = QueryKey::new("a", json!({"q": "say \"hi\"\n"}));
        assert_eq!(k.params_json(), r#"{"q":"say \"hi\"\n"}"#);
        assert_eq!(k.params(), json!({"q": "say \"hi\"\n"}));
    }
}
