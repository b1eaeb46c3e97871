//! FC's runtime API (version `2020-11-11`), served by fcsup to one instance of a built-in
//! runtime. The instance's agent pulls its work: `GET /2020-11-11/runtime/invocation/next`
//! blocks until the supervisor has a call, whose kind (invoke, Initializer, PreStop, PreFreeze)
//! travels in `x-fc-function-type`; the agent answers with `POST …/invocation/{id}/response` or
//! `…/{id}/error`, and reports a function that could not even load with
//! `POST /2020-11-11/runtime/init/error`. The supervisor's side is [`RuntimeApi::call`].
//!
//! The wire format is the one aliyun's `fc-runtime-go-sdk` speaks (`fc/runtime_api_client.go`,
//! `fc/invoke_loop.go`): same paths, headers and status codes, so a Go function built against
//! that SDK runs unchanged; fcsup's own Python and Node.js agents (`runtimes/`, embedded in
//! [`agents`]) speak it too. `docs/runtime-api.md` describes the protocol for users.
//!
//! One call at a time per instance (FC 3.0's built-in runtimes have instance concurrency 1).
//! Nothing the agent does can wedge the server or the caller: every misuse gets an HTTP error
//! that says what was wrong, and a caller that gives up (drops the future) frees the slot.

pub mod agents;
pub mod http_event;
mod server;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::HeaderMap;
use tokio::sync::{oneshot, watch, Notify};

pub use server::Listener;

/// The runtime API's version, the first segment of every path.
pub const API_VERSION: &str = "2020-11-11";

/// The largest response or error body an agent may post: FC's limit on a synchronous
/// invocation's response, 32 MB (fc-spec §3, "sync body ≤ 32 MB").
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// Longest request id accepted (it becomes a URL path segment for the agent).
const MAX_REQUEST_ID: usize = 128;

/// How many finished request ids are remembered, so that a late or repeated answer gets
/// "already answered" / "cancelled" instead of "unknown".
const FINISHED_MEMORY: usize = 64;

/// What a call asks the agent to run; its number is FC's `x-fc-function-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// The handler (`x-fc-function-type: 0`).
    Invoke,
    /// The Initializer hook (1).
    Initialize,
    /// The PreStop hook (2).
    PreStop,
    /// The PreFreeze hook (3; FC 2.0 only, kept because the SDK still speaks it).
    PreFreeze,
}

impl CallKind {
    /// FC's `x-fc-function-type` value.
    pub fn function_type(self) -> u8 {
        match self {
            CallKind::Invoke => 0,
            CallKind::Initialize => 1,
            CallKind::PreStop => 2,
            CallKind::PreFreeze => 3,
        }
    }
}

/// What does not change between calls to one instance: the function's configuration as FC
/// passes it in headers on every `next` (the SDK builds its `context` from them).
#[derive(Debug, Clone, Default)]
pub struct InstanceInfo {
    /// `x-fc-function-name`.
    pub function_name: String,
    /// `x-fc-function-handler`, e.g. `index.handler`.
    pub handler: String,
    /// `x-fc-function-memory`, MB.
    pub memory_mb: u64,
    /// `x-fc-function-timeout`, seconds (the SDK refuses a call without it).
    pub timeout_s: u64,
    /// `x-fc-function-initializer`, when an Initializer is configured.
    pub initializer: Option<String>,
    /// `x-fc-initialization-timeout`, seconds.
    pub initialization_timeout_s: Option<u64>,
    /// `x-fc-instance-lifecycle-pre-stop-handler`.
    pub pre_stop_handler: Option<String>,
    /// `x-fc-instance-lifecycle-pre-freeze-handler`.
    pub pre_freeze_handler: Option<String>,
    /// `x-fc-service-name` (FC 2.0; empty in FC 3.0).
    pub service_name: String,
    /// `x-fc-service-logproject`.
    pub log_project: String,
    /// `x-fc-service-logstore`.
    pub log_store: String,
    /// `x-fc-region`.
    pub region: String,
    /// `x-fc-account-id`.
    pub account_id: String,
    /// `x-fc-qualifier`, e.g. `LATEST`.
    pub qualifier: String,
    /// `x-fc-version-id`.
    pub version_id: String,
    /// `x-fc-instance-id`.
    pub instance_id: String,
}

/// Temporary credentials passed to the function (`x-fc-access-key-id`, `-secret`,
/// `x-fc-security-token`).
#[derive(Clone, Default)]
pub struct Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Access key secret.
    pub access_key_secret: String,
    /// STS token.
    pub security_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

/// One call for the agent.
#[derive(Debug, Clone)]
pub struct Call {
    /// What to run.
    pub kind: CallKind,
    /// `x-fc-request-id`; also the id in the agent's answer path.
    pub request_id: String,
    /// `x-fc-function-deadline` (sent as ms since the epoch); the caller enforces it.
    pub deadline: SystemTime,
    /// Credentials for the function, if any.
    pub credentials: Option<Credentials>,
    /// `x-fc-retry-count` (Async retries).
    pub retry_count: u32,
    /// `x-fc-http-params`: FC 2.0 HTTP functions' request (base64 JSON); FC 3.0 HTTP
    /// triggers instead send the event of [`http_event`] as the body.
    pub http_params: Option<String>,
    /// `x-fc-client-ip`.
    pub client_ip: Option<String>,
    /// The event: the payload for an invoke, empty for hooks.
    pub body: Bytes,
}

impl Call {
    /// A call with no credentials, retries, HTTP parameters or client address.
    pub fn new(kind: CallKind, request_id: impl Into<String>, deadline: SystemTime, body: Bytes) -> Call {
        Call { kind, request_id: request_id.into(), deadline, credentials: None, retry_count: 0, http_params: None, client_ip: None, body }
    }
}

/// How the agent answered a call.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `POST …/{id}/response`.
    Success(Success),
    /// `POST …/{id}/error`: the function failed.
    Error(AgentError),
}

/// A successful answer.
#[derive(Debug, Clone)]
pub struct Success {
    /// The result, as the agent posted it.
    pub body: Bytes,
    /// The `Content-Type` the agent posted (the SDK sends `application/json`).
    pub content_type: Option<String>,
    /// `x-fc-http-params` of an FC 2.0 HTTP function's answer (base64 JSON status/headers).
    pub http_params: Option<String>,
}

/// A failure the agent reported, on a call (`…/{id}/error`) or at start (`/runtime/init/error`).
#[derive(Debug, Clone)]
pub struct AgentError {
    /// The body as posted: FC returns it to the caller unchanged.
    pub body: Bytes,
    /// `errorMessage` (the whole body when it is not FC's JSON shape).
    pub error_message: String,
    /// `errorType`, when given.
    pub error_type: Option<String>,
    /// The agent marked it `x-fc-error-type: HandledInvocationError` (a Node.js
    /// `callback(err)`); otherwise it is FC's default, `UnhandledInvocationError`.
    pub handled: bool,
}

impl AgentError {
    /// Reads FC's error body `{"errorMessage", "errorType", "stackTrace"}`, leniently: any
    /// other body becomes the message as text.
    pub fn parse(body: Bytes, handled: bool) -> AgentError {
        #[derive(serde::Deserialize)]
        struct Shape {
            #[serde(rename = "errorMessage")]
            error_message: Option<serde_json::Value>,
            #[serde(rename = "errorType")]
            error_type: Option<String>,
        }
        let (error_message, error_type) = match serde_json::from_slice::<Shape>(&body) {
            Ok(s) => {
                let msg = match s.error_message {
                    Some(serde_json::Value::String(m)) => m,
                    Some(other) => other.to_string(),
                    None => String::from_utf8_lossy(&body).into_owned(),
                };
                (msg, s.error_type)
            }
            Err(_) => (String::from_utf8_lossy(&body).into_owned(), None),
        };
        AgentError { body, error_message, error_type, handled }
    }

    /// FC's `x-fc-error-type` for this failure of an invocation.
    pub fn fc_error_type(&self) -> &'static str {
        if self.handled {
            "HandledInvocationError"
        } else {
            "UnhandledInvocationError"
        }
    }
}

/// Why a call got no answer from the agent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The agent reported (or had reported) that the function could not load.
    #[error("the function failed to initialize: {}", .0.error_message)]
    Init(AgentError),
    /// Another call is still outstanding.
    #[error("call {0} is still outstanding on this instance; a built-in runtime takes one call at a time")]
    Busy(String),
    /// The request id cannot be used in the agent's answer path.
    #[error("request id {0:?} is invalid: 1 to 128 characters from A-Z a-z 0-9 . _ -")]
    InvalidRequestId(String),
    /// A value cannot be carried in an HTTP header.
    #[error("{name} {value:?} cannot be sent to the runtime as an HTTP header value (control characters?)")]
    InvalidHeader {
        /// The header.
        name: &'static str,
        /// The value.
        value: String,
    },
    /// The agent's answer was over the limit.
    #[error("the function's response is larger than {limit} bytes, the limit for a synchronous invocation")]
    ResponseTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The server went away before the call was answered.
    #[error("the runtime API server stopped before the call was answered")]
    Closed,
}

/// Size limits of one server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest response, error or init-error body accepted from the agent.
    pub max_response_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_response_bytes: MAX_RESPONSE_BYTES }
    }
}

/// A call waiting for the agent's `next`.
struct Queued {
    seq: u64,
    id: String,
    headers: HeaderMap,
    body: Bytes,
    tx: oneshot::Sender<Result<Reply, CallError>>,
}

/// A call the agent has taken and not yet answered.
struct Active {
    seq: u64,
    id: String,
    tx: oneshot::Sender<Result<Reply, CallError>>,
}

/// How a remembered request id ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Answered,
    Canceled,
}

#[derive(Default)]
struct State {
    queued: Option<Queued>,
    active: Option<Active>,
    /// Bumped by every `next`: a poll whose number is no longer current was superseded.
    poll_gen: u64,
    seq: u64,
    finished: VecDeque<(String, Ended)>,
    init_error: Option<AgentError>,
}

impl State {
    fn remember(&mut self, id: String, how: Ended) {
        if self.finished.len() == FINISHED_MEMORY {
            self.finished.pop_front();
        }
        self.finished.push_back((id, how));
    }

    fn ended(&self, id: &str) -> Option<Ended> {
        self.finished.iter().rev().find(|(i, _)| i == id).map(|(_, e)| *e)
    }
}

/// What the server's tasks and the callers share.
struct Shared {
    state: Mutex<State>,
    /// Wakes polls: a call was queued, or a newer poll superseded an older one.
    changed: Notify,
    init_tx: watch::Sender<Option<AgentError>>,
    /// Set by the agent's first `next`: it has loaded the function and waits for work.
    polled: watch::Sender<bool>,
    /// Held while a posted body is read, so memory holds one body at a time.
    body_slot: tokio::sync::Semaphore,
    info: InstanceInfo,
    limits: Limits,
    /// What the agent reported pending with its last answer (`x-fcsup-pending`).
    pending: Mutex<Vec<String>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-changed in a way that
        // matters more than refusing every later call would.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// FC's runtime API for one instance. Dropping it stops the server and closes its
/// connections.
pub struct RuntimeApi {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RuntimeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeApi").field("function", &self.shared.info.function_name).finish_non_exhaustive()
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RuntimeApi {
    /// Serves the API on `listener` (a TCP or Unix listener; later one made inside the
    /// instance's network namespace) with FC's limits. Must be called inside a Tokio runtime.
    pub fn serve<L: Listener>(listener: L, info: InstanceInfo) -> RuntimeApi {
        RuntimeApi::serve_with(listener, info, Limits::default())
    }

    /// [`RuntimeApi::serve`] for a listener made with the standard library.
    pub fn serve_std(listener: std::net::TcpListener, info: InstanceInfo) -> std::io::Result<RuntimeApi> {
        listener.set_nonblocking(true)?;
        Ok(RuntimeApi::serve(tokio::net::TcpListener::from_std(listener)?, info))
    }

    /// [`RuntimeApi::serve`] with other limits.
    pub fn serve_with<L: Listener>(listener: L, info: InstanceInfo, limits: Limits) -> RuntimeApi {
        let (init_tx, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            init_tx,
            polled: watch::channel(false).0,
            body_slot: tokio::sync::Semaphore::new(1),
            info,
            limits,
            pending: Mutex::default(),
        });
        let task = tokio::spawn(server::accept_loop(listener, shared.clone()));
        RuntimeApi { shared, task }
    }

    /// What fcsup's agent reported still pending in the function (asyncio tasks, timers,
    /// handles) with its last answer, taken (README, Freeze hazards).
    pub fn take_pending(&self) -> Vec<String> {
        std::mem::take(&mut *self.shared.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Hands `call` to the agent and waits for its answer. Fails at once when another call is
    /// outstanding or the function failed to initialize. There is no timeout here: the caller
    /// enforces the deadline, and dropping this future withdraws the call (a later answer for
    /// it gets `410 Gone`).
    pub async fn call(&self, call: Call) -> Result<Reply, CallError> {
        if !valid_request_id(&call.request_id) {
            return Err(CallError::InvalidRequestId(call.request_id));
        }
        let headers = next_headers(&self.shared.info, &call)?;
        let (tx, rx) = oneshot::channel();
        let seq = {
            let mut st = self.shared.lock();
            if let Some(e) = &st.init_error {
                return Err(CallError::Init(e.clone()));
            }
            if let Some(id) = st.queued.as_ref().map(|q| &q.id).or(st.active.as_ref().map(|a| &a.id)) {
                return Err(CallError::Busy(id.clone()));
            }
            st.seq += 1;
            let seq = st.seq;
            st.queued = Some(Queued { seq, id: call.request_id.clone(), headers, body: call.body, tx });
            seq
        };
        let _withdraw = Withdraw { shared: &self.shared, seq };
        self.shared.changed.notify_waiters();
        rx.await.unwrap_or(Err(CallError::Closed))
    }

    /// Resolves once the agent has polled `next` for the first time: it loaded the function
    /// and is ready for calls (the readiness of a built-in runtime's instance).
    pub async fn polled(&self) {
        let mut rx = self.shared.polled.subscribe();
        // The sender lives in `shared`, as long as `self`.
        let _ = rx.wait_for(|p| *p).await;
    }

    /// The init error the agent reported, if it did.
    pub fn init_error(&self) -> Option<AgentError> {
        self.shared.lock().init_error.clone()
    }

    /// Waits until the agent reports an init error (forever if it never does): lets the
    /// instance layer fail a cold start as soon as the function cannot load.
    pub async fn init_failed(&self) -> AgentError {
        let mut rx = self.shared.init_tx.subscribe();
        let got = rx.wait_for(Option::is_some).await.map(|e| e.clone());
        match got {
            Ok(e) => e.expect("waited for Some"),
            // The sender lives in `shared`, as long as `self`.
            Err(_) => std::future::pending().await,
        }
    }
}

/// Withdraws a call whose caller stopped waiting, so the next call is not refused as busy.
struct Withdraw<'a> {
    shared: &'a Shared,
    seq: u64,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if st.queued.as_ref().is_some_and(|q| q.seq == self.seq) {
            let q = st.queued.take().expect("checked");
            st.remember(q.id, Ended::Canceled);
        } else if st.active.as_ref().is_some_and(|a| a.seq == self.seq) {
            let a = st.active.take().expect("checked");
            st.remember(a.id, Ended::Canceled);
        }
    }
}

/// A request id the agent can put in its answer path unescaped.
fn valid_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The headers of the `next` response that carries `call`.
fn next_headers(info: &InstanceInfo, call: &Call) -> Result<HeaderMap, CallError> {
    let mut h = HeaderMap::new();
    let mut put = |name: &'static str, value: &str| -> Result<(), CallError> {
        let v = HeaderValue::from_str(value).map_err(|_| CallError::InvalidHeader { name, value: value.to_string() })?;
        h.insert(HeaderName::from_static(name), v);
        Ok(())
    };
    let deadline_ms = call.deadline.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    put("x-fc-request-id", &call.request_id)?;
    put("x-fc-function-type", &call.kind.function_type().to_string())?;
    put("x-fc-function-deadline", &deadline_ms.to_string())?;
    put("x-fc-function-name", &info.function_name)?;
    put("x-fc-function-handler", &info.handler)?;
    put("x-fc-function-memory", &info.memory_mb.to_string())?;
    put("x-fc-function-timeout", &info.timeout_s.to_string())?;
    if let Some(i) = &info.initializer {
        put("x-fc-function-initializer", i)?;
    }
    if let Some(t) = info.initialization_timeout_s {
        put("x-fc-initialization-timeout", &t.to_string())?;
    }
    if let Some(p) = &info.pre_stop_handler {
        put("x-fc-instance-lifecycle-pre-stop-handler", p)?;
    }
    if let Some(p) = &info.pre_freeze_handler {
        put("x-fc-instance-lifecycle-pre-freeze-handler", p)?;
    }
    put("x-fc-service-name", &info.service_name)?;
    put("x-fc-service-logproject", &info.log_project)?;
    put("x-fc-service-logstore", &info.log_store)?;
    put("x-fc-region", &info.region)?;
    put("x-fc-account-id", &info.account_id)?;
    put("x-fc-qualifier", &info.qualifier)?;
    put("x-fc-version-id", &info.version_id)?;
    put("x-fc-instance-id", &info.instance_id)?;
    put("x-fc-retry-count", &call.retry_count.to_string())?;
    if let Some(c) = &call.credentials {
        put("x-fc-access-key-id", &c.access_key_id)?;
        put("x-fc-access-key-secret", &c.access_key_secret)?;
        put("x-fc-security-token", &c.security_token)?;
    }
    if let Some(p) = call.http_params.as_deref().filter(|p| !p.is_empty()) {
        put("x-fc-http-params", p)?;
    }
    if let Some(ip) = &call.client_ip {
        put("x-fc-client-ip", ip)?;
    }
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    Ok(h)
}

#[cfg(test)]
mod tests;
