//! Requests forwarded uncached: mutations, and with `[server] passthrough`
//! any path no action declares.
//!
//! The caller's method, headers and body go to the upstream as they came,
//! but for the hop-by-hop headers (RFC 9110 §7.6.1), `Host` and
//! `Content-Length` (the HTTP client sets its own), and what the daemon
//! names as its own (its read token, a gateway's identity header sent by
//! someone who is not the gateway). The answer comes back the same way:
//! status, end-to-end headers, and the body streamed as it arrives, never
//! held whole nor cached. Nothing here logs a header or a query string.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::Stream;
use reqwest::header::{self, HeaderMap, HeaderName};
use revalidate::FetchError;

use super::{Upstream, join, send_error};

/// Where a forwarded request goes.
#[derive(Debug)]
pub(crate) enum Target<'a> {
    /// A declared mutation, at its route, with the caller's query string.
    Action {
        name: &'a str,
        query: Option<&'a str>,
    },
    /// A path below `base_url`, with its query string (passthrough).
    Path {
        path: &'a str,
        query: Option<&'a str>,
    },
}

/// A request to forward.
#[derive(Debug)]
pub(crate) struct Outgoing<'a> {
    pub(crate) method: reqwest::Method,
    pub(crate) target: Target<'a>,
    /// The caller's headers.
    pub(crate) headers: &'a HeaderMap,
    /// Headers of the caller's that must not leave the daemon.
    pub(crate) strip: &'a [HeaderName],
    pub(crate) body: Bytes,
}

/// The upstream's answer to a forwarded request.
#[derive(Debug)]
pub(crate) struct Forwarded {
    pub(crate) status: reqwest::StatusCode,
    /// Its end-to-end headers.
    pub(crate) headers: HeaderMap,
    response: reqwest::Response,
}

impl Forwarded {
    /// The body, chunk by chunk as the upstream sends it.
    pub(crate) fn body(self) -> impl Stream<Item = Result<Bytes, reqwest::Error>> + Send {
        futures::stream::unfold(Some(self.response), |response| async move {
            let mut response = response?;
            match response.chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(response))),
                Ok(None) => None,
                // The error ends the stream: nothing is polled after it.
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}

/// The hop-by-hop headers, and those the HTTP client sets itself.
const NOT_FORWARDED: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HOST,
];

/// `headers` without the hop-by-hop ones (also those `Connection` names),
/// `Content-Length` and `strip`.
pub(crate) fn end_to_end(headers: &HeaderMap, strip: &[HeaderName]) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if NOT_FORWARDED.contains(name)
            || name == header::CONTENT_LENGTH
            || named.contains(name)
            || strip.contains(name)
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

impl Upstream {
    /// Sends `out` upstream, once: never retried (a mutation must not run
    /// twice), never cached. A declared action gets its configured headers
    /// where the caller did not send them; a passthrough path gets the
    /// caller's only, so that the daemon's own credentials never reach a
    /// path no action declares.
    ///
    /// # Errors
    ///
    /// The request got no answer (redacted, as every error of this module).
    pub(crate) async fn forward(&self, out: Outgoing<'_>) -> Result<Forwarded, FetchError> {
        let mut headers = end_to_end(out.headers, out.strip);
        let (mut url, query) = match out.target {
            Target::Action { name, query } => {
                let Some(route) = self.routes.get(name) else {
                    return Err(FetchError::rejected(format!(
                        "`{name}` is not a declared action"
                    )));
                };
                for (name, value) in &route.headers {
                    if !headers.contains_key(name) {
                        headers.insert(name.clone(), value.clone());
                    }
                }
                (route.url.clone(), query)
            }
            Target::Path { path, query } => (join(&self.base_url, path), query),
        };
        url.set_query(query.filter(|q| !q.is_empty()));
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut response = self
            .http
            .request(out.method, url)
            .headers(headers)
            .body(out.body)
            .send()
            .await
            .map_err(|e| self.redactor.error(send_error(&e)))?;
        let status = response.status();
        let headers = end_to_end(&std::mem::take(response.headers_mut()), &[]);
        Ok(Forwarded {
            status,
            headers,
            response,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn hop_by_hop_headers_and_stripped_ones_stay_here() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("host", "daemon:8080"),
            ("content-length", "12"),
            ("x-revalidate-token", "t0ken"),
            ("authorization", "Bearer user"),
            ("content-type", "application/json"),
            ("x-trace", "a"),
        ] {
            h.append(name, HeaderValue::from_static(value));
        }
        h.append("x-trace", HeaderValue::from_static("b"));
        let out = end_to_end(&h, &[HeaderName::from_static("x-revalidate-token")]);
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["authorization", "content-type", "x-trace"]);
        assert_eq!(
            out.get_all("x-trace").iter().count(),
            2,
            "repeated lines kept"
        );
    }
}
