//! FC's two error shapes: platform errors (`{"Code","Message","RequestId"}` with a 4xx/5xx
//! status) and function errors (HTTP 200, `x-fc-error-type`, `{"errorMessage","errorType"}`).

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::Resp;

/// A platform error, e.g. 404 `FunctionNotFound`, 429 `ResourceExhausted`.
pub fn fc_error(status: StatusCode, code: &str, message: &str, request_id: &str) -> Resp {
    let body = serde_json::json!({ "Code": code, "Message": message, "RequestId": request_id });
    let mut r = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-fc-request-id", request_id)
        .body(Full::new(Bytes::from(body.to_string())).into())
        .expect("response");
    if code == "ResourceExhausted" {
        // Full: a front may send it to another node (`health.rs`).
        r.extensions_mut().insert(super::health::Exhausted);
    }
    r
}

/// A function error: HTTP 200 with `x-fc-error-type`.
pub fn function_error(error_type: &str, message: &str) -> Resp {
    let body = serde_json::json!({ "errorMessage": message, "errorType": error_type, "stackTrace": [] });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("x-fc-error-type", error_type)
        .body(Full::new(Bytes::from(body.to_string())).into())
        .expect("response")
}
