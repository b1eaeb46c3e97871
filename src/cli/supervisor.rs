//! The flags of a command that runs a supervisor (`serve`, `demo`): where it listens, its
//! cgroup root, logs, ledger, isolation, and the front door's limits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use fcsup::api::{AdminToken, FrontDoor, Limits};
use fcsup::supervisor::Options;

#[derive(clap::Args, Clone)]
pub struct SupervisorArgs {
    /// Address of the front door.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub listen: String,
    /// Name of fcsup's cgroup under the cgroup2 mount (instances are created beneath it).
    #[arg(long, default_value = "fcsup", env = "FCSUP_CGROUP_ROOT")]
    cgroup_root: String,
    /// Append the billing ledger (JSON lines) to this file.
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// The Async queue's SQLite database: tasks survive a stop or kill of fcsup and run at
    /// its next start (default: /var/lib/fcsup/<cgroup root>/async.db).
    #[arg(long, value_name = "FILE")]
    queue_db: Option<PathBuf>,
    /// Do not print the functions' output.
    #[arg(long)]
    quiet_functions: bool,
    /// Write each function's output and hook markers to DIR/<function>.log.
    #[arg(long, default_value = "/var/log/fcsup")]
    log_dir: PathBuf,
    /// Rotate a function's log file when it would pass this size (e.g. 65536, 64K, 64M, 1G).
    #[arg(long, default_value = "64M", value_parser = log_max_bytes)]
    log_max_bytes: u64,
    /// Rotated log files kept per function besides the current one (f.log.1 … f.log.N).
    #[arg(long, default_value_t = 4)]
    log_max_files: u32,
    /// Most lines of one function's output printed per second in fcsup's output (the rest are
    /// counted; the log file gets every line).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    print_rate: u32,
    /// Keep the supervisor at normal priority (by default its threads run SCHED_FIFO so a
    /// thawed, busy instance cannot delay the next thaw or freeze).
    #[arg(long)]
    pub no_realtime: bool,
    /// Run functions as host root, without a user namespace or seccomp filter (only for hosts
    /// that lack them; `fcsup check` tells).
    #[arg(long)]
    insecure_instances: bool,
    /// First host uid/gid of the instances' id ranges (65536 ids each; 0 inside each instance
    /// is an unprivileged id here).
    #[arg(long, default_value_t = fcsup::sandbox::DEFAULT_ID_BASE)]
    id_base: u32,
    /// The admin socket, where /admin/ is served (default: /run/fcsup/<cgroup root>/admin.sock).
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// Also serve /admin/ on --listen to requests with `Authorization: Bearer <token>`, the
    /// token being this file's content (trailing newline stripped; must not be world-readable).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Where custom containers' images are kept: blobs and unpacked layers, content-addressed.
    #[arg(long, default_value = fcsup::image::DEFAULT_DIR, env = "FCSUP_IMAGE_CACHE")]
    image_cache: PathBuf,
    /// Registry credentials for pulls, in `~/.docker/config.json`'s format (by default that
    /// file is read).
    #[arg(long, value_name = "FILE", env = "FCSUP_REGISTRY_AUTH")]
    registry_auth: Option<PathBuf>,
    /// A registry reached over plain HTTP (`HOST` or `HOST:PORT`; repeatable, or
    /// comma-separated in the variable). Loopback registries always are, as with Docker.
    #[arg(long, value_name = "HOST[:PORT]", env = "FCSUP_INSECURE_REGISTRY", value_delimiter = ',')]
    insecure_registry: Vec<String>,
    /// A directory of CDI specs (`*.json`, `*.yaml`) devices are granted from; repeatable,
    /// lowest priority first (default: /etc/cdi, then /var/run/cdi).
    #[arg(long, value_name = "DIR", env = "FCSUP_CDI_SPEC_DIRS", value_delimiter = ',')]
    cdi_spec_dir: Vec<PathBuf>,
    /// This node's name, in the `X-Fcsup-Node` response header, `/healthz` and `/metrics`
    /// labels (default: the host name).
    #[arg(long, env = "FCSUP_NODE_NAME")]
    node_name: Option<String>,
    /// A front (proxy) whose `X-Forwarded-For` and `X-Forwarded-Proto` are believed: an HTTP
    /// trigger's client is the address it appended (e.g. the HAProxy in front of several
    /// nodes). `ADDR` or `ADDR/PREFIX`; repeatable, or comma-separated in the variable.
    #[arg(long, value_name = "CIDR", env = "FCSUP_TRUSTED_PROXY", value_delimiter = ',')]
    trusted_proxy: Vec<fcsup::api::Cidr>,
    #[command(flatten)]
    limits: LimitArgs,
}

/// The front door's limits (README: "Front door limits").
#[derive(clap::Args, Clone)]
struct LimitArgs {
    /// Seconds a client has to send a request's line and headers.
    #[arg(long, default_value_t = 10)]
    header_read_timeout: u64,
    /// Seconds after which a connection with no request in flight is closed (and a request
    /// body that sends nothing is refused).
    #[arg(long, default_value_t = 60)]
    idle_timeout: u64,
    /// Open connections per listener; beyond it new ones wait in the kernel's backlog.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Request header bytes (FC: 8 KB); beyond it 400 InvalidArgument.
    #[arg(long, default_value_t = 8192)]
    max_header_bytes: usize,
    /// Path and query bytes (FC: 4 KB); beyond it 400 InvalidArgument.
    #[arg(long, default_value_t = 4096)]
    max_path_bytes: usize,
    /// Number of request headers; beyond it hyper answers 431.
    #[arg(long, default_value_t = 100)]
    max_headers: usize,
    /// Sync invocation body bytes (FC: 32 MB); beyond it 400 InvalidArgument.
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    max_sync_body: usize,
    /// Async invocation body bytes (FC: 128 KB); beyond it 400 InvalidArgument.
    #[arg(long, default_value_t = 128 * 1024)]
    max_async_body: usize,
    /// MiB of request bodies held at once over all requests; beyond it 429 ResourceExhausted.
    #[arg(long, default_value_t = 512)]
    max_body_memory: usize,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(self.header_read_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
            max_connections: fit_connections(self.max_connections),
            max_header_bytes: self.max_header_bytes,
            max_path_bytes: self.max_path_bytes,
            max_headers: self.max_headers,
            max_sync_body: self.max_sync_body,
            max_async_body: self.max_async_body,
            body_memory: self.max_body_memory.saturating_mul(1024 * 1024),
        }
    }
}

/// Raises the open-file limit to its hard limit and keeps the connection cap below it, so
/// connections can never use the descriptors instances need (pipes, pidfds, cgroup files).
fn fit_connections(wanted: usize) -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    const RESERVED: u64 = 1024;
    let Ok((mut soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return wanted };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        soft = hard;
    }
    let room = usize::try_from(soft.saturating_sub(RESERVED).max(64)).unwrap_or(usize::MAX);
    if wanted > room {
        tracing::warn!("--max-connections {wanted} lowered to {room}: the open-file limit is {soft}");
        return room;
    }
    wanted
}

impl SupervisorArgs {
    pub fn options(&self) -> Options {
        Options {
            cgroup_root: self.cgroup_root.clone(),
            ledger: self.ledger.clone(),
            queue_db: Some(
                self.queue_db.clone().unwrap_or_else(|| Path::new("/var/lib/fcsup").join(self.cgroup_root.trim_matches('/')).join("async.db")),
            ),
            echo_logs: !self.quiet_functions,
            log_dir: Some(self.log_dir.clone()),
            insecure_instances: self.insecure_instances,
            id_base: self.id_base,
            admin_socket: self.admin_socket.clone(),
            log_rotation: fcsup::logs::Rotation { max_bytes: self.log_max_bytes, max_files: self.log_max_files },
            print_rate: self.print_rate,
            image_cache: self.image_cache.clone(),
            registry: fcsup::image::registry::RegistryOptions { auth_file: self.registry_auth.clone(), insecure: self.insecure_registry.clone() },
            cdi_spec_dirs: if self.cdi_spec_dir.is_empty() {
                fcsup::oci::cdi::DEFAULT_SPEC_DIRS.iter().map(PathBuf::from).collect()
            } else {
                self.cdi_spec_dir.clone()
            },
            node_name: self.node_name.clone().unwrap_or_else(fcsup::supervisor::default_node_name),
            ..Options::default()
        }
    }

    /// Whether `--queue-db` was given.
    pub fn queue_db_given(&self) -> bool {
        self.queue_db.is_some()
    }

    /// The front door's settings; fails on a bad token file.
    pub fn front_door(&self) -> Result<Arc<FrontDoor>> {
        let token = self.admin_token_file.as_deref().map(AdminToken::load).transpose()?;
        Ok(FrontDoor::behind(self.limits.limits(), token, self.trusted_proxy.clone()))
    }
}

/// `--log-max-bytes`: a size that holds at least a few whole lines.
fn log_max_bytes(s: &str) -> Result<u64, String> {
    let n = fcsup::logs::parse_size(s)?;
    let min = 4 * fcsup::logs::MAX_LINE as u64;
    if n < min {
        return Err(format!("at least {min} bytes (4 lines of the longest kind)"));
    }
    Ok(n)
}
