//! The `Host` check: a request for a host the daemon does not answer for
//! is `421 misdirected_request`, before any route (reads, SSE, the
//! dashboard). It stops DNS rebinding: a page on `evil.example` whose name
//! resolves to 127.0.0.1 can reach the daemon from a browser, but its
//! requests say `Host: evil.example`.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{Request, header};
use axum::response::{IntoResponse, Response};
use futures::future::Either;
use tower::{Layer, Service};

use super::error::ApiError;
use crate::config::{HostPattern, split_host_port};

/// The hosts answered for.
#[derive(Clone, Debug)]
pub(crate) struct AllowedHosts(Vec<HostPattern>);

impl AllowedHosts {
    /// `configured`, or the defaults: `localhost`, `127.0.0.1`, `[::1]` and
    /// the listen address's own host, on any port.
    pub(crate) fn new(configured: Option<&[HostPattern]>, listen: SocketAddr) -> Self {
        if let Some(list) = configured {
            return Self(list.to_vec());
        }
        let own = match listen.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let mut hosts: Vec<HostPattern> = ["localhost", "127.0.0.1", "[::1]", own.as_str()]
            .into_iter()
            .map(|h| HostPattern::Exact {
                host: h.to_owned(),
                port: None,
            })
            .collect();
        hosts.dedup();
        Self(hosts)
    }

    /// Whether a `Host` header value is answered for.
    pub(crate) fn allows(&self, host: &str) -> bool {
        if self.0.contains(&HostPattern::Any) {
            return true;
        }
        // A fully qualified name may end with a dot: `localhost.`.
        let Ok((name, port)) = split_host_port(host.trim()) else {
            return false;
        };
        let name = name.strip_suffix('.').unwrap_or(&name);
        self.0.iter().any(|p| p.matches(name, port))
    }
}

/// The host a request is for: the `Host` header, or the URI's authority
/// (HTTP/2's `:authority`).
fn host_of<B>(request: &Request<B>) -> Option<&str> {
    request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
}

/// Whether `request` is for a host in `hosts`.
pub(crate) fn allowed<B>(hosts: &AllowedHosts, request: &Request<B>) -> bool {
    host_of(request).is_some_and(|h| hosts.allows(h))
}

/// The check as a layer: `421` unless the request's host is allowed. The
/// host is the `Host` header, or the URI's authority (HTTP/2's
/// `:authority`). A hand-written service rather than
/// `axum::middleware::from_fn`, which boxes a future and clones the inner
/// service for every request: an allowed request costs the check only.
#[derive(Clone, Debug)]
pub(crate) struct HostCheckLayer(Arc<AllowedHosts>);

impl HostCheckLayer {
    pub(crate) fn new(allowed: AllowedHosts) -> Self {
        Self(Arc::new(allowed))
    }
}

impl<S> Layer<S> for HostCheckLayer {
    type Service = HostCheck<S>;

    fn layer(&self, inner: S) -> HostCheck<S> {
        HostCheck {
            inner,
            allowed: self.0.clone(),
        }
    }
}

/// See [`HostCheckLayer`].
#[derive(Clone, Debug)]
pub(crate) struct HostCheck<S> {
    inner: S,
    allowed: Arc<AllowedHosts>,
}

impl<S, B> Service<Request<B>> for HostCheck<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if allowed(&self.allowed, &request) {
            return Either::Left(self.inner.call(request));
        }
        Either::Right(ready(Ok(ApiError::MisdirectedRequest {
            host: host_of(&request).unwrap_or_default().to_owned(),
        }
        .into_response())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[&str]) -> AllowedHosts {
        let parsed: Vec<HostPattern> = list
            .iter()
            .map(|h| HostPattern::parse(h).unwrap())
            .collect();
        AllowedHosts::new(Some(&parsed), "127.0.0.1:1".parse().unwrap())
    }

    #[test]
    fn the_defaults_are_loopback_and_the_listen_address() {
        let d = AllowedHosts::new(None, "192.0.2.7:8787".parse().unwrap());
        for ok in [
            "localhost",
            "localhost:8787",
            "LOCALHOST.",
            "127.0.0.1:1",
            "[::1]:8787",
            "192.0.2.7:8787",
        ] {
            assert!(d.allows(ok), "{ok}");
        }
        for no in [
            "evil.example",
            "evil.example:8787",
            "127.0.0.2",
            "localhost.evil.example",
            "",
            "[::2]",
        ] {
            assert!(!d.allows(no), "{no}");
        }
        let v6 = AllowedHosts::new(None, "[::1]:9".parse().unwrap());
        assert!(v6.allows("[::1]:9"));
        assert!(!v6.allows("::1"), "IPv6 without brackets is not a Host");
    }

    #[test]
    fn ports_wildcards_and_any() {
        let h = hosts(&[
            "cache.example.com:8787",
            "*.internal.example",
            "Other.Example",
        ]);
        assert!(h.allows("cache.example.com:8787"));
        assert!(!h.allows("cache.example.com:8788"), "another port");
        assert!(
            !h.allows("cache.example.com"),
            "no port is port 80, not 8787"
        );
        assert!(h.allows("a.internal.example"));
        assert!(h.allows("a.b.internal.example:1"));
        assert!(!h.allows("internal.example"), "the wildcard needs a label");
        assert!(!h.allows("xinternal.example"));
        assert!(
            h.allows("other.example:5"),
            "names compare case-insensitively"
        );
        assert!(hosts(&["*"]).allows("anything.at.all:1"));
        for bad in ["", "a*.b", "*.", "x:port", "[::1", "::1"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
