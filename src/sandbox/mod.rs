//! One function process in its own cgroup and namespaces.
//!
//! `clone3(CLONE_INTO_CGROUP | CLONE_PIDFD | NEWPID | NEWUTS | NEWIPC)` places the child
//! atomically (sharing the supervisor's memory on x86-64). The child joins its network
//! namespace (made ahead of time, [`netns`]) and the prepared root's mount namespace
//! ([`rootfs`]), unshares a copy of that small root, attaches its code read-only at `/code`,
//! mounts a private `/tmp`, `/dev` and `/proc`, and execs the start command under a minimal
//! init ([`child`]). The supervisor reaches the function's port by creating sockets inside the
//! instance's network namespace ([`Netns::socket`]).

mod child;
pub mod enter;
mod image_roots;
mod isolation;
mod netns;
mod rootfs;
pub mod sys;

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use caps::Capability;
use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sys::stat::SFlag;

pub use child::instance_init;
use child::{ExecArgs, Op, Plan, START_STACK, STEP_EXEC, STEP_GATE, STEP_IDS, STEP_SECCOMP, STEP_USERNS_MAP};
pub use image_roots::{ImageRoots, PreparedRoot};
pub use isolation::{IdRange, IdRanges, Isolation, DEFAULT_ID_BASE, IDS_PER_INSTANCE};
pub use netns::{Netns, NetnsPool, INSTANCE_ADDR};
pub use rootfs::RootTemplate;
pub use sys::{pidfd_signal, pidfd_try_wait, InitStack};

/// Errors of the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Preparing or cloning failed in the supervisor.
    #[error("failed to {op}: {source}")]
    Setup {
        /// What was attempted.
        op: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A step inside the new namespaces failed.
    #[error("instance setup failed at '{step}': {source}")]
    Child {
        /// The step.
        step: String,
        /// The errno it got.
        #[source]
        source: io::Error,
    },
    /// The start command could not be executed.
    #[error("Failed to start function instance. Error: the file {command} is not exist")]
    CommandNotFound {
        /// argv\[0\].
        command: String,
    },
    /// An OCI hook failed (the instance was killed before its function started).
    #[error("Failed to start function instance. Error: {0}")]
    Hooks(String),
    /// The function's image cannot be used (not found, corrupt, bad config).
    #[error("Failed to start function instance. Error: image {reference}: {message}")]
    Image {
        /// The image reference.
        reference: String,
        /// What is wrong.
        message: String,
    },
    /// The start command exists but exec failed.
    #[error("Failed to start function instance. Error: cannot execute {command}: {source}")]
    Exec {
        /// argv\[0\].
        command: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn setup(op: impl Into<String>) -> impl FnOnce(io::Error) -> SandboxError {
    let op = op.into();
    move |source| SandboxError::Setup { op, source }
}

/// What to run and how.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Start command and arguments.
    pub argv: Vec<String>,
    /// Environment (complete; nothing is inherited).
    pub env: Vec<(String, String)>,
    /// Host directory mounted read-only at `/code`.
    pub code_dir: PathBuf,
    /// UTS hostname.
    pub hostname: String,
    /// Size of the private `/tmp` in MiB (with an image: of the writable layer).
    pub tmp_size_mb: u64,
    /// The image the instance's root is made of (`code_dir` is then unused).
    pub image: Option<ImageRoot>,
    /// Devices granted beyond the default set (CDI, GPUs).
    pub grants: Grants,
}

/// What CDI or a GPU grant adds to an instance's filesystem (the device cgroup allows the
/// nodes separately).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Device nodes made in its `/dev`.
    pub nodes: Vec<DeviceNode>,
    /// Host files and directories bound read-only into its root.
    pub mounts: Vec<GrantMount>,
}

/// A device node to make in the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Where, under `/dev` (absolute).
    pub path: String,
    /// A block device (else a character device).
    pub block: bool,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Permission bits.
    pub mode: u32,
}

/// A host path bound read-only (nosuid, nodev) into the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantMount {
    /// The host path.
    pub host: PathBuf,
    /// Where in the instance (absolute); made if the root is writable (an image's), else it
    /// must exist.
    pub target: String,
}

/// An instance root made from an image (see [`rootfs::detached_image_root`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRoot {
    /// Unpacked layer directories, bottom first.
    pub layers: Vec<PathBuf>,
    /// The start command's working directory (absolute).
    pub working_dir: String,
    /// uid and gid the function runs as, inside its user namespace.
    pub user: (u32, u32),
}

/// Host directories bound read-only into every instance's root (symlinks are copied as links).
const SYSTEM_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "opt"];

/// Docker's default capability set: what a function process keeps (its bounding set).
const KEEP_CAPS: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_KILL,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_NET_RAW,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_MKNOD,
    Capability::CAP_AUDIT_WRITE,
    Capability::CAP_SETFCAP,
];

/// [`KEEP_CAPS`] as the bit mask the child's bounding-set drop reads (computed here: the
/// child may not allocate, and `caps` builds sets on the heap).
fn keep_caps_mask() -> u64 {
    KEEP_CAPS.iter().fold(0, |m, c| m | c.bitmask())
}

/// A pipe with both ends close-on-exec: (read, write).
fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// A running sandboxed process (the init of its PID namespace).
#[derive(Debug)]
pub struct Child {
    /// Its pid in the supervisor's PID namespace.
    pub pid: i32,
    /// Its pidfd: readable once it exits, used for signals and reaping.
    pub pidfd: OwnedFd,
    /// Its network namespace.
    pub netns: Netns,
    /// Read ends of its stdout and stderr.
    pub stdout: OwnedFd,
    /// See `stdout`.
    pub stderr: OwnedFd,
    /// From clone3 to the successful execve.
    pub clone_to_exec: Duration,
    /// The init's memory; must outlive the init (drop it only once the instance has exited).
    pub init_stack: InitStack,
    /// The host ids of its user namespace (none with `--insecure-instances`); keep until the
    /// instance has exited.
    pub ids: Option<IdRange>,
}

/// What runs while the instance waits, assembled, before its root becomes its own and its
/// function starts (OCI hooks): given the init's host pid; an error fails the start.
pub type Gate<'a> = &'a mut dyn FnMut(i32) -> Result<(), String>;

/// Spawns `spec` into the cgroup directory `cgroup_fd`; `v1_procs` are v1 `cgroup.procs`
/// files the child writes itself into before anything else.
/// The child joins the prepared root `template` (see [`rootfs`]) and attaches the code; an
/// image's root comes made ahead in `prepared` (with the ids it is idmapped to) or is made now.
/// With a `gate`, the child stops once assembled (an image's root still at
/// [`IMAGE_ROOT_AT`]) until the gate has run.
#[allow(clippy::too_many_arguments, reason = "each is one of the start's inputs; a struct would only rename them")]
pub fn spawn(
    spec: &SandboxSpec,
    template: &RootTemplate,
    netns: Netns,
    cgroup_fd: RawFd,
    v1_procs: &[RawFd],
    isolation: &Isolation,
    prepared: Option<PreparedRoot>,
    gate: Option<Gate<'_>>,
) -> Result<Child, SandboxError> {
    let (out_r, out_w) = pipe_cloexec().map_err(setup("create stdout pipe"))?;
    let (err_r, err_w) = pipe_cloexec().map_err(setup("create stderr pipe"))?;
    let (status_r, status_w) = pipe_cloexec().map_err(setup("create status pipe"))?;
    let (ids, prepared_root) = match prepared {
        Some(p) => (p.ids, Some(p.root)),
        None => (isolation.ids.as_ref().map(|r| r.take()).transpose().map_err(setup("reserve the instance's host ids"))?, None),
    };
    let sync = match &ids {
        Some(ids) => {
            // The function's root owns its output pipes, so it can reopen /dev/stdout (as runc does).
            for w in [&out_w, &err_w] {
                let id = Some(ids.first);
                nix::unistd::fchown(w, id.map(nix::unistd::Uid::from_raw), id.map(nix::unistd::Gid::from_raw))
                    .map_err(|e| setup("hand the output pipes to the instance's root")(e.into()))?;
            }
            Some(pipe_cloexec().map_err(setup("create the user namespace pipe"))?)
        }
        None => None,
    };
    let devnull = nix::fcntl::open(c"/dev/null", OFlag::O_RDONLY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
        .map_err(|e| setup("open /dev/null")(e.into()))?;
    let code_tree = match (&spec.image, prepared_root) {
        (None, _) => rootfs::detached_ro_tree(&spec.code_dir).map_err(setup(format!("prepare {} for /code", spec.code_dir.display())))?,
        (Some(_), Some(root)) => root,
        (Some(image), None) => {
            let t0 = Instant::now();
            let root = image_roots::make(&image.layers, spec.tmp_size_mb, ids.as_ref()).map_err(setup("prepare the image's root"))?;
            tracing::debug!(us = t0.elapsed().as_micros(), "image root made during the start");
            root
        }
    };
    let grant_trees = spec
        .grants
        .mounts
        .iter()
        .map(|m| rootfs::detached_ro_tree(&m.host).map_err(setup(format!("prepare {} for {}", m.host.display(), m.target))))
        .collect::<Result<Vec<OwnedFd>, _>>()?;
    let grant_fds: Vec<RawFd> = grant_trees.iter().map(AsRawFd::as_raw_fd).collect();
    if spec.image.is_some() {
        // Its /dev, /proc and /tmp are mounted before the root is its own: none may be a
        // symlink out of it.
        for dir in ["dev", "proc", "tmp"] {
            let at = nix::sys::stat::fstatat(code_tree.as_fd(), dir, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW);
            if at.is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK) {
                return Err(SandboxError::Setup {
                    op: format!("use the image's /{dir}"),
                    source: io::Error::new(io::ErrorKind::InvalidData, "it is a symlink"),
                });
            }
        }
    }
    let gate_pipe = match gate {
        Some(_) => Some(pipe_cloexec().map_err(setup("create the hooks' pipe"))?),
        None => None,
    };
    let root = Root { ns: template.fd(), code: code_tree.as_raw_fd(), grants: &grant_fds };
    let fds = Fds {
        netns: netns.fd().as_raw_fd(),
        stdio: [devnull.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
        err: status_w.as_raw_fd(),
        sync: sync.as_ref().map(|(r, w)| (r.as_raw_fd(), w.as_raw_fd())),
        gate: gate_pipe.as_ref().map(|(r, _)| r.as_raw_fd()),
    };
    let mut plan = plan(spec, root, v1_procs, fds)?;
    plan.seccomp = isolation.seccomp.clone();
    plan.init_program = isolation.init_program.as_ref().map_or(-1, |f| f.as_raw_fd());
    let mut keep: Vec<RawFd> = vec![fds.netns, root.ns, root.code, fds.err, plan.init_program];
    keep.extend(fds.stdio);
    keep.extend(grant_fds.iter().copied());
    keep.extend(v1_procs.iter().copied());
    keep.extend(fds.sync.map(|(r, w)| [r, w]).into_iter().flatten());
    keep.extend(fds.gate);
    keep.retain(|fd| *fd >= 0);
    keep.sort_unstable();
    keep.dedup();
    plan.keep_fds = keep;
    let exec = ExecArgs::new(&plan);
    // No CLONE_NEWNS: the child joins the prepared root's namespace and unshares a copy.
    let flags = (nix::sched::CloneFlags::CLONE_NEWPID | nix::sched::CloneFlags::CLONE_NEWUTS | nix::sched::CloneFlags::CLONE_NEWIPC).bits();
    let flags = u64::try_from(flags).expect("clone flags are positive");
    let init_stack = sys::InitStack::new().map_err(setup("map the init's stack"))?;
    // Lives in this frame until the status pipe's EOF: the child reads it until then.
    let init_args = InitArgs { plan: &plan, exec: &exec };
    let t0 = Instant::now();
    let (pid, pidfd) = start_init(flags, cgroup_fd, &init_stack, &init_args)?;
    drop((status_w, out_w, err_w, devnull));
    let kill = |pidfd: &OwnedFd| {
        let _ = sys::pidfd_signal(pidfd.as_raw_fd(), libc::SIGKILL);
        let _ = wait_blocking(pidfd);
    };
    let mut status = std::fs::File::from(status_r);
    let mut report = read_report(&mut status);
    if let (Ok(Some((STEP_GATE, _))), Some(gate), Some((_, go))) = (&report, gate, gate_pipe) {
        // Assembled and waiting: the hooks run now.
        if let Err(message) = gate(pid) {
            kill(&pidfd);
            return Err(SandboxError::Hooks(message));
        }
        if let Err(e) = std::fs::File::from(go).write_all(b"1") {
            kill(&pidfd);
            return Err(SandboxError::Setup { op: "resume the instance after its hooks".into(), source: e });
        }
        report = read_report(&mut status);
    }
    if let (Ok(Some((STEP_USERNS_MAP, _))), Some(ids), Some((_, sync_w))) = (&report, &ids, sync) {
        // The init is in its user namespace, waiting: map it, then let it go on.
        if let Err(e) = ids.write_maps(pid) {
            kill(&pidfd);
            return Err(SandboxError::Setup { op: "map the instance's user namespace".into(), source: e });
        }
        let go = std::fs::File::from(sync_w);
        if let Err(e) = (&go).write_all(b"1") {
            kill(&pidfd);
            return Err(SandboxError::Setup { op: "resume the instance after mapping its ids".into(), source: e });
        }
        drop(go);
        report = read_report(&mut status);
    }
    let clone_to_exec = t0.elapsed();
    if let (Ok(None), Some(ids), Some(_)) = (&report, &ids, &spec.image) {
        ids.prepare_next();
    }
    match report {
        Ok(None) => Ok(Child { pid, pidfd, netns, stdout: out_r, stderr: err_r, clone_to_exec, init_stack, ids }),
        Ok(Some((step, errno))) => {
            kill(&pidfd);
            let source = io::Error::from_raw_os_error(errno);
            let command = spec.argv.first().cloned().unwrap_or_default();
            Err(match step {
                STEP_EXEC if errno == libc::ENOENT => SandboxError::CommandNotFound { command },
                STEP_EXEC => SandboxError::Exec { command, source },
                STEP_IDS => SandboxError::Child { step: "become root of the instance's user namespace".into(), source },
                STEP_SECCOMP => SandboxError::Child { step: "install the seccomp filter".into(), source },
                STEP_USERNS_MAP => SandboxError::Child { step: "enter a user namespace".into(), source },
                STEP_GATE => SandboxError::Child { step: "stop for the OCI hooks".into(), source },
                s => SandboxError::Child { step: plan.ops.get(s as usize).map(|o| o.1.clone()).unwrap_or_default(), source },
            })
        }
        Err(e) => {
            kill(&pidfd);
            Err(SandboxError::Setup { op: "read the instance's start status".into(), source: e })
        }
    }
}

/// Reads one 8-byte (step, errno) report from the child, or `None` at EOF (the function's
/// execve closed the pipe: it started).
fn read_report(status: &mut std::fs::File) -> io::Result<Option<(u32, i32)>> {
    let mut msg = [0u8; 8];
    let mut got = 0;
    while got < msg.len() {
        match status.read(&mut msg[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if got < msg.len() {
        return Ok(None);
    }
    let step = u32::from_ne_bytes(msg[..4].try_into().expect("4 bytes"));
    let errno = i32::from_ne_bytes(msg[4..].try_into().expect("4 bytes"));
    Ok(Some((step, errno)))
}

/// Whether this host can give instances their root the way [`spawn`] does: builds a skeleton
/// under `scratch` (an empty directory; its mounts stay in a throwaway namespace) and clones
/// a read-only tree of `scratch` with `open_tree`/`mount_setattr`.
pub fn probe_root(scratch: &Path) -> io::Result<()> {
    let template = RootTemplate::build(scratch)?;
    let tree = rootfs::detached_ro_tree(scratch)?;
    drop((tree, template));
    Ok(())
}

/// What the init needs, on the spawning thread's stack (alive until the status pipe's EOF).
struct InitArgs<'a> {
    plan: &'a Plan,
    exec: &'a ExecArgs,
}

extern "C" fn init_entry(arg: *mut libc::c_void) -> ! {
    // SAFETY: `arg` points to the spawning frame's InitArgs, which outlives every use: the
    // supervisor waits for the status pipe's EOF, which comes after the child's last use.
    let a = unsafe { &*(arg as *const InitArgs) };
    child::run(a.plan, a.exec)
}

/// Starts the init: sharing the supervisor's address space on x86-64 (no copy of it is made,
/// so the supervisor takes no copy-on-write faults afterwards), fork-style elsewhere.
fn start_init(flags: u64, cgroup_fd: RawFd, stack: &sys::InitStack, args: &InitArgs) -> Result<(i32, OwnedFd), SandboxError> {
    #[cfg(target_arch = "x86_64")]
    {
        sys::clone3_vm(flags, cgroup_fd, stack, init_entry, (args as *const InitArgs).cast_mut().cast()).map_err(setup("clone3 the instance"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = stack;
        match sys::clone3(flags, cgroup_fd).map_err(setup("clone3 the instance"))? {
            sys::Forked::Child => child::run(args.plan, args.exec),
            sys::Forked::Parent(pid, fd) => Ok((pid, fd)),
        }
    }
}

fn wait_blocking(pidfd: &OwnedFd) -> io::Result<i32> {
    loop {
        if let Some(s) = sys::pidfd_try_wait(pidfd.as_raw_fd())? {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn cstr(s: impl AsRef<[u8]>) -> Result<CString, SandboxError> {
    CString::new(s.as_ref()).map_err(|_| SandboxError::Setup {
        op: format!("use {:?}", String::from_utf8_lossy(s.as_ref())),
        source: io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"),
    })
}

fn path_c(p: &Path) -> Result<CString, SandboxError> {
    cstr(p.as_os_str().as_bytes())
}

/// The prepared root's mount namespace (fd), the detached code tree (fd), and the detached
/// trees of granted host paths.
#[derive(Debug, Clone, Copy)]
struct Root<'a> {
    ns: RawFd,
    code: RawFd,
    grants: &'a [RawFd],
}

/// The supervisor's fds the child uses.
#[derive(Debug, Clone, Copy)]
struct Fds {
    /// The network namespace to join.
    netns: RawFd,
    /// What becomes 0, 1, 2.
    stdio: [RawFd; 3],
    /// Write end of the status pipe.
    err: RawFd,
    /// The user namespace go-ahead pipe (read, write), when the instance gets one.
    sync: Option<(RawFd, RawFd)>,
    /// Read end of the OCI hooks' go-ahead, when hooks run before the function starts.
    gate: Option<RawFd>,
}

/// Where an image's root is assembled before it becomes the instance's root (and where OCI
/// hooks find it).
pub const IMAGE_ROOT_AT: &str = "/code";

/// `/proc` files that reveal or control the host, covered with `/dev/null` (runc's list).
const PROC_MASKED: &[&str] = &["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/latency_stats"];
/// `/proc` paths made read-only (runc's list).
const PROC_READ_ONLY: &[&str] = &["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"];

/// mkdir -p of `path`'s parents (an existing one, even on a read-only root, is fine).
fn parents(path: &Path, push: &mut impl FnMut(Op, String)) -> Result<(), SandboxError> {
    let mut dir = PathBuf::from("/");
    let parts: Vec<_> = path.components().skip(1).collect();
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        dir.push(part);
        push(Op::Mkdir { path: path_c(&dir)?, mode: 0o755 }, format!("create {}", dir.display()));
    }
    Ok(())
}

/// The steps that make granted device nodes in the instance's `/dev` (under `base`).
fn device_nodes(spec: &SandboxSpec, base: &Path, push: &mut impl FnMut(Op, String)) -> Result<(), SandboxError> {
    for n in &spec.grants.nodes {
        let rel = n.path.trim_start_matches('/');
        if !rel.starts_with("dev/") || rel.split('/').any(|c| c == ".." || c == "." || c.is_empty()) {
            return Err(SandboxError::Setup {
                op: format!("create the granted device {}", n.path),
                source: io::Error::new(io::ErrorKind::InvalidInput, "a device node must be a plain path under /dev"),
            });
        }
        let path = base.join(rel);
        parents(&path, push)?;
        let kind = if n.block { SFlag::S_IFBLK } else { SFlag::S_IFCHR };
        push(
            Op::Mknod { path: path_c(&path)?, kind, mode: n.mode & 0o777, dev: nix::sys::stat::makedev(n.major.into(), n.minor.into()) },
            format!("create the granted device {}", n.path),
        );
    }
    Ok(())
}

/// The steps that bind granted host paths (`trees`, one detached mount per [`GrantMount`])
/// into the root, once it is the instance's own (so its symlinks resolve inside it).
fn grant_mounts(spec: &SandboxSpec, trees: &[RawFd], push: &mut impl FnMut(Op, String)) -> Result<(), SandboxError> {
    for (m, fd) in spec.grants.mounts.iter().zip(trees) {
        let target = Path::new(&m.target);
        parents(target, push)?;
        let target_c = path_c(target)?;
        if m.host.is_dir() {
            push(Op::Mkdir { path: target_c.clone(), mode: 0o755 }, format!("create {}", m.target));
        } else {
            push(Op::Touch(target_c.clone()), format!("create {}", m.target));
        }
        push(Op::MoveMount { fd: *fd, dst: target_c }, format!("bind {} at {}", m.host.display(), m.target));
    }
    Ok(())
}

/// Builds the child's steps and exec arguments.
fn plan(spec: &SandboxSpec, root_how: Root, v1_procs: &[RawFd], fds: Fds) -> Result<Plan, SandboxError> {
    let mut ops: Vec<(Op, String)> = Vec::new();
    let mut push = |op: Op, what: String| ops.push((op, what));
    push(Op::SchedOther, "reset scheduling to SCHED_OTHER".into());
    for fd in v1_procs {
        push(Op::WriteFd { fd: *fd, data: b"0" }, "join the v1 cgroups".into());
    }
    push(Op::UnshareCgroupNs, "enter a cgroup namespace".into());
    push(Op::JoinNetns(fds.netns), "join the instance's network namespace".into());
    let mount = |src: Option<&str>, dst: CString, fstype: Option<&str>, flags: MsFlags, data: Option<&str>| {
        Ok::<_, SandboxError>(Op::Mount {
            src: src.map(cstr).transpose()?,
            dst,
            fstype: fstype.map(cstr).transpose()?,
            flags,
            data: data.map(cstr).transpose()?,
        })
    };
    push(Op::JoinMountNs(root_how.ns), "join the prepared root's mount namespace".into());
    push(Op::UnshareMountNs, "copy the prepared root".into());
    // An image's root is assembled at /code (its /dev and /proc mounted inside it), where
    // OCI hooks find it as `root.path`, and then moved over / (as switch_root does: nothing is
    // detached, so no unmount waits for an RCU grace period; the prepared root stays covered
    // below it). A custom runtime's root is the prepared one, /code its code.
    let base = Path::new(if spec.image.is_some() { IMAGE_ROOT_AT } else { "/" });
    let under = |rel: &str| path_c(&base.join(rel));
    if spec.image.is_some() {
        push(Op::MoveMount { fd: root_how.code, dst: cstr(IMAGE_ROOT_AT)? }, "attach the image's root".into());
        // Mount points the image may lack (made in its private writable layer; the image's
        // own were checked not to be symlinks); /tmp lives in that layer, within diskSize.
        for (dir, mode) in [("tmp", 0o1777), ("dev", 0o755), ("proc", 0o555)] {
            push(Op::Mkdir { path: under(dir)?, mode }, format!("create /{dir}"));
        }
    } else {
        push(Op::MoveMount { fd: root_how.code, dst: cstr("/code")? }, format!("attach {} at /code", spec.code_dir.display()));
        let tmp_opts = format!("mode=1777,size={}m", spec.tmp_size_mb);
        push(
            mount(Some("tmpfs"), under("tmp")?, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(&tmp_opts))?,
            "mount the private /tmp".into(),
        );
    }
    push(
        mount(Some("tmpfs"), under("dev")?, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("mode=755,size=64k"))?,
        "mount /dev".into(),
    );
    for (name, major, minor) in [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)] {
        push(
            Op::Mknod { path: under(&format!("dev/{name}"))?, kind: SFlag::S_IFCHR, mode: 0o666, dev: nix::sys::stat::makedev(major, minor) },
            format!("create /dev/{name}"),
        );
    }
    for (name, target) in [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")] {
        push(Op::Symlink { target: cstr(target)?, path: under(&format!("dev/{name}"))? }, format!("link /dev/{name}"));
    }
    push(Op::Mkdir { path: under("dev/shm")?, mode: 0o1777 }, "create /dev/shm".into());
    push(
        mount(Some("shm"), under("dev/shm")?, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777,size=64m"))?,
        "mount /dev/shm".into(),
    );
    // hidepid: the function sees only the processes it could ptrace, so not the init (not
    // dumpable), whose command line would be the supervisor's.
    push(
        mount(Some("proc"), under("proc")?, Some("proc"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, Some("hidepid=invisible"))?,
        "mount /proc".into(),
    );
    for p in PROC_MASKED {
        push(Op::Mask { null: under("dev/null")?, path: under(p.trim_start_matches('/'))? }, format!("mask {p}"));
    }
    for p in PROC_READ_ONLY {
        push(Op::ReadOnly(under(p.trim_start_matches('/'))?), format!("make {p} read-only"));
    }
    device_nodes(spec, base, &mut push)?;
    if let (Some(gate_r), true) = (fds.gate, spec.image.is_some()) {
        push(Op::Gate(gate_r), "wait for the OCI hooks".into());
    }
    if spec.image.is_some() {
        push(Op::Chdir(cstr(IMAGE_ROOT_AT)?), "enter the image's root".into());
        push(mount(Some("."), cstr("/")?, None, MsFlags::MS_MOVE, None)?, "move the image's root over /".into());
        push(Op::Chroot(cstr(".")?), "chroot into the image's root".into());
        push(Op::Chdir(cstr("/")?), "chdir to /".into());
    }
    grant_mounts(spec, root_how.grants, &mut push)?;
    if let (Some(gate_r), false) = (fds.gate, spec.image.is_some()) {
        push(Op::Gate(gate_r), "wait for the OCI hooks".into());
    }
    push(Op::Hostname(cstr(&spec.hostname)?), "set the hostname".into());
    let workdir = spec.image.as_ref().map_or("/code", |i| i.working_dir.as_str());
    push(Op::Chdir(cstr(workdir)?), format!("chdir to {workdir}"));
    if let Some((sync_r, sync_w)) = fds.sync {
        push(Op::UserNs { sync_r, sync_w }, "enter a user namespace".into());
    }

    let argv: Vec<CString> = spec.argv.iter().map(cstr).collect::<Result<_, _>>()?;
    let envp: Vec<CString> = spec.env.iter().map(|(k, v)| cstr(format!("{k}={v}"))).collect::<Result<_, _>>()?;
    let cmd = spec.argv.first().ok_or_else(|| SandboxError::CommandNotFound { command: String::new() })?;
    let exec_candidates = if cmd.contains('/') {
        let p = if cmd.starts_with('/') { cmd.clone() } else { format!("{}/{cmd}", workdir.trim_end_matches('/')) };
        vec![cstr(p)?]
    } else {
        let path = spec.env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or("/usr/bin:/bin");
        path.split(':').filter(|d| !d.is_empty()).map(|d| cstr(format!("{d}/{cmd}"))).collect::<Result<_, _>>()?
    };
    let keep_caps = keep_caps_mask();
    Ok(Plan {
        ops,
        argv,
        envp,
        exec_candidates,
        stdio: fds.stdio,
        err_fd: fds.err,
        keep_caps,
        stack: vec![0; START_STACK],
        userns: fds.sync.is_some(),
        user: spec.image.as_ref().map_or((0, 0), |i| i.user),
        seccomp: None,
        init_program: -1,
        keep_fds: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_capabilities_are_dockers_default_set() {
        // CAP_CHOWN … CAP_SETFCAP by number, as Docker's default profile lists them.
        let docker: u64 = [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31].iter().fold(0, |m, c| m | (1 << c));
        assert_eq!(keep_caps_mask(), docker);
        assert_eq!(keep_caps_mask() & Capability::CAP_SYS_ADMIN.bitmask(), 0);
    }
}
