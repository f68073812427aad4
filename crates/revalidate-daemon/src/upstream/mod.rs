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

#[cfg(test)]
use crate::config::encode_segment;
use crate::config::{ActionKind, DaemonConfig, FollowRedirects, Method, expand_env};
use crate::identity::{Identities, Scopes, UserId, split_user_key};

pub(crate) mod classify;
mod forward;
pub(crate) mod redact;
mod redirect;

pub(crate) use forward::{Forwarded, Outgoing, Target};

use classify::{Answer, BodyError, Rules, classify};
use redact::Redactor;
use redirect::NotFollowed;

/// A cached upstream answer: the JSON body, byte for byte, and its validators.
///
/// Kept small, since a million of them are cached: the header values a hit
/// sends (ETag, `Content-Length`, content type) are made once, in one
/// allocation, and each hit takes views of it. Made apart, each
/// `HeaderValue` was an allocation of its own, and another one for its
/// reference count once a response cloned it.
#[derive(Debug, Clone)]
pub(crate) struct Payload {
    pub(crate) body: Bytes,
    /// Our strong validator of `body` (`headers[..etag_end]`), then the
    /// decimal `Content-Length` of `body` (`headers[etag_end..length_end]`),
    /// then the upstream's content type, if it is not `application/json`
    /// (`headers[length_end..]`). Every byte is valid in a header value.
    headers: Bytes,
    etag_end: u16,
    length_end: u16,
    /// The upstream's validator, sent back as `If-None-Match`.
    pub(crate) upstream_etag: Option<Box<str>>,
    /// `X-Revalidate-Version` as served, made by the first hit of this
    /// value when its version is past the prepared ones (`VERSIONS_PREPARED`):
    /// a value keeps its version until it changes, so later hits clone it
    /// instead of formatting (and allocating) one each.
    version_header: std::sync::OnceLock<(u64, HeaderValue)>,
}

impl PartialEq for Payload {
    /// Equal bodies are equal data, whatever the validators say.
    fn eq(&self, other: &Self) -> bool {
        self.body == other.body
    }
}

impl Payload {
    /// A payload of `body`, its ETag computed from it.
    pub(crate) fn new(body: Bytes, upstream_etag: Option<String>) -> Self {
        Self::build(body, None, upstream_etag.map(String::into_boxed_str), None)
    }

    /// `etag`: our validator of `body` when it is known (a stored record
    /// keeps it, so that hydrate does not hash every body again); it must
    /// be a valid header value, otherwise it is computed.
    /// `content_type`: kept unless it is `application/json`, the default.
    fn build(
        body: Bytes,
        etag: Option<&[u8]>,
        upstream_etag: Option<Box<str>>,
        content_type: Option<&[u8]>,
    ) -> Self {
        let computed;
        let etag = match etag.filter(|e| is_etag(e)) {
            Some(e) => e,
            None => {
                computed = etag_of(&body);
                computed.as_bytes()
            }
        };
        let content_type = content_type
            .filter(|ct| *ct != b"application/json" && HeaderValue::from_bytes(ct).is_ok())
            .unwrap_or_default();
        let digits = itoa_buf(body.len());
        let length = digits.as_str().as_bytes();
        // Exactly as long as its contents: a `Bytes` of a `Vec` whose
        // capacity is its length needs no separate reference count until
        // it is first shared.
        let mut headers = Vec::with_capacity(etag.len() + length.len() + content_type.len());
        headers.extend_from_slice(etag);
        headers.extend_from_slice(length);
        headers.extend_from_slice(content_type);
        let etag_end = u16::try_from(etag.len()).expect("is_etag bounds the length");
        let length_end = etag_end + u16::try_from(length.len()).expect("at most 20 digits");
        Self {
            body,
            headers: Bytes::from(headers),
            etag_end,
            length_end,
            upstream_etag,
            version_header: std::sync::OnceLock::new(),
        }
    }

    /// A header value of `headers[range]`, a view of it: no copy.
    fn header(&self, range: std::ops::Range<usize>) -> HeaderValue {
        HeaderValue::from_maybe_shared(self.headers.slice(range))
            .expect("checked to be a valid header value when the payload was made")
    }

    /// Our strong validator of `body`, served as `ETag`.
    pub(crate) fn etag(&self) -> HeaderValue {
        self.header(0..usize::from(self.etag_end))
    }

    /// `Content-Length` of `body` (axum would format it per response).
    pub(crate) fn content_length(&self) -> HeaderValue {
        self.header(usize::from(self.etag_end)..usize::from(self.length_end))
    }

    /// The upstream's `Content-Type`, served again on the app's own paths
    /// (`None`: `application/json`).
    pub(crate) fn content_type(&self) -> Option<HeaderValue> {
        let from = usize::from(self.length_end);
        (from < self.headers.len()).then(|| self.header(from..self.headers.len()))
    }

    /// The upstream's content type as stored (empty: `application/json`).
    fn content_type_bytes(&self) -> &[u8] {
        &self.headers[usize::from(self.length_end)..]
    }

    /// The `X-Revalidate-Version` header value of `version`, the version
    /// this payload is served with.
    pub(crate) fn version_value(&self, version: u64) -> HeaderValue {
        if let Some(prepared) = prepared_version(version) {
            return prepared;
        }
        let (prepared, value) = self
            .version_header
            .get_or_init(|| (version, HeaderValue::from(version)));
        if *prepared == version {
            value.clone()
        } else {
            HeaderValue::from(version) // not the version it was first served with
        }
    }

    /// The same payload, with the upstream's content type (a JSON one only:
    /// anything else was refused as bad data before).
    #[must_use]
    pub(crate) fn with_content_type(self, content_type: Option<HeaderValue>) -> Self {
        match content_type {
            Some(ct) if ct.as_bytes() != b"application/json" => {
                let etag = self.headers.slice(..usize::from(self.etag_end));
                Self::build(
                    self.body,
                    Some(&etag),
                    self.upstream_etag,
                    Some(ct.as_bytes()),
                )
            }
            _ => self,
        }
    }
}

/// `n` in decimal, without an allocation.
fn itoa_buf(n: usize) -> Digits {
    let mut d = Digits::default();
    let mut n = n;
    loop {
        d.len += 1;
        d.buf[20 - d.len] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break d;
        }
    }
}

/// Up to 20 decimal digits (any `u64`), at the end of `buf`.
#[derive(Default)]
struct Digits {
    buf: [u8; 20],
    len: usize,
}

impl Digits {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[20 - self.len..]).expect("ASCII digits")
    }
}

/// Versions below this are served from one table made once for the
/// process: most values never change that often, and a value served with
/// one of them holds no header of its own (two allocations each otherwise).
const VERSIONS_PREPARED: usize = 4096;

/// The `X-Revalidate-Version` value of `version` from the prepared table:
/// views of one static text, so that a clone is a copy of two words, with
/// no reference count for the threads serving hits to share.
fn prepared_version(version: u64) -> Option<HeaderValue> {
    static TABLE: std::sync::LazyLock<Vec<HeaderValue>> = std::sync::LazyLock::new(|| {
        let mut text = String::new();
        let mut ends = Vec::with_capacity(VERSIONS_PREPARED);
        for v in 0..VERSIONS_PREPARED {
            text.push_str(itoa_buf(v).as_str());
            ends.push(text.len());
        }
        // Made once and kept for the life of the process (15 KiB).
        let text: &'static str = Box::leak(text.into_boxed_str());
        let mut start = 0;
        ends.into_iter()
            .map(|end| {
                let value = HeaderValue::from_static(&text[start..end]);
                start = end;
                value
            })
            .collect()
    });
    usize::try_from(version)
        .ok()
        .and_then(|v| TABLE.get(v))
        .cloned()
}

/// Whether `etag` can be served as our ETag: a short, valid header value.
fn is_etag(etag: &[u8]) -> bool {
    !etag.is_empty() && etag.len() <= 256 && HeaderValue::from_bytes(etag).is_ok()
}

/// A strong, stable ETag of a body (FNV-1a 64, hex): the same body gives
/// the same tag in every process and after every restart.
pub(crate) fn etag_of(body: &[u8]) -> String {
    let h = body.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("\"{h:016x}\"")
}

/// Stores payloads as: a marker (`FF FE 03`), the content type, the
/// upstream ETag and our ETag of the body (each a u16 little-endian length
/// and its bytes), then the body. Our ETag is kept so that hydrate does not
/// hash every body again (a tenth of a million entries' hydrate). Records
/// of the two earlier layouts are still read, their ETag computed: marker
/// `FF FE 02` without our ETag, and, before the content type was kept, no
/// marker (the upstream ETag's length first). The body is checked to be
/// JSON again when restored, so a damaged record is dropped rather than
/// served.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PayloadCodec;

/// Marks the layout with our ETag; an older record starts with an ETag
/// length, which is never 0xFEFF with a third byte of 2 or 3 in practice (a
/// 65 279-byte ETag), and would not decode as JSON after it anyway.
const PAYLOAD_FORMAT_3: [u8; 3] = [0xFF, 0xFE, 0x03];
/// Marks the layout before our ETag was kept.
const PAYLOAD_FORMAT_2: [u8; 3] = [0xFF, 0xFE, 0x02];

fn push_field(out: &mut Vec<u8>, field: &[u8], what: &str) -> Result<(), CodecError> {
    let len = u16::try_from(field.len())
        .map_err(|_| CodecError::new(format!("{what} longer than 64 KiB")))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(field);
    Ok(())
}

fn take_field<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], CodecError> {
    let truncated = || CodecError::new("payload record is truncated");
    if rest.len() < 2 {
        return Err(truncated());
    }
    let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
    if rest.len() < 2 + len {
        return Err(truncated());
    }
    let (field, tail) = rest[2..].split_at(len);
    *rest = tail;
    Ok(field)
}

impl Codec<Payload> for PayloadCodec {
    fn encode(&self, _key: &QueryKey, value: &Payload) -> Result<Vec<u8>, CodecError> {
        let tag = value.upstream_etag.as_deref().unwrap_or("");
        let ct = value.content_type_bytes();
        let etag = &value.headers[..usize::from(value.etag_end)];
        let mut out = Vec::with_capacity(9 + ct.len() + tag.len() + etag.len() + value.body.len());
        out.extend_from_slice(&PAYLOAD_FORMAT_3);
        push_field(&mut out, ct, "content type")?;
        push_field(&mut out, tag.as_bytes(), "upstream ETag")?;
        push_field(&mut out, etag, "ETag")?;
        out.extend_from_slice(&value.body);
        Ok(out)
    }

    fn decode(&self, _key: &QueryKey, bytes: &[u8]) -> Result<Payload, CodecError> {
        let mut rest = bytes;
        let format_3 = bytes.starts_with(&PAYLOAD_FORMAT_3);
        let content_type = if format_3 || bytes.starts_with(&PAYLOAD_FORMAT_2) {
            rest = &bytes[3..];
            let ct = take_field(&mut rest)?;
            if !ct.is_empty() {
                HeaderValue::from_bytes(ct).map_err(CodecError::from_source)?;
            }
            Some(ct)
        } else {
            None
        };
        let tag = take_field(&mut rest)?;
        let tag = std::str::from_utf8(tag).map_err(CodecError::from_source)?;
        let etag = if format_3 {
            Some(take_field(&mut rest)?)
        } else {
            None
        };
        serde_json::from_slice::<serde::de::IgnoredAny>(rest).map_err(CodecError::from_source)?;
        Ok(Payload::build(
            Bytes::copy_from_slice(rest),
            etag,
            (!tag.is_empty()).then(|| tag.into()),
            content_type,
        ))
    }
}

/// How one action is called.
#[derive(Debug)]
struct Route {
    method: Method,
    url: reqwest::Url,
    headers: HeaderMap,
    kind: ActionKind,
    /// The key of a read without parameters, made once, for a shared query
    /// (a per-user query's key is each caller's own; a mutation is not read).
    bare_key: Option<QueryKey>,
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
    /// `[upstream] base_url`, for `[server] passthrough`.
    base_url: reqwest::Url,
    /// Which actions are per-user.
    scopes: Arc<Scopes>,
    /// The callers' credentials, for their per-user queries.
    identities: Option<Arc<Identities>>,
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
    /// The upstream of `config`; per-user actions (`scopes`) are fetched
    /// with the credentials `identities` holds.
    pub(crate) fn new(
        config: &DaemonConfig,
        scopes: Arc<Scopes>,
        identities: Option<Arc<Identities>>,
    ) -> Result<Arc<Self>, UpstreamError> {
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
            let url = join(&u.base_url, &a.local_path(action));
            routes.insert(
                action.clone(),
                Route {
                    method: a.method,
                    url,
                    headers: headers(&a.headers)?,
                    kind: a.kind,
                    bare_key: (a.kind == ActionKind::Query && !scopes.is_user(action))
                        .then(|| QueryKey::bare(action)),
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
            base_url: u.base_url.clone(),
            scopes,
            identities,
            health: u.health_path.as_deref().map(|p| join(&u.base_url, p)),
            max_response_bytes: u.max_response_bytes,
            follow_redirects: u.follow_redirects,
            bytes_saved: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }))
    }

    /// The query actions this upstream serves (the ones a read may name),
    /// sorted.
    pub(crate) fn actions(&self) -> Vec<&str> {
        let mut a: Vec<&str> = self
            .routes
            .iter()
            .filter(|(_, r)| r.kind == ActionKind::Query)
            .map(|(name, _)| name.as_str())
            .collect();
        a.sort_unstable();
        a
    }

    /// Whether `action` is a declared query (a mutation is not read).
    pub(crate) fn knows(&self, action: &str) -> bool {
        self.routes
            .get(action)
            .is_some_and(|r| r.kind == ActionKind::Query)
    }

    /// The key of a read of `action` without parameters, when it is a
    /// declared shared query (what a read would build with `QueryKey::bare`).
    pub(crate) fn bare_key(&self, action: &str) -> Option<&QueryKey> {
        self.routes.get(action)?.bare_key.as_ref()
    }

    /// Which actions are per-user.
    pub(crate) fn scopes(&self) -> &Arc<Scopes> {
        &self.scopes
    }

    /// The callers' credentials (`None` without `[identity]`).
    pub(crate) fn identities(&self) -> Option<&Arc<Identities>> {
        self.identities.as_ref()
    }

    /// Whether the upstream answers its health path successfully; without a
    /// health path, whether it answers at all: a `HEAD` of `base_url`, which
    /// no server may treat as a change (an action's path might be a
    /// mutation's).
    pub(crate) async fn probe(&self) -> bool {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let request = match &self.health {
            Some(url) => self.http.get(url.clone()),
            None => self.http.head(self.base_url.clone()),
        };
        match request.send().await {
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

/// A body being read: most come in one chunk; more chunks are copied into
/// one buffer of the announced length.
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
            // A chunk is a view of the connection's read buffer (8 KiB and
            // more): kept as it is, a cached 1 KB body would hold all of
            // it for as long as it is cached. One copy per fetch instead.
            Self::One(b) => Bytes::copy_from_slice(&b),
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

/// The caller a per-user query is fetched as.
struct AsUser {
    id: UserId,
    credential: (HeaderName, HeaderValue),
    /// The configured secrets and this credential.
    redactor: Redactor,
}

impl Fetcher<Payload> for Arc<Upstream> {
    /// Fetches one key; every error's message is redacted here, the one way
    /// out of this module.
    async fn fetch(&self, req: FetchRequest<'_, Payload>) -> Result<Fetched<Payload>, FetchError> {
        let action = req.key.action();
        if !self.scopes.is_user(action) {
            return self
                .fetch_unredacted(req, None)
                .await
                .map_err(|e| self.redactor.error(e));
        }
        // A per-user query: fetched as its owner, with their credential.
        let Some((id, params)) = split_user_key(req.key) else {
            return Err(FetchError::rejected(format!(
                "`{action}` is per-user and this key names no user"
            )));
        };
        let credential = self.identities.as_ref().and_then(|i| i.credential(&id));
        let Some(credential) = credential else {
            // After a restart, or after the upstream refused it: the
            // query is dropped; the user's next read fetches it again.
            if let Some(identities) = &self.identities {
                identities.forget(&id);
            }
            return Err(FetchError::rejected(
                "no credential is held for this query's user (refused by the upstream, or the daemon restarted)",
            ));
        };
        let redactor = self
            .redactor
            .with(&String::from_utf8_lossy(credential.1.as_bytes()));
        let user = AsUser {
            id,
            credential,
            redactor,
        };
        let result = self.fetch_unredacted(req, Some((&user, params))).await;
        result.map_err(|e| user.redactor.error(e))
    }
}

impl Upstream {
    /// `fetch`, before redaction; `as_user` for a per-user query, with its
    /// own parameters.
    async fn fetch_unredacted(
        &self,
        req: FetchRequest<'_, Payload>,
        as_user: Option<(&AsUser, Value)>,
    ) -> Result<Fetched<Payload>, FetchError> {
        let action = req.key.action();
        let Some(route) = self.routes.get(action) else {
            return Err(FetchError::rejected(format!(
                "`{action}` is not a declared action"
            )));
        };
        let (user, own_params) = match as_user {
            Some((user, params)) => (Some(user), Some(params)),
            None => (None, None),
        };
        let (mut url, body) = match route.method {
            Method::Post => {
                let body = match &own_params {
                    Some(Value::Null) => "{}".to_owned(),
                    Some(params) => params.to_string(),
                    None if req.key.has_params() => req.key.params_json().to_owned(),
                    None => "{}".to_owned(),
                };
                (route.url.clone(), Some(Bytes::from(body)))
            }
            Method::Get => {
                let mut url = route.url.clone();
                let pairs = query_pairs(&own_params.unwrap_or_else(|| req.key.params()));
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
            if let Some(user) = user {
                let (name, value) = &user.credential;
                builder = builder.header(name.clone(), value.clone());
            }
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
        if let Some(user) = user
            && matches!(status.as_u16(), 401 | 403)
        {
            // The upstream refused this user's credential: forget it; the
            // daemon drops their queries and stops refreshing them.
            if let Some(identities) = &self.identities {
                identities.forget(&user.id);
            }
            return Err(FetchError::rejected(format!(
                "the upstream refused this user's credential ({status})"
            ))
            .with_status(status.as_u16()));
        }
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
            redactor: user.map_or(&self.redactor, |u| &u.redactor),
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
        assert_eq!(back.etag(), p.etag());
        assert!(PayloadCodec.decode(&k, &[1]).is_err());
        assert!(PayloadCodec.decode(&k, b"\0\0not json").is_err());
        // With its content type, kept.
        let typed = p.clone().with_content_type(Some(HeaderValue::from_static(
            "application/vnd.api+json; charset=utf-8",
        )));
        let back = PayloadCodec
            .decode(&k, &PayloadCodec.encode(&k, &typed).unwrap())
            .unwrap();
        assert_eq!(back.content_type(), typed.content_type());
        // A record of the first layout (ETag length, ETag, body) still reads.
        let mut old = vec![7, 0];
        old.extend_from_slice(b"W/\"abc\"");
        old.extend_from_slice(br#"{"rows":[1]}"#);
        let back = PayloadCodec.decode(&k, &old).unwrap();
        assert_eq!(
            (back.content_type(), back.body, back.upstream_etag),
            (None, p.body, p.upstream_etag)
        );
    }

    #[test]
    fn a_payload_prepares_its_headers_in_one_buffer() {
        let body = Bytes::from_static(br#"{"rows":[1,2,3]}"#);
        let p = Payload::new(body.clone(), None);
        assert_eq!(p.etag().as_bytes(), etag_of(&body).as_bytes());
        assert_eq!(p.content_length().as_bytes(), b"16");
        assert_eq!(p.content_type(), None);
        let json = p
            .clone()
            .with_content_type(Some(HeaderValue::from_static("application/json")));
        assert_eq!(json.content_type(), None);
        let typed = p.with_content_type(Some(HeaderValue::from_static("application/problem+json")));
        assert_eq!(typed.content_type().unwrap(), "application/problem+json");
        assert_eq!(typed.etag().as_bytes(), etag_of(&body).as_bytes());
        assert_eq!(typed.content_length(), "16");
        // An empty body has a length of 0, and its own ETag.
        let empty = Payload::new(Bytes::new(), None);
        assert_eq!(empty.content_length(), "0");
        assert_eq!(empty.etag().as_bytes(), etag_of(b"").as_bytes());
        // Versions: the prepared table, then the first one served past it.
        for v in [0, 1, 9, 10, 4095, 4096, 123_456, u64::MAX] {
            assert_eq!(typed.version_value(v), v.to_string().as_str(), "{v}");
        }
        assert_eq!(typed.version_value(4096), "4096");
        assert_eq!(typed.version_value(4097), "4097");
    }

    #[test]
    fn payloads_stay_small() {
        // A million of them are cached: 144 bytes and the Arc's two counts
        // fill jemalloc's 160-byte class (256 before the headers shared a
        // buffer).
        assert!(
            std::mem::size_of::<Payload>() <= 144,
            "{}",
            std::mem::size_of::<Payload>()
        );
    }

    #[test]
    fn a_stored_etag_is_kept_and_older_layouts_still_read() {
        let k = QueryKey::bare("a");
        let body = br#"{"rows":[1]}"#;
        let record = |etag: &[u8]| {
            let mut r = PAYLOAD_FORMAT_3.to_vec();
            push_field(&mut r, b"", "").unwrap();
            push_field(&mut r, b"W/\"up\"", "").unwrap();
            push_field(&mut r, etag, "").unwrap();
            r.extend_from_slice(body);
            r
        };
        // The stored ETag is served as it is: hydrate hashes nothing.
        let back = PayloadCodec.decode(&k, &record(b"\"stored\"")).unwrap();
        assert_eq!(back.etag(), "\"stored\"");
        assert_eq!(back.upstream_etag.as_deref(), Some("W/\"up\""));
        assert_eq!(&back.body[..], body);
        // One that could not be served is made again from the body.
        for bad in [&b""[..], b"bad\nline"] {
            let back = PayloadCodec.decode(&k, &record(bad)).unwrap();
            assert_eq!(back.etag().as_bytes(), etag_of(body).as_bytes());
        }
        // What encode writes keeps it.
        let p = Payload::new(Bytes::from_static(body), None);
        let bytes = PayloadCodec.encode(&k, &p).unwrap();
        assert!(bytes.starts_with(&PAYLOAD_FORMAT_3));
        assert_eq!(PayloadCodec.decode(&k, &bytes).unwrap().etag(), p.etag());
        // The second layout (content type, upstream ETag, body): the ETag
        // is computed, the content type kept.
        let mut v2 = PAYLOAD_FORMAT_2.to_vec();
        push_field(&mut v2, b"application/vnd.api+json", "").unwrap();
        push_field(&mut v2, b"", "").unwrap();
        v2.extend_from_slice(body);
        let back = PayloadCodec.decode(&k, &v2).unwrap();
        assert_eq!(back.etag().as_bytes(), etag_of(body).as_bytes());
        assert_eq!(back.content_type().unwrap(), "application/vnd.api+json");
        assert_eq!(back.upstream_etag, None);
        assert_eq!(back.content_length(), body.len().to_string().as_str());
        // A truncated record of the third layout is an error, not a panic.
        let full = record(b"\"stored\"");
        for cut in 0..full.len() - body.len() {
            assert!(PayloadCodec.decode(&k, &full[..cut]).is_err(), "{cut}");
        }
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
