//! The seam between an instance's lifecycle and the kernel: everything the instance does to
//! its cgroup and its process goes through [`Kernel`]. [`Sandboxed`] is the real thing (a
//! cgroup, a sandboxed process behind a pidfd, a network namespace); the unit tests put a
//! recording fake in its place to check the lifecycle's orders without root.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;

use crate::cgroup::{Cgroup, CgroupError, CpuStat, MemoryMeter};
use crate::sandbox::{self, Child, IdRange, InitStack, Netns};

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// As a shell shows it: the exit code, or 128 + the signal.
    pub status: i32,
    /// The kernel's OOM killer killed it (at the function's memory limit).
    pub oom_killed: bool,
}

/// Where an instance lives on the host (for the admin API).
#[derive(Debug, Clone)]
pub struct Placement {
    /// Host pid of its init.
    pub pid: i32,
    /// Its cgroup2 directory.
    pub cgroup: String,
    /// The host uid that is root inside (absent when instances run as host root).
    pub host_uid: Option<u32>,
}

/// What an instance needs from the kernel.
pub trait Kernel: Send + Sync + std::fmt::Debug + 'static {
    /// Freezes the cgroup and waits until the kernel confirms it.
    fn freeze(&self) -> impl Future<Output = Result<(), CgroupError>> + Send;
    /// Freezes unless `cancel` resolves first (then thaws again): whether it froze.
    fn freeze_unless(&self, cancel: impl Future<Output = ()> + Send) -> impl Future<Output = Result<bool, CgroupError>> + Send;
    /// Thaws the cgroup.
    fn thaw(&self) -> impl Future<Output = Result<(), CgroupError>> + Send;
    /// The cgroup's CPU counters now.
    fn cpu(&self) -> CpuStat;
    /// The cgroup's memory meter.
    fn memory(&self) -> &MemoryMeter;
    /// Asks the function to stop (SIGTERM to its init, which forwards it).
    fn terminate(&self);
    /// Kills everything in the cgroup and waits until it is empty.
    fn kill(&self) -> impl Future<Output = Result<(), CgroupError>> + Send;
    /// Removes the cgroup (it must be empty).
    fn remove(&self) -> Result<(), CgroupError>;
    /// Resolves once, when the process has exited (asked for once, by the instance).
    fn exited(&self) -> impl Future<Output = Exit> + Send + 'static;
    /// Connects to `port` inside the instance if something listens there now (`None`: not
    /// yet), without waiting.
    fn try_connect(&self, port: u16) -> io::Result<Option<TcpStream>>;
    /// Connects to `port` inside the instance.
    fn connect(&self, port: u16) -> impl Future<Output = io::Result<TcpStream>> + Send;
    /// Where it lives.
    fn placement(&self) -> Placement;
    /// Starts `argv` inside the instance, as its function runs (FC's execute-instruction
    /// Initializer): its pidfd (readable once it exited) and its stdout and stderr.
    fn enter(&self, argv: &[String]) -> Result<Entered, String>;
    /// The host pids of its processes.
    fn pids(&self) -> Vec<i32>;
}

/// A program started inside an instance ([`Kernel::enter`]).
#[derive(Debug)]
pub struct Entered {
    /// Readable once it exited; [`crate::sandbox::pidfd_try_wait`] gives its status.
    pub pidfd: OwnedFd,
    /// Its stdout.
    pub stdout: OwnedFd,
    /// Its stderr.
    pub stderr: OwnedFd,
}

/// What a program started inside an instance gets: the function's environment, working
/// directory and ids, and the supervisor's isolation.
#[derive(Debug, Clone, Default)]
pub struct InsideContext {
    /// The function's environment.
    pub env: Vec<(String, String)>,
    /// Its working directory.
    pub cwd: String,
    /// Its uid and gid inside the instance.
    pub user: (u32, u32),
    /// The isolation instances get.
    pub isolation: sandbox::Isolation,
}

/// A real instance: its cgroup, its sandboxed process and its network namespace.
#[derive(Debug)]
pub struct Sandboxed {
    cgroup: Arc<Cgroup>,
    pid: i32,
    pidfd: Arc<AsyncFd<OwnedFd>>,
    netns: Netns,
    /// Set once the init has been reaped.
    reaped: Arc<AtomicBool>,
    /// The init's stack and thread area (it shares the supervisor's memory): kept until the
    /// init has exited.
    init_stack: Mutex<Option<InitStack>>,
    /// The host ids of its user namespace, free for another instance once this one is gone.
    ids: Option<IdRange>,
    /// What a program started inside it gets ([`Kernel::enter`]).
    inside: InsideContext,
    /// Its OCI hooks, whose `poststop` runs once it is removed (on `poststops`).
    oci_hooks: Mutex<Option<(crate::oci::instance_hooks::InstanceHooks, Arc<crate::oci::instance_hooks::Poststops>)>>,
}

impl Sandboxed {
    /// Takes over a started child in `cgroup` and watches for its exit (needs a tokio
    /// runtime); the read ends of its stdout and stderr are handed back for its log.
    pub fn new(cgroup: Cgroup, child: Child) -> io::Result<(Self, OwnedFd, OwnedFd)> {
        let Child { pid, pidfd, netns, stdout, stderr, init_stack, ids, .. } = child;
        // SAFETY: the OwnedFd owns the pidfd for the AsyncFd's whole lifetime.
        let pidfd = match unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) } {
            Ok(fd) => fd,
            Err(e) => {
                let (pidfd, error) = e.into_parts();
                // The init runs on memory it shares with us: kill it, and never unmap its
                // stack (its exit is not awaited here).
                let _ = sandbox::pidfd_signal(pidfd.as_raw_fd(), libc::SIGKILL);
                std::mem::forget(init_stack);
                return Err(error);
            }
        };
        let me = Sandboxed {
            cgroup: Arc::new(cgroup),
            pid,
            pidfd: Arc::new(pidfd),
            netns,
            reaped: Arc::default(),
            init_stack: Mutex::new(Some(init_stack)),
            ids,
            inside: InsideContext::default(),
            oci_hooks: Mutex::new(None),
        };
        Ok((me, stdout, stderr))
    }

    /// What programs started inside it ([`Kernel::enter`]) get.
    #[must_use]
    pub fn with_inside(mut self, inside: InsideContext) -> Self {
        self.inside = inside;
        self
    }

    /// Runs `hooks`' `poststop` (and removes their bundle) on `poststops` once the instance
    /// is removed.
    #[must_use]
    pub fn with_hooks(
        self,
        hooks: Option<crate::oci::instance_hooks::InstanceHooks>,
        poststops: &Arc<crate::oci::instance_hooks::Poststops>,
    ) -> Self {
        *self.oci_hooks.lock().expect("hooks") = hooks.map(|h| (h, poststops.clone()));
        self
    }

    /// The cgroup (for the demo's and tests' look at `cgroup.events`).
    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }
}

impl Drop for Sandboxed {
    fn drop(&mut self) {
        // Unmapping the memory of a running init would crash it; leak it instead (only an
        // instance dropped without a stop gets here, which fcsup never does).
        if !self.reaped.load(Ordering::Acquire) {
            if let Some(s) = self.init_stack.lock().expect("init stack").take() {
                std::mem::forget(s);
            }
        }
    }
}

impl Kernel for Sandboxed {
    async fn freeze(&self) -> Result<(), CgroupError> {
        self.cgroup.freeze().await
    }

    async fn freeze_unless(&self, cancel: impl Future<Output = ()> + Send) -> Result<bool, CgroupError> {
        self.cgroup.freeze_unless(cancel).await
    }

    async fn thaw(&self) -> Result<(), CgroupError> {
        self.cgroup.thaw().await
    }

    fn cpu(&self) -> CpuStat {
        self.cgroup.cpu_stat().unwrap_or_default()
    }

    fn memory(&self) -> &MemoryMeter {
        self.cgroup.memory()
    }

    fn terminate(&self) {
        let _ = sandbox::pidfd_signal(self.pidfd.get_ref().as_raw_fd(), libc::SIGTERM);
    }

    async fn kill(&self) -> Result<(), CgroupError> {
        self.cgroup.kill().await
    }

    fn remove(&self) -> Result<(), CgroupError> {
        self.cgroup.remove()?;
        if let Some((hooks, poststops)) = self.oci_hooks.lock().expect("hooks").take() {
            // Off the runtime: a hook may take its whole timeout.
            poststops.spawn(hooks);
        }
        Ok(())
    }

    fn exited(&self) -> impl Future<Output = Exit> + Send + 'static {
        let (pidfd, cgroup, reaped) = (self.pidfd.clone(), self.cgroup.clone(), self.reaped.clone());
        async move {
            loop {
                let Ok(mut g) = pidfd.readable().await else { return Exit { status: -1, oom_killed: false } };
                match sandbox::pidfd_try_wait(pidfd.get_ref().as_raw_fd()) {
                    Ok(Some(status)) => {
                        reaped.store(true, Ordering::Release);
                        // Read before anyone learns of the exit (and removes the cgroup). The
                        // function itself must have died by SIGKILL: an OOM kill of a child it
                        // survived does not make a later crash an OOM.
                        let oom_killed = status == 128 + libc::SIGKILL && cgroup.oom_kills() > 0;
                        return Exit { status, oom_killed };
                    }
                    Ok(None) => g.clear_ready(),
                    Err(_) => return Exit { status: -1, oom_killed: false },
                }
            }
        }
    }

    fn try_connect(&self, port: u16) -> io::Result<Option<TcpStream>> {
        match self.netns.connect_ready(port)? {
            Some(s) => {
                s.set_nodelay(true)?;
                Ok(Some(TcpStream::from_std(s)?))
            }
            None => Ok(None),
        }
    }

    async fn connect(&self, port: u16) -> io::Result<TcpStream> {
        let sock = tokio::net::TcpSocket::from_std_stream(self.netns.socket()?);
        let stream = sock.connect(std::net::SocketAddr::from((sandbox::INSTANCE_ADDR, port))).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    fn placement(&self) -> Placement {
        Placement { pid: self.pid, cgroup: self.cgroup.path().display().to_string(), host_uid: self.ids.as_ref().map(|r| r.first) }
    }

    fn pids(&self) -> Vec<i32> {
        let procs = std::fs::read_to_string(self.cgroup.path().join("cgroup.procs")).unwrap_or_default();
        procs.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    fn enter(&self, argv: &[String]) -> Result<Entered, String> {
        let v1 = self.cgroup.v1_procs_fds();
        let inside = sandbox::enter::Inside {
            init_pid: self.pid,
            init_pidfd: self.pidfd.get_ref().as_raw_fd(),
            cgroup_fd: self.cgroup.dir_fd(),
            v1_procs: &v1,
            argv,
            env: &self.inside.env,
            cwd: &self.inside.cwd,
            user: self.inside.user,
        };
        let e = sandbox::enter::enter(&inside, &self.inside.isolation).map_err(|e| e.to_string())?;
        Ok(Entered { pidfd: e.pidfd, stdout: e.stdout, stderr: e.stderr })
    }
}
