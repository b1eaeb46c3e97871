//! One function instance (README, Behaviour decisions): start → ready when the port accepts → Initializer →
//! frozen; each request thaws it, and once none is admitted PreFreeze runs and it is frozen
//! again; stop runs PreStop, SIGTERM, a grace period and `cgroup.kill`, then removes the
//! cgroup.
//!
//! The parts: [`lifecycle`] is the state, kept once and changed only by its transitions (pure,
//! unit-tested); [`kernel`] is the seam to the cgroup and the process; [`launch`] makes real
//! instances; the verbs are a thin shell each: `start` (boot), `invoke` (a request and its
//! proxying), `power` (freeze, thaw and the billing windows), `stop`; `hooks` and `health`
//! speak FC's lifecycle HTTP calls.

mod builtin;
mod conn;
mod errors;
#[cfg(test)]
pub(crate) mod fake;
mod hazards;
mod health;
mod hibernate;
mod hooks;
mod init_command;
mod invoke;
pub mod kernel;
mod launch;
pub mod lifecycle;
mod power;
mod run_once;
mod start;
mod stop;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::HeaderMap;
use hyper::{Method, StatusCode};
use tokio::sync::{oneshot, watch};

use crate::billing::windows::Windows;
use crate::config::Function;
use crate::logs::InstanceLog;
use conn::Connections;
use health::Health;

pub use conn::ConnError;
pub use errors::{Exhausted, HookError, InitError, Internal, InvokeError, StartError};
pub use hooks::HookKind;
pub use kernel::{Kernel, Sandboxed};
pub use launch::{Launch, Launcher, Reporting};
pub use lifecycle::{Lifecycle, Retire, State};
pub use run_once::event_text;

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
    /// A built-in runtime's failure: FC's `x-fc-error-type`, the body being the runtime's
    /// error body.
    pub error_type: Option<&'static str>,
}

/// FC's default function error type.
const UNHANDLED: &str = "UnhandledInvocationError";

impl Reply {
    /// Whether the function reported a failure: for API invokes, a 404 (or `x-fc-status: 404`)
    /// from a custom runtime is FC's unhandled function error; an HTTP trigger passes any
    /// status through. A built-in runtime's failure is one either way.
    pub fn is_function_error(&self, http_trigger: bool) -> bool {
        self.error_type.is_some()
            || !http_trigger && (self.status == StatusCode::NOT_FOUND || self.headers.get("x-fc-status").is_some_and(|v| v.as_bytes() == b"404"))
    }

    /// FC's error type of a function error: a built-in runtime's own (`HandledInvocationError`
    /// for a Node.js `callback(err)`), else `UnhandledInvocationError`.
    pub fn function_error_type(&self) -> &'static str {
        self.error_type.unwrap_or(UNHANDLED)
    }
}

/// One function instance, on the kernel `K` (real, or a recording fake in unit tests).
#[derive(Debug)]
pub struct Instance<K: Kernel = Sandboxed> {
    /// FC-style id (`c-…`), also its cgroup's name.
    pub id: String,
    /// Its function.
    pub function: Arc<Function>,
    /// A minimum instance: billed from start to release (README, Billing), kept when idle.
    pub provisioned: bool,
    /// Its output.
    pub log: Arc<InstanceLog>,
    /// Creation time (ms since epoch).
    pub created_ms: u64,
    created: Instant,
    kernel: K,
    reporting: Arc<Reporting>,
    conns: Connections,
    /// The state, kept here only (changed by [`Instance::transition`]); a change that a
    /// waiter may care about wakes it.
    life: watch::Sender<Lifecycle>,
    /// The lifecycle's first answer to "should it leave its pool?", signalled apart so that
    /// the pool's watcher is not woken by every request's transitions.
    retire: watch::Sender<Option<Retire>>,
    /// Serialises the transitions that do I/O (thaw, Initializer, PreFreeze + freeze, stop)
    /// and holds the billing windows they move.
    power: tokio::sync::Mutex<Windows>,
    health: Mutex<Health>,
    /// When last used (ms since epoch).
    last_used_ms: AtomicU64,
    /// FC's common headers for this instance, built once.
    fc_headers: HeaderMap,
    /// Its function's freeze/thaw histograms, looked up once.
    latencies: crate::metrics::Latencies,
    start_trace: Mutex<StartTrace>,
    /// Set once GPU-hibernated (`fcsup.gpuHibernateAfter`) until the next thaw: the host pids
    /// whose GPU memory is checkpointed (none: no CUDA process to hibernate).
    gpu_hibernated: Mutex<Option<Vec<i32>>>,
    stop_trace: Mutex<Option<StopTrace>>,
    /// FC's runtime API, served to a built-in runtime's agent (calls go over it, not HTTP).
    runtime_api: Option<crate::runtime_api::RuntimeApi>,
    /// What freezes cut off (README, Freeze hazards).
    hazards: crate::hazards::Tracker,
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
    /// Requests admitted (running or waiting to).
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

/// A process just started for an instance, and what its start produced.
#[derive(Debug)]
pub struct Spawned<K: Kernel> {
    /// The instance's id (also its cgroup's name).
    pub id: String,
    /// Its cgroup and process.
    pub kernel: K,
    /// Its output.
    pub log: Arc<InstanceLog>,
    /// When its start began.
    pub created: Instant,
    /// The start's steps so far.
    pub start_trace: StartTrace,
    /// The runtime API served to it (built-in runtimes).
    pub runtime_api: Option<crate::runtime_api::RuntimeApi>,
}

/// A request's slot on an instance, taken by its pool ([`Instance::admit`]); dropping it
/// gives the slot back, and the last one given back lets the instance freeze.
#[derive(Debug)]
pub struct Ticket<K: Kernel = Sandboxed> {
    instance: Arc<Instance<K>>,
    /// Initializer failures seen at admission: one that fails later fails this request too.
    seen_init_failures: u64,
}

impl<K: Kernel> Ticket<K> {
    /// The instance.
    pub fn instance(&self) -> &Arc<Instance<K>> {
        &self.instance
    }
}

impl<K: Kernel> Drop for Ticket<K> {
    fn drop(&mut self) {
        if self.instance.transition(Lifecycle::release) {
            self.instance.clone().spawn_freeze();
        }
    }
}

impl<K: Kernel> Instance<K> {
    /// An instance of `function` whose process `spawned` just started; it needs
    /// [`Instance::boot`] next.
    pub fn new(function: Arc<Function>, spawned: Spawned<K>, reporting: Arc<Reporting>, provisioned: bool) -> Arc<Self> {
        let Spawned { id, kernel, log, created, start_trace, runtime_api } = spawned;
        let now = crate::clock::now_ms();
        let inst = Arc::new(Instance {
            fc_headers: hooks::instance_headers(&function, &id),
            latencies: reporting.latencies(&function.name),
            life: watch::channel(Lifecycle::new(function.concurrency, function.initializer.is_some())).0,
            retire: watch::channel(None).0,
            conns: Connections::new(function.port),
            power: tokio::sync::Mutex::new(Windows::default()),
            health: Mutex::new(Health::default()),
            last_used_ms: AtomicU64::new(now),
            created_ms: now,
            created,
            start_trace: Mutex::new(start_trace),
            gpu_hibernated: Mutex::new(None),
            stop_trace: Mutex::new(None),
            runtime_api,
            hazards: crate::hazards::Tracker::default(),
            id,
            function,
            provisioned,
            log,
            kernel,
            reporting,
        });
        inst.watch_exit();
        inst
    }

    /// Carries the process's exit into the lifecycle.
    fn watch_exit(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let exited = self.kernel.exited();
        tokio::spawn(async move {
            let e = exited.await;
            if let Some(me) = me.upgrade() {
                me.transition(|l| l.exited(e));
            }
        });
    }

    /// Applies one transition to the lifecycle (waking whoever waits on it); its result.
    fn transition<R>(&self, f: impl FnOnce(&mut Lifecycle) -> R) -> R {
        let mut out = None;
        self.life.send_if_modified(|l| {
            let before = l.signals();
            out = Some(f(l));
            // Latched under the lifecycle's lock, so the first reason stands here too.
            if let Some(why) = l.retiring() {
                self.retire.send_if_modified(|r| r.is_none() && r.replace(why).is_none());
            }
            l.signals() != before
        });
        out.expect("transition ran")
    }

    /// Reads the lifecycle.
    fn life(&self) -> Lifecycle {
        self.life.borrow().clone()
    }

    /// Takes a request slot, if the instance serves and has one free.
    pub fn admit(self: &Arc<Self>) -> Option<Ticket<K>> {
        let seen = self.transition(Lifecycle::admit)?;
        Some(Ticket { instance: self.clone(), seen_init_failures: seen })
    }

    /// Whether one more request may come now.
    pub fn has_slot(&self) -> bool {
        self.life.borrow().has_slot()
    }

    /// Takes the first slot of an instance just launched for a request (see
    /// [`Lifecycle::admit_first`]).
    pub fn admit_first(self: &Arc<Self>) -> Ticket<K> {
        let seen = self.transition(Lifecycle::admit_first);
        Ticket { instance: self.clone(), seen_init_failures: seen }
    }

    /// Requests admitted now (waiting or running).
    pub fn load(&self) -> usize {
        self.life.borrow().admitted()
    }

    /// Whether new requests may come (alive, not stopping, healthy).
    pub fn takes_requests(&self) -> bool {
        self.life.borrow().takes_requests()
    }

    /// Whether it still counts as one of its pool's instances (healthy or not).
    pub fn counts_as_member(&self) -> bool {
        let l = self.life.borrow();
        l.retiring().is_none() && matches!(l.stage(), lifecycle::Stage::Starting | lifecycle::Stage::Initializing | lifecycle::Stage::Ready)
    }

    /// Resolves when the instance should leave its pool, with why.
    pub async fn retiring(&self) -> Retire {
        let mut rx = self.retire.subscribe();
        let why = *rx.wait_for(Option::is_some).await.expect("the instance owns the sender");
        why.expect("waited for it")
    }

    /// Resolves when no request is admitted any more, or the instance cannot serve them.
    pub async fn drained(&self) {
        let mut rx = self.life.subscribe();
        let _ = rx.wait_for(|l| l.admitted() == 0 || l.retiring().is_some_and(|r| r != Retire::Unhealthy)).await;
    }

    /// Waits until the boot finished; an error if it failed (or the instance went away).
    pub async fn wait_booted(&self) -> Result<(), InvokeError> {
        let mut rx = self.life.subscribe();
        let l = rx.wait_for(|l| l.booted().is_some()).await.expect("the instance owns the sender");
        l.booted().expect("waited for it").map_err(InvokeError::from)
    }

    /// Waits until the boot is over and the instance froze (or a request took it first, or it
    /// is on its way out): a minimum instance is idle, and billed as such, from then on.
    pub async fn wait_settled(&self) -> Result<(), InvokeError> {
        self.wait_booted().await?;
        let mut rx = self.life.subscribe();
        let _ = rx.wait_for(|l| l.frozen() || l.admitted() > 0 || l.ending()).await;
        Ok(())
    }

    /// Resolves once the process has exited (crash, OOM kill or stop); its status.
    pub async fn exited(&self) -> i32 {
        let mut rx = self.life.subscribe();
        let l = rx.wait_for(|l| l.exit().is_some()).await.expect("the instance owns the sender");
        l.exit().unwrap_or(-1)
    }

    /// Waits up to `within` for the process to exit; its status if it did.
    async fn wait_exit(&self, within: Duration) -> Option<i32> {
        tokio::time::timeout(within, self.exited()).await.ok()
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.life.borrow().state()
    }

    /// Whether the last health checks passed.
    pub fn healthy(&self) -> bool {
        self.life.borrow().healthy()
    }

    /// Time since the last request ended.
    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(crate::clock::now_ms().saturating_sub(self.last_used_ms.load(Ordering::Relaxed)))
    }

    /// The kernel side (for the demo's and tests' look at the cgroup).
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// For the admin API.
    pub fn snapshot(&self) -> Snapshot {
        let trace = self.start_trace();
        let life = self.life();
        let place = self.kernel.placement();
        Snapshot {
            id: self.id.clone(),
            function: self.function.name.clone(),
            state: life.state(),
            pid: place.pid,
            host_uid: place.host_uid,
            cgroup: place.cgroup,
            in_flight: life.admitted(),
            healthy: life.healthy(),
            provisioned: self.provisioned,
            created: crate::clock::rfc3339_ms(self.created_ms),
            last_used: crate::clock::rfc3339_ms(self.last_used_ms.load(Ordering::Relaxed)),
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
}

impl Instance<Sandboxed> {
    /// The cgroup (for the demo's and tests' look at `cgroup.events`).
    pub fn cgroup(&self) -> &crate::cgroup::Cgroup {
        self.kernel.cgroup()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Whole µs in `d` (for traces and logs; saturates past half a million years).
fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
