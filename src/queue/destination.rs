//! FC's destination record: what a function named by `destinationConfig.onSuccess`/`onFailure`
//! receives, as an Async invocation of its own, when a task ends. The shape is FC's
//! ("Result callback", <https://www.alibabacloud.com/help/en/fc/user-guide/result-callback>):
//!
//! ```json
//! {"timestamp": "2020-08-20T12:00:00.000Z",
//!  "requestContext": {"requestId": "…", "functionArn": "acs:fc:<region>:<account>:functions/<name>",
//!                     "condition": "", "approximateInvokeCount": 1},
//!  "requestPayload": "…",
//!  "responseContext": {"statusCode": 200, "functionError": ""},
//!  "responsePayload": "…"}
//! ```
//!
//! `condition` is the invocation's error type (empty on success; `EventAgeExceeded` for an
//! event that expired before any attempt, as FC documents no name for it), `functionError` the
//! error message, and the payloads are the request and response bodies as text (base64 when
//! not UTF-8). The function's ARN uses the region and account written in the destination's.
//!
//! Two guards FC's page does not spell out: a record is an Async invocation, so it is kept
//! within FC's 128 KB Async payload (the payloads are cut, and `payloadTruncated: true` says
//! so); and a chain of destinations (A's record to B, B's to A, …) stops after
//! [`MAX_HOPS`] records, as AWS Lambda stops recursive loops, so a loop cannot run forever.

use base64::Engine;
use bytes::Bytes;
use hyper::{HeaderMap, Method};

use super::{Job, Last, TaskState};
use crate::config::Destination;
use crate::instance::Call;

/// FC's Async payload limit, which a record is held to.
pub(super) const MAX_RECORD: usize = 128 * 1024;

/// The most of a record's error message and condition kept (escaped bytes).
const MAX_TEXT: usize = 4096;

/// Records in one chain of destinations before the next is not sent.
pub(super) const MAX_HOPS: u32 = 16;

/// Where a destination call counts its place in a chain (kept with the task, never sent to
/// the function: API invokes pass only FC's headers).
pub const HOPS: &str = "x-fcsup-destination-hops";

/// How many destination records led to `call` (0 for a client's own invocation).
pub(super) fn hops(call: &Call) -> u32 {
    call.headers.get(HOPS).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn text(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => base64::engine::general_purpose::STANDARD.encode(b),
    }
}

/// The record of `job`, ended in `state`, for destination `d`.
pub(super) fn record(d: &Destination, job: &Job, state: TaskState, message: Option<&str>, last: &Last, attempts: u32) -> Bytes {
    let success = state == TaskState::Succeeded;
    let condition = match (success, &last.error_type) {
        (true, _) => String::new(),
        (false, Some(t)) => t.clone(),
        (false, None) => "EventAgeExceeded".into(),
    };
    let function_error = if success { String::new() } else { message.map(str::to_string).or_else(|| last.error_message.clone()).unwrap_or_default() };
    // Both are the function's words (its runtime's error post), held to a size beside the payloads.
    let (function_error, condition) = (cut_escaped(&function_error, MAX_TEXT), cut_escaped(&condition, MAX_TEXT));
    let response = match (&last.body, success) {
        (Some(b), _) => text(b),
        (None, false) => function_error.clone(),
        (None, true) => String::new(),
    };
    let mut v = serde_json::json!({
        "timestamp": crate::clock::now_rfc3339(),
        "requestContext": {
            "requestId": job.call.request_id,
            "functionArn": format!("acs:fc:{}:{}:functions/{}", d.region, d.account, job.function),
            "condition": condition,
            "approximateInvokeCount": attempts,
        },
        "requestPayload": text(&job.call.body),
        "responseContext": {"statusCode": last.status_code.unwrap_or(0), "functionError": function_error},
        "responsePayload": response,
    });
    let whole = serde_json::to_vec(&v).expect("json");
    if whole.len() <= MAX_RECORD {
        return Bytes::from(whole);
    }
    // Cut both payloads to what fits beside the rest (escaping can only shrink when cut).
    let payloads = ["requestPayload", "responsePayload"].map(|k| serde_json::to_string(&v[k]).map_or(0, |e| e.len()));
    let rest = whole.len().saturating_sub(payloads.iter().sum::<usize>());
    let room = MAX_RECORD.saturating_sub(rest + 64) / 2;
    for k in ["requestPayload", "responsePayload"] {
        if let Some(s) = v[k].as_str() {
            let cut = cut_escaped(s, room);
            v[k] = serde_json::Value::String(cut);
        }
    }
    v["payloadTruncated"] = serde_json::Value::Bool(true);
    let cut = serde_json::to_vec(&v).expect("json");
    if cut.len() > MAX_RECORD {
        // What is left of the payloads does not fit beside the rest: they go.
        v["requestPayload"] = serde_json::Value::String(String::new());
        v["responsePayload"] = serde_json::Value::String(String::new());
        return Bytes::from(serde_json::to_vec(&v).expect("json"));
    }
    Bytes::from(cut)
}

/// The longest prefix of `s` whose JSON string form fits in `room` bytes.
fn cut_escaped(s: &str, room: usize) -> String {
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let n = serde_json::to_string(&c.to_string()).map_or(8, |e| e.len() - 2);
        if used + n > room {
            break;
        }
        used += n;
        out.push(c);
    }
    out
}

/// The Async API invoke that carries `body` to the destination function, `hops` records
/// into its chain.
pub(super) fn call(request_id: &str, body: Bytes, hops: u32) -> Call {
    let mut headers = HeaderMap::new();
    headers.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    headers.insert(HOPS, hops.into());
    Call {
        http_trigger: false,
        request_id: request_id.to_string(),
        method: Method::POST,
        path_and_query: "/invoke".into(),
        headers,
        body,
        want_log: false,
        canceled: None,
        retry_count: 0,
        arrived: std::time::Instant::now(),
        body_budget: None,
        body_stream: None,
        client_upgrade: None,
        stream: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(body: &'static [u8]) -> Job {
        Job {
            id: "t".into(),
            function: "src".into(),
            call: call("req-1", Bytes::from_static(body), 0),
            submitted_ms: 0,
            function_errors: 0,
            throttles: 0,
        }
    }

    fn dest() -> Destination {
        Destination { function: "sink".into(), region: "cn-hangzhou".into(), account: "123".into() }
    }

    #[test]
    fn a_record_past_fcs_async_limit_is_cut_to_fit_and_says_so() {
        let big = "\"q\"".repeat(100_000);
        let last = Last { status_code: Some(200), body: Some(Bytes::from(big.clone())), ..Last::default() };
        let mut j = job(b"");
        j.call.body = Bytes::from(big.clone());
        let r = record(&dest(), &j, TaskState::Succeeded, None, &last, 1);
        assert!(r.len() <= MAX_RECORD, "{} bytes", r.len());
        let v: serde_json::Value = serde_json::from_slice(&r).unwrap();
        assert_eq!(v["payloadTruncated"], true);
        let resp = v["responsePayload"].as_str().unwrap();
        assert!(resp.len() > 30_000 && big.starts_with(resp), "cut to {} bytes", resp.len());
        // A function's own error text cannot push the record past the limit either.
        let long_error = "e".repeat(300_000);
        let failed = Last { error_type: Some(long_error.clone()), error_message: Some(long_error), ..Last::default() };
        let r = record(&dest(), &j, TaskState::Failed, None, &failed, 1);
        assert!(r.len() <= MAX_RECORD, "{} bytes", r.len());
        let small = record(&dest(), &job(b"x"), TaskState::Succeeded, None, &Last::default(), 1);
        assert!(serde_json::from_slice::<serde_json::Value>(&small).unwrap().get("payloadTruncated").is_none());
    }

    #[test]
    fn destination_calls_count_their_place_in_a_chain() {
        assert_eq!(hops(&job(b"").call), 0);
        assert_eq!(hops(&call("r", Bytes::new(), 5)), 5);
    }

    #[test]
    fn a_success_record_has_fcs_fields() {
        let last = Last { status_code: Some(200), body: Some(Bytes::from_static(b"done")), ..Last::default() };
        let v: serde_json::Value = serde_json::from_slice(&record(&dest(), &job(b"{\"a\":1}"), TaskState::Succeeded, None, &last, 1)).unwrap();
        assert_eq!(v["requestContext"]["requestId"], "req-1");
        assert_eq!(v["requestContext"]["functionArn"], "acs:fc:cn-hangzhou:123:functions/src");
        assert_eq!(v["requestContext"]["condition"], "");
        assert_eq!(v["requestContext"]["approximateInvokeCount"], 1);
        assert_eq!(v["requestPayload"], "{\"a\":1}");
        assert_eq!(v["responseContext"], serde_json::json!({"statusCode": 200, "functionError": ""}));
        assert_eq!(v["responsePayload"], "done");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn a_failure_record_names_the_error() {
        let last = Last {
            status_code: Some(200),
            error_type: Some("UnhandledInvocationError".into()),
            error_message: Some("Function time out after 1 seconds".into()),
            body: None,
        };
        let v: serde_json::Value = serde_json::from_slice(&record(&dest(), &job(b"\xff"), TaskState::Failed, None, &last, 4)).unwrap();
        assert_eq!(v["requestContext"]["condition"], "UnhandledInvocationError");
        assert_eq!(v["requestContext"]["approximateInvokeCount"], 4);
        assert_eq!(v["responseContext"]["functionError"], "Function time out after 1 seconds");
        assert_eq!(v["responsePayload"], "Function time out after 1 seconds");
        assert_eq!(v["requestPayload"], "/w==", "a body that is not UTF-8 goes as base64");
        let v: serde_json::Value =
            serde_json::from_slice(&record(&dest(), &job(b""), TaskState::Expired, Some("too old"), &Last::default(), 0)).unwrap();
        assert_eq!(v["requestContext"]["condition"], "EventAgeExceeded");
        assert_eq!(v["responseContext"]["functionError"], "too old");
    }
}
