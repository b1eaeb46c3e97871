//! FC 3.0 InvokeFunction and the HTTP trigger: Sync requests run on an instance and answer in
//! FC's shapes; Async ones are queued and answered 202 at once. A Sync request runs in a task
//! of its own, so a client that hangs up (FC's 499) cannot leave the instance half-used: the
//! task finishes the request's bookkeeping and the instance decides what the hang-up means.
//!
//! Sync requests stream (README, Streaming): an HTTP trigger's request body goes to the
//! instance as it arrives, and a Sync answer comes back as the function writes it (chunked,
//! SSE, long polls), the request's slot held until its end; a `101` (a WebSocket) joins the
//! two connections. Only an Async request (kept for retries) and a Tail request whose client
//! takes no trailers (its log rides in a header) are read whole.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use tokio::sync::oneshot;

use super::body::BodyError;
use super::{fc_error, function_error, not_found, FrontDoor, Resp};
use crate::instance::{Call, ClientBody, InvokeError, Reply, Streamed};
use crate::outcome::{self, Outcome};
use crate::pool::Dispatched;
use crate::supervisor::Supervisor;

/// A response body: whole, or an instance's answer as the function writes it.
#[derive(Debug)]
pub enum Body {
    /// In memory.
    Full(Full<Bytes>),
    /// Streamed from the instance.
    Stream(Streamed),
}

impl From<Full<Bytes>> for Body {
    fn from(f: Full<Bytes>) -> Self {
        Body::Full(f)
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Body::Full(f) => Pin::new(f).poll_frame(cx).map_err(|e| match e {}),
            Body::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(f) => f.is_end_stream(),
            Body::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(f) => f.size_hint(),
            Body::Stream(s) => s.size_hint(),
        }
    }
}

/// A Sync request's dispatch, run in the connection's own task (no task hop on the hot path).
/// If the client goes away first (hyper drops this future), the dispatch is told (FC's 499)
/// and moved, as it is, to a task of its own to finish: the instance decides what the hang-up
/// means and the request's bookkeeping completes. A panic in it is the request's 500.
struct Detach {
    dispatch: Option<Pin<Box<dyn Future<Output = Dispatched> + Send>>>,
    hang_up: Option<oneshot::Sender<()>>,
}

impl Future for Detach {
    type Output = Dispatched;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Dispatched> {
        let this = &mut *self;
        let Some(dispatch) = this.dispatch.as_mut() else { panic!("Detach polled after it finished") };
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch.as_mut().poll(cx)));
        let d = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(d)) => d,
            Err(panic) => {
                let e = crate::instance::Internal::Panic(panic_message(&panic));
                Dispatched { result: Err(e.into()), cold_start: false, instance_id: None }
            }
        };
        this.dispatch = None;
        this.hang_up = None;
        Poll::Ready(d)
    }
}

impl Drop for Detach {
    fn drop(&mut self) {
        let Some(dispatch) = self.dispatch.take() else { return };
        if let Some(tx) = self.hang_up.take() {
            let _ = tx.send(());
        }
        // Not during the runtime's own shutdown (nothing could run it).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = dispatch.await;
            });
        }
    }
}

/// What a panic said, for the 500 it becomes.
fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "a panic".into())
}

/// Handles an invocation of function `name`; `trigger` is the length of the name as it
/// appeared in an HTTP trigger's path (before percent-decoding), `None` for InvokeFunction.
pub async fn invoke(
    sup: &Arc<Supervisor>,
    fd: &FrontDoor,
    mut req: Request<Incoming>,
    name: String,
    trigger: Option<usize>,
    request_id: String,
) -> Resp {
    let http_trigger = trigger.is_some();
    let arrived = std::time::Instant::now();
    let close = req.extensions_mut().remove::<super::accept::CloseConnection>();
    let Some(pool) = sup.pool(&name) else { return not_found(&name, &request_id) };
    let header = |k: &str| req.headers().get(k).map(|v| v.to_str().unwrap_or(""));
    let tail = header("x-fc-log-type").is_some_and(|v| v.eq_ignore_ascii_case("tail"));
    let is_async = match header("x-fc-invocation-type") {
        None => false,
        Some(t) if t.eq_ignore_ascii_case("sync") => false,
        Some(t) if t.eq_ignore_ascii_case("async") => true,
        Some(t) => {
            let msg = format!("x-fc-invocation-type {t:?} is invalid: Sync or Async");
            return fc_error(StatusCode::BAD_REQUEST, "InvalidArgument", &msg, &request_id);
        }
    };
    let task_id = header("x-fc-async-task-id").filter(|t| !t.is_empty()).map(str::to_string);
    let path_and_query = if let Some(raw_len) = trigger {
        let full = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let after = &full["/http/".len() + raw_len..];
        if after.is_empty() || after.starts_with('?') {
            format!("/{after}")
        } else {
            after.to_string()
        }
    } else {
        "/invoke".into()
    };
    let (limit, kind) = if is_async { (fd.limits.max_async_body, "Async") } else { (fd.limits.max_sync_body, "Sync") };
    let client_upgrade = (http_trigger && !is_async).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // fcsup's own mark on a destination's invocation, never a client's to set.
    parts.headers.remove(crate::queue::DESTINATION_HOPS);
    // A request sent once passes its body on as it comes; one that may be sent again (Async),
    // or that becomes an event (a container without web server mode), is read whole.
    let per_event = pool.function.container.as_ref().is_some_and(|c| c.per_event);
    let (body, body_stream, budget) = if http_trigger && !is_async && !per_event {
        if hyper::body::Body::size_hint(&body).exact().is_some_and(|n| n > limit as u64) {
            let e = BodyError::TooLarge { limit, kind };
            return fc_error(StatusCode::BAD_REQUEST, "InvalidArgument", &e.to_string(), &request_id);
        }
        (Bytes::new(), Some(ClientBody::new(body, limit).0), None)
    } else {
        match super::body::read(body, limit, kind, fd).await {
            Ok((b, budget)) => (b, None, budget),
            Err(e @ BodyError::Busy(_)) => return fc_error(StatusCode::TOO_MANY_REQUESTS, "ResourceExhausted", &e.to_string(), &request_id),
            Err(e) => return fc_error(StatusCode::BAD_REQUEST, "InvalidArgument", &e.to_string(), &request_id),
        }
    };
    let mut call = Call {
        http_trigger,
        request_id: request_id.clone(),
        method: parts.method,
        path_and_query,
        headers: parts.headers,
        body,
        body_stream,
        client_upgrade,
        stream: !is_async,
        want_log: tail && !is_async,
        canceled: None,
        retry_count: 0,
        arrived,
        body_budget: budget.map(Arc::new),
    };
    if is_async {
        let id = task_id.clone().unwrap_or_else(|| request_id.clone());
        if sup.async_queue.contains(&id) {
            let msg = format!("async task {id} already exists");
            return fc_error(StatusCode::CONFLICT, "AsyncTaskAlreadyExist", &msg, &request_id);
        }
        match sup.async_queue.submit(id, name, call) {
            Ok(()) => {}
            Err(e @ crate::queue::SubmitError::Exists(_)) => {
                return fc_error(StatusCode::CONFLICT, "AsyncTaskAlreadyExist", &e.to_string(), &request_id)
            }
            Err(e) => return fc_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", &e.to_string(), &request_id),
        }
        let mut r = Response::builder().status(StatusCode::ACCEPTED).header("x-fc-request-id", &request_id);
        if let Some(t) = &task_id {
            r = r.header("x-fc-async-task-id", t);
        }
        return r.body(Full::new(Bytes::new()).into()).expect("response");
    }
    let (tx, rx) = oneshot::channel();
    call.canceled = Some(rx);
    let run = pool.clone();
    let d = Detach { dispatch: Some(Box::pin(async move { run.dispatch(call).await })), hang_up: Some(tx) }.await;
    let outcome = outcome::of(&d.result, http_trigger);
    sup.reporting().metrics().invocation(&name, outcome.metric());
    if matches!(d.result, Err(InvokeError::Canceled)) {
        tracing::info!(function = %name, request_id, "client closed the request (499)");
    }
    let mut resp = respond(d, outcome, http_trigger, tail, &request_id, pool.function.memory_mb);
    if let (Body::Stream(s), Some(c)) = (resp.body_mut(), close) {
        s.close_on_timeout(c.0);
    }
    if let Ok(v) = HeaderValue::from_str(&pool.function.code_checksum) {
        resp.headers_mut().insert("x-fc-code-checksum", v);
    }
    resp.headers_mut().insert("x-fc-invocation-service-version", HeaderValue::from_static("LATEST"));
    resp
}

/// The response for a finished Sync request, in FC's shapes ([`outcome::of`] decided which).
fn respond(d: Dispatched, outcome: Outcome, http_trigger: bool, tail: bool, request_id: &str, memory_mb: u64) -> Resp {
    let mut resp = match (d.result, outcome) {
        (_, Outcome::Platform { status, code, message }) => fc_error(status, code, &message, request_id),
        (_, Outcome::Function { error_type, message: Some(message), .. }) => function_error(error_type, &message),
        // A success, or an answer FC counts as the function's error: the answer goes back.
        (Ok(reply), o) => reply_response(reply, o.error_type(), http_trigger, tail, request_id, memory_mb),
        // Not reached (every error has a message), but an error is never sent as a success.
        (Err(e), o) => function_error(o.error_type().unwrap_or(outcome::UNHANDLED), &e.to_string()),
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-fc-request-id", v);
    }
    if let Some(id) = d.instance_id.and_then(|i| HeaderValue::from_str(&i).ok()) {
        h.insert("x-fc-instance-id", id);
    }
    h.insert("x-fcsup-cold-start", HeaderValue::from_static(if d.cold_start { "true" } else { "false" }));
    resp
}

/// The function's answer; `error_type` when FC counts it as the function's error.
fn reply_response(reply: Reply, error_type: Option<&str>, http_trigger: bool, tail: bool, request_id: &str, memory_mb: u64) -> Resp {
    let mut b = Response::builder();
    // A 101 keeps the headers that switch protocols.
    let upgraded = reply.status == StatusCode::SWITCHING_PROTOCOLS;
    if http_trigger {
        b = b.status(reply.status);
        let h = b.headers_mut().expect("a fresh builder");
        h.reserve(reply.headers.len() + 6);
        let mut name: Option<hyper::header::HeaderName> = None;
        for (k, v) in reply.headers {
            // The iterator names a header once, before its first value.
            if k.is_some() {
                name = k;
            }
            let Some(k) = name.clone() else { continue };
            let n = k.as_str();
            // FC's headers and fcsup's own (which fronts and clients believe) are not the function's to set.
            if n.starts_with("x-fc-")
                || n.starts_with("x-fcsup-")
                || matches!(n, "content-length" | "date" | "keep-alive" | "server" | "transfer-encoding")
            {
                continue;
            }
            if !upgraded && matches!(n, "connection" | "upgrade") {
                continue;
            }
            h.append(k, v);
        }
        // A streamed answer keeps its declared length (hyper checks it as the body passes).
        if let Some(len) = reply.stream.as_ref().and_then(|s| hyper::body::Body::size_hint(s).exact()) {
            h.insert(hyper::header::CONTENT_LENGTH, len.into());
        }
    }
    if let Some(t) = error_type {
        b = b.header("x-fc-error-type", t);
    }
    let billed_ms = reply.duration.as_micros().div_ceil(1000);
    let mut r = b
        .header("x-fc-invocation-duration", billed_ms.to_string())
        .header("x-fc-max-memory-usage", format!("{:.2}", reply.max_memory_mb))
        .header("x-fcsup-cpu-time-us", reply.cpu_usec.to_string())
        .body(match reply.stream {
            Some(s) => Body::Stream(s),
            None => Body::Full(Full::new(reply.body)),
        })
        .expect("response");
    // A streamed answer's log follows it as a trailer (the client asked with `TE: trailers`);
    // hyper sends only the trailers the head declares.
    if tail && matches!(r.body(), Body::Stream(_)) {
        r.headers_mut().append(hyper::header::TRAILER, HeaderValue::from_static("x-fc-log-result"));
    } else if tail {
        let summary = crate::logs::summary(reply.duration, memory_mb, reply.max_memory_mb);
        let log = crate::logs::tail(request_id, &reply.log, &summary);
        if let Ok(v) = HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(log)) {
            r.headers_mut().insert("x-fc-log-result", v);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::HeaderMap;
    use std::time::Duration;

    fn dispatched(result: Result<Reply, InvokeError>) -> Dispatched {
        Dispatched { result, cold_start: true, instance_id: Some("c-1".into()) }
    }

    fn reply(status: u16) -> Result<Reply, InvokeError> {
        let mut headers = HeaderMap::new();
        headers.insert("x-app", HeaderValue::from_static("1"));
        Ok(Reply {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            body: Bytes::from_static(b"answer"),
            stream: None,
            duration: Duration::from_micros(1500),
            cpu_usec: 7,
            max_memory_mb: 1.5,
            log: Vec::new(),
            instance_id: "c-1".into(),
            error_type: None,
        })
    }

    /// The response to `result` as (status, x-fc-error-type, body).
    async fn answer(result: Result<Reply, InvokeError>, http_trigger: bool) -> (u16, String, String) {
        let o = outcome::of(&result, http_trigger);
        let r = respond(dispatched(result), o, http_trigger, false, "1-req", 128);
        assert_eq!(r.headers()["x-fc-request-id"], "1-req");
        assert_eq!(r.headers()["x-fc-instance-id"], "c-1");
        assert_eq!(r.headers()["x-fcsup-cold-start"], "true");
        let status = r.status().as_u16();
        let error_type = r.headers().get("x-fc-error-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, error_type, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn answers_pass_through_with_fc_headers() {
        let o = outcome::of(&reply(200), false);
        let r = respond(dispatched(reply(200)), o, false, false, "1-req", 128);
        assert_eq!(r.headers()["x-fc-invocation-duration"], "2", "billed ms round up");
        assert_eq!(r.headers()["x-fc-max-memory-usage"], "1.50");
        assert!(r.headers().get("x-app").is_none(), "an API invoke does not pass the function's headers");
        assert_eq!(answer(reply(200), false).await, (200, String::new(), "answer".into()));
        assert_eq!(answer(reply(500), false).await, (200, String::new(), "answer".into()));
        // A 404 to an API invoke is the function's error: its answer goes back, flagged.
        assert_eq!(answer(reply(404), false).await, (200, "UnhandledInvocationError".into(), "answer".into()));
        // An HTTP trigger passes any status through.
        assert_eq!(answer(reply(404), true).await, (404, String::new(), "answer".into()));
    }

    #[test]
    fn a_function_cannot_set_fcsups_own_headers() {
        let mut r = reply(200).unwrap();
        for (k, v) in [("x-fcsup-node", "forged"), ("x-fcsup-cpu-time-us", "0"), ("x-fcsup-full", "1"), ("x-app", "1")] {
            r.headers.insert(k, HeaderValue::from_static(v));
        }
        let resp = respond(dispatched(Ok(r)), Outcome::Success, true, false, "1-req", 128);
        assert_eq!(resp.headers()["x-app"], "1");
        assert!(resp.headers().get("x-fcsup-node").is_none() && resp.headers().get("x-fcsup-full").is_none());
        assert_eq!(resp.headers().get_all("x-fcsup-cpu-time-us").iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>(), ["7"]);
    }

    #[tokio::test]
    async fn failures_take_fc_shapes() {
        let (status, error_type, body) = answer(Err(InvokeError::Timeout(3)), false).await;
        assert_eq!((status, error_type.as_str()), (200, "UnhandledInvocationError"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["errorMessage"], "Function time out after 3 seconds");
        assert_eq!(v["errorType"], "UnhandledInvocationError");

        let init = crate::instance::StartError::Initializer(Arc::new(crate::instance::InitError::Status(500)));
        let (status, error_type, body) = answer(Err(init.into()), true).await;
        assert_eq!((status, error_type.as_str()), (200, "InitializationError"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["errorMessage"], "Initializer failed: the instance answered POST /initialize with HTTP 500");

        let (status, error_type, body) = answer(Err(crate::instance::Exhausted::Supervisor { max: 3 }.into()), false).await;
        assert_eq!((status, error_type.as_str()), (429, ""));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let msg = "Reserve resource exceeded limit: the supervisor runs its maximum of 3 instances";
        assert_eq!((v["Code"].as_str(), v["Message"].as_str(), v["RequestId"].as_str()), (Some("ResourceExhausted"), Some(msg), Some("1-req")));

        let (status, _, body) = answer(Err(InvokeError::Gone), false).await;
        assert_eq!(status, 503);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["Code"], "ResourceThrottled");
    }
}
