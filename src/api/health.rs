//! What a front (HAProxy, `fcsup haproxy-config`) sees of this node: `GET /healthz`, the
//! node's name on every response, the overflow answer, and `Connection: close` while draining.
//!
//! Overflow: a request that HAProxy forwarded (`X-Fcsup-Front: haproxy`) and that finds its
//! function or the node full gets **425** with `X-Fcsup-Full: 1` instead of 429, at once and
//! having done no work. HAProxy 2.6's `retry-on` takes only 401, 403, 404, 408, 425 and
//! 500–504; 425 ("Too Early", RFC 8470) means "send it again", whereas a 503 would also re-run
//! functions that answer 503 themselves. HAProxy retries the 425 on another node and turns a
//! last one that carries `X-Fcsup-Full` into FC's 429.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION};
use hyper::{Response, StatusCode};

use super::Resp;
use crate::health::Health;
use crate::supervisor::Supervisor;

/// The response header naming the node that answered.
const NODE: HeaderName = HeaderName::from_static("x-fcsup-node");
/// The request header HAProxy sets on what it forwards (a client's own is replaced there).
const FRONT: HeaderName = HeaderName::from_static("x-fcsup-front");
/// The response header that marks a 425 as "this node is full".
const FULL: HeaderName = HeaderName::from_static("x-fcsup-full");
/// Carries a function's own 425 past HAProxy's `retry-on 425` (which would run it again on
/// every node): the node sends 400 with this header, HAProxy puts the 425 back.
const OWN_STATUS: HeaderName = HeaderName::from_static("x-fcsup-status");

/// Marks a 429 `ResourceExhausted` response (the function or the node is full): the one
/// answer a front may send elsewhere.
#[derive(Debug, Clone, Copy)]
pub(super) struct Exhausted;

/// `X-Fcsup-Node`'s value, built once per listener; `None` (with a warning) when the node name
/// cannot be a header value.
pub(super) fn node_header(name: &str) -> Option<HeaderValue> {
    let v = HeaderValue::from_str(name).ok();
    if v.is_none() {
        tracing::warn!("the node name {name:?} cannot be an HTTP header value: responses carry no X-Fcsup-Node");
    }
    v
}

/// Whether HAProxy forwarded the request (then "full" is answered 425, for it to retry).
pub(super) fn from_front(headers: &HeaderMap) -> bool {
    headers.get(FRONT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"haproxy"))
}

/// What every response leaves with: the node's name; 425 + `X-Fcsup-Full` for a full answer
/// to HAProxy; `Connection: close` while draining, so that a front's kept-alive connections
/// move to other nodes too (not on a 101, whose connection becomes the tunnel).
pub(super) fn finish(resp: &mut Resp, node: Option<&HeaderValue>, front: bool, health: &Health) {
    if front {
        // Only fcsup speaks to HAProxy in these headers, never the function's answer.
        resp.headers_mut().remove(OWN_STATUS);
        resp.headers_mut().remove(FULL);
        if resp.status() == StatusCode::TOO_MANY_REQUESTS && resp.extensions().get::<Exhausted>().is_some() {
            *resp.status_mut() = StatusCode::TOO_EARLY;
            resp.headers_mut().insert(FULL, HeaderValue::from_static("1"));
        } else if resp.status() == StatusCode::TOO_EARLY {
            // The function ran and answered 425 itself: HAProxy must not run it again.
            *resp.status_mut() = StatusCode::BAD_REQUEST;
            resp.headers_mut().insert(OWN_STATUS, HeaderValue::from_static("425"));
        }
    }
    let close = health.draining() && resp.status() != StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    if let Some(n) = node {
        h.insert(NODE, n.clone());
    }
    if close {
        h.insert(CONNECTION, HeaderValue::from_static("close"));
    }
}

/// `GET /healthz`: 200 while the node takes requests, 503 once draining; the JSON says which
/// node, and whether its configuration source is reachable (a node that lost it still
/// serves, so that alone does not fail the check). Reads no body and touches no pool.
pub(super) fn healthz(sup: &Supervisor) -> Resp {
    let draining = sup.health.draining();
    let body = serde_json::json!({ "node": sup.node_name, "draining": draining, "source": sup.health.source() });
    Response::builder()
        .status(if draining { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK })
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body.to_string())).into())
        .expect("response")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exhausted() -> Resp {
        super::super::fc_error(StatusCode::TOO_MANY_REQUESTS, "ResourceExhausted", "full", "1-r")
    }

    #[test]
    fn full_becomes_425_only_for_the_front() {
        let health = Health::default();
        let node = node_header("n1");
        let mut r = exhausted();
        finish(&mut r, node.as_ref(), false, &health);
        assert_eq!((r.status(), r.headers().get(FULL)), (StatusCode::TOO_MANY_REQUESTS, None));
        assert_eq!(r.headers()[NODE], "n1");
        let mut r = exhausted();
        finish(&mut r, node.as_ref(), true, &health);
        assert_eq!((r.status().as_u16(), &r.headers()[FULL]), (425, &HeaderValue::from_static("1")));
        assert!(r.headers().get(CONNECTION).is_none());
        // Another 429 (a function's own, through an HTTP trigger) is not "full".
        let mut own: Resp = Response::builder().status(429).body(Full::new(Bytes::new()).into()).unwrap();
        finish(&mut own, node.as_ref(), true, &health);
        assert_eq!(own.status(), StatusCode::TOO_MANY_REQUESTS);
        // A function's own 425 ran: it must not look retryable to HAProxy (haproxy.rs puts the
        // 425 back); straight to the node it stays 425.
        let own425 =
            || -> Resp { Response::builder().status(425).header(OWN_STATUS, "425").header(FULL, "1").body(Full::new(Bytes::new()).into()).unwrap() };
        let mut r = own425();
        finish(&mut r, node.as_ref(), true, &health);
        assert_eq!((r.status(), &r.headers()[OWN_STATUS]), (StatusCode::BAD_REQUEST, &HeaderValue::from_static("425")));
        let mut r = own425();
        finish(&mut r, node.as_ref(), false, &health);
        assert_eq!(r.status().as_u16(), 425);
        // A function cannot set the marker on another answer.
        let mut r: Resp = Response::builder().status(200).header(OWN_STATUS, "425").body(Full::new(Bytes::new()).into()).unwrap();
        finish(&mut r, node.as_ref(), true, &health);
        assert_eq!((r.status().as_u16(), r.headers().get(OWN_STATUS)), (200, None));
    }

    #[test]
    fn draining_closes_connections_but_not_tunnels() {
        let health = Health::default();
        health.start_draining();
        let mut r = exhausted();
        finish(&mut r, None, false, &health);
        assert_eq!(r.headers()[CONNECTION], "close");
        let mut up: Resp = Response::builder().status(101).body(Full::new(Bytes::new()).into()).unwrap();
        finish(&mut up, None, false, &health);
        assert!(up.headers().get(CONNECTION).is_none());
    }

    #[test]
    fn front_header_and_node_names() {
        let mut h = HeaderMap::new();
        assert!(!from_front(&h));
        h.insert(FRONT, HeaderValue::from_static("HAProxy"));
        assert!(from_front(&h));
        assert!(node_header("bad\nname").is_none());
    }
}
