//! Whether a redirect from the upstream is followed: a pure decision.
//!
//! By default none is (`[upstream] follow_redirects = "never"`): a `3xx` is a
//! rejected fetch, so that the body of another host (or of the daemon
//! itself) never becomes an action's value. With `"same-origin"`, up to
//! [`MAX_HOPS`] redirects in a row are followed when they stay on the same
//! scheme, host and port, and only when the request keeps its meaning: any
//! redirect for a GET action, only `307`/`308` (which keep the method and
//! the body) for a POST action.

use reqwest::header::HeaderValue;
use reqwest::{StatusCode, Url};

use crate::config::{FollowRedirects, Method};

/// The most redirects followed for one fetch.
pub(crate) const MAX_HOPS: usize = 5;

/// Why a redirect was not followed (for the fetch error's message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NotFollowed {
    /// `follow_redirects = "never"`.
    Never,
    /// A `3xx` that is not a redirect to follow (300, 305, 306, …).
    NotARedirect,
    /// No `Location`, or one that is not a URL.
    NoLocation,
    /// A `Location` with `user:password@`.
    Credentials,
    /// Another scheme, host or port.
    OtherOrigin,
    /// A POST redirected by 301/302/303, which would become a GET.
    ChangesMethod,
    /// More than [`MAX_HOPS`] in a row.
    TooMany,
}

impl std::fmt::Display for NotFollowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Never => "redirects are not followed ([upstream] follow_redirects = \"never\")",
            Self::NotARedirect => "not a redirect that is followed (only 301, 302, 303, 307, 308)",
            Self::NoLocation => "its Location is missing or not a URL",
            Self::Credentials => "its Location carries credentials",
            Self::OtherOrigin => {
                "it leads to another origin ([upstream] follow_redirects = \"same-origin\" follows only the same scheme, host and port)"
            }
            Self::ChangesMethod => {
                "it would turn the POST into a GET (only 307 and 308 keep the method and the body)"
            }
            Self::TooMany => "more than 5 redirects in a row",
        })
    }
}

/// Where the redirect `status` + `location` from `from` leads, if it is
/// followed; `hops` redirects were followed before it.
pub(crate) fn follow(
    policy: FollowRedirects,
    method: Method,
    status: StatusCode,
    from: &Url,
    location: Option<&HeaderValue>,
    hops: usize,
) -> Result<Url, NotFollowed> {
    if policy == FollowRedirects::Never {
        return Err(NotFollowed::Never);
    }
    let keeps_method = match status.as_u16() {
        307 | 308 => true,
        301..=303 => false,
        _ => return Err(NotFollowed::NotARedirect),
    };
    let mut to = location
        .and_then(|l| l.to_str().ok())
        .and_then(|l| from.join(l.trim()).ok())
        .ok_or(NotFollowed::NoLocation)?;
    if !to.username().is_empty() || to.password().is_some() {
        return Err(NotFollowed::Credentials);
    }
    if !same_origin(from, &to) {
        return Err(NotFollowed::OtherOrigin);
    }
    if method == Method::Post && !keeps_method {
        return Err(NotFollowed::ChangesMethod);
    }
    if hops >= MAX_HOPS {
        return Err(NotFollowed::TooMany);
    }
    to.set_fragment(None);
    Ok(to)
}

/// The same scheme, host and port (the default port counting as given).
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host() == b.host()
        && a.port_or_known_default() == b.port_or_known_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn go(
        policy: FollowRedirects,
        method: Method,
        status: u16,
        location: &str,
        hops: usize,
    ) -> Result<String, NotFollowed> {
        let l = HeaderValue::from_str(location).unwrap();
        follow(
            policy,
            method,
            StatusCode::from_u16(status).unwrap(),
            &url("http://api:8080/actions/x?a=1"),
            Some(&l),
            hops,
        )
        .map(|u| u.to_string())
    }

    use FollowRedirects::{Never, SameOrigin};
    use Method::{Get, Post};

    #[test]
    fn never_follows_nothing() {
        for status in [301, 302, 303, 307, 308] {
            assert_eq!(go(Never, Get, status, "/y", 0), Err(NotFollowed::Never));
        }
    }

    #[test]
    fn same_origin_follows_only_the_same_origin() {
        assert_eq!(
            go(SameOrigin, Get, 302, "/y?b=2#frag", 0).unwrap(),
            "http://api:8080/y?b=2"
        );
        assert_eq!(
            go(SameOrigin, Get, 301, "http://api:8080/z", 4).unwrap(),
            "http://api:8080/z"
        );
        for other in [
            "http://evil:8080/y",
            "http://api:8081/y",
            "https://api:8080/y",
            "//evil/y",
        ] {
            assert_eq!(
                go(SameOrigin, Get, 302, other, 0),
                Err(NotFollowed::OtherOrigin),
                "{other}"
            );
        }
        assert_eq!(
            go(SameOrigin, Get, 302, "http://u:p@api:8080/y", 0),
            Err(NotFollowed::Credentials)
        );
        assert_eq!(
            go(SameOrigin, Get, 302, "http://[::1", 0),
            Err(NotFollowed::NoLocation)
        );
        assert_eq!(
            go(SameOrigin, Get, 300, "/y", 0),
            Err(NotFollowed::NotARedirect)
        );
        assert_eq!(
            go(SameOrigin, Get, 302, "/y", MAX_HOPS),
            Err(NotFollowed::TooMany)
        );
    }

    #[test]
    fn a_post_is_followed_only_where_it_stays_a_post() {
        for status in [307, 308] {
            assert!(go(SameOrigin, Post, status, "/y", 0).is_ok());
        }
        for status in [301, 302, 303] {
            assert_eq!(
                go(SameOrigin, Post, status, "/y", 0),
                Err(NotFollowed::ChangesMethod)
            );
        }
    }

    #[test]
    fn a_missing_location_is_not_followed() {
        let r = follow(
            SameOrigin,
            Get,
            StatusCode::FOUND,
            &url("http://api/x"),
            None,
            0,
        );
        assert_eq!(r, Err(NotFollowed::NoLocation));
    }
}
