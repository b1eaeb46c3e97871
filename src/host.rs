//! What every instance shares: the cgroup root, the runtime directory, the ledger, logs and
//! metrics.

use std::path::PathBuf;
use std::sync::Arc;

use crate::billing::Ledger;
use crate::cgroup::CgroupRoot;
use crate::logs::{Echo, LogFiles};
use crate::metrics::{Metrics, Samples};
use crate::sandbox::{Isolation, NetnsPool, RootTemplate};

/// Shared, read-mostly context of one supervisor.
#[derive(Debug)]
pub struct Host {
    /// Root cgroup of all instances.
    pub cgroups: CgroupRoot,
    /// Runtime directory (`/run/fcsup/<name>`), removed at exit.
    pub run_dir: PathBuf,
    /// Empty directory that each instance mounts its root on, in its own mount namespace.
    pub rootfs_mountpoint: PathBuf,
    /// Prints function output in fcsup's own output (`None`: quiet).
    pub echo: Option<Arc<Echo>>,
    /// Billing ledger.
    pub ledger: Arc<Ledger>,
    /// Per-function log files.
    pub log_files: LogFiles,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// The instances' root filesystem, built once.
    pub root_template: RootTemplate,
    /// Network namespaces made ahead of time.
    pub netns: Arc<NetnsPool>,
    /// User namespace ids and seccomp filter for every instance.
    pub isolation: Isolation,
    /// Raw latency samples (for `fcsup bench`).
    pub samples: Samples,
}
