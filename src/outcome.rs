//! An invocation's outcome in Function Compute's vocabulary, decided once: the error type and
//! message the caller sees, the HTTP status, and the label `fcsup_invocations_total` counts it
//! under. The Sync response (`api`), the Async queue (`queue`) and the metrics all ask
//! [`of`], so they cannot disagree. The table is in `docs/errors.md`.
//!
//! FC reports a failure in one of two shapes: a *function error* (HTTP 200 with
//! `x-fc-error-type`) when the function failed or answered with an error, and a *platform
//! error* (4xx/5xx with `{"Code","Message","RequestId"}`) when FC refused the request or could
//! not run it. FC's invocation metrics name function errors more finely than the header does
//! (`FunctionTimeoutError`, `FunctionOOMError`, `FunctionUnhandledError`); those names are in
//! the same table, in [`of`].

use hyper::StatusCode;

use crate::instance::{InvokeError, Reply};

/// The error type FC gives a function error it has no finer name for (and the one the caller
/// sees for a timeout, crash or OOM kill).
pub const UNHANDLED: &str = "UnhandledInvocationError";

/// What one invocation came to, as FC reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The function answered and FC counts the answer as a success (an HTTP trigger's answer
    /// always is, whatever its status).
    Success,
    /// The function failed: HTTP 200 with `x-fc-error-type: {error_type}`.
    Function {
        /// `x-fc-error-type` and the body's `errorType`.
        error_type: &'static str,
        /// The body's `errorMessage`; `None` when the function answered (a 404 to an API
        /// invoke) and its own answer is the body.
        message: Option<String>,
        /// The metrics label: FC's metric name for this failure.
        metric: &'static str,
    },
    /// FC refused the request or could not run it: `status` with
    /// `{"Code","Message","RequestId"}`.
    Platform {
        /// 429, 499, 500, 503.
        status: StatusCode,
        /// `Code` (also the metrics label).
        code: &'static str,
        /// `Message`.
        message: String,
    },
}

impl Outcome {
    /// `x-fc-error-type` for a function error, `Code` for a platform error; `None` on success.
    pub fn error_type(&self) -> Option<&'static str> {
        match self {
            Outcome::Success => None,
            Outcome::Function { error_type, .. } => Some(error_type),
            Outcome::Platform { code, .. } => Some(code),
        }
    }

    /// The error message, when fcsup writes one (not when the function's answer is the body).
    pub fn message(&self) -> Option<&str> {
        match self {
            Outcome::Success => None,
            Outcome::Function { message, .. } => message.as_deref(),
            Outcome::Platform { message, .. } => Some(message),
        }
    }

    /// The status FC answers with: 200 for a function error, the platform error's own status.
    /// `None` on success, where the answer's status is the function's (HTTP trigger) or 200.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Outcome::Success => None,
            Outcome::Function { .. } => Some(StatusCode::OK),
            Outcome::Platform { status, .. } => Some(*status),
        }
    }

    /// The `outcome` label of `fcsup_invocations_total`: `success`, FC's metric name for a
    /// function error, or the platform error's code.
    pub fn metric(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Function { metric, .. } => metric,
            Outcome::Platform { code, .. } => code,
        }
    }
}

/// What `result` comes to; `http_trigger` when it came through `/http/{name}/…` (whose answers
/// pass through whatever their status).
pub fn of(result: &Result<Reply, InvokeError>, http_trigger: bool) -> Outcome {
    let e = match result {
        Ok(reply) if reply.is_function_error(http_trigger) => {
            return Outcome::Function { error_type: reply.function_error_type(), message: None, metric: UNHANDLED }
        }
        Ok(_) => return Outcome::Success,
        Err(e) => e,
    };
    // One row per failure: what the caller sees (shape, status, type) and what the metrics
    // count (FC's metrics name function errors more finely than `x-fc-error-type`).
    let platform = |status: StatusCode, code| Outcome::Platform { status, code, message: e.to_string() };
    let function = |error_type, metric| Outcome::Function { error_type, message: Some(e.to_string()), metric };
    match e {
        InvokeError::Initialization(_) => function("InitializationError", "InitializationError"),
        InvokeError::Timeout(_) => function(UNHANDLED, "FunctionTimeoutError"),
        InvokeError::OutOfMemory { .. } => function(UNHANDLED, "FunctionOOMError"),
        InvokeError::Crashed { .. } | InvokeError::Failed { .. } | InvokeError::ResponseTooLarge { .. } => {
            function(UNHANDLED, "FunctionUnhandledError")
        }
        InvokeError::Unsendable(_) => platform(StatusCode::BAD_REQUEST, "InvalidArgument"),
        InvokeError::Throttled(_) => platform(StatusCode::TOO_MANY_REQUESTS, "ResourceExhausted"),
        InvokeError::Canceled => platform(StatusCode::from_u16(499).expect("499 is a valid status"), "ClientClosedRequest"),
        InvokeError::Internal(_) => platform(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError"),
        InvokeError::Gone | InvokeError::GpuRestore(_) => platform(StatusCode::SERVICE_UNAVAILABLE, "ResourceThrottled"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::Exhausted;
    use crate::instance::{InitError, StartError};
    use hyper::HeaderMap;
    use std::sync::Arc;
    use std::time::Duration;

    fn reply(status: u16, x_fc_status: Option<&str>) -> Result<Reply, InvokeError> {
        let mut headers = HeaderMap::new();
        if let Some(s) = x_fc_status {
            headers.insert("x-fc-status", s.parse().unwrap());
        }
        Ok(Reply {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            body: bytes::Bytes::from_static(b"{}"),
            stream: None,
            duration: Duration::from_millis(1),
            cpu_usec: 0,
            max_memory_mb: 0.0,
            log: Vec::new(),
            instance_id: "c-1".into(),
            error_type: None,
        })
    }

    /// (error type, message, status, metric) for one outcome, for compact assertions.
    fn row(o: &Outcome) -> (Option<&'static str>, Option<&str>, Option<u16>, &'static str) {
        (o.error_type(), o.message(), o.status().map(|s| s.as_u16()), o.metric())
    }

    #[test]
    fn answers() {
        for trigger in [false, true] {
            assert_eq!(of(&reply(200, None), trigger), Outcome::Success);
            assert_eq!(of(&reply(500, None), trigger), Outcome::Success, "a 500 answer is the function's, not FC's error");
        }
        // A 404 (or x-fc-status: 404) is FC's unhandled function error on an API invoke; the
        // answer itself is the body, so there is no message of fcsup's.
        for r in [reply(404, None), reply(200, Some("404"))] {
            assert_eq!(row(&of(&r, false)), (Some(UNHANDLED), None, Some(200), UNHANDLED));
            assert_eq!(of(&r, true), Outcome::Success, "an HTTP trigger passes any status through");
        }
    }

    /// Makes one error (`InvokeError` is not `Clone`).
    type Make = fn() -> InvokeError;

    /// A failure of fcsup itself, as a request meets one.
    fn internal() -> InvokeError {
        let bad = hyper::Request::builder().uri("\n").body(()).unwrap_err();
        crate::instance::Internal::from(bad).into()
    }

    fn initializer(status: u16) -> InvokeError {
        StartError::Initializer(Arc::new(InitError::Status(status))).into()
    }

    #[test]
    fn function_errors_have_fc_metric_names() {
        let cases: [(Make, &str, &str); 7] = [
            (|| initializer(500), "InitializationError", "InitializationError"),
            (|| StartError::NotListening { port: 9000, secs: 3 }.into(), "InitializationError", "InitializationError"),
            (|| InvokeError::Timeout(3), UNHANDLED, "FunctionTimeoutError"),
            (|| InvokeError::Crashed { duration_ms: 12, max_memory_mb: 1.0 }, UNHANDLED, "FunctionUnhandledError"),
            (|| InvokeError::OutOfMemory { limit_mb: 128, duration_ms: 12, max_memory_mb: 128.0 }, UNHANDLED, "FunctionOOMError"),
            (|| InvokeError::ResponseTooLarge { limit_mb: 32 }, UNHANDLED, "FunctionUnhandledError"),
            (|| InvokeError::Failed { status: 3, duration_ms: 12, max_memory_mb: 1.0 }, UNHANDLED, "FunctionUnhandledError"),
        ];
        for (e, error_type, metric) in cases {
            let msg = e().to_string();
            for trigger in [false, true] {
                let o = of(&Err(e()), trigger);
                assert_eq!(row(&o), (Some(error_type), Some(msg.as_str()), Some(200), metric), "{:?}", e());
            }
        }
        assert_eq!(of(&Err(InvokeError::Timeout(3)), false).message(), Some("Function time out after 3 seconds"));
        assert_eq!(of(&Err(initializer(404)), false).message(), Some("Initializer failed: the instance answered POST /initialize with HTTP 404"));
    }

    #[test]
    fn platform_errors() {
        let cases: [(Make, u16, &str); 5] = [
            (|| InvokeError::Unsendable("no".into()), 400, "InvalidArgument"),
            (|| Exhausted::Supervisor { max: 100 }.into(), 429, "ResourceExhausted"),
            (|| InvokeError::Canceled, 499, "ClientClosedRequest"),
            (internal, 500, "InternalServerError"),
            (|| InvokeError::Gone, 503, "ResourceThrottled"),
        ];
        for (e, status, code) in cases {
            let msg = e().to_string();
            for trigger in [false, true] {
                let o = of(&Err(e()), trigger);
                assert!(matches!(o, Outcome::Platform { .. }), "{:?}", e());
                assert_eq!(row(&o), (Some(code), Some(msg.as_str()), Some(status), code), "{:?}", e());
            }
        }
        assert!(of(&Err(internal()), false).message().unwrap().starts_with("the request could not be passed on: "));
    }

    #[test]
    fn every_error_has_a_message() {
        // The Sync response writes fcsup's message for every failure without an answer.
        let all = [
            initializer(404),
            InvokeError::Timeout(1),
            InvokeError::Crashed { duration_ms: 0, max_memory_mb: 0.0 },
            InvokeError::Failed { status: 3, duration_ms: 0, max_memory_mb: 0.0 },
            InvokeError::Unsendable("x".into()),
            InvokeError::OutOfMemory { limit_mb: 1, duration_ms: 0, max_memory_mb: 0.0 },
            InvokeError::ResponseTooLarge { limit_mb: 1 },
            InvokeError::Canceled,
            InvokeError::Gone,
            InvokeError::GpuRestore("no memory".into()),
            Exhausted::Function { function: "f".into(), live: 1, max: 1 }.into(),
            internal(),
        ];
        for e in all {
            let o = of(&Err(e), false);
            assert!(o.message().is_some_and(|m| !m.is_empty()) && o.error_type().is_some(), "{o:?}");
        }
    }
}
