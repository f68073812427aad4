//! The parameters of a request, read the same from a JSON body or a query
//! string, and the list helpers every resource uses (filters, pages).

use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// The parameters of one request, from a JSON body or a query string.
#[derive(Debug, Default)]
pub(crate) struct Params(pub(crate) Map<String, Value>);

impl Params {
    /// Parameters from a `POST` body: empty or `null` is none, an object is
    /// the parameters, anything else is a `400`.
    pub(crate) fn from_body(body: &[u8]) -> Result<Self, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(Value::Null) => Ok(Self::default()),
            Ok(_) => Err(ApiError::bad_request(
                "the body must be a JSON object of parameters",
            )),
            Err(err) => Err(ApiError::bad_request(format!(
                "the body is not valid JSON: {err}"
            ))),
        }
    }

    /// Query pairs, with a repeated name becoming an array of strings, as the
    /// daemon's read API maps them.
    pub(crate) fn from_query(pairs: Vec<(String, String)>) -> Self {
        let mut grouped = Map::new();
        for (key, value) in pairs {
            if let Value::Array(values) = grouped.entry(key).or_insert_with(|| json!([])) {
                values.push(Value::String(value));
            }
        }
        // A name given once is a string; only a repeated one is a list.
        for value in grouped.values_mut() {
            if let Value::Array(values) = value
                && values.len() == 1
            {
                *value = values.pop().unwrap_or_default();
            }
        }
        Self(grouped)
    }

    /// A scalar as text (strings trimmed, numbers and booleans printed); the
    /// first element of an array; `None` when absent or empty.
    pub(crate) fn text(&self, key: &str) -> Option<String> {
        fn scalar(value: &Value) -> Option<String> {
            match value {
                Value::String(s) => Some(s.trim().to_owned()).filter(|s| !s.is_empty()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                Value::Array(values) => values.iter().find_map(scalar),
                Value::Null | Value::Object(_) => None,
            }
        }
        self.0.get(key).and_then(scalar)
    }

    /// Every value of a parameter that may be given once or as an array, in
    /// lower case for matching.
    pub(crate) fn texts(&self, key: &str) -> Vec<String> {
        match self.0.get(key) {
            Some(Value::Array(values)) => values
                .iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.trim().to_lowercase()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .filter(|s| !s.is_empty())
                .collect(),
            _ => self
                .text(key)
                .map(|s| s.to_lowercase())
                .into_iter()
                .collect(),
        }
    }

    /// A whole number in `min..=max`, `default` when absent, `400` otherwise.
    pub(crate) fn number(
        &self,
        key: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ApiError> {
        let Some(text) = self.text(key) else {
            return Ok(default);
        };
        text.parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| {
                ApiError::invalid_param(key, &format!("a whole number from {min} to {max}"))
            })
    }

    /// A boolean given as JSON or as `true`/`false`/`1`/`0`/`yes`/`no`.
    pub(crate) fn flag(&self, key: &str) -> Result<Option<bool>, ApiError> {
        let Some(text) = self.text(key) else {
            return Ok(None);
        };
        match text.to_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(Some(true)),
            "false" | "0" | "no" => Ok(Some(false)),
            _ => Err(ApiError::invalid_param(key, "true or false")),
        }
    }

    /// `page` (from 1) and `page_size` (1–100, default 20).
    pub(crate) fn page(&self) -> Result<(u64, u64), ApiError> {
        Ok((
            self.number("page", 1, 1, 100_000)?,
            self.number("page_size", 20, 1, 100)?,
        ))
    }
}

/// `true` when `wanted` is empty (no filter) or contains `value`.
pub(crate) fn matches_any(wanted: &[String], value: &str) -> bool {
    wanted.is_empty() || wanted.iter().any(|w| w.eq_ignore_ascii_case(value))
}

/// One page of `items`, with the page, its size and the totals, merged
/// into `extra`.
pub(crate) fn paginate(
    items: Vec<Value>,
    (page, page_size): (u64, u64),
    mut extra: Map<String, Value>,
) -> Value {
    let total = items.len() as u64;
    let start = usize::try_from((page - 1).saturating_mul(page_size)).unwrap_or(usize::MAX);
    let size = usize::try_from(page_size).unwrap_or(usize::MAX);
    let items: Vec<Value> = items.into_iter().skip(start).take(size).collect();
    extra.insert("items".into(), Value::Array(items));
    extra.insert("page".into(), page.into());
    extra.insert("page_size".into(), page_size.into());
    extra.insert("total".into(), total.into());
    extra.insert("total_pages".into(), total.div_ceil(page_size).into());
    Value::Object(extra)
}
