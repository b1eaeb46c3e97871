//! One request on an admitted instance: thaw (and a retried Initializer) under the power
//! lock, proxy the request into the instance, map what went wrong, and give the ticket back
//! (its drop freezes the instance once nothing is admitted) when the exchange is over: when
//! the answer was read whole, or, for an answer streamed to the client ([`Streamed`]) or an
//! upgraded connection (a WebSocket), when it ends or the client goes away. The instance
//! stays thawed, and its billing window open, for as long (README, Streaming).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode, Version};
use tokio::sync::oneshot;

use super::builtin::{self, Answer, CallFailed};
use super::conn::{ConnError, ReqBody, Sender};
use super::lifecycle::Begin;
use super::{hooks, Call, Instance, Internal, InvokeError, Kernel, Lifecycle, Reply, Retire, StartError, Ticket};
use crate::billing::Phase;
use crate::runtime_api::{http_event, CallError, CallKind, RuntimeApi};

/// FC's limit on a synchronous response body read whole (its request limit too): 32 MB.
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// How long a request whose connection broke waits to learn whether the process died (a
/// crash or an OOM kill) rather than only closing the connection.
const EXIT_AFTER_BROKEN_CONNECTION: Duration = Duration::from_secs(5);

/// How long a Tail request waits, after its answer, for the freeze that ends its output
/// (lines printed after the answer are the request's up to the freeze).
const TAIL_SETTLE: Duration = Duration::from_millis(100);

/// How sending a request into the instance ended badly.
enum ProxyError {
    Timeout,
    Canceled,
    TooLarge,
    /// The client's streamed body grew past the limit.
    BodyTooLarge,
    Build(hyper::http::Error),
    Conn(ConnError),
    /// A built-in runtime's process exited during the call.
    Exited,
    /// A built-in runtime failed the call in a way FC names.
    Failed(InvokeError),
}

/// What the instance answered.
enum Proxied {
    /// Read whole.
    Whole(Answer),
    /// The head; the body follows on the connection.
    Streaming { status: StatusCode, headers: HeaderMap, body: Incoming, conn: Sender },
    /// `101 Switching Protocols`: the connection is the function's from now on.
    Upgraded { headers: HeaderMap, upstream: hyper::upgrade::OnUpgrade },
}

impl<K: Kernel> Ticket<K> {
    /// Runs one request on the instance: thaw, proxy, and (when this was the last admitted
    /// request) PreFreeze and freeze once the ticket is given back.
    pub async fn invoke(self, call: Call) -> Result<Reply, InvokeError> {
        let inst = self.instance.clone();
        let (request_id, wait) = (call.request_id.clone(), inst.hazards_wait(call.want_log));
        // Only a caller that waits for its freeze's report listens for it.
        let events = wait.map(|_| {
            inst.hazards.awaited(&request_id);
            inst.hazards_subscribe()
        });
        let result = inst.run(self, call).await;
        if result.is_err() {
            // An answer marks itself when it gives its slot back (`Hold::finish`).
            inst.hazards_answered(&request_id);
        }
        let (Some(within), Some(events)) = (wait, events) else { return result };
        // A streamed answer is already on its way: no report can change it.
        let report = if result.as_ref().is_ok_and(|r| r.stream.is_some()) {
            None
        } else {
            // README, Freeze hazards: the answer waits for the report of the freeze it lets
            // happen (the ticket went with `run`, so that freeze may come).
            crate::hazards::wait_report(events, &request_id, within).await
        };
        // No freeze may have come (another request kept the instance thawed).
        inst.hazards.forget_awaited(&request_id);
        match report {
            Some(r) => inst.apply_hazards(result, Some(r)),
            None => result,
        }
    }
}

impl<K: Kernel> Instance<K> {
    async fn run(self: &Arc<Self>, ticket: Ticket<K>, mut call: Call) -> Result<Reply, InvokeError> {
        let canceled = call.canceled.take();
        self.wait_booted().await?;
        // The reading that opened this request's window, when it opened one.
        let (opened, running) = {
            let mut windows = self.power.lock().await;
            loop {
                let begin = self.life.borrow().begin(ticket.seen_init_failures);
                match begin? {
                    Begin::Initialize { thaw } => {
                        self.switch_window(&mut windows, Phase::Initialize);
                        if thaw {
                            self.thaw_locked().await?;
                        }
                        self.initialize().await.map_err(|e| InvokeError::from(StartError::Initializer(e)))?;
                    }
                    Begin::Run { thaw } => {
                        // The window opens before the thaw (while nothing runs) and closes
                        // after the freeze, so every µs of CPU is in exactly one record.
                        let opened = self.switch_window(&mut windows, Phase::Invoke);
                        if thaw {
                            self.thaw_locked().await?;
                            self.reporting.samples().record("thaw_seen", call.arrived.elapsed());
                            self.note_thaw(&call.request_id);
                        }
                        windows.add_request(&call.request_id);
                        break (opened, Running::start(self));
                    }
                }
            }
        };
        let started = Instant::now();
        let client_upgrade = call.client_upgrade.take();
        let done = self.proxy_running(&mut call, canceled, opened.map(|r| r.cpu), started).await;
        let request_id = std::mem::take(&mut call.request_id);
        let (proxied, meta) = match done {
            Ok(d) => d,
            Err(e) => {
                drop(running);
                return Err(e);
            }
        };
        let mut reply = Reply {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            stream: None,
            duration: meta.duration,
            cpu_usec: meta.cpu_usec,
            max_memory_mb: meta.max_memory_mb,
            log: Vec::new(),
            instance_id: self.id.clone(),
            error_type: None,
        };
        let hold =
            |conn| Hold { ticket: Some(ticket), running: Some(running), conn, request_id: request_id.clone(), started, want_log: call.want_log };
        match proxied {
            Proxied::Whole(Answer { status, headers, body, error_type }) => {
                (reply.status, reply.headers, reply.body, reply.error_type) = (status, headers, body, error_type);
                // The freeze giving the slot back lets happen reports on this request.
                self.hazards_answered(&request_id);
                drop(hold(None));
                if call.want_log {
                    reply.log = self.tail_log(&request_id).await;
                }
            }
            Proxied::Streaming { status, headers, body, conn } => {
                (reply.status, reply.headers) = (status, headers);
                let trailer = call.want_log && accepts_trailers(&call.headers);
                let deadline = tokio::time::Instant::from_std(started + self.function.timeout);
                reply.stream = Some(Streamed::new(body, deadline, Box::new(hold(Some(conn))), trailer));
            }
            Proxied::Upgraded { headers, upstream } => {
                (reply.status, reply.headers) = (StatusCode::SWITCHING_PROTOCOLS, headers);
                let hold = hold(None);
                let timeout = self.function.timeout.saturating_sub(started.elapsed());
                tokio::spawn(splice(client_upgrade, upstream, timeout, hold));
            }
        }
        Ok(reply)
    }

    /// What the request printed up to the freeze that followed it (or up to [`TAIL_SETTLE`]
    /// when none came: another request keeps the instance thawed), its slot given back.
    async fn tail_log(&self, request_id: &str) -> Vec<u8> {
        // Ended now: a hook (PreFreeze) or another request that begins takes the next lines.
        self.log.finish(request_id);
        let mut rx = self.life.subscribe();
        let _ = tokio::time::timeout(TAIL_SETTLE, rx.wait_for(|l| l.frozen() || l.admitted() > 0 || l.ending())).await;
        self.log.drain().await;
        self.log.take(request_id)
    }

    /// Sends the request (the instance thawed, its run counted) and turns the outcome into an
    /// answer or FC's error.
    async fn proxy_running(
        &self,
        call: &mut Call,
        canceled: Option<oneshot::Receiver<()>>,
        cpu0: Option<crate::cgroup::CpuStat>,
        started: Instant,
    ) -> Result<(Proxied, Meta), InvokeError> {
        self.log.open(&call.request_id, call.want_log).await;
        // The request's own CPU counts from its window's opening reading (taken while frozen,
        // so it is the same figure), or from now when it joined an open window.
        let cpu0 = cpu0.unwrap_or_else(|| self.kernel.cpu());
        // A client that goes away aborts the request only where FC would replace the instance;
        // otherwise the handler runs to its end and the answer is dropped.
        let replace_on_cancel = self.replace_on_cancel();
        let mut was_canceled = false;
        let fate = call.body_stream.as_ref().map(super::ClientBody::fate);
        let result = {
            let mut proxy = std::pin::pin!(self.proxy(call));
            tokio::select! {
                r = &mut proxy => r,
                () = client_gone(canceled) => {
                    was_canceled = true;
                    if replace_on_cancel { Err(ProxyError::Canceled) } else { proxy.await }
                }
            }
        };
        // A broken connection while the client's body was still coming is the client's doing.
        let result = match result {
            Err(ProxyError::Conn(_)) if fate.as_ref().is_some_and(super::BodyFate::too_large) => Err(ProxyError::BodyTooLarge),
            Err(ProxyError::Conn(_)) if fate.as_ref().is_some_and(super::BodyFate::client_failed) => {
                was_canceled = true;
                Err(ProxyError::Canceled)
            }
            r => r,
        };
        let cpu_now = self.kernel.cpu();
        self.hazards_response_cpu(cpu_now.usage_usec);
        let cpu = cpu_now.since(&cpu0).usage_usec;
        let duration = started.elapsed();
        // The request's output ends with the exchange: here when it failed or was read whole
        // (a Tail request takes its log after the freeze, [`Instance::tail_log`]), else when
        // its stream or socket ends ([`Hold`]).
        if result.is_err() || matches!(result, Ok(Proxied::Whole(_))) && !call.want_log {
            self.log.end(&call.request_id);
        }
        self.last_used_ms.store(crate::clock::now_ms(), Ordering::Relaxed);
        let max_memory_mb = self.max_memory_mb();
        if was_canceled {
            self.log.note(&format!(
                "FC Invoke End RequestId: {}, Error: Invocation canceled by client (duration: {}ms, maxMemoryUsage: {max_memory_mb:.2}MB)",
                call.request_id,
                duration.as_millis()
            ));
        }
        let meta = Meta { duration, cpu_usec: cpu, max_memory_mb };
        match result {
            Ok(p) => Ok((p, meta)),
            Err(ProxyError::Failed(e)) => Err(e),
            Err(ProxyError::Canceled) => {
                if replace_on_cancel {
                    self.transition(|l| l.retire(Retire::Replace));
                }
                Err(InvokeError::Canceled)
            }
            Err(ProxyError::TooLarge) => Err(InvokeError::ResponseTooLarge { limit_mb: MAX_RESPONSE_BYTES >> 20 }),
            Err(ProxyError::BodyTooLarge) => {
                Err(InvokeError::Unsendable(format!("request body is larger than {MAX_RESPONSE_BYTES} bytes, the limit for Sync invocations")))
            }
            Err(ProxyError::Timeout) => {
                self.timed_out();
                Err(InvokeError::Timeout(self.function.timeout.as_secs()))
            }
            Err(ProxyError::Build(e)) => Err(Internal::Build(e).into()),
            Err(e @ (ProxyError::Conn(_) | ProxyError::Exited)) => {
                let duration_ms = duration.as_millis().try_into().unwrap_or(u64::MAX);
                // A process dying at its memory limit can take seconds to be reaped on a loaded
                // host (reclaim first).
                if self.wait_exit(EXIT_AFTER_BROKEN_CONNECTION).await.is_none() {
                    let ProxyError::Conn(e) = e else { unreachable!("an exit was seen") };
                    return Err(Internal::Request(e).into());
                }
                if self.life.borrow().oom_killed() {
                    self.log.note(&format!(
                        "FC Invoke End RequestId: {}, Error: out of memory (memorySize {} MB)",
                        call.request_id, self.function.memory_mb
                    ));
                    Err(InvokeError::OutOfMemory { limit_mb: self.function.memory_mb, duration_ms, max_memory_mb })
                } else {
                    Err(InvokeError::Crashed { duration_ms, max_memory_mb })
                }
            }
        }
    }

    /// Whether a client going away ends the request on this instance (and replaces it).
    fn replace_on_cancel(&self) -> bool {
        self.function.concurrency == 1 && self.function.health_check.is_none()
    }

    /// A request ran past the function's timeout.
    fn timed_out(&self) {
        // README, Behaviour decisions: the hung instance is recycled when it serves one request at a time.
        if self.function.concurrency == 1 {
            self.transition(|l| l.retire(Retire::Broken));
        }
    }

    async fn proxy(&self, call: &mut Call) -> Result<Proxied, ProxyError> {
        if let Some(api) = self.runtime_api() {
            if let Some(b) = call.body_stream.take() {
                let fate = b.fate();
                call.body = match b.collect().await {
                    Ok(c) => c.to_bytes(),
                    Err(_) if fate.too_large() => return Err(ProxyError::BodyTooLarge),
                    Err(_) => return Err(ProxyError::Canceled),
                };
            }
            return self.proxy_runtime(api, call).await.map(Proxied::Whole);
        }
        let upgrade = call.http_trigger && call.headers.contains_key(hyper::header::UPGRADE);
        let body = match call.body_stream.take() {
            Some(b) => ReqBody::Stream(b),
            None => ReqBody::Full(Full::new(call.body.clone())),
        };
        let mut req = if call.http_trigger {
            let mut r = Request::builder().method(call.method.clone()).uri(&call.path_and_query);
            let h = r.headers_mut().expect("a fresh builder");
            h.reserve(call.headers.len() + 8);
            for (k, v) in &call.headers {
                let n = k.as_str();
                if n.starts_with("x-fc-") || n == "connection" || n == "keep-alive" || n == "host" || n == "content-length" {
                    continue;
                }
                h.append(k.clone(), v.clone());
            }
            if upgrade {
                h.insert(hyper::header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            r
        } else {
            Request::builder().method(Method::POST).uri("/invoke").header("content-type", "application/octet-stream")
        }
        .header(hyper::header::HOST, self.conns.host())
        .body(body)
        .map_err(ProxyError::Build)?;
        let control = if call.http_trigger { "/http-invoke" } else { "/invoke" };
        hooks::add_request_headers(&self.fc_headers, &call.request_id, control, "0", req.headers_mut());
        if call.retry_count > 0 {
            req.headers_mut().insert("x-fc-retry-count", call.retry_count.into());
        }
        // Read whole: an answer that cannot go out as it is written (an Async one, or one
        // whose Tail log must ride in a header).
        let whole = !call.stream || (call.want_log && !accepts_trailers(&call.headers));
        let send = async {
            let mut s = self.conns.take(&self.kernel).await.map_err(ProxyError::Conn)?;
            let mut resp = s.send_request(req).await.map_err(|e| ProxyError::Conn(e.into()))?;
            if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                let upstream = hyper::upgrade::on(&mut resp);
                return Ok(Proxied::Upgraded { headers: resp.into_parts().0.headers, upstream });
            }
            let (parts, body) = resp.into_parts();
            // Past FC's limit before a byte is sent: the error FC gives.
            if body.size_hint().exact().is_some_and(|n| n > MAX_RESPONSE_BYTES as u64) {
                return Err(ProxyError::TooLarge);
            }
            // A Tail log cannot trail a body of declared length: read whole, it rides in a header.
            if !(whole || call.want_log && body.size_hint().exact().is_some()) {
                return Ok(Proxied::Streaming { status: parts.status, headers: parts.headers, body, conn: s });
            }
            // Bounded while it streams in: a function must not make the supervisor hold more.
            // Past the limit the connection is dropped, not reused.
            let body = match http_body_util::Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(ProxyError::TooLarge),
                Err(e) => return Err(ProxyError::Conn(ConnError::Body(e))),
            };
            self.conns.put(s);
            Ok(Proxied::Whole(Answer { status: parts.status, headers: parts.headers, body, error_type: None }))
        };
        match tokio::time::timeout(self.function.timeout, send).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::Timeout),
        }
    }

    /// A built-in runtime's invocation over FC's runtime API: the payload (an HTTP trigger's
    /// request as FC 3.0's event) to the agent, its answer back.
    async fn proxy_runtime(&self, api: &RuntimeApi, call: &Call) -> Result<Answer, ProxyError> {
        let body = if call.http_trigger {
            let host = call.headers.get(hyper::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
            let ctx = http_event::RequestContext {
                request_id: &call.request_id,
                account_id: "local",
                domain_name: host,
                domain_prefix: host.split('.').next().unwrap_or(host),
                source_ip: "",
                time_ms: crate::clock::now_ms().saturating_sub(u64::try_from(call.arrived.elapsed().as_millis()).unwrap_or(0)),
            };
            http_event::event(&call.method, &call.path_and_query, Version::HTTP_11, &call.headers, &call.body, &ctx)
        } else {
            call.body.clone()
        };
        match self.runtime_call(api, CallKind::Invoke, &call.request_id, self.function.timeout, body, call.retry_count).await {
            Ok(reply) => Ok(builtin::answer(reply, call.http_trigger)),
            Err(CallFailed::Timeout) => Err(ProxyError::Timeout),
            Err(CallFailed::Exited) => Err(ProxyError::Exited),
            Err(CallFailed::Runtime(CallError::ResponseTooLarge { .. })) => Err(ProxyError::TooLarge),
            Err(CallFailed::Runtime(CallError::Init(e))) => {
                // An init error reported after the start (a function posting it late) would fail
                // every later call on this instance: it goes, the next request starts a fresh one.
                self.transition(|l| l.retire(Retire::Broken));
                Err(ProxyError::Failed(StartError::AgentInit(e).into()))
            }
            Err(CallFailed::Runtime(e)) => Err(ProxyError::Failed(Internal::Runtime(e).into())),
        }
    }

    pub(super) fn max_memory_mb(&self) -> f64 {
        self.kernel.memory().peak().map(|b| b as f64 / 1024.0 / 1024.0).unwrap_or(0.0)
    }
}

/// Measures of a request taken when its answer's head came.
struct Meta {
    duration: Duration,
    cpu_usec: u64,
    max_memory_mb: f64,
}

/// A request counted as running until dropped (even if its task is torn down mid-request).
struct Running<K: Kernel>(Arc<Instance<K>>);

impl<K: Kernel> Running<K> {
    fn start(instance: &Arc<Instance<K>>) -> Self {
        instance.transition(Lifecycle::run);
        Running(instance.clone())
    }
}

impl<K: Kernel> Drop for Running<K> {
    fn drop(&mut self) {
        self.0.transition(Lifecycle::ran);
    }
}

/// Whether the client takes trailers (`TE: trailers`), where a streamed answer's Tail log goes.
fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(hyper::header::TE).iter().any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers"))))
}

/// How a streamed exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The function finished its answer.
    Complete,
    /// The connection into the instance failed.
    Broken,
    /// The client went away first.
    ClientGone,
    /// The function's timeout ran out.
    TimedOut,
}

/// A Tail log to send as the trailer `x-fc-log-result`.
type TrailerFuture = Pin<Box<dyn Future<Output = Option<HeaderMap>> + Send>>;

/// What a streamed exchange holds until it ends: the request's slot (the instance stays
/// thawed and billed), its run, and the connection to give back.
trait Finish: Send {
    /// The exchange ended: give everything back; the Tail trailer to send, if one.
    fn finish(&mut self, end: End) -> Option<TrailerFuture>;
}

/// Fields drop in order: the run ends before the slot is given back (which may freeze).
struct Hold<K: Kernel> {
    running: Option<Running<K>>,
    ticket: Option<Ticket<K>>,
    conn: Option<Sender>,
    request_id: String,
    started: Instant,
    want_log: bool,
}

impl<K: Kernel> Finish for Hold<K> {
    fn finish(&mut self, end: End) -> Option<TrailerFuture> {
        let (Some(ticket), Some(running)) = (self.ticket.take(), self.running.take()) else { return None };
        let inst = ticket.instance().clone();
        let conn = self.conn.take();
        let duration = self.started.elapsed();
        match end {
            End::Complete => {
                if let Some(c) = conn {
                    inst.conns.put(c);
                }
            }
            End::Broken => inst.log.note(&format!(
                "FC Invoke End RequestId: {}, Error: the answer broke off (duration: {}ms)",
                self.request_id,
                duration.as_millis()
            )),
            End::ClientGone => {
                inst.log.note(&format!(
                    "FC Invoke End RequestId: {}, Error: Invocation canceled by client (duration: {}ms)",
                    self.request_id,
                    duration.as_millis()
                ));
                if inst.replace_on_cancel() {
                    inst.transition(|l| l.retire(Retire::Replace));
                }
            }
            End::TimedOut => {
                inst.log.note(&format!(
                    "FC Invoke End RequestId: {}, Error: Function time out after {} seconds",
                    self.request_id,
                    inst.function.timeout.as_secs()
                ));
                inst.timed_out();
            }
        }
        inst.last_used_ms.store(crate::clock::now_ms(), Ordering::Relaxed);
        // The freeze this lets happen reports on this request (README, Freeze hazards).
        inst.hazards_answered(&self.request_id);
        drop(running);
        drop(ticket);
        if !(self.want_log && end == End::Complete) {
            inst.log.end(&self.request_id);
            return None;
        }
        let request_id = self.request_id.clone();
        Some(Box::pin(async move {
            let captured = inst.tail_log(&request_id).await;
            let summary = crate::logs::summary(duration, inst.function.memory_mb, inst.max_memory_mb());
            let log = crate::logs::tail(&request_id, &captured, &summary);
            let v = HeaderValue::from_str(&base64::Engine::encode(&base64::engine::general_purpose::STANDARD, log)).ok()?;
            let mut h = HeaderMap::new();
            h.insert("x-fc-log-result", v);
            Some(h)
        }))
    }
}

/// An answer passed to the client as the function writes it, frame by frame (hyper asks for
/// the next frame only once the client took this one, so nothing piles up in fcsup). It holds
/// the request's slot until the function's last byte, the function's timeout (counted from the
/// request's start: it covers the whole exchange), or the client going away.
///
/// The timeout is kept by a watchdog task, not by `poll_frame` alone: a client that stops
/// reading leaves hyper blocked on its socket, never asking for the next frame, and must not
/// keep the instance thawed and billed past the timeout. The watchdog ends the exchange and
/// closes the client's connection ([`Streamed::close_on_timeout`]).
pub struct Streamed {
    body: Incoming,
    shared: Arc<std::sync::Mutex<StreamShared>>,
    deadline: tokio::time::Instant,
    /// Started once the answer outlives its first frame (most answers end there).
    watchdog: Option<tokio::task::JoinHandle<()>>,
    trailer: Option<TrailerFuture>,
    want_trailer: bool,
    /// Dropped with the answer (the front door's in-flight mark).
    keep: Option<Box<dyn Send + Sync>>,
}

/// What the body and its watchdog share.
#[derive(Default)]
struct StreamShared {
    hold: Option<Box<dyn Finish>>,
    timed_out: bool,
    /// The task polling the body while it waits on the instance.
    waker: Option<std::task::Waker>,
    /// Closes the client's connection.
    close: Option<Arc<tokio::sync::Notify>>,
}

impl std::fmt::Debug for Streamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streamed").field("open", &self.shared.lock().expect("stream").hold.is_some()).finish()
    }
}

impl Streamed {
    fn new(body: Incoming, deadline: tokio::time::Instant, hold: Box<dyn Finish>, want_trailer: bool) -> Self {
        let shared = StreamShared { hold: Some(hold), ..StreamShared::default() };
        Streamed { body, shared: Arc::new(std::sync::Mutex::new(shared)), deadline, watchdog: None, trailer: None, want_trailer, keep: None }
    }

    /// When the function's timeout ends the answer, `close` is notified so that the client's
    /// connection closes (the client sees the answer cut off, as from FC).
    pub fn close_on_timeout(&mut self, close: Arc<tokio::sync::Notify>) {
        self.shared.lock().expect("stream").close = Some(close);
    }

    /// Keeps `v` until the answer is over.
    pub fn keep_until_over(&mut self, v: Box<dyn Send + Sync>) {
        self.keep = Some(v);
    }

    fn end(&mut self, end: End) -> Option<TrailerFuture> {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        let hold = self.shared.lock().expect("stream").hold.take();
        hold.and_then(|mut h| h.finish(end))
    }

    /// Starts the watchdog that ends the exchange at the deadline, whoever polls.
    fn watch(&mut self) {
        if self.watchdog.is_some() {
            return;
        }
        let (shared, deadline) = (self.shared.clone(), self.deadline);
        self.watchdog = Some(tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            let (hold, waker, close) = {
                let mut s = shared.lock().expect("stream");
                let Some(hold) = s.hold.take() else { return };
                s.timed_out = true;
                (hold, s.waker.take(), s.close.clone())
            };
            let mut hold = hold;
            hold.finish(End::TimedOut);
            if let Some(w) = waker {
                w.wake();
            }
            if let Some(c) = close {
                c.notify_one();
            }
        }));
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(t) = &mut this.trailer {
            let h = std::task::ready!(t.as_mut().poll(cx));
            this.trailer = None;
            return Poll::Ready(h.map(|h| Ok(Frame::trailers(h))));
        }
        {
            let s = this.shared.lock().expect("stream");
            if s.timed_out {
                return Poll::Ready(Some(Err("the function timed out while streaming its answer".into())));
            }
            if s.hold.is_none() {
                return Poll::Ready(None);
            }
        }
        if tokio::time::Instant::now() >= this.deadline {
            this.end(End::TimedOut);
            this.shared.lock().expect("stream").timed_out = true;
            return Poll::Ready(Some(Err("the function timed out while streaming its answer".into())));
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => {
                this.watch();
                let mut s = this.shared.lock().expect("stream");
                if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    s.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(f))) => {
                // hyper stops asking once a declared length was sent: the end is now.
                if this.body.is_end_stream() {
                    this.end(End::Complete);
                } else {
                    this.watch();
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.end(End::Broken);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                let t = this.end(End::Complete);
                if this.want_trailer {
                    if let Some(t) = t {
                        this.trailer = Some(t);
                        return Pin::new(this).poll_frame(cx);
                    }
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.shared.lock().expect("stream");
        self.trailer.is_none() && s.hold.is_none() && !s.timed_out
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        let end = if self.body.is_end_stream() { End::Complete } else { End::ClientGone };
        self.end(end);
        // A Tail trailer the client did not wait for still ends the request's output.
        if let Some(t) = self.trailer.take() {
            tokio::spawn(t);
        }
    }
}

/// Joins the client's upgraded connection to the instance's (a WebSocket) until either side
/// closes it or the function's timeout runs out (FC closes it then; the client sees 1006),
/// holding the request's slot meanwhile.
async fn splice<K: Kernel>(client: Option<hyper::upgrade::OnUpgrade>, upstream: hyper::upgrade::OnUpgrade, timeout: Duration, mut hold: Hold<K>) {
    let run = async {
        let client = client.ok_or(())?.await.map_err(drop)?;
        let upstream = upstream.await.map_err(drop)?;
        let mut c = hyper_util::rt::TokioIo::new(client);
        let mut u = hyper_util::rt::TokioIo::new(upstream);
        tokio::io::copy_bidirectional(&mut c, &mut u).await.map_err(drop)?;
        Ok::<_, ()>(())
    };
    let end = match tokio::time::timeout(timeout, run).await {
        Ok(Ok(())) => End::Complete,
        Ok(Err(())) => End::Broken,
        Err(_) => End::TimedOut,
    };
    // The connection was handed over: never reused; there is no trailer to send a log in.
    hold.conn = None;
    hold.want_log = false;
    hold.finish(end);
}

/// Resolves when the client has gone (the API sent on the channel); never otherwise.
pub(super) async fn client_gone(canceled: Option<oneshot::Receiver<()>>) {
    if let Some(rx) = canceled {
        if rx.await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}
