//! The daemon's configuration file (`revalidate.toml`).
//!
//! The engine's tables (`profile`, `[staleness]`, `[overrides]`,
//! `[profiles.*]`, `[refresh]`, `[actions.*].resource`) are read by
//! `revalidate::Config`; this module reads the daemon's own (`[server]`,
//! `[store]`, `[upstream]`, and how to fetch each action) with the same
//! reader, so every mistake gets the same kind of message: file, line,
//! column, key, what was found, what is accepted, and a suggestion.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use revalidate::config::{ConfigErrorKind, ConfigErrors, Table, read};
use toml::de::{DeTable, DeValue};

/// How to call one action upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ActionConfig {
    pub(crate) method: Method,
    /// Path template below `base_url`; `{action}` becomes the action name.
    pub(crate) path: String,
    /// Headers for this action only, before `${ENV}` expansion.
    pub(crate) headers: BTreeMap<String, String>,
    /// A query (cached) or a mutation (forwarded, then invalidating).
    pub(crate) kind: ActionKind,
    /// For a mutation: the actions and resources a success invalidates.
    pub(crate) invalidates: Vec<String>,
    /// Whose data it is: `None` means the resource's `[scope]`, else shared.
    pub(crate) scope: Option<Scope>,
}

impl ActionConfig {
    /// The action's path below `base_url`: its template with `{action}`
    /// as one encoded segment. The daemon answers on it too.
    pub(crate) fn local_path(&self, name: &str) -> String {
        self.path.replace("{action}", &encode_segment(name))
    }
}

/// Percent-encodes every byte of `s` but RFC 3986's unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`), so that an action name is one path segment
/// whatever it holds: `\` is not a separator, `%` not an escape, and
/// `%2e%2e` not a way up.
pub(crate) fn encode_segment(s: &str) -> String {
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

/// What an action does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ActionKind {
    /// Reads data: cached and kept fresh.
    Query,
    /// Changes data: forwarded, never cached; a success invalidates.
    Mutation,
}

/// Whose data an action reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The same for every caller.
    Shared,
    /// Each caller's own, keyed by their identity.
    User,
}

/// `[identity]`: how the daemon knows who calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IdentityConfig {
    pub(crate) source: IdentitySource,
    /// The environment variable holding the secret that identities are
    /// hashed with (unset: a random one per process, so per-user keys do
    /// not survive a restart).
    pub(crate) secret_env: Option<String>,
}

/// Where a caller's identity comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum IdentitySource {
    /// The caller's `Authorization` header, forwarded upstream as their own
    /// credential.
    Authorization,
    /// A header set by a gateway that authenticated the user, trusted only
    /// from these peers.
    Header {
        name: String,
        trusted_proxies: Vec<(std::net::IpAddr, u8)>,
    },
}

/// The HTTP method of an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    /// Parameters as a JSON body.
    Post,
    /// Parameters as a query string.
    Get,
}

/// Which redirects from the upstream are followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FollowRedirects {
    /// None: a `3xx` is a rejected fetch.
    Never,
    /// Up to 5 in a row to the same scheme, host and port, for GET actions
    /// or with 307/308.
    SameOrigin,
}

/// What to do when the store cannot be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnStoreError {
    /// Exit with the error.
    Fail,
    /// Warn, and run with a memory-only cache.
    Memory,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ServerConfig {
    pub(crate) listen: SocketAddr,
    /// The environment variable holding the admin token (`None`: admin off).
    pub(crate) admin_token_env: Option<String>,
    /// Longest accepted query string, in bytes.
    pub(crate) max_query_bytes: usize,
    /// Largest accepted request body, in bytes.
    pub(crate) max_body_bytes: usize,
    /// Change events kept for `Last-Event-ID` resumption.
    pub(crate) event_replay: usize,
    /// With `?include=data`, a change event carries the value up to this
    /// many bytes; above, `data_omitted`.
    pub(crate) event_data_max_bytes: usize,
    /// How long a stop waits for open requests before it closes them.
    pub(crate) shutdown_grace: Duration,
    /// How long a client may take to send a request's head, from its first
    /// byte.
    pub(crate) header_read_timeout: Duration,
    /// How long a connection may stay open with no request in flight.
    pub(crate) idle_timeout: Duration,
    /// The most connections served at once (lowered to what the open-file
    /// limit allows).
    pub(crate) max_connections: usize,
    /// The most `/v1/live` streams at once.
    pub(crate) max_live_subscribers: usize,
    /// The most queries listed in one `/v1/live` tick.
    pub(crate) live_queries: usize,
    /// The most queries the cache holds.
    pub(crate) max_queries: usize,
    /// `Host` values accepted; `None`: the defaults for the listen address.
    pub(crate) allowed_hosts: Option<Vec<HostPattern>>,
    /// Requests to paths no action declares go to the upstream uncached.
    pub(crate) passthrough: bool,
    /// The environment variable holding a token that reads must carry.
    pub(crate) read_token_env: Option<String>,
}

/// One `[server] allowed_hosts` entry: a host name or address, a
/// `*.domain` wildcard, or `*` (anything), with an optional port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HostPattern {
    /// Any host.
    Any,
    /// This host (lower case; IPv6 in brackets), on `port` or on any port.
    Exact { host: String, port: Option<u16> },
    /// Any subdomain of `suffix` (stored with its leading dot).
    Subdomain { suffix: String, port: Option<u16> },
}

impl HostPattern {
    /// Parses an entry; `Err` says what is wrong.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "*" {
            return Ok(Self::Any);
        }
        let (host, port) = split_host_port(text)?;
        if host.is_empty() {
            return Err("the host is empty".into());
        }
        if let Some(domain) = host.strip_prefix("*.") {
            if domain.is_empty() || domain.contains('*') {
                return Err(
                    "a wildcard is `*.` followed by a domain, like \"*.example.com\"".into(),
                );
            }
            return Ok(Self::Subdomain {
                suffix: format!(".{domain}"),
                port,
            });
        }
        if host.contains('*') {
            return Err("`*` is allowed alone or as the first label (\"*.example.com\")".into());
        }
        Ok(Self::Exact { host, port })
    }

    /// Whether a request's `Host` (already split, host in lower case)
    /// matches.
    pub(crate) fn matches(&self, host: &str, port: Option<u16>) -> bool {
        let port_ok = |want: &Option<u16>| want.is_none() || *want == port;
        match self {
            Self::Any => true,
            Self::Exact { host: h, port: p } => h == host && port_ok(p),
            Self::Subdomain { suffix, port: p } => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str()) && port_ok(p)
            }
        }
    }
}

/// Splits `host[:port]` (IPv6 in brackets) into a lower-case host and a
/// port.
pub(crate) fn split_host_port(text: &str) -> Result<(String, Option<u16>), String> {
    let port_of = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("`{p}` is not a port number"))
    };
    if let Some(rest) = text.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return Err("an IPv6 address needs its closing `]`".into());
        };
        let host = format!("[{}]", rest[..end].to_ascii_lowercase());
        return match &rest[end + 1..] {
            "" => Ok((host, None)),
            p => match p.strip_prefix(':') {
                Some(p) => Ok((host, Some(port_of(p)?))),
                None => Err(format!("unexpected `{p}` after the address")),
            },
        };
    }
    match text.rsplit_once(':') {
        Some((h, _)) if h.contains(':') => {
            Err("write an IPv6 address in brackets, like \"[::1]\"".into())
        }
        Some((h, p)) => Ok((h.to_ascii_lowercase(), Some(port_of(p)?))),
        None => Ok((text.to_ascii_lowercase(), None)),
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StoreConfig {
    pub(crate) path: PathBuf,
    pub(crate) max_age: Duration,
    pub(crate) buster: String,
    pub(crate) flush_every: Duration,
    pub(crate) on_error: OnStoreError,
    /// Check every page of the file before hydrate reads it.
    pub(crate) verify_on_open: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct UpstreamConfig {
    pub(crate) base_url: reqwest::Url,
    pub(crate) timeout: Duration,
    pub(crate) health_path: Option<String>,
    pub(crate) probe_interval: Duration,
    /// Headers for every request, before `${ENV}` expansion.
    pub(crate) headers: BTreeMap<String, String>,
    /// The largest body accepted from the upstream, in bytes.
    pub(crate) max_response_bytes: usize,
    pub(crate) follow_redirects: FollowRedirects,
}

/// `[upstream] max_response_bytes` by default: 8 MiB.
pub(crate) const DEFAULT_MAX_RESPONSE_BYTES: usize = 8 << 20;
/// The largest `max_response_bytes` accepted: 1 GiB (every value is held in
/// memory, and stored).
const MAX_MAX_RESPONSE_BYTES: u64 = 1 << 30;

/// A loaded `revalidate.toml`.
#[derive(Clone, Debug)]
pub(crate) struct DaemonConfig {
    /// Where it was read from (for messages).
    pub(crate) file: String,
    pub(crate) engine: revalidate::Config,
    pub(crate) server: ServerConfig,
    pub(crate) store: Option<StoreConfig>,
    pub(crate) upstream: UpstreamConfig,
    pub(crate) actions: BTreeMap<String, ActionConfig>,
    /// `[scope]`: resource → scope (absent: shared).
    pub(crate) scopes: BTreeMap<String, Scope>,
    /// `[identity]`: needed when any action is per-user.
    pub(crate) identity: Option<IdentityConfig>,
    /// `[cluster]`: several nodes through one Redis (`None`: this node alone).
    pub(crate) cluster: Option<ClusterConfig>,
}

/// `[cluster]`: the shared tier on Redis.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ClusterConfig {
    /// `redis://…` or `rediss://…`, before `${ENV}` expansion.
    pub(crate) redis_url: String,
    /// `None`: the host name and pid.
    pub(crate) node_id: Option<String>,
    pub(crate) lease_ttl: Duration,
    pub(crate) key_prefix: String,
}

const DEFAULT_PATH: &str = "/actions/{action}";

impl DaemonConfig {
    /// Reads a configuration and runs, besides, every check `serve` makes
    /// before it binds, without touching the network or creating the store:
    /// each header value after `${ENV}` expansion, and that the store's
    /// directory exists and is writable. `check-config` and `serve` both
    /// use this, so a file one accepts the other accepts too.
    pub(crate) fn load_for_serve(path: &Path) -> Result<Self, ConfigErrors> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors::io(&name, &e))?;
        Self::parse_with(&name, &text, true)
    }

    /// Parses a configuration; `name` appears in messages.
    ///
    /// Messages quote the line at fault and the value found, so a file with
    /// errors is read a second time with its secrets blanked out byte for
    /// byte (`mask_secrets`): the same problems at the same places, quoted
    /// without credentials in URLs or header values.
    pub(crate) fn parse(name: &str, text: &str) -> Result<Self, ConfigErrors> {
        Self::parse_with(name, text, false)
    }

    fn parse_with(name: &str, text: &str, for_serve: bool) -> Result<Self, ConfigErrors> {
        let secrets = RefCell::new(Vec::new());
        let errors = match Self::read_text(name, text, for_serve, &secrets) {
            Ok(config) => return Ok(config),
            Err(errors) => errors,
        };
        let masked = mask_secrets(text, &secrets.into_inner());
        if masked == text {
            return Err(errors);
        }
        match Self::read_text(name, &masked, for_serve, &RefCell::default()) {
            Err(masked_errors) => Err(masked_errors),
            // Not reached: masking keeps every property that is checked
            // (credentials stay credentials, `${` references stay).
            Ok(_) => Err(errors),
        }
    }

    /// One reading of `text`; the header values read go to `secrets`.
    fn read_text(
        name: &str,
        text: &str,
        for_serve: bool,
        secrets: &RefCell<Vec<String>>,
    ) -> Result<Self, ConfigErrors> {
        let raw = DeTable::parse(text).ok();
        let raw_hosts = raw.as_ref().and_then(|r| raw_allowed_hosts(r.get_ref()));
        let parsed = read(name, text, |root| {
            let engine = revalidate::Config::read(root);
            let server = read_server(root, raw_hosts);
            let store = root.table("store").map(|t| read_store(&t));
            let upstream = read_upstream(root, secrets);
            let actions = read_actions(root, secrets);
            let cluster = root.table("cluster").map(|t| read_cluster(&t, for_serve));
            let scopes = root
                .table("scope")
                .map(|t| read_scopes(&t))
                .unwrap_or_default();
            let identity = root.table("identity").map(|t| read_identity(&t));
            check_probe_interval(root);
            if for_serve {
                check_header_values(root);
                if let Some(t) = root.table("store") {
                    check_store_dir(&t);
                }
            }
            check_user_scopes(root, &actions, &scopes, identity.as_ref());
            check_invalidates(root, &actions, &engine.policy);
            (
                engine, server, store, upstream, actions, cluster, scopes, identity,
            )
        })?;
        let (engine, server, store, upstream, actions, cluster, scopes, identity) = parsed;
        Ok(Self {
            file: name.to_owned(),
            engine,
            server,
            store,
            upstream: upstream.expect("a missing [upstream] is reported as an error"),
            actions,
            scopes,
            identity: identity.flatten(),
            cluster,
        })
    }
}

/// A duration at `key` within `min..=max` (reported otherwise).
fn bounded_duration(t: &Table<'_>, key: &str, min: Duration, max: Duration) -> Option<Duration> {
    let item = t.item(key)?;
    let d = item.as_duration()?;
    if d < min || d > max {
        return item.invalid(
            &format!(
                "a duration from {} to {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
            None,
        );
    }
    Some(d)
}

/// A positive integer at `key`, at most `max` (reported otherwise).
fn bounded_count(t: &Table<'_>, key: &str, max: u64) -> Option<usize> {
    let item = t.item(key)?;
    let n = item.as_positive()?;
    if n > max {
        return item.invalid(&format!("an integer from 1 to {max}"), None);
    }
    usize::try_from(n).ok()
}

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// `text` with what must never be printed replaced by `*`, byte for byte
/// (every position stays where it was): the `user:password` of every URL
/// (the `:` kept), and the literal parts of the header values read (their
/// `${NAME}` references, names and not secrets, kept).
fn mask_secrets(text: &str, header_values: &[String]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    let mut blank = |start: usize, end: usize, keep: u8| {
        for b in &mut bytes[start..end] {
            if *b != keep {
                *b = b'*';
            }
        }
    };
    let mut from = 0;
    while let Some(i) = text[from..].find("://") {
        let start = from + i + 3;
        let end = text[start..]
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | '\\') || c.is_whitespace())
            .map_or(text.len(), |e| start + e);
        if let Some(at) = text[start..end].rfind('@') {
            blank(start, start + at, b':');
        }
        from = start;
    }
    for value in header_values.iter().filter(|v| v.len() >= 4) {
        for quote in ['"', '\''] {
            let quoted = format!("{quote}{value}{quote}");
            let mut from = 0;
            while let Some(i) = text[from..].find(&quoted) {
                let start = from + i + 1;
                for (s, e) in literal_parts(value) {
                    blank(start + s, start + e, 0);
                }
                from = start + value.len();
            }
        }
    }
    String::from_utf8(bytes).expect("whole characters were replaced by ASCII")
}

/// The byte ranges of `value` outside its `${NAME}` references (after an
/// unclosed `${`, the rest is literal).
fn literal_parts(value: &str) -> Vec<(usize, usize)> {
    let mut parts = Vec::new();
    let mut pos = 0;
    while let Some(i) = value[pos..].find("${") {
        let open = pos + i;
        parts.push((pos, open));
        match value[open + 2..].find('}') {
            Some(j) => pos = open + 2 + j + 1,
            None => {
                pos = open + 2;
                break;
            }
        }
    }
    parts.push((pos, value.len()));
    parts.retain(|(s, e)| s < e);
    parts
}

fn read_server(root: &Table<'_>, raw_hosts: Option<&DeValue<'_>>) -> ServerConfig {
    let mut s = ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
        admin_token_env: None,
        max_query_bytes: 8 * 1024,
        max_body_bytes: 64 * 1024,
        event_replay: 1024,
        event_data_max_bytes: 64 * 1024,
        shutdown_grace: Duration::from_secs(5),
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_connections: 4096,
        max_live_subscribers: 32,
        live_queries: 500,
        max_queries: 100_000,
        allowed_hosts: None,
        passthrough: false,
        read_token_env: None,
    };
    let Some(t) = root.table("server") else {
        return s;
    };
    if let Some(item) = t.item("listen")
        && let Some(text) = item.as_str()
    {
        match text.parse() {
            Ok(addr) => s.listen = addr,
            Err(e) => {
                item.invalid::<()>(
                    "an address and port, like \"127.0.0.1:8787\" (use \"0.0.0.0:8787\" to listen on every interface)",
                    Some(format!("{e}")),
                );
            }
        }
    }
    if let Some(item) = t.item("admin_token_env")
        && let Some(name) = item.as_str()
    {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            item.invalid::<()>(
                "the name of an environment variable, like \"REVALIDATE_ADMIN_TOKEN\"",
                None,
            );
        } else {
            s.admin_token_env = Some(name.to_owned());
        }
    }
    if let Some(item) = t.item("read_token_env")
        && let Some(name) = item.as_str()
    {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            item.invalid::<()>(
                "the name of an environment variable, like \"REVALIDATE_READ_TOKEN\"",
                None,
            );
        } else {
            s.read_token_env = Some(name.to_owned());
        }
    }
    if let Some(b) = t.bool("passthrough") {
        s.passthrough = b;
    }
    // A query string travels in the request head, which hyper caps at
    // about 400 KiB.
    if let Some(n) = bounded_count(&t, "max_query_bytes", 256 * 1024) {
        s.max_query_bytes = n;
    }
    if let Some(n) = bounded_count(&t, "max_body_bytes", 64 * 1024 * 1024) {
        s.max_body_bytes = n;
    }
    if let Some(n) = bounded_count(&t, "event_data_max_bytes", 16 * 1024 * 1024) {
        s.event_data_max_bytes = n;
    }
    if let Some(n) = bounded_count(&t, "event_replay", 1_000_000) {
        s.event_replay = n;
    }
    if let Some(d) = bounded_duration(&t, "shutdown_grace", MS, HOUR) {
        s.shutdown_grace = d;
    }
    if let Some(d) = bounded_duration(&t, "header_read_timeout", 100 * MS, HOUR) {
        s.header_read_timeout = d;
    }
    if let Some(d) = bounded_duration(&t, "idle_timeout", 100 * MS, DAY) {
        s.idle_timeout = d;
    }
    if let Some(n) = bounded_count(&t, "max_connections", 1_000_000) {
        s.max_connections = n;
    }
    if let Some(n) = bounded_count(&t, "max_live_subscribers", 100_000) {
        s.max_live_subscribers = n;
    }
    if let Some(n) = bounded_count(&t, "live_queries", 100_000) {
        s.live_queries = n;
    }
    if let Some(n) = bounded_count(&t, "max_queries", 1_000_000_000) {
        s.max_queries = n;
    }
    if let Some(item) = t.item("allowed_hosts") {
        s.allowed_hosts = read_hosts(&item, raw_hosts);
    }
    s
}

/// `[server] allowed_hosts`, a list of strings. The configuration reader
/// has no accessor for arrays, so the value is read from its own parse of
/// the text (`raw`), and reported at the reader's item.
fn read_hosts(
    item: &revalidate::config::Item<'_>,
    raw: Option<&DeValue<'_>>,
) -> Option<Vec<HostPattern>> {
    let expected = "a list of host names, like [\"localhost\", \"cache.example.com:8787\", \"*.example.com\"], or [\"*\"] for any host";
    let Some(DeValue::Array(values)) = raw else {
        return item.invalid(expected, None);
    };
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        let DeValue::String(text) = v.get_ref() else {
            return item.invalid(expected, Some("every entry is a string".into()));
        };
        match HostPattern::parse(text) {
            Ok(p) => out.push(p),
            Err(why) => return item.invalid(expected, Some(format!("`{text}`: {why}"))),
        }
    }
    Some(out)
}

/// `[server] allowed_hosts` as parsed by toml, for [`read_hosts`].
fn raw_allowed_hosts<'a>(root: &'a DeTable<'a>) -> Option<&'a DeValue<'a>> {
    match root.get("server")?.get_ref() {
        DeValue::Table(server) => server.get("allowed_hosts").map(|v| v.get_ref()),
        _ => None,
    }
}

fn read_store(t: &Table<'_>) -> StoreConfig {
    let mut s = StoreConfig {
        path: PathBuf::from("revalidate.db"),
        max_age: Duration::from_secs(24 * 3600),
        buster: String::new(),
        flush_every: Duration::from_secs(1),
        on_error: OnStoreError::Fail,
        verify_on_open: false,
    };
    match t.string("path") {
        Some(p) if !p.is_empty() => s.path = PathBuf::from(p),
        Some(_) => t.error(
            "path",
            "`store.path` is empty",
            "a file path; remove [store] for a memory-only cache",
        ),
        None => t.error(
            "path",
            "missing key `store.path`",
            "a file path, like \"revalidate.db\"; remove [store] for a memory-only cache",
        ),
    }
    if let Some(d) = bounded_duration(t, "max_age", Duration::from_secs(1), 3650 * DAY) {
        s.max_age = d;
    }
    if let Some(b) = t.string("buster") {
        s.buster = b.to_owned();
    }
    if let Some(d) = bounded_duration(t, "flush_every", 10 * MS, HOUR) {
        s.flush_every = d;
    }
    if let Some(b) = t.bool("verify_on_open") {
        s.verify_on_open = b;
    }
    if let Some(item) = t.item("on_error")
        && let Some(v) = item.as_str()
    {
        match v {
            "fail" => s.on_error = OnStoreError::Fail,
            "memory" => s.on_error = OnStoreError::Memory,
            _ => {
                item.invalid::<()>(
                    "\"fail\" (exit with the error) or \"memory\" (warn, run without persistence)",
                    None,
                );
            }
        }
    }
    s
}

/// `[upstream] probe_interval` within bounds: a probe more often than every
/// 100 ms is a flood of the upstream, not a check. (Read again here: the
/// value itself is read by `read_upstream`; the reader reports a bad value
/// once.)
fn check_probe_interval(root: &Table<'_>) {
    if let Some(t) = root.table("upstream") {
        bounded_duration(&t, "probe_interval", 100 * MS, HOUR);
    }
}

/// Every header value (`[upstream] headers`, `[actions.*] headers`) as
/// `serve` builds it: `${ENV}` expanded, and a valid HTTP header value
/// (no CR, LF or other control characters).
fn check_header_values(root: &Table<'_>) {
    let mut tables = Vec::new();
    if let Some(h) = root.table("upstream").and_then(|u| u.table("headers")) {
        tables.push(h);
    }
    if let Some(actions) = root.table("actions") {
        for a in actions.entries() {
            if let Some(h) = a.as_table().and_then(|a| a.table("headers")) {
                tables.push(h);
            }
        }
    }
    for table in tables {
        for item in table.entries() {
            let Some(value) = item.as_str() else { continue };
            let problem = match expand_env(value) {
                Err(e) => e,
                Ok(v) => match reqwest::header::HeaderValue::from_str(&v) {
                    Ok(_) => continue,
                    Err(_) => {
                        "the value (after ${…} expansion) has a control character such as CR or LF"
                            .to_owned()
                    }
                },
            };
            item.report(
                ConfigErrorKind::InvalidValue,
                format!("invalid value for `{}`: {problem}", item.path()),
                "a header value without control characters; `${NAME}` needs NAME set in the environment".to_owned(),
                None,
            );
        }
    }
}

/// The store's directory exists and the daemon may create files in it
/// (tried with a temporary file, removed at once; the store itself is not
/// created).
fn check_store_dir(t: &Table<'_>) {
    let Some(item) = t.item("path") else { return };
    let Some(path) = item.as_str().filter(|p| !p.is_empty()) else {
        return;
    };
    let path = Path::new(path);
    if path.is_dir() {
        item.report(
            ConfigErrorKind::InvalidValue,
            format!(
                "invalid value for `{}`: `{}` is a directory",
                item.path(),
                path.display()
            ),
            "the path of the store's file, like \"/var/lib/revalidate/cache.redb\"".to_owned(),
            None,
        );
        return;
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let problem = if !dir.is_dir() {
        format!("the directory `{}` does not exist", dir.display())
    } else if let Err(e) = tempfile::Builder::new()
        .prefix(".revalidate-check-")
        .tempfile_in(dir)
    {
        format!("cannot create files in `{}`: {e}", dir.display())
    } else {
        return;
    };
    item.report(
        ConfigErrorKind::InvalidValue,
        format!(
            "invalid value for `{}`: the store `{}` cannot be created: {problem}",
            item.path(),
            path.display()
        ),
        "a file path in an existing directory the daemon may write to".to_owned(),
        Some(
            "create the directory, fix its permissions, or remove [store] for a memory-only cache"
                .to_owned(),
        ),
    );
}

/// `[cluster]`. The URL's password may come from the environment
/// (`redis://:${REDIS_PASSWORD}@host:6379/0`); `check-config` and `serve`
/// check that the variable is set.
fn read_cluster(t: &Table<'_>, for_serve: bool) -> ClusterConfig {
    let mut c = ClusterConfig {
        redis_url: String::new(),
        node_id: None,
        lease_ttl: Duration::from_secs(10),
        key_prefix: "revalidate".to_owned(),
    };
    match t.item("redis_url") {
        None => t.error(
            "redis_url",
            "missing key `cluster.redis_url`",
            "the Redis the nodes share, like \"redis://127.0.0.1:6379/0\"; remove [cluster] to run alone",
        ),
        Some(item) => {
            if let Some(url) = item.as_str() {
                let scheme_ok = url.starts_with("redis://") || url.starts_with("rediss://");
                let expanded = expand_env(url);
                if !scheme_ok {
                    item.invalid::<()>(
                        "a redis:// or rediss:// URL, like \"redis://127.0.0.1:6379/0\"",
                        None,
                    );
                } else if let (true, Err(e)) = (for_serve, &expanded) {
                    item.invalid::<()>(
                        "a Redis URL whose ${NAME} references are set in the environment",
                        Some(e.clone()),
                    );
                } else {
                    c.redis_url = url.to_owned();
                }
            }
        }
    }
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.:".contains(ch))
    };
    if let Some(item) = t.item("node_id")
        && let Some(id) = item.as_str()
    {
        if name_ok(id) {
            c.node_id = Some(id.to_owned());
        } else {
            item.invalid::<()>(
                "up to 64 letters, digits, '-', '_', '.' or ':', unique in the cluster, like \"node-a\"",
                None,
            );
        }
    }
    if let Some(d) = bounded_duration(t, "lease_ttl", 100 * MS, 10 * 60 * 1000 * MS) {
        c.lease_ttl = d;
    }
    if let Some(item) = t.item("key_prefix")
        && let Some(p) = item.as_str()
    {
        if name_ok(p) {
            c.key_prefix = p.to_owned();
        } else {
            item.invalid::<()>(
                "up to 64 letters, digits, '-', '_', '.' or ':', like \"revalidate\" (every Redis key lives under it)",
                None,
            );
        }
    }
    c
}

fn read_upstream(root: &Table<'_>, secrets: &RefCell<Vec<String>>) -> Option<UpstreamConfig> {
    let Some(t) = root.table("upstream") else {
        root.error(
            "upstream",
            "missing table [upstream]",
            "[upstream] with base_url = \"http://host:port\", the API the daemon fronts",
        );
        return None;
    };
    let mut u = UpstreamConfig {
        base_url: reqwest::Url::parse("http://127.0.0.1/").expect("a valid URL"),
        timeout: Duration::from_secs(10),
        health_path: None,
        probe_interval: Duration::from_secs(5),
        headers: BTreeMap::new(),
        max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        follow_redirects: FollowRedirects::Never,
    };
    match t.item("base_url") {
        None => t.error(
            "base_url",
            "missing key `upstream.base_url`",
            "the API's base URL, like \"http://127.0.0.1:9000\"",
        ),
        Some(item) => {
            if let Some(text) = item.as_str() {
                match reqwest::Url::parse(text) {
                    Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                        if !url.username().is_empty() || url.password().is_some() {
                            // Never quoted: `parse` masks them in messages.
                            item.invalid::<()>(
                                "a base URL without credentials (no user:password@)",
                                Some(
                                    "a URL's credentials are printed wherever the URL is; send them as a header instead, \
                                     the secret from the environment: headers = { Authorization = \"Basic ${UPSTREAM_AUTH}\" } \
                                     with UPSTREAM_AUTH set to the Base64 of user:password"
                                        .to_owned(),
                                ),
                            );
                        } else if url.query().is_some() || url.fragment().is_some() {
                            item.invalid::<()>("a base URL without query or fragment", None);
                        } else {
                            u.base_url = url;
                        }
                    }
                    Ok(url) => {
                        item.invalid::<()>(
                            "an http:// or https:// URL with a host",
                            Some(format!("`{}` is not usable as a base URL", url.scheme())),
                        );
                    }
                    Err(e) => {
                        item.invalid::<()>(
                            "an absolute URL, like \"http://127.0.0.1:9000\"",
                            Some(format!("{e}")),
                        );
                    }
                }
            }
        }
    }
    if let Some(d) = t.duration("timeout") {
        u.timeout = d;
    }
    if let Some(item) = t.item("health_path")
        && let Some(p) = item.as_str()
    {
        if p.starts_with('/') {
            u.health_path = Some(p.to_owned());
        } else {
            item.invalid::<()>("a path starting with '/', like \"/health\"", None);
        }
    }
    if let Some(d) = t.duration("probe_interval") {
        u.probe_interval = d;
    }
    if let Some(item) = t.item("max_response_bytes")
        && let Some(n) = item.as_positive()
    {
        match usize::try_from(n) {
            Ok(n) if n as u64 <= MAX_MAX_RESPONSE_BYTES => u.max_response_bytes = n,
            _ => {
                item.invalid::<()>(
                    "a number of bytes from 1 to 1073741824 (1 GiB), like 8388608 (8 MiB, the default)",
                    Some(format!("at most {MAX_MAX_RESPONSE_BYTES}: every answer is held in memory and stored")),
                );
            }
        }
    }
    if let Some(item) = t.item("follow_redirects")
        && let Some(v) = item.as_str()
    {
        match v {
            "never" => u.follow_redirects = FollowRedirects::Never,
            "same-origin" => u.follow_redirects = FollowRedirects::SameOrigin,
            _ => {
                item.invalid::<()>(
                    "\"never\" (a redirect is a rejected fetch, the default) or \"same-origin\" (up to 5 hops on the same scheme, host and port; for POST actions only 307 and 308)",
                    None,
                );
            }
        }
    }
    if let Some(h) = t.table("headers") {
        u.headers = read_headers(&h, secrets);
    }
    Some(u)
}

/// Header tables: names checked, values kept before `${ENV}` expansion
/// (their references checked; the variables are read at start-up). Every
/// value goes to `secrets`, so that no message quotes it.
fn read_headers(t: &Table<'_>, secrets: &RefCell<Vec<String>>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for item in t.entries() {
        let name = item.key();
        let value = item.as_str();
        if let Some(v) = value {
            secrets.borrow_mut().push(v.to_owned());
        }
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            item.report(
                ConfigErrorKind::InvalidValue,
                format!("`{name}` is not an HTTP header name"),
                "letters, digits and '-', like \"Authorization\"".to_owned(),
                None,
            );
            continue;
        }
        let Some(v) = value else { continue };
        if let Err(problem) = check_env_refs(v) {
            item.report(
                ConfigErrorKind::InvalidValue,
                format!("the value of `{}` has {problem}", item.path()),
                "text where ${NAME} stands for the environment variable NAME, like \"Bearer ${API_TOKEN}\"".to_owned(),
                None,
            );
            continue;
        }
        out.insert(name.to_owned(), v.to_owned());
    }
    out
}

/// Whether every `${` of a header value is closed and names something.
fn check_env_refs(value: &str) -> Result<(), &'static str> {
    let mut rest = value;
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 2..];
        match after.find('}') {
            None => return Err("an unclosed `${`"),
            Some(0) => return Err("an empty `${}`"),
            Some(end) => rest = &after[end + 1..],
        }
    }
    Ok(())
}

fn read_actions(
    root: &Table<'_>,
    secrets: &RefCell<Vec<String>>,
) -> BTreeMap<String, ActionConfig> {
    let mut out = BTreeMap::new();
    let Some(t) = root.table("actions") else {
        root.error(
            "actions",
            "no actions are declared",
            "one [actions.\"NAME\"] table per action the daemon serves, e.g. [actions.\"process.list\"]",
        );
        return out;
    };
    for item in t.entries() {
        let name = item.key();
        if name.is_empty()
            || name == "."
            || name.contains(['/', '?', '#', '\0'])
            || name.contains("..")
        {
            item.report(
                ConfigErrorKind::InvalidValue,
                format!("`{name}` is not a usable action name"),
                "a name without '/', '?', '#' or \"..\", other than \".\", like \"process.list\" (it is sent percent-encoded as one path segment)".to_owned(),
                None,
            );
            continue;
        }
        let Some(a) = item.as_table() else { continue };
        let mut action = ActionConfig {
            method: Method::Post,
            path: DEFAULT_PATH.to_owned(),
            headers: BTreeMap::new(),
            kind: ActionKind::Query,
            invalidates: Vec::new(),
            scope: None,
        };
        if let Some(k) = a.item("kind")
            && let Some(text) = k.as_str()
        {
            match text {
                "query" => action.kind = ActionKind::Query,
                "mutation" => action.kind = ActionKind::Mutation,
                _ => {
                    k.invalid::<()>(
                        "\"query\" (cached and kept fresh; the default) or \"mutation\" (forwarded, then invalidating)",
                        None,
                    );
                }
            }
        }
        if let Some(s) = a.item("scope")
            && let Some(text) = s.as_str()
        {
            action.scope = scope_of(&s, text);
        }
        if let Some(i) = a.item("invalidates")
            && let Some(list) = i.as_str_list()
        {
            action.invalidates = list.into_iter().map(str::to_owned).collect();
        }
        if let Some(m) = a.item("method")
            && let Some(text) = m.as_str()
        {
            match text.to_ascii_uppercase().as_str() {
                "POST" => action.method = Method::Post,
                "GET" => action.method = Method::Get,
                _ => {
                    m.invalid::<()>(
                        "\"POST\" (params as a JSON body) or \"GET\" (params as a query string)",
                        None,
                    );
                }
            }
        }
        if let Some(p) = a.item("path")
            && let Some(text) = p.as_str()
        {
            let rest = text.replace("{action}", "");
            if !text.starts_with('/') || rest.contains(['{', '}', '?', '#']) || rest.contains("..")
            {
                p.invalid::<()>(
                    "a path starting with '/', where only {action} is replaced, like \"/api/{action}\"",
                    None,
                );
            } else {
                action.path = text.to_owned();
            }
        }
        if let Some(h) = a.table("headers") {
            action.headers = read_headers(&h, secrets);
        }
        out.insert(name.to_owned(), action);
    }
    out
}

fn scope_of(item: &revalidate::config::Item<'_>, text: &str) -> Option<Scope> {
    match text {
        "shared" => Some(Scope::Shared),
        "user" => Some(Scope::User),
        _ => item.invalid(
            "\"shared\" (the same for every caller; the default) or \"user\" (each caller's own)",
            None,
        ),
    }
}

/// `[scope]`: resource = "shared" | "user".
fn read_scopes(t: &Table<'_>) -> BTreeMap<String, Scope> {
    let mut out = BTreeMap::new();
    for item in t.entries() {
        if let Some(text) = item.as_str()
            && let Some(scope) = scope_of(&item, text)
        {
            out.insert(item.key().to_owned(), scope);
        }
    }
    out
}

/// `[identity]`: `from = "authorization"`, or `from = "header"` with
/// `header` and `trusted_proxies`. `None` (reported) when unusable.
fn read_identity(t: &Table<'_>) -> Option<IdentityConfig> {
    let from = t.item("from");
    let Some(text) = from.as_ref().and_then(|i| i.as_str()) else {
        if from.is_none() {
            t.error(
                "from",
                "missing key `identity.from`",
                "\"authorization\" (the caller's Authorization header, forwarded upstream) or \"header\" (a gateway's header, with `header` and `trusted_proxies`)",
            );
        }
        return None;
    };
    let mut secret_env = None;
    if let Some(item) = t.item("secret_env")
        && let Some(name) = item.as_str()
    {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            item.invalid::<()>(
                "the name of an environment variable, like \"REVALIDATE_IDENTITY_SECRET\"",
                None,
            );
        } else {
            secret_env = Some(name.to_owned());
        }
    }
    let source = match text {
        "authorization" => Some(IdentitySource::Authorization),
        "header" => {
            // Both keys are checked before giving up, so that one run
            // reports every mistake.
            let name = match t.item("header") {
                Some(item) => match item.as_str() {
                    Some(n) if reqwest::header::HeaderName::from_bytes(n.as_bytes()).is_ok() => {
                        Some(n.to_owned())
                    }
                    Some(_) => item.invalid("an HTTP header name, like \"X-User-Id\"", None),
                    None => None,
                },
                None => {
                    t.error(
                        "header",
                        "missing key `identity.header`",
                        "the header the gateway sets, like \"X-User-Id\"",
                    );
                    None
                }
            };
            let mut proxies = Vec::new();
            match t.item("trusted_proxies") {
                None => t.error(
                    "trusted_proxies",
                    "missing key `identity.trusted_proxies`",
                    "the gateway's addresses, like [\"127.0.0.1/32\"]: a header from anyone else is not an identity",
                ),
                Some(item) => {
                    for cidr in item.as_str_list().unwrap_or_default() {
                        match parse_cidr(cidr) {
                            Some(c) => proxies.push(c),
                            None => {
                                item.invalid::<()>(
                                    "addresses or networks like \"127.0.0.1/32\" or \"10.0.0.0/8\" or \"::1/128\"",
                                    Some(format!("`{cidr}` is not one")),
                                );
                            }
                        }
                    }
                }
            }
            name.map(|name| IdentitySource::Header {
                name,
                trusted_proxies: proxies,
            })
        }
        _ => from?.invalid("\"authorization\" or \"header\"", None),
    };
    Some(IdentityConfig {
        source: source?,
        secret_env,
    })
}

/// `10.0.0.0/8`, `::1/128`, or a bare address (a single host).
pub(crate) fn parse_cidr(text: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, bits) = match text.split_once('/') {
        Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
        None => (text, None),
    };
    let addr: std::net::IpAddr = addr.trim().parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let bits = bits.unwrap_or(max);
    (bits <= max).then_some((addr, bits))
}

/// A per-user action needs `[identity]`; a mutation's `invalidates` must
/// name declared actions or resources.
fn check_user_scopes(
    root: &Table<'_>,
    actions: &BTreeMap<String, ActionConfig>,
    scopes: &BTreeMap<String, Scope>,
    identity: Option<&Option<IdentityConfig>>,
) {
    let user = actions.values().any(|a| a.scope == Some(Scope::User))
        || scopes.values().any(|s| *s == Scope::User);
    if user && identity.is_none() {
        root.error(
            "identity",
            "per-user data is declared but not how callers are known",
            "an [identity] table: from = \"authorization\" (the caller's Authorization header) or from = \"header\" with header and trusted_proxies",
        );
    }
}

/// Each mutation's `invalidates` names a declared query action or the
/// resource of one; a query's is a mistake.
fn check_invalidates(
    root: &Table<'_>,
    actions: &BTreeMap<String, ActionConfig>,
    policy: &revalidate::Policy,
) {
    let Some(t) = root.table("actions") else {
        return;
    };
    let queries: Vec<&str> = actions
        .iter()
        .filter(|(_, a)| a.kind == ActionKind::Query)
        .map(|(n, _)| n.as_str())
        .collect();
    let resources: std::collections::BTreeSet<&str> =
        queries.iter().map(|a| policy.resource(a)).collect();
    for entry in t.entries() {
        let Some(a) = entry.as_table() else { continue };
        let Some(item) = a.item("invalidates") else {
            continue;
        };
        let is_mutation = actions
            .get(entry.key())
            .is_some_and(|a| a.kind == ActionKind::Mutation);
        if !is_mutation {
            item.invalid::<()>(
                "no `invalidates` on a query; add kind = \"mutation\" if this action changes data",
                None,
            );
            continue;
        }
        for name in item.as_str_list().unwrap_or_default() {
            if !queries.contains(&name) && !resources.contains(name) {
                let known: Vec<&str> = queries
                    .iter()
                    .copied()
                    .chain(resources.iter().copied())
                    .collect();
                let hint = revalidate::config::did_you_mean(name, known.iter().copied());
                item.invalid::<()>(
                    "declared query actions or their resources",
                    Some(match hint {
                        Some(h) => format!("`{name}` is neither; did you mean `{h}`?"),
                        None => format!("`{name}` is neither"),
                    }),
                );
            }
        }
    }
}

/// Expands `${NAME}` in a header value from the environment. Errors never
/// quote the value (it may hold secrets), only the variable's name.
pub(crate) fn expand_env(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err("an unclosed `${`".to_owned());
        };
        let name = &after[..end];
        match std::env::var(name) {
            Ok(v) => out.push_str(&v),
            Err(_) => return Err(format!("environment variable `{name}` is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
profile = "production"

[server]
listen = "127.0.0.1:9999"
admin_token_env = "MY_TOKEN"

[store]
path = "/tmp/x.db"
flush_every = "2s"

[upstream]
base_url = "http://127.0.0.1:9000"
timeout = "3s"
health_path = "/health"
headers = { Authorization = "Bearer ${API_TOKEN}" }
max_response_bytes = 1_048_576
follow_redirects = "same-origin"

[refresh]
check_interval = "5s"

[staleness]
process = "5m"
node = "never"

[profiles.production.staleness]
process = "10m"

[overrides]
"process.list" = "2m"

[actions."process.list"]
method = "GET"

[actions."node.tree"]
path = "/api/{action}"

[actions."search"]
resource = "process"
"#;

    #[test]
    fn a_full_file_reads_with_every_key() {
        let c = DaemonConfig::parse("revalidate.toml", GOOD).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(c.server.admin_token_env.as_deref(), Some("MY_TOKEN"));
        let store = c.store.unwrap();
        assert_eq!(store.path, PathBuf::from("/tmp/x.db"));
        assert_eq!(store.flush_every, Duration::from_secs(2));
        assert_eq!(c.upstream.base_url.as_str(), "http://127.0.0.1:9000/");
        assert_eq!(c.upstream.timeout, Duration::from_secs(3));
        assert_eq!(c.upstream.headers["Authorization"], "Bearer ${API_TOKEN}");
        assert_eq!(c.upstream.max_response_bytes, 1_048_576);
        assert_eq!(c.upstream.follow_redirects, FollowRedirects::SameOrigin);
        assert_eq!(c.engine.refresh.check_interval, Duration::from_secs(5));
        assert_eq!(c.actions["process.list"].method, Method::Get);
        assert_eq!(c.actions["node.tree"].path, "/api/{action}");
        assert_eq!(
            c.engine.policy.staleness("process.get"),
            revalidate::Staleness::mins(10)
        );
        assert_eq!(
            c.engine.policy.staleness("search"),
            revalidate::Staleness::mins(10)
        );
    }

    fn errors(text: &str) -> String {
        DaemonConfig::parse("revalidate.toml", text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn mistakes_name_their_key_and_position() {
        let e = errors("[upstream]\nbase_url = \"ftp://x\"\n[actions.a]\n");
        assert!(e.contains("revalidate.toml:2:12"), "{e}");
        assert!(e.contains("upstream.base_url"), "{e}");
        let e = errors("[upstream]\nbase_url = \"http://x\"\n[actions.\"a\"]\nmethod = \"PUT\"\n");
        assert!(
            e.contains("actions.a.method") && e.contains("\"GET\""),
            "{e}"
        );
        let e =
            errors("[upstream]\nbase_url = \"http://x\"\n[actions.a]\npath = \"/x/{params}\"\n");
        assert!(e.contains("actions.a.path"), "{e}");
        let e = errors("[servr]\n[upstream]\nbase_url = \"http://x\"\n[actions.a]\n");
        assert!(e.contains("did you mean `server`?"), "{e}");
        let e = errors("[actions.a]\n");
        assert!(e.contains("missing table [upstream]"), "{e}");
        let e = errors("[upstream]\nbase_url = \"http://x\"\n");
        assert!(e.contains("no actions are declared"), "{e}");
        let e = errors(
            "[server]\nlisten = \"localhost\"\n[upstream]\nbase_url = \"http://x\"\n[actions.a]\n",
        );
        assert!(e.contains("server.listen"), "{e}");
        for bad in ["a/b", ".", "a..b", ""] {
            let e = errors(&format!(
                "[upstream]\nbase_url = \"http://x\"\n[actions.\"{bad}\"]\n"
            ));
            assert!(e.contains("not a usable action name"), "{bad:?}: {e}");
        }
        let e = errors("[upstream]\nbase_url = \"http://x\"\n[actions.a]\nmethd = \"GET\"\n");
        assert!(e.contains("did you mean `method`?"), "{e}");
        for bad in ["0", "-1", "1073741825", "\"8MiB\""] {
            let e = errors(&format!(
                "[upstream]\nbase_url = \"http://x\"\nmax_response_bytes = {bad}\n[actions.a]\n"
            ));
            assert!(
                e.contains("revalidate.toml:3:22") && e.contains("upstream.max_response_bytes"),
                "{bad}: {e}"
            );
        }
        let ok = DaemonConfig::parse(
            "revalidate.toml",
            "[upstream]\nbase_url = \"http://x\"\nmax_response_bytes = 1073741824\n[actions.a]\n",
        )
        .unwrap();
        assert_eq!(ok.upstream.max_response_bytes, 1 << 30);
        let default = DaemonConfig::parse(
            "revalidate.toml",
            "[upstream]\nbase_url = \"http://x\"\n[actions.a]\n",
        )
        .unwrap();
        assert_eq!(default.upstream.max_response_bytes, 8 << 20);
        assert_eq!(default.upstream.follow_redirects, FollowRedirects::Never);
        let e = errors(
            "[upstream]\nbase_url = \"http://x\"\nfollow_redirects = \"always\"\n[actions.a]\n",
        );
        assert!(
            e.contains("revalidate.toml:3:20") && e.contains("\"same-origin\""),
            "{e}"
        );
    }

    #[test]
    fn mutations_scopes_and_identities_read_and_their_mistakes_say_where() {
        let base = "[upstream]\nbase_url = \"http://x\"\n[actions.\"process.list\"]\n";
        let c = DaemonConfig::parse(
            "revalidate.toml",
            &format!(
                "{base}[actions.\"process.update\"]\nkind = \"mutation\"\ninvalidates = [\"process.list\", \"process\"]\n[actions.\"settings.get\"]\nscope = \"user\"\n[scope]\nnotification = \"user\"\n[identity]\nfrom = \"header\"\nheader = \"X-User-Id\"\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nsecret_env = \"ID_SECRET\"\n[server]\npassthrough = true\nread_token_env = \"READ_TOKEN\"\n"
            ),
        )
        .unwrap();
        let update = &c.actions["process.update"];
        assert_eq!(update.kind, ActionKind::Mutation);
        assert_eq!(update.invalidates, ["process.list", "process"]);
        assert_eq!(c.actions["settings.get"].scope, Some(Scope::User));
        assert_eq!(c.scopes["notification"], Scope::User);
        let identity = c.identity.unwrap();
        assert_eq!(identity.secret_env.as_deref(), Some("ID_SECRET"));
        assert_eq!(
            identity.source,
            IdentitySource::Header {
                name: "X-User-Id".into(),
                trusted_proxies: vec![
                    ("10.0.0.0".parse().unwrap(), 8),
                    ("::1".parse().unwrap(), 128)
                ],
            }
        );
        assert!(c.server.passthrough);
        assert_eq!(c.server.read_token_env.as_deref(), Some("READ_TOKEN"));

        let e = errors(&format!(
            "{base}[actions.\"process.update\"]\nkind = \"mutation\"\ninvalidates = [\"process.lst\"]\n"
        ));
        assert!(e.contains("revalidate.toml:6:"), "{e}");
        assert!(e.contains("did you mean `process.list`?"), "{e}");
        let e = errors(&format!("{base}invalidates = [\"process.list\"]\n"));
        assert!(e.contains("kind = \"mutation\""), "{e}");
        let e = errors(&format!("{base}kind = \"write\"\n"));
        assert!(e.contains("\"mutation\""), "{e}");
        let e = errors(&format!("{base}scope = \"user\"\n"));
        assert!(e.contains("[identity]"), "per-user needs an identity: {e}");
        let e = errors(&format!(
            "{base}[identity]\nfrom = \"header\"\nheader = \"X-User\"\ntrusted_proxies = [\"10.0.0.0/33\"]\n"
        ));
        assert!(e.contains("`10.0.0.0/33` is not one"), "{e}");
        let e = errors(&format!("{base}[identity]\nfrom = \"header\"\n"));
        assert!(e.contains("identity.header"), "{e}");
        assert!(e.contains("identity.trusted_proxies"), "{e}");
        assert_eq!(
            parse_cidr("127.0.0.1"),
            Some(("127.0.0.1".parse().unwrap(), 32))
        );
        assert_eq!(parse_cidr("::/0"), Some(("::".parse().unwrap(), 0)));
        assert_eq!(parse_cidr("nope/8"), None);
    }

    #[test]
    fn credentials_and_header_values_are_never_quoted() {
        let e = errors(
            "[upstream]\nbase_url = \"http://me:pa55w0rd@x\"\nheaders = { A = \"Bearer t0k3n-${T}-tail\", \"b c\" = \"1\" }\n[actions.a]\n",
        );
        assert!(e.contains("revalidate.toml:2:12"), "{e}");
        assert!(e.contains("Basic ${UPSTREAM_AUTH}"), "{e}");
        assert!(e.contains("revalidate.toml:3:"), "{e}");
        for secret in ["me:", "pa55w0rd", "t0k3n", "-tail"] {
            assert!(!e.contains(secret), "{secret}: {e}");
        }
        // The references are names, not secrets: they stay.
        assert!(e.contains("${T}"), "{e}");
        let e =
            errors("[upstream]\nbase_url = \"http://x\"\nheaders = { A = \"${}\" }\n[actions.a]\n");
        assert!(
            e.contains("upstream.headers.A") && e.contains("empty"),
            "{e}"
        );
    }

    #[test]
    fn masking_keeps_every_position() {
        let text = "u = \"https://ü:p@h/x\"\nh = { A = 'Bearer ${K}é' }\n";
        let masked = mask_secrets(text, &["Bearer ${K}é".to_owned()]);
        assert_eq!(masked.len(), text.len());
        assert_eq!(
            masked,
            "u = \"https://**:*@h/x\"\nh = { A = '*******${K}**' }\n"
        );
        assert_eq!(literal_parts("a${B}c${D"), [(0, 1), (5, 6), (8, 9)]);
        assert_eq!(literal_parts("${B}"), []);
        assert_eq!(check_env_refs("x ${A} ${B}"), Ok(()));
        assert!(check_env_refs("x ${A").is_err());
    }

    #[test]
    fn env_expansion() {
        let path = std::env::var("PATH").expect("tests run with a PATH");
        assert_eq!(expand_env("a ${PATH} b").unwrap(), format!("a {path} b"));
        assert_eq!(expand_env("plain").unwrap(), "plain");
        assert!(
            expand_env("${REVALIDATE_NOT_SET_ANYWHERE}")
                .unwrap_err()
                .contains("not set")
        );
        let e = expand_env("secret-part${oops").unwrap_err();
        assert!(!e.contains("secret-part"), "{e}");
    }
}
