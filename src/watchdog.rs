//! Instances do not outlive the supervisor: a small process of its own (`fcsup watchdog`,
//! outside every instance's cgroup) waits on the supervisor's pidfd and, when the supervisor
//! is gone for any reason — `kill -9` included — writes `cgroup.kill` on the cgroup root,
//! which kills every instance process (frozen ones too) at once.
//!
//! A clean shutdown has already removed the root, so the watchdog finds nothing and exits.
//! Instances cannot watch the supervisor themselves: a frozen init runs nothing, and a
//! parent-death signal follows the thread that cloned it, not the process.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The fd at which the watchdog receives the supervisor's pidfd.
const PIDFD: i32 = 3;

/// Starts the watchdog for the cgroup root at `root` (the cgroup2 directory).
pub fn spawn(root: &Path) -> io::Result<Child> {
    let pidfd = crate::sandbox::sys::pidfd_open(nix::unistd::getpid().as_raw())?;
    let raw = pidfd.as_raw_fd();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("watchdog").arg(root).stdin(Stdio::null()).stdout(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec (nix's wrappers of setsid,
    // fcntl and dup2 are plain syscalls).
    unsafe {
        cmd.pre_exec(move || {
            // Its own session: a terminal's Ctrl-C reaches the supervisor, not the watchdog.
            let _ = nix::unistd::setsid();
            // SAFETY: `raw` stays open in this process until exec (the parent holds it).
            let fd = BorrowedFd::borrow_raw(raw);
            if raw == PIDFD {
                nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))?;
            } else {
                // The new fd 3 is the watchdog's for its whole life: not owned here.
                let _ = std::os::fd::IntoRawFd::into_raw_fd(nix::unistd::dup2_raw(fd, PIDFD)?);
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(pidfd);
    Ok(child)
}

/// The watchdog's body: waits until the supervisor behind fd 3 has exited, then kills what is
/// left under `root`.
pub fn run(root: &Path) -> io::Result<()> {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    // SAFETY: fd 3 is the supervisor's pidfd, handed over by spawn() and open for this
    // process's whole life.
    let pidfd = unsafe { BorrowedFd::borrow_raw(PIDFD) };
    let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
    loop {
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(n) if n > 0 => break,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    match std::fs::read_to_string(root.join("cgroup.events")) {
        // Removed by a clean shutdown, or empty.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Ok(events) if events.lines().any(|l| l == "populated 0") => return Ok(()),
        _ => {}
    }
    match std::fs::write(root.join("cgroup.kill"), "1") {
        Ok(()) => {
            eprintln!("fcsup watchdog: the supervisor exited without stopping its instances; killed every process under {}", root.display());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
