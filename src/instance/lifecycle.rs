//! An instance's lifecycle as a state machine with no I/O in it (README, Behaviour decisions): the instance's
//! shell tells it what happened (the port listens, the Initializer answered, the cgroup froze,
//! the process exited) and asks it what may happen next (may this request run, may the
//! instance freeze, what does a stop have to do). It is the one place the instance's state is
//! kept, so "can this instance take a request?" has one answer.
//!
//! ```text
//! Starting ─listening→ Initializing ─booted→ Ready{frozen, running} ─stop→ Stopping ─→ Gone
//!     └──────────────── boot failed / exited / broken ──────────────────────↗
//! ```
//! `Ready` covers idle (frozen) and busy (thawed, requests running); a request is *admitted*
//! (holds a slot) from dispatch to its end, *running* only while it is thawed and sent.

use std::sync::Arc;

use super::kernel::Exit;
use super::{InitError, StartError};

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Process started, port not yet accepting.
    Starting,
    /// The start's Initializer or first health check is running.
    Initializing,
    /// Booted: frozen when idle, thawed while requests or hooks run.
    Ready,
    /// Taking no more requests: PreStop and teardown follow.
    Stopping,
    /// Stopped; its cgroup is removed.
    Gone,
}

/// What the admin API shows.
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

/// Why an instance takes no more requests, and so what its pool does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retire {
    /// Its process exited (crash, OOM kill): stop what is left.
    Exited(i32),
    /// It cannot serve (start failed, Initializer failed for good, a request hung): stop it.
    Broken,
    /// A client went away mid-request (README, Behaviour decisions): start a new instance, then stop this one.
    Replace,
    /// It froze unhealthy with nothing in flight: nothing would ever thaw it to see it recover.
    Unhealthy,
}

/// The Initializer's progress (README, Behaviour decisions).
#[derive(Debug, Clone)]
enum Init {
    /// Done, or none configured.
    Done,
    /// Not yet succeeded: how often it failed, and the last failure.
    Pending { failures: u64, last: Option<Arc<InitError>> },
}

/// What a request must do before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// Retry the Initializer first (thawing the instance if frozen), then ask again.
    Initialize {
        /// The cgroup is frozen.
        thaw: bool,
    },
    /// Run it.
    Run {
        /// The cgroup is frozen.
        thaw: bool,
    },
}

/// Why a request may not run on this instance.
#[derive(Debug, Clone)]
pub enum Refused {
    /// It is stopping or gone.
    Gone,
    /// The start failed.
    StartFailed(Arc<StartError>),
    /// The Initializer failed after the request was admitted; it fails with that error (the
    /// next request retries).
    InitFailed(Arc<InitError>),
}

/// What a stop has to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopPlan {
    /// The process still runs (PreStop, SIGTERM and a grace period apply).
    pub alive: bool,
    /// The cgroup is frozen and must be thawed first.
    pub thaw: bool,
    /// PreStop runs (configured by the caller; only for a booted instance).
    pub pre_stop: bool,
}

/// One instance's lifecycle.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    stage: Stage,
    concurrency: usize,
    frozen: bool,
    admitted: usize,
    running: usize,
    init: Init,
    healthy: bool,
    exit: Option<Exit>,
    boot_error: Option<Arc<StartError>>,
    retire: Option<Retire>,
}

impl Lifecycle {
    /// A just-spawned instance taking up to `concurrency` requests at once, with or without an
    /// Initializer.
    pub fn new(concurrency: usize, has_initializer: bool) -> Self {
        Lifecycle {
            stage: Stage::Starting,
            concurrency,
            frozen: false,
            admitted: 0,
            running: 0,
            init: if has_initializer { Init::Pending { failures: 0, last: None } } else { Init::Done },
            healthy: true,
            exit: None,
            boot_error: None,
            retire: None,
        }
    }

    /// The stage.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// What the admin API shows.
    pub fn state(&self) -> State {
        match self.stage {
            Stage::Starting => State::Starting,
            Stage::Initializing => State::Initializing,
            Stage::Ready if self.frozen => State::Frozen,
            Stage::Ready => State::Active,
            Stage::Stopping => State::Stopping,
            Stage::Gone => State::Dead,
        }
    }

    /// Whether new requests may come: not stopping, not failed, alive and healthy. (Booting
    /// instances admit: their requests wait for the boot.)
    pub fn takes_requests(&self) -> bool {
        matches!(self.stage, Stage::Starting | Stage::Initializing | Stage::Ready)
            && self.exit.is_none()
            && self.boot_error.is_none()
            && self.retire.is_none()
            && self.healthy
    }

    /// Whether one more request may come now.
    pub fn has_slot(&self) -> bool {
        self.takes_requests() && self.admitted < self.concurrency
    }

    /// Requests admitted (waiting or running).
    pub fn admitted(&self) -> usize {
        self.admitted
    }

    /// Requests thawed and sent.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Whether the cgroup is frozen.
    pub fn frozen(&self) -> bool {
        self.frozen
    }

    /// Whether the last health checks passed.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// The process's exit status, once it exited.
    pub fn exit(&self) -> Option<i32> {
        self.exit.map(|e| e.status)
    }

    /// Whether the kernel's OOM killer killed the process.
    pub fn oom_killed(&self) -> bool {
        self.exit.is_some_and(|e| e.oom_killed)
    }

    /// Whether the process runs.
    pub fn alive(&self) -> bool {
        self.exit.is_none()
    }

    /// Failed Initializer attempts so far.
    pub fn init_failures(&self) -> u64 {
        match &self.init {
            Init::Done => 0,
            Init::Pending { failures, .. } => *failures,
        }
    }

    /// Takes a slot for a request; the Initializer failures it has seen (see [`Lifecycle::begin`]).
    pub fn admit(&mut self) -> Option<u64> {
        if !self.has_slot() {
            return None;
        }
        self.admitted += 1;
        Some(self.init_failures())
    }

    /// Takes the first slot of an instance just started for a request: its requests wait for
    /// its boot and get the boot's error (even if the process already exited).
    pub fn admit_first(&mut self) -> u64 {
        self.admitted += 1;
        self.init_failures()
    }

    /// Gives a slot back; whether nothing is admitted any more (time to try a freeze).
    pub fn release(&mut self) -> bool {
        self.admitted = self.admitted.saturating_sub(1);
        self.admitted == 0
    }

    /// How the boot ended, once it has: `Ok` when requests may proceed.
    pub fn booted(&self) -> Option<Result<(), Refused>> {
        if let Some(e) = &self.boot_error {
            return Some(Err(Refused::StartFailed(e.clone())));
        }
        match self.stage {
            // A boot always ends (an exit ends it with the exit's error, which the waiting
            // requests get).
            Stage::Starting | Stage::Initializing => None,
            Stage::Stopping | Stage::Gone => Some(Err(Refused::Gone)),
            Stage::Ready => Some(Ok(())),
        }
    }

    /// The port accepted a connection.
    pub fn listening(&mut self) {
        if self.stage == Stage::Starting {
            self.stage = Stage::Initializing;
        }
    }

    /// The boot ended well (a 400/404 from the Initializer still counts: the instance stays
    /// for the next request to retry, README, Behaviour decisions).
    pub fn boot_done(&mut self) {
        if self.stage == Stage::Initializing {
            self.stage = Stage::Ready;
        }
    }

    /// The boot failed: the instance is broken and its waiting requests fail with `e`.
    pub fn boot_failed(&mut self, e: Arc<StartError>) {
        self.boot_error = Some(e);
        self.retire(Retire::Broken);
    }

    /// Whether an admitted request that saw `seen` Initializer failures may run, and what it
    /// must do first.
    pub fn begin(&self, seen: u64) -> Result<Begin, Refused> {
        if let Some(e) = &self.boot_error {
            return Err(Refused::StartFailed(e.clone()));
        }
        if self.stage != Stage::Ready || self.exit.is_some() || self.retire.is_some() {
            return Err(Refused::Gone);
        }
        let thaw = self.frozen;
        match &self.init {
            Init::Done => Ok(Begin::Run { thaw }),
            // It failed while this request waited: the request fails with it.
            Init::Pending { failures, last: Some(last) } if *failures > seen => Err(Refused::InitFailed(last.clone())),
            Init::Pending { .. } => Ok(Begin::Initialize { thaw }),
        }
    }

    /// The Initializer answered. A 400/404 keeps the instance (the next request retries);
    /// any other failure (a 5xx, a timeout, a dead connection) ends it.
    pub fn initialized(&mut self, outcome: Result<(), Arc<InitError>>) {
        match outcome {
            Ok(()) => self.init = Init::Done,
            Err(e) => {
                let retry = e.retryable();
                let failures = self.init_failures() + 1;
                self.init = Init::Pending { failures, last: Some(e) };
                if !retry {
                    self.retire(Retire::Broken);
                }
            }
        }
    }

    /// A request starts running (after its thaw).
    pub fn run(&mut self) {
        self.running += 1;
    }

    /// A request finished running.
    pub fn ran(&mut self) {
        self.running = self.running.saturating_sub(1);
    }

    /// Whether the instance may freeze now: booted, thawed, and no request admitted or
    /// running.
    pub fn may_freeze(&self) -> bool {
        self.stage == Stage::Ready && !self.frozen && self.admitted == 0 && self.running == 0 && self.exit.is_none() && self.retire.is_none()
    }

    /// The cgroup froze.
    pub fn froze(&mut self) {
        self.frozen = true;
    }

    /// The cgroup thawed.
    pub fn thawed(&mut self) {
        self.frozen = false;
    }

    /// The health checks changed their verdict.
    pub fn set_healthy(&mut self, healthy: bool) {
        self.healthy = healthy;
    }

    /// The process exited.
    pub fn exited(&mut self, exit: Exit) {
        self.exit = Some(exit);
        self.retire(Retire::Exited(exit.status));
    }

    /// The instance takes no more requests, for `why` (the first reason stands).
    pub fn retire(&mut self, why: Retire) {
        if self.retire.is_none() && self.stage != Stage::Gone {
            self.retire = Some(why);
        }
    }

    /// What anyone waiting on the lifecycle may be waiting for: a transition that changes
    /// none of it wakes no one.
    pub fn signals(&self) -> impl PartialEq {
        // Nobody waits for the port to listen: the boot's own steps wake no one.
        let booting = matches!(self.stage, Stage::Starting | Stage::Initializing);
        (
            booting,
            self.stage == Stage::Ready,
            self.stage == Stage::Gone,
            self.frozen,
            self.exit,
            self.boot_error.is_some(),
            self.retire,
            self.admitted == 0,
            self.healthy,
        )
    }

    /// Whether it is on its way out (retired, stopping or stopped): its health no longer
    /// matters.
    pub fn ending(&self) -> bool {
        self.retire.is_some() || matches!(self.stage, Stage::Stopping | Stage::Gone)
    }

    /// Why the instance should leave its pool, if it should.
    pub fn retiring(&self) -> Option<Retire> {
        self.retire.or_else(|| (self.frozen && !self.healthy && self.admitted == 0 && self.running == 0).then_some(Retire::Unhealthy))
    }

    /// A stop begins; what it has to do (`None`: it already ran). PreStop runs only for an
    /// instance that booted and still runs, when `pre_stop_configured`.
    pub fn stop(&mut self, pre_stop_configured: bool) -> Option<StopPlan> {
        if matches!(self.stage, Stage::Stopping | Stage::Gone) {
            return None;
        }
        let booted = self.stage == Stage::Ready && self.boot_error.is_none();
        self.stage = Stage::Stopping;
        self.retire(Retire::Broken);
        let alive = self.exit.is_none();
        Some(StopPlan { alive, thaw: self.frozen && alive, pre_stop: alive && booted && pre_stop_configured })
    }

    /// The stop ended: the process is reaped and the cgroup removed.
    pub fn gone(&mut self) {
        self.stage = Stage::Gone;
        self.frozen = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(status: u16) -> Arc<InitError> {
        Arc::new(InitError::Status(status))
    }

    fn booted(concurrency: usize, init: bool) -> Lifecycle {
        let mut l = Lifecycle::new(concurrency, init);
        l.listening();
        if init {
            l.initialized(Ok(()));
        }
        l.boot_done();
        l
    }

    #[test]
    fn boot_moves_through_its_stages() {
        let mut l = Lifecycle::new(1, true);
        assert_eq!((l.stage(), l.state()), (Stage::Starting, State::Starting));
        assert!(l.booted().is_none());
        assert!(l.has_slot(), "requests may wait for a booting instance");
        l.listening();
        assert_eq!(l.state(), State::Initializing);
        l.initialized(Ok(()));
        l.boot_done();
        assert_eq!(l.state(), State::Active);
        assert!(matches!(l.booted(), Some(Ok(()))));
        assert!(l.may_freeze());
        l.froze();
        assert_eq!(l.state(), State::Frozen);
    }

    #[test]
    fn slots_are_bounded_by_concurrency_and_given_back() {
        let mut l = booted(2, false);
        assert_eq!(l.admit(), Some(0));
        assert_eq!(l.admit(), Some(0));
        assert_eq!(l.admit(), None, "no third slot");
        assert!(!l.has_slot());
        assert!(!l.may_freeze(), "admitted requests keep it thawed");
        assert!(!l.release());
        assert!(l.release(), "the last release says: try a freeze");
        assert!(l.may_freeze());
    }

    #[test]
    fn a_request_thaws_a_frozen_instance_and_it_freezes_after_the_last() {
        let mut l = booted(2, false);
        l.froze();
        l.admit();
        l.admit();
        assert_eq!(l.begin(0).unwrap(), Begin::Run { thaw: true });
        l.thawed();
        l.run();
        assert_eq!(l.begin(0).unwrap(), Begin::Run { thaw: false }, "the second joins the thawed instance");
        l.run();
        l.ran();
        l.release();
        assert!(!l.may_freeze(), "one still runs");
        l.ran();
        assert!(l.release());
        assert!(l.may_freeze());
    }

    #[test]
    fn initializer_404_keeps_the_instance_and_the_next_request_retries() {
        let mut l = Lifecycle::new(1, true);
        l.listening();
        let seen = l.admit().unwrap();
        l.initialized(Err(fail(404)));
        l.boot_done();
        assert!(matches!(l.begin(seen), Err(Refused::InitFailed(_))), "the waiting request fails with the Initializer's error");
        l.release();
        assert!(l.has_slot(), "a 404 keeps the instance");
        assert_eq!(l.retiring(), None);
        let seen = l.admit().unwrap();
        assert_eq!(seen, 1);
        assert_eq!(l.begin(seen).unwrap(), Begin::Initialize { thaw: false }, "the next request retries");
    }

    #[test]
    fn initializer_404_then_500_retires_the_instance() {
        let mut l = booted(1, false);
        l.init = Init::Pending { failures: 0, last: None };
        let seen = l.admit().unwrap();
        assert_eq!(l.begin(seen).unwrap(), Begin::Initialize { thaw: false });
        l.initialized(Err(fail(404)));
        l.release();
        assert!(l.has_slot());
        let seen = l.admit().unwrap();
        assert_eq!(l.begin(seen).unwrap(), Begin::Initialize { thaw: false });
        l.initialized(Err(fail(500)));
        l.release();
        assert!(!l.takes_requests(), "a 500 ends the instance: no request may reach it");
        assert_eq!(l.retiring(), Some(Retire::Broken), "and its pool is told to retire it");
        assert!(matches!(l.begin(seen), Err(Refused::Gone)));
    }

    #[test]
    fn initializer_success_after_a_retry_serves() {
        let mut l = booted(1, false);
        l.init = Init::Pending { failures: 0, last: None };
        l.initialized(Err(fail(400)));
        let seen = l.admit().unwrap();
        assert_eq!(l.begin(seen).unwrap(), Begin::Initialize { thaw: false });
        l.initialized(Ok(()));
        assert_eq!(l.begin(seen).unwrap(), Begin::Run { thaw: false });
        assert_eq!(l.init_failures(), 0);
    }

    #[test]
    fn a_timed_out_initializer_is_not_retried() {
        let mut l = Lifecycle::new(1, true);
        l.listening();
        l.initialized(Err(Arc::new(InitError::Hook(super::super::HookError::Timeout { hook: "Initialize", secs: 3 }))));
        assert_eq!(l.retiring(), Some(Retire::Broken));
        assert!(!l.has_slot());
    }

    #[test]
    fn a_failed_boot_fails_its_waiting_requests_and_retires() {
        let mut l = Lifecycle::new(4, false);
        l.admit();
        l.boot_failed(Arc::new(StartError::NotListening { port: 9000, secs: 1 }));
        assert!(matches!(l.booted(), Some(Err(Refused::StartFailed(_)))));
        assert!(matches!(l.begin(0), Err(Refused::StartFailed(_))));
        assert!(!l.has_slot());
        assert_eq!(l.retiring(), Some(Retire::Broken));
    }

    #[test]
    fn an_exit_retires_at_once_and_the_boot_says_why() {
        let mut l = Lifecycle::new(1, false);
        l.exited(Exit { status: 137, oom_killed: false });
        assert!(l.booted().is_none(), "waiting requests get the boot's error, not a bare 'gone'");
        l.boot_failed(Arc::new(StartError::NotListening { port: 9000, secs: 1 }));
        assert!(matches!(l.booted(), Some(Err(Refused::StartFailed(_)))));
        assert_eq!(l.retiring(), Some(Retire::Exited(137)));
        l.retire(Retire::Replace);
        assert_eq!(l.retiring(), Some(Retire::Exited(137)), "the first reason stands");
        assert_eq!(l.stop(true), Some(StopPlan { alive: false, thaw: false, pre_stop: false }), "no PreStop for a dead process");
    }

    #[test]
    fn unhealthy_is_retired_only_once_frozen_and_idle() {
        let mut l = booted(1, false);
        l.admit();
        l.set_healthy(false);
        assert!(!l.has_slot(), "no new requests go to an unhealthy instance");
        assert_eq!(l.retiring(), None, "its request finishes first");
        l.release();
        assert_eq!(l.retiring(), None, "thawed: the health checks may see it recover");
        l.froze();
        assert_eq!(l.retiring(), Some(Retire::Unhealthy));
        l.thawed();
        l.set_healthy(true);
        assert!(l.has_slot());
    }

    #[test]
    fn stop_plans_pre_stop_and_thaw_once() {
        let mut l = booted(1, false);
        l.froze();
        assert_eq!(l.stop(true), Some(StopPlan { alive: true, thaw: true, pre_stop: true }));
        assert_eq!(l.state(), State::Stopping);
        assert!(!l.has_slot());
        assert!(l.stop(true).is_none(), "a second stop does nothing");
        l.gone();
        assert_eq!(l.state(), State::Dead);
        assert!(l.stop(true).is_none());
    }

    #[test]
    fn a_retired_instance_still_gets_its_stop() {
        let mut l = booted(1, false);
        l.retire(Retire::Replace);
        assert_eq!(l.state(), State::Active, "it finishes what it runs");
        assert_eq!(l.stop(false), Some(StopPlan { alive: true, thaw: false, pre_stop: false }));
        assert!(l.stop(false).is_none());
    }

    #[test]
    fn no_pre_stop_for_an_instance_that_never_booted() {
        let mut l = Lifecycle::new(1, false);
        assert_eq!(l.stop(true), Some(StopPlan { alive: true, thaw: false, pre_stop: false }));
    }
}
