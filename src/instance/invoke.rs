//! One request on an admitted instance: thaw (and a retried Initializer) under the power
//! lock, proxy the request into the instance, map what went wrong, and let the ticket's drop
//! freeze the instance once nothing is admitted.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Version};
use tokio::sync::oneshot;

use super::builtin::{self, Answer, CallFailed};
use super::conn::ConnError;
use super::lifecycle::Begin;
use super::{hooks, Call, Instance, Internal, InvokeError, Kernel, Lifecycle, Reply, Retire, StartError, Ticket};
use crate::billing::Phase;
use crate::runtime_api::{http_event, CallError, CallKind, RuntimeApi};

/// FC's limit on a synchronous response body (its request limit too): 32 MB.
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// How long a request whose connection broke waits to learn whether the process died (a
/// crash or an OOM kill) rather than only closing the connection.
const EXIT_AFTER_BROKEN_CONNECTION: Duration = Duration::from_secs(5);

/// How sending a request into the instance ended badly.
enum ProxyError {
    Timeout,
    Canceled,
    TooLarge,
    Build(hyper::http::Error),
    Conn(ConnError),
    /// A built-in runtime's process exited during the call.
    Exited,
    /// A built-in runtime failed the call in a way FC names.
    Failed(InvokeError),
}

impl<K: Kernel> Ticket<K> {
    /// Runs one request on the instance: thaw, proxy, and (when this was the last admitted
    /// request) PreFreeze and freeze once the ticket is given back.
    pub async fn invoke(self, call: Call) -> Result<Reply, InvokeError> {
        let inst = self.instance.clone();
        let (request_id, wait) = (call.request_id.clone(), inst.hazards_wait(call.want_log));
        let events = inst.hazards_subscribe();
        let result = inst.run(&self, call).await;
        inst.hazards_answered(&request_id);
        let Some(within) = wait else { return result };
        // README, Freeze hazards: the answer waits for the report of the freeze it lets happen.
        drop(self);
        let report = crate::hazards::wait_report(events, &request_id, within).await;
        inst.apply_hazards(result, report)
    }
}

impl<K: Kernel> Instance<K> {
    async fn run(self: &Arc<Self>, ticket: &Ticket<K>, mut call: Call) -> Result<Reply, InvokeError> {
        let canceled = call.canceled.take();
        self.wait_booted().await?;
        // The reading that opened this request's window, when it opened one.
        let (opened, _running) = {
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
        self.proxy_running(&call, canceled, opened.map(|r| r.cpu)).await
    }

    /// Sends the request (the instance thawed, its run counted) and turns the outcome into a
    /// reply or FC's error.
    async fn proxy_running(
        &self,
        call: &Call,
        canceled: Option<oneshot::Receiver<()>>,
        cpu0: Option<crate::cgroup::CpuStat>,
    ) -> Result<Reply, InvokeError> {
        self.log.begin(&call.request_id);
        let started = Instant::now();
        // The request's own CPU counts from its window's opening reading (taken while frozen,
        // so it is the same figure), or from now when it joined an open window.
        let cpu0 = cpu0.unwrap_or_else(|| self.kernel.cpu());
        // A client that goes away aborts the request only where FC would replace the instance;
        // otherwise the handler runs to its end and the answer is dropped.
        let replace_on_cancel = self.function.concurrency == 1 && self.function.health_check.is_none();
        let mut was_canceled = false;
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
        let cpu_now = self.kernel.cpu();
        self.hazards_response_cpu(cpu_now.usage_usec);
        let cpu = cpu_now.since(&cpu0).usage_usec;
        let duration = started.elapsed();
        if call.want_log {
            self.log.drain().await;
        }
        let log = self.log.end(&call.request_id);
        self.last_used_ms.store(crate::clock::now_ms(), Ordering::Relaxed);
        let max_memory_mb = self.max_memory_mb();
        if was_canceled {
            self.log.note(&format!(
                "FC Invoke End RequestId: {}, Error: Invocation canceled by client (duration: {}ms, maxMemoryUsage: {max_memory_mb:.2}MB)",
                call.request_id,
                duration.as_millis()
            ));
        }
        match result {
            Ok(Answer { status, headers, body, error_type }) => {
                Ok(Reply { status, headers, body, duration, cpu_usec: cpu, max_memory_mb, log, instance_id: self.id.clone(), error_type })
            }
            Err(ProxyError::Failed(e)) => Err(e),
            Err(ProxyError::Canceled) => {
                self.transition(|l| l.retire(Retire::Replace));
                Err(InvokeError::Canceled)
            }
            Err(ProxyError::TooLarge) => Err(InvokeError::ResponseTooLarge { limit_mb: MAX_RESPONSE_BYTES >> 20 }),
            Err(ProxyError::Timeout) => {
                // README, Behaviour decisions: the hung instance is recycled when it serves one request at a time.
                if self.function.concurrency == 1 {
                    self.transition(|l| l.retire(Retire::Broken));
                }
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

    async fn proxy(&self, call: &Call) -> Result<Answer, ProxyError> {
        if let Some(api) = self.runtime_api() {
            return self.proxy_runtime(api, call).await;
        }
        let mut req = if call.http_trigger {
            let mut r = Request::builder().method(call.method.clone()).uri(&call.path_and_query);
            for (k, v) in &call.headers {
                let n = k.as_str();
                if n.starts_with("x-fc-") || n == "connection" || n == "keep-alive" || n == "host" || n == "content-length" {
                    continue;
                }
                r = r.header(k, v);
            }
            r
        } else {
            Request::builder().method(Method::POST).uri("/invoke").header("content-type", "application/octet-stream")
        }
        .header("host", format!("127.0.0.1:{}", self.function.port))
        .body(Full::new(call.body.clone()))
        .map_err(ProxyError::Build)?;
        let control = if call.http_trigger { "/http-invoke" } else { "/invoke" };
        hooks::add_request_headers(&self.fc_headers, &call.request_id, control, "0", req.headers_mut());
        if call.retry_count > 0 {
            req.headers_mut().insert("x-fc-retry-count", call.retry_count.into());
        }
        let send = async {
            let mut s = self.conns.take(&self.kernel).await.map_err(ProxyError::Conn)?;
            let resp = s.send_request(req).await.map_err(|e| ProxyError::Conn(e.into()))?;
            let (parts, body) = resp.into_parts();
            // Bounded while it streams in: a function must not make the supervisor hold more.
            // Past the limit the connection is dropped, not reused.
            let body = match http_body_util::Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(ProxyError::TooLarge),
                Err(e) => return Err(ProxyError::Conn(ConnError::Body(e))),
            };
            self.conns.put(s);
            Ok(Answer { status: parts.status, headers: parts.headers, body, error_type: None })
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
            Err(CallFailed::Runtime(CallError::Init(e))) => Err(ProxyError::Failed(StartError::AgentInit(e).into())),
            Err(CallFailed::Runtime(e)) => Err(ProxyError::Failed(Internal::Runtime(e).into())),
        }
    }

    pub(super) fn max_memory_mb(&self) -> f64 {
        self.kernel.memory().peak().map(|b| b as f64 / 1024.0 / 1024.0).unwrap_or(0.0)
    }
}

/// A request counted as running until dropped (even if its task is torn down mid-request).
struct Running<'a, K: Kernel>(&'a Instance<K>);

impl<'a, K: Kernel> Running<'a, K> {
    fn start(instance: &'a Instance<K>) -> Self {
        instance.transition(Lifecycle::run);
        Running(instance)
    }
}

impl<K: Kernel> Drop for Running<'_, K> {
    fn drop(&mut self) {
        self.0.transition(Lifecycle::ran);
    }
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
