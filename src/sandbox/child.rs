//! What runs in the new namespaces between `clone3` and `execve`: a prepared list of steps
//! (mounts, pivot_root, loopback up, ...), then a minimal init.
//!
//! Nothing here may allocate or take a lock: the init shares the supervisor's address space
//! while its other threads run. It calls `nix` only where the call is a plain syscall on
//! `&CStr`s and integers (no path copied to the heap, no pointer array built, no glibc wrapper
//! that signals every thread), and [`sys`]'s child-safe raw wrappers for the rest.
//!
//! The child is PID 1 of its PID namespace. PID 1 ignores signals it has no handler for, so the
//! child stays on as a tiny init (like tini): it forks the function, forwards signals to it,
//! reaps orphans and exits with the function's status, taking every other process with it.

use std::ffi::{c_char, CString, OsStr};
use std::os::fd::{BorrowedFd, IntoRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::sys::stat::{Mode, SFlag};

use super::sys;

/// One prepared step. Every string is built before the clone; the child only reads them.
pub enum Op {
    /// mount(2).
    Mount { src: Option<CString>, dst: CString, fstype: Option<CString>, flags: MsFlags, data: Option<CString> },
    /// mkdir(2).
    Mkdir { path: CString, mode: libc::mode_t },
    /// symlink(2).
    Symlink { target: CString, path: CString },
    /// mknod(2) of a device node (`kind`: `S_IFCHR` or `S_IFBLK`).
    Mknod { path: CString, kind: SFlag, mode: libc::mode_t, dev: libc::dev_t },
    /// Create an empty file if nothing is there (a bind mount's target); an existing one is
    /// fine, even on a read-only root.
    Touch(CString),
    /// chdir(2).
    Chdir(CString),
    /// chroot(2).
    Chroot(CString),
    /// Write `data` to an already-open fd (v1 `cgroup.procs`).
    WriteFd { fd: RawFd, data: &'static [u8] },
    /// Join the network namespace open at this fd.
    JoinNetns(RawFd),
    /// Join the mount namespace open at this fd (the prepared root).
    JoinMountNs(RawFd),
    /// Take a private copy of the current mount namespace.
    UnshareMountNs,
    /// Attach the detached mount tree at `fd` on `dst` (move_mount).
    MoveMount { fd: RawFd, dst: CString },
    /// sethostname(2).
    Hostname(CString),
    /// Reset to SCHED_OTHER: a real-time supervisor must not hand its priority down.
    SchedOther,
    /// Take a cgroup namespace rooted at the instance's cgroups (after joining the v1 ones),
    /// so `/proc/self/cgroup` shows `/`, not the supervisor's layout.
    UnshareCgroupNs,
    /// Bind `null` (the instance's `/dev/null`) over a `/proc` file that reveals or controls
    /// the host (as runc masks them); a file this kernel lacks is skipped.
    Mask { null: CString, path: CString },
    /// Report [`STEP_GATE`] and wait on this fd until the supervisor has run the OCI hooks
    /// (EOF without a byte: it gave up, and the start fails).
    Gate(RawFd),
    /// Bind a `/proc` path over itself and make it read-only; a missing path is skipped.
    ReadOnly(CString),
    /// Enter a new user namespace, then ask the supervisor (a [`STEP_USERNS_MAP`] report on the
    /// error pipe) to write its uid/gid maps, and wait on `sync_r` until it has. Last step:
    /// everything before it needs the host's capabilities.
    UserNs {
        /// Read end of the supervisor's go-ahead.
        sync_r: RawFd,
        /// The child's copy of the write end, closed first so a dead supervisor reads as EOF.
        sync_w: RawFd,
    },
}

/// Everything the child needs, prepared in the parent.
pub struct Plan {
    /// Steps with a description used in error messages.
    pub ops: Vec<(Op, String)>,
    /// argv (NULL-terminated pointer array kept alongside).
    pub argv: Vec<CString>,
    /// envp strings.
    pub envp: Vec<CString>,
    /// Paths to try for argv\[0\] (PATH search done up front).
    pub exec_candidates: Vec<CString>,
    /// fds that become 0, 1, 2.
    pub stdio: [RawFd; 3],
    /// Write end of the close-on-exec error pipe.
    pub err_fd: RawFd,
    /// Capabilities kept in the bounding set (bit mask).
    pub keep_caps: u64,
    /// Stack for the function's vfork-style start, allocated in the parent (the child must
    /// not allocate).
    pub stack: Vec<u8>,
    /// Whether the init entered a user namespace ([`Op::UserNs`]): the function then becomes
    /// uid/gid 0 of it (an unprivileged id on the host) with no supplementary groups.
    pub userns: bool,
    /// uid and gid the function (not the init) takes: an image's `User`; (0, 0) otherwise.
    pub user: (u32, u32),
    /// The seccomp filter, installed just before the function's (and the init's) execve.
    pub seccomp: Option<std::sync::Arc<super::isolation::Filters>>,
    /// fd of the small init program (`fcsup-init`) the init re-executes, or -1 (fcsup itself).
    pub init_program: RawFd,
    /// The only fds the child keeps (sorted): those its steps use.
    pub keep_fds: Vec<RawFd>,
}

/// Stack size of the function's vfork-style start (it only makes syscalls).
pub const START_STACK: usize = 64 * 1024;

/// Step index reported when every exec candidate failed.
pub const STEP_EXEC: u32 = u32::MAX;
/// Step index reported when the function could not take its ids in the user namespace.
pub const STEP_IDS: u32 = u32::MAX - 1;
/// Step index reported when the seccomp filter could not be installed.
pub const STEP_SECCOMP: u32 = u32::MAX - 2;
/// Not a failure: the init has entered its user namespace and waits for its id maps.
pub const STEP_USERNS_MAP: u32 = u32::MAX - 3;
/// Not a failure: the instance is assembled and waits for the OCI hooks.
pub const STEP_GATE: u32 = u32::MAX - 4;

fn ptrs(v: &[CString]) -> Vec<*const c_char> {
    v.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
}

/// Pointer arrays for execve, built in the parent (the child must not allocate).
pub struct ExecArgs {
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
}

impl ExecArgs {
    /// Builds the NULL-terminated arrays over `plan`'s strings.
    pub fn new(plan: &Plan) -> Self {
        ExecArgs { argv: ptrs(&plan.argv), envp: ptrs(&plan.envp) }
    }
}

/// An fd of the plan, borrowed for one call.
fn fd(raw: RawFd) -> BorrowedFd<'static> {
    // SAFETY: every fd in the plan stays open until the child has used it (the supervisor
    // closes its copies only after the status pipe's EOF).
    unsafe { BorrowedFd::borrow_raw(raw) }
}

/// Writes one 8-byte report (step, errno) on the error pipe.
pub(super) fn report(err_fd: RawFd, step: u32, errno: i32) {
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&step.to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    let _ = nix::unistd::write(fd(err_fd), &msg);
}

pub(super) fn fail(err_fd: RawFd, step: u32, errno: Errno) -> ! {
    report(err_fd, step, errno as i32);
    sys::exit_now(127)
}

/// `mount(2)` of C strings (nix passes `&CStr` straight through: no copy).
fn mount(
    src: Option<&std::ffi::CStr>,
    dst: &std::ffi::CStr,
    fstype: Option<&std::ffi::CStr>,
    flags: MsFlags,
    data: Option<&std::ffi::CStr>,
) -> Result<(), Errno> {
    nix::mount::mount(src, dst, fstype, flags, data)
}

/// Binds `src` on `dst`; `Ok(false)` when `dst` does not exist on this kernel.
fn bind(src: &std::ffi::CStr, dst: &std::ffi::CStr, flags: MsFlags) -> Result<bool, Errno> {
    match mount(Some(src), dst, None, MsFlags::MS_BIND | flags, None) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

fn check<T>(r: Result<T, Errno>, err_fd: RawFd, step: u32) {
    if let Err(e) = r {
        fail(err_fd, step, e);
    }
}

/// Runs in the cloned child; never returns.
pub fn run(plan: &Plan, exec: &ExecArgs) -> ! {
    // The supervisor's signal handlers were copied into this process: block every signal
    // so none of them runs here (the function starts with an empty mask).
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None);
    // Device nodes and directories get exactly the modes the plan gives (the function,
    // not root on the host, must be able to write /dev/null).
    nix::sys::stat::umask(Mode::empty());
    // Nothing of the supervisor's but what the steps use (see `sys::close_all_but`).
    sys::close_all_but(&plan.keep_fds);
    let e = plan.err_fd;
    for (i, (op, _)) in (0u32..).zip(plan.ops.iter()) {
        match op {
            Op::Mount { src, dst, fstype, flags, data } => check(mount(src.as_deref(), dst, fstype.as_deref(), *flags, data.as_deref()), e, i),
            Op::Mkdir { path, mode } => match nix::unistd::mkdir(path.as_c_str(), Mode::from_bits_retain(*mode)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(errno) => fail(e, i, errno),
            },
            Op::Symlink { target, path } => check(nix::unistd::symlinkat(target.as_c_str(), nix::fcntl::AT_FDCWD, path.as_c_str()), e, i),
            Op::Mknod { path, kind, mode, dev } => check(nix::sys::stat::mknod(path.as_c_str(), *kind, Mode::from_bits_retain(*mode), *dev), e, i),
            Op::Touch(path) => {
                let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC;
                match nix::fcntl::open(path.as_c_str(), flags, Mode::from_bits_retain(0o644)) {
                    Ok(f) => drop(f),
                    Err(errno) => fail(e, i, errno),
                }
            }
            Op::Chdir(p) => {
                check(nix::unistd::chdir(p.as_c_str()), e, i);
                // An image's WorkingDir through a magic link could land outside the root.
                if !sys::cwd_reachable() {
                    fail(e, i, Errno::EACCES);
                }
            }
            Op::Chroot(p) => check(nix::unistd::chroot(p.as_c_str()), e, i),
            Op::WriteFd { fd: f, data } => {
                check(nix::unistd::write(fd(*f), data), e, i);
                // A file of the host's cgroup tree: closed before any path is resolved.
                let _ = nix::unistd::close(*f);
            }
            Op::JoinNetns(f) => check(nix::sched::setns(fd(*f), CloneFlags::CLONE_NEWNET), e, i),
            Op::JoinMountNs(f) => check(nix::sched::setns(fd(*f), CloneFlags::CLONE_NEWNS), e, i),
            Op::UnshareMountNs => check(nix::sched::unshare(CloneFlags::CLONE_NEWNS), e, i),
            Op::MoveMount { fd: f, dst } => check(sys::move_mount(*f, dst), e, i),
            Op::Hostname(h) => check(nix::unistd::sethostname(OsStr::from_bytes(h.as_bytes())), e, i),
            Op::SchedOther => check(sys::sched_setscheduler(libc::SCHED_OTHER, 0), e, i),
            Op::UnshareCgroupNs => check(nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP), e, i),
            Op::Mask { null, path } => {
                if let Err(errno) = bind(null, path, MsFlags::empty()) {
                    fail(e, i, errno);
                }
            }
            Op::Gate(gate) => {
                report(e, STEP_GATE, 0);
                let mut go = [0u8; 1];
                if nix::unistd::read(fd(*gate), &mut go) != Ok(1) {
                    fail(e, i, Errno::ECANCELED);
                }
            }
            Op::ReadOnly(path) => match bind(path, path, MsFlags::MS_REC) {
                Ok(true) => {
                    let flags =
                        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
                    check(mount(None, path, None, flags, None), e, i);
                }
                Ok(false) => {}
                Err(errno) => fail(e, i, errno),
            },
            Op::UserNs { sync_r, sync_w } => {
                let _ = nix::unistd::close(*sync_w);
                check(nix::sched::unshare(CloneFlags::CLONE_NEWUSER), e, i);
                report(e, STEP_USERNS_MAP, 0);
                let mut go = [0u8; 1];
                if nix::unistd::read(fd(*sync_r), &mut go) != Ok(1) {
                    fail(e, i, Errno::EPIPE);
                }
                let _ = nix::unistd::close(*sync_r);
            }
        }
    }
    init(plan, exec)
}

/// What the function's start needs, on the init's stack.
struct Start<'a> {
    plan: &'a Plan,
    exec: &'a ExecArgs,
    function_mask: SigSet,
}

/// The function's side of the start: runs on its own stack in the init's memory (CLONE_VM |
/// CLONE_VFORK, as posix_spawn does) until execve replaces it. No copy of the supervisor's
/// address space is made for it, and none is torn down by its execve.
extern "C" fn start_function(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the init's `Start`, alive until this child execs or exits
    // (CLONE_VFORK suspends the init until then).
    let st = unsafe { &*(arg as *const Start) };
    let plan = st.plan;
    // SAFETY: restoring the default disposition installs no handler.
    let _ = unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl) };
    nix::sys::stat::umask(Mode::from_bits_retain(0o022));
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&st.function_mask), None);
    let _ = nix::unistd::setsid();
    for (target, &source) in (0 as RawFd..).zip(plan.stdio.iter()) {
        if source != target {
            // SAFETY: 0, 1 and 2 are this process's to replace; the new fd is left open (it is
            // the function's stdio), not owned.
            let _ = unsafe { nix::unistd::dup2_raw(fd(source), target) }.map(IntoRawFd::into_raw_fd);
        }
    }
    // No supervisor fd may leak into the function.
    sys::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
    // SAFETY: only async-signal-safe calls; the filter is alive (the supervisor owns it).
    if let Err((step, errno)) = unsafe { Confinement::of(plan).as_user(plan.user).apply() } {
        fail(plan.err_fd, step, errno);
    }
    let mut errno = Errno::ENOENT;
    for path in &plan.exec_candidates {
        // SAFETY: NULL-terminated pointer arrays over the plan's strings, built in the parent.
        let err = unsafe { sys::execve(path, st.exec.argv.as_ptr(), st.exec.envp.as_ptr()) };
        if err != Errno::ENOENT {
            errno = err;
        }
    }
    fail(plan.err_fd, STEP_EXEC, errno)
}

/// PID 1: start the function, then forward signals and reap until it exits.
fn init(plan: &Plan, exec: &ExecArgs) -> ! {
    let e = plan.err_fd;
    // The init holds a copy of the supervisor's memory: nothing in the instance, root or
    // not, may read it through ptrace or /proc/1/mem.
    let _ = nix::sys::prctl::set_dumpable(false);
    // Every signal stays blocked (see run()); the init takes them with sigwaitinfo.
    let mut start = Start { plan, exec, function_mask: SigSet::empty() };
    let top = (plan.stack.as_ptr() as usize + plan.stack.len()) & !15;
    // SAFETY: the stack is the plan's, alive until the function execs (CLONE_VFORK waits for
    // that); `start` lives on this frame until then.
    let main = match unsafe { sys::clone_vfork(start_function, top as *mut libc::c_void, (&mut start as *mut Start).cast()) } {
        Ok(pid) => pid,
        Err(errno) => fail(e, STEP_EXEC, errno),
    };
    // Last use of `plan`: the supervisor frees it once the error pipe is closed.
    let confinement = Confinement::of(plan);
    let program = plan.init_program;
    // The init keeps no fd but its program's (close-on-exec): the function's exec closes
    // the error pipe for the parent, so the init's own confinement below runs while the
    // function starts, off the supervisor's path.
    if let Ok(program @ 1..) = u32::try_from(program) {
        sys::close_range(0, program - 1, 0);
        sys::close_range(program + 1, u32::MAX, 0);
    } else {
        sys::close_range(0, u32::MAX, 0);
    }
    // SAFETY: async-signal-safe calls only; the supervisor keeps the filter alive.
    if unsafe { confinement.apply() }.is_ok() {
        // SAFETY: runs in the init after the function started.
        unsafe { exec_small_init(main, program) };
    }
    forward_and_reap(main)
}

/// The init leaves the supervisor's address space: confined exactly like the function (by the
/// caller), it executes a small program (`fcsup-init instance-init PID`, or fcsup itself with
/// the same arguments; both run [`instance_init`]) that only forwards signals and reaps. Until
/// then the init shares the supervisor's memory, so an OOM kill chosen by that memory's size
/// would take the supervisor down; after it, the instance's memory cgroup holds nothing of the
/// supervisor's. Returns only if the exec failed (the init then carries on in place).
///
/// # Safety
/// Runs in the init, after the function has started: async-signal-safe calls only.
unsafe fn exec_small_init(main: libc::pid_t, program: RawFd) {
    let mut pid = [0u8; 12];
    let mut digits = [0u8; 10];
    let (mut n, mut len) = (main.unsigned_abs(), 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        pid[i] = digits[len - 1 - i];
    }
    let argv = [c"fcsup-init".as_ptr(), c"instance-init".as_ptr(), pid.as_ptr().cast(), std::ptr::null()];
    let envp = [std::ptr::null::<c_char>()];
    // SAFETY: NUL-terminated strings and arrays on this stack frame; `program` is an O_PATH fd.
    unsafe {
        if program > 0 {
            sys::execveat_fd(program, argv.as_ptr(), envp.as_ptr());
        }
        sys::execve(c"/proc/self/exe", argv.as_ptr(), envp.as_ptr());
    }
}

/// PID 1's work once the function runs: forward every signal to it, reap every process that
/// ends, and exit with the function's status when it exits. Every signal must be blocked.
pub fn forward_and_reap(main: libc::pid_t) -> ! {
    let all = SigSet::all();
    loop {
        match sys::sigwaitinfo(&all) {
            Ok(libc::SIGCHLD) => {
                while let Some((pid, code)) = sys::reap_any() {
                    if pid == main {
                        sys::exit_now(code);
                    }
                }
            }
            Ok(sig) => sys::kill_any(main, sig),
            Err(_) => {}
        }
    }
}

/// The body of `fcsup instance-init PID` (see [`exec_small_init`]): never returns.
pub fn instance_init(main: libc::pid_t) -> ! {
    let _ = nix::sys::prctl::set_dumpable(false);
    forward_and_reap(main)
}

/// How a process of the instance is confined before its execve, copied out of the plan so the
/// init can use it after the supervisor has freed the plan (the filter itself is owned by the
/// supervisor for its whole life).
#[derive(Clone, Copy)]
pub(super) struct Confinement {
    userns: bool,
    /// The ids to take ((0, 0): root of the user namespace, or stay as is without one).
    user: (u32, u32),
    keep_caps: u64,
    filter: Option<(*const libc::sock_filter, usize)>,
}

impl Confinement {
    fn of(plan: &Plan) -> Confinement {
        Confinement::new(plan.userns, plan.keep_caps, plan.seccomp.as_deref())
    }

    /// The confinement of a process in an instance (in a user namespace or not), keeping the
    /// capabilities in `keep_caps`, under `seccomp`'s filter (which must outlive the process's
    /// exec).
    pub(super) fn new(userns: bool, keep_caps: u64, seccomp: Option<&super::isolation::Filters>) -> Confinement {
        let filter = seccomp.map(|f| (f.program().as_ptr(), f.program().len()));
        Confinement { userns, user: (0, 0), keep_caps, filter }
    }

    /// The same confinement, taking `user`'s ids.
    pub(super) fn as_user(self, user: (u32, u32)) -> Confinement {
        Confinement { user, ..self }
    }

    /// Becomes uid/gid 0 of the instance's user namespace with no supplementary groups (no-op
    /// without one), keeps a container's capabilities only, sets no_new_privs and installs the
    /// seccomp filter. `Err((step, errno))` names what failed.
    ///
    /// # Safety
    /// Async-signal-safe calls only; the filter must still be alive.
    pub(super) unsafe fn apply(self) -> Result<(), (u32, Errno)> {
        if self.userns || self.user != (0, 0) {
            sys::become_raw(self.user.0, self.user.1).map_err(|e| (STEP_IDS, e))?;
        }
        drop_capabilities(self.keep_caps);
        if let Some((ptr, len)) = self.filter {
            // SAFETY: the supervisor keeps the program alive (Host::isolation) while instances
            // run; no_new_privs is set above.
            unsafe { sys::seccomp_set_filter(ptr, len) }.map_err(|e| (STEP_SECCOMP, e))?;
        }
        Ok(())
    }
}

/// Drops every capability outside `keep` (a mask computed in the supervisor) from the
/// bounding set and sets no_new_privs, so the function runs as root with a container's usual
/// capabilities and cannot regain the rest.
fn drop_capabilities(keep: u64) {
    for cap in 0..64u32 {
        if keep & (1 << cap) == 0 {
            // Errors (a capability this kernel does not know) are ignored.
            let _ = sys::capbset_drop(cap);
        }
    }
    let _ = nix::sys::prctl::set_no_new_privs();
}
