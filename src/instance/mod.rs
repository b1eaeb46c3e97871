//! One function instance: its cgroup, its sandboxed process and its lifecycle
//! (fc-spec §5): start → ready when the port accepts → Initializer → frozen; each request
//! thaws it, and once none is in flight PreFreeze runs and it is frozen again; stop runs
//! PreStop, SIGTERM, a grace period and `cgroup.kill`, then removes the cgroup.
//!
//! `power` serialises those transitions: a request that arrives while the instance freezes
//! waits for the freeze, then thaws it.

mod conn;
mod health;
mod hooks;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, watch, Notify};

use crate::billing::windows::{Closed, Reading, Windows};
use crate::billing::{Phase, ResourceMode, Usage, WindowRecord};
use crate::cgroup::{Cgroup, CgroupError, Limits};
use crate::config::Function;
use crate::host::Host;
use crate::logs::InstanceLog;
use crate::sandbox::{self, Child, Netns, SandboxError, SandboxSpec};
use conn::Connections;
use health::Health;
pub use hooks::HookKind;

/// Why an instance could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The cgroup could not be made.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The process could not be started.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The process exited before listening.
    #[error("Function instance exited unexpectedly(code {code}, message:{message}) with start command '{command}'")]
    Exited {
        /// Exit status.
        code: i32,
        /// strerror-like text.
        message: String,
        /// The start command.
        command: String,
    },
    /// Nothing listened in time.
    #[error("Function instance health check failed on port {port} in {secs} seconds")]
    NotListening {
        /// Port.
        port: u16,
        /// Deadline.
        secs: u64,
    },
    /// The Initializer failed.
    #[error("{0}")]
    Initializer(String),
    /// The first HTTP health check did not pass.
    #[error("Function instance health check failed on port {port}: {detail}")]
    HealthCheck {
        /// Port.
        port: u16,
        /// The last probe's failure.
        detail: String,
    },
}

/// Why a request failed on an instance (mapped to FC's error shapes by the API).
#[derive(Debug, Clone, thiserror::Error)]
pub enum InvokeError {
    /// Start or Initializer failed: HTTP 200 + `x-fc-error-type: InitializationError`.
    #[error("{0}")]
    Initialization(String),
    /// Ran past the function's timeout.
    #[error("Function time out after {0} seconds")]
    Timeout(u64),
    /// The process died mid-request.
    #[error("Process exited unexpectedly before completing request (duration: {duration_ms}ms, maxMemoryUsage: {max_memory_mb:.2}MB)")]
    Crashed {
        /// Time from request start.
        duration_ms: u64,
        /// Peak memory.
        max_memory_mb: f64,
    },
    /// The process was killed by the kernel's OOM killer at the function's memory limit.
    #[error("Function instance ran out of memory: the kernel killed it at its memory limit of {limit_mb} MB (memorySize) before completing the request (duration: {duration_ms}ms, maxMemoryUsage: {max_memory_mb:.2}MB)")]
    OutOfMemory {
        /// The function's memorySize.
        limit_mb: u64,
        /// Time from request start.
        duration_ms: u64,
        /// Peak memory.
        max_memory_mb: f64,
    },
    /// The function answered with a body over FC's limit.
    #[error("The function's response body is larger than {limit_mb} MB, the limit for a synchronous invocation")]
    ResponseTooLarge {
        /// The limit.
        limit_mb: usize,
    },
    /// The client closed its connection (FC's 499); the instance is replaced when it serves
    /// one request at a time and has no health check (fc-spec §5.7).
    #[error("Invocation canceled by client")]
    Canceled,
    /// The instance is gone (stopped between dispatch and send).
    #[error("the instance was stopped before the request could run; retry")]
    Gone,
    /// Too many instances.
    #[error("{0}")]
    Throttled(String),
    /// An internal failure of fcsup.
    #[error("{0}")]
    Internal(String),
}

/// Where an instance is in its life (for the admin API and the demo).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Process started, port not yet accepting.
    Starting,
    /// Initializer running.
    Initializing,
    /// Thawed with requests in flight (or a hook).
    Active,
    /// Frozen between requests.
    Frozen,
    /// PreStop / teardown.
    Stopping,
    /// Gone.
    Dead,
}

/// How the boot ended, for requests waiting on it.
#[derive(Debug, Clone)]
enum Boot {
    Pending,
    Ready,
    Failed(String),
}

#[derive(Debug)]
struct Power {
    frozen: bool,
    in_flight: usize,
    initialized: bool,
    /// The last Initializer error.
    last_init_error: String,
    stopping: bool,
    /// Billing windows (thaw → freeze, hooks, provisioned idle time).
    windows: Windows,
}

/// When each step of an instance's start ended, in µs from its creation (the cold-start
/// phases `fcsup bench` reports).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StartTrace {
    /// cgroup created (and limits written).
    pub cgroup_us: u64,
    /// clone3 called.
    pub clone_us: u64,
    /// The start command's execve succeeded.
    pub exec_us: u64,
    /// The port accepted a connection.
    pub listening_us: u64,
    /// Initializer (and first health check) done.
    pub initialized_us: u64,
    /// Ready for requests (frozen, or handed to the requests that waited).
    pub ready_us: u64,
}

/// How a stop went, in µs from its beginning.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StopTrace {
    /// PreStop answered (or was skipped).
    pub pre_stop_us: u64,
    /// SIGTERM sent.
    pub sigterm_us: u64,
    /// The process was reaped.
    pub reaped_us: u64,
    /// The cgroup was removed.
    pub removed_us: u64,
}

/// A request for the function.
#[derive(Debug)]
pub struct Call {
    /// API invoke (`POST /invoke`) or HTTP trigger (passed through).
    pub http_trigger: bool,
    /// FC request id.
    pub request_id: String,
    /// Method (HTTP trigger).
    pub method: Method,
    /// Path and query sent to the instance (HTTP trigger).
    pub path_and_query: String,
    /// Client headers to pass through (HTTP trigger).
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// Failed Initializer attempts seen when this request was dispatched.
    pub init_failures_seen: u64,
    /// The caller wants the request's log (`x-fc-log-type: Tail`): wait for its last lines.
    pub want_log: bool,
    /// Resolves with `Ok` when the client went away (FC's 499).
    pub canceled: Option<oneshot::Receiver<()>>,
    /// Async retries so far (`x-fc-retry-count`).
    pub retry_count: u32,
    /// When fcsup received it.
    pub arrived: Instant,
    /// The body's share of the front door's in-flight body budget, given back when the last
    /// attempt of this request is dropped.
    pub body_budget: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
}

impl Call {
    /// The same request for another attempt (Async retries).
    pub fn again(&self) -> Call {
        Call {
            http_trigger: self.http_trigger,
            request_id: self.request_id.clone(),
            method: self.method.clone(),
            path_and_query: self.path_and_query.clone(),
            headers: self.headers.clone(),
            body: self.body.clone(),
            init_failures_seen: 0,
            want_log: false,
            canceled: None,
            retry_count: self.retry_count + 1,
            arrived: Instant::now(),
            body_budget: self.body_budget.clone(),
        }
    }
}

/// The instance's answer.
#[derive(Debug)]
pub struct Reply {
    /// Status from the function.
    pub status: StatusCode,
    /// Headers from the function.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// From thawed to response.
    pub duration: Duration,
    /// CPU the cgroup used during the request.
    pub cpu_usec: u64,
    /// Peak memory of the instance, MB.
    pub max_memory_mb: f64,
    /// Lines the function printed during the request.
    pub log: Vec<u8>,
    /// Instance id.
    pub instance_id: String,
}

impl Reply {
    /// Whether the function reported a failure: for API invokes, a 404 (or `x-fc-status: 404`)
    /// from a custom runtime is FC's unhandled function error; an HTTP trigger passes any
    /// status through.
    pub fn is_function_error(&self, http_trigger: bool) -> bool {
        !http_trigger && (self.status == StatusCode::NOT_FOUND || self.headers.get("x-fc-status").is_some_and(|v| v.as_bytes() == b"404"))
    }
}

/// One function instance.
#[derive(Debug)]
pub struct Instance {
    /// FC-style id (`c-…`), also its cgroup's name.
    pub id: String,
    /// Its function.
    pub function: Arc<Function>,
    host: Arc<Host>,
    cgroup: Cgroup,
    pid: i32,
    pidfd: Arc<AsyncFd<OwnedFd>>,
    netns: Netns,
    conns: Connections,
    power: tokio::sync::Mutex<Power>,
    boot: watch::Sender<Boot>,
    exit: watch::Sender<Option<i32>>,
    state: Mutex<State>,
    /// True while the cgroup is thawed (health probes run only then).
    thawed: watch::Sender<bool>,
    health: Mutex<Health>,
    /// Signalled when an unhealthy instance froze with nothing in flight: nothing would ever
    /// thaw it to see it recover, so the pool retires it.
    pub sick: Notify,
    /// Request slots handed out by the pool (≤ concurrency).
    pub reserved: AtomicUsize,
    /// When last used (ms since epoch).
    last_used_ms: AtomicU64,
    /// Creation time (ms since epoch).
    pub created_ms: u64,
    created: Instant,
    /// Failed Initializer attempts so far.
    init_failures: AtomicU64,
    /// Its output.
    pub log: Arc<InstanceLog>,
    /// A minimum instance: billed from start to release (fc-spec §6), kept when idle.
    pub provisioned: bool,
    /// FC's common headers for this instance, built once.
    fc_headers: HeaderMap,
    /// Its function's freeze/thaw histograms, looked up once.
    latencies: crate::metrics::Latencies,
    start_trace: Mutex<StartTrace>,
    stop_trace: Mutex<Option<StopTrace>>,
    /// The init's stack and thread area (it shares the supervisor's memory): kept until the
    /// init has exited.
    init_stack: Mutex<Option<sandbox::InitStack>>,
    /// Whether the function was killed by the kernel's OOM killer.
    oom_killed: AtomicBool,
    /// The host ids of its user namespace, free for another instance once this one is gone.
    ids: Option<sandbox::IdRange>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Unmapping the memory of a running init would crash it; leak it instead (only an
        // instance dropped without stop() gets here, which fcsup never does).
        if self.exit.borrow().is_none() {
            if let Some(s) = self.init_stack.lock().expect("init stack").take() {
                std::mem::forget(s);
            }
        }
    }
}

/// What `GET /admin/instances` shows.
#[derive(Debug, serde::Serialize)]
pub struct Snapshot {
    /// Id.
    pub id: String,
    /// Function.
    pub function: String,
    /// State.
    pub state: State,
    /// Host pid of its init.
    pub pid: i32,
    /// The host uid/gid that is root inside (absent when instances run as host root).
    pub host_uid: Option<u32>,
    /// cgroup2 path.
    pub cgroup: String,
    /// Requests in flight.
    pub in_flight: usize,
    /// The health check's verdict (true without a health check).
    pub healthy: bool,
    /// A minimum (provisioned) instance.
    pub provisioned: bool,
    /// Created (RFC 3339).
    pub created: String,
    /// Last used (RFC 3339).
    pub last_used: String,
    /// Start to ready, ms.
    pub cold_start_ms: f64,
    /// When each step of the start ended (µs from creation).
    pub start_trace: StartTrace,
}

impl Instance {
    /// Creates the cgroup and starts the process (synchronous: a few hundred µs to a few ms).
    /// The instance then needs [`Instance::boot`].
    pub fn spawn(host: &Arc<Host>, function: Arc<Function>, provisioned: bool) -> Result<Arc<Self>, StartError> {
        let created = Instant::now();
        let id = crate::util::instance_id();
        let limits = Limits {
            memory_bytes: Some(function.memory_mb * 1024 * 1024),
            pids_max: Some(function.pids_max),
            cpu_millis: Some((function.cpu * 1000.0).round() as u64),
        };
        let cgroup = host.cgroups.create(&id, &limits)?;
        let cgroup_us = created.elapsed().as_micros() as u64;
        let spec = SandboxSpec {
            argv: function.command.clone(),
            env: hooks::environment(&function, &id),
            code_dir: function.code_dir.clone(),
            hostname: id.clone(),
            tmp_size_mb: function.disk_mb,
        };
        let netns = match host.netns.take() {
            Ok(n) => n,
            Err(e) => {
                let _ = cgroup.remove();
                return Err(StartError::Sandbox(SandboxError::Setup { op: "create a network namespace".into(), source: e }));
            }
        };
        let child: Child = match sandbox::spawn(&spec, &host.root_template, netns, cgroup.dir_fd(), &cgroup.v1_procs_fds(), &host.isolation) {
            Ok(c) => c,
            Err(e) => {
                let _ = cgroup.remove();
                return Err(e.into());
            }
        };
        let exec_us = created.elapsed().as_micros() as u64;
        let start_trace = StartTrace {
            cgroup_us,
            clone_us: exec_us.saturating_sub(child.clone_to_exec.as_micros() as u64),
            exec_us,
            ..StartTrace::default()
        };
        tracing::debug!(instance = %id, clone_to_exec_us = child.clone_to_exec.as_micros() as u64, "spawned");
        let log = InstanceLog::new(
            &function.name,
            &id,
            host.echo.as_ref().map(|e| e.for_function(&function.name)),
            host.log_files.for_function(&function.name),
        );
        let fc_headers = hooks::instance_headers(&function, &id);
        log.attach(child.stdout, child.stderr);
        // SAFETY: the OwnedFd owns the pidfd for the AsyncFd's whole lifetime.
        let pidfd = unsafe { AsyncFd::register_with_interest(child.pidfd, tokio::io::Interest::READABLE) }
            .map_err(|e| StartError::Sandbox(SandboxError::Setup { op: "watch the instance's pidfd".into(), source: e.into() }))?;
        let inst = Arc::new(Instance {
            id,
            host: host.clone(),
            cgroup,
            pid: child.pid,
            pidfd: Arc::new(pidfd),
            netns: child.netns,
            conns: Connections::new(function.port),
            power: tokio::sync::Mutex::new(Power {
                frozen: false,
                in_flight: 0,
                initialized: function.initializer.is_none(),
                last_init_error: String::new(),
                stopping: false,
                windows: Windows::default(),
            }),
            boot: watch::channel(Boot::Pending).0,
            exit: watch::channel(None).0,
            state: Mutex::new(State::Starting),
            thawed: watch::channel(true).0,
            health: Mutex::new(Health::default()),
            sick: Notify::new(),
            reserved: AtomicUsize::new(0),
            last_used_ms: AtomicU64::new(crate::util::now_ms()),
            created_ms: crate::util::now_ms(),
            created,
            init_failures: AtomicU64::new(0),
            log,
            provisioned,
            fc_headers,
            latencies: host.metrics.latencies(&function.name),
            start_trace: Mutex::new(start_trace),
            stop_trace: Mutex::new(None),
            init_stack: Mutex::new(Some(child.init_stack)),
            ids: child.ids,
            oom_killed: AtomicBool::new(false),
            function,
        });
        inst.watch_exit();
        Ok(inst)
    }

    fn watch_exit(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let pidfd = self.pidfd.clone();
        tokio::spawn(async move {
            loop {
                let Ok(mut g) = pidfd.readable().await else { return };
                match sandbox::pidfd_try_wait(pidfd.get_ref().as_raw_fd()) {
                    Ok(Some(status)) => {
                        if let Some(me) = me.upgrade() {
                            // Read before anyone learns of the exit (and removes the cgroup).
                            // The function itself must have died by SIGKILL: an OOM kill of a
                            // child it survived does not make a later crash an OOM.
                            let killed = status == 128 + libc::SIGKILL && me.cgroup.oom_kills() > 0;
                            me.oom_killed.store(killed, Ordering::Release);
                            me.exit.send_replace(Some(status));
                        }
                        return;
                    }
                    Ok(None) => g.clear_ready(),
                    Err(_) => return,
                }
            }
        });
    }

    /// Waits for the port, runs the Initializer and freezes: the rest of a cold start.
    pub async fn boot(self: &Arc<Self>) -> Result<Duration, StartError> {
        let r = self.boot_inner().await;
        match &r {
            Ok(d) => {
                self.host.metrics.cold_start(&self.function.name, *d);
                self.boot.send_replace(Boot::Ready);
                if let Some(hc) = &self.function.health_check {
                    self.watch_health(hc.clone());
                }
            }
            Err(e) => {
                self.boot.send_replace(Boot::Failed(e.to_string()));
            }
        }
        r
    }

    async fn boot_inner(self: &Arc<Self>) -> Result<Duration, StartError> {
        let deadline = Instant::now() + self.function.start_timeout;
        let mut exit = self.exit.subscribe();
        // Polled: nothing tells a supervisor when a process starts listening. Fine-grained
        // at first (a native server listens within a millisecond), then every 5 ms at most.
        let mut backoff = Duration::from_micros(50);
        let stream = loop {
            if let Some(code) = *exit.borrow() {
                return Err(self.exited_error(code));
            }
            let attempt = self.netns.connect_ready(self.function.port).and_then(|s| {
                s.map(|s| {
                    s.set_nodelay(true)?;
                    tokio::net::TcpStream::from_std(s)
                })
                .transpose()
            });
            match attempt {
                Ok(Some(s)) => break s,
                Ok(None) | Err(_) if Instant::now() < deadline => {
                    tokio::select! {
                        _ = crate::util::fine_sleep(backoff) => {}
                        _ = exit.changed() => {}
                    }
                    backoff = (backoff * 3 / 2).min(Duration::from_millis(5));
                }
                _ => {
                    return Err(StartError::NotListening { port: self.function.port, secs: self.function.start_timeout.as_secs() })
                }
            }
        };
        if let Ok(s) = Connections::handshake(stream).await {
            self.conns.put(s);
        }
        let listening = self.created.elapsed();
        self.start_trace.lock().expect("trace").listening_us = listening.as_micros() as u64;
        tracing::info!(function = %self.function.name, instance = %self.id, ms = ms(listening), "cold start: listening");
        {
            let mut p = self.power.lock().await;
            // The cold start and the Initializer are one `initialize` record, counted from the
            // instance's creation (a new cgroup's cpu.stat starts at zero).
            p.windows.start(self.created, self.created_ms);
            let initialized = if self.function.initializer.is_some() {
                self.set_state(State::Initializing);
                self.initialize(&mut p).await
            } else {
                Ok(())
            };
            let checked = match (&initialized, &self.function.health_check) {
                (Ok(()), Some(hc)) => self.first_health_check(hc).await,
                _ => Ok(()),
            };
            // The window stays open until the freeze confirms (or the stop ends it), so no
            // CPU between here and the freeze goes unbilled.
            if let Err(e) = checked {
                p.stopping = true;
                return Err(e);
            }
            // On a 400/404 the instance stays: the requests that waited fail and the next one
            // retries the Initializer (fc-spec §5.2 REC); anything else ends the instance.
            if let (Err(e), true) = (initialized, p.stopping) {
                return Err(StartError::Initializer(e.to_string()));
            }
        }
        self.start_trace.lock().expect("trace").initialized_us = self.created.elapsed().as_micros() as u64;
        // Requests that waited for the start run at once; freezing first would only add a
        // freeze and a thaw to their cold start.
        if self.reserved.load(Ordering::Acquire) == 0 {
            self.clone().freeze_if_idle().await;
        }
        let ready = self.created.elapsed();
        self.start_trace.lock().expect("trace").ready_us = ready.as_micros() as u64;
        Ok(ready)
    }

    fn exited_error(&self, code: i32) -> StartError {
        let message = if code > 128 {
            format!("killed by signal {}", code - 128)
        } else {
            std::io::Error::from_raw_os_error(code).to_string().split(" (os error").next().unwrap_or("").to_string()
        };
        StartError::Exited { code, message, command: self.function.command.join(" ") }
    }

    /// Runs the Initializer while `p` is held. On failure applies fc-spec §5.2 REC: a 4xx
    /// keeps the instance for a retry on the next request, anything else makes it unusable.
    async fn initialize(&self, p: &mut Power) -> Result<(), InvokeError> {
        let outcome = self.call_hook(HookKind::Initialize).await;
        let retryable = matches!(outcome, Ok(s) if s == StatusCode::BAD_REQUEST || s == StatusCode::NOT_FOUND);
        match outcome {
            Ok(status) if status.is_success() => {
                p.initialized = true;
                Ok(())
            }
            other => {
                let msg = match other {
                    Ok(status) => format!("Initializer failed: the instance answered POST /initialize with HTTP {}", status.as_u16()),
                    Err(e) => format!("Initializer failed: {e}"),
                };
                self.init_failures.fetch_add(1, Ordering::AcqRel);
                p.last_init_error = msg.clone();
                if !retryable {
                    p.stopping = true;
                }
                tracing::warn!(function = %self.function.name, instance = %self.id, "{msg}");
                Err(InvokeError::Initialization(msg))
            }
        }
    }

    /// Waits until boot finished.
    pub async fn wait_booted(&self) -> Result<(), InvokeError> {
        let mut rx = self.boot.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Boot::Ready => return Ok(()),
                Boot::Failed(e) => return Err(InvokeError::Initialization(e.clone())),
                Boot::Pending => {}
            }
            if rx.changed().await.is_err() {
                return Err(InvokeError::Gone);
            }
        }
    }

    /// Whether the instance can take new requests.
    pub fn usable(&self) -> bool {
        self.exit.borrow().is_none()
            && !matches!(*self.boot.borrow(), Boot::Failed(_))
            && !matches!(self.state(), State::Stopping | State::Dead)
    }

    /// Failed Initializer attempts so far (requests remember it at dispatch).
    pub fn init_failures(&self) -> u64 {
        self.init_failures.load(Ordering::Acquire)
    }

    /// Runs one request: thaw, proxy, and freeze once nothing is in flight.
    pub async fn invoke(self: &Arc<Self>, mut call: Call) -> Result<Reply, InvokeError> {
        let canceled = call.canceled.take();
        self.wait_booted().await?;
        // The reading that opened this request's window, when it opened one.
        let opened = {
            let mut p = self.power.lock().await;
            if p.stopping || self.exit.borrow().is_some() {
                return Err(InvokeError::Gone);
            }
            if !p.initialized {
                if self.init_failures() > call.init_failures_seen {
                    return Err(InvokeError::Initialization(p.last_init_error.clone()));
                }
                self.switch_window(&mut p, Phase::Initialize);
                self.thaw_locked(&mut p).await?;
                if let Err(e) = self.initialize(&mut p).await {
                    drop(p);
                    self.clone().spawn_freeze();
                    return Err(e);
                }
            }
            // The window opens before the thaw (while nothing runs) and closes after the
            // freeze, so every µs of CPU the instance uses is in exactly one record.
            let opened = self.switch_window(&mut p, Phase::Invoke);
            if self.thaw_locked(&mut p).await? {
                self.host.samples.record("thaw_seen", call.arrived.elapsed());
            }
            p.windows.add_request(&call.request_id);
            p.in_flight += 1;
            opened
        };
        self.set_state(State::Active);
        self.log.begin(&call.request_id);
        let started = Instant::now();
        // The request's own CPU counts from its window's opening reading (taken while frozen,
        // so it is the same figure), or from now when it joined an open window.
        let cpu0 = opened.map(|r| r.cpu).unwrap_or_else(|| self.cgroup.cpu_stat().unwrap_or_default());
        // A client that goes away aborts the request only where FC would replace the instance;
        // otherwise the handler runs to its end and the answer is dropped.
        let replace_on_cancel = self.function.concurrency == 1 && self.function.health_check.is_none();
        let mut was_canceled = false;
        let result = {
            let mut proxy = std::pin::pin!(self.proxy(&call));
            tokio::select! {
                r = &mut proxy => r,
                () = client_gone(canceled) => {
                    was_canceled = true;
                    if replace_on_cancel { Err(ProxyError::Canceled) } else { proxy.await }
                }
            }
        };
        let cpu = self.cgroup.cpu_stat().unwrap_or_default().since(&cpu0).usage_usec;
        let duration = started.elapsed();
        if call.want_log {
            self.log.drain().await;
        }
        let log = self.log.end(&call.request_id);
        self.last_used_ms.store(crate::util::now_ms(), Ordering::Relaxed);
        let max_memory_mb = self.max_memory_mb();
        if was_canceled {
            self.log.note(&format!(
                "FC Invoke End RequestId: {}, Error: Invocation canceled by client (duration: {}ms, maxMemoryUsage: {max_memory_mb:.2}MB)",
                call.request_id,
                duration.as_millis()
            ));
        }
        let result = match result {
            Err(ProxyError::Canceled) => {
                self.mark_stopping().await;
                Err(InvokeError::Canceled)
            }
            Ok((status, headers, body)) => {
                Ok(Reply { status, headers, body, duration, cpu_usec: cpu, max_memory_mb, log, instance_id: self.id.clone() })
            }
            Err(ProxyError::TooLarge) => Err(InvokeError::ResponseTooLarge { limit_mb: MAX_RESPONSE_BYTES >> 20 }),
            Err(ProxyError::Timeout) => {
                // fc-spec §8.8 REC: the hung instance is recycled when it serves one request at a time.
                if self.function.concurrency == 1 {
                    self.mark_stopping().await;
                }
                Err(InvokeError::Timeout(self.function.timeout.as_secs()))
            }
            Err(ProxyError::Failed(e)) => {
                let duration_ms = duration.as_millis() as u64;
                // A process dying at its memory limit can take a while to be reaped (reclaim first).
                if self.wait_exit(Duration::from_secs(2)).await.is_some() {
                    if self.oom_killed.load(Ordering::Acquire) {
                        self.log.note(&format!("FC Invoke End RequestId: {}, Error: out of memory (memorySize {} MB)", call.request_id, self.function.memory_mb));
                        Err(InvokeError::OutOfMemory { limit_mb: self.function.memory_mb, duration_ms, max_memory_mb })
                    } else {
                        Err(InvokeError::Crashed { duration_ms, max_memory_mb })
                    }
                } else {
                    Err(InvokeError::Internal(format!("request to the function failed: {e}")))
                }
            }
        };
        {
            let mut p = self.power.lock().await;
            p.in_flight -= 1;
        }
        self.clone().spawn_freeze();
        result
    }

    async fn mark_stopping(&self) {
        self.power.lock().await.stopping = true;
        self.set_state(State::Stopping);
    }

    async fn proxy(&self, call: &Call) -> Result<(StatusCode, HeaderMap, Bytes), ProxyError> {
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
        .map_err(|e| ProxyError::Failed(e.to_string()))?;
        let control = if call.http_trigger { "/http-invoke" } else { "/invoke" };
        hooks::add_request_headers(&self.fc_headers, &call.request_id, control, "0", req.headers_mut());
        if call.retry_count > 0 {
            req.headers_mut().insert("x-fc-retry-count", call.retry_count.into());
        }
        let send = async {
            let mut s = self.conns.take(&self.netns).await.map_err(ProxyError::Failed)?;
            let resp = s.send_request(req).await.map_err(|e| ProxyError::Failed(e.to_string()))?;
            let (parts, body) = resp.into_parts();
            // Bounded while it streams in: a function must not make the supervisor hold more.
            // Past the limit the connection is dropped, not reused.
            let body = match http_body_util::Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(ProxyError::TooLarge),
                Err(e) => return Err(ProxyError::Failed(e.to_string())),
            };
            self.conns.put(s);
            Ok((parts.status, parts.headers, body))
        };
        match tokio::time::timeout(self.function.timeout, send).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::Timeout),
        }
    }

    async fn wait_exit(&self, within: Duration) -> Option<i32> {
        let mut rx = self.exit.subscribe();
        let _ = tokio::time::timeout(within, rx.wait_for(|e| e.is_some())).await;
        let code = *rx.borrow();
        code
    }

    /// Resolves once the process has exited (crash, OOM kill or stop).
    pub async fn exited(&self) -> i32 {
        let mut rx = self.exit.subscribe();
        let _ = rx.wait_for(|e| e.is_some()).await;
        let code = rx.borrow().unwrap_or(-1);
        code
    }

    fn max_memory_mb(&self) -> f64 {
        self.cgroup.memory().peak().map(|b| b as f64 / 1024.0 / 1024.0).unwrap_or(0.0)
    }

    fn spawn_freeze(self: Arc<Self>) {
        tokio::spawn(self.freeze_if_idle());
    }

    /// PreFreeze (if configured) then freeze, unless a request came in meanwhile.
    async fn freeze_if_idle(self: Arc<Self>) {
        let mut p = self.power.lock().await;
        if p.in_flight > 0 || p.frozen || p.stopping || self.exit.borrow().is_some() {
            return;
        }
        // PreFreeze follows invocations (not the Initializer), and is billed inside the
        // window it ends (fc-spec §6).
        if self.function.pre_freeze.is_some() && p.windows.pre_freeze() {
            let _ = self.call_hook(HookKind::PreFreeze).await;
        }
        let t = Instant::now();
        match self.cgroup.freeze().await {
            Ok(()) => {
                let took = t.elapsed();
                p.frozen = true;
                self.thawed.send_replace(false);
                self.latencies.freeze(took);
                self.host.samples.record("freeze", took);
                let now = self.close_window(&mut p);
                p.windows.frozen(now, self.provisioned);
                self.set_state(State::Frozen);
                if !self.healthy() {
                    self.sick.notify_one();
                }
                tracing::debug!(function = %self.function.name, instance = %self.id, us = took.as_micros() as u64, "frozen");
            }
            Err(e) => tracing::error!(instance = %self.id, "freeze failed: {e}"),
        }
    }

    /// Thaws if frozen; true when it did. Callers open a billing window first (which ends a
    /// provisioned instance's idle time at the same reading).
    async fn thaw_locked(&self, p: &mut Power) -> Result<bool, InvokeError> {
        if p.frozen {
            let t = Instant::now();
            self.cgroup.thaw().await.map_err(|e| InvokeError::Internal(format!("thaw failed: {e}")))?;
            let took = t.elapsed();
            self.latencies.thaw(took);
            self.host.samples.record("thaw", took);
            p.frozen = false;
            self.thawed.send_replace(true);
            tracing::debug!(function = %self.function.name, instance = %self.id, us = took.as_micros() as u64, "thawed");
            return Ok(true);
        }
        Ok(false)
    }

    /// The meters now.
    fn reading(&self) -> Reading {
        Reading { at: Instant::now(), at_ms: crate::util::now_ms(), cpu: self.cgroup.cpu_stat().unwrap_or_default() }
    }

    /// Makes the open billing window one of `phase` (see [`Windows::switch`]); the reading
    /// a new window starts from, if one opened.
    fn switch_window(&self, p: &mut Power, phase: Phase) -> Option<Reading> {
        let mut opened = None;
        let closed = p.windows.switch(phase, || {
            let r = self.reading();
            opened = Some(r);
            r
        });
        if let Some(c) = closed {
            self.record(vec![c]);
        }
        opened
    }

    /// Closes the open window (and idle time a thaw ended) now; the reading taken.
    fn close_window(&self, p: &mut Power) -> Reading {
        let now = self.reading();
        self.record(p.windows.close(now));
        now
    }

    /// Records closed windows with the peak memory of the active ones, then starts the next
    /// window's peak.
    fn record(&self, closed: Vec<Closed>) {
        let memory = self.cgroup.memory();
        let mode = if self.provisioned { ResourceMode::Provision } else { ResourceMode::OnDemand };
        let mut measured = false;
        for c in closed {
            let (peak_memory_bytes, memory_source) = if c.phase == Phase::Idle {
                (None, Default::default())
            } else {
                measured = true;
                (memory.peak(), memory.source())
            };
            let usage = Usage { wall: c.wall, cpu: c.cpu, peak_memory_bytes, memory_source };
            let r = WindowRecord::new(&self.function, &self.id, c.phase, mode, c.cold_start, c.request_ids, c.start_ms, usage);
            self.host.metrics.window(&r);
            self.host.ledger.record(r);
        }
        if measured {
            memory.reset();
        }
    }

    fn set_state(&self, s: State) {
        let mut g = self.state.lock().expect("state");
        if *g != State::Stopping && *g != State::Dead || s == State::Dead {
            *g = s;
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        *self.state.lock().expect("state")
    }

    /// Milliseconds since the last request ended.
    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(crate::util::now_ms().saturating_sub(self.last_used_ms.load(Ordering::Relaxed)))
    }

    /// For the admin API.
    pub fn snapshot(&self) -> Snapshot {
        let trace = self.start_trace();
        let in_flight = self.power.try_lock().map(|p| p.in_flight).unwrap_or(self.reserved.load(Ordering::Relaxed));
        Snapshot {
            id: self.id.clone(),
            function: self.function.name.clone(),
            state: self.state(),
            pid: self.pid,
            host_uid: self.ids.as_ref().map(|r| r.first),
            cgroup: self.cgroup.path().display().to_string(),
            in_flight,
            healthy: self.healthy(),
            provisioned: self.provisioned,
            created: crate::util::rfc3339_ms(self.created_ms),
            last_used: crate::util::rfc3339_ms(self.last_used_ms.load(Ordering::Relaxed)),
            cold_start_ms: trace.ready_us as f64 / 1000.0,
            start_trace: trace,
        }
    }

    /// When it was created (the origin of its [`StartTrace`]).
    pub fn created(&self) -> Instant {
        self.created
    }

    /// The steps of its start.
    pub fn start_trace(&self) -> StartTrace {
        *self.start_trace.lock().expect("trace")
    }

    /// The steps of its stop, once stopped.
    pub fn stop_trace(&self) -> Option<StopTrace> {
        *self.stop_trace.lock().expect("trace")
    }

    /// The cgroup (for the demo's and tests' look at `cgroup.events`).
    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// Stops the instance: thaw, PreStop, SIGTERM, grace, `cgroup.kill`, cgroup removed.
    /// Safe to call more than once and on a process that already exited.
    pub async fn stop(&self) {
        let t0 = Instant::now();
        let since = |t: Instant| t.duration_since(t0).as_micros() as u64;
        let mut trace = StopTrace::default();
        let mut p = self.power.lock().await;
        if *self.state.lock().expect("state") == State::Dead {
            return;
        }
        p.stopping = true;
        self.set_state(State::Stopping);
        let alive = self.exit.borrow().is_none();
        if p.windows.idle() {
            p.windows.thawing(self.reading());
        }
        if alive {
            let pre_stop = self.function.pre_stop.is_some() && matches!(*self.boot.borrow(), Boot::Ready);
            if pre_stop {
                self.switch_window(&mut p, Phase::PreStop);
            }
            if p.frozen {
                let _ = self.cgroup.thaw().await;
                p.frozen = false;
            }
            if pre_stop {
                let _ = self.call_hook(HookKind::PreStop).await;
            }
            trace.pre_stop_us = since(Instant::now());
            self.close_window(&mut p);
            let _ = sandbox::pidfd_signal(self.pidfd.get_ref().as_raw_fd(), libc::SIGTERM);
            trace.sigterm_us = since(Instant::now());
            if self.wait_exit(self.function.stop_grace).await.is_none() {
                tracing::warn!(instance = %self.id, "did not exit within {:?} of SIGTERM; killing", self.function.stop_grace);
            }
        }
        self.close_window(&mut p);
        self.conns.clear();
        if let Err(e) = self.cgroup.kill().await {
            tracing::error!(instance = %self.id, "kill failed: {e}");
        }
        let _ = self.wait_exit(Duration::from_secs(5)).await;
        trace.reaped_us = since(Instant::now());
        if let Err(e) = self.cgroup.remove() {
            tracing::error!(instance = %self.id, "{e}");
        }
        trace.removed_us = since(Instant::now());
        *self.stop_trace.lock().expect("trace") = Some(trace);
        self.thawed.send_replace(false);
        self.set_state(State::Dead);
        tracing::info!(function = %self.function.name, instance = %self.id, "stopped");
    }
}

enum ProxyError {
    Timeout,
    Canceled,
    TooLarge,
    Failed(String),
}

/// FC's limit on a synchronous response body (its request limit too): 32 MB.
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// Resolves when the client has gone (the API sent on the channel); never otherwise.
async fn client_gone(canceled: Option<oneshot::Receiver<()>>) {
    if let Some(rx) = canceled {
        if rx.await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
