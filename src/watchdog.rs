//! Instances do not outlive the supervisor: a small process of its own (`fcsup watchdog`,
//! outside every instance's cgroup) waits on the supervisor's pidfd and, when the supervisor
//! is gone for any reason — `kill -9` included — writes `cgroup.kill` on the cgroup root,
//! which kills every instance process (frozen ones too) at once.
//!
//! A clean shutdown has already removed the root, so the watchdog finds nothing and exits.
//! Instances cannot watch the supervisor themselves: a frozen init runs nothing, and a
//! parent-death signal follows the thread that cloned it, not the process.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The fd at which the watchdog receives the supervisor's pidfd.
const PIDFD: i32 = 3;

/// Starts the watchdog for the cgroup root at `root` (the cgroup2 directory).
pub fn spawn(root: &Path) -> io::Result<Child> {
    // SAFETY: pidfd_open on our own pid; the fd is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let raw = pidfd.as_raw_fd();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("watchdog").arg(root).stdin(Stdio::null()).stdout(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Its own session: a terminal's Ctrl-C reaches the supervisor, not the watchdog.
            libc::setsid();
            let r = if raw == PIDFD { libc::fcntl(raw, libc::F_SETFD, 0) } else { libc::dup2(raw, PIDFD) };
            if r < 0 {
                return Err(io::Error::last_os_error());
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
    let mut pfd = libc::pollfd { fd: PIDFD, events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: poll on one pollfd that lives for the call.
        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
        if r > 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
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
