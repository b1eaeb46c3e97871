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
