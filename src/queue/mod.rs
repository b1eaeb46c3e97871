//! Async invocations (`x-fc-invocation-type: Async`): accepted with 202 once the task is in
//! the queue's database ([`store`]), run later, retried as FC does: function errors up to
//! `asyncInvokeConfig.maxAsyncRetryAttempts` times (default 3), throttles and fcsup's own
//! failures with exponential backoff (0.5 s, 1 s, 2 s, … capped at 60 s) until the event is
//! older than `maxAsyncEventAgeInSeconds` (at most 5 h for throttles), counted from its first
//! arrival, across restarts. Every task's status and result stay visible at
//! `GET /admin/async/{id}` (the last [`KEEP`] tasks, and every unfinished one).
//!
//! Tasks not finished when fcsup stops or is killed run again at its next start: at least once,
//! as FC promises (a task killed mid-attempt runs that attempt again). A finished task's record
//! goes to the function named by `destinationConfig.onSuccess`/`onFailure`, as an Async task of
//! its own added in the same transaction ([`destination`]).
//!
//! It reaches the functions through [`Pools`] (the supervisor implements it), so it never
//! depends on the supervisor that owns it.

pub mod destination;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::instance::Call;
use crate::metrics::Metrics;
use crate::outcome::{self, Outcome};
use crate::pool::{Dispatched, Pool};
pub use destination::HOPS as DESTINATION_HOPS;
use store::{NewTask, Record, Request};
pub use store::{Store, StoreError};

/// Tasks kept for the status endpoint (the newest; unfinished ones are always kept).
pub const KEEP: usize = 10_000;
/// Largest Async body FC accepts (128 KB).
pub const MAX_BODY: usize = 128 * 1024;
/// Longest a throttled event keeps being retried (FC: 5 hours).
const THROTTLE_RETRY_FOR: Duration = Duration::from_secs(5 * 3600);
/// Finished tasks older than the newest [`KEEP`] are pruned once every this many submissions.
const PRUNE_EVERY: usize = 256;

/// Where a task is (FC's names for async task states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TaskState {
    /// Waiting for its turn.
    Enqueued,
    /// On an instance.
    Running,
    /// Waiting to be tried again.
    Retrying,
    /// The function answered without an error.
    Succeeded,
    /// The function failed on every attempt.
    Failed,
    /// Too old to be tried again.
    Expired,
    /// fcsup stopped before the task finished (only without a queue database).
    Stopped,
}

impl TaskState {
    const ALL: [TaskState; 7] = [
        TaskState::Enqueued,
        TaskState::Running,
        TaskState::Retrying,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Expired,
        TaskState::Stopped,
    ];

    /// FC's name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Enqueued => "Enqueued",
            TaskState::Running => "Running",
            TaskState::Retrying => "Retrying",
            TaskState::Succeeded => "Succeeded",
            TaskState::Failed => "Failed",
            TaskState::Expired => "Expired",
            TaskState::Stopped => "Stopped",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<TaskState> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// One task as `GET /admin/async/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// The request id (or the caller's `x-fc-async-task-id`).
    pub id: String,
    /// The request id sent to the function.
    pub request_id: String,
    /// Function.
    pub function: String,
    /// State.
    pub status: TaskState,
    /// Attempts so far.
    pub attempts: u32,
    /// Accepted (RFC 3339).
    pub submitted: String,
    /// Finished (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    /// Instance of the last attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// HTTP status the function answered on the last attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// FC's error type of the last attempt (`UnhandledInvocationError`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// Error message of the last attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Response body of the last attempt (UTF-8, or base64 when not text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// `utf8` or `base64`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_encoding: Option<&'static str>,
    /// The Async task that took this task's record to its destination function.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_task_id: Option<String>,
}

/// What the queue needs of whoever owns it: the pool serving a function now (a reload may
/// replace it between attempts) and where attempts are counted.
pub trait Pools: Send + Sync + 'static {
    /// The current pool of `function`, if it still exists.
    fn pool(&self, function: &str) -> Option<Arc<Pool>>;
    /// The metrics each attempt is counted in.
    fn metrics(&self) -> &Metrics;
}

/// Why a task was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The id is taken (`x-fc-async-task-id` used twice).
    #[error("async task {0} already exists")]
    Exists(String),
    /// The database refused the task.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one attempt came to, and so how FC's Async retries go on (`docs/errors.md`).
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Done,
    /// A function error: retried `maxAsyncRetryAttempts` times.
    FunctionError,
    /// 429 or 5xx: retried with backoff for up to 5 h.
    Throttled,
    /// Any other platform error (a caller's error): not retried.
    Refused,
}

impl Attempt {
    fn of(outcome: &Outcome) -> Attempt {
        match outcome {
            Outcome::Success => Attempt::Done,
            Outcome::Function { .. } => Attempt::FunctionError,
            Outcome::Platform { status, .. } if *status == hyper::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() => Attempt::Throttled,
            Outcome::Platform { .. } => Attempt::Refused,
        }
    }
}

/// The queue: the task database and the tasks running them.
pub struct AsyncQueue {
    state: Arc<State>,
}

/// What a running task shares with the queue.
struct State {
    pools: Weak<dyn Pools>,
    store: Store,
    /// Per function: how many of its async tasks may be on instances at once.
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    running: Mutex<tokio::task::JoinSet<()>>,
    /// Set by [`AsyncQueue::stop`]: no task starts after it.
    stopping: AtomicBool,
    submitted: AtomicUsize,
}

impl std::fmt::Debug for AsyncQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncQueue").field("store", &self.state.store).finish_non_exhaustive()
    }
}

/// A task on its way to an instance.
struct Job {
    id: String,
    function: String,
    call: Call,
    submitted_ms: u64,
    function_errors: u32,
    throttles: u32,
}

/// The last attempt, for the destination record.
#[derive(Default)]
struct Last {
    status_code: Option<u16>,
    error_type: Option<String>,
    error_message: Option<String>,
    body: Option<Bytes>,
}

impl AsyncQueue {
    /// A queue keeping its tasks in `store` that runs them on `pools` (held weakly: the
    /// owner of the pools owns the queue). Nothing runs before [`AsyncQueue::resume`].
    pub fn new(pools: Weak<dyn Pools>, store: Store) -> AsyncQueue {
        let state = State {
            pools,
            store,
            slots: Mutex::default(),
            running: Mutex::default(),
            stopping: AtomicBool::new(false),
            submitted: AtomicUsize::new(0),
        };
        AsyncQueue { state: Arc::new(state) }
    }

    /// Whether `id` is already taken (a repeated `x-fc-async-task-id`).
    pub fn contains(&self, id: &str) -> bool {
        self.state.store.contains(id)
    }

    /// The status of task `id`.
    pub fn status(&self, id: &str) -> Option<TaskStatus> {
        self.state.store.status(id)
    }

    /// Accepts `call` for `function` under `id` (written to the database before this returns)
    /// and runs it in the background.
    pub fn submit(&self, id: String, function: String, call: Call) -> Result<(), SubmitError> {
        let submitted_ms = crate::clock::now_ms();
        let task = NewTask { id: id.clone(), function: function.clone(), request: Request::of(&call), submitted_ms };
        if !self.state.store.insert(&task)? {
            return Err(SubmitError::Exists(id));
        }
        if self.state.submitted.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            if let Err(e) = self.state.store.prune(KEEP) {
                tracing::warn!("cannot prune finished async tasks: {e}");
            }
        }
        self.state.spawn(Job { id, function, call, submitted_ms, function_errors: 0, throttles: 0 });
        Ok(())
    }

    /// Starts the tasks a previous run left unfinished (queued, waiting for a retry, or cut
    /// short mid-attempt: those run that attempt again); returns how many.
    pub fn resume(&self) -> Result<usize, StoreError> {
        if !self.state.store.durable() {
            return Ok(0);
        }
        self.state.store.start_syncing()?;
        let pending = self.state.store.pending()?;
        let n = pending.len();
        for p in pending {
            let call = p.request.call(p.attempts);
            let job = Job {
                id: p.id,
                function: p.function,
                call,
                submitted_ms: p.submitted_ms,
                function_errors: p.function_errors,
                throttles: p.throttles,
            };
            self.state.spawn(job);
        }
        if n > 0 {
            tracing::info!("{n} async task(s) left unfinished by the previous run queued again");
        }
        Ok(n)
    }

    /// Stops every task (at supervisor shutdown): with a queue database unfinished ones stay
    /// queued for the next start, without one they become `Stopped`.
    pub async fn stop(&self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        let mut running = std::mem::take(&mut *self.state.running.lock().expect("queue"));
        running.shutdown().await;
        if let Err(e) = self.state.store.stop() {
            tracing::error!("cannot keep the unfinished async tasks: {e}");
        }
        self.state.store.sync();
    }
}

impl Request {
    fn of(call: &Call) -> Request {
        Request {
            http_trigger: call.http_trigger,
            request_id: call.request_id.clone(),
            method: call.method.clone(),
            path_and_query: call.path_and_query.clone(),
            headers: call.headers.clone(),
            body: call.body.clone(),
        }
    }

    /// The call for a task that had `attempts` already.
    fn call(self, attempts: u32) -> Call {
        Call {
            http_trigger: self.http_trigger,
            request_id: self.request_id,
            method: self.method,
            path_and_query: self.path_and_query,
            headers: self.headers,
            body: self.body,
            want_log: false,
            canceled: None,
            retry_count: attempts,
            arrived: Instant::now(),
            body_budget: None,
            body_stream: None,
            client_upgrade: None,
            stream: false,
        }
    }
}

/// How old an event that arrived at `submitted_ms` is (wall clock: it counts across restarts).
fn age(submitted_ms: u64) -> Duration {
    Duration::from_millis(crate::clock::now_ms().saturating_sub(submitted_ms))
}

impl State {
    fn spawn(self: &Arc<Self>, job: Job) {
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let state = self.clone();
        let mut running = self.running.lock().expect("queue");
        while running.try_join_next().is_some() {}
        running.spawn(async move {
            let Some(slots) = state.slots_for(&job.function) else {
                let msg = format!("function '{}' no longer exists", job.function);
                state.finish(&job, None, TaskState::Failed, Some(&msg), &Last::default(), 0);
                return;
            };
            let Ok(_permit) = slots.acquire_owned().await else { return };
            state.run(job).await;
        });
    }

    /// The semaphore of `function`'s Async slots (concurrency × maxInstances), made for its
    /// pool of the moment on first use; `None` when the function no longer exists.
    fn slots_for(&self, function: &str) -> Option<Arc<Semaphore>> {
        let pool = self.pools.upgrade()?.pool(function)?;
        let n = pool.function.concurrency * pool.scaling().max_instances.unwrap_or(100);
        Some(self.slots.lock().expect("queue").entry(function.to_string()).or_insert_with(|| Arc::new(Semaphore::new(n.max(1)))).clone())
    }

    fn write(&self, id: &str, r: Result<(), StoreError>) {
        if let Err(e) = r {
            tracing::error!(task = id, "cannot update the async task: {e}");
        }
    }

    async fn run(self: &Arc<Self>, mut job: Job) {
        let mut attempts = job.call.retry_count;
        let mut last = Last::default();
        loop {
            let Some(pools) = self.pools.upgrade() else { return };
            let Some(pool) = pools.pool(&job.function) else {
                let msg = format!("function '{}' no longer exists", job.function);
                self.finish(&job, None, TaskState::Failed, Some(&msg), &last, attempts);
                return;
            };
            let settings = pool.async_settings();
            let max_age = settings.max_age;
            if age(job.submitted_ms) > max_age {
                let msg = format!("the event is older than maxAsyncEventAgeInSeconds ({} s)", max_age.as_secs());
                self.finish(&job, Some(&pool), TaskState::Expired, Some(&msg), &last, attempts);
                return;
            }
            self.write(&job.id, self.store.set_state(&job.id, TaskState::Running));
            attempts += 1;
            let next = job.call.again();
            let call = std::mem::replace(&mut job.call, next);
            let d = pool.dispatch(call).await;
            let outcome = outcome::of(&d.result, job.call.http_trigger);
            pools.metrics().invocation(&job.function, outcome.metric());
            drop(pools);
            let attempt = Attempt::of(&outcome);
            match attempt {
                Attempt::FunctionError => job.function_errors += 1,
                Attempt::Throttled => job.throttles += 1,
                Attempt::Done | Attempt::Refused => {}
            }
            last = self.record(&job, d, &outcome);
            let (delay, give_up) = match attempt {
                Attempt::Done => {
                    self.finish(&job, Some(&pool), TaskState::Succeeded, None, &last, attempts);
                    return;
                }
                Attempt::FunctionError => (backoff(job.function_errors - 1), job.function_errors > settings.retries),
                Attempt::Throttled => (backoff(job.throttles - 1), false),
                Attempt::Refused => (Duration::ZERO, true),
            };
            if give_up {
                self.finish(&job, Some(&pool), TaskState::Failed, None, &last, attempts);
                return;
            }
            let age_limit = max_age.min(if matches!(attempt, Attempt::Throttled) { THROTTLE_RETRY_FOR } else { Duration::MAX });
            if age(job.submitted_ms) + delay > age_limit {
                self.finish(&job, Some(&pool), TaskState::Expired, None, &last, attempts);
                return;
            }
            self.write(&job.id, self.store.set_state(&job.id, TaskState::Retrying));
            tokio::time::sleep(delay).await;
        }
    }

    /// Stores what an attempt returned: the answer, or FC's error type and message.
    fn record(&self, job: &Job, d: Dispatched, outcome: &Outcome) -> Last {
        let mut r = Record {
            instance_id: d.instance_id,
            error_type: outcome.error_type().map(str::to_string),
            error_message: outcome.message().map(str::to_string),
            function_errors: job.function_errors,
            throttles: job.throttles,
            ..Record::default()
        };
        let mut last = Last {
            status_code: outcome.status().map(|s| s.as_u16()),
            error_type: r.error_type.clone(),
            error_message: r.error_message.clone(),
            body: None,
        };
        if let Ok(reply) = &d.result {
            r.status_code = Some(reply.status.as_u16());
            // The status FC answered with: the function's on success, 200 for a function error.
            last.status_code = last.status_code.or(r.status_code);
            let (text, enc) = match std::str::from_utf8(&reply.body) {
                Ok(s) => (s.to_string(), "utf8"),
                Err(_) => (base64::engine::general_purpose::STANDARD.encode(&reply.body), "base64"),
            };
            r.result = Some(text);
            r.result_encoding = Some(enc);
            last.body = Some(reply.body.clone());
        }
        self.write(&job.id, self.store.record(&job.id, &r));
        last
    }

    /// Ends a task and, when its function has a destination for how it ended, queues the
    /// record for it in the same write.
    fn finish(self: &Arc<Self>, job: &Job, pool: Option<&Arc<Pool>>, state: TaskState, message: Option<&str>, last: &Last, attempts: u32) {
        let dest = pool.and_then(|p| match state {
            TaskState::Succeeded => p.async_settings().on_success,
            TaskState::Failed | TaskState::Expired => p.async_settings().on_failure,
            _ => None,
        });
        let hops = destination::hops(&job.call).saturating_add(1);
        let dest = dest.filter(|d| {
            let send = hops <= destination::MAX_HOPS;
            if !send {
                tracing::warn!(
                    task = job.id,
                    function = d.function,
                    "async record not sent: {} records in a row already (a loop of destinations?)",
                    hops - 1
                );
            }
            send
        });
        let dest_job = dest.map(|d| {
            let request_id = uuid::Uuid::new_v4().to_string();
            let body = destination::record(&d, job, state, message, last, attempts);
            let call = destination::call(&request_id, body, hops);
            let task =
                NewTask { id: request_id.clone(), function: d.function.clone(), request: Request::of(&call), submitted_ms: crate::clock::now_ms() };
            (task, call)
        });
        self.write(&job.id, self.store.finish(&job.id, state, message, dest_job.as_ref().map(|(t, _)| t)));
        tracing::info!(task = job.id, status = ?state, "async invocation finished");
        if let Some((task, call)) = dest_job {
            tracing::info!(task = job.id, destination = task.id, function = task.function, "async record sent to its destination");
            self.spawn(Job { id: task.id, function: task.function, call, submitted_ms: task.submitted_ms, function_errors: 0, throttles: 0 });
        }
    }
}

/// FC's retry schedule: 0.5 s, 1 s, 2 s, 4 s, 8 s, … (capped at 60 s).
fn backoff(retry: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << retry.min(7))).min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second() {
        let s: Vec<u128> = (0..9).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(s, [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]);
    }

    #[test]
    fn retries_follow_fc_classes() {
        use crate::instance::{InitError, Internal, InvokeError, StartError};
        let attempt = |e: InvokeError| Attempt::of(&outcome::of(&Err(e), false));
        // Function errors: retried maxAsyncRetryAttempts times.
        assert_eq!(attempt(InvokeError::Timeout(3)), Attempt::FunctionError);
        assert_eq!(attempt(StartError::Initializer(Arc::new(InitError::Status(404))).into()), Attempt::FunctionError);
        assert_eq!(attempt(InvokeError::Crashed { duration_ms: 1, max_memory_mb: 0.0 }), Attempt::FunctionError);
        // 429 and 5xx: retried with backoff.
        assert_eq!(attempt(crate::instance::Exhausted::Supervisor { max: 1 }.into()), Attempt::Throttled);
        assert_eq!(attempt(InvokeError::Gone), Attempt::Throttled);
        let bad = hyper::Request::builder().uri("\n").body(()).unwrap_err();
        assert_eq!(attempt(Internal::from(bad).into()), Attempt::Throttled);
        // Other 4xx: not retried.
        assert_eq!(attempt(InvokeError::Canceled), Attempt::Refused);
        assert_eq!(Attempt::of(&Outcome::Success), Attempt::Done);
    }
}
