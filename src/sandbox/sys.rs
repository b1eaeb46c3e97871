//! Raw syscalls of the sandbox, each wrapped once. Everything here that the child calls is
//! async-signal-safe: no allocation, no locks, only libc.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

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
#[cfg(not(target_arch = "x86_64"))]
pub enum Forked {
    /// In the parent: the child's pid and its pidfd.
    Parent(i32, OwnedFd),
    /// In the child.
    Child,
}

/// `clone3` with `CLONE_PIDFD | CLONE_INTO_CGROUP` plus `ns_flags`, fork-style (no new stack).
#[cfg(not(target_arch = "x86_64"))]
pub fn clone3(ns_flags: u64, cgroup_fd: RawFd) -> io::Result<Forked> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: ns_flags | libc::CLONE_PIDFD as u64 | CLONE_INTO_CGROUP,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup_fd as u64,
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
            Ok(Forked::Parent(pid as i32, fd))
        }
    }
}

/// Memory of an instance's init when it shares the supervisor's address space: its stack and
/// a thread-pointer area of its own (so its libc calls set `errno` there, not in the
/// supervisor thread's). Unmapped on drop, which must wait until the init has exited.
#[derive(Debug)]
pub struct InitStack {
    base: *mut libc::c_void,
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
        // SAFETY: anonymous private mapping; the pointer is checked below.
        let base = unsafe {
            libc::mmap(std::ptr::null_mut(), INIT_MAP, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE, -1, 0)
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(InitStack { base })
    }

    /// Thread pointer for the init: its TCB's self-pointers set, static TLS below it.
    fn thread_pointer(&self) -> u64 {
        let tp = self.base as usize + INIT_MAP - INIT_TLS / 2;
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
        // SAFETY: unmaps exactly the mapping made in new().
        unsafe { libc::munmap(self.base, INIT_MAP) };
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
        stack: stack.base as u64,
        stack_size: (INIT_MAP - INIT_TLS) as u64,
        tls,
        cgroup: cgroup_fd as u64,
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
        return Err(io::Error::from_raw_os_error(-ret as i32));
    }
    // SAFETY: the kernel stored a fresh pidfd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok((ret as i32, fd))
}

/// A pipe with both ends close-on-exec: (read, write).
pub fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `pidfd_send_signal`.
pub fn pidfd_signal(pidfd: RawFd, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall on a pidfd; no memory is passed (info is NULL).
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd, sig, std::ptr::null::<libc::siginfo_t>(), 0) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Reaps the child behind `pidfd` without blocking; `Some(status)` once it has exited, as a
/// shell would show it (exit code, or 128 + signal).
pub fn pidfd_try_wait(pidfd: RawFd) -> io::Result<Option<i32>> {
    // SAFETY: siginfo_t is plain data; zeroed is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes into `info`, which lives for the call.
    let r = unsafe { libc::waitid(libc::P_PIDFD, pidfd as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG) };
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

/// `setns` of the calling thread.
pub fn setns(fd: RawFd, nstype: i32) -> io::Result<()> {
    // SAFETY: setns on a namespace fd; affects only the calling thread for CLONE_NEWNET.
    if unsafe { libc::setns(fd, nstype) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a path read-only, close-on-exec.
pub fn open_ro(path: &std::ffi::CStr) -> io::Result<OwnedFd> {
    // SAFETY: open(2) with a valid C string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The calling thread's errno.
pub fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `fchown(fd, id, id)`.
pub fn fchown(fd: RawFd, id: u32) -> io::Result<()> {
    // SAFETY: fchown on an fd we own; no memory is passed.
    if unsafe { libc::fchown(fd, id, id) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
