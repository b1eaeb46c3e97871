//! One running supervisor: discovers the cgroup hierarchy, claims its cgroup root (cleaning
//! up whatever a previous run left there), builds a pool per function, and on shutdown stops
//! every instance and removes the root and the runtime directory.
//!
//! A configuration change (SIGHUP re-reads the file; `PUT /admin/functions/NAME` sets one
//! function) swaps in a new pool per changed function; the old pool drains: requests already
//! on it finish there, then its instances get PreStop and stop (as FC does on UpdateFunction).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use nix::fcntl::{Flock, FlockArg};

use crate::admin_socket;
use crate::billing::Ledger;
use crate::cgroup::{CgroupError, CgroupRoot, Hierarchy};
use crate::config::{Config, Function};
use crate::instance::{Instance, InvokeError, Launcher, Reporting, Snapshot};
use crate::logs::{Echo, LogFiles, Rotation};
use crate::metrics::Metrics;
use crate::pool::{GlobalCount, Pool};
use crate::queue::{AsyncQueue, Pools};
use crate::sandbox::{Isolation, NetnsPool, RootTemplate};

/// Network namespaces kept ready for cold starts.
const NETNS_READY: usize = 4;

/// Errors starting a supervisor.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// cgroup setup failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// A runtime file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The Async queue's database cannot be opened.
    #[error(transparent)]
    Queue(#[from] crate::queue::StoreError),
    /// Another fcsup uses the same cgroup root.
    #[error("another fcsup is running with cgroup root '{0}'; stop it or pass a different --cgroup-root")]
    Busy(String),
    /// The host cannot isolate instances and `--insecure-instances` was not given.
    #[error("this host cannot isolate instances: {0}; fix that, or pass --insecure-instances to run functions as host root without a user namespace and seccomp filter")]
    Isolation(String),
    /// A minimum instance failed to start.
    #[error("function {function}: a minimum instance failed to start: {source}")]
    MinInstance {
        /// Function.
        function: String,
        /// The cause.
        #[source]
        source: InvokeError,
    },
}

/// Where the supervisor keeps its state.
#[derive(Debug, Clone)]
pub struct Options {
    /// cgroup root name under the cgroup2 mount.
    pub cgroup_root: String,
    /// mountinfo to read (`/proc/self/mountinfo`).
    pub mountinfo: PathBuf,
    /// Runtime directory base (`/run/fcsup`).
    pub run_base: PathBuf,
    /// Ledger file (JSON lines), if any.
    pub ledger: Option<PathBuf>,
    /// The Async queue's database; without one, Async tasks live in memory only.
    pub queue_db: Option<PathBuf>,
    /// Print function output.
    pub echo_logs: bool,
    /// Directory of the per-function log files, if any.
    pub log_dir: Option<PathBuf>,
    /// Run functions without a user namespace and seccomp filter (hosts that lack them).
    pub insecure_instances: bool,
    /// First host uid/gid of the instances' id ranges.
    pub id_base: u32,
    /// The admin socket (default: `admin.sock` in the runtime directory).
    pub admin_socket: Option<PathBuf>,
    /// When the log files rotate.
    pub log_rotation: Rotation,
    /// Most lines of one function's output printed per second.
    pub print_rate: u32,
    /// Where custom containers' images are kept.
    pub image_cache: PathBuf,
    /// Registry credentials and plain-HTTP registries for pulls.
    pub registry: crate::image::registry::RegistryOptions,
    /// Where CDI specs are read from, lowest priority first.
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// This node's name: in the `X-Fcsup-Node` response header, `/healthz` and `/metrics` labels.
    pub node_name: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cgroup_root: "fcsup".into(),
            mountinfo: "/proc/self/mountinfo".into(),
            run_base: "/run/fcsup".into(),
            ledger: None,
            queue_db: None,
            echo_logs: true,
            log_dir: None,
            insecure_instances: false,
            id_base: crate::sandbox::DEFAULT_ID_BASE,
            admin_socket: None,
            log_rotation: Rotation::default(),
            print_rate: 1000,
            image_cache: crate::image::DEFAULT_DIR.into(),
            registry: crate::image::registry::RegistryOptions::default(),
            cdi_spec_dirs: crate::oci::cdi::DEFAULT_SPEC_DIRS.iter().map(PathBuf::from).collect(),
            node_name: default_node_name(),
        }
    }
}

/// A running supervisor.
#[derive(Debug)]
pub struct Supervisor {
    /// Starts the instances (and owns the cgroup root).
    launcher: Arc<Launcher>,
    /// Runtime directory (`/run/fcsup/<name>`), removed at exit.
    run_dir: PathBuf,
    pools: RwLock<BTreeMap<String, Arc<Pool>>>,
    /// Pools replaced by a configuration change, still draining.
    replaced: Mutex<Vec<Arc<Pool>>>,
    global: Arc<GlobalCount>,
    /// Directory that relative `code` paths resolve against.
    pub config_base: PathBuf,
    /// Async invocations.
    pub async_queue: AsyncQueue,
    /// Kills the instances if this process dies without stopping them ([`crate::watchdog`]).
    watchdog: Mutex<Option<std::process::Child>>,
    /// Where the admin socket is.
    pub admin_socket: PathBuf,
    admin_listener: Mutex<Option<UnixListener>>,
    /// Where CDI specs are read from (again on reload).
    cdi_spec_dirs: Vec<PathBuf>,
    /// This node's name (`--node-name`, by default the host name).
    pub node_name: String,
    /// What `/healthz` reports: draining, the configuration source.
    pub health: crate::health::Health,
    /// Set in node mode: `PUT`/`DELETE /admin/functions/NAME` go to etcd ([`crate::etcd`]).
    pub node: std::sync::OnceLock<Arc<crate::etcd::Node>>,
    /// Held while this supervisor runs: a second one with the same cgroup root is refused.
    _lock: Flock<File>,
}

/// What a configuration change did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Reloaded {
    /// Functions added.
    pub added: Vec<String>,
    /// Functions whose instances were replaced.
    pub replaced: Vec<String>,
    /// Functions whose instance counts changed, instances kept.
    pub rescaled: Vec<String>,
    /// Functions removed.
    pub removed: Vec<String>,
    /// Functions left as they were.
    pub unchanged: Vec<String>,
}

impl Supervisor {
    /// Claims the cgroup root, reaps leftovers and starts minimum instances.
    pub async fn start(config: &Config, opts: &Options) -> Result<Arc<Self>, SupervisorError> {
        let io = |what: &'static str, path: &PathBuf| {
            let path = path.clone();
            move |source| SupervisorError::Io { what, path, source }
        };
        let isolation = isolation(opts)?;
        let name = opts.cgroup_root.trim_matches('/').to_string();
        let run_dir = admin_socket::run_dir(&opts.run_base, &name);
        admin_socket::make_private_dir(&run_dir).map_err(io("cannot make a private runtime directory", &run_dir))?;
        let lock_path = run_dir.join("lock");
        let lock = File::create(&lock_path).map_err(io("cannot create", &lock_path))?;
        let Ok(lock) = Flock::lock(lock, FlockArg::LockExclusiveNonblock) else { return Err(SupervisorError::Busy(name)) };
        // A previous run that crashed left its instances' bundles (their hooks are not run).
        let _ = std::fs::remove_dir_all(run_dir.join(BUNDLES));
        let admin_path = opts.admin_socket.clone().unwrap_or_else(|| run_dir.join(admin_socket::FILE_NAME));
        let admin_listener = admin_socket::bind(&admin_path).map_err(|e| {
            remove_run_dir(&run_dir, None);
            SupervisorError::Io { what: "cannot listen on the admin socket", path: admin_path.clone(), source: e }
        })?;
        let rootfs = run_dir.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(|e| {
            remove_run_dir(&run_dir, Some(&admin_path));
            SupervisorError::Io { what: "cannot create", path: rootfs.clone(), source: e }
        })?;
        // Whatever fails from here leaves nothing behind: no cgroup root, no runtime directory.
        let hier = Hierarchy::discover(&opts.mountinfo).map_err(|e| {
            remove_run_dir(&run_dir, Some(&admin_path));
            SupervisorError::from(e)
        })?;
        let self_cg = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let cgroups = CgroupRoot::open(&hier, &name, &self_cg).map_err(|e| {
            remove_run_dir(&run_dir, Some(&admin_path));
            SupervisorError::from(e)
        })?;
        let prepared = async {
            let reaped = cgroups.reap_leftovers().await?;
            if reaped > 0 {
                tracing::warn!("removed {reaped} instance cgroup(s) left by a previous run");
            }
            let ledger_path = opts.ledger.clone();
            let ledger = Ledger::open(ledger_path.clone())
                .map(|l| l.for_node(&opts.node_name))
                .map_err(io("cannot open the ledger", &ledger_path.unwrap_or_default()))?;
            let log_dir = opts.log_dir.clone();
            let log_files =
                LogFiles::new(log_dir.clone(), opts.log_rotation).map_err(io("cannot create the log directory", &log_dir.unwrap_or_default()))?;
            let root_template = RootTemplate::build(&rootfs).map_err(io("cannot prepare the instances' root under", &rootfs))?;
            let queue = crate::queue::Store::open(opts.queue_db.as_deref())?;
            Ok::<_, SupervisorError>((ledger, log_files, root_template, queue))
        }
        .await;
        let (ledger, log_files, root_template, queue) = match prepared {
            Ok(x) => x,
            Err(e) => {
                let _ = cgroups.remove();
                remove_run_dir(&run_dir, Some(&admin_path));
                return Err(e);
            }
        };
        let watchdog = match crate::watchdog::spawn(cgroups.path()) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("cannot start the watchdog ({e}): instances would outlive a killed fcsup until its next start");
                None
            }
        };
        let ledger = Arc::new(ledger);
        ledger.start_syncing();
        let echo = opts.echo_logs.then(|| Echo::start(opts.print_rate));
        let reporting = Arc::new(Reporting::new(ledger));
        let launcher = Launcher::new(cgroups, NetnsPool::new(NETNS_READY), root_template, isolation, echo, log_files, reporting);
        let launcher = Arc::new(launcher.with_image_cache(&opts.image_cache, opts.registry.clone()).with_bundle_dir(run_dir.join(BUNDLES)));
        launcher.load_cdi(&opts.cdi_spec_dirs);
        launcher.prepare_images(&config.functions);
        let global = GlobalCount::new(config.global.max_instances.unwrap_or(100));
        let mut pools = BTreeMap::new();
        for f in &config.functions {
            pools.insert(f.name.clone(), Pool::new(launcher.clone(), Arc::new(f.clone()), global.clone()));
        }
        let sup = Arc::new_cyclic(|me: &std::sync::Weak<Supervisor>| Supervisor {
            launcher,
            cdi_spec_dirs: opts.cdi_spec_dirs.clone(),
            run_dir,
            pools: RwLock::new(pools),
            replaced: Mutex::default(),
            global,
            config_base: config.base.clone(),
            async_queue: AsyncQueue::new(me.clone(), queue),
            watchdog: Mutex::new(watchdog),
            admin_socket: admin_path,
            admin_listener: Mutex::new(Some(admin_listener)),
            node_name: opts.node_name.clone(),
            health: crate::health::Health::default(),
            node: std::sync::OnceLock::new(),
            _lock: lock,
        });
        for pool in sup.pools() {
            if let Err(source) = pool.start().await {
                sup.shutdown().await;
                return Err(SupervisorError::MinInstance { function: pool.function.name.clone(), source });
            }
        }
        if let Err(e) = sup.async_queue.resume() {
            sup.shutdown().await;
            return Err(e.into());
        }
        Ok(sup)
    }

    /// The admin socket's listener, for `api::serve_admin` (once).
    pub fn take_admin_listener(&self) -> Option<UnixListener> {
        self.admin_listener.lock().expect("admin listener").take()
    }

    /// The pool of `name`.
    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.pools.read().expect("pools").get(name).cloned()
    }

    /// Every current pool.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools.read().expect("pools").values().cloned().collect()
    }

    /// Sets one function (create or replace, like FC's UpdateFunction): a new pool starts
    /// (minimum instances ready before it takes requests), then the old one drains. If the
    /// new pool cannot start, the old one stays.
    pub async fn set_function(&self, f: Function) -> Result<bool, SupervisorError> {
        let name = f.name.clone();
        let pool = Pool::new(self.launcher.clone(), Arc::new(f), self.global.clone());
        if let Err(source) = pool.start().await {
            pool.shutdown().await;
            return Err(SupervisorError::MinInstance { function: name, source });
        }
        let old = self.pools.write().expect("pools").insert(name, pool);
        let existed = old.is_some();
        if let Some(old) = old {
            self.retire_pool(old);
        }
        Ok(existed)
    }

    /// Removes one function (`DELETE /admin/functions/NAME`, a key deleted in etcd): its pool
    /// drains as on a reload without it. False when there is no such function.
    pub fn remove_function(&self, name: &str) -> bool {
        let old = self.pools.write().expect("pools").remove(name);
        old.map(|p| self.retire_pool(p)).is_some()
    }

    /// Keeps a replaced pool until its instances have stopped (shutdown waits for them).
    fn retire_pool(&self, old: Arc<Pool>) {
        old.close();
        let mut replaced = self.replaced.lock().expect("pools");
        replaced.retain(|p| !p.finished());
        replaced.push(old);
    }

    /// Applies a re-read configuration: changed functions get new instances, removed ones
    /// drain, unchanged ones keep their warm instances, and a change of minInstances,
    /// maxInstances or idleTimeout alone is applied to the running instances.
    pub async fn reload(&self, config: &Config) -> Result<Reloaded, SupervisorError> {
        let mut done = Reloaded::default();
        // Pulls that failed are tried again (off the runtime: a pull blocks).
        self.launcher.load_cdi(&self.cdi_spec_dirs);
        let (launcher, functions) = (self.launcher.clone(), config.functions.clone());
        let _ = tokio::task::spawn_blocking(move || launcher.retry_images(&functions)).await;
        for f in &config.functions {
            match self.pool(&f.name) {
                Some(p) if p.function.same_instances_as(f) => {
                    // Both applied: `|` does not stop at the first change.
                    if p.rescale(f.scaling()) | p.set_async_settings(f.async_settings()) {
                        done.rescaled.push(f.name.clone());
                    } else {
                        done.unchanged.push(f.name.clone());
                    }
                }
                Some(_) => {
                    self.set_function(f.clone()).await?;
                    done.replaced.push(f.name.clone());
                }
                None => {
                    self.set_function(f.clone()).await?;
                    done.added.push(f.name.clone());
                }
            }
        }
        let gone: Vec<String> = self.pools.read().expect("pools").keys().filter(|n| config.function(n).is_none()).cloned().collect();
        for name in gone {
            if let Some(old) = self.pools.write().expect("pools").remove(&name) {
                self.retire_pool(old);
                done.removed.push(name);
            }
        }
        Ok(done)
    }

    /// Every instance, for the admin API.
    pub fn instances(&self) -> Vec<Snapshot> {
        self.all_instances().iter().map(|i| i.snapshot()).collect()
    }

    /// Where instances report: ledger, metrics, samples.
    pub fn reporting(&self) -> &Arc<Reporting> {
        self.launcher.reporting()
    }

    /// Starts the instances (and owns the cgroup root).
    pub fn launcher(&self) -> &Launcher {
        &self.launcher
    }

    /// The instance with `id`.
    pub fn instance(&self, id: &str) -> Option<Arc<Instance>> {
        self.all_instances().into_iter().find(|i| i.id == id)
    }

    fn all_instances(&self) -> Vec<Arc<Instance>> {
        self.pools().iter().flat_map(|p| p.instances()).collect()
    }

    /// Stops every instance (PreStop first), then removes the cgroup root and runtime dir.
    pub async fn shutdown(&self) {
        self.async_queue.stop().await;
        let mut pools = tokio::task::JoinSet::new();
        let replaced = std::mem::take(&mut *self.replaced.lock().expect("pools"));
        for pool in self.pools().into_iter().chain(replaced) {
            pools.spawn(async move { pool.shutdown().await });
        }
        while pools.join_next().await.is_some() {}
        // Anything that escaped the pools (a bug) is killed rather than left behind.
        let leaked = self.launcher.cgroups().reap_leftovers().await.unwrap_or(0);
        if leaked > 0 {
            tracing::error!("{leaked} instance cgroup(s) were still there at shutdown; killed");
        }
        self.reporting().ledger().sync();
        let launcher = self.launcher.clone();
        let _ = tokio::task::spawn_blocking(move || launcher.wait_poststops()).await;
        if let Some(echo) = self.launcher.echo().cloned() {
            let _ = tokio::task::spawn_blocking(move || echo.flush(std::time::Duration::from_secs(2))).await;
        }
        if let Err(e) = self.launcher.cgroups().remove() {
            tracing::warn!("{e}");
        }
        self.admin_listener.lock().expect("admin listener").take();
        remove_run_dir(&self.run_dir, Some(&self.admin_socket));
        if let Some(mut w) = self.watchdog.lock().expect("watchdog").take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// The Async queue runs its tasks on the supervisor's pools of the moment.
impl Pools for Supervisor {
    fn pool(&self, function: &str) -> Option<Arc<Pool>> {
        Supervisor::pool(self, function)
    }

    fn metrics(&self) -> &Metrics {
        self.reporting().metrics()
    }
}

/// The host name, the default node name.
pub fn default_node_name() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).filter(|h| !h.is_empty()).unwrap_or_else(|| "localhost".into())
}

/// The isolation this host allows, or why not (refused unless `--insecure-instances`).
fn isolation(opts: &Options) -> Result<Isolation, SupervisorError> {
    if opts.insecure_instances {
        tracing::warn!("--insecure-instances: functions run as host root, without a user namespace or seccomp filter");
        return Ok(Isolation::none());
    }
    if let Some(missing) = crate::check::isolation_missing() {
        return Err(SupervisorError::Isolation(missing));
    }
    Isolation::full(opts.id_base).map_err(|e| SupervisorError::Isolation(e.to_string()))
}

/// Removes the admin socket, the runtime directory (`rootfs` mount point, lock file) and its
/// base if empty.
/// Where instances' OCI bundles are, in the runtime directory.
const BUNDLES: &str = "bundles";

fn remove_run_dir(run_dir: &Path, admin_socket: Option<&Path>) {
    if let Some(p) = admin_socket {
        admin_socket::remove(p);
    }
    let _ = std::fs::remove_dir(run_dir.join("rootfs"));
    // Instances' OCI bundles (each removed with its instance; a crash leaves them).
    let _ = std::fs::remove_dir_all(run_dir.join(BUNDLES));
    let _ = std::fs::remove_file(run_dir.join("lock"));
    let _ = std::fs::remove_dir(run_dir);
    if let Some(base) = run_dir.parent() {
        let _ = std::fs::remove_dir(base);
    }
}
