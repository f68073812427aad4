//! Keeping the secrets the daemon sends upstream out of everything it says.
//!
//! An upstream may echo request headers in its error bodies (its service
//! token, a key), and those bodies go into fetch errors' messages, which the
//! engine shows in `/v1/queries`, `/v1/live` and logs, and stores. The
//! [`Redactor`] is built with the upstream from every configured header
//! value (after `${ENV}` expansion) and applied to every error message the
//! upstream module builds, before any of them leaves it: nothing downstream
//! can leak what it never receives.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use revalidate::FetchError;

/// What replaces a secret.
pub(crate) const REDACTED: &str = "[redacted]";

/// Values shorter than this are not secrets worth the noise of redacting
/// (and would match ordinary words).
const MIN_SECRET: usize = 4;

/// Replaces every configured header value, in the forms an upstream is
/// likely to echo it, by [`REDACTED`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Redactor {
    /// Every form of every secret, longest first (so that a longer form
    /// wins over a shorter one it contains).
    needles: Vec<String>,
}

impl Redactor {
    /// A redactor of `values` (header values as sent). For each value of at
    /// least 4 bytes, it redacts: the value; its credentials after an auth
    /// scheme (`Bearer <token>`: the token), and for `Basic`, the decoded
    /// `user:password` and the password; and each of those in Base64
    /// (standard and URL-safe), percent-encoded (upper- and lower-case hex,
    /// `+` or `%20` for spaces) and JSON-escaped.
    pub(crate) fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut needles = Vec::new();
        for value in values {
            for secret in secrets_of(value) {
                forms(&secret, &mut needles);
            }
        }
        needles.retain(|n| n.len() >= MIN_SECRET);
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        needles.dedup();
        Self { needles }
    }

    /// This redactor and `value` too (a caller's credential, for the one
    /// fetch made with it).
    pub(crate) fn with(&self, value: &str) -> Self {
        let mut needles = self.needles.clone();
        for secret in secrets_of(value) {
            forms(&secret, &mut needles);
        }
        needles.retain(|n| n.len() >= MIN_SECRET);
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        needles.dedup();
        Self { needles }
    }

    /// The length of the longest form of a secret, in bytes: text cut after
    /// redaction must be redacted over at least this much more than it keeps.
    pub(crate) fn longest(&self) -> usize {
        self.needles.first().map_or(0, String::len)
    }

    /// `text` with every secret replaced.
    pub(crate) fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        if self.needles.is_empty() || !self.needles.iter().any(|n| text.contains(n.as_str())) {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        'scan: while !rest.is_empty() {
            for n in &self.needles {
                if let Some(after) = rest.strip_prefix(n.as_str()) {
                    out.push_str(REDACTED);
                    rest = after;
                    continue 'scan;
                }
            }
            let c = rest.chars().next().expect("not empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        Cow::Owned(out)
    }

    /// `error` with its message redacted (kind, status and `Retry-After`
    /// kept).
    pub(crate) fn error(&self, error: FetchError) -> FetchError {
        let Cow::Owned(message) = self.redact(error.message()) else {
            return error;
        };
        let mut redacted = FetchError::new(error.kind(), message);
        if let Some(status) = error.status() {
            redacted = redacted.with_status(status);
        }
        if let Some(delay) = error.retry_after() {
            redacted = redacted.with_retry_after(delay);
        }
        redacted
    }
}

/// The secrets in one header value: the value, the credentials after an
/// auth scheme, and what `Basic` credentials decode to.
fn secrets_of(value: &str) -> Vec<String> {
    let mut out = vec![value.to_owned()];
    if let Some((scheme, credentials)) = value.trim().split_once(' ')
        && !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        let credentials = credentials.trim();
        out.push(credentials.to_owned());
        if scheme.eq_ignore_ascii_case("basic")
            && let Ok(decoded) = STANDARD.decode(credentials)
            && let Ok(decoded) = String::from_utf8(decoded)
        {
            if let Some((_, password)) = decoded.split_once(':') {
                out.push(password.to_owned());
            }
            out.push(decoded);
        }
    }
    out
}

/// The forms of `secret` an upstream is likely to echo.
fn forms(secret: &str, out: &mut Vec<String>) {
    if secret.len() < MIN_SECRET {
        return;
    }
    out.push(secret.to_owned());
    // Padded first (longer), then without: also a prefix of the padded
    // form, for an echo that cut or dropped the padding.
    out.push(STANDARD.encode(secret));
    out.push(URL_SAFE.encode(secret));
    out.push(STANDARD_NO_PAD.encode(secret));
    out.push(URL_SAFE_NO_PAD.encode(secret));
    let percent = percent_encode(secret);
    out.push(lower_hex(&percent));
    out.push(percent.replace("%20", "+"));
    out.push(percent);
    if let Ok(json) = serde_json::to_string(secret) {
        out.push(json[1..json.len() - 1].to_owned());
    }
}

/// Percent-encodes every byte but RFC 3986's unreserved characters, with
/// upper-case hex.
fn percent_encode(s: &str) -> String {
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

/// The lower-case-hex spelling of a percent-encoded text (`%2F` → `%2f`).
fn lower_hex(percent: &str) -> String {
    let mut out = String::with_capacity(percent.len());
    let mut rest = percent;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let escape = rest.get(i..i + 3).unwrap_or(&rest[i..]);
        out.push_str(&escape.to_ascii_lowercase());
        rest = &rest[i + escape.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn redactor() -> Redactor {
        let basic = format!("Basic {}", STANDARD.encode("svc:pa55-w0rd"));
        Redactor::new(["Bearer tok-123/abc+xyz", "plain-key", basic.as_str(), "abc"])
    }

    #[test]
    fn every_form_of_every_secret_is_redacted() {
        let r = redactor();
        let token = "tok-123/abc+xyz";
        let cases = [
            format!("Bearer {token}"),
            token.to_owned(),
            "plain-key".to_owned(),
            STANDARD.encode(format!("Bearer {token}")),
            STANDARD.encode(token),
            URL_SAFE_NO_PAD.encode(token),
            percent_encode(token),
            lower_hex(&percent_encode(token)),
            percent_encode("Bearer tok-123/abc+xyz").replace("%20", "+"),
            "svc:pa55-w0rd".to_owned(),
            "pa55-w0rd".to_owned(),
            STANDARD.encode("svc:pa55-w0rd"),
        ];
        for secret in &cases {
            let text = format!("denied <{secret}> (again: {secret})");
            let out = r.redact(&text);
            assert_eq!(out, "denied <[redacted]> (again: [redacted])", "{secret}");
        }
        // Quoted in JSON, with escapes.
        let r = Redactor::new(["a\"b\\c/d"]);
        assert_eq!(
            r.redact(r#"{"echo":"a\"b\\c/d"}"#),
            r#"{"echo":"[redacted]"}"#
        );
    }

    #[test]
    fn short_values_and_clean_text_are_left_alone() {
        let r = redactor();
        assert!(matches!(r.redact("abc and Bearer"), Cow::Borrowed(_)));
        assert!(matches!(Redactor::default().redact("x"), Cow::Borrowed(_)));
        assert_eq!(Redactor::default().longest(), 0);
        // Multi-byte text around a secret stays whole.
        assert_eq!(r.redact("é plain-key ü"), "é [redacted] ü");
    }

    #[test]
    fn errors_keep_kind_status_and_retry_after() {
        let r = redactor();
        let e = FetchError::rejected("slow down, plain-key")
            .with_status(429)
            .with_retry_after(Duration::from_secs(3));
        let out = r.error(e);
        assert_eq!(out.message(), "slow down, [redacted]");
        assert_eq!(out.kind(), revalidate::FetchErrorKind::Rejected);
        assert_eq!(out.status(), Some(429));
        assert_eq!(out.retry_after(), Some(Duration::from_secs(3)));
        let clean = FetchError::network("refused");
        assert_eq!(r.error(clean.clone()), clean);
    }
}
