//! Per-function dispatch (fc-spec §5.3): a request goes to an instance with a free
//! concurrency slot, the busiest first so idle ones stay frozen; when all are full a new
//! instance starts (a cold start), unless the function's or the supervisor's instance cap is
//! reached (429 `ResourceExhausted`, at once). Minimum instances start at boot; instances idle
//! longer than `idleTimeout` are reclaimed with PreStop. Unhealthy instances get no new
//! requests; a pool replaced by a configuration change drains: its requests finish, then its
//! instances stop.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{Function, Scaling};
use crate::host::Host;
use crate::instance::{Call, Instance, InvokeError, Reply, StartError};

/// Instances of one function.
#[derive(Debug)]
pub struct Pool {
    /// The function.
    pub function: Arc<Function>,
    host: Arc<Host>,
    members: Mutex<Vec<Arc<Instance>>>,
    /// Live instances across all pools, and their cap.
    global: Arc<GlobalCount>,
    /// Instances out of rotation that are finishing their requests or stopping.
    stopping: Mutex<tokio::task::JoinSet<()>>,
    /// Set by shutdown: no new instance may start.
    closed: AtomicBool,
    /// How many instances run; a reload may change it in place.
    scaling: Mutex<Scaling>,
}

/// The supervisor-wide instance count and cap.
#[derive(Debug)]
pub struct GlobalCount {
    live: AtomicUsize,
    /// Cap (fc-spec §8.7 REC: default 100).
    pub max: usize,
}

impl GlobalCount {
    /// A counter with `max` as the cap.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(GlobalCount { live: AtomicUsize::new(0), max })
    }
}

/// A request slot on an instance; released on drop.
struct Slot(Arc<Instance>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.reserved.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Outcome of a dispatched request.
pub struct Dispatched {
    /// The reply or error.
    pub result: Result<Reply, InvokeError>,
    /// Whether this request started a new instance.
    pub cold_start: bool,
    /// The instance id, when one was chosen.
    pub instance_id: Option<String>,
}

impl Dispatched {
    /// The outcome label for metrics: `success`, or FC's error type or code.
    pub fn outcome(&self, http_trigger: bool) -> &'static str {
        match &self.result {
            Ok(r) if r.is_function_error(http_trigger) => "UnhandledInvocationError",
            Ok(_) => "success",
            Err(InvokeError::Initialization(_)) => "InitializationError",
            Err(InvokeError::Timeout(_)) => "FunctionTimeoutError",
            Err(InvokeError::Crashed { .. }) => "FunctionUnhandledError",
            Err(InvokeError::OutOfMemory { .. }) => "FunctionOOMError",
            Err(InvokeError::ResponseTooLarge { .. }) => "FunctionUnhandledError",
            Err(InvokeError::Canceled) => "ClientClosedRequest",
            Err(InvokeError::Throttled(_)) => "ResourceExhausted",
            Err(InvokeError::Gone) => "ResourceThrottled",
            Err(InvokeError::Internal(_)) => "InternalServerError",
        }
    }
}

impl Pool {
    /// A pool for `function`.
    pub fn new(host: Arc<Host>, function: Arc<Function>, global: Arc<GlobalCount>) -> Arc<Self> {
        let scaling = Mutex::new(function.scaling());
        Arc::new(Pool { function, host, members: Mutex::new(Vec::new()), global, stopping: Mutex::default(), closed: AtomicBool::new(false), scaling })
    }

    /// Starts the minimum instances and waits until they are initialized and frozen, then
    /// starts the idle reaper.
    pub async fn start(self: &Arc<Self>) -> Result<(), StartError> {
        let mut boots = Vec::new();
        for _ in 0..self.scaling().min_instances {
            let added = self.add_locked(&mut self.members.lock().expect("pool"), true);
            let inst = added.map_err(|e| StartError::Initializer(e.to_string()))?;
            boots.push(inst);
        }
        for inst in boots {
            inst.wait_booted().await.map_err(|e| StartError::Initializer(e.to_string()))?;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(pool) = me.upgrade() else { return };
                let period = (pool.scaling().idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
                pool.reclaim_idle();
                pool.keep_minimum();
                drop(pool);
                tokio::time::sleep(period).await;
            }
        });
        Ok(())
    }

    /// Runs `call` on an instance.
    pub async fn dispatch(self: &Arc<Self>, mut call: Call) -> Dispatched {
        let (slot, cold_start) = match self.reserve() {
            Ok(x) => x,
            Err(e) => return Dispatched { result: Err(e), cold_start: false, instance_id: None },
        };
        let inst = slot.0.clone();
        call.init_failures_seen = inst.init_failures();
        let result = inst.invoke(call).await;
        drop(slot);
        if matches!(result, Err(InvokeError::Canceled)) {
            self.replace(&inst);
        } else if !inst.usable() {
            self.retire(&inst);
        }
        Dispatched { result, cold_start, instance_id: Some(inst.id.clone()) }
    }

    /// Takes a slot on the busiest instance that has one, or on a new instance; both under
    /// one lock, so two requests never race for the last slot or both see "all full".
    fn reserve(self: &Arc<Self>) -> Result<(Slot, bool), InvokeError> {
        let conc = self.function.concurrency;
        let mut members = self.members.lock().expect("pool");
        let best = members
            .iter()
            .filter(|i| i.usable() && i.healthy())
            .filter_map(|i| {
                let r = i.reserved.load(Ordering::Acquire);
                (r < conc).then_some(((i.provisioned, r), i))
            })
            .max_by_key(|(key, _)| *key)
            .map(|(_, i)| i.clone());
        let (inst, cold) = match best {
            Some(inst) => (inst, false),
            None => (self.add_locked(&mut members, false)?, true),
        };
        inst.reserved.fetch_add(1, Ordering::AcqRel);
        Ok((Slot(inst), cold))
    }

    /// Spawns one instance into `members` (the pool's lock held) and boots it in the background.
    fn add_locked(self: &Arc<Self>, members: &mut Vec<Arc<Instance>>, provisioned: bool) -> Result<Arc<Instance>, InvokeError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(InvokeError::Gone);
        }
        let live = members.iter().filter(|i| i.usable() && i.healthy()).count();
        if let Some(max) = self.scaling().max_instances {
            if live >= max {
                return Err(InvokeError::Throttled(format!(
                    "Reserve resource exceeded limit: function {} has {live} of its maxInstances {max} instances busy",
                    self.function.name
                )));
            }
        }
        if self.global.live.fetch_add(1, Ordering::AcqRel) >= self.global.max {
            self.global.live.fetch_sub(1, Ordering::AcqRel);
            return Err(InvokeError::Throttled(format!(
                "Reserve resource exceeded limit: the supervisor runs its maximum of {} instances",
                self.global.max
            )));
        }
        let inst = match Instance::spawn(&self.host, self.function.clone(), provisioned) {
            Ok(i) => i,
            Err(e) => {
                self.global.live.fetch_sub(1, Ordering::AcqRel);
                return Err(InvokeError::Initialization(e.to_string()));
            }
        };
        members.push(inst.clone());
        let pool = Arc::downgrade(self);
        let booting = inst.clone();
        tokio::spawn(async move {
            if booting.boot().await.is_err() {
                if let Some(p) = pool.upgrade() {
                    p.retire(&booting);
                }
                return;
            }
            // Whatever ends the process (crash, OOM kill), the instance leaves the pool; so does
            // one that froze unhealthy, since nothing would thaw it to see it recover.
            tokio::select! {
                code = booting.exited() => {
                    if let Some(p) = pool.upgrade() {
                        if p.remove(&booting) {
                            tracing::warn!(function = %p.function.name, instance = %booting.id, code, "instance exited");
                            p.stop_detached(booting);
                        }
                    }
                }
                () = booting.sick.notified() => {
                    if let Some(p) = pool.upgrade() {
                        tracing::warn!(function = %p.function.name, instance = %booting.id, "retiring unhealthy instance");
                        p.retire(&booting);
                    }
                }
            }
        });
        Ok(inst)
    }

    fn remove(&self, inst: &Arc<Instance>) -> bool {
        let mut m = self.members.lock().expect("pool");
        let before = m.len();
        m.retain(|i| !Arc::ptr_eq(i, inst));
        let removed = m.len() < before;
        if removed {
            self.global.live.fetch_sub(1, Ordering::AcqRel);
        }
        removed
    }

    /// Takes an unusable instance out of rotation and stops it once its requests finished.
    fn retire(&self, inst: &Arc<Instance>) {
        if self.remove(inst) {
            self.stop_detached(inst.clone());
        }
    }

    /// Replaces an instance whose client went away (fc-spec §5.7): a new instance starts at
    /// once and the old one is stopped when the new one is up.
    fn replace(self: &Arc<Self>, old: &Arc<Instance>) {
        if !self.remove(old) {
            return;
        }
        let fresh = self.add_locked(&mut self.members.lock().expect("pool"), old.provisioned).ok();
        let old = old.clone();
        let mut stopping = self.stopping.lock().expect("pool");
        while stopping.try_join_next().is_some() {}
        stopping.spawn(async move {
            if let Some(f) = fresh {
                let _ = f.wait_booted().await;
            }
            old.stop().await;
        });
    }

    /// Stops `inst` once its requests finished; [`Pool::shutdown`] waits for it.
    fn stop_detached(&self, inst: Arc<Instance>) {
        let mut stopping = self.stopping.lock().expect("pool");
        while stopping.try_join_next().is_some() {}
        stopping.spawn(async move {
            while inst.reserved.load(Ordering::Acquire) > 0 && inst.usable() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            inst.stop().await;
        });
    }

    /// Takes every instance out of rotation; each stops (PreStop first) once its requests
    /// finished.
    pub fn drain(&self) {
        let all: Vec<Arc<Instance>> = std::mem::take(&mut *self.members.lock().expect("pool"));
        self.global.live.fetch_sub(all.len(), Ordering::AcqRel);
        for inst in all {
            self.stop_detached(inst);
        }
    }

    /// Reclaims on-demand instances idle past `idleTimeout` (minimum instances stay).
    pub fn reclaim_idle(&self) {
        let idle_timeout = self.scaling().idle_timeout;
        let victims: Vec<Arc<Instance>> = {
            let mut m = self.members.lock().expect("pool");
            let mut victims = Vec::new();
            m.retain(|i| {
                let idle = i.reserved.load(Ordering::Acquire) == 0 && i.idle_for() >= idle_timeout;
                if idle && !i.provisioned && i.usable() {
                    victims.push(i.clone());
                    false
                } else {
                    true
                }
            });
            victims
        };
        for v in victims {
            self.global.live.fetch_sub(1, Ordering::AcqRel);
            tracing::info!(function = %self.function.name, instance = %v.id, "idle reclaim");
            self.stop_detached(v);
        }
    }

    /// Starts minimum instances to replace any that crashed or were retired.
    fn keep_minimum(self: &Arc<Self>) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let mut m = self.members.lock().expect("pool");
        let live = m.iter().filter(|i| i.provisioned && i.usable()).count();
        for _ in live..self.scaling().min_instances {
            match self.add_locked(&mut m, true) {
                Ok(i) => tracing::info!(function = %self.function.name, instance = %i.id, "starting a minimum instance"),
                Err(e) => {
                    tracing::warn!(function = %self.function.name, "cannot start a minimum instance: {e}");
                    break;
                }
            }
        }
    }

    /// The current scaling settings.
    pub fn scaling(&self) -> Scaling {
        *self.scaling.lock().expect("pool")
    }

    /// Applies new scaling settings to the running instances: surplus minimum instances are
    /// stopped at once (PreStop first; idle ones before busy ones), missing ones started.
    /// Returns whether anything changed.
    pub fn rescale(self: &Arc<Self>, new: Scaling) -> bool {
        let old = std::mem::replace(&mut *self.scaling.lock().expect("pool"), new);
        if old == new {
            return false;
        }
        let surplus: Vec<Arc<Instance>> = {
            let mut m = self.members.lock().expect("pool");
            let mut provisioned: Vec<Arc<Instance>> = m.iter().filter(|i| i.provisioned && i.usable()).cloned().collect();
            provisioned.sort_by_key(|i| std::cmp::Reverse(i.reserved.load(Ordering::Acquire) == 0));
            let surplus: Vec<Arc<Instance>> = provisioned.into_iter().skip(new.min_instances).collect();
            m.retain(|i| !surplus.iter().any(|s| Arc::ptr_eq(s, i)));
            surplus
        };
        for inst in surplus {
            self.global.live.fetch_sub(1, Ordering::AcqRel);
            tracing::info!(function = %self.function.name, instance = %inst.id, "minimum lowered: stopping a surplus instance");
            self.stop_detached(inst);
        }
        self.keep_minimum();
        true
    }

    /// Whether a closed pool has nothing left to stop (it can be forgotten).
    pub fn finished(&self) -> bool {
        let mut stopping = self.stopping.lock().expect("pool");
        while stopping.try_join_next().is_some() {}
        self.closed.load(Ordering::Acquire) && stopping.is_empty() && self.members.lock().expect("pool").is_empty()
    }

    /// Every instance (for the admin API).
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        self.members.lock().expect("pool").clone()
    }

    /// Stops every instance (PreStop first, once its requests finished) and waits for them;
    /// the pool then stays empty.
    pub async fn shutdown(&self) {
        self.close();
        self.reclaim_all().await;
    }

    /// Takes the pool out of service (replaced by a new configuration): no instance starts
    /// any more, and the ones it has stop once their requests finished.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.drain();
    }

    /// Reclaims every instance now (PreStop first, once its requests finished) and waits
    /// for them; later requests start new ones.
    pub async fn reclaim_all(&self) {
        self.drain();
        let mut stops = std::mem::take(&mut *self.stopping.lock().expect("pool"));
        while stops.join_next().await.is_some() {}
    }
}
