//! Async invocations (`x-fc-invocation-type: Async`, fc-spec §3): accepted with 202 at once,
//! run later from an in-process queue, retried as FC does: function errors up to
//! `asyncInvokeConfig.maxAsyncRetryAttempts` times (default 3), throttles and fcsup's own
//! failures with exponential backoff (0.5 s, 1 s, 2 s, … capped at 60 s) until the event is
//! older than `maxAsyncEventAgeInSeconds` (at most 5 h for throttles). Every task's status and
//! result stay visible at `GET /admin/async/{id}` (the last [`KEEP`] tasks).
//!
//! The queue lives in memory: tasks not finished when fcsup stops are marked `Stopped`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::instance::{Call, InvokeError};
use crate::supervisor::Supervisor;

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

/// What one attempt came to.
enum Attempt {
    Done,
    FunctionError,
    Throttled,
}

/// The queue: task statuses and the tasks running them.
#[derive(Debug, Default)]
pub struct AsyncQueue {
    tasks: Mutex<Tasks>,
    /// Per function: how many of its async tasks may be on instances at once.
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    running: Mutex<tokio::task::JoinSet<()>>,
}

#[derive(Debug, Default)]
struct Tasks {
    by_id: HashMap<String, TaskStatus>,
    order: VecDeque<String>,
}

impl AsyncQueue {
    /// Whether `id` is already taken (a repeated `x-fc-async-task-id`).
    pub fn contains(&self, id: &str) -> bool {
        self.tasks.lock().expect("queue").by_id.contains_key(id)
    }

    /// The status of task `id`.
    pub fn status(&self, id: &str) -> Option<TaskStatus> {
        self.tasks.lock().expect("queue").by_id.get(id).cloned()
    }

    /// Accepts `call` for `function` under `id` and runs it in the background.
    pub fn submit(&self, sup: &Arc<Supervisor>, id: String, function: String, call: Call) {
        let status = TaskStatus {
            id: id.clone(),
            request_id: call.request_id.clone(),
            function: function.clone(),
            status: TaskState::Enqueued,
            attempts: 0,
            submitted: crate::util::now_rfc3339(),
            finished: None,
            instance_id: None,
            status_code: None,
            error_type: None,
            error_message: None,
            result: None,
            result_encoding: None,
        };
        {
            let mut t = self.tasks.lock().expect("queue");
            while t.order.len() >= KEEP {
                if let Some(old) = t.order.pop_front() {
                    t.by_id.remove(&old);
                }
            }
            t.order.push_back(id.clone());
            t.by_id.insert(id.clone(), status);
        }
        let slots = sup.pool(&function).map(|p| self.slots_for(&function, p.function.concurrency * p.scaling().max_instances.unwrap_or(100)));
        let sup = Arc::downgrade(sup);
        let mut running = self.running.lock().expect("queue");
        while running.try_join_next().is_some() {}
        running.spawn(async move {
            let Some(slots) = slots else { return };
            let Ok(_permit) = slots.acquire_owned().await else { return };
            let Some(sup) = sup.upgrade() else { return };
            sup.async_queue.run(&sup, &id, &function, call).await;
        });
    }

    fn slots_for(&self, function: &str, n: usize) -> Arc<Semaphore> {
        self.slots.lock().expect("queue").entry(function.to_string()).or_insert_with(|| Arc::new(Semaphore::new(n.max(1)))).clone()
    }

    async fn run(&self, sup: &Arc<Supervisor>, id: &str, function: &str, first: Call) {
        let accepted = Instant::now();
        let mut function_errors = 0u32;
        let mut throttles = 0u32;
        let mut call = first;
        loop {
            let Some(pool) = sup.pool(function) else {
                self.finish(id, TaskState::Failed, |t| t.error_message = Some(format!("function '{function}' no longer exists")));
                return;
            };
            self.update(id, |t| {
                t.status = TaskState::Running;
                t.attempts += 1;
            });
            let next = call.again();
            let d = pool.dispatch(call).await;
            sup.reporting().metrics().invocation(function, d.outcome(false));
            let attempt = self.record(id, d);
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

    /// Stores what an attempt returned and classifies it.
    fn record(&self, id: &str, d: crate::pool::Dispatched) -> Attempt {
        let mut attempt = Attempt::Done;
        self.update(id, |t| {
            t.instance_id = d.instance_id.clone();
            t.error_type = None;
            t.error_message = None;
            match &d.result {
                Ok(reply) => {
                    t.status_code = Some(reply.status.as_u16());
                    let (text, enc) = match std::str::from_utf8(&reply.body) {
                        Ok(s) => (s.to_string(), "utf8"),
                        Err(_) => (base64::engine::general_purpose::STANDARD.encode(&reply.body), "base64"),
                    };
                    t.result = Some(text);
                    t.result_encoding = Some(enc);
                    if reply.is_function_error(false) {
                        t.error_type = Some("UnhandledInvocationError".into());
                        attempt = Attempt::FunctionError;
                    }
                }
                Err(e) => {
                    t.status_code = None;
                    t.result = None;
                    t.result_encoding = None;
                    t.error_message = Some(e.to_string());
                    attempt = match e {
                        InvokeError::Throttled(_) | InvokeError::Gone | InvokeError::Internal(_) => {
                            t.error_type = Some("Throttled".into());
                            Attempt::Throttled
                        }
                        InvokeError::Initialization(_) => {
                            t.error_type = Some("InitializationError".into());
                            Attempt::FunctionError
                        }
                        _ => {
                            t.error_type = Some("UnhandledInvocationError".into());
                            Attempt::FunctionError
                        }
                    };
                }
            }
        });
        attempt
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
            t.finished = Some(crate::util::now_rfc3339());
        });
        tracing::info!(task = id, status = ?state, "async invocation finished");
    }

    /// Stops every task (at supervisor shutdown); unfinished ones become `Stopped`.
    pub async fn stop(&self) {
        let mut running = std::mem::take(&mut *self.running.lock().expect("queue"));
        running.shutdown().await;
        let mut t = self.tasks.lock().expect("queue");
        for s in t.by_id.values_mut() {
            if matches!(s.status, TaskState::Enqueued | TaskState::Running | TaskState::Retrying) {
                s.status = TaskState::Stopped;
                s.finished = Some(crate::util::now_rfc3339());
            }
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
        let s: Vec<u64> = (0..9).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(s, [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]);
    }
}
