//! The HTTP side of the runtime API: the accept loop, the routes, and what each answers to
//! the agent. Every refusal is FC's platform error body `{"errorCode", "errorMessage"}` with a
//! status that says whose fault it was (4xx: the agent's request).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{valid_request_id, Active, AgentError, CallError, Ended, Reply, Shared, Success, API_VERSION};

type Resp = Response<Full<Bytes>>;

/// A listening socket the API can be served on.
pub trait Listener: Send + 'static {
    /// One accepted connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Accepts the next connection.
    fn accept_one(&mut self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_one(&mut self) -> std::io::Result<Self::Io> {
        let (s, _) = self.accept().await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_one(&mut self) -> std::io::Result<Self::Io> {
        Ok(self.accept().await?.0)
    }
}

/// Connections one server keeps open at most. The API is reachable by the function's own
/// code, so it must not be able to take all of fcsup's file descriptors; the agents need one
/// or two (the Go SDK's client keeps a few idle).
pub(super) const MAX_CONNECTIONS: usize = 32;

/// The largest init error accepted: a message and a stack trace.
const MAX_INIT_ERROR_BYTES: usize = 1024 * 1024;

/// How long an answer waits for another answer's body to finish arriving.
const BODY_SLOT_WAIT: Duration = Duration::from_secs(10);

/// Accepts until aborted; the connections live in a `JoinSet`, so aborting this task closes
/// them all. At [`MAX_CONNECTIONS`] it stops accepting (the kernel's backlog holds newcomers).
pub(super) async fn accept_loop<L: Listener>(mut listener: L, shared: Arc<Shared>) {
    let mut conns = tokio::task::JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut delay = Duration::from_millis(10);
    loop {
        while conns.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        match listener.accept_one().await {
            Ok(io) => {
                delay = Duration::from_millis(10);
                let shared = shared.clone();
                conns.spawn(async move {
                    let _slot = slot;
                    let svc = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(route(&shared, req).await) }
                    });
                    // A connection that breaks is the agent's business; nothing to report here.
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc).await;
                });
            }
            Err(e) => {
                drop(slot);
                // EMFILE and friends: back off rather than spin.
                tracing::warn!(function = %shared.info.function_name, "runtime API: accept failed ({e}); retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// What an answer posted by the agent is.
#[derive(Clone, Copy)]
enum Answer {
    Response,
    Error,
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let Some(rest) = path.strip_prefix('/').and_then(|p| p.strip_prefix(API_VERSION)).and_then(|p| p.strip_prefix("/runtime/")) else {
        return refuse(StatusCode::NOT_FOUND, "PathNotFound", &format!("{path} is not a runtime API path: /{API_VERSION}/runtime/…"));
    };
    let want = |m: Method| -> Option<Resp> {
        (req.method() != m).then(|| refuse(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", &format!("{} {path}: use {m}", req.method())))
    };
    if rest == "invocation/next" {
        return match want(Method::GET) {
            Some(r) => r,
            None => next(shared).await,
        };
    }
    if rest == "init/error" {
        return match want(Method::POST) {
            Some(r) => r,
            None => init_error(shared, req).await,
        };
    }
    if let Some(tail) = rest.strip_prefix("invocation/") {
        let answer = if let Some(id) = tail.strip_suffix("/response") {
            Some((id, Answer::Response))
        } else {
            tail.strip_suffix("/error").map(|id| (id, Answer::Error))
        };
        if let Some((id, answer)) = answer {
            if let Some(r) = want(Method::POST) {
                return r;
            }
            if !valid_request_id(id) {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestId",
                    &format!("request id {id:?} is invalid: 1 to 128 characters from A-Z a-z 0-9 . _ -"),
                );
            }
            let id = id.to_string();
            return answer_call(shared, &id, answer, req).await;
        }
    }
    refuse(StatusCode::NOT_FOUND, "PathNotFound", &format!("{path} is not a runtime API path"))
}

/// `GET next`: waits for a call and hands it over. A newer poll supersedes this one (it then
/// gets 409), so a restarted or reconnected agent is never stuck behind a dead connection.
async fn next(shared: &Shared) -> Resp {
    let gen = {
        let mut st = shared.lock();
        st.poll_gen += 1;
        st.poll_gen
    };
    shared.polled.send_if_modified(|p| !std::mem::replace(p, true));
    shared.changed.notify_waiters();
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut st = shared.lock();
            if st.poll_gen != gen {
                return refuse(StatusCode::CONFLICT, "PollSuperseded", "a newer GET /invocation/next replaced this one; poll from one loop only");
            }
            if let Some(q) = st.queued.take() {
                st.active = Some(Active { seq: q.seq, id: q.id, tx: q.tx });
                let mut r = Response::new(Full::new(q.body));
                *r.headers_mut() = q.headers;
                return r;
            }
        }
        notified.await;
    }
}

/// `POST …/{id}/response` and `…/{id}/error`.
async fn answer_call(shared: &Shared, id: &str, answer: Answer, req: Request<Incoming>) -> Resp {
    // Settle who the answer is for before reading a possibly large body.
    let seq = match check_active(shared, id) {
        Ok(seq) => seq,
        Err(r) => return *r,
    };
    let handled = req.headers().get("x-fc-error-type").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"HandledInvocationError"));
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let content_type = header(CONTENT_TYPE.as_str());
    let http_params = header("x-fc-http-params").filter(|p| !p.trim().is_empty());
    // fcsup's agents list what the function left pending (a JSON array of strings).
    let pending: Vec<String> = header("x-fcsup-pending").and_then(|p| serde_json::from_str(&p).ok()).unwrap_or_default();
    *shared.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = pending;
    let limit = shared.limits.max_response_bytes;
    // One body in memory at a time, however many connections post at once.
    let Ok(Ok(_slot)) = tokio::time::timeout(BODY_SLOT_WAIT, shared.body_slot.acquire()).await else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "Busy", &format!("another answer's body has been arriving for {BODY_SLOT_WAIT:?}; retry"));
    };
    let body = match read_body(req, limit).await {
        Ok(b) => b,
        Err(BodyRead::TooLarge) => {
            // The caller hears of it now rather than at its timeout.
            finish(shared, seq, Err(CallError::ResponseTooLarge { limit }));
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "EntityTooLarge",
                &format!("the body is larger than {limit} bytes, the limit for a synchronous invocation's response; the call failed"),
            );
        }
        Err(BodyRead::Broken(e)) => return refuse(StatusCode::BAD_REQUEST, "InvalidBody", &format!("cannot read the body: {e}")),
    };
    let reply = match answer {
        Answer::Response => Reply::Success(Success { body, content_type, http_params }),
        Answer::Error => Reply::Error(AgentError::parse(body, handled)),
    };
    if finish(shared, seq, Ok(reply)) {
        accepted()
    } else {
        // Withdrawn while the body was arriving.
        refuse(
            StatusCode::GONE,
            "InvocationCanceled",
            &format!("invocation {id} was withdrawn by the supervisor (timeout or client gone); nothing to answer"),
        )
    }
}

/// The sequence number of the active call with `id`, or the refusal for an answer to it.
fn check_active(shared: &Shared, id: &str) -> Result<u64, Box<Resp>> {
    let st = shared.lock();
    if let Some(a) = st.active.as_ref().filter(|a| a.id == id) {
        return Ok(a.seq);
    }
    Err(Box::new(match st.ended(id) {
        Some(Ended::Answered) => refuse(StatusCode::CONFLICT, "InvocationAlreadyAnswered", &format!("invocation {id} was answered already")),
        Some(Ended::Canceled) => refuse(
            StatusCode::GONE,
            "InvocationCanceled",
            &format!("invocation {id} was withdrawn by the supervisor (timeout or client gone); nothing to answer"),
        ),
        None if st.queued.as_ref().is_some_and(|q| q.id == id) => {
            refuse(StatusCode::CONFLICT, "InvocationNotTaken", &format!("invocation {id} has not been taken with GET next yet"))
        }
        None => refuse(StatusCode::NOT_FOUND, "InvocationNotFound", &format!("no invocation {id} is in progress")),
    }))
}

/// Completes the active call `seq`; false when it is no longer active.
fn finish(shared: &Shared, seq: u64, result: Result<Reply, CallError>) -> bool {
    let mut st = shared.lock();
    if st.active.as_ref().is_none_or(|a| a.seq != seq) {
        return false;
    }
    let a = st.active.take().expect("checked");
    st.remember(a.id, Ended::Answered);
    // The caller may have just given up; its `Withdraw` then finds nothing to do.
    let _ = a.tx.send(result);
    true
}

/// `POST /runtime/init/error`: the function cannot load. Every outstanding and later call
/// fails with it.
async fn init_error(shared: &Shared, req: Request<Incoming>) -> Resp {
    let limit = shared.limits.max_response_bytes.min(MAX_INIT_ERROR_BYTES);
    // One body in memory at a time, however many connections post at once.
    let Ok(Ok(_slot)) = tokio::time::timeout(BODY_SLOT_WAIT, shared.body_slot.acquire()).await else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "Busy", &format!("another answer's body has been arriving for {BODY_SLOT_WAIT:?}; retry"));
    };
    let body = match read_body(req, limit).await {
        Ok(b) => b,
        Err(BodyRead::TooLarge) => {
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, "EntityTooLarge", &format!("the init error is larger than {limit} bytes"))
        }
        Err(BodyRead::Broken(e)) => return refuse(StatusCode::BAD_REQUEST, "InvalidBody", &format!("cannot read the body: {e}")),
    };
    let err = AgentError::parse(body, false);
    tracing::info!(function = %shared.info.function_name, "runtime reported an init error: {}", err.error_message);
    let mut st = shared.lock();
    if st.init_error.is_none() {
        st.init_error = Some(err.clone());
    }
    let first = st.init_error.clone().expect("set");
    if let Some(q) = st.queued.take() {
        st.remember(q.id, Ended::Answered);
        let _ = q.tx.send(Err(CallError::Init(first.clone())));
    }
    if let Some(a) = st.active.take() {
        st.remember(a.id, Ended::Answered);
        let _ = a.tx.send(Err(CallError::Init(first.clone())));
    }
    drop(st);
    shared.init_tx.send_replace(Some(first));
    accepted()
}

enum BodyRead {
    TooLarge,
    Broken(String),
}

/// The whole body, at most `limit` bytes (checked against `Content-Length` first, then as
/// chunks arrive).
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, BodyRead> {
    use hyper::body::Body as _;
    if req.body().size_hint().exact().is_some_and(|n| n > limit as u64) {
        return Err(BodyRead::TooLarge);
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyRead::TooLarge),
        Err(e) => Err(BodyRead::Broken(e.to_string())),
    }
}

/// 200 for an accepted post: the SDK treats anything else as a failure.
fn accepted() -> Resp {
    json(StatusCode::OK, serde_json::json!({"status": "OK"}))
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Resp {
    json(status, serde_json::json!({"errorCode": code, "errorMessage": message}))
}

fn json(status: StatusCode, v: serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}
