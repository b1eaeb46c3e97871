//! The raw syscalls fcsup makes, each wrapped once: those `nix` lacks (`clone3`, the pidfd
//! calls, the new mount API, `sched_setscheduler`, capability-bounding-set drops, seccomp) and
//! those the init must make without `nix`'s help between clone and exec. Everything else goes
//! through `nix`.
//!
//! Everything marked *child-safe* is async-signal-safe: no allocation, no lock, no glibc
//! wrapper that signals other threads. The init shares the supervisor's address space while
//! the supervisor's other threads run, so a malloc or a lock there could deadlock.

use std::ffi::{c_char, CStr};
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use nix::errno::Errno;
use nix::sys::mman::{MapFlags, ProtFlags};

/// `CLONE_INTO_CGROUP` (not in every libc release).
pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The kernel's `struct clone_args` (v2, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Outcome of [`clone3`].
#[derive(Debug)]
pub enum Forked {
    /// In the parent: the child's pid and its pidfd.
    Parent(i32, OwnedFd),
    /// In the child.
    Child,
}

/// `clone3` with `CLONE_PIDFD | CLONE_INTO_CGROUP` plus `ns_flags`, fork-style (no new stack).
pub fn clone3(ns_flags: u64, cgroup_fd: RawFd) -> io::Result<Forked> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: ns_flags | libc::CLONE_PIDFD as u64 | CLONE_INTO_CGROUP,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: u64::try_from(cgroup_fd).unwrap_or(u64::MAX),
        ..Default::default()
    };
    // SAFETY: clone3 with a valid clone_args; without CLONE_VM or a stack it behaves like fork,
    // and the child only runs async-signal-safe code before execve or _exit.
    let r = unsafe { libc::syscall(libc::SYS_clone3, &mut args as *mut CloneArgs, std::mem::size_of::<CloneArgs>()) };
    match r {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => {
            // SAFETY: the kernel stored a fresh pidfd that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            #[allow(clippy::cast_possible_truncation, reason = "the kernel's pids fit in pid_t")]
            Ok(Forked::Parent(pid as i32, fd))
        }
    }
}

/// Memory of an instance's init when it shares the supervisor's address space: its stack and
/// a thread-pointer area of its own (so its libc calls set `errno` there, not in the
/// supervisor thread's). Unmapped on drop, which must wait until the init has exited.
#[derive(Debug)]
pub struct InitStack {
    base: NonNull<libc::c_void>,
}

// SAFETY: the mapping is plain memory owned by this value; nothing about it is thread-bound.
unsafe impl Send for InitStack {}
// SAFETY: no method gives shared access to the memory.
unsafe impl Sync for InitStack {}

/// Size of an init's mapping: stack below, thread-pointer area on top.
const INIT_MAP: usize = 512 * 1024;
/// Bytes at the top reserved for the thread-pointer area (static TLS lies below the pointer).
const INIT_TLS: usize = 64 * 1024;

impl InitStack {
    /// Maps the memory (lazily backed: only touched pages cost).
    pub fn new() -> io::Result<InitStack> {
        let len = NonZeroUsize::new(INIT_MAP).expect("non-zero");
        // SAFETY: a fresh anonymous private mapping aliases nothing.
        let base = unsafe {
            nix::sys::mman::mmap_anonymous(None, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE)
        }?;
        Ok(InitStack { base })
    }

    /// Thread pointer for the init: its TCB's self-pointers set, static TLS below it.
    fn thread_pointer(&self) -> u64 {
        let tp = self.base.as_ptr() as usize + INIT_MAP - INIT_TLS / 2;
        // SAFETY: tp and tp+16 lie inside the mapping; glibc reads the TCB's self pointers at
        // these offsets.
        unsafe {
            *(tp as *mut usize) = tp;
            *((tp + 16) as *mut usize) = tp;
        }
        tp as u64
    }
}

impl Drop for InitStack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in new(), which nothing uses any more.
        let _ = unsafe { nix::sys::mman::munmap(self.base, INIT_MAP) };
    }
}

/// `clone3` with `CLONE_VM`: the child shares the supervisor's address space (no page tables
/// copied, no copy-on-write faults afterwards), runs `entry(arg)` on `stack` with its own
/// thread pointer and never returns. Returns the child's pid and pidfd.
#[cfg(target_arch = "x86_64")]
pub fn clone3_vm(
    ns_flags: u64,
    cgroup_fd: RawFd,
    stack: &InitStack,
    entry: extern "C" fn(*mut libc::c_void) -> !,
    arg: *mut libc::c_void,
) -> io::Result<(i32, OwnedFd)> {
    let mut pidfd: libc::c_int = -1;
    let tls = stack.thread_pointer();
    let mut args = CloneArgs {
        flags: ns_flags | (libc::CLONE_VM | libc::CLONE_SETTLS | libc::CLONE_PIDFD) as u64 | CLONE_INTO_CGROUP,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.base.as_ptr() as u64,
        stack_size: (INIT_MAP - INIT_TLS) as u64,
        tls,
        cgroup: u64::try_from(cgroup_fd).unwrap_or(u64::MAX),
        ..Default::default()
    };
    let ret: i64;
    // SAFETY: clone3 with a valid clone_args. The parent only gets rax back. The child starts
    // on the new stack (16-byte aligned top) with the parent's registers: r12/r13 carry arg and
    // entry across the syscall, and `call` enters `entry`, which never returns.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") &mut args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret < 0 {
        return Err(io::Error::from_raw_os_error(int(-ret)));
    }
    // SAFETY: the kernel stored a fresh pidfd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok((int(ret), fd))
}

/// `pidfd_open(pid, 0)` (nix has no pidfd calls).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; the result is a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(int(fd)) })
}

/// `pidfd_send_signal` (nix has no pidfd calls).
pub fn pidfd_signal(pidfd: RawFd, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall on a pidfd; no memory is passed (info is NULL).
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd, sig, std::ptr::null::<libc::siginfo_t>(), 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reaps the child behind `pidfd` without blocking; `Some(status)` once it has exited, as a
/// shell would show it (exit code, or 128 + signal).
///
/// Raw `waitid`, not nix's: nix's `WaitStatus` holds a `Signal`, which cannot name a
/// real-time signal, so a function killed by one would read as an error.
pub fn pidfd_try_wait(pidfd: RawFd) -> io::Result<Option<i32>> {
    // SAFETY: siginfo_t is plain data; zeroed is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let id = libc::id_t::try_from(pidfd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: waitid writes into `info`, which lives for the call.
    let r = unsafe { libc::waitid(libc::P_PIDFD, id, &mut info, libc::WEXITED | libc::WNOHANG) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after a successful waitid the pid/status union members are valid.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(if info.si_code == libc::CLD_EXITED { status } else { 128 + status }))
}

/// `sched_setscheduler(0, policy, priority)` for the calling thread (nix lacks it).
/// *Child-safe.*
pub fn sched_setscheduler(policy: i32, priority: i32) -> Result<(), Errno> {
    let p = libc::sched_param { sched_priority: priority };
    // SAFETY: sched_setscheduler with a param on this stack frame.
    Errno::result(unsafe { libc::sched_setscheduler(0, policy, &p) }).map(drop)
}

/// `sched_getscheduler(0)`: the calling thread's policy (nix lacks it).
pub fn sched_getscheduler() -> Result<i32, Errno> {
    // SAFETY: no arguments but the calling thread's id.
    Errno::result(unsafe { libc::sched_getscheduler(0) })
}

/// `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | AT_RECURSIVE | O_CLOEXEC)`: a detached copy of
/// the mount tree at `path` (kernel ≥ 5.2; nix lacks the new mount API).
pub fn open_tree_clone(path: &CStr) -> Result<OwnedFd, Errno> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint;
    // SAFETY: open_tree(2) with a C string alive for the call; the result is a new fd or -1.
    let fd = Errno::result(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) })?;
    // SAFETY: a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(int(fd)) })
}

/// `mount_setattr(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, {attr_set})` on a whole detached tree
/// (kernel ≥ 5.12; nix lacks the new mount API).
pub fn mount_setattr_recursive(tree: BorrowedFd<'_>, attr_set: u64) -> Result<(), Errno> {
    mount_setattr(tree, &MountAttr { attr_set, attr_clr: 0, propagation: 0, userns_fd: 0 })
}

/// `move_mount(fd, "", AT_FDCWD, dst, MOVE_MOUNT_F_EMPTY_PATH)`: attaches the detached tree at
/// `fd` on `dst` (nix lacks the new mount API). *Child-safe.*
pub fn move_mount(fd: RawFd, dst: &CStr) -> Result<(), Errno> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    // SAFETY: move_mount(2) with C strings alive for the call.
    Errno::result(unsafe { libc::syscall(libc::SYS_move_mount, fd, c"".as_ptr(), libc::AT_FDCWD, dst.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH) }).map(drop)
}

/// `close_range(first, last, flags)` (nix lacks it). *Child-safe.*
pub fn close_range(first: u32, last: u32, flags: u32) {
    // SAFETY: plain syscall with integer arguments; it only closes (or marks) fds.
    unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) };
}

/// Closes every fd above 2 except `keep` (sorted, ascending). *Child-safe.*
///
/// A process that starts as host root inside an instance must hold none of the supervisor's
/// fds: a directory fd among them is a way out of the instance's root through
/// `/proc/self/fd/N/..` (runc's CVE-2024-21626), and a pipe's other end can wedge whoever waits
/// for it to close.
pub fn close_all_but(keep: &[RawFd]) {
    let mut first: u32 = 3;
    for &fd in keep {
        let Ok(fd) = u32::try_from(fd) else { continue };
        if fd < first {
            continue;
        }
        if fd > first {
            close_range(first, fd - 1, 0);
        }
        first = fd + 1;
    }
    close_range(first, u32::MAX, 0);
}

/// Whether the current directory is reachable from the root (`getcwd` does not answer
/// `(unreachable)…`, which a directory outside the root gives). *Child-safe.*
pub fn cwd_reachable() -> bool {
    let mut buf = [0u8; 256];
    // SAFETY: getcwd writes at most buf.len() bytes into the stack buffer.
    let p = unsafe { libc::getcwd(buf.as_mut_ptr().cast(), buf.len()) };
    // A path too long for the buffer (ERANGE) is still a path from the root.
    if p.is_null() {
        return Errno::last() == Errno::ERANGE;
    }
    buf[0] == b'/'
}

/// `prctl(PR_CAPBSET_DROP, cap)` (nix's prctl module lacks it). *Child-safe.*
pub fn capbset_drop(cap: u32) -> Result<(), Errno> {
    // SAFETY: prctl with integer arguments only.
    Errno::result(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// `prctl(PR_GET_SECCOMP)`: whether the kernel has seccomp (nix's prctl module lacks it).
pub fn seccomp_mode() -> Result<i32, Errno> {
    // SAFETY: prctl with integer arguments only.
    Errno::result(unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) })
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, 0, prog)` for the calling thread. *Child-safe.*
///
/// # Safety
/// `filter` must point to `len` valid BPF instructions, alive for the call.
pub unsafe fn seccomp_set_filter(filter: *const libc::sock_filter, len: usize) -> Result<(), Errno> {
    let len = u16::try_from(len).map_err(|_| Errno::EINVAL)?;
    let prog = libc::sock_fprog { len, filter: filter.cast_mut() };
    // SAFETY: seccomp(2) with a program the kernel copies; the caller vouches for it.
    Errno::result(unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog as *const libc::sock_fprog) }).map(drop)
}

/// Becomes `uid`/`gid` of the current user namespace (0/0: its root; else an image's `User`)
/// with no supplementary groups. *Child-safe.*
///
/// Raw syscalls, not glibc's or nix's wrappers: those broadcast the change to every thread glibc
/// knows of (the supervisor's, whose memory the init shares), under a lock the supervisor's
/// threads also take: a deadlock, and a wrong change of their ids.
pub fn become_raw(uid: u32, gid: u32) -> Result<(), Errno> {
    // SAFETY: id syscalls with integer arguments (setgroups with an empty list).
    unsafe {
        Errno::result(libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()))?;
        Errno::result(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
        Errno::result(libc::syscall(libc::SYS_setresuid, uid, uid, uid))?;
    }
    Ok(())
}

/// `mount_setattr(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, {MOUNT_ATTR_IDMAP, userns})`: the
/// detached tree shows its files' ids through `userns`'s mapping (kernel ≥ 5.12).
pub fn mount_setattr_idmap(tree: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> Result<(), Errno> {
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    let userns_fd = u64::try_from(userns.as_raw_fd()).map_err(|_| Errno::EBADF)?;
    mount_setattr(tree, &MountAttr { attr_set: MOUNT_ATTR_IDMAP, attr_clr: 0, propagation: 0, userns_fd })
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, attr)`, the one place it is called.
fn mount_setattr(tree: BorrowedFd<'_>, attr: &MountAttr) -> Result<(), Errno> {
    // SAFETY: mount_setattr(2) on a borrowed fd with a mount_attr of the right size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            std::ptr::from_ref(attr),
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(r).map(drop)
}

/// `fsopen(fstype, FSOPEN_CLOEXEC)`: a filesystem context to configure (new mount API).
pub fn fsopen(fstype: &CStr) -> Result<OwnedFd, Errno> {
    // SAFETY: fsopen(2) with a C string alive for the call; the result is a new fd or -1.
    let fd = Errno::result(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), 1 as libc::c_uint) })?;
    // SAFETY: a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(int(fd)) })
}

/// What one `fsconfig(2)` call sets.
#[derive(Debug, Clone, Copy)]
pub enum FsConfig<'a> {
    /// `FSCONFIG_SET_STRING key=value`.
    String(&'a CStr, &'a CStr),
    /// `FSCONFIG_SET_FD key=fd` (overlayfs takes its layers so on kernels ≥ 6.13).
    Fd(&'a CStr, BorrowedFd<'a>),
    /// `FSCONFIG_CMD_CREATE`.
    Create,
}

/// `fsconfig(2)` on a context from [`fsopen`].
pub fn fsconfig(ctx: BorrowedFd<'_>, what: FsConfig<'_>) -> Result<(), Errno> {
    const SET_STRING: libc::c_uint = 1;
    const SET_FD: libc::c_uint = 5;
    const CMD_CREATE: libc::c_uint = 6;
    let ctx = ctx.as_raw_fd();
    // SAFETY: fsconfig(2) with C strings alive for the call and a borrowed fd.
    let r = unsafe {
        match what {
            FsConfig::String(k, v) => libc::syscall(libc::SYS_fsconfig, ctx, SET_STRING, k.as_ptr(), v.as_ptr(), 0),
            FsConfig::Fd(k, fd) => libc::syscall(libc::SYS_fsconfig, ctx, SET_FD, k.as_ptr(), std::ptr::null::<c_char>(), fd.as_raw_fd()),
            FsConfig::Create => libc::syscall(libc::SYS_fsconfig, ctx, CMD_CREATE, std::ptr::null::<c_char>(), std::ptr::null::<c_char>(), 0),
        }
    };
    Errno::result(r).map(drop)
}

/// `fsmount(ctx, FSMOUNT_CLOEXEC, attrs)`: the configured filesystem as a detached mount.
pub fn fsmount(ctx: BorrowedFd<'_>, attrs: libc::c_uint) -> Result<OwnedFd, Errno> {
    // SAFETY: fsmount(2) on a borrowed fd with integer arguments.
    let fd = Errno::result(unsafe { libc::syscall(libc::SYS_fsmount, ctx.as_raw_fd(), 1 as libc::c_uint, attrs) })?;
    // SAFETY: a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(int(fd)) })
}

/// `execve` with pointer arrays built in advance; returns only on failure. *Child-safe*
/// (nix's `execve` builds its pointer arrays on the heap).
///
/// # Safety
/// `argv` and `envp` must be NULL-terminated arrays of NUL-terminated strings.
pub unsafe fn execve(path: &CStr, argv: *const *const c_char, envp: *const *const c_char) -> Errno {
    // SAFETY: the caller vouches for the arrays; `path` is alive for the call.
    unsafe { libc::execve(path.as_ptr(), argv, envp) };
    Errno::last()
}

/// `execveat(fd, "", argv, envp, AT_EMPTY_PATH)`: executes the program open at `fd`; returns
/// only on failure. *Child-safe* (see [`execve`]).
///
/// # Safety
/// As for [`execve`].
pub unsafe fn execveat_fd(fd: RawFd, argv: *const *const c_char, envp: *const *const c_char) -> Errno {
    // SAFETY: the caller vouches for the arrays.
    unsafe { libc::syscall(libc::SYS_execveat, fd, c"".as_ptr(), argv, envp, libc::AT_EMPTY_PATH) };
    Errno::last()
}

/// `clone(CLONE_VM | CLONE_VFORK | SIGCHLD)` running `entry(arg)` on `stack_top`: the function's
/// posix_spawn-style start from the init. *Child-safe* (nix's `clone` takes a boxed closure).
///
/// # Safety
/// `stack_top` must be the 16-byte aligned top of memory that stays mapped until the child
/// execs or exits, and `arg` valid for `entry` until then.
pub unsafe fn clone_vfork(
    entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    stack_top: *mut libc::c_void,
    arg: *mut libc::c_void,
) -> Result<libc::pid_t, Errno> {
    // SAFETY: the caller vouches for the stack and the argument.
    Errno::result(unsafe { libc::clone(entry, stack_top, libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD, arg) })
}

/// Waits for any signal in `set` (every signal must be blocked). *Child-safe* (nix has only
/// `sigwait`, which drops the siginfo's source).
pub fn sigwaitinfo(set: &nix::sys::signal::SigSet) -> Result<i32, Errno> {
    // SAFETY: siginfo_t is plain data; zeroed is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live values on this frame or borrowed.
    Errno::result(unsafe { libc::sigwaitinfo(set.as_ref(), &mut info) })
}

/// `waitpid(-1, WNOHANG)`: one exited child as (pid, status as a shell shows it), or `None`.
/// *Child-safe.* Raw, not nix's: its `WaitStatus` cannot name a real-time signal.
pub fn reap_any() -> Option<(libc::pid_t, i32)> {
    let mut status = 0;
    // SAFETY: waitpid writes the status into a local.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid <= 0 {
        return None;
    }
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
    Some((pid, code))
}

/// `kill(pid, sig)` with any signal number, real-time ones included (nix's `Signal` cannot
/// name those). *Child-safe.*
pub fn kill_any(pid: libc::pid_t, sig: i32) {
    // SAFETY: kill(2) with integer arguments.
    unsafe { libc::kill(pid, sig) };
}

/// `_exit(code)`: ends the process without running anything of the supervisor's (nix lacks it).
/// *Child-safe.*
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) takes an integer and does not return.
    unsafe { libc::_exit(code) }
}

/// A raw syscall's result as the `int` it is (an fd, a pid or an errno): the kernel returns
/// those in a `long`.
#[allow(clippy::cast_possible_truncation, reason = "fds, pids and errnos are ints")]
fn int(r: libc::c_long) -> libc::c_int {
    r as libc::c_int
}

/// One eBPF instruction, `struct bpf_insn` (`regs` holds `dst_reg:4, src_reg:4`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInsn {
    /// Opcode.
    pub code: u8,
    /// Destination register in the low nibble, source in the high one (little-endian hosts).
    pub regs: u8,
    /// Jump offset or memory offset.
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

/// `bpf(2)` commands and constants fcsup uses (libc lacks `union bpf_attr`).
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_PROG_QUERY: libc::c_int = 16;
/// `BPF_PROG_TYPE_CGROUP_DEVICE`.
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
/// `BPF_CGROUP_DEVICE`, the attach type.
const BPF_CGROUP_DEVICE: u32 = 6;
/// `BPF_F_ALLOW_MULTI`: the program runs beside those attached above and below.
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The `BPF_PROG_LOAD` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BpfProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BpfProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// The `BPF_PROG_QUERY` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BpfProgQuery {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
}

/// The `BPF_PROG_GET_FD_BY_ID` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BpfGetId {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `bpf(cmd, attr, sizeof attr)`.
fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> Result<libc::c_long, Errno> {
    // SAFETY: `attr` is a live `#[repr(C)]` prefix of `union bpf_attr` for `cmd`, and its size
    // is passed along (the kernel reads no further); any pointers inside it are the caller's,
    // alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr).cast::<libc::c_void>(), std::mem::size_of::<T>()) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}

/// `BPF_PROG_LOAD` of a `BPF_PROG_TYPE_CGROUP_DEVICE` program; with a non-empty `log`, the
/// verifier writes its log there (level 1).
pub fn bpf_load_cgroup_device(insns: &[BpfInsn], license: &CStr, log: &mut [u8]) -> Result<OwnedFd, Errno> {
    let mut attr = BpfProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(insns.len()).map_err(|_| Errno::E2BIG)?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    if !log.is_empty() {
        attr.log_level = 1;
        attr.log_size = u32::try_from(log.len()).unwrap_or(u32::MAX);
        attr.log_buf = log.as_mut_ptr() as u64;
    }
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: a fresh program fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(int(fd)) })
}

/// `BPF_PROG_ATTACH` of a device program to the cgroup directory `cgroup` with
/// `BPF_F_ALLOW_MULTI`.
pub fn bpf_attach_cgroup_device(prog: BorrowedFd<'_>, cgroup: BorrowedFd<'_>) -> Result<(), Errno> {
    let fd = |f: BorrowedFd<'_>| u32::try_from(f.as_raw_fd()).map_err(|_| Errno::EBADF);
    let mut attr = BpfProgAttach {
        target_fd: fd(cgroup)?,
        attach_bpf_fd: fd(prog)?,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
}

/// `BPF_PROG_QUERY`: the ids of the device programs attached to the cgroup directory
/// `cgroup` itself (at most 64).
pub fn bpf_query_cgroup_device(cgroup: BorrowedFd<'_>) -> Result<Vec<u32>, Errno> {
    let mut ids = [0u32; 64];
    let mut attr = BpfProgQuery {
        target_fd: u32::try_from(cgroup.as_raw_fd()).map_err(|_| Errno::EBADF)?,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: 64,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    Ok(ids[..usize::try_from(attr.prog_cnt).unwrap_or(0).min(64)].to_vec())
}

/// `BPF_PROG_GET_FD_BY_ID`: an fd of the loaded program `id` (`ENOENT` once it is freed).
pub fn bpf_prog_fd_by_id(id: u32) -> Result<OwnedFd, Errno> {
    let mut attr = BpfGetId { id, ..Default::default() };
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: a fresh program fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(int(fd)) })
}

/// A plain fork by the raw `clone` syscall (no glibc atfork handlers, which may take locks a
/// forked child of a threaded process must not): the child's pid in the parent, `None` in the
/// child. *Child-safe.*
pub fn fork_raw() -> Result<Option<i32>, Errno> {
    // SAFETY: clone with SIGCHLD only and no stack behaves like fork; the caller's child runs
    // async-signal-safe code only.
    let r = unsafe { libc::syscall(libc::SYS_clone, libc::c_long::from(libc::SIGCHLD), 0, 0, 0, 0) };
    match r {
        -1 => Err(Errno::last()),
        0 => Ok(None),
        #[allow(clippy::cast_possible_truncation, reason = "the kernel's pids fit in pid_t")]
        pid => Ok(Some(pid as i32)),
    }
}

/// `setns(pidfd, flags)`: joins several of a process's namespaces at once (Linux ≥ 5.8).
/// *Child-safe.*
pub fn setns_pidfd(pidfd: RawFd, flags: libc::c_int) -> Result<(), Errno> {
    // SAFETY: setns with an fd and integer flags.
    Errno::result(unsafe { libc::setns(pidfd, flags) }).map(drop)
}

/// `waitpid(pid)` until it ends: its status as a shell shows it. *Child-safe.*
pub fn wait_status(pid: i32) -> i32 {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid with a pointer to a local.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r == -1 && Errno::last() != Errno::EINTR {
            return 127;
        }
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        127
    }
}
