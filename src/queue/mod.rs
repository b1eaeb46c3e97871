//! Async invocations (`x-fc-invocation-type: Async`): accepted with 202 at once,
//! run later from an in-process queue, retried as FC does: function errors up to
//! `asyncInvokeConfig.maxAsyncRetryAttempts` times (default 3), throttles and fcsup's own
//! failures with exponential backoff (0.5 s, 1 s, 2 s, … capped at 60 s) until the event is
//! older than `maxAsyncEventAgeInSeconds` (at most 5 h for throttles). Every task's status and
//! result stay visible at `GET /admin/async/{id}` (the last [`KEEP`] tasks).
//!
//! The queue lives in memory: tasks not finished when fcsup stops are marked `Stopped`.
//!
//! It reaches the functions through [`Pools`] (the supervisor implements it), so it never
//! depends on the supervisor that owns it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::instance::Call;
use crate::metrics::Metrics;
use crate::outcome::{self, Outcome};
use crate::pool::{Dispatched, Pool};

/// Finished tasks kept for the status endpoint.
pub const KEEP: usize = 10_000;
/// Largest Async body FC accepts (128 KB).
pub const MAX_BODY: usize = 128 * 1024;
/// Longest a throttled event keeps being retried (FC: 5 hours).
const THROTTLE_RETRY_FOR: Duration = Duration::from_secs(5 * 3600);

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
    /// fcsup stopped before the task finished.
    Stopped,
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
}

/// What the queue needs of whoever owns it: the pool serving a function now (a reload may
/// replace it between attempts) and where attempts are counted.
pub trait Pools: Send + Sync + 'static {
    /// The current pool of `function`, if it still exists.
    fn pool(&self, function: &str) -> Option<Arc<Pool>>;
    /// The metrics each attempt is counted in.
    fn metrics(&self) -> &Metrics;
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

/// The queue: task statuses and the tasks running them.
pub struct AsyncQueue {
    state: Arc<State>,
    running: Mutex<tokio::task::JoinSet<()>>,
}

/// What a running task shares with the queue.
struct State {
    pools: Weak<dyn Pools>,
    tasks: Mutex<Tasks>,
    /// Per function: how many of its async tasks may be on instances at once.
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl std::fmt::Debug for AsyncQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncQueue").field("tasks", &self.state.tasks.lock().expect("queue").by_id.len()).finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Tasks {
    by_id: HashMap<String, TaskStatus>,
    order: VecDeque<String>,
}

impl AsyncQueue {
    /// An empty queue that runs its tasks on `pools` (held weakly: the owner of the pools
    /// owns the queue).
    pub fn new(pools: Weak<dyn Pools>) -> AsyncQueue {
        let state = State { pools, tasks: Mutex::default(), slots: Mutex::default() };
        AsyncQueue { state: Arc::new(state), running: Mutex::default() }
    }

    /// Whether `id` is already taken (a repeated `x-fc-async-task-id`).
    pub fn contains(&self, id: &str) -> bool {
        self.state.tasks.lock().expect("queue").by_id.contains_key(id)
    }

    /// The status of task `id`.
    pub fn status(&self, id: &str) -> Option<TaskStatus> {
        self.state.tasks.lock().expect("queue").by_id.get(id).cloned()
    }

    /// Accepts `call` for `function` under `id` and runs it in the background.
    pub fn submit(&self, id: String, function: String, call: Call) {
        let status = TaskStatus {
            id: id.clone(),
            request_id: call.request_id.clone(),
            function: function.clone(),
            status: TaskState::Enqueued,
            attempts: 0,
            submitted: crate::clock::now_rfc3339(),
            finished: None,
            instance_id: None,
            status_code: None,
            error_type: None,
            error_message: None,
            result: None,
            result_encoding: None,
        };
        {
            let mut t = self.state.tasks.lock().expect("queue");
            while t.order.len() >= KEEP {
                if let Some(old) = t.order.pop_front() {
                    t.by_id.remove(&old);
                }
            }
            t.order.push_back(id.clone());
            t.by_id.insert(id.clone(), status);
        }
        let slots = self.state.slots_for(&function);
        let state = self.state.clone();
        let mut running = self.running.lock().expect("queue");
        while running.try_join_next().is_some() {}
        running.spawn(async move {
            let Some(slots) = slots else { return };
            let Ok(_permit) = slots.acquire_owned().await else { return };
            state.run(&id, &function, call).await;
        });
    }

    /// Stops every task (at supervisor shutdown); unfinished ones become `Stopped`.
    pub async fn stop(&self) {
        let mut running = std::mem::take(&mut *self.running.lock().expect("queue"));
        running.shutdown().await;
        let mut t = self.state.tasks.lock().expect("queue");
        for s in t.by_id.values_mut() {
            if matches!(s.status, TaskState::Enqueued | TaskState::Running | TaskState::Retrying) {
                s.status = TaskState::Stopped;
                s.finished = Some(crate::clock::now_rfc3339());
            }
        }
    }
}

impl State {
    /// The semaphore of `function`'s Async slots (concurrency × maxInstances), made for its
    /// pool of the moment on first use; `None` when the function no longer exists.
    fn slots_for(&self, function: &str) -> Option<Arc<Semaphore>> {
        let pool = self.pools.upgrade()?.pool(function)?;
        let n = pool.function.concurrency * pool.scaling().max_instances.unwrap_or(100);
        Some(self.slots.lock().expect("queue").entry(function.to_string()).or_insert_with(|| Arc::new(Semaphore::new(n.max(1)))).clone())
    }

    async fn run(&self, id: &str, function: &str, first: Call) {
        let accepted = Instant::now();
        let mut function_errors = 0u32;
        let mut throttles = 0u32;
        let http_trigger = first.http_trigger;
        let mut call = first;
        loop {
            let Some(pools) = self.pools.upgrade() else { return };
            let Some(pool) = pools.pool(function) else {
                self.finish(id, TaskState::Failed, |t| t.error_message = Some(format!("function '{function}' no longer exists")));
                return;
            };
            self.update(id, |t| {
                t.status = TaskState::Running;
                t.attempts += 1;
            });
            let next = call.again();
            let d = pool.dispatch(call).await;
            let outcome = outcome::of(&d.result, http_trigger);
            pools.metrics().invocation(function, outcome.metric());
            drop(pools);
            let attempt = Attempt::of(&outcome);
            self.record(id, d, outcome);
            call = next;
            let (delay, give_up) = match attempt {
                Attempt::Done => {
                    self.finish(id, TaskState::Succeeded, |_| {});
                    return;
                }
                Attempt::FunctionError => {
                    function_errors += 1;
                    (backoff(function_errors - 1), function_errors > pool.function.async_retries)
                }
                Attempt::Throttled => {
                    throttles += 1;
                    (backoff(throttles - 1), false)
                }
                Attempt::Refused => (Duration::ZERO, true),
            };
            if give_up {
                self.finish(id, TaskState::Failed, |_| {});
                return;
            }
            let age_limit = pool.function.async_max_age.min(if matches!(attempt, Attempt::Throttled) { THROTTLE_RETRY_FOR } else { Duration::MAX });
            if accepted.elapsed() + delay > age_limit {
                self.finish(id, TaskState::Expired, |_| {});
                return;
            }
            self.update(id, |t| t.status = TaskState::Retrying);
            tokio::time::sleep(delay).await;
        }
    }

    /// Stores what an attempt returned: the answer, or FC's error type and message.
    fn record(&self, id: &str, d: Dispatched, outcome: Outcome) {
        self.update(id, |t| {
            t.instance_id = d.instance_id;
            t.error_type = outcome.error_type().map(str::to_string);
            t.error_message = outcome.message().map(str::to_string);
            match &d.result {
                Ok(reply) => {
                    t.status_code = Some(reply.status.as_u16());
                    let (text, enc) = match std::str::from_utf8(&reply.body) {
                        Ok(s) => (s.to_string(), "utf8"),
                        Err(_) => (base64::engine::general_purpose::STANDARD.encode(&reply.body), "base64"),
                    };
                    t.result = Some(text);
                    t.result_encoding = Some(enc);
                }
                Err(_) => {
                    t.status_code = None;
                    t.result = None;
                    t.result_encoding = None;
                }
            }
        });
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut TaskStatus)) {
        if let Some(t) = self.tasks.lock().expect("queue").by_id.get_mut(id) {
            f(t);
        }
    }

    fn finish(&self, id: &str, state: TaskState, f: impl FnOnce(&mut TaskStatus)) {
        self.update(id, |t| {
            f(t);
            t.status = state;
            t.finished = Some(crate::clock::now_rfc3339());
        });
        tracing::info!(task = id, status = ?state, "async invocation finished");
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
