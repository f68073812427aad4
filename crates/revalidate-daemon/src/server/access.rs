//! Who may read, and as whom: the read token (`[server] read_token_env`)
//! and the caller's identity (`[identity]`), for the routes that serve data
//! (reads, the change feed, the app's own paths).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::Response;
use revalidate::QueryKey;
use serde_json::Value;

use super::AppState;
use super::error::ApiError;
use crate::identity::{Caller, user_key};

/// The header a read token travels in.
pub(crate) const READ_TOKEN_HEADER: HeaderName = HeaderName::from_static("x-revalidate-token");

/// A request allowed to read: it carried the read token (when one is
/// configured), and this is its caller, when it has an identity.
#[derive(Debug)]
pub(crate) struct Reader {
    pub(crate) caller: Option<Caller>,
    /// The caller's headers that are the daemon's business only beyond the
    /// read token's own (an `Authorization` that carried the read token; an
    /// identity header from someone not trusted to set it). See
    /// [`Reader::private_headers`].
    extra_private: Vec<HeaderName>,
}

/// Whether `a` and `b` are equal, in a time that depends on their lengths
/// only.
pub(crate) fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The credentials of an `Authorization: Bearer <token>` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    // The scheme is case-insensitive (RFC 9110 §11.1): `bearer` is `Bearer`.
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

/// `?token=` in a query string (the change feed only: a browser's
/// `EventSource` cannot send headers).
fn query_token(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

/// Where a request carried the read token.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TokenIn {
    /// None is required.
    NotRequired,
    /// `Authorization: Bearer` (then that header is the daemon's only).
    Bearer,
    /// `X-Revalidate-Token`, or `?token=` on the change feed.
    Elsewhere,
}

/// The read token check (`[server] read_token_env`), for any request with
/// headers and a URI: a request or its parts.
///
/// # Errors
///
/// A token is required and the request carries none that matches: `401`.
pub(crate) fn read_token<R: HasHead>(state: &AppState, request: &R) -> Result<TokenIn, ApiError> {
    let Some(token) = &state.read_token else {
        return Ok(TokenIn::NotRequired);
    };
    let (headers, uri) = request.head();
    let header = headers
        .get(&READ_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok());
    // `Authorization` is the caller's own credential when it is their
    // identity: then it is never the read token.
    let identities = state.upstream.identities();
    let by_bearer = identities.is_none_or(|i| !i.uses_authorization());
    let bearer = by_bearer.then(|| bearer(headers)).flatten();
    let in_query = (uri.path() == "/v1/events")
        .then(|| query_token(uri.query()))
        .flatten();
    let given = [header, bearer, in_query.as_deref()];
    if !given.iter().flatten().any(|g| same_token(g, token)) {
        return Err(ApiError::ReadTokenRequired);
    }
    Ok(if bearer.is_some_and(|b| same_token(b, token)) {
        TokenIn::Bearer
    } else {
        TokenIn::Elsewhere
    })
}

/// A request's head: its headers and URI.
pub(crate) trait HasHead {
    fn head(&self) -> (&HeaderMap, &axum::http::Uri);
}

impl HasHead for Parts {
    fn head(&self) -> (&HeaderMap, &axum::http::Uri) {
        (&self.headers, &self.uri)
    }
}

impl<B> HasHead for axum::http::Request<B> {
    fn head(&self) -> (&HeaderMap, &axum::http::Uri) {
        (self.headers(), self.uri())
    }
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let identities = state.upstream.identities();
        // Empty (no allocation) on a plain read: most requests.
        let mut extra_private = Vec::new();
        if read_token(state, &*parts)? == TokenIn::Bearer {
            extra_private.push(header::AUTHORIZATION);
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let caller = identities.and_then(|i| i.caller(&parts.headers, peer));
        if let Some(name) = identities.and_then(|i| i.gateway_header())
            && caller.is_none()
            && let Ok(name) = HeaderName::from_bytes(name.as_bytes())
        {
            // Someone other than the gateway set the gateway's header.
            extra_private.push(name);
        }
        Ok(Self {
            caller,
            extra_private,
        })
    }
}

impl Reader {
    /// The caller's headers that are the daemon's business only (the read
    /// token; an identity header from someone not trusted to set it), never
    /// forwarded upstream. Built when something is forwarded, not per read.
    pub(crate) fn private_headers(&self) -> Vec<HeaderName> {
        let mut all = Vec::with_capacity(1 + self.extra_private.len());
        all.push(READ_TOKEN_HEADER);
        all.extend(self.extra_private.iter().cloned());
        all
    }

    /// The key `action` with `params` has for this caller: a per-user
    /// action's is the caller's own (whose credential is kept to refresh
    /// it); a shared one's is everyone's.
    ///
    /// # Errors
    ///
    /// A per-user action and a caller without an identity: `401`.
    pub(crate) fn key(
        &self,
        state: &AppState,
        action: &str,
        params: Value,
    ) -> Result<QueryKey, ApiError> {
        if !state.upstream.scopes().is_user(action) {
            return Ok(QueryKey::new(action, params));
        }
        let (Some(caller), Some(identities)) = (&self.caller, state.upstream.identities()) else {
            return Err(ApiError::IdentityRequired {
                action: action.to_owned(),
                header: state
                    .upstream
                    .identities()
                    .and_then(|i| i.gateway_header())
                    .unwrap_or("Authorization")
                    .to_owned(),
            });
        };
        identities.remember(caller);
        Ok(user_key(action, &caller.id, params))
    }
}

/// Marks the answer of a per-user read as the caller's own, so that no
/// shared cache on the way (a CDN, an nginx) stores it for others:
/// `Cache-Control: private` and `Vary` on the identity header.
pub(crate) fn seal(state: &AppState, action: &str, mut response: Response) -> Response {
    if state.upstream.scopes().is_user(action) {
        let vary = state
            .upstream
            .identities()
            .and_then(|i| i.gateway_header())
            .and_then(|h| HeaderValue::from_str(h).ok())
            .unwrap_or(HeaderValue::from_static("authorization"));
        let h = response.headers_mut();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-cache"),
        );
        h.append(header::VARY, vary);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "abcd"));
        assert!(!same_token("", "a"));
        assert_eq!(
            query_token(Some("action=a&token=t%20k")),
            Some("t k".into())
        );
        assert_eq!(query_token(Some("action=a")), None);
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "bearer  tok ".parse().unwrap());
        assert_eq!(bearer(&h), Some("tok"));
        h.insert(header::AUTHORIZATION, "Basic dXNlcjpwdw==".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
