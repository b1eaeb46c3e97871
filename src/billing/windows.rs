//! An instance's billing windows as a state machine with no kernel in it: the instance feeds
//! it readings (time and `cpu.stat`) and gets back the windows it closed, so the rules are
//! unit-tested without root.
//!
//! The rules (README, Billing): a window opens before the thaw and closes after the freeze is
//! confirmed, so consecutive windows share their boundary reading and every µs of CPU lands
//! in exactly one; concurrent requests share the open window; PreFreeze keeps the requests'
//! window (its phase becomes `pre-freeze`); the first window counts from the instance's
//! creation; a provisioned instance's frozen time is an `idle` window.

use std::time::{Duration, Instant};

use super::{IdleTier, Phase};
use crate::cgroup::CpuStat;

/// The meters at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    /// Monotonic time.
    pub at: Instant,
    /// Wall clock, ms since the epoch.
    pub at_ms: u64,
    /// The cgroup's cpu.stat.
    pub cpu: CpuStat,
}

#[derive(Debug)]
struct Open {
    start: Reading,
    phase: Phase,
    request_ids: Vec<String>,
    cold_start: bool,
    /// For idle time: frozen, or GPU-hibernated too.
    tier: Option<IdleTier>,
}

/// A window that ended.
#[derive(Debug, Clone)]
pub struct Closed {
    /// Phase billed.
    pub phase: Phase,
    /// Requests served in it.
    pub request_ids: Vec<String>,
    /// Whether it started the instance.
    pub cold_start: bool,
    /// Start, ms since the epoch.
    pub start_ms: u64,
    /// Wall time.
    pub wall: Duration,
    /// CPU used in it.
    pub cpu: CpuStat,
    /// For idle time, its tier.
    pub tier: Option<IdleTier>,
}

impl Open {
    fn close(self, end: &Reading) -> Closed {
        Closed {
            phase: self.phase,
            request_ids: self.request_ids,
            cold_start: self.cold_start,
            start_ms: self.start.at_ms,
            wall: end.at.saturating_duration_since(self.start.at),
            cpu: end.cpu.since(&self.start.cpu),
            tier: self.tier,
        }
    }
}

/// The windows of one instance.
#[derive(Debug, Default)]
pub struct Windows {
    open: Option<Open>,
    idle: Option<Open>,
    /// Idle time that a thaw ended, handed out with the next close (off the request path).
    idle_ended: Option<Closed>,
}

impl Windows {
    /// Opens the start window, of `phase`: from the instance's creation (a new cgroup's CPU is
    /// zero).
    pub fn start(&mut self, created: Instant, created_ms: u64, phase: Phase) {
        let start = Reading { at: created, at_ms: created_ms, cpu: CpuStat::default() };
        self.open = Some(Open { start, phase, request_ids: Vec::new(), cold_start: true, tier: None });
    }

    /// Makes the open window one of `phase`, closing one of another phase at `now` (the new
    /// one starts there). A window of the same phase is kept, and so is a PreFreeze window
    /// when requests come (it is still theirs). A window opens only before a thaw, so idle
    /// time ends at the same reading. `now` is read only when a window opens.
    pub fn switch(&mut self, phase: Phase, now: impl FnOnce() -> Reading) -> Option<Closed> {
        if self.open.as_ref().is_some_and(|w| w.phase == phase || (w.phase == Phase::PreFreeze && phase == Phase::Invoke)) {
            return None;
        }
        let now = now();
        self.thawing(now);
        let closed = self.open.take().map(|w| w.close(&now));
        self.open = Some(Open { start: now, phase, request_ids: Vec::new(), cold_start: false, tier: None });
        closed
    }

    /// A request joins the open window.
    pub fn add_request(&mut self, id: &str) {
        if let Some(w) = self.open.as_mut() {
            w.request_ids.push(id.to_string());
        }
    }

    /// The requests' window goes on with PreFreeze (returns whether there was one to extend).
    pub fn pre_freeze(&mut self) -> bool {
        match self.open.as_mut().filter(|w| w.phase == Phase::Invoke) {
            Some(w) => {
                w.phase = Phase::PreFreeze;
                true
            }
            None => false,
        }
    }

    /// Closes everything that ended by `now`: idle time a thaw ended, then the open window.
    pub fn close(&mut self, now: Reading) -> Vec<Closed> {
        let mut out: Vec<Closed> = self.idle_ended.take().into_iter().collect();
        out.extend(self.open.take().map(|w| w.close(&now)));
        out
    }

    /// The instance was frozen at `now`: a provisioned instance starts an idle window.
    pub fn frozen(&mut self, now: Reading, provisioned: bool) {
        if provisioned {
            self.idle = Some(Open { start: now, phase: Phase::Idle, request_ids: Vec::new(), cold_start: false, tier: Some(IdleTier::Frozen) });
        }
    }

    /// The frozen instance's GPU memory was checkpointed at `now`: its idle time from here is
    /// of the GPU-hibernated tier (the frozen tier's part is returned, closed).
    pub fn hibernated(&mut self, now: Reading) -> Option<Closed> {
        let frozen = self.idle.take()?;
        self.idle = Some(Open { start: now, phase: Phase::Idle, request_ids: Vec::new(), cold_start: false, tier: Some(IdleTier::GpuHibernated) });
        Some(frozen.close(&now))
    }

    /// The instance is about to thaw (or stop) without opening a window: its idle time ends
    /// at `now`.
    pub fn thawing(&mut self, now: Reading) {
        if let Some(w) = self.idle.take() {
            self.idle_ended = Some(w.close(&now));
        }
    }

    /// Whether an idle window is running (only then does a thaw need a reading).
    pub fn idle(&self) -> bool {
        self.idle.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64, cpu_us: u64) -> Reading {
        Reading {
            at: base + Duration::from_millis(ms),
            at_ms: 1_000_000 + ms,
            cpu: CpuStat { usage_usec: cpu_us, user_usec: cpu_us, system_usec: 0 },
        }
    }

    #[test]
    fn windows_are_contiguous_so_every_cpu_microsecond_is_billed_once() {
        let t = Instant::now();
        let mut w = Windows::default();
        w.start(t, 1_000_000, Phase::Initialize);
        let mut closed = Vec::new();
        closed.extend(w.close(at(t, 50, 40_000))); // start + Initializer, frozen
        closed.extend(w.switch(Phase::Invoke, || at(t, 500, 40_000))); // nothing open: nothing closed
        w.add_request("r1");
        closed.extend(w.close(at(t, 510, 45_000)));
        assert_eq!(closed.len(), 2);
        assert!(closed[0].cold_start && closed[0].phase == Phase::Initialize);
        assert_eq!(closed[0].cpu.usage_usec + closed[1].cpu.usage_usec, 45_000, "all CPU, once");
        assert_eq!((closed[1].request_ids.as_slice(), closed[1].wall), (&["r1".to_string()][..], Duration::from_millis(10)));
    }

    #[test]
    fn concurrent_requests_share_a_window_and_pre_freeze_ends_it() {
        let t = Instant::now();
        let mut w = Windows::default();
        assert!(w.switch(Phase::Invoke, || at(t, 0, 0)).is_none());
        w.add_request("a");
        assert!(w.switch(Phase::Invoke, || at(t, 5, 100)).is_none(), "a second request joins");
        w.add_request("b");
        assert!(w.pre_freeze());
        assert!(w.switch(Phase::Invoke, || at(t, 8, 150)).is_none(), "a request during PreFreeze stays in the window");
        let c = w.close(at(t, 10, 300));
        assert_eq!((c.len(), c[0].phase, c[0].request_ids.len()), (1, Phase::PreFreeze, 2));
        assert_eq!(c[0].wall, Duration::from_millis(10));
    }

    #[test]
    fn a_phase_change_closes_at_the_boundary() {
        let t = Instant::now();
        let mut w = Windows::default();
        w.switch(Phase::Initialize, || at(t, 0, 0));
        let c = w.switch(Phase::Invoke, || at(t, 7, 700)).expect("the Initializer's window closes");
        assert_eq!((c.phase, c.cpu.usage_usec, c.wall), (Phase::Initialize, 700, Duration::from_millis(7)));
        let c = w.close(at(t, 9, 900));
        assert_eq!((c[0].phase, c[0].cpu.usage_usec), (Phase::Invoke, 200));
    }

    #[test]
    fn only_provisioned_instances_bill_frozen_time() {
        let t = Instant::now();
        let mut w = Windows::default();
        w.frozen(at(t, 0, 0), false);
        assert!(!w.idle());
        w.frozen(at(t, 0, 500), true);
        w.switch(Phase::Invoke, || at(t, 300, 500));
        assert!(!w.idle(), "opening a window ends the frozen time");
        let c = w.close(at(t, 302, 600));
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].phase, c[0].wall, c[0].cpu.usage_usec), (Phase::Idle, Duration::from_millis(300), 0));
        assert_eq!((c[1].phase, c[1].cpu.usage_usec), (Phase::Invoke, 100));
    }
}
