//! What runs in the new namespaces between `clone3` and `execve`: a prepared list of steps
//! (mounts, pivot_root, loopback up, ...) run with raw libc only, then a minimal init.
//!
//! The child is PID 1 of its PID namespace. PID 1 ignores signals it has no handler for, so the
//! child stays on as a tiny init (like tini): it forks the function, forwards signals to it,
//! reaps orphans and exits with the function's status, taking every other process with it.

use std::ffi::{c_char, CString};
use std::os::fd::RawFd;

use super::sys;

/// One prepared step. Every string is built before the clone; the child only reads them.
pub enum Op {
    /// mount(2).
    Mount { src: Option<CString>, dst: CString, fstype: Option<CString>, flags: libc::c_ulong, data: Option<CString> },
    /// mkdir(2).
    Mkdir { path: CString, mode: libc::mode_t },
    /// symlink(2).
    Symlink { target: CString, path: CString },
    /// mknod(2) of a character device.
    Mknod { path: CString, mode: libc::mode_t, dev: libc::dev_t },
    /// chdir(2).
    Chdir(CString),
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
    /// Bind `/dev/null` over a `/proc` file that reveals or controls the host (as runc masks
    /// them); a file this kernel lacks is skipped.
    Mask(CString),
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
    /// The seccomp filter, installed just before the function's (and the init's) execve.
    pub seccomp: Option<std::sync::Arc<super::isolation::Filters>>,
    /// fd of the small init program (`fcsup-init`) the init re-executes, or -1 (fcsup itself).
    pub init_program: RawFd,
}

/// Stack size of the function's vfork-style start (it only makes syscalls).
pub const START_STACK: usize = 64 * 1024;

/// `move_mount` flag: the source is the fd itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// Step index reported when every exec candidate failed.
pub const STEP_EXEC: u32 = u32::MAX;
/// Step index reported when the function could not take its ids in the user namespace.
pub const STEP_IDS: u32 = u32::MAX - 1;
/// Step index reported when the seccomp filter could not be installed.
pub const STEP_SECCOMP: u32 = u32::MAX - 2;
/// Not a failure: the init has entered its user namespace and waits for its id maps.
pub const STEP_USERNS_MAP: u32 = u32::MAX - 3;

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

/// Writes one 8-byte report (step, errno) on the error pipe.
fn report(err_fd: RawFd, step: u32, errno: i32) {
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&step.to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: write(2) of a stack buffer; async-signal-safe.
    unsafe { libc::write(err_fd, msg.as_ptr().cast(), msg.len()) };
}

fn fail(err_fd: RawFd, step: u32, errno: i32) -> ! {
    report(err_fd, step, errno);
    // SAFETY: _exit(2) is async-signal-safe.
    unsafe { libc::_exit(127) }
}

/// Binds `src` on `dst`; `Ok(false)` when `dst` does not exist on this kernel.
///
/// # Safety
/// Both pointers must be NUL-terminated strings alive for the call.
unsafe fn bind(src: *const c_char, dst: *const c_char, flags: libc::c_ulong) -> Result<bool, i32> {
    // SAFETY: the caller passes valid C strings.
    if unsafe { libc::mount(src, dst, std::ptr::null(), libc::MS_BIND | flags, std::ptr::null()) } == 0 {
        return Ok(true);
    }
    match sys::errno() {
        libc::ENOENT => Ok(false),
        e => Err(e),
    }
}

fn check(r: libc::c_int, err_fd: RawFd, step: u32) {
    if r < 0 {
        fail(err_fd, step, sys::errno());
    }
}

/// Runs in the cloned child; never returns.
pub fn run(plan: &Plan, exec: &ExecArgs) -> ! {
    // The supervisor's signal handlers were copied into this process: block every signal
    // so none of them runs here (the function starts with an empty mask).
    // SAFETY: sigprocmask with a stack sigset.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        // Device nodes and directories get exactly the modes the plan gives (the function,
        // not root on the host, must be able to write /dev/null).
        libc::umask(0);
    }
    let e = plan.err_fd;
    for (i, (op, _)) in plan.ops.iter().enumerate() {
        let i = i as u32;
        // SAFETY: every pointer comes from a CString owned by `plan`, alive for the whole call;
        // all calls are async-signal-safe syscalls.
        unsafe {
            match op {
                Op::Mount { src, dst, fstype, flags, data } => check(
                    libc::mount(
                        src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                        dst.as_ptr(),
                        fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                        *flags,
                        data.as_ref().map_or(std::ptr::null(), |s| s.as_ptr().cast()),
                    ),
                    e,
                    i,
                ),
                Op::Mkdir { path, mode } => {
                    if libc::mkdir(path.as_ptr(), *mode) < 0 && sys::errno() != libc::EEXIST {
                        fail(e, i, sys::errno());
                    }
                }
                Op::Symlink { target, path } => check(libc::symlink(target.as_ptr(), path.as_ptr()), e, i),
                Op::Mknod { path, mode, dev } => check(libc::mknod(path.as_ptr(), libc::S_IFCHR | *mode, *dev), e, i),
                Op::Chdir(p) => check(libc::chdir(p.as_ptr()), e, i),
                Op::WriteFd { fd, data } => check(libc::write(*fd, data.as_ptr().cast(), data.len()) as libc::c_int, e, i),
                Op::JoinNetns(fd) => check(libc::setns(*fd, libc::CLONE_NEWNET), e, i),
                Op::JoinMountNs(fd) => check(libc::setns(*fd, libc::CLONE_NEWNS), e, i),
                Op::UnshareMountNs => check(libc::unshare(libc::CLONE_NEWNS), e, i),
                Op::MoveMount { fd, dst } => check(
                    libc::syscall(libc::SYS_move_mount, *fd, c"".as_ptr(), libc::AT_FDCWD, dst.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH) as libc::c_int,
                    e,
                    i,
                ),
                Op::Hostname(h) => check(libc::sethostname(h.as_ptr(), h.as_bytes().len()), e, i),
                Op::SchedOther => {
                    let p = libc::sched_param { sched_priority: 0 };
                    check(libc::sched_setscheduler(0, libc::SCHED_OTHER, &p), e, i);
                }
                Op::UnshareCgroupNs => check(libc::unshare(libc::CLONE_NEWCGROUP), e, i),
                Op::Mask(path) => {
                    if let Err(errno) = bind(c"/dev/null".as_ptr(), path.as_ptr(), 0) {
                        fail(e, i, errno);
                    }
                }
                Op::ReadOnly(path) => match bind(path.as_ptr(), path.as_ptr(), libc::MS_REC) {
                    Ok(true) => {
                        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                        check(libc::mount(std::ptr::null(), path.as_ptr(), std::ptr::null(), flags, std::ptr::null()), e, i);
                    }
                    Ok(false) => {}
                    Err(errno) => fail(e, i, errno),
                },
                Op::UserNs { sync_r, sync_w } => {
                    libc::close(*sync_w);
                    check(libc::unshare(libc::CLONE_NEWUSER), e, i);
                    report(e, STEP_USERNS_MAP, 0);
                    let mut go = [0u8; 1];
                    if libc::read(*sync_r, go.as_mut_ptr().cast(), 1) != 1 {
                        fail(e, i, libc::EPIPE);
                    }
                    libc::close(*sync_r);
                }
            }
        }
    }
    init(plan, exec)
}

/// What the function's start needs, on the init's stack.
struct Start<'a> {
    plan: &'a Plan,
    exec: &'a ExecArgs,
    function_mask: libc::sigset_t,
}

/// The function's side of the start: runs on its own stack in the init's memory (CLONE_VM |
/// CLONE_VFORK, as posix_spawn does) until execve replaces it. No copy of the supervisor's
/// address space is made for it, and none is torn down by its execve.
extern "C" fn start_function(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the init's `Start`, alive until this child execs or exits
    // (CLONE_VFORK suspends the init until then); only async-signal-safe syscalls follow.
    unsafe {
        let st = &*(arg as *const Start);
        let plan = st.plan;
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::umask(0o022);
        libc::sigprocmask(libc::SIG_SETMASK, &st.function_mask, std::ptr::null_mut());
        libc::setsid();
        for fd in 0..3 {
            if plan.stdio[fd] != fd as RawFd {
                libc::dup2(plan.stdio[fd], fd as RawFd);
            }
        }
        // No supervisor fd may leak into the function.
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
        if let Err((step, errno)) = Confinement::of(plan).apply() {
            fail(plan.err_fd, step, errno);
        }
        let mut errno = libc::ENOENT;
        for path in &plan.exec_candidates {
            libc::execve(path.as_ptr(), st.exec.argv.as_ptr(), st.exec.envp.as_ptr());
            let err = sys::errno();
            if err != libc::ENOENT {
                errno = err;
            }
        }
        fail(plan.err_fd, STEP_EXEC, errno)
    }
}

/// PID 1: start the function, then forward signals and reap until it exits.
fn init(plan: &Plan, exec: &ExecArgs) -> ! {
    let e = plan.err_fd;
    // SAFETY: signal-mask, prctl and process calls on stack data and the plan's pre-allocated
    // stack only.
    unsafe {
        // The init holds a copy of the supervisor's memory: nothing in the instance, root or
        // not, may read it through ptrace or /proc/1/mem.
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        // Every signal stays blocked (see run()); the init takes them with sigwaitinfo.
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        let mut start = Start { plan, exec, function_mask: none };
        let top = plan.stack.as_ptr().add(plan.stack.len()) as usize & !15;
        let main = libc::clone(
            start_function,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut start as *mut Start).cast(),
        );
        if main < 0 {
            fail(e, STEP_EXEC, sys::errno());
        }
        // Last use of `plan`: the supervisor frees it once the error pipe is closed.
        let confinement = Confinement::of(plan);
        let program = plan.init_program;
        // The init keeps no fd but its program's (close-on-exec): the function's exec closes
        // the error pipe for the parent, so the init's own confinement below runs while the
        // function starts, off the supervisor's path.
        if program > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, (program - 1) as u32, 0);
            libc::syscall(libc::SYS_close_range, (program + 1) as u32, u32::MAX, 0);
        } else {
            libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0);
        }
        if confinement.apply().is_ok() {
            exec_small_init(main, program);
        }
        forward_and_reap(main)
    }
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
    let (mut n, mut len) = (main as u32, 0);
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
            libc::syscall(libc::SYS_execveat, program, c"".as_ptr(), argv.as_ptr(), envp.as_ptr(), libc::AT_EMPTY_PATH);
        }
        libc::execve(c"/proc/self/exe".as_ptr(), argv.as_ptr(), envp.as_ptr());
    }
}

/// PID 1's work once the function runs: forward every signal to it, reap every process that
/// ends, and exit with the function's status when it exits. Every signal must be blocked.
pub fn forward_and_reap(main: libc::pid_t) -> ! {
    // SAFETY: signal and process calls on stack data only.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        loop {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let sig = libc::sigwaitinfo(&all, &mut info);
            if sig == libc::SIGCHLD {
                loop {
                    let mut status = 0;
                    let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
                    if pid <= 0 {
                        break;
                    }
                    if pid == main {
                        let code = if libc::WIFEXITED(status) {
                            libc::WEXITSTATUS(status)
                        } else {
                            128 + libc::WTERMSIG(status)
                        };
                        libc::_exit(code);
                    }
                }
            } else if sig > 0 {
                libc::kill(main, sig);
            }
        }
    }
}

/// The body of `fcsup instance-init PID` (see [`exec_small_init`]): never returns.
pub fn instance_init(main: libc::pid_t) -> ! {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    forward_and_reap(main)
}

/// How a process of the instance is confined before its execve, copied out of the plan so the
/// init can use it after the supervisor has freed the plan (the filter itself is owned by the
/// supervisor for its whole life).
#[derive(Clone, Copy)]
struct Confinement {
    userns: bool,
    keep_caps: u64,
    filter: Option<(*const libc::sock_filter, usize)>,
}

impl Confinement {
    fn of(plan: &Plan) -> Confinement {
        let filter = plan.seccomp.as_ref().map(|f| (f.program().as_ptr(), f.program().len()));
        Confinement { userns: plan.userns, keep_caps: plan.keep_caps, filter }
    }

    /// Becomes uid/gid 0 of the instance's user namespace with no supplementary groups (no-op
    /// without one), keeps a container's capabilities only, sets no_new_privs and installs the
    /// seccomp filter. `Err((step, errno))` names what failed.
    ///
    /// # Safety
    /// Async-signal-safe calls only; the filter must still be alive.
    unsafe fn apply(self) -> Result<(), (u32, i32)> {
        // Raw syscalls, not libc's wrappers: those broadcast the change to every thread glibc
        // knows of (the supervisor's, whose memory this process shares), under a lock the
        // supervisor's threads also take: a deadlock, and a wrong change of their ids.
        // SAFETY: id syscalls with integer arguments (setgroups with an empty list).
        let failed = self.userns
            && unsafe {
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                    || libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0
                    || libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0
            };
        if failed {
            return Err((STEP_IDS, sys::errno()));
        }
        drop_capabilities(self.keep_caps);
        if let Some((ptr, len)) = self.filter {
            // The supervisor keeps the program alive (Host::isolation) while instances run.
            let prog = libc::sock_fprog { len: len as u16, filter: ptr.cast_mut() };
            // SAFETY: seccomp(2) with a program the kernel copies; no_new_privs is set above.
            if unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog as *const libc::sock_fprog) } != 0 {
                return Err((STEP_SECCOMP, sys::errno()));
            }
        }
        Ok(())
    }
}

/// Drops every capability outside `keep` from the bounding set and sets no_new_privs, so the
/// function runs as root with a container's usual capabilities and cannot regain the rest.
fn drop_capabilities(keep: u64) {
    for cap in 0..64u64 {
        if keep & (1 << cap) == 0 {
            // SAFETY: prctl with integer arguments only; errors (unknown cap) are ignored.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        }
    }
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
}
