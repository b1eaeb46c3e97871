//! OCI hooks run as runc runs them (`libcontainer/configs/config.go`, `Command.Run`): the
//! container state as JSON on stdin, `args[0]` as argv\[0\] with `path` the executable, a
//! timeout after which the hook is killed, a non-zero exit an error carrying its output.
//!
//! When each phase runs, and where (runc's timing, which NVIDIA's hooks rely on):
//! - `prestart` (deprecated) and `createRuntime`: by the supervisor in its own namespaces,
//!   once the instance's init exists, its mounts and `/dev` are ready and its cgroup (device
//!   program included) is set; cwd = bundle; `status: creating`; `pid` = the init's host pid.
//! - `createContainer`: in the instance's mount namespace, after its mounts and before
//!   `pivot_root`, so host paths still resolve there; cwd = the instance root; `creating`.
//!   Use [`HookOptions::in_mount_namespace`]. runc runs it from the init process itself, so
//!   there it is also inside the instance's other namespaces (pid, net, uts, ipc, user,
//!   cgroup), cgroup and credentials, before seccomp and `no_new_privs`, and its state's
//!   `pid` is the init's pid as seen in its own pid namespace. fcsup enters the mount
//!   namespace only (what NVIDIA's `createContainer` hooks need: they mount into the root)
//!   and passes the host pid, so the hook can still reach `/proc/<pid>`.
//! - `startContainer`: in the instance after `pivot_root`, just before the function execs;
//!   `created`. (runc gives it the function's environment when it has none.)
//! - `poststart` (`running`) and `poststop` (`stopped`): by the supervisor. The runtime spec
//!   says a failing one is logged as a warning and the lifecycle goes on:
//!   [`run_hooks_all`] runs them all and returns the errors.
//!
//! Where fcsup differs from runc, on purpose:
//! - The environment is exactly the hook's `env` (order and duplicates kept: argv and envp
//!   go to `execve` as given). runc hands its own environment to a hook without one, which
//!   would leak the supervisor's; here such a hook gets an empty environment.
//! - A hook without a `timeout` gets [`DEFAULT_TIMEOUT`] (runc waits forever): a hung hook
//!   must not hang an instance start.
//! - The hook runs as the leader of its own process group, and at the timeout, or when it
//!   fails, the whole group is killed. runc kills only the hook, then waits for its output
//!   pipes, which a forked child may hold open for ever. A child that leaves the group
//!   (`setsid`) escapes.
//! - After a successful hook exits, its output is read for at most [`DRAIN_AFTER_EXIT`]; a
//!   daemon it left behind holding the pipes is left alone, as runc would leave it.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{ContainerState, Hook, Hooks, State};

/// The timeout of a hook whose entry has none. Generous: `nvidia-container-cli configure`
/// with `--load-kmods` and ldconfig takes seconds, not minutes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a hook's output is still read once it exited successfully.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// The OCI runtime-spec version fcsup reports in states and bundles (runc's current one).
pub const OCI_VERSION: &str = "1.2.1";

/// At most this much of each of a hook's output streams is kept (the end of it).
const OUTPUT_LIMIT: usize = 64 * 1024;

/// An OCI hook phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookPhase {
    /// `prestart` (deprecated by the runtime spec, still what NVIDIA's legacy hook uses).
    Prestart,
    /// `createRuntime`.
    CreateRuntime,
    /// `createContainer`.
    CreateContainer,
    /// `startContainer`.
    StartContainer,
    /// `poststart`.
    Poststart,
    /// `poststop`.
    Poststop,
}

impl HookPhase {
    /// Every phase, in the order they run.
    pub const ALL: [HookPhase; 6] = [
        HookPhase::Prestart,
        HookPhase::CreateRuntime,
        HookPhase::CreateContainer,
        HookPhase::StartContainer,
        HookPhase::Poststart,
        HookPhase::Poststop,
    ];

    /// The name in `config.json` and CDI's `hookName`.
    pub fn name(self) -> &'static str {
        match self {
            HookPhase::Prestart => "prestart",
            HookPhase::CreateRuntime => "createRuntime",
            HookPhase::CreateContainer => "createContainer",
            HookPhase::StartContainer => "startContainer",
            HookPhase::Poststart => "poststart",
            HookPhase::Poststop => "poststop",
        }
    }

    /// The phase called `name`, if any.
    pub fn from_name(name: &str) -> Option<HookPhase> {
        HookPhase::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The `status` runc puts in the state it gives this phase's hooks.
    pub fn status(self) -> ContainerState {
        match self {
            HookPhase::Prestart | HookPhase::CreateRuntime | HookPhase::CreateContainer => ContainerState::Creating,
            HookPhase::StartContainer => ContainerState::Created,
            HookPhase::Poststart => ContainerState::Running,
            HookPhase::Poststop => ContainerState::Stopped,
        }
    }

    /// Whether runc runs this phase inside the container (so fcsup runs it in the instance's
    /// mount namespace) rather than in the runtime's namespaces.
    pub fn in_instance(self) -> bool {
        matches!(self, HookPhase::CreateContainer | HookPhase::StartContainer)
    }

    /// This phase's hooks in `hooks`.
    pub fn hooks(self, hooks: &Hooks) -> &[Hook] {
        let list = match self {
            #[allow(deprecated)]
            HookPhase::Prestart => hooks.prestart(),
            HookPhase::CreateRuntime => hooks.create_runtime(),
            HookPhase::CreateContainer => hooks.create_container(),
            HookPhase::StartContainer => hooks.start_container(),
            HookPhase::Poststart => hooks.poststart(),
            HookPhase::Poststop => hooks.poststop(),
        };
        list.as_deref().unwrap_or_default()
    }

    /// Replaces this phase's hooks in `hooks` (an empty list is stored as absent).
    pub fn set_hooks(self, hooks: &mut Hooks, list: Vec<Hook>) {
        let list = (!list.is_empty()).then_some(list);
        match self {
            #[allow(deprecated)]
            HookPhase::Prestart => hooks.set_prestart(list),
            HookPhase::CreateRuntime => hooks.set_create_runtime(list),
            HookPhase::CreateContainer => hooks.set_create_container(list),
            HookPhase::StartContainer => hooks.set_start_container(list),
            HookPhase::Poststart => hooks.set_poststart(list),
            HookPhase::Poststop => hooks.set_poststop(list),
        };
    }
}

/// The state a hook of `phase` reads on stdin: `ociVersion`, `id`, the phase's `status`,
/// `pid` (the instance init's host pid; absent once it is gone), `bundle` (absolute) and
/// `annotations` (always present, possibly `{}`).
pub fn state(phase: HookPhase, id: &str, pid: Option<i32>, bundle: &Path, annotations: &HashMap<String, String>) -> State {
    let mut s = State::default();
    s.set_version(OCI_VERSION.to_string());
    s.set_id(id.to_string());
    s.set_status(phase.status());
    s.set_pid(pid);
    s.set_bundle(bundle.to_path_buf());
    s.set_annotations(Some(annotations.clone()));
    s
}

/// Where and how hooks run.
#[derive(Debug, Clone)]
pub struct HookOptions<'a> {
    cwd: PathBuf,
    mount_ns: Option<BorrowedFd<'a>>,
    default_timeout: Duration,
}

impl<'a> HookOptions<'a> {
    /// Hooks run with `cwd` as their working directory (the bundle for runtime-side phases,
    /// the instance root for `createContainer`), in the caller's namespaces.
    pub fn new(cwd: impl Into<PathBuf>) -> HookOptions<'a> {
        HookOptions { cwd: cwd.into(), mount_ns: None, default_timeout: DEFAULT_TIMEOUT }
    }

    /// Hooks `setns` into the mount namespace `ns` (an open `/proc/PID/ns/mnt`) before they
    /// exec, so their path, cwd and everything they touch resolve there. Needs
    /// `CAP_SYS_ADMIN` (and `CAP_SYS_CHROOT`) over the namespace's user namespace.
    pub fn in_mount_namespace(mut self, ns: BorrowedFd<'a>) -> HookOptions<'a> {
        self.mount_ns = Some(ns);
        self
    }

    /// The timeout of hooks that give none (default [`DEFAULT_TIMEOUT`]).
    pub fn default_timeout(mut self, timeout: Duration) -> HookOptions<'a> {
        self.default_timeout = timeout;
        self
    }
}

/// What a successful hook wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookOutput {
    /// Its standard output (the last 64 KiB at most).
    pub stdout: String,
    /// Its standard error (the last 64 KiB at most).
    pub stderr: String,
}

/// A hook that could not run or did not succeed; each names the hook (phase, index, argv).
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The entry itself is unusable (relative path, bad env entry, timeout not above zero).
    #[error("{hook}: invalid hook: {message}")]
    Invalid {
        /// Which hook.
        hook: String,
        /// What is wrong.
        message: String,
    },
    /// It could not be started (missing executable, no permission, setns refused, ...).
    #[error("{hook}: failed to start: {source}")]
    Spawn {
        /// Which hook.
        hook: String,
        /// What fork/exec returned.
        source: io::Error,
    },
    /// It exited with a failure status.
    #[error("{hook}: {status}{}", output_suffix(stdout, stderr))]
    Failed {
        /// Which hook.
        hook: String,
        /// How it ended.
        status: ExitStatus,
        /// Its standard output, trimmed.
        stdout: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// It ran past its timeout; it and its process group were killed.
    #[error("{hook}: ran past its timeout of {}s and was killed with its process group{}", timeout.as_secs_f64(), output_suffix(stdout, stderr))]
    TimedOut {
        /// Which hook.
        hook: String,
        /// The timeout it had.
        timeout: Duration,
        /// What it wrote to stdout before, trimmed.
        stdout: String,
        /// What it wrote to stderr before, trimmed.
        stderr: String,
    },
    /// Talking to the running hook failed (poll, wait).
    #[error("{hook}: {source}")]
    Io {
        /// Which hook.
        hook: String,
        /// The error.
        source: io::Error,
    },
}

fn output_suffix(stdout: &str, stderr: &str) -> String {
    let mut s = String::new();
    if !stderr.is_empty() {
        s.push_str(&format!("; stderr: {stderr}"));
    }
    if !stdout.is_empty() {
        s.push_str(&format!("; stdout: {stdout}"));
    }
    s
}

/// How a hook is named in errors: `createContainer hook #0 (/usr/bin/x arg ...)`.
pub fn hook_label(phase: HookPhase, index: usize, hook: &Hook) -> String {
    let mut argv = vec![hook.path().display().to_string()];
    argv.extend(hook.args().iter().flatten().skip(1).cloned());
    format!("{} hook #{index} ({})", phase.name(), argv.join(" "))
}

/// Runs every hook of `phase` in order, stopping at the first that fails (runc's
/// `Hooks.Run`, for the phases whose failure fails the start).
pub fn run_hooks(phase: HookPhase, hooks: &[Hook], state: &State, opts: &HookOptions<'_>) -> Result<Vec<HookOutput>, HookError> {
    hooks.iter().enumerate().map(|(i, h)| run_hook(phase, i, h, state, opts)).collect()
}

/// Runs every hook of `phase`, going on past failures, and returns the failures (for
/// `poststart` and `poststop`, whose failures the runtime spec makes warnings).
pub fn run_hooks_all(phase: HookPhase, hooks: &[Hook], state: &State, opts: &HookOptions<'_>) -> Vec<HookError> {
    hooks.iter().enumerate().filter_map(|(i, h)| run_hook(phase, i, h, state, opts).err()).collect()
}

/// Runs one hook (`index` is its place in the phase's list, for messages) and waits for it.
pub fn run_hook(phase: HookPhase, index: usize, hook: &Hook, state: &State, opts: &HookOptions<'_>) -> Result<HookOutput, HookError> {
    let label = hook_label(phase, index, hook);
    let invalid = |message: String| HookError::Invalid { hook: label.clone(), message };
    if !hook.path().is_absolute() {
        return Err(invalid(format!("path {} is not absolute", hook.path().display())));
    }
    let timeout = match hook.timeout() {
        None => opts.default_timeout,
        Some(t) if t > 0 => Duration::from_secs(t.unsigned_abs()),
        Some(t) => return Err(invalid(format!("timeout {t} is not greater than zero"))),
    };
    let input = serde_json::to_vec(state).map_err(|e| invalid(format!("state does not serialise: {e}")))?;

    // argv and envp go to execve exactly as given (order, duplicates), as runc passes them;
    // std's Command would sort the environment and keep one entry per name.
    let cstr = |what: &str, s: &[u8]| CString::new(s).map_err(|_| invalid(format!("{what} contains a NUL byte")));
    let args = hook.args().as_deref().unwrap_or_default();
    let mut argv = args.iter().map(|a| cstr("an argument", a.as_bytes())).collect::<Result<Vec<_>, _>>()?;
    if argv.is_empty() {
        argv.push(cstr("the path", hook.path().as_os_str().as_bytes())?);
    }
    let mut envp = Vec::new();
    for e in hook.env().iter().flatten() {
        if e.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
            return Err(invalid(format!("env entry {e:?} is not NAME=VALUE")));
        }
        envp.push(cstr("an env entry", e.as_bytes())?);
    }
    let exec = ExecArgs::new(cstr("the path", hook.path().as_os_str().as_bytes())?, argv, envp);
    let cwd = cstr("the cwd", opts.cwd.as_os_str().as_bytes())?;
    let ns_fd: Option<RawFd> = opts.mount_ns.map(|ns| ns.as_raw_fd());

    let mut cmd = Command::new(hook.path());
    cmd.env_clear();
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.process_group(0);
    // SAFETY: the closure runs in the forked child before std's own exec and only makes
    // async-signal-safe syscalls (setns, chdir, execve) on data prepared before the fork; the
    // namespace fd stays open for the spawn since the caller lends it to us for longer.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = ns_fd {
                // SAFETY: the fd is open in the child (inherited across fork).
                let fd = BorrowedFd::borrow_raw(fd);
                nix::sched::setns(fd, CloneFlags::CLONE_NEWNS).map_err(io::Error::from)?;
            }
            // After setns(CLONE_NEWNS) the cwd is the namespace's root, so it is set here.
            nix::unistd::chdir(cwd.as_c_str()).map_err(io::Error::from)?;
            exec.exec();
            Err(io::Error::last_os_error())
        });
    }
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn { hook: label.clone(), source })?;
    supervise(&mut child, &input, timeout).map_err(|e| match e {
        Supervised::Io(source) => HookError::Io { hook: label.clone(), source },
        Supervised::TimedOut(out) => HookError::TimedOut { hook: label.clone(), timeout, stdout: out.stdout, stderr: out.stderr },
        Supervised::Failed(status, out) => HookError::Failed { hook: label.clone(), status, stdout: out.stdout, stderr: out.stderr },
    })
}

/// execve's arguments, built before the fork so the child only reads them.
struct ExecArgs {
    path: CString,
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
}

// SAFETY: the pointers point into the CStrings this struct owns (heap buffers that do not
// move with the struct) and nothing mutates them; they are only read, in the forked child.
unsafe impl Send for ExecArgs {}
// SAFETY: as above: shared access is read-only.
unsafe impl Sync for ExecArgs {}

impl ExecArgs {
    fn new(path: CString, argv: Vec<CString>, envp: Vec<CString>) -> ExecArgs {
        let nul_terminated = |v: &[CString]| v.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
        ExecArgs { argv_ptrs: nul_terminated(&argv), envp_ptrs: nul_terminated(&envp), path, _argv: argv, _envp: envp }
    }

    /// `execve`; returns only on failure (errno set).
    fn exec(&self) {
        // SAFETY: path is a C string and both arrays are NULL-terminated arrays of C strings,
        // all owned by self and alive for the call.
        unsafe { libc::execve(self.path.as_ptr(), self.argv_ptrs.as_ptr(), self.envp_ptrs.as_ptr()) };
    }
}

enum Supervised {
    Io(io::Error),
    TimedOut(HookOutput),
    Failed(ExitStatus, HookOutput),
}

impl From<io::Error> for Supervised {
    fn from(e: io::Error) -> Self {
        Supervised::Io(e)
    }
}

/// One output stream and what was read from it.
struct Sink<R> {
    pipe: Option<R>,
    buf: Vec<u8>,
}

impl<R: Read + AsFd> Sink<R> {
    /// Reads what is there (poll said so); closes the pipe at EOF or error.
    fn read_ready(&mut self) {
        let Some(p) = self.pipe.as_mut() else { return };
        let mut chunk = [0u8; 8192];
        match p.read(&mut chunk) {
            Ok(0) => self.pipe = None,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                if self.buf.len() > OUTPUT_LIMIT {
                    let cut = self.buf.len() - OUTPUT_LIMIT;
                    self.buf.drain(..cut);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.pipe = None,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).trim().to_string()
    }
}

fn kill_group(pgid: u32) {
    if let Ok(p) = i32::try_from(pgid) {
        // ESRCH when nothing is left in the group is fine.
        let _ = killpg(Pid::from_raw(p), Signal::SIGKILL);
    }
}

/// Feeds `input` to the hook, collects its output, and waits for its exit or the timeout.
fn supervise(child: &mut Child, input: &[u8], timeout: Duration) -> Result<HookOutput, Supervised> {
    let start = Instant::now();
    let deadline = start + timeout;
    let pid = child.id();
    let pidfd = crate::sandbox::sys::pidfd_open(i32::try_from(pid).map_err(io::Error::other)?)?;
    let mut stdin: Option<ChildStdin> = child.stdin.take();
    if let Some(s) = &stdin {
        fcntl(s, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    }
    let mut written = 0usize;
    let mut out: Sink<ChildStdout> = Sink { pipe: child.stdout.take(), buf: Vec::new() };
    let mut err: Sink<ChildStderr> = Sink { pipe: child.stderr.take(), buf: Vec::new() };
    let mut exited: Option<(ExitStatus, Instant)> = None;
    loop {
        if exited.is_some() && out.pipe.is_none() && err.pipe.is_none() {
            break;
        }
        let now = Instant::now();
        let until = exited.map_or(deadline, |(_, drain_until)| drain_until);
        if now >= until {
            if exited.is_none() {
                // The leader is alive or a zombie, so its pid still names the group.
                kill_group(pid);
                child.wait()?;
                return Err(Supervised::TimedOut(HookOutput { stdout: out.text(), stderr: err.text() }));
            }
            break;
        }
        let wait = PollTimeout::try_from(until - now).unwrap_or(PollTimeout::MAX);
        let (sin, sout, serr) = (stdin.as_ref().map(|s| s.as_fd()), out.pipe.as_ref().map(|s| s.as_fd()), err.pipe.as_ref().map(|s| s.as_fd()));
        let mut fds = Vec::with_capacity(4);
        let mut slots = [None; 4];
        for (slot, (fd, ev)) in [
            (sin, PollFlags::POLLOUT),
            (sout, PollFlags::POLLIN),
            (serr, PollFlags::POLLIN),
            (exited.is_none().then(|| pidfd.as_fd()), PollFlags::POLLIN),
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(fd) = fd {
                slots[slot] = Some(fds.len());
                fds.push(PollFd::new(fd, ev));
            }
        }
        match poll(&mut fds, wait) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e).into()),
        }
        let ready: Vec<bool> = slots.iter().map(|s| s.is_some_and(|i| fds[i].revents().is_some_and(|r| !r.is_empty()))).collect();
        drop(fds);
        if ready[0] {
            if let Some(s) = stdin.as_mut() {
                match s.write(&input[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
                    // EPIPE: the hook exited or closed stdin without reading; runc ignores it too.
                    Err(_) => written = input.len(),
                }
                if written >= input.len() {
                    stdin = None;
                }
            }
        }
        if ready[1] {
            out.read_ready();
        }
        if ready[2] {
            err.read_ready();
        }
        if ready[3] {
            stdin = None;
            // Peek without reaping: while the zombie stays, its pid keeps naming the group.
            let ok = matches!(waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT), Ok(WaitStatus::Exited(_, 0)));
            if !ok {
                kill_group(pid);
            }
            let status = child.wait()?;
            exited = Some((status, Instant::now() + DRAIN_AFTER_EXIT));
        }
    }
    let (status, _) = exited.unwrap_or((ExitStatus::from_raw(0), start));
    let output = HookOutput { stdout: out.text(), stderr: err.text() };
    if status.success() {
        Ok(output)
    } else {
        Err(Supervised::Failed(status, output))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip_names_and_statuses() {
        for p in HookPhase::ALL {
            assert_eq!(HookPhase::from_name(p.name()), Some(p));
        }
        assert_eq!(HookPhase::from_name("preStart"), None);
        assert_eq!(HookPhase::CreateContainer.status(), ContainerState::Creating);
        assert_eq!(HookPhase::StartContainer.status(), ContainerState::Created);
        assert_eq!(HookPhase::Poststart.status(), ContainerState::Running);
        assert_eq!(HookPhase::Poststop.status(), ContainerState::Stopped);
        assert!(HookPhase::CreateContainer.in_instance() && !HookPhase::CreateRuntime.in_instance());
    }

    #[test]
    fn state_json_has_the_fields_runc_writes() {
        let s = state(HookPhase::CreateRuntime, "inst-abc", Some(4242), Path::new("/var/lib/b"), &HashMap::new());
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ociVersion": OCI_VERSION, "id": "inst-abc", "status": "creating", "pid": 4242, "bundle": "/var/lib/b", "annotations": {}})
        );
    }

    #[test]
    fn set_hooks_stores_per_phase() {
        let mut hooks = Hooks::default();
        let mut h = Hook::default();
        h.set_path(PathBuf::from("/bin/true"));
        HookPhase::Poststop.set_hooks(&mut hooks, vec![h.clone()]);
        assert_eq!(HookPhase::Poststop.hooks(&hooks), &[h]);
        assert!(HookPhase::Poststart.hooks(&hooks).is_empty());
        HookPhase::Poststop.set_hooks(&mut hooks, vec![]);
        assert!(hooks.poststop().is_none());
    }

    #[test]
    fn relative_path_and_zero_timeout_are_refused() {
        let st = state(HookPhase::Poststop, "x", None, Path::new("/tmp"), &HashMap::new());
        let opts = HookOptions::new("/");
        let mut h = Hook::default();
        h.set_path(PathBuf::from("bin/true"));
        let e = run_hook(HookPhase::Poststop, 0, &h, &st, &opts).unwrap_err();
        assert!(e.to_string().contains("poststop hook #0 (bin/true): invalid hook: path bin/true is not absolute"), "{e}");
        h.set_path(PathBuf::from("/bin/true"));
        h.set_timeout(Some(0));
        let e = run_hook(HookPhase::Poststop, 0, &h, &st, &opts).unwrap_err();
        assert!(e.to_string().contains("timeout 0 is not greater than zero"), "{e}");
    }
}
