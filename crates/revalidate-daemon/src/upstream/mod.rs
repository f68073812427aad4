//! The upstream fetcher: the seed's `ActionClient` over HTTP.
//!
//! Each declared action is called at `base_url` + its path template
//! (default `/actions/{action}`, the name percent-encoded as one segment):
//! `POST` with the parameters as a JSON body, or `GET` with them as a query
//! string. Only the configured origin is ever contacted: parameters go into
//! the body or the query string, never into the scheme, host or path, and
//! redirects are followed only if `[upstream] follow_redirects` allows, to
//! the same origin (`redirect`).
//!
//! Answers are classified for the engine by one pure function (`classify`):
//! connection failures are network errors, timeouts and 5xx are retried,
//! 4xx and unfollowed redirects are rejected (429 retried after its
//! `Retry-After`), and a body that is not JSON, or larger than
//! `[upstream] max_response_bytes`, is bad data, never cached. Bodies are
//! read chunk by chunk and never held past the limit. The stored ETag is
//! sent as `If-None-Match`; a `304` is a successful refresh that transfers
//! no body.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, IF_NONE_MATCH, LOCATION};
use revalidate::store::{Codec, CodecError};
use revalidate::{FetchError, FetchRequest, Fetched, Fetcher, QueryKey};
use serde_json::Value;

use crate::config::{DaemonConfig, FollowRedirects, Method, expand_env};

pub(crate) mod classify;
pub(crate) mod redact;
mod redirect;

use classify::{Answer, BodyError, Rules, classify};
use redact::Redactor;
use redirect::NotFollowed;

/// A cached upstream answer: the JSON body, byte for byte, and its validators.
#[derive(Debug, Clone)]
pub(crate) struct Payload {
    pub(crate) body: Bytes,
    /// Our strong validator of `body`, served as `ETag`, ready to send.
    pub(crate) etag: HeaderValue,
    /// The upstream's validator, sent back as `If-None-Match`.
    pub(crate) upstream_etag: Option<String>,
}

impl PartialEq for Payload {
    /// Equal bodies are equal data, whatever the validators say.
    fn eq(&self, other: &Self) -> bool {
        self.body == other.body
    }
}

impl Payload {
    pub(crate) fn new(body: Bytes, upstream_etag: Option<String>) -> Self {
        let etag =
            HeaderValue::from_str(&etag_of(&body)).expect("hex in quotes is a valid header value");
        Self {
            etag,
            body,
            upstream_etag,
        }
    }
}

/// A strong, stable ETag of a body (FNV-1a 64, hex): the same body gives
/// the same tag in every process and after every restart.
pub(crate) fn etag_of(body: &[u8]) -> String {
    let h = body.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("\"{h:016x}\"")
}

/// Stores payloads as: upstream ETag length (u16, little-endian), the
/// upstream ETag, then the body. The body is checked to be JSON again when
/// restored, so a damaged record is dropped rather than served.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PayloadCodec;

impl Codec<Payload> for PayloadCodec {
    fn encode(&self, _key: &QueryKey, value: &Payload) -> Result<Vec<u8>, CodecError> {
        let tag = value.upstream_etag.as_deref().unwrap_or("");
        let len = u16::try_from(tag.len())
            .map_err(|_| CodecError::new("upstream ETag longer than 64 KiB"))?;
        let mut out = Vec::with_capacity(2 + tag.len() + value.body.len());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(tag.as_bytes());
        out.extend_from_slice(&value.body);
        Ok(out)
    }

    fn decode(&self, _key: &QueryKey, bytes: &[u8]) -> Result<Payload, CodecError> {
        if bytes.len() < 2 {
            return Err(CodecError::new("payload record is truncated"));
        }
        let len = usize::from(u16::from_le_bytes([bytes[0], bytes[1]]));
        let rest = &bytes[2..];
        if rest.len() < len {
            return Err(CodecError::new("payload record is truncated"));
        }
        let (tag, body) = rest.split_at(len);
        let tag = std::str::from_utf8(tag).map_err(CodecError::from_source)?;
        serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(CodecError::from_source)?;
        Ok(Payload::new(
            Bytes::copy_from_slice(body),
            (!tag.is_empty()).then(|| tag.to_owned()),
        ))
    }
}

/// How one action is called.
#[derive(Debug)]
struct Route {
    method: Method,
    url: reqwest::Url,
    headers: HeaderMap,
}

/// The upstream API.
#[derive(Debug)]
pub(crate) struct Upstream {
    http: reqwest::Client,
    routes: HashMap<String, Route>,
    health: Option<reqwest::Url>,
    /// `[upstream] max_response_bytes`.
    max_response_bytes: usize,
    /// `[upstream] follow_redirects`.
    follow_redirects: FollowRedirects,
    /// Takes every configured header value out of every error message.
    redactor: Redactor,
    /// Body bytes not transferred thanks to `304 Not Modified`.
    pub(crate) bytes_saved: AtomicU64,
    /// Requests sent (fetches and probes).
    pub(crate) requests: AtomicU64,
}

/// Why the upstream could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("in {file}: header `{name}`: {problem}")]
    Header {
        file: String,
        name: String,
        problem: String,
    },
    #[error("the HTTP client could not be built: {0}")]
    Client(#[from] reqwest::Error),
}

impl Upstream {
    pub(crate) fn new(config: &DaemonConfig) -> Result<Arc<Self>, UpstreamError> {
        let u = &config.upstream;
        // Every value sent, for the redactor.
        let mut secrets: Vec<String> = Vec::new();
        let mut headers = |extra: &std::collections::BTreeMap<String, String>| -> Result<HeaderMap, UpstreamError> {
            let mut map = HeaderMap::new();
            for (name, value) in u.headers.iter().chain(extra) {
                let err = |problem: String| UpstreamError::Header {
                    file: config.file.clone(),
                    name: name.clone(),
                    problem,
                };
                let value = expand_env(value).map_err(err)?;
                let name_h = HeaderName::from_bytes(name.as_bytes()).map_err(|e| err(e.to_string()))?;
                let mut value_h = HeaderValue::from_str(&value).map_err(|e| err(e.to_string()))?;
                // Header values may carry secrets: never print them.
                value_h.set_sensitive(true);
                map.insert(name_h, value_h);
                secrets.push(value);
            }
            Ok(map)
        };
        let mut routes = HashMap::new();
        for (action, a) in &config.actions {
            let path = a.path.replace("{action}", &encode_segment(action));
            let url = join(&u.base_url, &path);
            routes.insert(
                action.clone(),
                Route {
                    method: a.method,
                    url,
                    headers: headers(&a.headers)?,
                },
            );
        }
        let http = reqwest::Client::builder()
            .timeout(u.timeout)
            .connect_timeout(u.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("revalidate/", env!("CARGO_PKG_VERSION")))
            // Followed (or not) by `fetch`, by `[upstream] follow_redirects`.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let redactor = Redactor::new(secrets.iter().map(String::as_str));
        Ok(Arc::new(Self {
            http,
            routes,
            redactor,
            health: u.health_path.as_deref().map(|p| join(&u.base_url, p)),
            max_response_bytes: u.max_response_bytes,
            follow_redirects: u.follow_redirects,
            bytes_saved: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }))
    }

    /// The actions this upstream serves, sorted.
    pub(crate) fn actions(&self) -> Vec<&str> {
        let mut a: Vec<&str> = self.routes.keys().map(String::as_str).collect();
        a.sort_unstable();
        a
    }

    pub(crate) fn knows(&self, action: &str) -> bool {
        self.routes.contains_key(action)
    }

    /// Whether the upstream answers its health path successfully; without a
    /// health path, whether it accepts a connection at all.
    pub(crate) async fn probe(&self) -> bool {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let url = self.health.clone().unwrap_or_else(|| {
            let any = self.routes.values().next().map(|r| r.url.clone());
            any.unwrap_or_else(|| reqwest::Url::parse("http://127.0.0.1/").expect("valid"))
        });
        match self.http.get(url).send().await {
            Ok(r) => {
                self.health.is_none() || r.status().is_success() || r.status().is_redirection()
            }
            Err(e) => {
                let why = describe(&e);
                tracing::debug!(target: "revalidate", "🔎 probe: upstream unreachable: {}", self.redactor.redact(&why));
                false
            }
        }
    }
}

/// Percent-encodes every byte of `s` but RFC 3986's unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`), so that an action name is one path segment
/// whatever it holds: `\` is not a separator, `%` not an escape, and
/// `%2e%2e` not a way up.
fn encode_segment(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `base` + `path`, keeping the base's own path prefix (`http://h/api` +
/// `/x` is `http://h/api/x`).
fn join(base: &reqwest::Url, path: &str) -> reqwest::Url {
    let mut url = base.clone();
    let prefix = base.path().trim_end_matches('/');
    url.set_path(&format!("{prefix}{path}"));
    url
}

/// Flattens JSON parameters into query pairs: strings as they are, numbers
/// and booleans as text, arrays as repeated names, objects as JSON text.
fn query_pairs(params: &Value) -> Vec<(String, String)> {
    let Value::Object(map) = params else {
        return Vec::new();
    };
    let mut pairs = Vec::new();
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    for (k, v) in map {
        match v {
            Value::Array(items) => pairs.extend(items.iter().map(|i| (k.clone(), text(i)))),
            v => pairs.push((k.clone(), text(v))),
        }
    }
    pairs
}

/// How much of an error answer's body is read (for its message).
const ERROR_BODY_BYTES: usize = 64 * 1024;

/// Reads a body of at most `limit` bytes chunk by chunk, so that a longer
/// one is never held in memory: reading stops as soon as it passes the
/// limit. On failure, the error and what was read before it.
async fn read_body(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<Bytes, (BodyError, Bytes)> {
    let mut body = Collected::default();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(body.into_bytes()),
            Err(e) => return Err((body_error(&e), body.into_bytes())),
        };
        let room = limit - body.len();
        if chunk.len() > room {
            body.push(chunk.slice(..room), room);
            return Err((BodyError::TooLarge, body.into_bytes()));
        }
        let expected = response
            .content_length()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0)
            .min(limit);
        body.push(chunk, expected);
    }
}

/// A body being read: most come in one chunk, kept as it is; more chunks
/// are copied into one buffer.
#[derive(Default)]
enum Collected {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Collected {
    fn len(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::One(b) => b.len(),
            Self::Many(b) => b.len(),
        }
    }

    /// Adds a chunk; `expected` is the body's announced length, if any.
    fn push(&mut self, chunk: Bytes, expected: usize) {
        *self = match std::mem::take(self) {
            Self::Empty => Self::One(chunk),
            Self::One(first) => {
                let mut all = BytesMut::with_capacity(expected.max(first.len() + chunk.len()));
                all.extend_from_slice(&first);
                all.extend_from_slice(&chunk);
                Self::Many(all)
            }
            Self::Many(mut all) => {
                all.extend_from_slice(&chunk);
                Self::Many(all)
            }
        };
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Self::Empty => Bytes::new(),
            Self::One(b) => b,
            Self::Many(b) => b.freeze(),
        }
    }
}

/// A request that got no answer: a timeout, or a network error (refused,
/// reset, closed before the answer); `failed` only for a request that could
/// not be built.
fn send_error(e: &reqwest::Error) -> FetchError {
    let why = describe(e);
    if e.is_timeout() {
        FetchError::timeout(why)
    } else if e.is_builder() {
        FetchError::failed(why)
    } else {
        FetchError::network(why)
    }
}

/// A body that could not be read in full: the timeout ran out while it
/// trickled, or the connection failed (reset, or closed before
/// `Content-Length` bytes: truncation is a transport failure too).
fn body_error(e: &reqwest::Error) -> BodyError {
    let why = describe(e);
    if e.is_timeout() {
        BodyError::Timeout(why)
    } else {
        BodyError::Network(why)
    }
}

/// A short reason for a transport error, without URLs or headers.
fn describe(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        format!("connection failed: {cause}")
    } else {
        cause.to_string()
    }
}

impl Fetcher<Payload> for Arc<Upstream> {
    /// Fetches one key; every error's message is redacted here, the one way
    /// out of this module.
    async fn fetch(&self, req: FetchRequest<'_, Payload>) -> Result<Fetched<Payload>, FetchError> {
        self.fetch_unredacted(req)
            .await
            .map_err(|e| self.redactor.error(e))
    }
}

impl Upstream {
    /// `fetch`, before redaction.
    async fn fetch_unredacted(
        &self,
        req: FetchRequest<'_, Payload>,
    ) -> Result<Fetched<Payload>, FetchError> {
        let action = req.key.action();
        let Some(route) = self.routes.get(action) else {
            return Err(FetchError::rejected(format!(
                "`{action}` is not a declared action"
            )));
        };
        let (mut url, body) = match route.method {
            Method::Post => {
                let body = if req.key.has_params() {
                    req.key.params_json().to_owned()
                } else {
                    "{}".to_owned()
                };
                (route.url.clone(), Some(Bytes::from(body)))
            }
            Method::Get => {
                let mut url = route.url.clone();
                let pairs = query_pairs(&req.key.params());
                if !pairs.is_empty() {
                    url.query_pairs_mut().extend_pairs(pairs);
                }
                (url, None)
            }
        };
        let if_none_match = req
            .previous
            .and_then(|p| p.upstream_etag.as_deref())
            .and_then(|tag| HeaderValue::from_str(tag).ok());
        // Redirects are followed here, one request per hop, by the policy of
        // `redirect` (the HTTP client itself follows none).
        let mut hops = 0;
        let (mut response, not_followed) = loop {
            let mut builder = match &body {
                Some(body) => self
                    .http
                    .post(url.clone())
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone()),
                None => self.http.get(url.clone()),
            };
            builder = builder.headers(route.headers.clone());
            if let Some(v) = &if_none_match {
                builder = builder.header(IF_NONE_MATCH, v.clone());
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let response = builder.send().await.map_err(|e| send_error(&e))?;
            let status = response.status();
            if !status.is_redirection() || status == reqwest::StatusCode::NOT_MODIFIED {
                break (response, None);
            }
            let location = response.headers().get(LOCATION);
            match redirect::follow(
                self.follow_redirects,
                route.method,
                status,
                &url,
                location,
                hops,
            ) {
                Ok(next) => {
                    hops += 1;
                    url = next;
                }
                Err(why) => break (response, Some(why)),
            }
        };
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let limit = self.max_response_bytes;
        let body = if status.is_redirection() {
            // Not followed: a rejected fetch, whatever its body says.
            Ok(Bytes::new())
        } else if !status.is_success() {
            // Only for the error's message: a snippet is enough, and a
            // failure to read it changes nothing of what the status says.
            Ok(read_body(&mut response, limit.min(ERROR_BODY_BYTES))
                .await
                .unwrap_or_else(|(_, partial)| partial))
        } else if response.content_length().is_some_and(|n| n > limit as u64) {
            // Refused on its Content-Length by the classifier: never read.
            Ok(Bytes::new())
        } else {
            read_body(&mut response, limit)
                .await
                .map_err(|(error, _)| error)
        };
        drop(response);
        let rules = Rules {
            now: SystemTime::now(),
            max_bytes: limit,
            not_followed: not_followed.unwrap_or(NotFollowed::Never),
            redactor: &self.redactor,
        };
        let fetched = classify(
            Answer {
                status,
                headers: &headers,
                body,
            },
            &rules,
        )?;
        if fetched.value().is_none()
            && let Some(prev) = req.previous
        {
            self.bytes_saved
                .fetch_add(prev.body.len() as u64, Ordering::Relaxed);
        }
        Ok(fetched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn etags_are_stable_and_differ_by_body() {
        assert_eq!(etag_of(b"{}"), etag_of(b"{}"));
        assert_ne!(etag_of(b"{}"), etag_of(b"[]"));
        assert!(etag_of(b"x").starts_with('"') && etag_of(b"x").ends_with('"'));
    }

    #[test]
    fn payloads_round_trip_through_the_codec() {
        let k = QueryKey::bare("a");
        let p = Payload::new(
            Bytes::from_static(br#"{"rows":[1]}"#),
            Some("W/\"abc\"".into()),
        );
        let bytes = PayloadCodec.encode(&k, &p).unwrap();
        let back = PayloadCodec.decode(&k, &bytes).unwrap();
        assert_eq!(back.body, p.body);
        assert_eq!(back.upstream_etag, p.upstream_etag);
        assert_eq!(back.etag, p.etag);
        assert!(PayloadCodec.decode(&k, &[1]).is_err());
        assert!(PayloadCodec.decode(&k, b"\0\0not json").is_err());
    }

    #[test]
    fn query_strings_flatten_params() {
        let pairs =
            query_pairs(&json!({"status": "active", "page": 2, "tag": ["a", "b"], "f": {"x": 1}}));
        assert_eq!(
            pairs,
            vec![
                ("f".into(), "{\"x\":1}".into()),
                ("page".into(), "2".into()),
                ("status".into(), "active".into()),
                ("tag".into(), "a".into()),
                ("tag".into(), "b".into()),
            ]
        );
        assert!(query_pairs(&Value::Null).is_empty());
    }

    #[test]
    fn action_names_are_encoded_as_one_segment() {
        assert_eq!(encode_segment("process.list"), "process.list");
        assert_eq!(encode_segment("a-b_c~d"), "a-b_c~d");
        assert_eq!(encode_segment(r"x\y"), "x%5Cy");
        assert_eq!(encode_segment("50% off"), "50%25%20off");
        assert_eq!(encode_segment("%2e%2e"), "%252e%252e");
        assert_eq!(encode_segment("é"), "%C3%A9");
        let base = reqwest::Url::parse("http://h/api/").unwrap();
        for odd in [r"x\y", "%2e%2e", "a b", "..;", "ü"] {
            let url = join(&base, &format!("/actions/{}", encode_segment(odd)));
            let segments: Vec<&str> = url.path_segments().unwrap().collect();
            assert_eq!(segments.len(), 3, "{odd}: {url}");
            assert_eq!(segments[..2], ["api", "actions"], "{odd}: {url}");
        }
    }

    #[test]
    fn paths_join_below_the_base() {
        let base = reqwest::Url::parse("http://h:1/api/").unwrap();
        assert_eq!(
            join(&base, "/actions/x").as_str(),
            "http://h:1/api/actions/x"
        );
        let base = reqwest::Url::parse("http://h:1").unwrap();
        assert_eq!(join(&base, "/health").as_str(), "http://h:1/health");
    }
}
