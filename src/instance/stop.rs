//! Stopping an instance: thaw, PreStop, SIGTERM, a grace period, `cgroup.kill`, the cgroup
//! removed (README, Behaviour decisions). PreStop always comes before SIGTERM, and is billed as its own
//! window.

use std::time::{Duration, Instant};

use super::{us, HookKind, Instance, Kernel, Lifecycle, StopTrace};
use crate::billing::Phase;

impl<K: Kernel> Instance<K> {
    /// Kills everything in the instance now, whatever it is doing (a start or an Initializer
    /// that would hold [`Instance::stop`] back).
    pub async fn kill_now(&self) {
        if let Err(e) = self.kernel.kill().await {
            tracing::error!(instance = %self.id, "kill failed: {e}");
        }
    }

    /// Stops the instance. Safe to call more than once, concurrently, and on a process that
    /// already exited.
    pub async fn stop(&self) {
        let t0 = Instant::now();
        let since = |t: Instant| us(t.duration_since(t0));
        let mut trace = StopTrace::default();
        let mut windows = self.power.lock().await;
        let Some(plan) = self.transition(|l| l.stop(self.function.pre_stop.is_some())) else { return };
        if windows.idle() {
            windows.thawing(self.reading());
        }
        if plan.alive {
            if plan.pre_stop {
                self.switch_window(&mut windows, Phase::PreStop);
            }
            if plan.thaw && self.kernel.thaw().await.is_ok() {
                self.transition(Lifecycle::thawed);
            }
            if plan.pre_stop {
                let _ = self.call_hook(HookKind::PreStop).await;
            }
            trace.pre_stop_us = since(Instant::now());
            self.close_window(&mut windows);
            self.kernel.terminate();
            trace.sigterm_us = since(Instant::now());
            if self.wait_exit(self.function.stop_grace).await.is_none() {
                tracing::warn!(instance = %self.id, "did not exit within {:?} of SIGTERM; killing", self.function.stop_grace);
            }
        }
        self.close_window(&mut windows);
        self.conns.clear();
        if let Err(e) = self.kernel.kill().await {
            tracing::error!(instance = %self.id, "kill failed: {e}");
        }
        let _ = self.wait_exit(Duration::from_secs(5)).await;
        trace.reaped_us = since(Instant::now());
        if let Err(e) = self.kernel.remove() {
            tracing::error!(instance = %self.id, "{e}");
        }
        trace.removed_us = since(Instant::now());
        *self.stop_trace.lock().expect("trace") = Some(trace);
        self.transition(Lifecycle::gone);
        tracing::info!(function = %self.function.name, instance = %self.id, "stopped");
    }
}
