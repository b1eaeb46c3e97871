//! Running one more program inside a running instance (FC's execute-instruction Initializer),
//! as `nsenter` and `runc exec` do: a fork placed straight into the instance's cgroup joins
//! all its namespaces at once through its init's pidfd, takes its root, forks again so the
//! program is in its PID namespace, and confines the program exactly as the function is
//! (its user, capabilities, no_new_privs, seccomp) before the exec. The middle process waits
//! for the program and exits with its status, so the supervisor sees it through a pidfd; the
//! program dies with it (parent-death signal).

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;

use super::child::{fail, report, Confinement, STEP_EXEC};
use super::{cstr, keep_caps_mask, pipe_cloexec, read_report, setup, sys, wait_blocking, Isolation, SandboxError};

/// A program started inside an instance.
#[derive(Debug)]
pub struct Entered {
    /// The middle process (host pid): it exits with the program's status.
    pub pid: i32,
    /// Its pidfd.
    pub pidfd: OwnedFd,
    /// Read end of the program's stdout.
    pub stdout: OwnedFd,
    /// Read end of its stderr.
    pub stderr: OwnedFd,
}

/// Where to run and what: the instance's init (host pid and pidfd) and cgroup, the program,
/// its environment and working directory, the ids it takes.
#[derive(Debug)]
pub struct Inside<'a> {
    /// Host pid of the instance's init.
    pub init_pid: i32,
    /// The init's pidfd.
    pub init_pidfd: RawFd,
    /// The instance's cgroup directory.
    pub cgroup_fd: RawFd,
    /// Its v1 `cgroup.procs` files (hybrid hosts), joined first.
    pub v1_procs: &'a [RawFd],
    /// The program and its arguments (argv\[0\] found on `PATH` from `env` when it has no `/`).
    pub argv: &'a [String],
    /// Its whole environment.
    pub env: &'a [(String, String)],
    /// Its working directory inside the instance.
    pub cwd: &'a str,
    /// uid and gid inside the instance.
    pub user: (u32, u32),
}

/// Step numbers of a failure before the program's exec.
const STEP_SETNS: u32 = 1;
const STEP_ROOT: u32 = 2;
const STEP_FORK: u32 = 3;

/// Starts `inside.argv` in the instance (see the module's doc).
pub fn enter(inside: &Inside<'_>, isolation: &Isolation) -> Result<Entered, SandboxError> {
    let root = nix::fcntl::open(
        format!("/proc/{}/root", inside.init_pid).as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| setup("open the instance's root")(e.into()))?;
    let cwd = cstr(inside.cwd)?;
    let argv: Vec<CString> = inside.argv.iter().map(cstr).collect::<Result<_, _>>()?;
    let envp: Vec<CString> = inside.env.iter().map(|(k, v)| cstr(format!("{k}={v}"))).collect::<Result<_, _>>()?;
    let cmd = inside.argv.first().ok_or_else(|| SandboxError::CommandNotFound { command: String::new() })?;
    let candidates: Vec<CString> = if cmd.contains('/') {
        vec![cstr(cmd)?]
    } else {
        let path = inside.env.iter().find(|(k, _)| k == "PATH").map_or("/usr/bin:/bin", |(_, v)| v.as_str());
        path.split(':').filter(|d| !d.is_empty()).map(|d| cstr(format!("{d}/{cmd}"))).collect::<Result<_, _>>()?
    };
    let argv_p: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let envp_p: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let (out_r, out_w) = pipe_cloexec().map_err(setup("create stdout pipe"))?;
    let (err_r, err_w) = pipe_cloexec().map_err(setup("create stderr pipe"))?;
    let (status_r, status_w) = pipe_cloexec().map_err(setup("create status pipe"))?;
    let devnull = nix::fcntl::open(c"/dev/null", OFlag::O_RDONLY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
        .map_err(|e| setup("open /dev/null")(e.into()))?;
    let confinement = Confinement::new(isolation.ids.is_some(), keep_caps_mask(), isolation.seccomp.as_deref()).as_user(inside.user);
    // The user namespace last: the root is taken with the host's capabilities (the instance's
    // mount namespace belongs to the host's user namespace).
    let ns = libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWCGROUP | libc::CLONE_NEWPID;
    let userns = isolation.ids.is_some();
    let stdio = [devnull.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
    let e = status_w.as_raw_fd();
    let mut keep: Vec<RawFd> = vec![root.as_raw_fd(), e, inside.init_pidfd];
    keep.extend(stdio);
    keep.extend(inside.v1_procs.iter().copied());
    keep.sort_unstable();
    keep.dedup();
    match sys::clone3(0, inside.cgroup_fd).map_err(setup("fork into the instance"))? {
        sys::Forked::Child => {
            // Only async-signal-safe calls from here (a fork of a threaded process).
            let _ = nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&nix::sys::signal::SigSet::all()), None);
            // Nothing of the supervisor's but what it uses (see `sys::close_all_but`).
            sys::close_all_but(&keep);
            for fd in inside.v1_procs {
                // SAFETY: write(2) of a static byte string to an open fd.
                if unsafe { libc::write(*fd, b"0".as_ptr().cast(), 1) } != 1 {
                    fail(e, STEP_SETNS, Errno::last());
                }
                // SAFETY: closing an fd of this forked process's own table.
                unsafe { libc::close(*fd) };
            }
            if let Err(errno) = sys::setns_pidfd(inside.init_pidfd, ns) {
                fail(e, STEP_SETNS, errno);
            }
            if let Err(errno) = nix::unistd::fchdir(&root).and_then(|()| nix::unistd::chroot(c".")) {
                fail(e, STEP_ROOT, errno);
            }
            if userns {
                if let Err(errno) = sys::setns_pidfd(inside.init_pidfd, libc::CLONE_NEWUSER) {
                    fail(e, STEP_SETNS, errno);
                }
            }
            if nix::unistd::chdir(cwd.as_c_str()).is_err() || !sys::cwd_reachable() {
                let _ = nix::unistd::chdir(c"/");
            }
            match sys::fork_raw() {
                Err(errno) => fail(e, STEP_FORK, errno),
                Ok(Some(program)) => {
                    // The middle: its status is the program's.
                    let _ = nix::unistd::close(e);
                    sys::exit_now(sys::wait_status(program))
                }
                Ok(None) => program(&stdio, e, confinement, &candidates, &argv_p, &envp_p),
            }
        }
        sys::Forked::Parent(pid, pidfd) => {
            drop((status_w, out_w, err_w, devnull, root));
            let mut status = std::fs::File::from(status_r);
            let Some((step, errno)) = read_report(&mut status).map_err(setup("read the program's start status"))? else {
                return Ok(Entered { pid, pidfd, stdout: out_r, stderr: err_r });
            };
            let _ = sys::pidfd_signal(pidfd.as_raw_fd(), libc::SIGKILL);
            let _ = wait_blocking(&pidfd);
            let source = std::io::Error::from_raw_os_error(errno);
            Err(match step {
                STEP_EXEC if source.raw_os_error() == Some(libc::ENOENT) => SandboxError::CommandNotFound { command: cmd.clone() },
                STEP_EXEC => SandboxError::Exec { command: cmd.clone(), source },
                STEP_SETNS => SandboxError::Child { step: "join the instance's namespaces".into(), source },
                STEP_ROOT => SandboxError::Child { step: "take the instance's root".into(), source },
                STEP_FORK => SandboxError::Child { step: "fork into the instance's PID namespace".into(), source },
                _ => SandboxError::Child { step: "confine the program".into(), source },
            })
        }
    }
}

/// The program's side: its stdio, its confinement, then the exec. Never returns.
fn program(
    stdio: &[RawFd; 3],
    e: RawFd,
    confinement: Confinement,
    candidates: &[CString],
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ! {
    for (target, &source) in (0 as RawFd..).zip(stdio.iter()) {
        // SAFETY: dup2 onto 0, 1, 2 of this process (a fork of the supervisor's thread).
        if unsafe { libc::dup2(source, target) } == -1 {
            fail(e, STEP_EXEC, Errno::last());
        }
    }
    sys::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
    // SAFETY: async-signal-safe calls only; the filter is the supervisor's, alive.
    if let Err((step, errno)) = unsafe { confinement.apply() } {
        fail(e, step, errno);
    }
    // After the id change (which clears it): dies with the middle process.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&nix::sys::signal::SigSet::empty()), None);
    let mut errno = Errno::ENOENT;
    for path in candidates {
        // SAFETY: NULL-terminated pointer arrays over strings built before the fork.
        let err = unsafe { sys::execve(path, argv.as_ptr(), envp.as_ptr()) };
        if err != Errno::ENOENT {
            errno = err;
        }
    }
    report(e, STEP_EXEC, errno as i32);
    sys::exit_now(127)
}
