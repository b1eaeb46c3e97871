//! The thin cgroupfs layer: one supervisor root, one cgroup per instance, and the few files
//! fcsup needs (`cgroup.freeze`, `cgroup.events`, `cgroup.kill`, `cpu.stat`, limits).
//!
//! Freeze and thaw return only once `cgroup.events` confirms the new state: the file is read
//! right after the write, then watched for `POLLPRI` with a short re-check, because the kernel
//! rate-limits those notifications (see `notes/cgroups.md` §3).
//! On hybrid hosts the memory, pids and cpu limits go to the v1 hierarchies instead.
//!
//! Every instance cgroup also gets its device rules ([`devices`]) before anything runs in it:
//! a device BPF program on cgroup2 and, on hybrid hosts, the same rules in a v1 `devices`
//! cgroup the instance joins with the others.

pub mod devices;
mod memory;
mod mount;
mod stat;

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use devices::{Access, DeviceError, DeviceKind, DeviceRule, DeviceRules};
pub use memory::{MemoryMeter, MemorySource};
pub use mount::{own_v1_paths, Hierarchy, Mode};
pub use stat::{CpuStat, Events};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Errors of the cgroup layer; each names the file and, for writes, the data.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// An I/O call on a cgroup file failed.
    #[error("failed to {op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A write to a cgroup file failed.
    #[error("failed to write {data:?} to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        data: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No cgroup2 mount exists.
    #[error("no cgroup2 mount in {0}: fcsup needs cgroup v2 (unified, or hybrid with cgroup2 mounted)")]
    NoCgroup2(PathBuf),
    /// The device rules could not be made or applied.
    #[error(transparent)]
    Devices(#[from] DeviceError),
    /// A state change was not confirmed in time.
    #[error("{path} did not report {what} within {timeout:?}")]
    Timeout {
        /// The cgroup.
        path: PathBuf,
        /// The awaited state.
        what: &'static str,
        /// How long fcsup waited.
        timeout: Duration,
    },
}

/// Result of the cgroup layer.
pub type Result<T, E = CgroupError> = std::result::Result<T, E>;

/// How long a freeze, thaw or kill may take before it is reported as stuck.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest re-check interval while waiting on `cgroup.events` (notifications are rate-limited).
const RECHECK: Duration = Duration::from_millis(1);
/// First re-check interval.
const FIRST_RECHECK: Duration = Duration::from_micros(25);

/// Resource limits for one instance.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Memory in bytes.
    pub memory_bytes: Option<u64>,
    /// Maximum number of tasks.
    pub pids_max: Option<u64>,
    /// CPU in millicores (1000 = one vCPU).
    pub cpu_millis: Option<u64>,
    /// Which device nodes the instance may use; by default runc's list
    /// ([`DeviceRules::runc_default`]).
    pub devices: DeviceRules,
}

/// Where each limit is enforced on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Through the cgroup2 controller.
    V2,
    /// Through a v1 hierarchy (hybrid hosts).
    V1,
    /// Not enforced on this host.
    No,
}

/// What the supervisor root can enforce.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Capabilities {
    /// Memory limit.
    pub memory: Enforcement,
    /// Pids limit.
    pub pids: Enforcement,
    /// CPU quota.
    pub cpu: Enforcement,
    /// Device rules: `v2` when the device BPF program loads (on hybrid hosts the v1 `devices`
    /// controller gets the rules too), `v1` when only that controller can.
    pub devices: Enforcement,
}

/// The supervisor's root cgroup; instance cgroups are created beneath it.
#[derive(Debug)]
pub struct CgroupRoot {
    v2: PathBuf,
    /// (controller, v1 directory) for memory/pids/cpu on hybrid hosts.
    v1: Vec<(&'static str, PathBuf)>,
    caps: Capabilities,
    mode: Mode,
    /// The device programs loaded so far, one per distinct rule set.
    programs: devices::ProgramCache,
}

impl CgroupRoot {
    /// Opens (creating it if needed) the root `name` under the cgroup2 mount of `hier`, and on
    /// hybrid hosts the matching directories under the caller's own v1 groups.
    pub fn open(hier: &Hierarchy, name: &str, proc_self_cgroup: &str) -> Result<Self> {
        let v2 = hier.v2.join(name.trim_start_matches('/'));
        mkdir_all(&v2)?;
        let mut caps = Capabilities { memory: Enforcement::No, pids: Enforcement::No, cpu: Enforcement::No, devices: Enforcement::No };
        let mut v1 = Vec::new();
        match hier.mode {
            Mode::Unified => {
                // Best effort: a delegated subtree may refuse some controllers.
                let parent = v2.parent().unwrap_or(&hier.v2);
                for ctrl in ["memory", "pids", "cpu"] {
                    let _ = std::fs::write(parent.join("cgroup.subtree_control"), format!("+{ctrl}"));
                    if std::fs::write(v2.join("cgroup.subtree_control"), format!("+{ctrl}")).is_ok() {
                        let e = Enforcement::V2;
                        match ctrl {
                            "memory" => caps.memory = e,
                            "pids" => caps.pids = e,
                            _ => caps.cpu = e,
                        }
                    }
                }
            }
            Mode::Hybrid => {
                let own = own_v1_paths(proc_self_cgroup);
                for ctrl in ["memory", "pids", "cpu", "devices"] {
                    let Some(mnt) = hier.v1.get(ctrl) else { continue };
                    let base = own.get(ctrl).map(|p| p.trim_start_matches('/')).unwrap_or("");
                    let dir = mnt.join(base).join(name.trim_start_matches('/'));
                    if mkdir_all(&dir).is_ok() {
                        match ctrl {
                            "memory" => caps.memory = Enforcement::V1,
                            "pids" => caps.pids = Enforcement::V1,
                            "cpu" => caps.cpu = Enforcement::V1,
                            _ => caps.devices = Enforcement::V1,
                        }
                        v1.push((ctrl, dir));
                    }
                }
            }
        }
        let mut root = CgroupRoot { v2, v1, caps, mode: hier.mode, programs: devices::ProgramCache::default() };
        root.cap_tasks();
        root.probe_device_program();
        Ok(root)
    }

    /// Loads runc's default device program now (so the first start does not pay for it) and
    /// finds out whether this kernel takes device programs at all: where it does not (no
    /// `CONFIG_CGROUP_BPF`, a sandboxed kernel, no privilege for `bpf(2)`), instances start
    /// without one, with a warning, rather than not at all.
    fn probe_device_program(&mut self) {
        let loaded = DeviceRules::runc_default().effective().map_err(CgroupError::from).and_then(|e| Ok(self.programs.get(&e)?));
        match loaded {
            Ok(_) => self.caps.devices = Enforcement::V2,
            Err(e) => tracing::warn!(
                "device rules are {} on this host: {e}",
                if self.caps.devices == Enforcement::V1 { "enforced only through the v1 devices controller" } else { "NOT enforced" }
            ),
        }
    }

    /// Every instance has its own `pids.max`, but together they could still take every pid
    /// of the host (100 instances × 1024 > the usual 32768): the root is capped at three
    /// quarters of what the kernel allows, leaving the rest to the host.
    fn cap_tasks(&self) {
        let pid_max = procfs::sys::kernel::pid_max().ok().and_then(|n| u64::try_from(n).ok());
        let threads_max = procfs::sys::kernel::threads_max().ok().map(u64::from);
        let Some(limit) = [pid_max, threads_max].into_iter().flatten().min() else { return };
        let cap = (limit * 3 / 4).to_string();
        let dir = match self.caps.pids {
            Enforcement::V2 => Some(self.v2.clone()),
            Enforcement::V1 => self.v1.iter().find(|(c, _)| *c == "pids").map(|(_, d)| d.clone()),
            Enforcement::No => None,
        };
        if let Some(d) = dir {
            if let Err(e) = std::fs::write(d.join("pids.max"), &cap) {
                tracing::warn!("cannot cap the instances' tasks at {cap} in {}: {e}", d.display());
            }
        }
    }

    /// The root's cgroup2 directory.
    pub fn path(&self) -> &Path {
        &self.v2
    }

    /// Which limits this root can enforce.
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// Unified or hybrid.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Creates the cgroup of one instance and applies `limits`, device rules included: the
    /// device program is attached here, before any task can be in the cgroup (the instance's
    /// process is cloned into it with `CLONE_INTO_CGROUP`, and joins the v1 cgroups, the
    /// `devices` one included, as its first step, before it makes its `/dev`).
    pub fn create(&self, id: &str, limits: &Limits) -> Result<Cgroup> {
        let path = self.v2.join(id);
        std::fs::create_dir(&path).map_err(|source| CgroupError::Io { op: "create", path: path.clone(), source })?;
        let mut cg = Cgroup::open_dir(path)?;
        let result = (|| {
            let devices = if self.caps.devices == Enforcement::No { None } else { Some(limits.devices.effective()?) };
            if let (Some(rules), Enforcement::V2) = (&devices, self.caps.devices) {
                self.programs.attach(rules, cg.dir.as_fd())?;
            }
            if self.mode == Mode::Unified {
                if let (Some(m), Enforcement::V2) = (limits.memory_bytes, self.caps.memory) {
                    write_file(&cg.path.join("memory.max"), &m.to_string())?;
                    let _ = std::fs::write(cg.path.join("memory.swap.max"), "0");
                }
                if let (Some(p), Enforcement::V2) = (limits.pids_max, self.caps.pids) {
                    write_file(&cg.path.join("pids.max"), &p.to_string())?;
                }
                if let (Some(c), Enforcement::V2) = (limits.cpu_millis, self.caps.cpu) {
                    let limited = format!("{} 100000", c * 100);
                    write_file(&cg.path.join("cpu.max"), &limited)?;
                    cg.cpu_quota = CpuQuota::open(&cg.path.join("cpu.max"), limited, "max 100000");
                }
            }
            for (ctrl, root) in &self.v1 {
                let dir = root.join(id);
                if *ctrl == "devices" {
                    let Some(rules) = &devices else { continue };
                    std::fs::create_dir(&dir).map_err(|source| CgroupError::Io { op: "create", path: dir.clone(), source })?;
                    cg.v1_dirs.push(dir.clone());
                    for (file, line) in rules.v1_writes() {
                        write_file(&dir.join(file), &line)?;
                    }
                    let procs = dir.join("tasks");
                    let f = File::options().write(true).open(&procs).map_err(|source| CgroupError::Io { op: "open", path: procs, source })?;
                    cg.v1_procs.push(f);
                    continue;
                }
                let setting = match *ctrl {
                    "memory" => limits.memory_bytes.map(|m| ("memory.limit_in_bytes", m.to_string())),
                    "pids" => limits.pids_max.map(|p| ("pids.max", p.to_string())),
                    _ => limits.cpu_millis.map(|c| ("cpu.cfs_quota_us", (c * 100).to_string())),
                };
                let Some((file, value)) = setting else { continue };
                std::fs::create_dir(&dir).map_err(|source| CgroupError::Io { op: "create", path: dir.clone(), source })?;
                cg.v1_dirs.push(dir.clone());
                if *ctrl == "cpu" {
                    write_file(&dir.join("cpu.cfs_period_us"), "100000")?;
                }
                write_file(&dir.join(file), &value)?;
                if *ctrl == "cpu" {
                    cg.cpu_quota = CpuQuota::open(&dir.join(file), value, "-1");
                }
                // The child (single-threaded then) writes "0" to `tasks`, which moves just the
                // calling thread: the kernel then skips the global threadgroup lock, whose first
                // writer after a quiet spell waits for an RCU grace period (~10 ms here).
                let procs = dir.join("tasks");
                let f = File::options().write(true).open(&procs).map_err(|source| CgroupError::Io { op: "open", path: procs, source })?;
                cg.v1_procs.push(f);
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = cg.remove();
            return Err(e);
        }
        cg.memory = MemoryMeter::open(&cg.path, &cg.v1_dirs);
        Ok(cg)
    }

    /// Kills and removes every instance cgroup a previous run left behind; returns how many.
    pub async fn reap_leftovers(&self) -> Result<usize> {
        let mut n = 0;
        let mut failed = None;
        let Ok(rd) = std::fs::read_dir(&self.v2) else { return Ok(0) };
        for entry in rd.flatten() {
            if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let mut cg = Cgroup::open_dir(entry.path())?;
            for (_, root) in &self.v1 {
                let d = root.join(entry.file_name());
                if d.is_dir() {
                    cg.v1_dirs.push(d);
                }
            }
            let _ = cg.write_freeze(false);
            // A task killed deep in reclaim can take longer than one wait to go (seen in a
            // thrashing memory cgroup): keep killing for a minute, and go on with the others,
            // rather than leave the cgroup (and so the root) behind.
            let mut killed = cg.kill().await;
            for _ in 0..5 {
                if killed.is_ok() {
                    break;
                }
                killed = cg.kill().await;
            }
            match killed.and_then(|()| cg.remove()) {
                Ok(()) => n += 1,
                Err(e) => {
                    failed.get_or_insert(e);
                }
            };
        }
        // v1 directories whose v2 twin is already gone.
        for (_, root) in &self.v1 {
            for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    let _ = remove_dir_retrying(&entry.path());
                }
            }
        }
        failed.map_or(Ok(n), Err)
    }

    /// Removes the root itself (it must be empty).
    pub fn remove(&self) -> Result<()> {
        for (_, dir) in &self.v1 {
            let _ = std::fs::remove_dir(dir);
        }
        std::fs::remove_dir(&self.v2).map_err(|source| CgroupError::Io { op: "remove", path: self.v2.clone(), source })
    }
}

/// How `cgroup.events` is awaited: epoll `POLLPRI` on a real cgroupfs, plain re-reads on a
/// fake one (regular files cannot be registered with epoll).
#[derive(Debug)]
enum EventsFd {
    Notify(AsyncFd<File>),
    Poll(File),
}

impl EventsFd {
    fn file(&self) -> &File {
        match self {
            EventsFd::Notify(a) => a.get_ref(),
            EventsFd::Poll(f) => f,
        }
    }
}

/// An instance's CPU quota file, kept open to lift the quota around a freeze.
#[derive(Debug)]
struct CpuQuota {
    file: File,
    limited: String,
    unlimited: &'static str,
}

impl CpuQuota {
    fn open(path: &Path, limited: String, unlimited: &'static str) -> Option<CpuQuota> {
        File::options().write(true).open(path).ok().map(|file| CpuQuota { file, limited, unlimited })
    }

    /// Writes the quota (`limited`) or lifts it.
    fn set(&self, limited: bool) {
        let v = if limited { self.limited.as_bytes() } else { self.unlimited.as_bytes() };
        let _ = self.file.write_at(v, 0);
    }
}

/// One instance's cgroup, with its hot files kept open.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    dir: OwnedFd,
    freeze: File,
    events: EventsFd,
    cpu_stat: File,
    memory: MemoryMeter,
    cpu_quota: Option<CpuQuota>,
    /// The re-check timer of [`Cgroup::wait_for`], made on first use.
    timer: std::sync::OnceLock<Option<crate::timer::FineTimer>>,
    /// Whether a waiter is sleeping on `timer`.
    timer_busy: std::sync::atomic::AtomicBool,
    v1_dirs: Vec<PathBuf>,
    v1_procs: Vec<File>,
}

impl Cgroup {
    /// Opens an existing cgroup2 directory.
    pub fn open_dir(path: PathBuf) -> Result<Self> {
        let open = |name: &str, write: bool| {
            let p = path.join(name);
            File::options().read(!write).write(write).open(&p).map_err(|source| CgroupError::Io { op: "open", path: p, source })
        };
        let freeze = open("cgroup.freeze", true)?;
        let events_file = open("cgroup.events", false)?;
        let cpu_stat = open("cpu.stat", false)?;
        let events = if tokio::runtime::Handle::try_current().is_ok() {
            // SAFETY: the File owns its fd for the AsyncFd's whole lifetime.
            match unsafe { AsyncFd::register_with_interest(events_file, Interest::PRIORITY) } {
                Ok(a) => EventsFd::Notify(a),
                Err(e) => EventsFd::Poll(e.into_parts().0),
            }
        } else {
            EventsFd::Poll(events_file)
        };
        let dir = open_dir_fd(&path)?;
        Ok(Cgroup {
            path,
            dir,
            freeze,
            events,
            cpu_stat,
            memory: MemoryMeter::none(),
            cpu_quota: None,
            timer: std::sync::OnceLock::new(),
            timer_busy: Default::default(),
            v1_dirs: Vec::new(),
            v1_procs: Vec::new(),
        })
    }

    /// The cgroup2 directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory fd, for `clone3(CLONE_INTO_CGROUP)`.
    pub fn dir_fd(&self) -> RawFd {
        self.dir.as_raw_fd()
    }

    /// The v1 `cgroup.procs` files the child must write itself into (hybrid hosts).
    pub fn v1_procs_fds(&self) -> Vec<RawFd> {
        self.v1_procs.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// Current `cgroup.events`.
    pub fn events(&self) -> Result<Events> {
        self.read_parsed(self.events.file(), "cgroup.events", Events::parse)
    }

    /// Current `cpu.stat`.
    pub fn cpu_stat(&self) -> Result<CpuStat> {
        self.read_parsed(&self.cpu_stat, "cpu.stat", CpuStat::parse)
    }

    /// Reads a small cgroup file kept open (one pread, no allocation) and parses it.
    fn read_parsed<T>(&self, file: &File, name: &str, parse: fn(&str) -> T) -> Result<T> {
        let mut buf = [0u8; 512];
        let n = file.read_at(&mut buf, 0).map_err(|source| CgroupError::Io { op: "read", path: self.path.join(name), source })?;
        Ok(parse(std::str::from_utf8(&buf[..n]).unwrap_or("")))
    }

    /// How many processes the kernel's OOM killer has killed in this cgroup (cgroup2
    /// `memory.events`, or v1 `memory.oom_control` on hybrid hosts; 0 where neither exists).
    pub fn oom_kills(&self) -> u64 {
        let count = |path: PathBuf| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|t| t.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse::<u64>().ok()))
        };
        count(self.path.join("memory.events")).or_else(|| self.v1_dirs.iter().find_map(|d| count(d.join("memory.oom_control")))).unwrap_or(0)
    }

    /// The instance's memory meter (peak per billing window; see [`MemoryMeter`]).
    pub fn memory(&self) -> &MemoryMeter {
        &self.memory
    }

    fn write_freeze(&self, frozen: bool) -> Result<()> {
        let data = if frozen { b"1" } else { b"0" };
        self.freeze.write_at(data, 0).map(|_| ()).map_err(|source| CgroupError::Write {
            path: self.path.join("cgroup.freeze"),
            data: String::from_utf8_lossy(data).into_owned(),
            source,
        })
    }

    /// Freezes every task and returns once `cgroup.events` says `frozen 1`.
    pub async fn freeze(&self) -> Result<()> {
        self.freeze_unless(std::future::pending()).await.map(|_| ())
    }

    /// Freezes, unless `cancel` resolves before the freeze is confirmed: then the cgroup is
    /// thawed again at once and the answer is `Ok(false)` (a request came while the freeze was
    /// on its way; undoing a freeze under way costs one write, finishing it and thawing ~200 µs).
    pub async fn freeze_unless(&self, cancel: impl std::future::Future<Output = ()>) -> Result<bool> {
        // Tasks throttled by a CPU quota cannot reach the freezer before the next CFS period
        // (up to 100 ms with busy threads and a small `cpu`): the quota is lifted while freezing
        // and put back once frozen.
        if let Some(q) = &self.cpu_quota {
            q.set(false);
        }
        let frozen = async {
            self.write_freeze(true)?;
            tokio::select! {
                biased;
                r = self.wait_for("frozen 1", |e| e.frozen || !e.populated) => r.map(|_| true),
                () = cancel => {
                    self.write_freeze(false)?;
                    self.wait_for("frozen 0", |e| !e.frozen).await.map(|_| false)
                }
            }
        }
        .await;
        // A freeze that failed midway (a timeout, a write error) must not leave the cgroup
        // freezing while fcsup takes it as thawed: the next request would hang in it.
        if frozen.is_err() {
            let _ = self.write_freeze(false);
        }
        if let Some(q) = &self.cpu_quota {
            q.set(true);
        }
        frozen
    }

    /// Thaws and returns once `cgroup.events` says `frozen 0`.
    pub async fn thaw(&self) -> Result<()> {
        self.write_freeze(false)?;
        self.wait_for("frozen 0", |e| !e.frozen).await.map(|_| ())
    }

    /// Kills every task (`cgroup.kill`, or SIGKILL to each pid on kernels without it) and
    /// returns once `cgroup.events` says `populated 0`.
    pub async fn kill(&self) -> Result<()> {
        let kill_file = self.path.join("cgroup.kill");
        if let Err(e) = std::fs::write(&kill_file, "1") {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(CgroupError::Write { path: kill_file, data: "1".into(), source: e });
            }
            let _ = self.write_freeze(false);
            let procs = std::fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        // A task killed inside reclaim at its memory limit must finish that allocation before it
        // can die, which in a thrashing cgroup took more than 10 s; with SIGKILL pending on
        // every task no user code runs again, so the limit can go.
        self.lift_memory_limit();
        self.wait_for("populated 0", |e| !e.populated).await.map(|_| ())
    }

    /// Removes the memory limit (cgroup2 `memory.max`, or v1 `memory.limit_in_bytes` on
    /// hybrid hosts); where there is none, nothing happens.
    fn lift_memory_limit(&self) {
        let _ = write_if_present(&self.path.join("memory.max"), "max");
        for dir in &self.v1_dirs {
            let _ = write_if_present(&dir.join("memory.limit_in_bytes"), "-1");
        }
    }

    /// Waits until `done(events)` holds, reading right away and then on each notification,
    /// with a short re-check because notifications are rate-limited.
    pub async fn wait_for(&self, what: &'static str, done: impl Fn(Events) -> bool) -> Result<Events> {
        let start = Instant::now();
        let mut attempt = 0u32;
        let timer = self.timer.get_or_init(|| crate::timer::FineTimer::new().ok()).as_ref();
        let busy = &self.timer_busy;
        // The cgroup's timerfd serves one waiter at a time: a second one (the demo watching an
        // instance that fcsup is freezing) would re-arm it and take its expiry, leaving the
        // first to wait forever. Whoever finds it taken sleeps on a timerfd of its own.
        let recheck_after = |d: Duration| async move {
            match timer {
                Some(t) if !busy.swap(true, std::sync::atomic::Ordering::Acquire) => {
                    let _release = TimerTaken(busy);
                    t.sleep(d).await
                }
                _ => crate::timer::fine_sleep(d).await,
            }
        };
        loop {
            let ev = self.events()?;
            if done(ev) {
                return Ok(ev);
            }
            if start.elapsed() > STATE_TIMEOUT {
                return Err(CgroupError::Timeout { path: self.path.clone(), what, timeout: STATE_TIMEOUT });
            }
            // Notifications come at most every 12 ms (HZ=250), so right after an earlier event
            // only re-reading finds the change: first after 25 µs, then 1.5× longer each time
            // up to 1 ms (a freeze takes the kernel 40–200 µs).
            let recheck = FIRST_RECHECK.mul_f64(1.5f64.powi(i32::try_from(attempt.min(10)).unwrap_or(10))).min(RECHECK);
            attempt += 1;
            match &self.events {
                EventsFd::Notify(a) => {
                    let notified = async {
                        if let Ok(mut g) = a.ready(Interest::PRIORITY).await {
                            g.clear_ready();
                        }
                    };
                    tokio::select! {
                        _ = notified => {}
                        _ = recheck_after(recheck) => {}
                    }
                }
                EventsFd::Poll(_) => recheck_after(recheck).await,
            }
        }
    }

    /// Removes the cgroup directories (v2 and v1); the cgroup must be empty.
    pub fn remove(&self) -> Result<()> {
        for d in &self.v1_dirs {
            remove_dir_retrying(d)?;
        }
        remove_dir_retrying(&self.path)
    }
}

/// Gives the cgroup's timer back when its waiter ends or is dropped mid-sleep.
struct TimerTaken<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for TimerTaken<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// rmdir, retrying briefly: a cgroup whose last task just exited can still be busy.
fn remove_dir_retrying(path: &Path) -> Result<()> {
    let start = Instant::now();
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) && start.elapsed() < Duration::from_secs(2) => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(source) => return Err(CgroupError::Io { op: "remove", path: path.to_path_buf(), source }),
        }
    }
}

fn mkdir_all(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| CgroupError::Io { op: "create", path: path.to_path_buf(), source })
}

fn write_file(path: &Path, data: &str) -> Result<()> {
    std::fs::write(path, data).map_err(|source| CgroupError::Write { path: path.to_path_buf(), data: data.into(), source })
}

fn open_dir_fd(path: &Path) -> Result<OwnedFd> {
    use nix::fcntl::OFlag;
    nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty()).map_err(|e| CgroupError::Io {
        op: "open",
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// Writes `value` to `path` if the file exists.
fn write_if_present(path: &Path, value: &str) -> io::Result<()> {
    match File::options().write(true).open(path) {
        Ok(f) => f.write_at(value.as_bytes(), 0).map(drop),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake cgroupfs directory with the files fcsup opens.
    fn fake_cgroup(dir: &Path, events: &str) -> PathBuf {
        let p = dir.join("inst");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("cgroup.freeze"), "0").unwrap();
        std::fs::write(p.join("cgroup.events"), events).unwrap();
        std::fs::write(p.join("cpu.stat"), "usage_usec 42\nuser_usec 40\nsystem_usec 2\n").unwrap();
        p
    }

    #[test]
    fn reads_stats_and_events_from_fake_fs() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = Cgroup::open_dir(fake_cgroup(tmp.path(), "populated 1\nfrozen 0\n")).unwrap();
        assert_eq!(cg.cpu_stat().unwrap().usage_usec, 42);
        assert!(cg.events().unwrap().populated);
    }

    #[tokio::test]
    async fn freeze_waits_for_events_confirmation() {
        let tmp = tempfile::tempdir().unwrap();
        let p = fake_cgroup(tmp.path(), "populated 1\nfrozen 0\n");
        let cg = Cgroup::open_dir(p.clone()).unwrap();
        let events = p.join("cgroup.events");
        let flip = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            std::fs::write(events, "populated 1\nfrozen 1\n").unwrap();
        });
        let t = Instant::now();
        cg.freeze().await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(15), "returned before the kernel confirmed");
        assert_eq!(std::fs::read_to_string(p.join("cgroup.freeze")).unwrap(), "1");
        flip.await.unwrap();
    }

    #[tokio::test]
    async fn a_freeze_under_way_is_undone_when_cancelled() {
        let tmp = tempfile::tempdir().unwrap();
        let p = fake_cgroup(tmp.path(), "populated 1\nfrozen 0\n");
        let cg = Cgroup::open_dir(p.clone()).unwrap();
        // The kernel never confirms; a request comes after 5 ms.
        let froze = cg.freeze_unless(tokio::time::sleep(Duration::from_millis(5))).await.unwrap();
        assert!(!froze);
        assert_eq!(std::fs::read_to_string(p.join("cgroup.freeze")).unwrap(), "0", "left freezing");
    }

    #[tokio::test]
    async fn write_errors_name_file_and_data() {
        let tmp = tempfile::tempdir().unwrap();
        let p = fake_cgroup(tmp.path(), "populated 0\nfrozen 0\n");
        let cg = Cgroup::open_dir(p.clone()).unwrap();
        let e = write_file(&p.join("missing/x"), "7").unwrap_err().to_string();
        assert!(e.contains("failed to write \"7\" to") && e.contains("missing/x"), "{e}");
        for f in ["cgroup.freeze", "cgroup.events", "cpu.stat"] {
            std::fs::remove_file(p.join(f)).unwrap();
        }
        cg.remove().unwrap();
        assert!(!p.exists());
    }
}
