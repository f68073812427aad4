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

/// How to call one action upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ActionConfig {
    pub(crate) method: Method,
    /// Path template below `base_url`; `{action}` becomes the action name.
    pub(crate) path: String,
    /// Headers for this action only, before `${ENV}` expansion.
    pub(crate) headers: BTreeMap<String, String>,
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
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StoreConfig {
    pub(crate) path: PathBuf,
    pub(crate) max_age: Duration,
    pub(crate) buster: String,
    pub(crate) flush_every: Duration,
    pub(crate) on_error: OnStoreError,
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
}

const DEFAULT_PATH: &str = "/actions/{action}";

impl DaemonConfig {
    /// Reads and checks a configuration file.
    pub(crate) fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors::io(&name, &e))?;
        Self::parse(&name, &text)
    }

    /// Parses a configuration; `name` appears in messages.
    ///
    /// Messages quote the line at fault and the value found, so a file with
    /// errors is read a second time with its secrets blanked out byte for
    /// byte (`mask_secrets`): the same problems at the same places, quoted
    /// without credentials in URLs or header values.
    pub(crate) fn parse(name: &str, text: &str) -> Result<Self, ConfigErrors> {
        let secrets = RefCell::new(Vec::new());
        let errors = match Self::read_text(name, text, &secrets) {
            Ok(config) => return Ok(config),
            Err(errors) => errors,
        };
        let masked = mask_secrets(text, &secrets.into_inner());
        if masked == text {
            return Err(errors);
        }
        match Self::read_text(name, &masked, &RefCell::default()) {
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
        secrets: &RefCell<Vec<String>>,
    ) -> Result<Self, ConfigErrors> {
        let parsed = read(name, text, |root| {
            let engine = revalidate::Config::read(root);
            let server = read_server(root);
            let store = root.table("store").map(|t| read_store(&t));
            let upstream = read_upstream(root, secrets);
            let actions = read_actions(root, secrets);
            (engine, server, store, upstream, actions)
        })?;
        let (engine, server, store, upstream, actions) = parsed;
        Ok(Self {
            file: name.to_owned(),
            engine,
            server,
            store,
            upstream: upstream.expect("a missing [upstream] is reported as an error"),
            actions,
        })
    }
}

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

fn read_server(root: &Table<'_>) -> ServerConfig {
    let mut s = ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
        admin_token_env: None,
        max_query_bytes: 8 * 1024,
        max_body_bytes: 64 * 1024,
        event_replay: 1024,
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
    if let Some(n) = t.positive("max_query_bytes") {
        s.max_query_bytes = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(n) = t.positive("max_body_bytes") {
        s.max_body_bytes = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(n) = t.positive("event_replay") {
        s.event_replay = usize::try_from(n).unwrap_or(usize::MAX);
    }
    s
}

fn read_store(t: &Table<'_>) -> StoreConfig {
    let mut s = StoreConfig {
        path: PathBuf::from("revalidate.db"),
        max_age: Duration::from_secs(24 * 3600),
        buster: String::new(),
        flush_every: Duration::from_secs(1),
        on_error: OnStoreError::Fail,
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
    if let Some(d) = t.duration("max_age") {
        s.max_age = d;
    }
    if let Some(b) = t.string("buster") {
        s.buster = b.to_owned();
    }
    if let Some(d) = t.duration("flush_every") {
        s.flush_every = d;
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
        };
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
