//! FC 3.0's HTTP trigger for built-in runtimes: the request becomes an event (`version: "v1"`,
//! `rawPath`, `headers`, `queryParameters`, `body` + `isBase64Encoded`, `requestContext`) that
//! the handler receives as its payload, and the handler's result becomes the response: an
//! object with `statusCode` is read as `{statusCode, headers, body, isBase64Encoded}`, anything
//! else is sent as the body of a 200. (FC docs, "Use an HTTP trigger to invoke a function".)
//! Custom runtimes do not use this: their HTTP triggers are proxied as they are.

use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use hyper::{HeaderMap, Method, StatusCode, Version};
use serde_json::{json, Map, Value};

/// What the event says about the request beyond the request itself.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    /// `requestContext.requestId`.
    pub request_id: &'a str,
    /// `requestContext.accountId`.
    pub account_id: &'a str,
    /// `requestContext.domainName`, e.g. `<trigger-id>.<region>.fcapp.run` on FC; fcsup's
    /// own host name here.
    pub domain_name: &'a str,
    /// `requestContext.domainPrefix`.
    pub domain_prefix: &'a str,
    /// `requestContext.http.sourceIp`: the client's address.
    pub source_ip: &'a str,
    /// When the request arrived, ms since the epoch (`time`, `timeEpoch`).
    pub time_ms: u64,
}

/// The event for a request: `path_and_query` is the path below the trigger (`/a/b?x=1`).
pub fn event(method: &Method, path_and_query: &str, version: Version, headers: &HeaderMap, body: &[u8], ctx: &RequestContext<'_>) -> Bytes {
    let (raw_path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, q),
        None => (path_and_query, ""),
    };
    let raw_path = if raw_path.is_empty() { "/" } else { raw_path };
    // The front door sets X-Real-IP to the TCP peer on every HTTP-trigger request.
    let source_ip = match ctx.source_ip {
        "" => headers.get("x-real-ip").and_then(|v| v.to_str().ok()).unwrap_or(""),
        ip => ip,
    };
    let mut hdrs: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let v = String::from_utf8_lossy(value.as_bytes());
        hdrs.entry(canonical_header(name.as_str()))
            .and_modify(|s| {
                s.push(',');
                s.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (form_decode(k), form_decode(v));
        params
            .entry(k)
            .and_modify(|s| {
                s.push(',');
                s.push_str(&v);
            })
            .or_insert(v);
    }
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let (body, is_base64) = match std::str::from_utf8(body) {
        Ok(text) if content_type.is_none_or(is_textual) => (text.to_string(), false),
        _ => (base64::engine::general_purpose::STANDARD.encode(body), true),
    };
    let time = crate::clock::rfc3339_ms(ctx.time_ms);
    // FC shows seconds only: 2023-09-05T06:41:11Z.
    let time = format!("{}Z", &time[..19]);
    let user_agent = headers.get(USER_AGENT).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default();
    let ev = json!({
        "version": "v1",
        "rawPath": raw_path,
        "body": body,
        "isBase64Encoded": is_base64,
        "headers": hdrs,
        "queryParameters": params,
        "requestContext": {
            "accountId": ctx.account_id,
            "domainName": ctx.domain_name,
            "domainPrefix": ctx.domain_prefix,
            "http": {
                "method": method.as_str(),
                "path": percent_encoding::percent_decode_str(raw_path).decode_utf8_lossy(),
                "protocol": format!("{version:?}"),
                "sourceIp": source_ip,
                "userAgent": user_agent,
            },
            "requestId": ctx.request_id,
            "time": time,
            "timeEpoch": ctx.time_ms.to_string(),
        },
    });
    Bytes::from(ev.to_string())
}

/// `content-type` → `Content-Type`, as FC 3.0 shows header names in the event.
fn canonical_header(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() });
        upper = c == '-';
    }
    out
}

/// A query component as a form decodes it: `+` is a space, then percent-decoding.
fn form_decode(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s).decode_utf8_lossy().into_owned()
}

/// Bodies of these types reach the handler as text; others are base64.
fn is_textual(content_type: &str) -> bool {
    let t = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    t.starts_with("text/")
        || t.ends_with("+json")
        || t.ends_with("+xml")
        || matches!(
            t.as_str(),
            "application/json" | "application/xml" | "application/javascript" | "application/x-www-form-urlencoded" | "application/graphql"
        )
}

/// The HTTP response a handler's result maps to.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers the handler set (those FC reserves dropped).
    pub headers: HeaderMap,
    /// Body, base64-decoded where the handler said so.
    pub body: Bytes,
}

/// A result shaped as a response (it has `statusCode`) that cannot be one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the function's HTTP response is invalid: {0}")]
pub struct BadResponse(pub String);

/// Response headers FC does not let a function set (fc-spec §1.3); dropped silently.
fn reserved(name: &str) -> bool {
    name.starts_with("x-fc-") || matches!(name, "connection" | "content-length" | "date" | "keep-alive" | "server" | "upgrade" | "transfer-encoding")
}

/// Maps a handler's result to the HTTP response.
pub fn response(result: &[u8]) -> Result<HttpResponse, BadResponse> {
    match serde_json::from_slice::<Value>(result) {
        Ok(Value::Object(m)) if m.contains_key("statusCode") => structured(m),
        _ => Ok(HttpResponse { status: StatusCode::OK, headers: HeaderMap::new(), body: Bytes::copy_from_slice(result) }),
    }
}

fn structured(m: Map<String, Value>) -> Result<HttpResponse, BadResponse> {
    let bad = |s: String| BadResponse(s);
    let status = match &m["statusCode"] {
        Value::Number(n) => {
            n.as_u64().and_then(|n| u16::try_from(n).ok()).and_then(|n| StatusCode::from_u16(n).ok()).filter(|s| (100..600).contains(&s.as_u16()))
        }
        _ => None,
    }
    .ok_or_else(|| bad(format!("statusCode {} is not an HTTP status (an integer from 100 to 599)", m["statusCode"])))?;
    let mut headers = HeaderMap::new();
    match m.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => {
            for (k, v) in h {
                let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad(format!("header name {k:?} is invalid")))?;
                if reserved(name.as_str()) {
                    continue;
                }
                let values: Vec<String> = match v {
                    Value::String(s) => vec![s.clone()],
                    Value::Number(_) | Value::Bool(_) => vec![v.to_string()],
                    Value::Array(a) => a.iter().map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())).collect(),
                    Value::Null => continue,
                    Value::Object(_) => return Err(bad(format!("header {k:?} has an object for a value"))),
                };
                for s in values {
                    let hv = HeaderValue::from_str(&s).map_err(|_| bad(format!("header {k:?} value {s:?} is invalid")))?;
                    headers.append(name.clone(), hv);
                }
            }
        }
        Some(other) => return Err(bad(format!("headers must be an object, not {other}"))),
    }
    let base64 = match m.get("isBase64Encoded") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(bad(format!("isBase64Encoded must be true or false, not {other}"))),
    };
    let text = match m.get("body") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let body = if base64 {
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|e| bad(format!("body is not valid base64 though isBase64Encoded is true: {e}")))?
    } else {
        text.into_bytes()
    };
    Ok(HttpResponse { status, headers, body: Bytes::from(body) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RequestContext<'static> {
        RequestContext {
            request_id: "1-abc",
            account_id: "123",
            domain_name: "fn.local",
            domain_prefix: "fn",
            source_ip: "10.0.0.7",
            time_ms: 1_693_896_071_895,
        }
    }

    fn ev(method: Method, pq: &str, headers: &[(&str, &str)], body: &[u8]) -> Value {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        serde_json::from_slice(&event(&method, pq, Version::HTTP_11, &h, body, &ctx())).unwrap()
    }

    #[test]
    fn event_has_fc_shape() {
        let e = ev(
            Method::POST,
            "/a%20b/c?x=1&y=two+words&x=2&flag",
            &[("content-type", "text/plain"), ("user-agent", "curl/8"), ("x-multi", "1"), ("x-multi", "2")],
            b"Hello FC!",
        );
        assert_eq!(e["version"], "v1");
        assert_eq!(e["rawPath"], "/a%20b/c");
        assert_eq!(e["body"], "Hello FC!");
        assert_eq!(e["isBase64Encoded"], false);
        assert_eq!(e["headers"]["Content-Type"], "text/plain");
        assert_eq!(e["headers"]["X-Multi"], "1,2");
        assert_eq!(e["queryParameters"]["x"], "1,2");
        assert_eq!(e["queryParameters"]["y"], "two words");
        assert_eq!(e["queryParameters"]["flag"], "");
        let rc = &e["requestContext"];
        assert_eq!(rc["accountId"], "123");
        assert_eq!(rc["domainName"], "fn.local");
        assert_eq!(rc["domainPrefix"], "fn");
        assert_eq!(rc["http"]["method"], "POST");
        assert_eq!(rc["http"]["path"], "/a b/c");
        assert_eq!(rc["http"]["protocol"], "HTTP/1.1");
        assert_eq!(rc["http"]["sourceIp"], "10.0.0.7");
        assert_eq!(rc["http"]["userAgent"], "curl/8");
        assert_eq!(rc["requestId"], "1-abc");
        assert_eq!(rc["time"], "2023-09-05T06:41:11Z");
        assert_eq!(rc["timeEpoch"], "1693896071895");
    }

    #[test]
    fn source_ip_falls_back_to_the_front_doors_header() {
        let mut h = HeaderMap::new();
        h.insert("x-real-ip", HeaderValue::from_static("192.0.2.5"));
        let unknown = RequestContext { source_ip: "", ..ctx() };
        let e: Value = serde_json::from_slice(&event(&Method::GET, "/", Version::HTTP_11, &h, b"", &unknown)).unwrap();
        assert_eq!(e["requestContext"]["http"]["sourceIp"], "192.0.2.5");
        let e: Value = serde_json::from_slice(&event(&Method::GET, "/", Version::HTTP_11, &h, b"", &ctx())).unwrap();
        assert_eq!(e["requestContext"]["http"]["sourceIp"], "10.0.0.7", "a known address wins");
    }

    #[test]
    fn binary_bodies_are_base64() {
        let e = ev(Method::PUT, "/", &[("content-type", "application/octet-stream")], b"abc");
        assert_eq!(e["isBase64Encoded"], true);
        assert_eq!(e["body"], "YWJj");
        let e = ev(Method::PUT, "/", &[], &[0xff, 0x00]);
        assert_eq!(e["isBase64Encoded"], true);
        assert_eq!(e["body"], "/wA=");
        // Text without a content type stays text; JSON is text.
        let e = ev(Method::PUT, "", &[], b"plain");
        assert_eq!((e["body"].as_str(), e["isBase64Encoded"].as_bool(), e["rawPath"].as_str()), (Some("plain"), Some(false), Some("/")));
        let e = ev(Method::PUT, "/", &[("content-type", "application/json; charset=utf-8")], b"{}");
        assert_eq!(e["isBase64Encoded"], false);
        assert_eq!(e["queryParameters"], json!({}));
    }

    #[test]
    fn structured_result_maps_to_response() {
        let r = response(br#"{"statusCode":201,"headers":{"Content-Type":"text/html","X-N":3,"Set-Cookie":["a=1","b=2"],"x-fc-request-id":"no","Content-Length":"9"},"body":"<p>hi</p>"}"#).unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.headers["content-type"], "text/html");
        assert_eq!(r.headers["x-n"], "3");
        assert_eq!(r.headers.get_all("set-cookie").iter().count(), 2);
        assert!(r.headers.get("x-fc-request-id").is_none());
        assert!(r.headers.get("content-length").is_none());
        assert_eq!(&r.body[..], b"<p>hi</p>");
        let r = response(br#"{"statusCode":200,"body":"AAEC","isBase64Encoded":true}"#).unwrap();
        assert_eq!(&r.body[..], &[0, 1, 2]);
        let r = response(br#"{"statusCode":204}"#).unwrap();
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert!(r.body.is_empty());
    }

    #[test]
    fn other_results_are_the_body_of_a_200() {
        for raw in [&b"hello"[..], b"{\"a\":1}", b"[1,2]", b"\"s\"", b"", &[0xff, 0xfe]] {
            let r = response(raw).unwrap();
            assert_eq!(r.status, StatusCode::OK);
            assert!(r.headers.is_empty());
            assert_eq!(&r.body[..], raw);
        }
    }

    #[test]
    fn bad_structured_results_are_refused() {
        for raw in [
            &br#"{"statusCode":"200"}"#[..],
            br#"{"statusCode":99}"#,
            br#"{"statusCode":600}"#,
            br#"{"statusCode":200,"headers":"x"}"#,
            br#"{"statusCode":200,"headers":{"bad name":"v"}}"#,
            br#"{"statusCode":200,"headers":{"a":{"b":1}}}"#,
            br#"{"statusCode":200,"body":"!!","isBase64Encoded":true}"#,
            br#"{"statusCode":200,"isBase64Encoded":"yes"}"#,
        ] {
            let e = response(raw).unwrap_err();
            assert!(e.to_string().starts_with("the function's HTTP response is invalid"), "{e}");
        }
    }

    #[test]
    fn header_names_are_canonical() {
        assert_eq!(canonical_header("x-forwarded-for"), "X-Forwarded-For");
        assert_eq!(canonical_header("host"), "Host");
    }
}
