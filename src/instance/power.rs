//! Freeze and thaw, and the billing windows they open and close: a window opens before the
//! thaw (while nothing runs) and closes after the freeze is confirmed, so every µs of CPU the
//! instance uses is in exactly one record ([`crate::billing::windows`]).

use std::sync::Arc;
use std::time::Instant;

use super::{us, HookKind, Instance, Internal, InvokeError, Kernel, Lifecycle};
use crate::billing::windows::{Closed, Reading, Windows};
use crate::billing::{Phase, ResourceMode, Usage, WindowRecord};

impl<K: Kernel> Instance<K> {
    /// Tries a freeze in the background, at once (as FC freezes: what a function does after
    /// its answer is cut off, which is what fcsup exists to show).
    pub(super) fn spawn_freeze(self: Arc<Self>) {
        tokio::spawn(self.freeze_if_idle());
    }

    /// PreFreeze (if configured) then freeze, unless a request is admitted meanwhile.
    pub(super) async fn freeze_if_idle(self: Arc<Self>) {
        let mut windows = self.power.lock().await;
        if !self.life.borrow().may_freeze() {
            self.hazards_not_frozen();
            return;
        }
        // PreFreeze follows invocations (not the Initializer), and is billed inside the
        // window it ends (README, Billing).
        if self.function.pre_freeze.is_some() && windows.pre_freeze() {
            // The freeze follows PreFreeze even if a request came meanwhile: it waits for the
            // power lock, thaws, and gets a window (and a PreFreeze) of its own.
            let _ = self.call_hook(HookKind::PreFreeze).await;
        }
        let before = self.hazards_before();
        let t = Instant::now();
        // A request admitted while the freeze is on its way undoes it (one write) rather than
        // waiting for it and then thawing: under steady concurrent load the instance would
        // otherwise freeze whenever its requests happen to all end at once, and every request
        // arriving meanwhile would wait ~200 µs. A PreFreeze that ran is followed by its freeze.
        let mut life = self.life.subscribe();
        let cancel = async move {
            if life.wait_for(|l| l.admitted() > 0).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let froze =
            if self.function.pre_freeze.is_some() { self.kernel.freeze().await.map(|()| true) } else { self.kernel.freeze_unless(cancel).await };
        match froze {
            Ok(false) => {
                self.hazards_skipped(before);
                self.reporting.samples().record("freeze_undone", t.elapsed());
                tracing::debug!(function = %self.function.name, instance = %self.id, "freeze undone: a request came");
            }
            Ok(true) => {
                let took = t.elapsed();
                // Lines of requests that ended belong to them up to here (README, Logs).
                self.log.settle().await;
                self.transition(Lifecycle::froze);
                self.latencies.freeze(took);
                self.reporting.samples().record("freeze", took);
                let now = self.close_window(&mut windows);
                windows.frozen(now, self.provisioned);
                // Off the response path and after the billing window closed.
                self.hazards_after(before, t, took, now.cpu.usage_usec);
                tracing::debug!(function = %self.function.name, instance = %self.id, us = us(took), "frozen");
            }
            Err(e) => {
                self.hazards_skipped(before);
                tracing::error!(instance = %self.id, "freeze failed: {e}");
            }
        }
    }

    /// Thaws the frozen cgroup (the power lock held). Callers open a billing window first
    /// (which ends a provisioned instance's idle time at the same reading).
    pub(super) async fn thaw_locked(&self) -> Result<(), InvokeError> {
        let t = Instant::now();
        self.kernel.thaw().await.map_err(Internal::Thaw)?;
        let took = t.elapsed();
        self.transition(Lifecycle::thawed);
        self.hazards_thawed();
        if let Err(e) = self.wake_gpu().await {
            self.transition(|l| l.retire(super::Retire::Broken));
            return Err(e);
        }
        self.latencies.thaw(took);
        self.reporting.samples().record("thaw", took);
        tracing::debug!(function = %self.function.name, instance = %self.id, us = us(took), "thawed");
        Ok(())
    }

    /// The meters now.
    pub(super) fn reading(&self) -> Reading {
        Reading { at: Instant::now(), at_ms: crate::clock::now_ms(), cpu: self.kernel.cpu() }
    }

    /// Makes the open billing window one of `phase` (see [`Windows::switch`]); the reading
    /// a new window starts from, if one opened.
    pub(super) fn switch_window(&self, windows: &mut Windows, phase: Phase) -> Option<Reading> {
        let mut opened = None;
        let closed = windows.switch(phase, || {
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
    pub(super) fn close_window(&self, windows: &mut Windows) -> Reading {
        let now = self.reading();
        self.record(windows.close(now));
        now
    }

    /// Records closed windows with the peak memory of the active ones, then starts the next
    /// window's peak.
    pub(super) fn record(&self, closed: Vec<Closed>) {
        let memory = self.kernel.memory();
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
            let mut r = WindowRecord::new(&self.function, &self.id, c.phase, mode, c.cold_start, c.request_ids, c.start_ms, usage);
            r.idle_tier = c.tier;
            self.reporting.window(r);
        }
        if measured {
            memory.reset();
        }
    }
}
