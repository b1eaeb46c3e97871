//! Per-function dispatch (README, Behaviour decisions): a request goes to an instance with a free
//! concurrency slot, the busiest first so idle ones stay frozen; when all are full a new
//! instance starts (a cold start), unless the function's or the supervisor's instance cap is
//! reached (429 `ResourceExhausted`, at once). Minimum instances start at boot; instances idle
//! longer than `idleTimeout` are reclaimed with PreStop. Unhealthy instances get no new
//! requests; a pool replaced by a configuration change drains: its requests finish, then its
//! instances stop.
//!
//! The pool owns membership and admission: a request holds a [`Ticket`] on its instance and a
//! member holds a [`LivePermit`] on the supervisor's instance cap; each gives back what it
//! took when dropped. An instance tells its pool when it should leave ([`Instance::retiring`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Function, Scaling};
use crate::instance::{Call, Exhausted, Instance, InvokeError, Kernel, Launch, Reply, Retire, Sandboxed, Ticket};

#[cfg(test)]
mod tests;

/// Instances of one function, on the kernel `K` (real ones, or fakes in unit tests).
#[derive(Debug)]
pub struct Pool<K: Kernel = Sandboxed> {
    /// The function.
    pub function: Arc<Function>,
    launcher: Arc<dyn Launch<K>>,
    members: Mutex<Vec<Member<K>>>,
    /// Live instances across all pools, and their cap.
    global: Arc<GlobalCount>,
    /// Instances out of rotation that are finishing their requests or stopping.
    stopping: Mutex<tokio::task::JoinSet<()>>,
    /// Set by shutdown: no new instance may start.
    closed: AtomicBool,
    /// How many instances run; a reload may change it in place.
    scaling: Mutex<Scaling>,
    /// Where its Async invocations' records go, their retries and age; a reload may change it
    /// in place.
    async_settings: Mutex<crate::config::AsyncSettings>,
    /// Starts in progress outside the pool's lock (see [`Pool::launches_outside_lock`]),
    /// counted against `maxInstances`; changed under the lock only.
    launching: std::sync::atomic::AtomicUsize,
}

/// What a request got from the pool: a slot (`true` when on a new instance), or a claim to
/// start an instance outside the pool's lock.
enum Reserved<K: Kernel> {
    Slot(Ticket<K>, bool),
    Launch(LivePermit),
}

/// One of the pool's instances, holding its place under the supervisor's cap.
#[derive(Debug)]
struct Member<K: Kernel> {
    instance: Arc<Instance<K>>,
    _live: LivePermit,
}

/// A place under the supervisor's instance cap, given back on drop.
pub type LivePermit = OwnedSemaphorePermit;

/// The supervisor-wide instance cap (README, Behaviour decisions: default 100).
#[derive(Debug)]
pub struct GlobalCount {
    live: Arc<Semaphore>,
    max: usize,
}

impl GlobalCount {
    /// A cap of `max` instances.
    pub fn new(max: usize) -> Arc<Self> {
        let max = max.min(Semaphore::MAX_PERMITS);
        Arc::new(GlobalCount { live: Arc::new(Semaphore::new(max)), max })
    }

    /// A place for one more instance, if the cap allows it.
    fn take(&self) -> Result<LivePermit, Exhausted> {
        self.live.clone().try_acquire_owned().map_err(|_| Exhausted::Supervisor { max: self.max })
    }
}

/// Outcome of a dispatched request.
#[derive(Debug)]
pub struct Dispatched {
    /// The reply or error.
    pub result: Result<Reply, InvokeError>,
    /// Whether this request started a new instance.
    pub cold_start: bool,
    /// The instance id, when one was chosen.
    pub instance_id: Option<String>,
}

impl<K: Kernel> Pool<K> {
    /// A pool for `function`.
    pub fn new(launcher: Arc<dyn Launch<K>>, function: Arc<Function>, global: Arc<GlobalCount>) -> Arc<Self> {
        let scaling = Mutex::new(function.scaling());
        let async_settings = Mutex::new(function.async_settings());
        Arc::new(Pool {
            async_settings,
            function,
            launcher,
            members: Mutex::new(Vec::new()),
            global,
            stopping: Mutex::default(),
            closed: AtomicBool::new(false),
            scaling,
            launching: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Starts the minimum instances and waits until they are initialized and frozen, then
    /// starts the idle reaper.
    pub async fn start(self: &Arc<Self>) -> Result<(), InvokeError> {
        let mut boots = Vec::new();
        for _ in 0..self.scaling().min_instances {
            boots.push(self.add_locked(&mut self.members.lock().expect("pool"), true)?);
        }
        for inst in boots {
            inst.wait_settled().await?;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(pool) = me.upgrade() else { return };
                let mut period = (pool.scaling().idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
                if let Some(after) = pool.function.gpu_hibernate_after {
                    period = period.min((after / 4).max(Duration::from_millis(100)));
                }
                pool.reclaim_idle();
                pool.keep_minimum();
                pool.hibernate_idle();
                drop(pool);
                tokio::time::sleep(period).await;
            }
        });
        Ok(())
    }

    /// Runs `call` on an instance.
    pub async fn dispatch(self: &Arc<Self>, call: Call) -> Dispatched {
        if self.function.container.as_ref().is_some_and(|c| c.per_event) {
            return self.run_event(call).await;
        }
        let (ticket, cold_start) = match self.reserve() {
            Ok(Reserved::Slot(t, cold)) => (t, cold),
            Ok(Reserved::Launch(live)) => match self.launch_outside_lock(live).await {
                Ok(t) => (t, true),
                Err(e) => return Dispatched { result: Err(e), cold_start: true, instance_id: None },
            },
            Err(e) => return Dispatched { result: Err(e), cold_start: false, instance_id: None },
        };
        let instance_id = Some(ticket.instance().id.clone());
        let result = ticket.invoke(call).await;
        Dispatched { result, cold_start, instance_id }
    }

    /// Runs `call` in an instance of its own, started with the event in its environment
    /// (a custom container without web server mode). It is a member while it runs, under the
    /// same caps, and holds its only slot, so no other request is given to it.
    async fn run_event(self: &Arc<Self>, call: Call) -> Dispatched {
        let failed = |e| Dispatched { result: Err(e), cold_start: false, instance_id: None };
        if let Err(e) = crate::instance::event_text(&call) {
            return failed(e);
        }
        let launched = self.launch_locked(&mut self.members.lock().expect("pool"), false, Some(&call));
        let inst = match launched {
            Ok(i) => i,
            Err(e) => return failed(e),
        };
        let ticket = inst.admit_first();
        let instance_id = Some(inst.id.clone());
        let result = inst.run_once(call).await;
        drop(ticket);
        self.remove(&inst);
        self.track_stop(async move { inst.stop().await });
        Dispatched { result, cold_start: true, instance_id }
    }

    /// Takes a slot on the busiest instance that has one, or on a new instance; both under
    /// one lock, so two requests never race for the last slot or both see "all full".
    fn reserve(self: &Arc<Self>) -> Result<Reserved<K>, InvokeError> {
        let mut members = self.members.lock().expect("pool");
        let busiest = members.iter().filter(|m| m.instance.has_slot()).max_by_key(|m| (m.instance.provisioned, m.instance.load()));
        if let Some(ticket) = busiest.and_then(|m| m.instance.admit()) {
            return Ok(Reserved::Slot(ticket, false));
        }
        // The busiest filled up or stopped between the look and the admission: any other.
        if let Some(ticket) = members.iter().filter(|m| m.instance.has_slot()).find_map(|m| m.instance.admit()) {
            return Ok(Reserved::Slot(ticket, false));
        }
        if self.launches_outside_lock() {
            let live = self.claim_locked(&members)?;
            self.launching.fetch_add(1, Ordering::AcqRel);
            return Ok(Reserved::Launch(live));
        }
        let inst = self.launch_locked(&mut members, false, None)?;
        // Admitted before its boot begins, so the boot hands the instance to this request
        // instead of freezing it first.
        let ticket = inst.admit_first();
        self.boot_and_watch(inst);
        Ok(Reserved::Slot(ticket, true))
    }

    /// Whether this function's starts run outside the pool's lock: those with device grants,
    /// whose OCI hooks may take seconds (other requests, to it and to other functions, must
    /// not wait on the lock meanwhile).
    fn launches_outside_lock(&self) -> bool {
        self.function.gpu.is_some() || !self.function.devices.is_empty()
    }

    /// Starts an instance on a blocking thread, the pool's lock not held, then makes it a
    /// member admitted to the request that claimed it (`live`).
    async fn launch_outside_lock(self: &Arc<Self>, live: LivePermit) -> Result<Ticket<K>, InvokeError> {
        let (launcher, function) = (self.launcher.clone(), self.function.clone());
        let launched = tokio::task::spawn_blocking(move || launcher.launch(function, false, None)).await;
        let mut members = self.members.lock().expect("pool");
        self.launching.fetch_sub(1, Ordering::AcqRel);
        let inst = match launched {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => return Err(crate::instance::Internal::Task(e).into()),
        };
        let ticket = inst.admit_first();
        members.push(Member { instance: inst.clone(), _live: live });
        drop(members);
        if self.closed.load(Ordering::Acquire) {
            // Closed meanwhile: it goes as the others went.
            self.drain();
        }
        self.boot_and_watch(inst);
        Ok(ticket)
    }

    /// Checks the caps for one more instance (the pool's lock held): a place under the
    /// supervisor's cap.
    fn claim_locked(&self, members: &[Member<K>]) -> Result<LivePermit, InvokeError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(InvokeError::Gone);
        }
        if let Some(max) = self.scaling().max_instances {
            let live = members.iter().filter(|m| m.instance.takes_requests()).count() + self.launching.load(Ordering::Acquire);
            if live >= max {
                return Err(Exhausted::Function { function: self.function.name.clone(), live, max }.into());
            }
        }
        Ok(self.global.take()?)
    }

    /// Starts one instance into `members` (the pool's lock held) and boots it.
    fn add_locked(self: &Arc<Self>, members: &mut Vec<Member<K>>, provisioned: bool) -> Result<Arc<Instance<K>>, InvokeError> {
        let inst = self.launch_locked(members, provisioned, None)?;
        self.boot_and_watch(inst.clone());
        Ok(inst)
    }

    /// Starts one instance's process into `members` (the pool's lock held), for `call` alone
    /// when given.
    fn launch_locked(&self, members: &mut Vec<Member<K>>, provisioned: bool, call: Option<&Call>) -> Result<Arc<Instance<K>>, InvokeError> {
        let live = self.claim_locked(members)?;
        let instance = self.launcher.launch(self.function.clone(), provisioned, call)?;
        members.push(Member { instance: instance.clone(), _live: live });
        Ok(instance)
    }

    /// Boots `instance` in the background, then waits until it should leave the pool.
    fn boot_and_watch(self: &Arc<Self>, instance: Arc<Instance<K>>) {
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let _ = instance.boot().await;
            let why = instance.retiring().await;
            if let Some(p) = pool.upgrade() {
                p.on_retiring(&instance, why);
            }
        });
    }

    /// An instance said it should leave: whatever ended its process (crash, OOM kill), a
    /// failed start or Initializer, a hung request, a client gone (replaced), or it froze
    /// unhealthy (nothing would thaw it to see it recover).
    fn on_retiring(self: &Arc<Self>, inst: &Arc<Instance<K>>, why: Retire) {
        match why {
            Retire::Replace => self.replace(inst),
            Retire::Exited(code) => {
                if self.remove(inst) {
                    tracing::warn!(function = %self.function.name, instance = %inst.id, code, "instance exited");
                    self.stop_detached(inst.clone());
                }
            }
            Retire::Unhealthy => {
                if self.remove(inst) {
                    tracing::warn!(function = %self.function.name, instance = %inst.id, "retiring unhealthy instance");
                    self.stop_detached(inst.clone());
                }
            }
            Retire::Broken => {
                if self.remove(inst) {
                    self.stop_detached(inst.clone());
                }
            }
        }
    }

    /// Takes `inst` out of the pool (giving back its place under the cap); whether it was in.
    fn remove(&self, inst: &Arc<Instance<K>>) -> bool {
        let mut m = self.members.lock().expect("pool");
        let before = m.len();
        m.retain(|x| !Arc::ptr_eq(&x.instance, inst));
        m.len() < before
    }

    /// Replaces an instance whose client went away (README, Behaviour decisions): a new instance starts at
    /// once and the old one is stopped when the new one is up.
    fn replace(self: &Arc<Self>, old: &Arc<Instance<K>>) {
        if !self.remove(old) {
            return;
        }
        let fresh = self.add_locked(&mut self.members.lock().expect("pool"), old.provisioned).ok();
        let old = old.clone();
        self.track_stop(async move {
            if let Some(f) = fresh {
                let _ = f.wait_booted().await;
            }
            old.stop().await;
        });
    }

    /// Stops `inst` once its requests finished; [`Pool::shutdown`] waits for it.
    fn stop_detached(&self, inst: Arc<Instance<K>>) {
        self.track_stop(async move {
            inst.drained().await;
            inst.stop().await;
        });
    }

    fn track_stop(&self, stop: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut stopping = self.stopping.lock().expect("pool");
        while stopping.try_join_next().is_some() {}
        stopping.spawn(stop);
    }

    /// Takes every instance out of rotation; each stops (PreStop first) once its requests
    /// finished.
    pub fn drain(&self) {
        self.drain_with(false);
    }

    /// [`Pool::drain`]; at `shutdown`, instances still starting are killed rather than waited
    /// for (a start is not a request: an Initializer may run for minutes; the requests that
    /// wait for it get an error).
    fn drain_with(&self, shutdown: bool) {
        let all = std::mem::take(&mut *self.members.lock().expect("pool"));
        let per_event = self.function.container.as_ref().is_some_and(|c| c.per_event);
        for m in all {
            if shutdown && !per_event && matches!(m.instance.state(), crate::instance::State::Starting | crate::instance::State::Initializing) {
                let inst = m.instance;
                self.track_stop(async move {
                    inst.kill_now().await;
                    inst.stop().await;
                });
            } else {
                self.stop_detached(m.instance);
            }
        }
    }

    /// Reclaims on-demand instances idle past `idleTimeout` (minimum instances stay).
    pub fn reclaim_idle(&self) {
        let idle_timeout = self.scaling().idle_timeout;
        let victims = self.take_members(|i| !i.provisioned && i.counts_as_member() && i.load() == 0 && i.idle_for() >= idle_timeout);
        for v in victims {
            tracing::info!(function = %self.function.name, instance = %v.id, "idle reclaim");
            self.stop_detached(v);
        }
    }

    /// Hibernates the GPU of instances idle past `gpuHibernateAfter` (in the background).
    fn hibernate_idle(&self) {
        if self.function.gpu_hibernate_after.is_none() {
            return;
        }
        let due: Vec<Arc<Instance<K>>> =
            self.members.lock().expect("pool").iter().filter(|m| m.instance.should_hibernate()).map(|m| m.instance.clone()).collect();
        for inst in due {
            tokio::spawn(inst.hibernate());
        }
    }

    /// Removes the members `pick` chooses; their instances.
    fn take_members(&self, pick: impl Fn(&Instance<K>) -> bool) -> Vec<Arc<Instance<K>>> {
        let mut m = self.members.lock().expect("pool");
        let (taken, kept): (Vec<Member<K>>, Vec<Member<K>>) = std::mem::take(&mut *m).into_iter().partition(|x| pick(&x.instance));
        *m = kept;
        taken.into_iter().map(|x| x.instance).collect()
    }

    /// Starts minimum instances to replace any that crashed or were retired.
    fn keep_minimum(self: &Arc<Self>) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let mut m = self.members.lock().expect("pool");
        let live = m.iter().filter(|x| x.instance.provisioned && x.instance.counts_as_member()).count();
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

    /// Its Async settings now.
    pub fn async_settings(&self) -> crate::config::AsyncSettings {
        self.async_settings.lock().expect("pool").clone()
    }

    /// Sets its Async settings (a reload that changed only those keeps the instances); whether
    /// they changed.
    pub fn set_async_settings(&self, new: crate::config::AsyncSettings) -> bool {
        let mut s = self.async_settings.lock().expect("pool");
        if *s == new {
            return false;
        }
        *s = new;
        true
    }

    /// Applies new scaling settings to the running instances: surplus minimum instances are
    /// stopped at once (PreStop first; idle ones before busy ones), missing ones started.
    /// Returns whether anything changed.
    pub fn rescale(self: &Arc<Self>, new: Scaling) -> bool {
        let old = std::mem::replace(&mut *self.scaling.lock().expect("pool"), new);
        if old == new {
            return false;
        }
        let surplus: Vec<Arc<Instance<K>>> = {
            let m = self.members.lock().expect("pool");
            let mut provisioned: Vec<Arc<Instance<K>>> =
                m.iter().map(|x| &x.instance).filter(|i| i.provisioned && i.counts_as_member()).cloned().collect();
            provisioned.sort_by_key(|i| std::cmp::Reverse(i.load() == 0));
            provisioned.into_iter().skip(new.min_instances).collect()
        };
        let surplus = self.take_members(|i| surplus.iter().any(|s| std::ptr::eq(&**s, i)));
        for inst in surplus {
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
    pub fn instances(&self) -> Vec<Arc<Instance<K>>> {
        self.members.lock().expect("pool").iter().map(|m| m.instance.clone()).collect()
    }

    /// Stops every instance (PreStop first, once its requests finished) and waits for them;
    /// the pool then stays empty.
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        self.drain_with(true);
        let mut stops = std::mem::take(&mut *self.stopping.lock().expect("pool"));
        while stops.join_next().await.is_some() {}
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
