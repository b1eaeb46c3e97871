//! A custom container without web server mode (FC 2.0 `webServerMode: false`): the instance
//! starts for one event, which it finds in `FC_CUSTOM_CONTAINER_EVENT`, and its exit is the
//! invocation's outcome (0: success). Nothing is called on it, so it has no hooks, no health
//! check and no freeze; a client that goes away sends it SIGTERM (FC's only signal for it, seed
//! 003 §Limits), and the function's timeout ends it.

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::HeaderMap;
use hyper::StatusCode;

use super::invoke::client_gone;
use super::launch::EVENT_VARIABLE;
use super::{Call, Instance, InvokeError, Kernel, Reply};
use crate::billing::Phase;

/// Linux's limit on one environment string (`MAX_ARG_STRLEN`, 32 pages), `NAME=` and its NUL
/// included.
const MAX_ENV_STRING: usize = 32 * 4096;

/// The event as the text an environment variable can carry, or why it cannot be.
pub fn event_text(call: &Call) -> Result<&str, InvokeError> {
    let unsendable = |why: &str| Err(InvokeError::Unsendable(format!("the event cannot be passed in {EVENT_VARIABLE}: {why}")));
    if call.http_trigger {
        return Err(InvokeError::Unsendable(
            "this function has customContainerConfig.webServerMode: false: it takes events (InvokeFunction), not HTTP trigger requests".into(),
        ));
    }
    let limit = MAX_ENV_STRING - EVENT_VARIABLE.len() - 2;
    if call.body.len() > limit {
        return unsendable(&format!("it is {} bytes, and Linux carries at most {limit} in one variable", call.body.len()));
    }
    let Ok(text) = std::str::from_utf8(&call.body) else { return unsendable("it is not UTF-8 text") };
    if text.contains('\0') {
        return unsendable("it has a NUL byte");
    }
    Ok(text)
}

impl<K: Kernel> Instance<K> {
    /// Waits for the instance, started for `call`, to exit (or to time out, or for its client
    /// to go away), and turns that into the call's outcome. Its whole life is one `invoke`
    /// billing window. The caller stops the instance afterwards.
    pub async fn run_once(self: &Arc<Self>, mut call: Call) -> Result<Reply, InvokeError> {
        let canceled = call.canceled.take();
        let mut windows = self.power.lock().await;
        windows.start(self.created, self.created_ms, Phase::Invoke);
        windows.add_request(&call.request_id);
        let mut was_canceled = false;
        let exit = {
            let within = self.function.timeout.saturating_sub(self.created.elapsed());
            let mut exit = std::pin::pin!(self.wait_exit(within));
            tokio::select! {
                e = &mut exit => e,
                () = client_gone(canceled) => {
                    was_canceled = true;
                    self.kernel.terminate();
                    self.wait_exit(self.function.stop_grace).await
                }
            }
        };
        if exit.is_none() {
            // Stopped here, so that the window below ends with its CPU.
            let _ = self.kernel.kill().await;
        }
        let end = self.close_window(&mut windows);
        drop(windows);
        let duration = self.created.elapsed();
        self.log.drain().await;
        let log = self.log.end(&call.request_id);
        let max_memory_mb = self.max_memory_mb();
        let duration_ms = duration.as_millis().try_into().unwrap_or(u64::MAX);
        match exit {
            _ if was_canceled => Err(InvokeError::Canceled),
            None => Err(InvokeError::Timeout(self.function.timeout.as_secs())),
            Some(0) => Ok(Reply {
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                body: Bytes::new(),
                stream: None,
                duration,
                cpu_usec: end.cpu.usage_usec,
                max_memory_mb,
                log,
                instance_id: self.id.clone(),
                error_type: None,
            }),
            Some(_) if self.life.borrow().oom_killed() => {
                Err(InvokeError::OutOfMemory { limit_mb: self.function.memory_mb, duration_ms, max_memory_mb })
            }
            Some(status) => Err(InvokeError::Failed { status, duration_ms, max_memory_mb }),
        }
    }
}
