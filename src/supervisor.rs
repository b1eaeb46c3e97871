//! One running supervisor: discovers the cgroup hierarchy, claims its cgroup root (cleaning
//! up whatever a previous run left there), builds a pool per function, and on shutdown stops
//! every instance and removes the root and the runtime directory.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use crate::billing::Ledger;
use crate::cgroup::{CgroupError, CgroupRoot, Hierarchy};
use crate::config::Config;
use crate::host::Host;
use crate::instance::{Instance, Snapshot, StartError};
use crate::pool::{GlobalCount, Pool};

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
    /// Another fcsup uses the same cgroup root.
    #[error("another fcsup is running with cgroup root '{0}'; stop it or pass a different --cgroup-root")]
    Busy(String),
    /// A minimum instance failed to start.
    #[error("function {function}: a minimum instance failed to start: {source}")]
    MinInstance {
        /// Function.
        function: String,
        /// The cause.
        #[source]
        source: StartError,
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
    /// Print function output.
    pub echo_logs: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cgroup_root: "fcsup".into(),
            mountinfo: "/proc/self/mountinfo".into(),
            run_base: "/run/fcsup".into(),
            ledger: None,
            echo_logs: true,
        }
    }
}

/// A running supervisor.
#[derive(Debug)]
pub struct Supervisor {
    /// Shared context.
    pub host: Arc<Host>,
    /// Pools by function name.
    pub pools: BTreeMap<String, Arc<Pool>>,
    _lock: File,
}

impl Supervisor {
    /// Claims the cgroup root, reaps leftovers and starts minimum instances.
    pub async fn start(config: &Config, opts: &Options) -> Result<Arc<Self>, SupervisorError> {
        let io = |what: &'static str, path: &PathBuf| {
            let path = path.clone();
            move |source| SupervisorError::Io { what, path, source }
        };
        let name = opts.cgroup_root.trim_matches('/').to_string();
        let run_dir = opts.run_base.join(name.replace('/', "_"));
        std::fs::create_dir_all(&run_dir).map_err(io("cannot create", &run_dir))?;
        let lock_path = run_dir.join("lock");
        let lock = File::create(&lock_path).map_err(io("cannot create", &lock_path))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(SupervisorError::Busy(name));
        }
        let rootfs = run_dir.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(io("cannot create", &rootfs))?;
        let hier = Hierarchy::discover(&opts.mountinfo)?;
        let self_cg = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let cgroups = CgroupRoot::open(&hier, &name, &self_cg)?;
        let reaped = cgroups.reap_leftovers().await?;
        if reaped > 0 {
            tracing::warn!("removed {reaped} instance cgroup(s) left by a previous run");
        }
        let ledger_path = opts.ledger.clone();
        let ledger = Ledger::open(ledger_path.clone()).map_err(io("cannot open the ledger", &ledger_path.unwrap_or_default()))?;
        let host = Arc::new(Host { cgroups, run_dir, rootfs_mountpoint: rootfs, echo_logs: opts.echo_logs, ledger });
        let global = GlobalCount::new(config.global.max_instances.unwrap_or(100));
        let mut pools = BTreeMap::new();
        for f in &config.functions {
            pools.insert(f.name.clone(), Pool::new(host.clone(), Arc::new(f.clone()), global.clone()));
        }
        let sup = Arc::new(Supervisor { host, pools, _lock: lock });
        for (name, pool) in &sup.pools {
            if let Err(source) = pool.start().await {
                sup.shutdown().await;
                return Err(SupervisorError::MinInstance { function: name.clone(), source });
            }
        }
        Ok(sup)
    }

    /// Every instance, for the admin API.
    pub fn instances(&self) -> Vec<Snapshot> {
        self.pools.values().flat_map(|p| p.instances()).map(|i| i.snapshot()).collect()
    }

    /// The instance with `id`.
    pub fn instance(&self, id: &str) -> Option<Arc<Instance>> {
        self.pools.values().flat_map(|p| p.instances()).find(|i| i.id == id)
    }

    /// Stops every instance (PreStop first), then removes the cgroup root and runtime dir.
    pub async fn shutdown(&self) {
        let mut pools = tokio::task::JoinSet::new();
        for pool in self.pools.values() {
            let pool = pool.clone();
            pools.spawn(async move { pool.shutdown().await });
        }
        while pools.join_next().await.is_some() {}
        // Instances retired in the background (crashed, reclaimed) may still be stopping.
        for _ in 0..200 {
            if self.host.cgroups.reap_leftovers().await.unwrap_or(0) == 0 {
                break;
            }
        }
        if let Err(e) = self.host.cgroups.remove() {
            tracing::warn!("{e}");
        }
        let _ = std::fs::remove_dir(&self.host.rootfs_mountpoint);
        let _ = std::fs::remove_file(self.host.run_dir.join("lock"));
        let _ = std::fs::remove_dir(&self.host.run_dir);
        if let Some(base) = self.host.run_dir.parent() {
            let _ = std::fs::remove_dir(base);
        }
    }
}
